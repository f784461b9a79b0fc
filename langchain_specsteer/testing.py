"""Helpers for tests, notebooks and benchmarks: a service on loopback, a slower wire.

- `BackgroundServer` serves an ASGI app (e.g. `create_app(service)`) with uvicorn in a thread.
- `simulated_rtt(seconds)` is a `wrap_transport` for `RemoteGeneralist` and
  `OpenAICompatibleGeneralist` that sleeps before every request, as a wire with that
  round-trip latency would make it wait (eval/bench_remote.py's latency sweep).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_specsteer.protocol import ServiceLimits
from langchain_specsteer.service import bounded_h11
from langchain_specsteer.service_sessions import VerifierService

__all__ = ["BackgroundServer", "simulated_rtt"]


class BackgroundServer:
    """Serve an ASGI app with uvicorn in a background thread (tests, notebooks, benchmarks).

    Args:
        app: e.g. `create_app(service)`.
        host: interface to bind; port 0 picks a free port (see `url`).
        max_body_chunks: see `bounded_h11`; default: the limit of the app's service, else
            `ServiceLimits`'s.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_chunks: int | None = None,
    ):
        import socket

        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it (Linux); without it Nagle's algorithm and delayed ACKs
        # hold each small response about 40 ms.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.bind((host, port))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        if max_body_chunks is None:
            service = getattr(getattr(app, "state", None), "service", None)
            limits = service.limits if isinstance(service, VerifierService) else ServiceLimits()
            max_body_chunks = limits.max_body_chunks
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", http=bounded_h11(max_body_chunks)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                msg = "the server did not start"
                raise RuntimeError(msg)
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


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
