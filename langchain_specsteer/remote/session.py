"""`RemoteGeneralist`: the generalist in our verifier service, over the session protocol.

docs/protocol.md: the KV cache stays in the service, a round sends the draft (and the tokens
the service lacks) and gets the accepted count and a sparse hint back, and a public specialist
hosted there computes q_gen. A round is idempotent (it names the position it continues from,
and under `specsteer/2` its number), so it is retried; a lost session (404: the service
restarted, or expired it) is reopened and resumed from the tokens the device holds.

Against a service that speaks `specsteer/2` (every `specsteer serve` of this version) a
generation costs no request before its first round: the device names the session, its first
rounds carry the opening (the public turns, when the device has no generalist tokenizer to
encode them), and rounds go out while earlier ones are in flight. A `specsteer/1` service is
used as before: one request opens the session, one round at a time.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from langchain_specsteer.models import encode_messages
from langchain_specsteer.protocol import (
    API_KEY_ENV,
    PROTOCOL,
    PROTOCOL_V2,
    OpenSession,
    OpenSessionV2,
    PublicPrompt,
    RoundRequest,
    RoundRequestV2,
    RoundResult,
    RoundResultV2,
    ServiceInfo,
    ServiceInfoV2,
    SessionOpened,
    logprobs_from_json,
)
from langchain_specsteer.remote.base import HTTPGeneralist, tokenize, wire_turn
from langchain_specsteer.remote.http import Exchange, refused
from langchain_specsteer.verification import (
    GeneralistError,
    GeneralistSession,
    PromptTurns,
    Rule,
    Verdict,
    VerifyCall,
    vocab_signature,
)

__all__ = ["RemoteGeneralist", "RemoteSession"]


class RemoteGeneralist(HTTPGeneralist):
    """The generalist in a `specsteer serve` verifier service (session protocol `specsteer/2`,
    or `specsteer/1` where the service speaks only that).

    Args:
        base_url: e.g. "http://127.0.0.1:8000".
        api_key: bearer token (default: the SPECSTEER_API_KEY environment variable).
        timeout: seconds per HTTP request.
        max_retries: retries after a failed attempt (connection error, timeout, 5xx, 409, 429).
        backoff_s: first retry delay; it doubles with each retry.
        top_m: hint size per position; the default 20 is vLLM's `max_logprobs`. Greedy
            output equals in-process output when the in-process choice is among the top m
            by log p_G (always with m = vocabulary size; see docs/protocol.md).
        tokenizer: the generalist's tokenizer (e.g. `AutoTokenizer.from_pretrained(...)`), to
            encode prompts on the device (checked against the service's vocabulary). Without
            it the service renders them: with the first round (`specsteer/2`), or by
            `/tokenize` before it (`specsteer/1`).
        max_rounds_in_flight: at most this many rounds of a generation in flight (default:
            as many as the service takes, its `max_rounds_in_flight`; 1: one at a time).
        protocol: "specsteer/2" or "specsteer/1" to speak only that; None (default): the
            newest the service speaks.
        wrap_transport: wraps each httpx transport the client opens (`HTTPClient`): to record,
            mock or delay requests (`testing.simulated_rtt`); None: httpx's own.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.2,
        top_m: int = 20,
        tokenizer: Any = None,
        max_rounds_in_flight: int | None = None,
        protocol: str | None = None,
        wrap_transport: Callable[[Any], Any] | None = None,
    ):
        if top_m < 1:
            msg = f"top_m must be at least 1, got {top_m}"
            raise ValueError(msg)
        if max_rounds_in_flight is not None and max_rounds_in_flight < 1:
            msg = f"max_rounds_in_flight must be at least 1, got {max_rounds_in_flight}"
            raise ValueError(msg)
        if protocol not in (None, PROTOCOL, PROTOCOL_V2):
            msg = f"protocol must be {PROTOCOL_V2!r}, {PROTOCOL!r} or None, got {protocol!r}"
            raise ValueError(msg)
        super().__init__(
            base_url,
            api_key or os.environ.get(API_KEY_ENV),
            tokenizer,
            timeout=timeout,
            max_retries=max_retries,
            backoff_s=backoff_s,
            wrap_transport=wrap_transport,
        )
        self.top_m = top_m
        self.rounds_in_flight_cap = max_rounds_in_flight
        self.asked_protocol = protocol
        self._info: ServiceInfo | None = None

    @property
    def info(self) -> ServiceInfo:
        """The service's description, fetched once: GeneralistUnreachable while the service
        does not answer, GeneralistError when it refuses (e.g. a wrong API key)."""
        return self._info or self.http.run(self._info_steps())

    def _info_steps(self) -> Exchange:
        """The description at /specsteer/v2/info, or /specsteer/v1/info from a service that
        speaks only `specsteer/1`."""
        if self._info is not None:
            return self._info
        speaks, model = PROTOCOL_V2, ServiceInfoV2
        if self.asked_protocol != PROTOCOL:
            response = yield from self.http.exchange("GET", "/specsteer/v2/info")
        if self.asked_protocol == PROTOCOL or (
            response.status_code == 404 and self.asked_protocol is None
        ):
            response = yield from self.http.exchange("GET", "/specsteer/v1/info")
            speaks, model = PROTOCOL, ServiceInfo
        if response.status_code != 200:
            raise refused(response, f"verifier service at {self.http.base_url}")
        body = response.json()
        if body.get("protocol") != speaks:
            msg = (
                f"the service at {self.http.base_url} speaks {body.get('protocol')!r}; "
                f"this client speaks {PROTOCOL_V2!r} and {PROTOCOL!r}"
            )
            raise GeneralistError(msg)
        self._info = model.model_validate(body)
        return self._info

    @property
    def protocol(self) -> str:
        """The session protocol spoken with the service ("specsteer/2" or "specsteer/1")."""
        return self.info.protocol

    @property
    def max_rounds_in_flight(self) -> int:
        """Rounds of one generation this client keeps in flight at most."""
        info = self.info
        limit = info.max_rounds_in_flight if isinstance(info, ServiceInfoV2) else 1
        return min(limit, self.rounds_in_flight_cap or limit)

    # The engine reads the vocabulary when it is built, which fetches the description (or
    # defers its alignment while the service is unreachable); every generation fetches it
    # before its first request. The name and end-of-text ids answer from what is known
    # without waiting on the network, so that a generation without the service still runs.

    @property
    def name(self) -> str:
        """The served model's name (the service's URL until its description is fetched)."""
        return self._info.model if self._info is not None else self.http.base_url

    def _served_model(self) -> str:
        return self.info.model

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def vocab_signature(self) -> str:
        return self.info.vocab_signature

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The service's end-of-text ids (none until its description is fetched)."""
        return frozenset(self._info.eos_token_ids if self._info is not None else ())

    @property
    def hosts_public_specialist(self) -> bool:
        return self.info.public_specialist is not None

    @property
    def max_draft_tokens(self) -> int:
        """The service's `max_draft_tokens`: a longer `draft_tokens` is clamped to it (and
        `generation_info["draft_tokens_clamped_to"]` says so) instead of being refused."""
        return self.info.limits.max_draft_tokens

    def _encode_steps(
        self, messages: Sequence[dict], chat: bool, chat_template_kwargs: dict | None
    ) -> Exchange:
        info = yield from self._info_steps()
        if self.tokenizer is not None:
            if vocab_signature(self.tokenizer) != info.vocab_signature:
                msg = "the tokenizer given to RemoteGeneralist is not the service's generalist's"
                raise ValueError(msg)
            return encode_messages(
                self.tokenizer, messages, chat=chat, chat_template_kwargs=chat_template_kwargs
            )
        chat = chat and info.chat_template
        return (yield from tokenize(self.http, None, messages, chat, chat_template_kwargs))

    def public_prompt(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int] | PromptTurns:
        """The turns themselves for a `specsteer/2` service to render with the first round
        (no request now, once the service's description is known); else their ids."""
        if self.tokenizer is None and self.info.protocol == PROTOCOL_V2:
            return _turns(messages, chat and self.info.chat_template, chat_template_kwargs)
        return self.encode_messages(messages, chat=chat, chat_template_kwargs=chat_template_kwargs)

    async def apublic_prompt(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int] | PromptTurns:
        info = await self.http.arun(self._info_steps())
        if self.tokenizer is None and info.protocol == PROTOCOL_V2:
            return _turns(messages, chat and info.chat_template, chat_template_kwargs)
        return await self.aencode_messages(
            messages, chat=chat, chat_template_kwargs=chat_template_kwargs
        )

    def open_session(
        self,
        prompt: Sequence[int] | PromptTurns,
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> RemoteSession:
        if not self.hosts_public_specialist:
            q_gen_prompt = None
        fields = {
            "q_gen_prompt_ids": None if q_gen_prompt is None else list(q_gen_prompt),
            "temperature": temperature,
            "top_m": self.top_m,
            "vocab_size": vocab_size,
        }
        if self.info.protocol != PROTOCOL_V2:
            if isinstance(prompt, PromptTurns):  # never given for specsteer/1 (public_prompt)
                msg = "a specsteer/1 service needs the prompt's ids"
                raise TypeError(msg)
            return RemoteSession(self, OpenSession(prompt_ids=list(prompt), **fields))
        if isinstance(prompt, PromptTurns):
            fields["public_prompt"] = _public_prompt(prompt)
        else:
            fields["prompt_ids"] = list(prompt)
        opening = OpenSessionV2(vocab_signature=self.info.vocab_signature, **fields)
        return RemoteSession(self, opening)

    def __repr__(self) -> str:
        return f"RemoteGeneralist({self.http.base_url!r})"


class RemoteSession(GeneralistSession):
    """One generation in the verifier service.

    Under `specsteer/2` the device names the session and numbers its rounds; the rounds sent
    before the first answer carry the opening, and rounds may be sent while others are in
    flight (`start(..., after=...)`). Under `specsteer/1` the first round opens the session
    with a request of its own, and rounds go one at a time.
    """

    awaits_io = True

    def __init__(self, client: RemoteGeneralist, opening: OpenSession):
        self.client = client
        self.opening = opening
        self.v2 = isinstance(opening, OpenSessionV2)
        self.max_in_flight = client.max_rounds_in_flight if self.v2 else 1
        self.vocab_size = opening.vocab_size
        self.hosts_q_gen = opening.q_gen_prompt_ids is not None
        self.session_id: str | None = _session_id() if self.v2 else None
        self.committed: list[int] = []  # every generated token the device committed
        self.held = 0  # specsteer/1: how many of them the service holds (confirmed)
        self._draft: list[int] = []  # specsteer/1: the last round's draft
        # specsteer/2: the rounds' numbers, what the service will hold once every round sent
        # is served, whether it answered yet, the drafts not yet committed or dropped.
        self.lock = threading.Lock()
        self.next_seq = 0
        self.expected: list[int] = []
        self.opened = False
        self.closed = False
        self.outstanding: deque[list[int]] = deque()

    def _open(self) -> Exchange:
        http = self.client.http
        response = yield from http.exchange(
            "POST", "/specsteer/v1/sessions", self.opening.model_dump()
        )
        if response.status_code != 201:
            raise refused(response, "opening a session")
        opened = SessionOpened.model_validate(response.json())
        if opened.hosts_q_gen != self.hosts_q_gen:
            raise GeneralistError(_CHANGED)
        self.session_id, self.held = opened.session_id, 0

    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        if self.v2:
            return self.start(draft, rule, gamma, uniforms).perform()
        return self.client.http.run(self._round(draft, rule, gamma, uniforms))

    async def averify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        if self.v2:
            return await self.start(draft, rule, gamma, uniforms).aperform()
        return await self.client.http.arun(self._round(draft, rule, gamma, uniforms))

    def start(
        self,
        draft: list[int],
        rule: Rule,
        gamma: float,
        uniforms: list[float] | None = None,
        *,
        after: Sequence[int] = (),
    ) -> VerifyCall:
        """A `specsteer/2` round, numbered and placed now (after the committed tokens and
        `after`): later commits do not change what it sends."""
        if not self.v2:
            return super().start(draft, rule, gamma, uniforms, after=after)
        prefix, draft = [*self.committed, *after], list(draft)
        fields = {
            "draft": draft,
            "rule": rule,
            "gamma": None if math.isinf(gamma) else gamma,
            "uniforms": uniforms,
        }
        with self.lock:
            sid, request = self.session_id, self._placed(prefix, fields, bool(after))
        self.outstanding.append(draft)
        http = self.client.http
        return VerifyCall(
            perform=lambda: http.run(self._round_v2(sid, request, prefix, fields)),
            aperform=lambda: http.arun(self._round_v2(sid, request, prefix, fields)),
            awaits_io=True,
        )

    def _placed(self, prefix: list[int], fields: dict, speculative: bool) -> RoundRequestV2:
        """The next numbered round after `prefix` (the lock held): it keeps what the service
        will hold in common with `prefix` once the rounds before it are served."""
        position = 0
        for held, token in zip(self.expected, prefix, strict=False):
            if held != token:
                break
            position += 1
        request = RoundRequestV2(
            seq=self.next_seq,
            open=None if self.opened else self.opening,
            speculative=speculative,
            position=position,
            append=prefix[position:],
            **fields,
        )
        self.next_seq += 1
        self.expected = [*prefix, *fields["draft"]]
        return request

    def _round_v2(
        self, sid: str, request: RoundRequestV2, prefix: list[int], fields: dict
    ) -> Exchange:
        """One `specsteer/2` round; a lost session is opened again under a new name (once, by
        the first round to find it lost) and the round resent with every generated token."""
        path = f"/specsteer/v2/sessions/{sid}/rounds"
        response = yield from self.client.http.exchange("POST", path, request.model_dump())
        if response.status_code == 404 and not self.closed:
            with self.lock:
                if sid == self.session_id:
                    self.client.stats.reopened += 1
                    self.session_id, self.next_seq, self.expected = _session_id(), 0, []
                    self.opened = False
                sid, request = self.session_id, self._placed(prefix, fields, False)
            path = f"/specsteer/v2/sessions/{sid}/rounds"
            response = yield from self.client.http.exchange("POST", path, request.model_dump())
        if response.status_code != 200:
            raise refused(response, "verifying a draft")
        result = RoundResultV2.model_validate(response.json())
        with self.lock:
            self.opened = self.opened or sid == self.session_id
        if result.hosts_q_gen != self.hosts_q_gen:
            raise GeneralistError(_CHANGED)
        if result.voided:  # only a round the device voids too: its answer is never used
            msg = f"round {result.seq} was voided by the service"
            raise GeneralistError(msg)
        return self._verdict(result, fields["draft"])

    def _round(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None
    ) -> Exchange:
        """One `specsteer/1` round: the tokens the service lacks, the draft; reopens a lost
        session once."""
        if self.session_id is None:
            yield from self._open()
        for _ in range(2):
            request = RoundRequest(
                position=self.held,
                append=self.committed[self.held :],
                draft=draft,
                rule=rule,
                gamma=None if math.isinf(gamma) else gamma,
                uniforms=uniforms,
            )
            path = f"/specsteer/v1/sessions/{self.session_id}/rounds"
            response = yield from self.client.http.exchange("POST", path, request.model_dump())
            if response.status_code != 404:
                break
            self.client.stats.reopened += 1
            yield from self._open()
        if response.status_code != 200:
            raise refused(response, "verifying a draft")
        result = RoundResult.model_validate(response.json())
        self.held = len(self.committed)
        self._draft = list(draft)
        return self._verdict(result, draft)

    def _verdict(self, result: RoundResult, draft: list[int]) -> Verdict:
        rows = len(draft) + 1
        log_p_G = torch.full((rows, self.vocab_size), -math.inf)
        log_q_gen = torch.zeros((rows, self.vocab_size)) if self.hosts_q_gen else None
        for hint in result.hints:
            ids = torch.tensor(hint.token_ids, dtype=torch.long)
            log_p_G[hint.position, ids] = logprobs_from_json(hint.log_p_G)
            if log_q_gen is not None and hint.log_q_gen is not None:
                log_q_gen[hint.position, ids] = logprobs_from_json(hint.log_q_gen)
        for name, table in (("draft_log_p_G", log_p_G), ("draft_log_q_gen", log_q_gen)):
            values = getattr(result, name)
            if values is not None and table is not None:
                table[torch.arange(len(draft)), torch.tensor(draft)] = logprobs_from_json(values)
        return Verdict(log_p_G, log_q_gen, result.accepted, getattr(result, "verify_seconds", None))

    def commit(self, accepted: int, token: int) -> None:
        if self.v2:
            self.committed.extend([*self.outstanding.popleft()[:accepted], token])
            return
        self.committed.extend([*self._draft[:accepted], token])
        self.held = len(self.committed) - 1  # the service holds all but the recovered token
        self._draft = []

    def drop(self) -> None:
        self.outstanding.clear()

    def _release(self) -> Exchange | None:
        """The DELETE of this session, once (None: nothing to release)."""
        self.closed = True
        if self.session_id is None or (self.v2 and self.next_seq == 0):
            return None
        version = "v2" if self.v2 else "v1"
        path = f"/specsteer/{version}/sessions/{self.session_id}"
        self.session_id = None
        return self.client.http.exchange("DELETE", path, retries=False)

    def close(self) -> None:
        # In the background: the text is complete, so the caller need not wait a round trip;
        # `client.wait_released()` (and `client.close()`) wait for it.
        release = self._release()
        if release is not None:
            self.client.release(release)

    async def aclose(self) -> None:
        # A task on the loop, so the caller need not wait; `await client.aclose()` waits for it.
        release = self._release()
        if release is not None:
            await self.client.arelease(release)


_CHANGED = "the verifier service changed: it no longer hosts the same public specialist"


def _session_id() -> str:
    """A new `specsteer/2` session name: 16 random bytes, URL-safe."""
    return secrets.token_urlsafe(16)


def _turns(messages: Sequence[dict], chat: bool, kwargs: dict | None) -> PromptTurns:
    return PromptTurns(tuple(dict(m) for m in messages), chat, dict(kwargs) if kwargs else None)


def _public_prompt(turns: PromptTurns) -> PublicPrompt:
    """Turns as a `specsteer/2` opening carries them (as `/tokenize` would get them)."""
    then = list(turns.then)
    if not turns.chat:
        text = "\n\n".join(message["content"] for message in turns.messages)
        return PublicPrompt(prompt=text, then_ids=then)
    kwargs = dict(turns.chat_template_kwargs or {})
    tools = kwargs.pop("tools", None)
    return PublicPrompt(
        messages=[wire_turn(message) for message in turns.messages],
        chat_template_kwargs=kwargs,
        tools=list(tools) if tools else None,
        then_ids=then,
    )
