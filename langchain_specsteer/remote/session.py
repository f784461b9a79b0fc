"""`RemoteGeneralist`: the generalist in our verifier service, over the session protocol.

`specsteer/1` (docs/protocol.md): the KV cache stays in the service, a round sends the draft
(and the tokens the service lacks) and gets the accepted count and a sparse hint back, and a
public specialist hosted there computes q_gen. A round is idempotent (it names the position it
continues from), so it is retried; a lost session (404: the service restarted, or expired it)
is reopened and resumed from the tokens the device holds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from langchain_specsteer.models import encode_messages
from langchain_specsteer.protocol import (
    API_KEY_ENV,
    PROTOCOL,
    OpenSession,
    RoundRequest,
    RoundResult,
    ServiceInfo,
    SessionOpened,
    logprobs_from_json,
)
from langchain_specsteer.remote.base import HTTPGeneralist, tokenize
from langchain_specsteer.remote.http import Exchange, refused
from langchain_specsteer.verification import (
    GeneralistError,
    GeneralistSession,
    Rule,
    Verdict,
    vocab_signature,
)

__all__ = ["RemoteGeneralist", "RemoteSession"]


class RemoteGeneralist(HTTPGeneralist):
    """The generalist in a `specsteer serve` verifier service (session protocol `specsteer/1`).

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
            encode prompts on the device instead of asking the service's `/tokenize` (one
            request less per generation); checked against the service's vocabulary.
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
        wrap_transport: Callable[[Any], Any] | None = None,
    ):
        if top_m < 1:
            msg = f"top_m must be at least 1, got {top_m}"
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
        self._info: ServiceInfo | None = None

    @property
    def info(self) -> ServiceInfo:
        """The service's description, fetched once: GeneralistUnreachable while the service
        does not answer, GeneralistError when it refuses (e.g. a wrong API key)."""
        return self._info or self.http.run(self._info_steps())

    def _info_steps(self) -> Exchange:
        if self._info is not None:
            return self._info
        response = yield from self.http.exchange("GET", "/specsteer/v1/info")
        if response.status_code != 200:
            raise refused(response, f"verifier service at {self.http.base_url}")
        body = response.json()
        if body.get("protocol") != PROTOCOL:
            msg = (
                f"the service at {self.http.base_url} speaks {body.get('protocol')!r}; "
                f"this client speaks {PROTOCOL!r}"
            )
            raise GeneralistError(msg)
        self._info = ServiceInfo.model_validate(body)
        return self._info

    # The engine reads the vocabulary when it is built, which fetches the description (or
    # defers its alignment while the service is unreachable); every generation fetches it
    # before its first request. The name and end-of-text ids answer from what is known
    # without waiting on the network, so that a generation without the service still runs.

    @property
    def name(self) -> str:
        """The served model's name (the service's URL until its description is fetched)."""
        return self._info.model if self._info is not None else self.http.base_url

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

    def open_session(
        self,
        prompt: Sequence[int],
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> RemoteSession:
        if not self.hosts_public_specialist:
            q_gen_prompt = None
        opening = OpenSession(
            prompt_ids=list(prompt),
            q_gen_prompt_ids=None if q_gen_prompt is None else list(q_gen_prompt),
            temperature=temperature,
            top_m=self.top_m,
            vocab_size=vocab_size,
        )
        return RemoteSession(self, opening)

    def __repr__(self) -> str:
        return f"RemoteGeneralist({self.http.base_url!r})"


class RemoteSession(GeneralistSession):
    """One generation in the verifier service; opened at the first round, reopened if lost."""

    awaits_io = True

    def __init__(self, client: RemoteGeneralist, opening: OpenSession):
        self.client = client
        self.opening = opening
        self.vocab_size = opening.vocab_size
        self.hosts_q_gen = opening.q_gen_prompt_ids is not None
        self.session_id: str | None = None
        self.committed: list[int] = []  # every generated token the device committed
        self.held = 0  # how many of them the service holds (confirmed by an answer)
        self._draft: list[int] = []

    def _open(self) -> Exchange:
        http = self.client.http
        response = yield from http.exchange(
            "POST", "/specsteer/v1/sessions", self.opening.model_dump()
        )
        if response.status_code != 201:
            raise refused(response, "opening a session")
        opened = SessionOpened.model_validate(response.json())
        if opened.hosts_q_gen != self.hosts_q_gen:
            msg = "the verifier service changed: it no longer hosts the same public specialist"
            raise GeneralistError(msg)
        self.session_id, self.held = opened.session_id, 0

    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        return self.client.http.run(self._round(draft, rule, gamma, uniforms))

    async def averify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        return await self.client.http.arun(self._round(draft, rule, gamma, uniforms))

    def _round(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None
    ) -> Exchange:
        """One round: the tokens the service lacks, the draft; reopens a lost session once."""
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
        return Verdict(log_p_G, log_q_gen, result.accepted)

    def commit(self, accepted: int, token: int) -> None:
        self.committed.extend([*self._draft[:accepted], token])
        self.held = len(self.committed) - 1  # the service holds all but the recovered token
        self._draft = []

    def _release(self) -> Exchange | None:
        """The DELETE of this session, once (None: nothing to release)."""
        if self.session_id is None:
            return None
        path = f"/specsteer/v1/sessions/{self.session_id}"
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
