"""The verifier service's sessions: `VerifierService` holds the models and serves `specsteer/1`.

A generation is a session holding the generalist's KV cache (and the public specialist's);
each round verifies one draft (`protocol.RoundRequest`). Model work is serialised across
sessions by one lock (`model_lock`, which the OpenAI-compatible subset takes too); each
session takes one request at a time (a concurrent second one gets 409 `session_busy`).
Sessions idle for `session_idle_seconds` are dropped, and at `max_sessions` the least
recently used idle session makes room, so memory stays bounded under churn.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.local import LocalSession
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
from langchain_specsteer.protocol import (
    SESSION_BUSY,
    Candidates,
    OpenSession,
    RoundRequest,
    RoundResult,
    ServiceError,
    ServiceInfo,
    ServiceLimits,
    SessionOpened,
    logprobs_to_json,
)

__all__ = ["VerifierService", "check_ids", "log_event", "max_positions", "served_name"]

log = logging.getLogger("langchain_specsteer.server")
"""Every part of the service logs here: one JSON object per event (docs/protocol.md)."""


def log_event(event: str, **fields: Any) -> None:
    """Log one event as a JSON object (at INFO)."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, default=str))


@dataclass
class _Session:
    """One session: its models' sequences, its hint size and width, and its request lock."""

    id: str
    local: LocalSession
    top_m: int
    vocab_size: int
    busy: threading.Lock
    last_used: float
    rounds: int = 0


class VerifierService:
    """The generalist (and optionally a public specialist) serving sessions.

    The OpenAI-compatible subset (`server.openai.OpenAICompatible`) answers from the same
    models, limits and lock; `server.create_app` serves both over HTTP.

    Args:
        generalist: the model that verifies.
        public_specialist: a public copy of the device's specialist, so q_gen is computed
            here and the ratio test is decided here (docs/design.md §3).
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
        self.model_lock = threading.Lock()
        """Held for model work: one request at a time, sessions and completions alike."""

    def info(self) -> ServiceInfo:
        """What this service hosts, its vocabulary signature and its limits."""
        spec = self.public_specialist
        return ServiceInfo(
            model=self.model_name,
            vocab_size=self.vocab_size,
            vocab_signature=self.generalist.vocab_signature,
            eos_token_ids=sorted(self.generalist.eos_token_ids),
            chat_template=bool(getattr(self.generalist.tokenizer, "chat_template", None)),
            public_specialist=spec.name if spec is not None else None,
            public_specialist_vocab_signature=spec.vocab_signature if spec is not None else None,
            limits=self.limits.advertised(),
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
            check_ids(ids, vocab_size, field)
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
        log_event(
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
            raise ServiceError(409, msg, type=SESSION_BUSY)
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
        check_ids(request.append, session.vocab_size, "append")
        check_ids(request.draft, session.vocab_size, "draft")
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
        with self.model_lock:
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
            drafted = log_p_G[:-1].gather(-1, ids).squeeze(-1)  # (k,)
            result.draft_log_p_G = logprobs_to_json(drafted)
            if log_q_gen is not None:
                drafted = log_q_gen[:-1].gather(-1, ids).squeeze(-1)  # (k,)
                result.draft_log_q_gen = logprobs_to_json(drafted)
        session.rounds += 1
        log_event(
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
        log_event("close", session=session_id, rounds=session.rounds)

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
                log_event("expire", session=sid)

    def _evict_one(self) -> bool:
        """Drop the least recently used idle session (sessions lock held)."""
        for sid, session in self.sessions.items():
            if not session.busy.locked():
                del self.sessions[sid]
                session.local.close()
                log_event("evict", session=sid)
                return True
        return False


def served_name(name: str) -> str:
    """The name to serve for a model loaded from `name`: a folder's own name, a hub id as is."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path.resolve().name or name
    return name


def max_positions(model: LocalGeneralist | LocalSpecialist) -> int | None:
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
    lengths = [n for n in (max_positions(m) for m in models if m is not None) if n]
    if not lengths:
        return limits
    longest = min(lengths)
    return replace(
        limits,
        max_prompt_tokens=min(limits.max_prompt_tokens, longest),
        max_session_tokens=min(limits.max_session_tokens, longest),
    )


def check_ids(ids: Sequence[int], vocab_size: int, field: str) -> None:
    """Refuse (400, naming `field`) a token id outside [0, vocab_size)."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        msg = f"{field} holds token id {bad}, outside the vocabulary [0, {vocab_size})"
        raise ServiceError(400, msg, param=field)


def _candidates(
    position: int, log_p_G: torch.Tensor, log_q_gen: torch.Tensor | None, m: int
) -> Candidates:
    hint = alg.make_hint(log_p_G[position], _zeros_if_none(log_q_gen, log_p_G)[position], m)
    return Candidates(
        position=position,
        token_ids=hint.token_ids.tolist(),
        log_p_G=logprobs_to_json(hint.log_p_G),
        log_q_gen=logprobs_to_json(hint.log_q_gen) if log_q_gen is not None else None,
    )


def _zeros_if_none(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if rows is None else rows
