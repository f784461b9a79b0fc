"""`BackgroundServer`: an ASGI app (e.g. `create_app(service)`) served with uvicorn in a thread,
on loopback, for tests, notebooks and benchmarks."""

from __future__ import annotations

import threading
import time
from typing import Any

from langchain_specsteer.protocol import ServiceLimits
from langchain_specsteer.server.app import bounded_h11
from langchain_specsteer.server.sessions import VerifierService

__all__ = ["BackgroundServer"]


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
