"""Generalists across the network: our verifier service, or any vLLM-style OpenAI server.

Both plug into `SpecSteerLLM(generalist=...)` like `LocalGeneralist`:

- `RemoteGeneralist` (`session.py`) speaks the session protocol of `specsteer serve`
  (docs/protocol.md): the KV cache stays in the service, a round sends the draft and gets the
  accepted count and a sparse hint back, and a public specialist hosted there computes q_gen.
- `OpenAICompatibleGeneralist` (`openai.py`) speaks vLLM's `/v1/completions`, so the
  generalist can be a 32B+ model on many GPUs; q_gen is then computed on the device and the
  device decides acceptance.

Faults: connection errors, timeouts, 5xx, 429 and "busy" 409s are retried with exponential
backoff; a lost session is reopened and resumed from the tokens the device holds. Past
`max_retries` the call raises `GeneralistError` (`GeneralistUnreachable` when the server never
answered), which the engine turns into a specialist-only finish (`on_generalist_error=
"fallback"`) or raises.

Sync and async: each exchange (a round with its reopen, `/tokenize`) is written once as an
`Exchange` generator over the retry policy of `http.HTTPClient`; sync calls perform it with
`httpx.Client`, async calls (`ainvoke`, `astream`, ...) with an `httpx.AsyncClient` on the
running event loop. `base.py` holds what both clients share; `latency.py` a slower wire for
benchmarks.
"""

from langchain_specsteer.remote.http import TransportStats
from langchain_specsteer.remote.openai import (
    LogprobsMode,
    OpenAICompatibleGeneralist,
    OpenAICompatibleSession,
    Scoring,
)
from langchain_specsteer.remote.session import RemoteGeneralist, RemoteSession

__all__ = [
    "LogprobsMode",
    "OpenAICompatibleGeneralist",
    "OpenAICompatibleSession",
    "RemoteGeneralist",
    "RemoteSession",
    "Scoring",
    "TransportStats",
]
