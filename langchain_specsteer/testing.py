"""Helpers for tests, notebooks and benchmarks: a service on loopback, a slower wire.

- `BackgroundServer` (`server/background.py`) serves an ASGI app (e.g. `create_app(service)`)
  with uvicorn in a thread.
- `simulated_rtt(seconds)` (`remote/latency.py`) is a `wrap_transport` for `RemoteGeneralist`
  and `OpenAICompatibleGeneralist` that sleeps before every request, as a wire with that
  round-trip latency would make it wait (eval/bench_remote.py's latency sweep).
"""

from langchain_specsteer.remote.latency import simulated_rtt
from langchain_specsteer.server.background import BackgroundServer

__all__ = ["BackgroundServer", "simulated_rtt"]
