"""The verifier service's OpenAI-compatible subset: what `OpenAICompatibleGeneralist` uses.

vLLM's `/v1/completions` for scoring (token-id prompts, one or a batch of them, `echo`,
`logprobs`, `logprob_token_ids`, `prompt_logprobs`, `max_tokens` 0 or 1), `/tokenize` and
`/v1/models`, answered from a `VerifierService`'s generalist under its model lock. A batch is
answered as vLLM answers it: one choice per prompt, in order, each with its `index`. Log-probs
of −inf are written as vLLM's −9999.0 (`protocol.vllm_logprob`). `logprobs_mode` is vLLM's
`--logprobs-mode`: "raw_logprobs" (the model's log-probs) or "processed_logprobs" (the
generated token's after temperature); prompt log-probs are raw in both, as in vLLM.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from langchain_specsteer import algorithms as alg
from langchain_specsteer.protocol import MIN_TEMPERATURE, PublicPrompt, ServiceError, vllm_logprob
from langchain_specsteer.server.sessions import (
    VerifierService,
    encode_public,
    log_event,
    max_positions,
)

__all__ = ["CompletionRequest", "LogprobsMode", "OpenAICompatible", "TokenizeRequest"]

LogprobsMode = Literal["raw_logprobs", "processed_logprobs"]
"""What `logprobs` reports for a generated token (vLLM's `--logprobs-mode`): the model's
log-probs, or those after the sampling processors (here only temperature)."""

NEUTRAL = {
    "top_k": (0, -1),
    "min_p": (0.0,),
    "repetition_penalty": (1.0,),
    "presence_penalty": (0.0,),
    "frequency_penalty": (0.0,),
}
"""Sampling processors this server does not apply: each may only be omitted or neutral."""

MAX_LOGPROB_TOKEN_IDS = 128
"""The longest `logprob_token_ids` (vLLM's limit)."""


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
    prompt: list[list[int]] | list[int] | str
    max_tokens: int | None = Field(default=16)
    echo: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    temperature: float | None = None
    n: int = 1
    stream: bool = False
    return_tokens_as_token_ids: bool = False
    logprob_token_ids: list[int] | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

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
    tools: list[dict[str, Any]] | None = None
    """The tools the chat template lists (vLLM's field; `chat_template_kwargs` may override)."""

    @field_validator("prompt", "messages", "chat_template_kwargs", "tools")
    @classmethod
    def text_is_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        return _unicode(value, info.field_name)


class OpenAICompatible:
    """vLLM's scoring subset over the models of a `VerifierService`.

    Args:
        service: the models, limits, served name and model lock to answer with.
        logprobs_mode: vLLM's `--logprobs-mode`: "raw_logprobs" (default, as vLLM) or
            "processed_logprobs" (a generated token's log-probs after temperature).
    """

    def __init__(self, service: VerifierService, logprobs_mode: LogprobsMode = "raw_logprobs"):
        if logprobs_mode not in get_args(LogprobsMode):
            msg = (
                f"logprobs_mode must be one of {get_args(LogprobsMode)} (vLLM's --logprobs-mode), "
                f"got {logprobs_mode!r}"
            )
            raise ValueError(msg)
        self.service = service
        self.logprobs_mode = logprobs_mode

    def complete(self, request: CompletionRequest) -> dict[str, Any]:
        """vLLM's `/v1/completions`: for scoring, prompt log-probs and at most one new token
        for each prompt of a batch (token-id prompts sharing a prefix share its forward pass);
        for generating (`max_tokens` above 1, one prompt), the whole completion."""
        max_tokens = self._check(request)
        if max_tokens > 1 and not request.echo and not request.prompt_logprobs:
            return self._completion(request, list(self.generate(request)))
        return self._score(request, max_tokens)

    def _check(self, request: CompletionRequest) -> int:
        """Refuse what this server does not do (400 naming the field); the `max_tokens`."""
        limits = self.service.limits
        self._check_model(request.model)
        if request.n != 1:
            raise ServiceError(400, "n must be 1", param="n")
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        if max_tokens < 0 or (max_tokens == 0 and not request.echo):
            msg = "max_tokens must be at least 1, or 0 together with echo"
            raise ServiceError(400, msg, param="max_tokens")
        if max_tokens > 1 and (request.echo or request.prompt_logprobs is not None):
            msg = "this server scores with max_tokens 0 or 1 (echo, prompt_logprobs)"
            raise ServiceError(400, msg, param="max_tokens")
        if request.stream and max_tokens < 1:
            msg = "a stream generates: max_tokens must be at least 1"
            raise ServiceError(400, msg, param="max_tokens")
        if max_tokens > limits.max_completion_tokens:
            msg = f"max_tokens {max_tokens} is over max_completion_tokens"
            raise ServiceError(400, f"{msg} ({limits.max_completion_tokens})", param="max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(request, name)
            if value is not None and not 0 <= value <= limits.max_logprobs:
                msg = f"{name} must be in [0, {limits.max_logprobs}] (max_logprobs), got {value}"
                raise ServiceError(400, msg, param=name)
        if request.logprob_token_ids:
            self._check_logprob_token_ids(request)
        top_p = 1.0 if request.top_p is None else request.top_p
        if not 0 < top_p <= 1 or (top_p < 1 and max_tokens <= 1 and not request.stream):
            msg = (
                f"top_p must be in (0, 1], and below 1 only when generating (max_tokens above "
                f"1, or a stream): this server scores without it; got {top_p}"
            )
            raise ServiceError(400, msg, param="top_p")
        for name, neutral in NEUTRAL.items():
            value = getattr(request, name)
            if value is not None and value not in neutral:
                msg = (
                    f"this server applies no sampling processor but temperature: {name} must "
                    f"be {neutral[0]} or omitted, got {value}"
                )
                raise ServiceError(400, msg, param=name)
        temperature = self._temperature(request)
        if not (math.isfinite(temperature) and 0 <= temperature <= 2) or (
            0 < temperature < MIN_TEMPERATURE
        ):
            msg = f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2], got {temperature}"
            raise ServiceError(400, msg, param="temperature")
        return max_tokens

    @staticmethod
    def _temperature(request: CompletionRequest) -> float:
        return 1.0 if request.temperature is None else request.temperature

    def generate(self, request: CompletionRequest) -> Iterator[dict[str, Any]]:
        """The completion of one prompt, a choice per new token (vLLM's stream chunks): greedy
        at temperature 0, else sampled (seeded by the request's `seed`). The request is checked
        now (a refusal is a 4xx, not a broken stream); model work takes the service's lock one
        step at a time, so sessions interleave with a long completion."""
        max_tokens = self._check(request)
        (prompt,) = self._prompts(request.prompt, most=1)
        return self._generated(request, prompt, max_tokens)

    def _generated(
        self, request: CompletionRequest, prompt: list[int], max_tokens: int
    ) -> Iterator[dict[str, Any]]:
        generalist, temperature = self.service.generalist, self._temperature(request)
        top_p = 1.0 if request.top_p is None else request.top_p
        seed = getattr(request, "seed", None)
        generator = torch.Generator().manual_seed(seed) if isinstance(seed, int) else None
        room = self.service.limits.max_session_tokens - len(prompt)
        sequence = generalist.sequence(prompt)
        try:
            for step in range(min(max_tokens, room)):
                with self.service.model_lock:
                    row = sequence.forward()[0, -1]
                tempered = alg.temper(row, temperature)
                nucleus = alg.top_p_filter(tempered, top_p) if temperature else tempered
                new = alg.pick(nucleus, greedy=temperature == 0, generator=generator)
                sequence.append([new])
                last = step == min(max_tokens, room) - 1
                stop = new in generalist.eos_token_ids
                scored = tempered if self.logprobs_mode == "processed_logprobs" else row
                yield self._token_choice(request, new, scored, stop or last, stop)
                if stop:
                    break
        finally:
            sequence.cache = None
        log_event("completion", prompts=1, prompt_tokens=len(prompt), max_tokens=max_tokens)

    def _token_choice(
        self, request: CompletionRequest, token: int, row: torch.Tensor, last: bool, stop: bool
    ) -> dict[str, Any]:
        """One generated token as a stream chunk's choice."""
        tokenizer = self.service.generalist.tokenizer
        name = f"token_id:{token}" if request.return_tokens_as_token_ids else None
        choice: dict[str, Any] = {
            "index": 0,
            "text": tokenizer.decode([token], skip_special_tokens=True),
            "logprobs": None,
            "finish_reason": ("stop" if stop else "length") if last else None,
            "stop_reason": None,
        }
        if request.logprobs is not None:

            def label(t: int) -> str:
                return (
                    f"token_id:{t}" if request.return_tokens_as_token_ids else tokenizer.decode([t])
                )

            tops = _top(row, token, request.logprobs)
            choice["logprobs"] = {
                "text_offset": [0],
                "token_logprobs": [vllm_logprob(row[token])],
                "tokens": [name or tokenizer.decode([token])],
                "top_logprobs": [{label(u): v for u, (v, _) in tops.items()}],
            }
        return choice

    def _completion(self, request: CompletionRequest, choices: list[dict]) -> dict[str, Any]:
        """A generated completion's choices, merged into one answer (not streamed)."""
        merged: dict[str, Any] = {
            "index": 0,
            "text": "".join(c["text"] for c in choices),
            "logprobs": None,
            "finish_reason": choices[-1]["finish_reason"] if choices else "length",
            "stop_reason": None,
        }
        if request.logprobs is not None:
            merged["logprobs"] = {
                key: [v for c in choices for v in c["logprobs"][key]]
                for key in ("text_offset", "token_logprobs", "tokens", "top_logprobs")
            }
        return self.answer([merged], len(choices))

    def answer(self, choices: list[dict], completion_tokens: int, **usage: Any) -> dict[str, Any]:
        """An answer (or a stream chunk) holding `choices`, with `usage`'s other counts."""
        return {
            "id": f"cmpl-{secrets.token_hex(8)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.service.model_name,
            "choices": choices,
            "usage": {**usage, "completion_tokens": completion_tokens},
        }

    def _score(self, request: CompletionRequest, max_tokens: int) -> dict[str, Any]:
        """Prompt log-probs and at most one new token for each prompt of a batch."""
        temperature = self._temperature(request)
        prompts = self._prompts(request.prompt)
        with self.service.model_lock:
            rows = self._rows(prompts)
        choices = [
            self._choice(request, index, prompt, rows[index], max_tokens, temperature)
            for index, prompt in enumerate(prompts)
        ]
        total = sum(len(p) for p in prompts)
        log_event("completion", prompts=len(prompts), prompt_tokens=total, max_tokens=max_tokens)
        return self.answer(
            choices,
            len(prompts),
            prompt_tokens=total,
            total_tokens=total + len(prompts),
            # as vLLM (--enable-prompt-tokens-details): the last prompt's tokens it did not
            # compute again; here, those it shares with an earlier prompt of the request
            prompt_tokens_details={"cached_tokens": _shared_prefix(prompts)},
        )

    def _check_logprob_token_ids(self, request: CompletionRequest) -> None:
        """vLLM's rules for `logprob_token_ids`: with `logprobs`, at most 128, in the vocabulary."""
        ids = request.logprob_token_ids or []
        vocab = self.service.generalist.vocab_size
        problem = None
        if request.logprobs is None:
            problem = "when using `logprob_token_ids`, `logprobs` must be set"
        elif len(ids) > MAX_LOGPROB_TOKEN_IDS:
            problem = f"at most {MAX_LOGPROB_TOKEN_IDS} logprob_token_ids, got {len(ids)}"
        elif bad := [t for t in ids if not 0 <= t < vocab]:
            problem = f"logprob_token_ids holds {bad[0]}, outside the vocabulary [0, {vocab})"
        if problem:
            raise ServiceError(400, problem, param="logprob_token_ids")

    def _prompts(
        self, prompt: list[list[int]] | list[int] | str, most: int | None = None
    ) -> list[list[int]]:
        """The request's prompts as token ids, checked against the limits and vocabulary (at
        most `most` of them; default: a round's worth, `max_draft_tokens` + 1)."""
        limits, generalist = self.service.limits, self.service.generalist
        if isinstance(prompt, str):
            prompts = [generalist.tokenizer.encode(prompt, add_special_tokens=True)]
        elif prompt and isinstance(prompt[0], list):
            prompts = prompt
        else:
            prompts = [prompt]
        if not prompts:
            raise ServiceError(400, "prompt is empty", param="prompt")
        if most == 1 and len(prompts) > 1:
            msg = f"prompt holds {len(prompts)} prompts; this server generates for one at a time"
            raise ServiceError(400, msg, param="prompt")
        most = most or limits.max_draft_tokens + 1
        if len(prompts) > most:
            msg = (
                f"prompt holds {len(prompts)} prompts; this server scores at most {most} "
                "(max_draft_tokens + 1) in one request"
            )
            raise ServiceError(413, msg, param="prompt")
        for i, ids in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not ids:
                raise ServiceError(400, f"{where} is empty", param="prompt")
            longest = limits.max_prompt_tokens
            if len(ids) > longest:
                msg = f"{where} has {len(ids)} tokens; max_prompt_tokens is {longest}"
                raise ServiceError(413, msg, param="prompt")
            bad = next((t for t in ids if not 0 <= t < generalist.vocab_size), None)
            if bad is not None:
                msg = (
                    f"{where} holds token id {bad}, outside the vocabulary "
                    f"[0, {generalist.vocab_size})"
                )
                raise ServiceError(400, msg, param="prompt")
        return prompts

    def _rows(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """Each prompt's (L, V) log-probs (row i predicts token i+1); a prompt that is a prefix
        of another takes that one's rows instead of a forward pass of its own."""
        generalist = self.service.generalist
        longest_first = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        computed: list[tuple[list[int], torch.Tensor]] = []
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for i in longest_first:
            prompt = prompts[i]
            for ids, table in computed:
                if ids[: len(prompt)] == prompt:
                    rows[i] = table[: len(prompt)]
                    break
            else:
                rows[i] = generalist.sequence(prompt).forward(len(prompt))[0]
                computed.append((prompt, rows[i]))
        return rows

    def _choice(
        self,
        request: CompletionRequest,
        index: int,
        prompt: list[int],
        rows: torch.Tensor,
        max_tokens: int,
        temperature: float,
    ) -> dict[str, Any]:
        """One prompt's choice: its prompt log-probs, its new token and that token's log-probs."""
        generalist = self.service.generalist
        tokenizer = generalist.tokenizer
        last = alg.temper(rows[-1], temperature)
        new = alg.pick(last, greedy=temperature == 0)
        generated = [new] if max_tokens == 1 else []
        # vLLM's processed_logprobs: the generated token's row after temperature (greedy: raw)
        scored_row = last if self.logprobs_mode == "processed_logprobs" else rows[-1]
        prompt_logprobs = request.prompt_logprobs
        if prompt_logprobs is None and request.echo and request.logprobs is not None:
            prompt_logprobs = request.logprobs

        def name(t: int) -> str:
            if request.return_tokens_as_token_ids:
                return f"token_id:{t}"
            return tokenizer.decode([t])

        choice: dict[str, Any] = {
            "index": index,
            "text": (tokenizer.decode(prompt) if request.echo else "")
            + tokenizer.decode(generated),
            "logprobs": None,
            "finish_reason": "stop" if new in generalist.eos_token_ids else "length",
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        if prompt_logprobs is not None:
            listed: list[dict | None] = [None]
            for i in range(1, len(prompt)):
                entries = _top(rows[i - 1], prompt[i], prompt_logprobs)
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
                row = scored_row if pos == len(prompt) else rows[pos - 1]
                token_logprobs.append(vllm_logprob(row[t]))
                if pos == len(prompt) and request.logprob_token_ids:  # instead of the top n
                    chosen = [t, *request.logprob_token_ids]
                    tops.append({name(u): vllm_logprob(row[u]) for u in chosen})
                else:
                    entries = _top(row, t, request.logprobs)
                    tops.append({name(u): v for u, (v, _) in entries.items()})
            choice["logprobs"] = {
                "text_offset": offsets,
                "token_logprobs": token_logprobs,
                "tokens": tokens,
                "top_logprobs": tops,
            }
        return choice

    def tokenize(self, request: TokenizeRequest) -> dict[str, Any]:
        """vLLM's `/tokenize`: a prompt, or messages through the chat template."""
        self._check_model(request.model)
        prompt = PublicPrompt(
            messages=request.messages,
            chat_template_kwargs=request.chat_template_kwargs,
            tools=request.tools,
            prompt=request.prompt,
        )
        tokens = encode_public(
            self.service,
            prompt,
            add_generation_prompt=request.add_generation_prompt,
            add_special_tokens=request.add_special_tokens,
        )
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens}

    @property
    def max_model_len(self) -> int:
        """The generalist's maximum length (its config's), else `max_session_tokens`."""
        return max_positions(self.service.generalist) or self.service.limits.max_session_tokens

    def models(self) -> dict[str, Any]:
        """vLLM's `/v1/models`: the one served model."""
        return {
            "object": "list",
            "data": [
                {
                    "id": self.service.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "specsteer",
                    "max_model_len": self.max_model_len,
                }
            ],
        }

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.service.model_name:
            raise ServiceError(404, f"The model `{model}` does not exist.", param="model")


def _top(row: torch.Tensor, actual: int, n: int) -> dict[int, tuple[float, int]]:
    """The actual token first, then the top n of `row`: id → (log-prob, vLLM's rank)."""
    entries = {actual: (vllm_logprob(row[actual]), int((row >= row[actual]).sum()))}
    if n:
        values, indices = torch.topk(row, min(n, row.shape[-1]))
        for rank, (v, t) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), 1):
            entries.setdefault(t, (vllm_logprob(v), rank))
    return entries


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens of the last prompt shared with an earlier one (at most all but its last token)."""
    last = prompts[-1]
    shared = 0
    for earlier in prompts[:-1]:
        n = 0
        while n < min(len(earlier), len(last)) and earlier[n] == last[n]:
            n += 1
        shared = max(shared, n)
    return min(shared, len(last) - 1)
