"""Generalists across the network: our verifier service, or any vLLM-style OpenAI server.

Both plug into `SpecSteerLLM(generalist=...)` like `LocalGeneralist`:

- `RemoteGeneralist` speaks the session protocol of `specsteer serve` (docs/protocol.md):
  the KV cache stays in the service, a round sends the draft and gets the accepted count
  and a sparse hint back, and a public specialist hosted there computes q_gen.
- `OpenAICompatibleGeneralist` speaks vLLM's `/v1/completions` (token-id prompts with
  `logprobs`), so the generalist can be a 32B+ model on many GPUs; q_gen is then computed on
  the device and the device decides acceptance. That API is stateless: each round re-sends
  the token sequence. By default a round is K+1 prefix prompts of one generated token each,
  which vLLM's prefix cache serves (`scoring="prefixes"`); `scoring="prompt_logprobs"` asks for
  prompt log-probs instead, for which vLLM skips its prefix cache (a prefill of the text a
  round).

Faults: connection errors, timeouts, 5xx, 429 and "busy" 409s are retried with exponential
backoff (a round is idempotent: it names the position it continues from); a lost session
(404: the service restarted, or expired the session) is reopened and resumed from the
tokens the device holds. Past `max_retries` the call raises `GeneralistError`, which the
engine turns into a specialist-only finish (`on_generalist_error="fallback"`) or raises.

Sync and async: each exchange (a round with its reopen, `/tokenize`) is written once as an
`Exchange` generator over the retry policy of `http_client.HTTPClient`; sync calls perform it
with `httpx.Client`, async calls (`ainvoke`, `astream`, ...) with an `httpx.AsyncClient` on
the running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.http_client import (
    Exchange,
    HTTPClient,
    TransportStats,
    error_message,
    refused,
)
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
    logprobs_from_vllm,
)
from langchain_specsteer.verification import (
    Generalist,
    GeneralistError,
    GeneralistSession,
    Rule,
    Verdict,
    vocab_signature,
)

__all__ = [
    "LogprobsMode",
    "OpenAICompatibleGeneralist",
    "RemoteGeneralist",
    "Scoring",
    "TransportStats",
]

Scoring = Literal["prefixes", "prompt_logprobs"]
"""How `OpenAICompatibleGeneralist` asks for a round's rows: K+1 prefix prompts with one
generated token each (served by a prefix cache), or one prompt with prompt log-probs."""

LogprobsMode = Literal["raw_logprobs", "processed_logprobs"]
"""What the server's log-probs are (vLLM's `--logprobs-mode`): before or after temperature."""


def _wire_turn(turn: dict) -> dict:
    """A chat turn as the OpenAI dialect sends it: a call's `arguments` as a JSON string (vLLM
    parses it back to the object a chat template expects)."""
    if not turn.get("tool_calls"):
        return turn
    calls = []
    for call in turn["tool_calls"]:
        function = call.get("function", {})
        if not isinstance(function.get("arguments"), str):
            arguments = json.dumps(function.get("arguments") or {}, ensure_ascii=False)
            call = {**call, "function": {**function, "arguments": arguments}}
        calls.append(call)
    return {**turn, "tool_calls": calls}


def _tokenize(
    http: HTTPClient,
    model: str | None,
    messages: Sequence[dict],
    chat: bool | None,
    kwargs: dict | None,
) -> Exchange:
    """Token ids from the server's vLLM-style `/tokenize`: through the chat template when `chat`
    (None: when asked, if the server has one, else the turns' text as a plain prompt)."""
    base = {"model": model} if model else {}
    if chat is not False:
        kwargs = dict(kwargs or {})
        tools = kwargs.pop("tools", None)  # vLLM takes the template's tools as their own field
        body = {
            **base,
            "messages": [_wire_turn(message) for message in messages],
            "add_generation_prompt": True,
            "chat_template_kwargs": kwargs,
            **({"tools": list(tools)} if tools else {}),
        }
        response = yield from http.exchange("POST", "/tokenize", body)
        if response.status_code == 200:
            return response.json()["tokens"]
        if chat or "chat template" not in error_message(response):
            raise refused(response, "tokenize")
    text = "\n\n".join(message["content"] for message in messages)
    response = yield from http.exchange("POST", "/tokenize", {**base, "prompt": text})
    if response.status_code != 200:
        raise refused(response, "tokenize")
    return response.json()["tokens"]


class _HTTPGeneralist(Generalist):
    """A generalist reached over HTTP: the client with its retries and statistics.

    Subclasses write each conversation once, as an `Exchange` (`_encode_steps`); the blocking
    and asynchronous methods perform it.
    """

    def __init__(self, base_url: str, api_key: str | None, tokenizer: Any, **http: Any):
        self.http = HTTPClient(base_url, api_key, **http)
        self.tokenizer = tokenizer
        self._releasing: set[asyncio.Task] = set()  # sessions being released asynchronously
        self._releasing_threads: set[threading.Thread] = set()  # ... and by blocking closes

    @property
    def stats(self) -> TransportStats:
        """Requests, retries, reopened sessions and bytes so far (`stats.reset()` zeroes)."""
        return self.http.stats

    @abstractmethod
    def _encode_steps(
        self, messages: Sequence[dict], chat: bool, chat_template_kwargs: dict | None
    ) -> Exchange:
        """The prompt ids of a conversation (locally with `tokenizer`, else via `/tokenize`)."""

    def encode_messages(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        return self.http.run(self._encode_steps(messages, chat, chat_template_kwargs))

    async def aencode_messages(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int]:
        return await self.http.arun(self._encode_steps(messages, chat, chat_template_kwargs))

    def wait_released(self, timeout: float | None = None) -> None:
        """Wait for sessions that blocking calls are still releasing in the background."""
        for thread in list(self._releasing_threads):
            thread.join(timeout)

    def close(self) -> None:
        """Wait for sessions still being released, then close the blocking HTTP connections
        (the generalist stays usable: they reopen)."""
        self.wait_released()
        self.http.close()

    async def aclose(self) -> None:
        """Wait for sessions still being released, then close the running event loop's
        connections (they reopen on demand). Without it, a loop that ends at once leaves its
        last sessions to the service's idle expiry."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self._releasing if t.get_loop() is loop]
        await asyncio.gather(*pending, return_exceptions=True)
        await self.http.aclose()


class RemoteGeneralist(_HTTPGeneralist):
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
        """The service's description (fetched once)."""
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

    @property
    def name(self) -> str:
        return self.info.model

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def vocab_signature(self) -> str:
        return self.info.vocab_signature

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset(self.info.eos_token_ids)

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
        return (yield from _tokenize(self.http, None, messages, chat, chat_template_kwargs))

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
        release = self._release()
        if release is None:
            return

        releasing = self.client._releasing_threads

        def delete() -> None:
            try:
                with contextlib.suppress(GeneralistError):  # else the service expires it
                    self.client.http.run(release)
            finally:
                releasing.discard(threading.current_thread())

        # In the background: the text is complete, so the caller need not wait a round trip;
        # `client.wait_released()` (and `client.close()`) wait for it.
        thread = threading.Thread(target=delete, daemon=True)
        releasing.add(thread)
        thread.start()

    async def aclose(self) -> None:
        release = self._release()
        if release is None:
            return

        async def delete() -> None:
            with contextlib.suppress(GeneralistError):
                await self.client.http.arun(release)

        # A task on the loop, so the caller need not wait a round trip; the client holds it
        # (asyncio keeps only weak references) and `await client.aclose()` waits for it.
        task = asyncio.get_running_loop().create_task(delete())
        self.client._releasing.add(task)
        task.add_done_callback(self.client._releasing.discard)


class OpenAICompatibleGeneralist(_HTTPGeneralist):
    """A generalist behind a vLLM-style OpenAI-compatible server (`/v1/completions`).

    Each round is one request whose answer gives the generalist's top `top_logprobs` at every
    draft position and after the draft; q_gen is computed on the device and the device decides
    acceptance. How the rows are asked for is `scoring`:

    - "prefixes" (default): K+1 token-id prompts, the committed tokens + draft[:i] for
      i = 0..K, each with `max_tokens=1, logprobs=top_logprobs`; row i is the top of prompt i's
      generated token. vLLM's prefix cache (`--enable-prefix-caching`) serves the shared prefix,
      so a round costs about K+1 decode steps and its answer does not grow with the text. A
      draft token outside the top `top_logprobs` at its position is not listed: see
      `exact_drafts`.
    - "prompt_logprobs": one prompt, the committed tokens + draft, with `prompt_logprobs`: the
      draft tokens' own log-probs are exact whatever `top_logprobs`, but vLLM skips its prefix
      cache for such requests, so a round costs a prefill of the whole text and the answer
      lists every position. For servers without a prefix cache.

    Args:
        base_url: the server, e.g. "http://gpu-box:8000" (a trailing "/v1" is accepted).
        model: the served model name (`vllm serve ... --served-model-name`).
        api_key: bearer token (vLLM's `--api-key`).
        top_logprobs: candidates per position (at most the server's `--max-logprobs`, 20).
        scoring: "prefixes" or "prompt_logprobs", see above.
        logprobs_mode: what the server's log-probs are, as its `--logprobs-mode`:
            "raw_logprobs" (vLLM's default: before temperature; at a temperature other than 0
            and 1 the device tempers the listed entries and renormalises over them, so the
            unlisted tokens' share is taken as 0) or "processed_logprobs" (the request carries
            the temperature and the server returns log-probs after it, normalised over the
            whole vocabulary: used as they are). Prompt log-probs are always raw in vLLM.
        exact_drafts: with "prefixes", when the ratio test (or sampled speculative decoding)
            needs a draft token's log p_G and it is outside the top `top_logprobs` at its
            position, ask for it in a second request (the same prefixes, served by the cache,
            with vLLM's `logprob_token_ids`), so acceptance is decided as in-process. False:
            one request a round, and such a token counts as p_G = 0 (rejected).
        tokenizer: the generalist's tokenizer (e.g. `AutoTokenizer.from_pretrained(model)`):
            prompts are encoded locally and its vocabulary is checked against the
            specialist's. Without it prompts go through the server's `/tokenize`, and the
            vocabularies are assumed to match.
        eos_token_ids: extra ids that end a generation.
        timeout, max_retries, backoff_s, wrap_transport: as in `RemoteGeneralist`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        top_logprobs: int = 20,
        scoring: Scoring = "prefixes",
        logprobs_mode: LogprobsMode = "raw_logprobs",
        exact_drafts: bool = True,
        tokenizer: Any = None,
        eos_token_ids: Sequence[int] = (),
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.2,
        wrap_transport: Callable[[Any], Any] | None = None,
    ):
        if top_logprobs < 1:
            msg = f"top_logprobs must be at least 1, got {top_logprobs}"
            raise ValueError(msg)
        if scoring not in get_args(Scoring):
            msg = (
                f"scoring must be one of {get_args(Scoring)}, got {scoring!r}: 'prefixes' for "
                "a server with a prefix cache (vLLM --enable-prefix-caching), else "
                "'prompt_logprobs'"
            )
            raise ValueError(msg)
        if logprobs_mode not in get_args(LogprobsMode):
            msg = (
                f"logprobs_mode must be one of {get_args(LogprobsMode)}, got {logprobs_mode!r}: "
                "the server's --logprobs-mode (vLLM's default is 'raw_logprobs')"
            )
            raise ValueError(msg)
        super().__init__(
            base_url.rstrip("/").removesuffix("/v1"),
            api_key,
            tokenizer,
            timeout=timeout,
            max_retries=max_retries,
            backoff_s=backoff_s,
            wrap_transport=wrap_transport,
        )
        self.model = model
        self.top_logprobs = top_logprobs
        self.scoring = scoring
        self.logprobs_mode = logprobs_mode
        self.exact_drafts = exact_drafts
        self._eos = frozenset(eos_token_ids)
        self.last_usage: dict[str, Any] | None = None
        """The `usage` of the last scoring answer (vLLM's `prompt_tokens_details.cached_tokens`
        is there when the server runs with `--enable-prompt-tokens-details`)."""

    @property
    def name(self) -> str:
        return self.model

    @property
    def vocab_size(self) -> int | None:
        return len(self.tokenizer) if self.tokenizer is not None else None

    @property
    def vocab_signature(self) -> str | None:
        return vocab_signature(self.tokenizer) if self.tokenizer is not None else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return self._eos | ({eos} if eos is not None else set())

    def _encode_steps(
        self, messages: Sequence[dict], chat: bool, chat_template_kwargs: dict | None
    ) -> Exchange:
        if self.tokenizer is not None:
            return encode_messages(
                self.tokenizer, messages, chat=chat, chat_template_kwargs=chat_template_kwargs
            )
        chat_mode = None if chat else False
        return (
            yield from _tokenize(self.http, self.model, messages, chat_mode, chat_template_kwargs)
        )

    def open_session(
        self,
        prompt: Sequence[int],
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> OpenAICompatibleSession:
        return OpenAICompatibleSession(self, list(prompt), vocab_size, temperature)

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleGeneralist({self.http.base_url!r}, model={self.model!r}, "
            f"scoring={self.scoring!r})"
        )


class OpenAICompatibleSession(GeneralistSession):
    """One generation over a stateless completions API: the device holds the token ids."""

    awaits_io = True

    def __init__(
        self, client: OpenAICompatibleGeneralist, prompt: list[int], vocab_size: int, temp: float
    ):
        self.client = client
        self.tokens = prompt
        self.vocab_size = vocab_size
        self.temperature = temp
        self._draft: list[int] = []

    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        return self.client.http.run(self._score(draft, _reads_draft_values(rule, uniforms)))

    async def averify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        exchange = self._score(draft, _reads_draft_values(rule, uniforms))
        return await self.client.http.arun(exchange)

    @property
    def processed(self) -> bool:
        """Whether the server tempers the generated tokens' rows (processed log-probs)."""
        return self.client.logprobs_mode == "processed_logprobs"

    def request_body(self, draft: list[int]) -> dict[str, Any]:
        """The `/v1/completions` body that scores `draft` after the committed tokens."""
        client, m = self.client, self.client.top_logprobs
        body: dict[str, Any] = {"model": client.model}
        if client.scoring == "prefixes":
            body["prompt"] = [self.tokens + draft[:i] for i in range(len(draft) + 1)]
        else:
            body["prompt"] = self.tokens + draft
        body |= {
            "max_tokens": 1,
            "temperature": self.temperature if self.processed else 0,
            "logprobs": m,
            "return_tokens_as_token_ids": True,
        }
        if client.scoring == "prompt_logprobs" and draft:
            body["prompt_logprobs"] = m  # the draft positions' rows are prompt log-probs
        if self.processed:  # processed rows = tempered rows only when nothing else applies
            body |= NEUTRAL_SAMPLING
        return body

    def fill_in_body(self, draft: list[int], positions: list[int]) -> dict[str, Any]:
        """The body asking, at each of `positions`, for the draft token's own log-prob: the
        prefixes again (served by the cache) with vLLM's `logprob_token_ids`."""
        body = self.request_body(draft)
        body["prompt"] = [self.tokens + draft[:i] for i in positions]
        body["logprobs"] = 0
        body["logprob_token_ids"] = sorted({draft[i] for i in positions})
        return body

    def _score(self, draft: list[int], fill_in: bool = True) -> Exchange:
        """The generalist's rows at the draft positions and after (the device decides); with
        prefix scoring and `fill_in`, draft tokens outside the top m are asked for after."""
        client, k = self.client, len(draft)
        response = yield from client.http.exchange(
            "POST", "/v1/completions", self.request_body(draft)
        )
        if response.status_code != 200:
            raise refused(response, "scoring a draft")
        try:
            answer = response.json()
            if client.scoring == "prefixes":
                rows = prefix_rows(answer, k, client.top_logprobs)
            else:
                rows = prompt_logprob_rows(answer, k, client.top_logprobs)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            msg = f"unexpected /v1/completions answer from {client.http.base_url}: {err}"
            raise GeneralistError(msg) from err
        client.last_usage = answer.get("usage")
        unlisted = [i for i, token in enumerate(draft) if token not in rows[i]]
        if unlisted and fill_in and client.exact_drafts and client.scoring == "prefixes":
            body = self.fill_in_body(draft, unlisted)
            response = yield from client.http.exchange("POST", "/v1/completions", body)
            if response.status_code != 200:
                what = "asking for draft tokens outside the top m (exact_drafts=False skips it)"
                raise refused(response, what)
            try:
                filled = prefix_rows(response.json(), len(unlisted) - 1, m=None)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
                msg = f"unexpected /v1/completions answer from {client.http.base_url}: {err}"
                raise GeneralistError(msg) from err
            for i, row in zip(unlisted, filled, strict=True):
                if draft[i] in row:  # a server without logprob_token_ids lists only its draw
                    rows[i][draft[i]] = row[draft[i]]
        log_p_G = torch.full((k + 1, self.vocab_size), -math.inf)
        for i, row in enumerate(rows):
            ids = [t for t in row if t < self.vocab_size]
            log_p_G[i, ids] = logprobs_from_vllm([row[t] for t in ids])
        # Raw rows are tempered here, over the listed entries only; processed rows come
        # tempered over the whole vocabulary (prompt log-probs are raw even then).
        raw = {"prefixes": 0, "prompt_logprobs": k}[client.scoring] if self.processed else k + 1
        log_p_G[:raw] = alg.temper(log_p_G[:raw], self.temperature)
        self._draft = list(draft)
        return Verdict(log_p_G)

    def commit(self, accepted: int, token: int) -> None:
        self.tokens = [*self.tokens, *self._draft[:accepted], token]
        self._draft = []


NEUTRAL_SAMPLING: dict[str, float] = {
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
"""Sent with processed log-probs: no sampling processor but temperature, whatever defaults the
server took from the model's generation config (vLLM's `--generation-config auto`)."""


def _reads_draft_values(rule: Rule, uniforms: list[float] | None) -> bool:
    """Whether deciding `rule` reads the draft tokens' own log p_G (greedy "match" reads only
    the argmax, which every row lists; "none" has no draft)."""
    return rule not in ("none", "match") or uniforms is not None


def prefix_rows(answer: dict, k: int, m: int | None) -> list[dict[int, float]]:
    """Rows 0..k from the answer to K+1 prefix prompts: choice i's generated-token top `m`
    (None: every entry)."""
    choices = answer["choices"]
    if not isinstance(choices, list) or len(choices) != k + 1:
        n = len(choices) if isinstance(choices, list) else type(choices).__name__
        msg = f"expected {k + 1} choices (one per prompt), got {n}"
        raise ValueError(msg)
    ordered = sorted(choices, key=lambda choice: choice["index"])
    if [choice["index"] for choice in ordered] != list(range(k + 1)):
        msg = f"choice indices {sorted(c['index'] for c in choices)} are not 0..{k}"
        raise ValueError(msg)
    return [_top_m(_generated_row(choice), m) for choice in ordered]


def prompt_logprob_rows(answer: dict, k: int, m: int) -> list[dict[int, float]]:
    """Rows 0..k from the answer to one prompt with `prompt_logprobs`: the last k prompt rows
    (each lists the draft token itself), then the generated token's top `m`."""
    (choice,) = answer["choices"]
    rows = []
    if k:
        entries = choice["prompt_logprobs"][-k:]
        if len(entries) != k or any(not isinstance(e, dict) for e in entries):
            msg = f"expected {k} prompt_logprobs entries for the draft, got {entries!r:.200}"
            raise ValueError(msg)
        rows = [{int(t): float(e["logprob"]) for t, e in entry.items()} for entry in entries]
    return [*rows, _top_m(_generated_row(choice), m)]


def _generated_row(choice: dict) -> dict[int, float]:
    """The generated token's top log-probs in a choice (`return_tokens_as_token_ids` keys)."""
    tops = choice["logprobs"]["top_logprobs"]
    if not tops or not isinstance(tops[-1], dict):
        msg = f"no top_logprobs for the generated token in choice {choice.get('index')}"
        raise ValueError(msg)
    return {_token_id(t): float(v) for t, v in tops[-1].items()}


def _top_m(row: dict[int, float], m: int | None) -> dict[int, float]:
    """The m highest entries: a sampled token listed beyond the top m is dropped, so the
    candidates do not depend on the server's random draw."""
    return row if m is None else dict(sorted(row.items(), key=lambda item: -item[1])[:m])


def _token_id(key: str) -> int:
    """Token ids from `return_tokens_as_token_ids` keys ("token_id:123")."""
    if not key.startswith("token_id:"):
        msg = f"expected 'token_id:N' keys (return_tokens_as_token_ids), got {key!r}"
        raise ValueError(msg)
    return int(key.removeprefix("token_id:"))
