"""The cloud side: a verifier service hosting the generalist (and a public specialist copy).

`VerifierService` holds the models and the sessions and does the work; `create_app` puts it
behind HTTP (FastAPI). Two dialects are served:

- the session protocol `specsteer/1` (`protocol.py`, docs/protocol.md) under /specsteer/v1:
  KV caches live in the session, a round's uplink is the draft and its downlink the accepted
  count plus a sparse hint;
- the subset of vLLM's OpenAI-compatible API that verification uses (`/v1/completions` with
  token-id prompts, `echo`, `logprobs`, `prompt_logprobs`, `max_tokens` 0 or 1; `/v1/models`,
  `/tokenize`, `/health`), so `OpenAICompatibleGeneralist` is tested against a real server.

Model work is serialised across sessions by one lock; each session takes one request at a
time (a concurrent second one gets 409). Sessions idle for `session_idle_seconds` are
dropped, and at `max_sessions` the least recently used idle session makes room, so memory
stays bounded under churn. Every bad request gets a 4xx with a reason.

In front of the routes, `Gate` checks the API key from the headers alone and then reads the
body within its byte and time limits; `bounded_h11` makes the HTTP server refuse a chunked body
of too many chunks while it parses them (see `ServiceLimits`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from langchain_specsteer import algorithms as alg
from langchain_specsteer.extras import optional_import
from langchain_specsteer.local import LocalSession
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
from langchain_specsteer.protocol import (
    MIN_TEMPERATURE,
    Candidates,
    Limits,
    OpenSession,
    RoundRequest,
    RoundResult,
    ServiceInfo,
    SessionOpened,
)

__all__ = [
    "BackgroundServer",
    "CompletionRequest",
    "Gate",
    "ServiceError",
    "ServiceLimits",
    "TokenizeRequest",
    "VerifierService",
    "bounded_h11",
    "create_app",
    "served_name",
]

log = logging.getLogger("langchain_specsteer.service")

API_KEY_ENV = "SPECSTEER_API_KEY"


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on what one service accepts and holds.

    Attributes:
        max_prompt_tokens: longest prompt (session open, completions, tokenize); a service
            lowers it to its models' maximum length (`max_position_embeddings`).
        max_session_tokens: longest prompt + generated + draft in one session; lowered to the
            models' maximum length too.
        max_draft_tokens: longest draft per round.
        max_top_m: largest hint per position.
        max_logprobs: largest `logprobs` / `prompt_logprobs` on /v1/completions (vLLM: 20).
        max_sessions: sessions held at once; the least recently used idle one makes room.
        session_idle_seconds: a session without requests this long is dropped.
        max_body_bytes: largest request body.
        max_body_chunks: most chunks in a chunked request body (the HTTP server parses each
            one; see `bounded_h11`).
        body_timeout_seconds: a request body must arrive within this long (else 408).
    """

    max_prompt_tokens: int = 8192
    max_session_tokens: int = 16384
    max_draft_tokens: int = 64
    max_top_m: int = 1024
    max_logprobs: int = 20
    max_sessions: int = 256
    session_idle_seconds: float = 300.0
    max_body_bytes: int = 1 << 20
    max_body_chunks: int = 1024
    body_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                msg = f"ServiceLimits.{name} must be positive, got {value!r}"
                raise ValueError(msg)


class ServiceError(Exception):
    """A request the service refuses: HTTP `status` with a reason (and the field, if one)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self._type = type

    @property
    def type(self) -> str:
        if self._type:
            return self._type
        return {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            408: "request_timeout",
            409: "conflict_error",
            413: "request_too_large",
            429: "rate_limit_error",
        }.get(self.status, "server_error")


def _unicode(value: Any, field: str) -> Any:
    """`value` as it is, if every string in it is Unicode text (JSON's "\\ud800" is not)."""
    pending = [(field, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, dict):
            pending.extend((f"{where}[{k!r}]", v) for k, v in item.items())
            pending.extend((f"a key of {where}", k) for k in item)
        elif isinstance(item, list):
            pending.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                msg = (
                    f"{where} holds a lone surrogate ({item[err.start]!r} at character "
                    f"{err.start}), which is not Unicode text; send valid UTF-8"
                )
                raise ValueError(msg) from None
    return value


class CompletionRequest(BaseModel):
    """The fields of vLLM's `/v1/completions` this service implements (others are ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: list[int] | str
    max_tokens: int | None = Field(default=16)
    echo: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    temperature: float | None = None
    n: int = 1
    stream: bool = False
    return_tokens_as_token_ids: bool = False

    @field_validator("prompt")
    @classmethod
    def text_is_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        return _unicode(value, info.field_name)


class TokenizeRequest(BaseModel):
    """vLLM's `/tokenize`: a `prompt`, or chat `messages` rendered with the chat template."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("prompt", "messages", "chat_template_kwargs")
    @classmethod
    def text_is_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        return _unicode(value, info.field_name)


@dataclass
class _Session:
    id: str
    local: LocalSession
    top_m: int
    vocab_size: int
    busy: threading.Lock
    last_used: float
    rounds: int = 0


class VerifierService:
    """The generalist (and optionally a public specialist) serving sessions and completions.

    Args:
        generalist: the model that verifies.
        public_specialist: a public copy of the device's specialist, so q_gen is computed
            here and the ratio test is decided here (DESIGN.md §3).
        model_name: the name `/v1/models`, `ServiceInfo.model` and completions report (vLLM's
            served model name); default `served_name` of the generalist's.
        limits: see `ServiceLimits`; prompt and session lengths are lowered to the models'
            maximum.
        log_prompts: include prompt ids in the logs (off: logs carry sizes and timings only).
        clock: seconds, for session expiry (tests inject one).
    """

    def __init__(
        self,
        generalist: LocalGeneralist,
        public_specialist: LocalSpecialist | None = None,
        *,
        model_name: str | None = None,
        limits: ServiceLimits | None = None,
        log_prompts: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.generalist = generalist
        self.public_specialist = public_specialist
        self.model_name = model_name or served_name(generalist.name)
        self.limits = _fit_to_models(limits or ServiceLimits(), generalist, public_specialist)
        self.log_prompts = log_prompts
        self.clock = clock
        self.vocab_size = generalist.vocab_size
        if public_specialist is not None:
            if public_specialist.vocab_signature != generalist.vocab_signature:
                msg = "the public specialist and the generalist have different vocabularies"
                raise ValueError(msg)
            self.vocab_size = min(self.vocab_size, public_specialist.vocab_size)
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._model_lock = threading.Lock()  # model work, one request at a time

    # ---- session protocol -------------------------------------------------------------

    def info(self) -> ServiceInfo:
        limits = self.limits
        spec = self.public_specialist
        return ServiceInfo(
            model=self.model_name,
            vocab_size=self.vocab_size,
            vocab_signature=self.generalist.vocab_signature,
            eos_token_ids=sorted(self.generalist.eos_token_ids),
            chat_template=bool(getattr(self.generalist.tokenizer, "chat_template", None)),
            public_specialist=spec.name if spec is not None else None,
            public_specialist_vocab_signature=spec.vocab_signature if spec is not None else None,
            limits=Limits(
                max_prompt_tokens=limits.max_prompt_tokens,
                max_session_tokens=limits.max_session_tokens,
                max_draft_tokens=limits.max_draft_tokens,
                max_top_m=limits.max_top_m,
                max_sessions=limits.max_sessions,
                session_idle_seconds=limits.session_idle_seconds,
                max_body_bytes=limits.max_body_bytes,
            ),
        )

    def open(self, request: OpenSession) -> SessionOpened:
        """Start a session (its prompts are prefilled with the first round)."""
        limits = self.limits
        vocab_size = request.vocab_size or self.vocab_size
        if vocab_size > self.vocab_size:
            msg = f"vocab_size {vocab_size} exceeds the model's {self.vocab_size}"
            raise ServiceError(400, msg, param="vocab_size")
        if request.top_m > limits.max_top_m:
            msg = f"top_m {request.top_m} exceeds this service's max_top_m {limits.max_top_m}"
            raise ServiceError(400, msg, param="top_m")
        for field in ("prompt_ids", "q_gen_prompt_ids"):
            ids = getattr(request, field)
            if ids is None:
                continue
            if len(ids) > limits.max_prompt_tokens:
                msg = f"{field} has {len(ids)} tokens; over max_prompt_tokens"
                msg += f" ({limits.max_prompt_tokens})"
                raise ServiceError(413, msg, param=field)
            _check_ids(ids, vocab_size, field)
        q_gen_prompt = request.q_gen_prompt_ids if self.public_specialist is not None else None
        local = LocalSession(
            self.generalist,
            request.prompt_ids,
            vocab_size=vocab_size,
            temperature=request.temperature,
            public_specialist=self.public_specialist,
            q_gen_prompt=q_gen_prompt,
        )
        session = _Session(
            id=secrets.token_urlsafe(12),
            local=local,
            top_m=request.top_m,
            vocab_size=vocab_size,
            busy=threading.Lock(),
            last_used=self.clock(),
        )
        with self._sessions_lock:
            self._expire(self.clock())
            if len(self.sessions) >= limits.max_sessions and not self._evict_one():
                msg = f"all {limits.max_sessions} sessions are busy; retry shortly"
                raise ServiceError(429, msg)
            self.sessions[session.id] = session
        self._log(
            "open",
            session=session.id,
            prompt_tokens=len(request.prompt_ids),
            hosts_q_gen=local.hosts_q_gen,
            **({"prompt_ids": request.prompt_ids} if self.log_prompts else {}),
        )
        return SessionOpened(
            session_id=session.id,
            hosts_q_gen=local.hosts_q_gen,
            idle_seconds=limits.session_idle_seconds,
        )

    def round(self, session_id: str, request: RoundRequest) -> RoundResult:
        """Verify one draft in a session (idempotent: a retry gives the same answer)."""
        session = self._get(session_id)
        if not session.busy.acquire(blocking=False):
            msg = f"session {session_id} is already serving a request; send one at a time"
            raise ServiceError(409, msg, type="session_busy")
        try:
            return self._round(session, request)
        finally:
            session.last_used = self.clock()
            session.busy.release()

    def _round(self, session: _Session, request: RoundRequest) -> RoundResult:
        limits, local, k = self.limits, session.local, len(request.draft)
        start = time.perf_counter()
        if k > limits.max_draft_tokens:
            msg = f"draft has {k} tokens; max_draft_tokens is {limits.max_draft_tokens}"
            raise ServiceError(413, msg, param="draft")
        _check_ids(request.append, session.vocab_size, "append")
        _check_ids(request.draft, session.vocab_size, "draft")
        if request.uniforms is not None and len(request.uniforms) != k:
            msg = f"uniforms has {len(request.uniforms)} values for a draft of {k} tokens"
            raise ServiceError(400, msg, param="uniforms")
        held = len(local.generated)
        if request.position > held:
            msg = (
                f"position {request.position} is past the {held} tokens this session holds; "
                "resend from a position it holds, or reopen the session"
            )
            raise ServiceError(409, msg, param="position")
        length = request.position + len(request.append) + k
        total = max(seq.prompt_length for seq in local.sequences) + length
        if total > limits.max_session_tokens:
            msg = f"the session would hold {total} tokens; over max_session_tokens"
            msg += f" ({limits.max_session_tokens})"
            raise ServiceError(413, msg, param="append")
        gamma = math.inf if request.gamma is None else request.gamma
        with self._model_lock:
            local.truncate(request.position)
            local.extend(request.append)
            log_p_G, log_q_gen = local.rows(request.draft)
        accepted = alg.accept(
            request.rule, request.draft, log_p_G, log_q_gen, gamma, request.uniforms
        )
        positions = range(k + 1) if accepted is None else [accepted]
        hints = [_candidates(i, log_p_G, log_q_gen, session.top_m) for i in positions]
        result = RoundResult(accepted=accepted, hints=hints, length=length)
        if accepted is None and k:
            ids = torch.tensor(request.draft).unsqueeze(-1)
            result.draft_log_p_G = _json_floats(log_p_G[:-1].gather(-1, ids).squeeze(-1))
            if log_q_gen is not None:
                result.draft_log_q_gen = _json_floats(log_q_gen[:-1].gather(-1, ids).squeeze(-1))
        session.rounds += 1
        self._log(
            "round",
            session=session.id,
            round=session.rounds,
            position=request.position,
            appended=len(request.append),
            drafted=k,
            rule=request.rule,
            accepted=accepted,
            ms=round((time.perf_counter() - start) * 1000, 2),
            **({"draft": request.draft, "append": request.append} if self.log_prompts else {}),
        )
        return result

    def close(self, session_id: str) -> None:
        """Drop a session and its caches."""
        with self._sessions_lock:
            session = self.sessions.pop(session_id, None)
        if session is None:
            raise ServiceError(404, f"no session {session_id!r} (closed, expired or evicted)")
        session.local.close()
        self._log("close", session=session_id, rounds=session.rounds)

    def _get(self, session_id: str) -> _Session:
        with self._sessions_lock:
            self._expire(self.clock())
            session = self.sessions.get(session_id)
            if session is None:
                msg = (
                    f"no session {session_id!r} (closed, expired or evicted); "
                    "open a new one and resend the generated tokens"
                )
                raise ServiceError(404, msg)
            self.sessions.move_to_end(session_id)
            return session

    def _expire(self, now: float) -> None:
        """Drop sessions idle longer than the limit (called with the sessions lock held)."""
        idle = self.limits.session_idle_seconds
        for sid, session in list(self.sessions.items()):
            if now - session.last_used > idle and not session.busy.locked():
                del self.sessions[sid]
                session.local.close()
                self._log("expire", session=sid)

    def _evict_one(self) -> bool:
        """Drop the least recently used idle session (sessions lock held)."""
        for sid, session in self.sessions.items():
            if not session.busy.locked():
                del self.sessions[sid]
                session.local.close()
                self._log("evict", session=sid)
                return True
        return False

    # ---- OpenAI-compatible subset -------------------------------------------------------

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        """vLLM's `/v1/completions`, for scoring: prompt log-probs and at most one new token."""
        limits = self.limits
        self._check_model(request.model)
        if request.stream:
            raise ServiceError(400, "stream is not supported by this server", param="stream")
        if request.n != 1:
            raise ServiceError(400, "n must be 1", param="n")
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        if max_tokens not in (0, 1) or (max_tokens == 0 and not request.echo):
            msg = "this server scores only: max_tokens must be 1, or 0 together with echo"
            raise ServiceError(400, msg, param="max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(request, name)
            if value is not None and not 0 <= value <= limits.max_logprobs:
                msg = f"{name} must be in [0, {limits.max_logprobs}] (max_logprobs), got {value}"
                raise ServiceError(400, msg, param=name)
        temperature = 1.0 if request.temperature is None else request.temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= 2) or (
            0 < temperature < MIN_TEMPERATURE
        ):
            msg = f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2], got {temperature}"
            raise ServiceError(400, msg, param="temperature")
        tokenizer = self.generalist.tokenizer
        if isinstance(request.prompt, str):
            prompt = tokenizer.encode(request.prompt, add_special_tokens=True)
        else:
            prompt = request.prompt
        if not prompt:
            raise ServiceError(400, "prompt is empty", param="prompt")
        if len(prompt) > limits.max_prompt_tokens:
            msg = (
                f"prompt has {len(prompt)} tokens; max_prompt_tokens is {limits.max_prompt_tokens}"
            )
            raise ServiceError(413, msg, param="prompt")
        _check_ids(prompt, self.generalist.vocab_size, "prompt")
        prompt_logprobs = request.prompt_logprobs
        if prompt_logprobs is None and request.echo and request.logprobs is not None:
            prompt_logprobs = request.logprobs
        with self._model_lock, torch.inference_mode():
            ids = torch.tensor([prompt], device=self.generalist.device)
            logits = self.generalist.model(input_ids=ids).logits[0].float()
        rows = torch.log_softmax(logits, dim=-1)  # (L, V): row i predicts token i+1
        last = rows[-1]
        if temperature == 0:
            new = int(torch.argmax(last))
        else:
            new = int(torch.multinomial(torch.softmax(logits[-1] / temperature, -1), 1))
        generated = [new] if max_tokens == 1 else []

        def name(t: int) -> str:
            if request.return_tokens_as_token_ids:
                return f"token_id:{t}"
            return tokenizer.decode([t])

        def top(row: torch.Tensor, actual: int, n: int) -> dict[int, tuple[float, int]]:
            """The actual token first, then the top n: id → (log-prob, vLLM's rank)."""
            entries = {actual: (_clamp(row[actual]), int((row >= row[actual]).sum()))}
            if n:
                values, indices = torch.topk(row, min(n, row.shape[-1]))
                for rank, (v, t) in enumerate(
                    zip(values.tolist(), indices.tolist(), strict=True), 1
                ):
                    entries.setdefault(t, (_clamp(v), rank))
            return entries

        choice: dict[str, Any] = {
            "index": 0,
            "text": (tokenizer.decode(prompt) if request.echo else "")
            + tokenizer.decode(generated),
            "logprobs": None,
            "finish_reason": "stop" if new in self.generalist.eos_token_ids else "length",
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        if prompt_logprobs is not None:
            listed: list[dict | None] = [None]
            for i in range(1, len(prompt)):
                row = rows[i - 1]
                entries = top(row, prompt[i], prompt_logprobs)
                listed.append(
                    {
                        str(t): {"logprob": v, "rank": r, "decoded_token": tokenizer.decode([t])}
                        for t, (v, r) in entries.items()
                    }
                )
            choice["prompt_logprobs"] = listed
        if request.logprobs is not None:
            scored = (list(range(len(prompt))) if request.echo else []) + (
                [len(prompt)] if generated else []
            )
            tokens_all = prompt + generated
            token_logprobs, tokens, tops, offsets, offset = [], [], [], [], 0
            for pos in scored:
                t = tokens_all[pos]
                tokens.append(name(t))
                offsets.append(offset)
                offset += len(tokens[-1])
                if pos == 0:
                    token_logprobs.append(None)
                    tops.append(None)
                    continue
                row = rows[pos - 1]
                token_logprobs.append(_clamp(row[t]))
                tops.append({name(u): v for u, (v, _) in top(row, t, request.logprobs).items()})
            choice["logprobs"] = {
                "text_offset": offsets,
                "token_logprobs": token_logprobs,
                "tokens": tokens,
                "top_logprobs": tops,
            }
        self._log("completion", prompt_tokens=len(prompt), max_tokens=max_tokens)
        return {
            "id": f"cmpl-{secrets.token_hex(8)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": 1,
                "total_tokens": len(prompt) + 1,
            },
        }

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        """vLLM's `/tokenize`: a prompt, or messages through the chat template."""
        self._check_model(request.model)
        tokenizer = self.generalist.tokenizer
        if (request.prompt is None) == (request.messages is None):
            raise ServiceError(400, "give exactly one of prompt and messages", param="prompt")
        if request.messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise ServiceError(400, "this model has no chat template", param="messages")
            try:
                text = tokenizer.apply_chat_template(
                    request.messages,
                    tokenize=False,
                    add_generation_prompt=request.add_generation_prompt,
                    **(request.chat_template_kwargs or {}),
                )
            except Exception as err:  # a template error is the caller's input
                raise ServiceError(400, f"chat template failed: {err}", param="messages") from err
            tokens = tokenizer.encode(text, add_special_tokens=bool(request.add_special_tokens))
        else:
            special = True if request.add_special_tokens is None else request.add_special_tokens
            tokens = tokenizer.encode(request.prompt, add_special_tokens=special)
        if len(tokens) > self.limits.max_prompt_tokens:
            msg = f"{len(tokens)} tokens; max_prompt_tokens is {self.limits.max_prompt_tokens}"
            raise ServiceError(413, msg, param="prompt")
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens}

    @property
    def max_model_len(self) -> int:
        """The generalist's maximum length (its config's), else `max_session_tokens`."""
        return _max_positions(self.generalist) or self.limits.max_session_tokens

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "specsteer",
                    "max_model_len": self.max_model_len,
                }
            ],
        }

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ServiceError(404, f"The model `{model}` does not exist.", param="model")

    def _log(self, event: str, **fields: Any) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps({"event": event, **fields}, default=str))


def served_name(name: str) -> str:
    """The name to serve for a model loaded from `name`: a folder's own name, a hub id as is."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path.resolve().name or name
    return name


def _max_positions(model: LocalGeneralist | LocalSpecialist) -> int | None:
    """The longest sequence the model's config allows, if it says."""
    config = model.model.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _fit_to_models(
    limits: ServiceLimits, *models: LocalGeneralist | LocalSpecialist | None
) -> ServiceLimits:
    """`limits` with prompt and session lengths no longer than the models can take."""
    lengths = [n for n in (_max_positions(m) for m in models if m is not None) if n]
    if not lengths:
        return limits
    longest = min(lengths)
    return replace(
        limits,
        max_prompt_tokens=min(limits.max_prompt_tokens, longest),
        max_session_tokens=min(limits.max_session_tokens, longest),
    )


def _check_ids(ids: Sequence[int], vocab_size: int, field: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        msg = f"{field} holds token id {bad}, outside the vocabulary [0, {vocab_size})"
        raise ServiceError(400, msg, param=field)


def _clamp(value: Any) -> float:
    """vLLM's convention: −inf as −9999.0 (JSON has no infinity)."""
    v = float(value)
    return -9999.0 if v == -math.inf else v


def _json_floats(values: torch.Tensor) -> list[float | None]:
    """Floats for JSON; −inf (probability zero) as null."""
    return [None if v == -math.inf else v for v in values.tolist()]


def _candidates(
    position: int, log_p_G: torch.Tensor, log_q_gen: torch.Tensor | None, m: int
) -> Candidates:
    hint = alg.make_hint(log_p_G[position], _zeros_if_none(log_q_gen, log_p_G)[position], m)
    return Candidates(
        position=position,
        token_ids=hint.token_ids.tolist(),
        log_p_G=_json_floats(hint.log_p_G),
        log_q_gen=_json_floats(hint.log_q_gen) if log_q_gen is not None else None,
    )


def _zeros_if_none(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if rows is None else rows


def create_app(
    service: VerifierService,
    *,
    api_key: str | None = None,
    title: str = "SpecSteer verifier",
    public_docs: bool = False,
) -> Any:
    """The FastAPI app serving `service` (see docs/protocol.md).

    Args:
        service: the models and sessions.
        api_key: require `Authorization: Bearer <api_key>` on every path but /health (checked
            before the body is read).
        title: the OpenAPI document's title.
        public_docs: serve /openapi.json, /docs and /redoc without the key.
    """
    optional_import("fastapi", extra="server", purpose="The verifier service")
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from langchain_specsteer import __version__
    from langchain_specsteer.protocol import PROTOCOL, ErrorBody

    bearer = Depends(HTTPBearer(auto_error=False))

    def authorize(credentials: HTTPAuthorizationCredentials | None = bearer) -> None:
        """The key again, after `Gate`; this dependency puts the scheme in the OpenAPI document."""
        _check_key(api_key, None if credentials is None else credentials.credentials)

    errors = {
        status: {"model": ErrorBody, "description": reason}
        for status, reason in (
            (400, "Invalid request: the message names the field"),
            (401, "Missing or wrong API key"),
            (413, "Over a limit of this service"),
        )
    }
    app = FastAPI(
        title=title,
        version=__version__,
        description=(
            f"Session protocol `{PROTOCOL}` under /specsteer/v1 and vLLM's OpenAI-compatible "
            "scoring subset. See docs/protocol.md."
        ),
    )
    app.state.service = service

    def error_response(status: int, message: str, type_: str, param: str | None) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 429 else {}
        if status >= 500:  # the server drops the connection after an unexpected error: say so
            headers["Connection"] = "close"
        return JSONResponse(_error(status, message, type_, param), status, headers=headers)

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

    docs = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    app.add_middleware(
        Gate,
        api_key=api_key,
        public_paths={"/health", *(docs if public_docs else ())},
        limits=service.limits,
        clock=service.clock,
    )
    protected = APIRouter(dependencies=[Depends(authorize)], responses=errors)
    prefix = "/specsteer/v1"

    @protected.get(f"{prefix}/info", response_model=ServiceInfo, tags=["session protocol"])
    def info() -> ServiceInfo:
        """What this service hosts, its vocabulary signature and its limits."""
        return service.info()

    @protected.post(
        f"{prefix}/sessions",
        response_model=SessionOpened,
        status_code=201,
        tags=["session protocol"],
        responses={429: {"model": ErrorBody, "description": "Every session slot is busy"}},
    )
    def open_session(body: OpenSession) -> SessionOpened:
        """Open a session after public prompts."""
        return service.open(body)

    @protected.post(
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

    @protected.delete(
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

    @protected.post("/v1/completions", tags=["OpenAI-compatible"])
    def completions(body: CompletionRequest) -> dict[str, Any]:
        """vLLM's completions, for scoring token ids (see docs/protocol.md for the subset)."""
        return service.complete(body)

    @protected.get("/v1/models", tags=["OpenAI-compatible"])
    def models() -> dict[str, Any]:
        return service.models()

    @protected.post("/tokenize", tags=["OpenAI-compatible"])
    def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """vLLM's tokenizer endpoint: a prompt, or messages through the chat template."""
        return service.tokenize(body)

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


def _error(status: int, message: str, type_: str, param: str | None = None) -> dict:
    """OpenAI's error shape (`protocol.ErrorBody`)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


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


async def _refuse(send: Any, err: ServiceError) -> None:
    """Answer `err` from ASGI middleware, closing the connection."""
    body = json.dumps(_error(err.status, err.message, err.type, err.param)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
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
                body = json.dumps(_error(413, message, "request_too_large")).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                for event in (
                    h11.Response(status_code=413, headers=headers, reason=b"Content Too Large"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event))
            self.transport.close()

    return ChunkBoundedH11


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
