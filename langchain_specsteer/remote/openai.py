"""`OpenAICompatibleGeneralist`: a generalist behind a vLLM-style OpenAI-compatible server.

It speaks vLLM's `/v1/completions` (token-id prompts with `logprobs`), so the generalist can
be a 32B+ model on many GPUs; q_gen is then computed on the device and the device decides
acceptance. That API is stateless: each round re-sends the token sequence. By default a round
is K+1 prefix prompts of one generated token each, which vLLM's prefix cache serves
(`scoring="prefixes"`); `scoring="prompt_logprobs"` asks for prompt log-probs instead, for
which vLLM skips its prefix cache (a prefill of the text a round). The answer parsers
(`prefix_rows`, `prompt_logprob_rows`) turn vLLM's JSON into rows of token id → log-prob.
docs/protocol.md has the requests and answers.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.models import encode_messages
from langchain_specsteer.protocol import logprobs_from_vllm
from langchain_specsteer.remote.base import HTTPGeneralist, tokenize
from langchain_specsteer.remote.http import Exchange, Together, refused
from langchain_specsteer.verification import (
    GeneralistError,
    GeneralistSession,
    PromptTurns,
    Rule,
    Verdict,
    VerifyCall,
    vocab_signature,
)

__all__ = [
    "NEUTRAL_SAMPLING",
    "LogprobsMode",
    "OpenAICompatibleGeneralist",
    "OpenAICompatibleSession",
    "Scoring",
    "prefix_rows",
    "prompt_logprob_rows",
]

RESCORES = 3
"""Tries at scoring a round again after a short answer (`OpenAICompatibleSession._rescored`)."""

Row = dict[int, float]
"""One position's listed entries: token id → log-prob (unlisted tokens are absent)."""

Scoring = Literal["prefixes", "prompt_logprobs"]
"""How `OpenAICompatibleGeneralist` asks for a round's rows: K+1 prefix prompts with one
generated token each (served by a prefix cache), or one prompt with prompt log-probs."""

LogprobsMode = Literal["raw_logprobs", "processed_logprobs"]
"""What the server's log-probs are (vLLM's `--logprobs-mode`): before or after temperature."""


class OpenAICompatibleGeneralist(HTTPGeneralist):
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
            needs the draft tokens' own log p_G (a draft token may fall outside the top
            `top_logprobs` at its position), ask for them with vLLM's `logprob_token_ids` (the
            same prefixes, served by the cache), so acceptance is decided as in-process:
            True (default): in a second request sent with the first (one round trip);
            "after": only when a draft token is unlisted, after the first answer (a second
            round trip in those rounds); False: one request a round, and an unlisted draft
            token counts as p_G = 0 (rejected). vLLM 0.32 (measured on its CPU build)
            corrupts the top log-probs of requests batched with a `logprob_token_ids` one:
            the client sees it (rows shorter than `top_logprobs`), scores the round again
            alone and stops asking for draft values (as False) with a warning; for exact
            decisions there, use "after" with `rounds_in_flight=1` and one user at a time.
        tokenizer: the generalist's tokenizer (e.g. `AutoTokenizer.from_pretrained(model)`):
            prompts are encoded locally and its vocabulary is checked against the
            specialist's. Without it the vocabularies are assumed to match, and a generation
            asks the server's `/tokenize` with its first round: the round is sent at once on
            the specialist's rendering of the same turns, and sent again only if the server's
            rendering differs.
        max_rounds_in_flight: rounds of one generation sent at once at most (the server keeps
            no state, so any number works; each waits its own round trip).
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
        exact_drafts: bool | Literal["after"] = True,
        tokenizer: Any = None,
        eos_token_ids: Sequence[int] = (),
        max_rounds_in_flight: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.2,
        wrap_transport: Callable[[Any], Any] | None = None,
    ):
        if top_logprobs < 1:
            msg = f"top_logprobs must be at least 1, got {top_logprobs}"
            raise ValueError(msg)
        if exact_drafts not in (True, False, "after"):
            msg = f"exact_drafts must be True, False or 'after', got {exact_drafts!r}"
            raise ValueError(msg)
        if max_rounds_in_flight < 1:
            msg = f"max_rounds_in_flight must be at least 1, got {max_rounds_in_flight}"
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
        self.max_rounds_in_flight = max_rounds_in_flight
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
            yield from tokenize(self.http, self.model, messages, chat_mode, chat_template_kwargs)
        )

    def public_prompt(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int] | PromptTurns:
        """The ids from the local tokenizer; without one, the turns themselves, which the
        first round sends to `/tokenize` alongside its scoring (no request now)."""
        if self.tokenizer is not None:
            return self.encode_messages(
                messages, chat=chat, chat_template_kwargs=chat_template_kwargs
            )
        kwargs = dict(chat_template_kwargs) if chat_template_kwargs else None
        return PromptTurns(tuple(dict(m) for m in messages), chat, kwargs)

    async def apublic_prompt(
        self, messages: Sequence[dict], *, chat: bool, chat_template_kwargs: dict | None = None
    ) -> list[int] | PromptTurns:
        if self.tokenizer is not None:
            return await self.aencode_messages(
                messages, chat=chat, chat_template_kwargs=chat_template_kwargs
            )
        return self.public_prompt(messages, chat=chat, chat_template_kwargs=chat_template_kwargs)

    def open_session(
        self,
        prompt: Sequence[int] | PromptTurns,
        *,
        vocab_size: int,
        temperature: float = 0.0,
        q_gen_prompt: Sequence[int] | None = None,
    ) -> OpenAICompatibleSession:
        return OpenAICompatibleSession(self, prompt, vocab_size, temperature)

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleGeneralist({self.http.base_url!r}, model={self.model!r}, "
            f"scoring={self.scoring!r})"
        )


class OpenAICompatibleSession(GeneralistSession):
    """One generation over a stateless completions API: the device holds the token ids.

    Every round names its whole prefix, so rounds go out while others are in flight (each a
    request of its own, served by the prefix cache). Opened with turns (no tokenizer on the
    device), the prompt is the specialist's rendering of them (`PromptTurns.guess`) until the
    server's `/tokenize`, asked with the first rounds, confirms it or corrects it (those rounds
    are then scored again on the server's prompt).
    """

    awaits_io = True

    def __init__(
        self,
        client: OpenAICompatibleGeneralist,
        prompt: Sequence[int] | PromptTurns,
        vocab_size: int,
        temp: float,
    ):
        self.client = client
        self.max_in_flight = client.max_rounds_in_flight
        self.vocab_size = vocab_size
        self.temperature = temp
        self.turns = prompt if isinstance(prompt, PromptTurns) else None
        if self.turns is None:
            self.prompt: list[int] | None = list(prompt)
        else:
            guess = self.turns.guess
            self.prompt = None if guess is None else [*guess, *self.turns.then]
        self.confirmed = self.turns is None
        self.generated: list[int] = []  # the committed tokens after the prompt
        self.outstanding: deque[list[int]] = deque()  # drafts started, not yet committed
        self.lock = threading.Lock()

    @property
    def tokens(self) -> list[int]:
        """The prompt and the committed tokens (the prompt as known now)."""
        return [*(self.prompt or []), *self.generated]

    def start(
        self,
        draft: list[int],
        rule: Rule,
        gamma: float,
        uniforms: list[float] | None = None,
        *,
        after: Sequence[int] = (),
    ) -> VerifyCall:
        generated, draft = [*self.generated, *after], list(draft)
        self.outstanding.append(draft)
        fill_in = _reads_draft_values(rule, uniforms)
        http = self.client.http
        return VerifyCall(
            perform=lambda: http.run(self._round(generated, draft, fill_in)),
            aperform=lambda: http.arun(self._round(generated, draft, fill_in)),
            awaits_io=True,
        )

    def verify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        return self.start(draft, rule, gamma, uniforms).perform()

    async def averify(
        self, draft: list[int], rule: Rule, gamma: float, uniforms: list[float] | None = None
    ) -> Verdict:
        return await self.start(draft, rule, gamma, uniforms).aperform()

    def _round(self, generated: list[int], draft: list[int], fill_in: bool) -> Exchange:
        """One round after the prompt and `generated`; before the prompt is confirmed, with
        `/tokenize` alongside (or before it, with no guess to score on)."""
        with self.lock:
            prompt, confirmed = self.prompt, self.confirmed
        if confirmed:
            return (yield from self._score([*prompt, *generated], draft, fill_in))
        if prompt is None:
            self._confirm((yield from self._tokenize()))
            return (yield from self._score([*self.prompt, *generated], draft, fill_in))
        ids, verdict = yield Together(
            (self._tokenize(), self._score([*prompt, *generated], draft, fill_in))
        )
        if self._confirm(ids):  # the server renders the turns otherwise: score on its prompt
            verdict = yield from self._score([*self.prompt, *generated], draft, fill_in)
        return verdict

    def _tokenize(self) -> Exchange:
        """The server's prompt ids for the turns (then any forced ids)."""
        turns = self.turns
        chat_mode = None if turns.chat else False
        ids = yield from tokenize(
            self.client.http,
            self.client.model,
            turns.messages,
            chat_mode,
            turns.chat_template_kwargs,
        )
        return [*ids, *turns.then]

    def _confirm(self, ids: list[int]) -> bool:
        """Take the server's prompt; whether it differs from the one rounds were sent on."""
        with self.lock:
            changed = self.prompt is not None and self.prompt != ids
            self.prompt, self.confirmed = list(ids), True
        return changed

    @property
    def processed(self) -> bool:
        """Whether the server tempers the generated tokens' rows (processed log-probs)."""
        return self.client.logprobs_mode == "processed_logprobs"

    def request_body(self, draft: list[int], tokens: list[int] | None = None) -> dict[str, Any]:
        """The `/v1/completions` body that scores `draft` after `tokens` (default: the prompt
        and the committed tokens)."""
        client, m = self.client, self.client.top_logprobs
        tokens = self.tokens if tokens is None else tokens
        body: dict[str, Any] = {"model": client.model}
        if client.scoring == "prefixes":
            body["prompt"] = [tokens + draft[:i] for i in range(len(draft) + 1)]
        else:
            body["prompt"] = tokens + draft
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

    def fill_in_body(
        self, draft: list[int], positions: list[int], tokens: list[int] | None = None
    ) -> dict[str, Any]:
        """The body asking, at each of `positions`, for the draft token's own log-prob: the
        prefixes again (served by the cache) with vLLM's `logprob_token_ids`."""
        tokens = self.tokens if tokens is None else tokens
        body = self.request_body(draft, tokens)
        body["prompt"] = [tokens + draft[:i] for i in positions]
        body["logprobs"] = 0
        body["logprob_token_ids"] = sorted({draft[i] for i in positions})
        return body

    def raw_rows(self, k: int) -> int:
        """How many leading rows of a k-token draft's k + 1 come untempered, so the device
        tempers them: all with raw log-probs; with processed ones, the k draft rows of
        "prompt_logprobs" scoring (vLLM's prompt log-probs are raw in every mode), else none."""
        if not self.processed:
            return k + 1
        return k if self.client.scoring == "prompt_logprobs" else 0

    def _score(self, tokens: list[int], draft: list[int], fill_in: bool = True) -> Exchange:
        """The generalist's rows at the draft positions and after `tokens` (the device
        decides); with prefix scoring and `fill_in`, the draft tokens' own values are asked
        for as `exact_drafts` says, for those outside the top m."""
        client, k = self.client, len(draft)
        asks = bool(draft) and fill_in and client.scoring == "prefixes"
        exact = client.exact_drafts if asks else False
        if exact is True:
            (answer, rows), (_, filled) = yield Together(
                (self._scoring(tokens, draft), self._draft_values(tokens, draft, range(k)))
            )
            if _corrupted(rows, client.top_logprobs, self.vocab_size):
                answer, rows = yield from self._rescored(tokens, draft)
            else:
                _fill(rows, draft, range(k), filled)
        else:
            answer, rows = yield from self._scoring(tokens, draft)
            if _corrupted(rows, client.top_logprobs, self.vocab_size):
                answer, rows = yield from self._rescored(tokens, draft)
            unlisted = [i for i, token in enumerate(draft) if token not in rows[i]]
            if exact == "after" and unlisted:
                _, filled = yield from self._draft_values(tokens, draft, unlisted)
                _fill(rows, draft, unlisted, filled)
        client.last_usage = answer.get("usage")
        log_p_G = torch.full((k + 1, self.vocab_size), -math.inf)
        for i, row in enumerate(rows):
            ids = [t for t in row if t < self.vocab_size]
            log_p_G[i, ids] = logprobs_from_vllm([row[t] for t in ids])
        # Raw rows are tempered here, over the listed entries only; processed rows come
        # tempered over the whole vocabulary.
        raw = self.raw_rows(k)
        log_p_G[:raw] = alg.temper(log_p_G[:raw], self.temperature)
        return Verdict(log_p_G)

    def _scoring(self, tokens: list[int], draft: list[int]) -> Exchange:
        """The request for a round's rows (prefixes or prompt log-probs)."""
        client, k, m = self.client, len(draft), self.client.top_logprobs
        parse = prefix_rows if client.scoring == "prefixes" else prompt_logprob_rows
        body = self.request_body(draft, tokens)
        return self._complete(body, "scoring a draft", lambda answer: parse(answer, k, m))

    def _draft_values(self, tokens: list[int], draft: list[int], positions) -> Exchange:
        """The request for the draft tokens' own log-probs at `positions`."""
        positions = list(positions)
        return self._complete(
            self.fill_in_body(draft, positions, tokens),
            "asking for the draft tokens' own log-probs (exact_drafts=False skips it)",
            lambda answer: prefix_rows(answer, len(positions) - 1, m=None),
        )

    def _rescored(self, tokens: list[int], draft: list[int]) -> Exchange:
        """The round scored again after an answer with rows shorter than the top m (vLLM's
        batching with `logprob_token_ids`); draft values are not asked any more. Rounds in
        flight may still have such requests running beside it, so it tries `RESCORES` times."""
        client = self.client
        if client.exact_drafts:
            warnings.warn(
                f"{client.http.base_url} returned fewer top log-probs than asked while a "
                "logprob_token_ids request ran beside (vLLM 0.32 does): the round is scored "
                "again, and draft values are no longer asked (exact_drafts=False)",
                RuntimeWarning,
                stacklevel=2,
            )
            client.exact_drafts = False
        for _ in range(RESCORES):
            answer, rows = yield from self._scoring(tokens, draft)
            if not _corrupted(rows, client.top_logprobs, self.vocab_size):
                return answer, rows
        msg = f"{client.http.base_url} keeps returning fewer top log-probs than asked"
        raise GeneralistError(msg)

    def _complete(
        self, body: dict[str, Any], what: str, parse: Callable[[dict], list[Row]]
    ) -> Exchange:
        """POST `body` to `/v1/completions`: (the answer, its rows by `parse`). A refusal, or
        an answer `parse` cannot read, raises GeneralistError saying what was wrong."""
        http = self.client.http
        response = yield from http.exchange("POST", "/v1/completions", body)
        if response.status_code != 200:
            raise refused(response, what)
        try:
            answer = response.json()
            return answer, parse(answer)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            msg = f"unexpected /v1/completions answer from {http.base_url}: {err}"
            raise GeneralistError(msg) from err

    def commit(self, accepted: int, token: int) -> None:
        self.generated.extend([*self.outstanding.popleft()[:accepted], token])

    def drop(self) -> None:
        self.outstanding.clear()


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


def _corrupted(rows: list[Row], m: int, vocab_size: int) -> bool:
    """Whether a prefix answer lists fewer entries than the top m it was asked for (vLLM lists
    the top m, and the drawn token when it is not among them)."""
    return any(len(row) < min(m, vocab_size) for row in rows)


def _fill(rows: list[Row], draft: list[int], positions, filled: list[Row]) -> None:
    """Add the draft tokens' own values (`filled`, one row per position) to `rows`."""
    for i, row in zip(positions, filled, strict=True):
        if draft[i] not in rows[i] and draft[i] in row:  # a server without
            rows[i][draft[i]] = row[draft[i]]  # logprob_token_ids lists only its draw


def _reads_draft_values(rule: Rule, uniforms: list[float] | None) -> bool:
    """Whether deciding `rule` reads the draft tokens' own log p_G (greedy "match" reads only
    the argmax, which every row lists; "none" has no draft)."""
    return rule not in ("none", "match") or uniforms is not None


def prefix_rows(answer: dict, k: int, m: int | None) -> list[Row]:
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


def prompt_logprob_rows(answer: dict, k: int, m: int) -> list[Row]:
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


def _generated_row(choice: dict) -> Row:
    """The generated token's top log-probs in a choice (`return_tokens_as_token_ids` keys)."""
    tops = choice["logprobs"]["top_logprobs"]
    if not tops or not isinstance(tops[-1], dict):
        msg = f"no top_logprobs for the generated token in choice {choice.get('index')}"
        raise ValueError(msg)
    return {_token_id(t): float(v) for t, v in tops[-1].items()}


def _top_m(row: Row, m: int | None) -> Row:
    """The m highest entries: a sampled token listed beyond the top m is dropped, so the
    candidates do not depend on the server's random draw."""
    return row if m is None else dict(sorted(row.items(), key=lambda item: -item[1])[:m])


def _token_id(key: str) -> int:
    """Token ids from `return_tokens_as_token_ids` keys ("token_id:123")."""
    if not key.startswith("token_id:"):
        msg = f"expected 'token_id:N' keys (return_tokens_as_token_ids), got {key!r}"
        raise ValueError(msg)
    return int(key.removeprefix("token_id:"))
