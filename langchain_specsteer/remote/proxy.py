"""A round trip on the wire: `DelayProxy` forwards TCP and delays every byte.

Put it between any client and a server (`DelayProxy(target_url, rtt_s=0.05)`, then point the
client at `proxy.url`): each chunk that crosses it in either direction is held for half the
round trip, counted from when it arrived, so every request waits its own round trip whether
clients send one at a time or many at once, block or await; nothing queues behind anything
but the bytes of its own connection. A new connection's first bytes also wait one more round
trip, as a TCP handshake would make them (a client that keeps its connections open pays it
once). eval/bench_network.py measures SpecSteer through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from urllib.parse import urlsplit

__all__ = ["DelayProxy"]

_CHUNK = 1 << 16


class DelayProxy:
    """A TCP proxy on loopback that adds a round trip to everything it forwards.

    Args:
        target: the server, "http://host:port" or "host:port".
        rtt_s: the round trip to add, in seconds (half each way); `rtt_s` may be changed
            while it runs (new chunks use the new value).
        handshake: whether a new connection's first bytes wait one more round trip.

    Use it as a context manager, or `start()` / `stop()`; `url` is where clients connect.
    """

    def __init__(self, target: str, rtt_s: float, *, handshake: bool = True):
        if not rtt_s >= 0:
            msg = f"rtt_s must be a non-negative number of seconds, got {rtt_s!r}"
            raise ValueError(msg)
        parts = urlsplit(target if "//" in target else f"//{target}")
        if parts.hostname is None or parts.port is None:
            msg = (
                f"target must name a host and a port, e.g. 'http://127.0.0.1:8000', got {target!r}"
            )
            raise ValueError(msg)
        self.target = (parts.hostname, parts.port)
        self.rtt_s = rtt_s
        self.handshake = handshake
        self.connections = 0
        """Connections clients opened through the proxy so far."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """Where clients connect: "http://127.0.0.1:<port>"."""
        if self._port is None:
            msg = "the proxy is not running: start() it (or use it in a with block)"
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> DelayProxy:
        """Listen on a free loopback port, in a thread of its own."""
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self._port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shut() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = self._server = self._thread = None
        self._port = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        self.connections += 1
        writers = [client_w]
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
            writers.append(server_w)
            for writer in writers:  # forward each chunk when due, not when Nagle allows
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            extra = self.rtt_s if self.handshake else 0.0
            await asyncio.gather(
                self._pipe(client_r, server_w, first_extra=extra), self._pipe(server_r, client_w)
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in writers:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first_extra: float = 0
    ) -> None:
        """Copy one direction, each chunk released half a round trip after it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            extra = first_extra
            with contextlib.suppress(OSError):  # a reset ends the stream as its end would
                while data := await reader.read(_CHUNK):
                    queue.put_nowait((loop.time() + self.rtt_s / 2 + extra, data))
                    extra = 0.0
            queue.put_nowait((loop.time() + self.rtt_s / 2, b""))

        async def write() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
