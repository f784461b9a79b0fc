"""The verifier service's HTTP app: `create_app`, the `Gate` in front of it, `bounded_h11`.

`VerifierService` (sessions.py) holds the models and the sessions and does the work;
`create_app` puts it behind HTTP (FastAPI). Two dialects are served:

- the session protocol `specsteer/1` (`protocol.py`, docs/protocol.md) under /specsteer/v1:
  KV caches live in the session, a round's uplink is the draft and its downlink the accepted
  count plus a sparse hint;
- the subset of vLLM's OpenAI-compatible API that verification uses (`/v1/completions` with
  token-id prompts, `echo`, `logprobs`, `prompt_logprobs`, `max_tokens` 0 or 1; `/v1/models`,
  `/tokenize`, `/health`; openai.py), so `OpenAICompatibleGeneralist` is tested
  against a real server.

Every bad request gets a 4xx with a reason (`protocol.ServiceError`, OpenAI's error body).
In front of the routes, `Gate` checks the API key from the headers alone and then reads the
body within its byte and time limits; `bounded_h11` makes the HTTP server refuse a chunked body
of too many chunks while it parses them (see `ServiceLimits`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from langchain_specsteer.extras import optional_import
from langchain_specsteer.protocol import (
    PROTOCOL,
    SESSION_ID_PATTERN,
    ErrorBody,
    OpenSession,
    RoundRequest,
    RoundRequestV2,
    RoundResult,
    RoundResultV2,
    ServiceError,
    ServiceInfo,
    ServiceInfoV2,
    ServiceLimits,
    SessionOpened,
    error_body,
)
from langchain_specsteer.server.openai import (
    CompletionRequest,
    LogprobsMode,
    OpenAICompatible,
    TokenizeRequest,
)
from langchain_specsteer.server.sessions import VerifierService, log

__all__ = ["Gate", "bounded_h11", "create_app", "serve"]


def create_app(
    service: VerifierService,
    *,
    api_key: str | None = None,
    title: str = "SpecSteer verifier",
    public_docs: bool = False,
    logprobs_mode: LogprobsMode = "raw_logprobs",
) -> Any:
    """The FastAPI app serving `service` (see docs/protocol.md).

    Args:
        service: the models and sessions.
        api_key: require `Authorization: Bearer <api_key>` on every path but /health (checked
            before the body is read).
        title: the OpenAPI document's title.
        public_docs: serve /openapi.json, /docs and /redoc without the key.
        logprobs_mode: what /v1/completions reports for a generated token, as vLLM's
            `--logprobs-mode`: "raw_logprobs" or "processed_logprobs" (after temperature).
    """
    optional_import("fastapi", extra="server", purpose="The verifier service")
    from fastapi import APIRouter, Depends, FastAPI
    from fastapi.responses import Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    from langchain_specsteer import __version__

    bearer = Depends(HTTPBearer(auto_error=False))

    def authorize(credentials: HTTPAuthorizationCredentials | None = bearer) -> None:
        """The key again, after `Gate`; this dependency puts the scheme in the OpenAPI document."""
        _check_key(api_key, None if credentials is None else credentials.credentials)

    app = FastAPI(
        title=title,
        version=__version__,
        description=(
            f"Session protocol `{PROTOCOL}` under /specsteer/v1 and vLLM's OpenAI-compatible "
            "scoring subset. See docs/protocol.md."
        ),
    )
    app.state.service = service
    _answer_errors(app)
    docs = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    app.add_middleware(
        Gate,
        api_key=api_key,
        public_paths={"/health", *(docs if public_docs else ())},
        limits=service.limits,
        clock=service.clock,
    )
    protected = APIRouter(dependencies=[Depends(authorize)], responses=_ERRORS)
    _session_routes(protected, service)
    _openai_routes(protected, OpenAICompatible(service, logprobs_mode))

    @app.get("/health", tags=["operations"], response_class=Response, response_model=None)
    @app.head("/health", tags=["operations"], response_class=Response, response_model=None)
    def health() -> Response:
        """200 while the service runs (no key needed, as in vLLM)."""
        return Response(status_code=200)

    app.include_router(protected)
    openapi = app.openapi

    def openapi_without_422() -> dict:
        """FastAPI documents a 422 for bodies; this service answers 400 (as vLLM does)."""
        schema = openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        return schema

    app.openapi = openapi_without_422
    return app


_ERRORS = {
    status: {"model": ErrorBody, "description": reason}
    for status, reason in (
        (400, "Invalid request: the message names the field"),
        (401, "Missing or wrong API key"),
        (413, "Over a limit of this service"),
    )
}
"""The refusals every protected route may answer (in the OpenAPI document)."""


def serve(
    service: VerifierService,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    public_docs: bool = False,
    logprobs_mode: LogprobsMode = "raw_logprobs",
    log_level: str = "info",
) -> None:
    """Serve `service` over HTTP until interrupted (what `specsteer serve` runs): the app of
    `create_app` on uvicorn, whose HTTP parser refuses a chunked body of more chunks than
    `max_body_chunks` (`bounded_h11`)."""
    uvicorn = optional_import("uvicorn", extra="server", purpose="specsteer serve")
    app = create_app(service, api_key=api_key, public_docs=public_docs, logprobs_mode=logprobs_mode)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        http=bounded_h11(service.limits.max_body_chunks),
    )


def _answer_errors(app: Any) -> None:
    """Every error as OpenAI's error body: refusals, invalid bodies (400, not FastAPI's 422),
    HTTP errors and anything unexpected (500)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def error_response(status: int, message: str, type_: str, param: str | None) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 429 else {}
        if status >= 500:  # the server drops the connection after an unexpected error: say so
            headers["Connection"] = "close"
        return JSONResponse(error_body(status, message, type_, param), status, headers=headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        return error_response(err.status, err.message, err.type, err.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e['msg']}"
            for e in problems[:5]
        )
        return error_response(400, message or "invalid request", "invalid_request_error", param)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(err).__name__}", "server_error", None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail), "invalid_request_error", None)


def _session_routes(router: Any, service: VerifierService) -> None:
    """The session protocol `specsteer/1` under /specsteer/v1."""
    from fastapi.responses import Response

    prefix = "/specsteer/v1"

    @router.get(f"{prefix}/info", response_model=ServiceInfo, tags=["session protocol"])
    def info() -> ServiceInfo:
        """What this service hosts, its vocabulary signature and its limits."""
        return service.info()

    @router.post(
        f"{prefix}/sessions",
        response_model=SessionOpened,
        status_code=201,
        tags=["session protocol"],
        responses={429: {"model": ErrorBody, "description": "Every session slot is busy"}},
    )
    def open_session(body: OpenSession) -> SessionOpened:
        """Open a session after public prompts."""
        return service.open(body)

    @router.post(
        f"{prefix}/sessions/{{session_id}}/rounds",
        response_model=RoundResult,
        response_model_exclude_none=False,
        tags=["session protocol"],
        responses={
            404: {"model": ErrorBody, "description": "Unknown, expired or evicted session"},
            409: {"model": ErrorBody, "description": "Busy session, or position not held"},
        },
    )
    def verify_round(session_id: str, body: RoundRequest) -> RoundResult:
        """Verify a draft; the answer holds the accepted count and the hint(s)."""
        return service.round(session_id, body)

    _session_routes_v2(router, service)

    @router.delete(
        f"{prefix}/sessions/{{session_id}}",
        status_code=204,
        response_class=Response,
        response_model=None,
        tags=["session protocol"],
        responses={404: {"model": ErrorBody, "description": "Unknown session"}},
    )
    def close_session(session_id: str) -> Response:
        """Close a session and free its caches."""
        service.close(session_id)
        return Response(status_code=204)


def _session_routes_v2(router: Any, service: VerifierService) -> None:
    """`specsteer/2` under /specsteer/v2: rounds in flight, the opening in the first rounds."""
    from fastapi import Path
    from fastapi.responses import Response

    prefix = "/specsteer/v2"
    session_id_path = Path(pattern=SESSION_ID_PATTERN, description="Chosen by the device")

    @router.get(f"{prefix}/info", response_model=ServiceInfoV2, tags=["session protocol"])
    def info_v2() -> ServiceInfoV2:
        """What this service hosts, its vocabulary signature, its limits and how many rounds
        of one session it takes in flight."""
        return service.info_v2()

    @router.post(
        f"{prefix}/sessions/{{session_id}}/rounds",
        response_model=RoundResultV2,
        response_model_exclude_none=False,
        tags=["session protocol"],
        responses={
            404: {"model": ErrorBody, "description": "Unknown session and no opening"},
            409: {
                "model": ErrorBody,
                "description": "Position not held, rounds out of order, or another vocabulary",
            },
            429: {"model": ErrorBody, "description": "Too many rounds in flight, or sessions"},
        },
    )
    async def verify_round_v2(
        body: RoundRequestV2, session_id: str = session_id_path
    ) -> RoundResultV2:
        """Verify a draft in turn (rounds are served by `seq`); the first rounds open the
        session."""
        return await service.round_v2(session_id, body)

    @router.delete(
        f"{prefix}/sessions/{{session_id}}",
        status_code=204,
        response_class=Response,
        response_model=None,
        tags=["session protocol"],
        responses={404: {"model": ErrorBody, "description": "Unknown session"}},
    )
    def close_session_v2(session_id: str = session_id_path) -> Response:
        """Close a session and free its caches (rounds still waiting get 404)."""
        service.close(session_id)
        return Response(status_code=204)


def _openai_routes(router: Any, openai: OpenAICompatible) -> None:
    """vLLM's scoring subset: /v1/completions, /v1/models and /tokenize."""

    @router.post("/v1/completions", tags=["OpenAI-compatible"])
    def completions(body: CompletionRequest) -> Any:
        """vLLM's completions, for scoring token ids or generating, streamed (server-sent
        events, as vLLM's `stream`) or not (see docs/protocol.md for the subset)."""
        if not body.stream:
            return openai.complete(body)
        from fastapi.responses import StreamingResponse

        choices = openai.generate(body)

        def events() -> Iterator[str]:
            for choice in choices:
                yield f"data: {json.dumps(openai.answer([choice], 1))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @router.get("/v1/models", tags=["OpenAI-compatible"])
    def models() -> dict[str, Any]:
        return openai.models()

    @router.post("/tokenize", tags=["OpenAI-compatible"])
    def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """vLLM's tokenizer endpoint: a prompt, or messages through the chat template."""
        return openai.tokenize(body)


def _check_key(api_key: str | None, sent: str | None) -> None:
    """Refuse (401) a request whose bearer token is not `api_key` (None: no key needed)."""
    if api_key is None:
        return
    if sent is None:
        raise ServiceError(401, "missing API key: send Authorization: Bearer <key>")
    if not secrets.compare_digest(sent.encode(), api_key.encode()):
        raise ServiceError(401, "wrong API key")


def _bearer(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    value = dict(headers).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Gate:
    """ASGI middleware: what is checked before any route runs, in this order.

    1. The API key, from the headers alone (every path but `public_paths`): 401 before a byte
       of the body is read.
    2. The body: at most `max_body_bytes` (413), arriving within `body_timeout_seconds` (408).
       It is read whole here and handed to the app.

    Refusals carry `Connection: close`, so the server parses no more of an unread body.

    Args:
        app: the ASGI app behind the gate.
        api_key: the bearer token to require; None: none.
        public_paths: paths served without the key.
        limits: `max_body_bytes` and `body_timeout_seconds` apply.
        clock: seconds, for the body's deadline (tests inject one).
    """

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        public_paths: Collection[str],
        limits: ServiceLimits,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app = app
        self.api_key = api_key
        self.public_paths = frozenset(public_paths)
        self.limits = limits
        self.clock = clock

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            if scope["path"] not in self.public_paths:
                _check_key(self.api_key, _bearer(scope["headers"]))
            if b"content-length" not in headers and b"transfer-encoding" not in headers:
                await self.app(scope, receive, send)  # no body
                return
            body = await self._read(headers.get(b"content-length"), receive)
        except ServiceError as err:
            await _refuse(send, err)
            return
        if body is None:  # the client went away
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, declared: bytes | None, receive: Any) -> bytes | None:
        """The whole body within the limits (None if the client disconnects)."""
        limit, timeout = self.limits.max_body_bytes, self.limits.body_timeout_seconds
        too_large = ServiceError(413, f"request body over max_body_bytes ({limit})")
        late = ServiceError(
            408, f"request body not received within body_timeout_seconds ({timeout})"
        )
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise too_large
        deadline = self.clock() + timeout
        parts, size, more = [], 0, True
        while more:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise late
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise late from None
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                raise too_large
            more = message.get("more_body", False)
        return b"".join(parts)


def _closing(err: ServiceError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """`err`'s JSON body, and headers that close the connection after it."""
    body = json.dumps(err.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return body, headers


async def _refuse(send: Any, err: ServiceError) -> None:
    """Answer `err` from ASGI middleware, closing the connection."""
    body, headers = _closing(err)
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bounded_h11(max_body_chunks: int) -> type:
    """uvicorn's h11 HTTP protocol, refusing (413) a body of more than `max_body_chunks` chunks.

    The server parses a chunked body before any app code sees it, a few microseconds a chunk
    (a million one-byte chunks: seconds of the event loop). This stops parsing at the first
    chunk over the bound; pass it as `uvicorn.run(..., http=bounded_h11(n))`.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    message = f"request body over max_body_chunks ({max_body_chunks} chunks)"

    class ChunkCounting(h11.Connection):
        """h11's server side, counting the chunks of the request body it parses."""

        chunks = 0
        over = False

        def next_event(self) -> Any:
            event = super().next_event()
            if isinstance(event, h11.Request):
                self.chunks = 0
            elif isinstance(event, h11.Data) and event.chunk_start:
                self.chunks += 1
                if self.chunks > max_body_chunks:
                    self.over = True
                    raise h11.RemoteProtocolError(message, error_status_hint=413)
            return event

    class ChunkBoundedH11(H11Protocol):
        max_chunks = max_body_chunks

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            size = self.config.h11_max_incomplete_event_size
            options = {} if size is None else {"max_incomplete_event_size": size}
            self.conn = ChunkCounting(h11.SERVER, **options)

        def send_400_response(self, msg: str) -> None:
            if not self.conn.over:
                super().send_400_response(msg)
                return
            if self.conn.our_state is h11.SEND_RESPONSE:  # nothing answered yet
                body, headers = _closing(ServiceError(413, message))
                for event in (
                    h11.Response(status_code=413, headers=headers, reason=b"Content Too Large"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event))
            self.transport.close()

    return ChunkBoundedH11
