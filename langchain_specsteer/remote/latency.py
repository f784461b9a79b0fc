"""A slower wire: `simulated_rtt(seconds)` delays every request a client sends.

It is a `wrap_transport` for `RemoteGeneralist` and `OpenAICompatibleGeneralist` that sleeps
before every request, as a wire with that round-trip latency would make it wait
(eval/bench_remote.py's latency sweep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["simulated_rtt"]


def simulated_rtt(
    seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Callable[[Any], Any]:
    """A `wrap_transport` that waits `seconds` before each request is sent (blocking calls
    with `sleep`, async ones with `async_sleep`), within the time the client counts for it.

    Example: `RemoteGeneralist(url, wrap_transport=simulated_rtt(0.05))`.
    """
    if not seconds >= 0:
        msg = f"simulated_rtt takes non-negative seconds, got {seconds!r}"
        raise ValueError(msg)

    def wrap(transport: Any) -> Any:
        if hasattr(transport, "handle_async_request"):
            return _AsyncDelayed(transport, lambda: async_sleep(seconds))
        return _Delayed(transport, lambda: sleep(seconds))

    return wrap


class _Delayed:
    """An httpx transport that waits before passing each request on (blocking)."""

    def __init__(self, transport: Any, wait: Callable[[], None]):
        self.transport = transport
        self.wait = wait

    def handle_request(self, request: Any) -> Any:
        self.wait()
        return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> _Delayed:
        self.transport.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.__exit__(*exc)


class _AsyncDelayed:
    """An httpx transport that waits before passing each request on (on the event loop)."""

    def __init__(self, transport: Any, wait: Callable[[], Awaitable[None]]):
        self.transport = transport
        self.wait = wait

    async def handle_async_request(self, request: Any) -> Any:
        await self.wait()
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> _AsyncDelayed:
        await self.transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.__aexit__(*exc)
