"""The cloud side: a verifier service hosting the generalist (and a public specialist copy).

- `sessions.py`: `VerifierService`, the models and the sessions of `specsteer/1` and
  `specsteer/2`;
- `openai.py`: `OpenAICompatible`, the subset of vLLM's OpenAI-compatible API that
  `OpenAICompatibleGeneralist` uses;
- `app.py`: `create_app` (FastAPI), the `Gate` in front of it, `bounded_h11`, `serve`;
- `background.py`: `BackgroundServer`, the app on loopback in a thread.

`specsteer serve` runs it (docs/protocol.md). What the service and the clients share is
`protocol.py`.
"""

from langchain_specsteer.protocol import API_KEY_ENV, ServiceError, ServiceLimits
from langchain_specsteer.server.app import Gate, bounded_h11, create_app, serve
from langchain_specsteer.server.openai import CompletionRequest, OpenAICompatible, TokenizeRequest
from langchain_specsteer.server.sessions import VerifierService, served_name

__all__ = [
    "API_KEY_ENV",
    "CompletionRequest",
    "Gate",
    "OpenAICompatible",
    "ServiceError",
    "ServiceLimits",
    "TokenizeRequest",
    "VerifierService",
    "bounded_h11",
    "create_app",
    "serve",
    "served_name",
]
