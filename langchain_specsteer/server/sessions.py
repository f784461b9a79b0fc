"""The verifier service's sessions: `VerifierService` holds the models and serves `specsteer/1`
and `specsteer/2`.

A generation is a session holding the generalist's KV cache (and the public specialist's);
each round verifies one draft (`protocol.RoundRequest`). Model work is serialised across
sessions by one lock (`model_lock`, which the OpenAI-compatible subset takes too). A
`specsteer/1` session takes one request at a time (a concurrent second one gets 409
`session_busy`); a `specsteer/2` session queues its rounds by number (`round_v2`), up to
`max_rounds_in_flight`, and serves them one after another.
Sessions idle for `session_idle_seconds` are dropped, and at `max_sessions` the least
recently used idle session makes room, so memory stays bounded under churn.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.local import LocalSession
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
from langchain_specsteer.protocol import (
    PROTOCOL_V2,
    SESSION_BUSY,
    Candidates,
    OpenSession,
    OpenSessionV2,
    PublicPrompt,
    RoundRequest,
    RoundRequestV2,
    RoundResult,
    RoundResultV2,
    ServiceError,
    ServiceInfo,
    ServiceInfoV2,
    ServiceLimits,
    SessionOpened,
    logprobs_to_json,
)

__all__ = [
    "OUT_OF_ORDER",
    "VOCAB_MISMATCH",
    "VerifierService",
    "check_ids",
    "encode_public",
    "log_event",
    "max_positions",
    "served_name",
]

OUT_OF_ORDER = "out_of_order"
"""Error type of a 409 for a `specsteer/2` round whose predecessors never arrived."""
VOCAB_MISMATCH = "vocab_mismatch"
"""Error type of a 409 for a `specsteer/2` opening that expects another vocabulary."""

log = logging.getLogger("langchain_specsteer.server")
"""Every part of the service logs here: one JSON object per event (docs/protocol.md)."""


def log_event(event: str, **fields: Any) -> None:
    """Log one event as a JSON object (at INFO)."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, default=str))


@dataclass
class _Session:
    """One session: its models' sequences, its hint size and width, and its request lock;
    under `specsteer/2`, its rounds' turn, the last round's outcome and recent answers."""

    id: str
    local: LocalSession
    top_m: int
    vocab_size: int
    busy: threading.Lock
    last_used: float
    rounds: int = 0
    prompt_tokens: int = 0
    next_seq: int = 0
    waiting: int = 0
    closed: bool = False
    last_whole: bool | None = None  # the last round accepted its whole draft (None: unknown)
    last_voided: bool = False
    answers: dict[int, RoundResultV2] = field(default_factory=dict)
    turn: asyncio.Condition | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_use(self) -> bool:
        return self.busy.locked() or self.waiting > 0


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

    def info_v2(self) -> ServiceInfoV2:
        """`info` for `specsteer/2` clients, with how many rounds a session takes at once."""
        return ServiceInfoV2(
            **{**self.info().model_dump(), "protocol": PROTOCOL_V2},
            max_rounds_in_flight=self.limits.max_rounds_in_flight,
        )

    def open(self, request: OpenSession) -> SessionOpened:
        """Start a session (its prompts are prefilled with the first round)."""
        session = self._new_session(request, request.prompt_ids, secrets.token_urlsafe(12))
        return SessionOpened(
            session_id=session.id,
            hosts_q_gen=session.local.hosts_q_gen,
            idle_seconds=self.limits.session_idle_seconds,
        )

    def _new_session(self, request: OpenSession, prompt_ids: list[int], sid: str) -> _Session:
        """Check an opening and hold its session under `sid`."""
        limits = self.limits
        vocab_size = request.vocab_size or self.vocab_size
        if vocab_size > self.vocab_size:
            msg = f"vocab_size {vocab_size} exceeds the model's {self.vocab_size}"
            raise ServiceError(400, msg, param="vocab_size")
        if request.top_m > limits.max_top_m:
            msg = f"top_m {request.top_m} exceeds this service's max_top_m {limits.max_top_m}"
            raise ServiceError(400, msg, param="top_m")
        for name, ids in (
            ("prompt_ids", prompt_ids),
            ("q_gen_prompt_ids", request.q_gen_prompt_ids),
        ):
            if ids is None:
                continue
            if len(ids) > limits.max_prompt_tokens:
                msg = f"{name} has {len(ids)} tokens; over max_prompt_tokens"
                msg += f" ({limits.max_prompt_tokens})"
                raise ServiceError(413, msg, param=name)
            check_ids(ids, vocab_size, name)
        q_gen_prompt = request.q_gen_prompt_ids if self.public_specialist is not None else None
        local = LocalSession(
            self.generalist,
            prompt_ids,
            vocab_size=vocab_size,
            temperature=request.temperature,
            public_specialist=self.public_specialist,
            q_gen_prompt=q_gen_prompt,
        )
        session = _Session(
            id=sid,
            local=local,
            top_m=request.top_m,
            vocab_size=vocab_size,
            busy=threading.Lock(),
            last_used=self.clock(),
            prompt_tokens=len(prompt_ids),
        )
        with self._sessions_lock:
            self._expire(self.clock())
            if sid in self.sessions:  # a v2 opening that another round of it beat here
                local.close()
                return self.sessions[sid]
            if len(self.sessions) >= limits.max_sessions and not self._evict_one():
                msg = f"all {limits.max_sessions} sessions are busy; retry shortly"
                raise ServiceError(429, msg)
            self.sessions[sid] = session
        log_event(
            "open",
            session=sid,
            prompt_tokens=len(prompt_ids),
            hosts_q_gen=local.hosts_q_gen,
            **({"prompt_ids": prompt_ids} if self.log_prompts else {}),
        )
        return session

    def _session_v2(self, session_id: str, opening: OpenSessionV2 | None) -> _Session:
        """The session `session_id`, opened from `opening` when it is not held yet."""
        with self._sessions_lock:
            self._expire(self.clock())
            session = self.sessions.get(session_id)
            if session is not None:
                self.sessions.move_to_end(session_id)
                return session
        if opening is None:
            msg = (
                f"no session {session_id!r} (closed, expired or evicted); "
                "send the next round with the opening and every generated token"
            )
            raise ServiceError(404, msg)
        expected = opening.vocab_signature
        if expected is not None and expected != self.generalist.vocab_signature:
            msg = (
                "the device expects another generalist vocabulary than this service's "
                f"({expected[:12]}… vs {self.generalist.vocab_signature[:12]}…)"
            )
            raise ServiceError(409, msg, param="open.vocab_signature", type=VOCAB_MISMATCH)
        if (opening.prompt_ids is None) == (opening.public_prompt is None):
            msg = "the opening gives exactly one of prompt_ids and public_prompt"
            raise ServiceError(400, msg, param="open.prompt_ids")
        prompt_ids = opening.prompt_ids
        if prompt_ids is None:
            prompt_ids = encode_public(self, opening.public_prompt)
        return self._new_session(opening, prompt_ids, session_id)

    async def round_v2(self, session_id: str, request: RoundRequestV2) -> RoundResultV2:
        """Verify one draft of a `specsteer/2` session, in the order of the rounds' numbers:
        wait for the rounds numbered before it, answer a number served already from memory,
        void a speculative round whose predecessor did not accept its whole draft."""
        session = await asyncio.to_thread(self._session_v2, session_id, request.open)
        if session.turn is None:
            session.turn, session.loop = asyncio.Condition(), asyncio.get_running_loop()
        if session.waiting >= self.limits.max_rounds_in_flight:
            msg = (
                f"session {session_id} already has {session.waiting} rounds waiting; "
                f"max_rounds_in_flight is {self.limits.max_rounds_in_flight}"
            )
            raise ServiceError(429, msg, param="seq")
        session.waiting += 1
        try:
            async with session.turn:
                await self._wait_turn(session, request.seq)
                if request.seq < session.next_seq:
                    return self._served_before(session, request.seq)
                if request.speculative and (session.last_voided or session.last_whole is False):
                    answer = self._voided(session, request)
                else:
                    answer = await asyncio.to_thread(self._round_v2, session, request)
                session.answers[request.seq] = answer
                for old in [
                    s
                    for s in session.answers
                    if s < request.seq - 4 * self.limits.max_rounds_in_flight
                ]:
                    del session.answers[old]
                session.next_seq = request.seq + 1
                session.turn.notify_all()
                return answer
        finally:
            session.waiting -= 1
            session.last_used = self.clock()

    async def _wait_turn(self, session: _Session, seq: int) -> None:
        """Wait (the turn's lock held on return) until rounds before `seq` are served."""
        timeout = self.limits.round_wait_seconds
        try:
            await asyncio.wait_for(
                session.turn.wait_for(lambda: session.next_seq >= seq or session.closed), timeout
            )
        except TimeoutError:
            msg = (
                f"round {seq} waited {timeout:g} s for round {session.next_seq} of session "
                f"{session.id}, which did not arrive; resend from round {session.next_seq}"
            )
            raise ServiceError(409, msg, param="seq", type=OUT_OF_ORDER) from None
        if session.closed:
            raise ServiceError(404, f"session {session.id!r} was closed while round {seq} waited")

    def _served_before(self, session: _Session, seq: int) -> RoundResultV2:
        """A retried round number: its first answer (idempotent), if still held."""
        answer = session.answers.get(seq)
        if answer is None:
            msg = (
                f"round {seq} of session {session.id} was served and is no longer held (the "
                f"session is at round {session.next_seq}); send the next round with a new number"
            )
            raise ServiceError(409, msg, param="seq", type=OUT_OF_ORDER)
        return answer

    def _voided(self, session: _Session, request: RoundRequestV2) -> RoundResultV2:
        session.last_voided = True
        log_event("void", session=session.id, seq=request.seq, drafted=len(request.draft))
        return RoundResultV2(
            accepted=None,
            hints=[],
            length=len(session.local.generated),
            seq=request.seq,
            voided=True,
            hosts_q_gen=session.local.hosts_q_gen,
            prompt_tokens=session.prompt_tokens,
        )

    def _round_v2(self, session: _Session, request: RoundRequestV2) -> RoundResultV2:
        start = time.perf_counter()
        result = self._round(session, request)
        seconds = time.perf_counter() - start
        session.last_voided = False
        session.last_whole = (
            None if result.accepted is None else result.accepted == len(request.draft)
        )
        return RoundResultV2(
            **result.model_dump(),
            seq=request.seq,
            hosts_q_gen=session.local.hosts_q_gen,
            prompt_tokens=session.prompt_tokens,
            verify_seconds=seconds,
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
        """Drop a session and its caches (rounds still waiting their turn get 404)."""
        with self._sessions_lock:
            session = self.sessions.pop(session_id, None)
        if session is None:
            raise ServiceError(404, f"no session {session_id!r} (closed, expired or evicted)")
        self._drop(session)
        log_event("close", session=session_id, rounds=session.rounds)

    def _drop(self, session: _Session) -> None:
        """Free a session's caches, and wake its waiting rounds (they answer 404)."""
        session.closed = True
        if session.turn is not None and session.loop is not None and session.loop.is_running():

            async def wake() -> None:
                async with session.turn:
                    session.turn.notify_all()

            asyncio.run_coroutine_threadsafe(wake(), session.loop)
        with self.model_lock:
            session.local.close()

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
            if now - session.last_used > idle and not session.in_use:
                del self.sessions[sid]
                self._drop(session)
                log_event("expire", session=sid)

    def _evict_one(self) -> bool:
        """Drop the least recently used idle session (sessions lock held)."""
        for sid, session in self.sessions.items():
            if not session.in_use:
                del self.sessions[sid]
                self._drop(session)
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


def template_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """A chat turn as templates take it: a call's JSON-string `arguments` parsed to an object
    (as vLLM does; a malformed string becomes {})."""
    if not isinstance(turn.get("tool_calls"), list):
        return turn
    calls = []
    for call in turn["tool_calls"]:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                arguments = json.loads(function["arguments"] or "{}")
            except json.JSONDecodeError:
                arguments = {}
            call = {**call, "function": {**function, "arguments": arguments}}
        calls.append(call)
    return {**turn, "tool_calls": calls}


def encode_public(
    service: VerifierService,
    prompt: PublicPrompt,
    *,
    add_generation_prompt: bool = True,
    add_special_tokens: bool | None = None,
) -> list[int]:
    """The generalist's prompt ids for public turns (through its chat template) or text, as
    vLLM's `/tokenize` gives them; 400 naming the field for what cannot be rendered."""
    tokenizer = service.generalist.tokenizer
    if (prompt.prompt is None) == (prompt.messages is None):
        raise ServiceError(400, "give exactly one of prompt and messages", param="prompt")
    if prompt.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise ServiceError(400, "this model has no chat template", param="messages")
        try:
            text = tokenizer.apply_chat_template(
                [template_turn(message) for message in prompt.messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **{"tools": prompt.tools, **(prompt.chat_template_kwargs or {})},
            )
        except Exception as err:  # a template error is the caller's input
            raise ServiceError(400, f"chat template failed: {err}", param="messages") from err
        tokens = tokenizer.encode(text, add_special_tokens=bool(add_special_tokens))
    else:
        special = True if add_special_tokens is None else add_special_tokens
        tokens = tokenizer.encode(prompt.prompt, add_special_tokens=special)
    tokens = [*tokens, *prompt.then_ids]
    longest = service.limits.max_prompt_tokens
    if len(tokens) > longest:
        msg = f"{len(tokens)} tokens; max_prompt_tokens is {longest}"
        raise ServiceError(413, msg, param="prompt")
    return tokens


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
