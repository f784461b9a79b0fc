"""HTTP for the clients: each exchange written once, run by a blocking or an async driver.

An `Exchange` is a generator: it yields a `Send` (one HTTP request) or a delay in seconds, and
returns its result. `HTTPClient.exchange` is the retry policy as an exchange (connection
errors, timeouts, 5xx, 429 and 409 `session_busy` are retried with exponential backoff, and
Retry-After is honoured); clients compose their conversations from it with `yield from`.
`HTTPClient.run` performs an exchange with `httpx.Client`, `HTTPClient.arun` with an
`httpx.AsyncClient` on the running event loop. Requests and bytes are counted in
`TransportStats`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from langchain_specsteer.extras import optional_import
from langchain_specsteer.protocol import SESSION_BUSY
from langchain_specsteer.verification import GeneralistError, GeneralistUnreachable

__all__ = [
    "Exchange",
    "HTTPClient",
    "Send",
    "Together",
    "TransportStats",
    "error_message",
    "refused",
]


_STATS_LOCK = threading.Lock()


@dataclass
class TransportStats:
    """What a client sent and received (bodies and headers counted separately)."""

    requests: int = 0
    retries: int = 0
    reopened: int = 0
    body_bytes_sent: int = 0
    body_bytes_received: int = 0
    header_bytes_sent: int = 0
    header_bytes_received: int = 0
    seconds: float = 0.0
    """Time inside requests, summed over requests (rounds in flight overlap)."""
    busy_seconds: float = 0.0
    """Wall time with at least one request open."""

    def __post_init__(self) -> None:
        self._open, self._busy_since = 0, 0.0  # requests open now (not a count to reset)

    def reset(self) -> None:
        with _STATS_LOCK:
            for name in self.__dataclass_fields__:
                setattr(self, name, type(getattr(self, name))())
            self._busy_since = time.perf_counter()

    def opened(self, now: float) -> None:
        """A request starts (`busy_seconds` counts from the first one open)."""
        with _STATS_LOCK:
            if self._open == 0:
                self._busy_since = now
            self._open += 1

    def closed(self, started: float, now: float) -> None:
        """A request that `opened` at `started` is done."""
        with _STATS_LOCK:
            self.seconds += now - started
            self._open = max(0, self._open - 1)
            if self._open == 0:
                self.busy_seconds += now - self._busy_since


@dataclass(frozen=True)
class Send:
    """One HTTP request for a driver to perform."""

    method: str
    path: str
    content: bytes | None
    headers: dict[str, str] | None


@dataclass(frozen=True)
class Together:
    """Several exchanges for a driver to perform at once (each waits its own round trip); the
    driver sends back their results in order, or throws in the first one's error."""

    exchanges: tuple[Exchange, ...]


Exchange = Generator["Send | Together | float", Any, Any]
"""An HTTP conversation written once for both drivers: it yields a `Send` to perform (the
response is sent back, a transport error thrown in) or a delay in seconds to wait, and
returns its result. `HTTPClient.run` performs it with a blocking client, `HTTPClient.arun`
with an asynchronous one on the running event loop."""


class HTTPClient:
    """httpx with retries, backoff and byte counting, for one server.

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8000".
        api_key: bearer token sent with every request (None: none).
        timeout: seconds per HTTP request.
        max_retries: retries after a failed attempt (`exchange`).
        backoff_s: first retry delay; it doubles with each retry.
        wrap_transport: takes the transport of each httpx client this opens
            (`httpx.HTTPTransport` for blocking calls, `httpx.AsyncHTTPTransport` for async
            ones) and returns the one to use: to record, mock or delay requests
            (`latency.simulated_rtt`). None: httpx's own.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
        backoff_s: float,
        wrap_transport: Callable[[Any], Any] | None = None,
    ):
        httpx = optional_import(
            "httpx",
            extra="server",
            purpose="A remote generalist (RemoteGeneralist, OpenAICompatibleGeneralist)",
        )

        if timeout <= 0 or max_retries < 0 or backoff_s < 0:
            msg = (
                "timeout must be positive and max_retries and backoff_s non-negative "
                f"(got {timeout}, {max_retries}, {backoff_s})"
            )
            raise ValueError(msg)
        if wrap_transport is not None and not callable(wrap_transport):
            msg = f"wrap_transport must be callable (transport → transport), got {wrap_transport!r}"
            raise ValueError(msg)
        self.base_url = base_url.rstrip("/")
        self._options = {
            "base_url": self.base_url,
            "timeout": timeout,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
        }
        self._httpx = httpx
        self.wrap_transport = wrap_transport
        self._client = self._new_client()
        self._async: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
        self._pool: ThreadPoolExecutor | None = None  # `Together` on blocking calls
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.stats = TransportStats()

    def _new_client(self) -> Any:
        return self._httpx.Client(**self._options, **self._transport(self._httpx.HTTPTransport))

    def _new_async_client(self) -> Any:
        transport = self._transport(self._httpx.AsyncHTTPTransport)
        return self._httpx.AsyncClient(**self._options, **transport)

    def _transport(self, default: type) -> dict[str, Any]:
        """A new client's `transport` option: httpx's own unless `wrap_transport` wraps it."""
        if self.wrap_transport is None:
            return {}
        return {"transport": self.wrap_transport(default())}

    @property
    def httpx(self) -> Any:
        """The httpx module (its exception types)."""
        return self._httpx

    @property
    def client(self) -> Any:
        """The blocking `httpx.Client` (a new one after `close`)."""
        if self._client.is_closed:
            self._client = self._new_client()
        return self._client

    @client.setter
    def client(self, client: Any) -> None:
        self._client = client

    @property
    def aclient(self) -> Any:
        """The `httpx.AsyncClient` of the running event loop (its connections belong to it)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, self._new_async_client())
        return self._async[1]

    def exchange(
        self, method: str, path: str, body: Any = None, *, retries: bool = True
    ) -> Exchange:
        """One request with the retry policy: returns the response (2xx or a 4xx the caller
        handles); raises GeneralistUnreachable once retries run out."""
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json"} if content is not None else None
        attempts = 1 + (self.max_retries if retries else 0)
        reason, wait_s = "", 0.0
        for attempt in range(attempts):
            if attempt:
                self.stats.retries += 1
                yield max(self.backoff_s * 2 ** (attempt - 1), wait_s)
                wait_s = 0.0
            start = time.perf_counter()
            self.stats.opened(start)
            try:
                response = yield Send(method, path, content, headers)
            except self._httpx.TransportError as err:  # connection refused, reset, timeout
                reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            finally:
                self.stats.closed(start, time.perf_counter())
            self._count(response)
            if not _retryable(response):
                return response
            reason = f"HTTP {response.status_code}: {error_message(response)}"
            wait_s = _retry_after(response)
        msg = f"{method} {self.base_url}{path} failed after {attempts} attempt(s): {reason}"
        raise GeneralistUnreachable(msg)

    def run(self, steps: Exchange) -> Any:
        """Perform an exchange with the blocking client; its result."""
        try:
            op = next(steps)
            while True:
                if isinstance(op, Together):
                    try:
                        results = self._run_together(op.exchanges)
                    except Exception as err:  # a sub-exchange's error, thrown into its parent
                        op = steps.throw(err)
                        continue
                    op = steps.send(results)
                elif isinstance(op, Send):
                    try:
                        response = self.client.request(
                            op.method, op.path, content=op.content, headers=op.headers
                        )
                    except self._httpx.TransportError as err:
                        op = steps.throw(err)
                        continue
                    op = steps.send(response)
                else:
                    time.sleep(op)
                    op = steps.send(None)
        except StopIteration as stop:
            return stop.value

    def _run_together(self, exchanges: tuple[Exchange, ...]) -> list[Any]:
        """The blocking driver's `Together`: the first exchange here, the others on threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(4, thread_name_prefix="specsteer-http")
        futures = [self._pool.submit(self.run, exchange) for exchange in exchanges[1:]]
        first = self.run(exchanges[0]) if exchanges else None
        return [first, *(future.result() for future in futures)][: len(exchanges)]

    async def arun(self, steps: Exchange) -> Any:
        """Perform an exchange with the event loop's asynchronous client; its result."""
        try:
            op = next(steps)
            while True:
                if isinstance(op, Together):
                    try:
                        results = await asyncio.gather(*(self.arun(e) for e in op.exchanges))
                    except Exception as err:  # a sub-exchange's error, thrown into its parent
                        op = steps.throw(err)
                        continue
                    op = steps.send(list(results))
                elif isinstance(op, Send):
                    try:
                        response = await self.aclient.request(
                            op.method, op.path, content=op.content, headers=op.headers
                        )
                    except self._httpx.TransportError as err:
                        op = steps.throw(err)
                        continue
                    op = steps.send(response)
                else:
                    await asyncio.sleep(op)
                    op = steps.send(None)
        except StopIteration as stop:
            return stop.value

    def _count(self, response: Any) -> None:
        request, s = response.request, self.stats
        s.requests += 1
        s.body_bytes_sent += len(request.content or b"") + len(request.url.raw_path)
        s.body_bytes_received += len(response.content)
        s.header_bytes_sent += sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        s.header_bytes_received += sum(len(k) + len(v) + 4 for k, v in response.headers.raw)

    def close(self) -> None:
        """Close the blocking client's connections (a later request opens new ones)."""
        self._client.close()

    async def aclose(self) -> None:
        """Close the running loop's asynchronous client (a later request opens a new one)."""
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            await self._async[1].aclose()
        self._async = None


def _retryable(response: Any) -> bool:
    """5xx, no free session slot (429), or a session still busy with an earlier attempt."""
    status = response.status_code
    return (
        status >= 500 or status == 429 or (status == 409 and _error_type(response) == SESSION_BUSY)
    )


def _retry_after(response: Any) -> float:
    """The server's Retry-After in seconds (capped at 5), or 0."""
    try:
        return min(float(response.headers.get("retry-after", 0)), 5.0)
    except ValueError:
        return 0.0


def _error_type(response: Any) -> str | None:
    try:
        return response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def error_message(response: Any) -> str:
    """The service's error message, or the status phrase."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase or "error"


def refused(response: Any, what: str) -> GeneralistError:
    """The error for an answer that refuses `what` (e.g. "opening a session")."""
    return GeneralistError(f"{what}: HTTP {response.status_code}: {error_message(response)}")
