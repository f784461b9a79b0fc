"""What `SpecSteerLLM` and `ChatSpecSteer` share: fields, private context, prompts, decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar, Literal, Self

from langchain_core.caches import BaseCache
from langchain_core.documents import Document
from langchain_core.globals import get_llm_cache
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_specsteer.context import (
    aretrieve_privately,
    context_pieces,
    private_prompt,
    render_context,
    retrieve_privately,
)
from langchain_specsteer.engine import SpecSteerEngine
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.models import LocalGeneralist, Message, Specialist
from langchain_specsteer.params import (
    DEFAULT_CONTEXT_TEMPLATE,
    DecodingParams,
    check_context_template,
    template_fields,
)
from langchain_specsteer.run import Prompts, Round, Run
from langchain_specsteer.runtimes import SpecialistRuntime, load_specialist
from langchain_specsteer.text import ByteDetokenizer, IncrementalDetokenizer, StopStringFilter
from langchain_specsteer.verification import Generalist, GeneralistError, PromptTurns

__all__ = [
    "CACHE_SECRET_ENV",
    "CallCache",
    "PrivateContext",
    "RedactedContext",
    "SpecSteerBase",
    "context_digest",
    "stop_strings",
]

PrivateContext = str | Document | Sequence[str | Document] | None


class RedactedContext:
    """Private context in transit to the specialist: prints and serialises as redacted.

    LangChain hands every `stream()` keyword to callbacks and tracers as invocation params;
    wrapping the context keeps it out of them.
    """

    __slots__ = ("_reveal",)

    def __init__(self, context: PrivateContext):
        self._reveal = lambda: context

    def reveal(self) -> PrivateContext:
        return self._reveal()

    def __repr__(self) -> str:
        return "<private context redacted>"

    __str__ = __repr__


def redact(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's keyword arguments with its `private_context` wrapped in `RedactedContext`."""
    if kwargs.get("private_context") is not None:
        kwargs = {**kwargs, "private_context": RedactedContext(kwargs["private_context"])}
    return kwargs


def unredact(context: PrivateContext | RedactedContext) -> PrivateContext:
    """The context a call passed (unwrapped from its redaction)."""
    return context.reveal() if isinstance(context, RedactedContext) else context


CACHE_SECRET_ENV = "SPECSTEER_CACHE_SECRET"
"""The environment variable holding the key of cache-key digests: set it (to a secret kept
like the cache itself) for a persistent cache to be hit across processes."""
_PROCESS_SECRET = secrets.token_bytes(32)


def context_digest(context: str) -> str:
    """A keyed digest (HMAC-SHA256) of a rendered private context, for LangChain's cache keys.

    Equal contexts give equal digests under one key: the `SPECSTEER_CACHE_SECRET` environment
    variable, else a random key of this process. Without the key a digest tells nothing about
    the context; a plain hash would not do, as a short context (a PIN, a name) is found from
    it by hashing guesses (docs/privacy.md).
    """
    key = os.environ.get(CACHE_SECRET_ENV, "").encode() or _PROCESS_SECRET
    return "hmac-sha256:" + hmac.new(key, context.encode(), hashlib.sha256).hexdigest()


class CallCache(BaseCache):
    """LangChain's cache seen by one call: its entries keyed by the call's fields too (its
    keyword arguments, the digest of its private context, the fields that shape its prompts),
    which LangChain's own key (`SpecSteerLLM`'s) leaves out."""

    def __init__(self, cache: BaseCache, fields: dict[str, Any]):
        self.cache = cache
        self.suffix = "---specsteer:" + json.dumps(fields, sort_keys=True, default=_plain)

    def lookup(self, prompt: str, llm_string: str) -> Any:
        return self.cache.lookup(prompt, llm_string + self.suffix)

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        self.cache.update(prompt, llm_string + self.suffix, return_val)

    def clear(self, **kwargs: Any) -> None:
        self.cache.clear(**kwargs)

    async def alookup(self, prompt: str, llm_string: str) -> Any:
        return await self.cache.alookup(prompt, llm_string + self.suffix)

    async def aupdate(self, prompt: str, llm_string: str, return_val: Any) -> None:
        await self.cache.aupdate(prompt, llm_string + self.suffix, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        await self.cache.aclear(**kwargs)


class SpecSteerBase(DecodingParams):
    """The fields and the decoding shared by the LangChain surfaces (not used alone)."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=True
    )

    specialist: Specialist
    """The on-device model (`LocalSpecialist`, or `LlamaCppSpecialist` on llama.cpp); the only
    one that sees private context."""
    generalist: Generalist
    """The large model: `LocalGeneralist` in this process, `RemoteGeneralist` (our verifier
    service) or `OpenAICompatibleGeneralist` (e.g. vLLM). It receives public token ids only."""
    stop: list[str] | None = None
    """Stop strings: output ends just before the first one (added to per-call `stop`). A single
    string is one stop string, here and per call."""
    use_chat_template: bool = True
    """Render prompts with each model's own chat template, when its tokenizer has one."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments for `apply_chat_template` (e.g. {"enable_thinking": False} for Qwen3)."""
    context_template: str = DEFAULT_CONTEXT_TEMPLATE
    """How private context and the prompt are joined for the specialist: {context}, {prompt}."""
    context_separator: str = "\n\n"
    """Joins the pieces of the private context (strings and rendered documents)."""
    document_template: str = "{page_content}"
    """Renders each private document: {page_content} and metadata fields (`task_templates`)."""
    retriever: BaseRetriever | None = None
    """Queried with the public prompt when a call gives no `private_context`; its documents
    become the private context (retrieved without callbacks, so tracing never sees them)."""
    retrieval_k: int | None = Field(default=None, ge=1)
    """Keep at most this many retrieved documents (None: all the retriever returns)."""
    batch_specialist: bool | None = None
    """Compute q_ctx and q_gen in one batch-of-2 specialist forward per step; None: on CUDA."""
    alignment: Literal["auto", "token", "byte"] = "auto"
    """"token": both models share one vocabulary; "byte": they share only text (different
    tokenizers); "auto": "token" when the vocabularies match, else "byte"."""

    _prompt_fields: ClassVar[tuple[str, ...]] = (
        "use_chat_template",
        "chat_template_kwargs",
        "context_template",
        "context_separator",
        "document_template",
        "alignment",
    )
    """Fields besides the decoding ones that shape a call's prompts or text: in its cache key."""

    _engine_cache: SpecSteerEngine | None = PrivateAttr(default=None)
    _engine_key: tuple[Any, ...] = PrivateAttr(default=())

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("context_template")
    @classmethod
    def _check_context_template(cls, value: str) -> str:
        return check_context_template(value)

    @field_validator("document_template")
    @classmethod
    def _check_document_template(cls, value: str) -> str:
        template_fields(value)
        return value

    @model_validator(mode="after")
    def _check_engine(self) -> SpecSteerBase:
        """Build the engine now, so a pair it refuses fails here; assigning a field it is not
        built from (`llm.gamma = 0.1`) keeps the one built."""
        _ = self._engine
        return self

    @property
    def _engine(self) -> SpecSteerEngine:
        """The engine of the current models, `batch_specialist` and `alignment`: built when
        one of them changed (byte-level tables included), else the cached one."""
        # The models by identity (the cached engine holds them, so their ids stay theirs).
        key = (id(self.specialist), id(self.generalist), self.batch_specialist, self.alignment)
        if self._engine_cache is None or self._engine_key != key:
            self._engine_cache = SpecSteerEngine(
                self.specialist,
                self.generalist,
                batch_specialist=self.batch_specialist,
                alignment=self.alignment,
            )
            self._engine_key = key
        return self._engine_cache

    @classmethod
    def from_pretrained(
        cls,
        specialist: str,
        generalist: str,
        *,
        device: str | None = None,
        torch_dtype: Any = None,
        specialist_gguf_file: str | None = None,
        generalist_gguf_file: str | None = None,
        specialist_runtime: SpecialistRuntime = "transformers",
        **fields: Any,
    ) -> Self:
        """Load both models (hub ids, folders or `.gguf` files) with `transformers` and build
        the LLM.

        Args:
            specialist: the on-device model, e.g. "Qwen/Qwen3-0.6B".
            generalist: the large model, e.g. "Qwen/Qwen3-8B".
            device: for both models (default: CUDA when available).
            torch_dtype: for both models (default: float32 on CPU, "auto" on CUDA).
            specialist_gguf_file: a GGUF file in `specialist` (folder or hub repo) holding the
                weights, tokenizer and chat template; dequantised on load (`gguf` extra).
            generalist_gguf_file: the same for `generalist`.
            specialist_runtime: "llama.cpp" runs the specialist's GGUF file quantised with
                llama.cpp (`LlamaCppSpecialist`, `llamacpp` extra; `device` and `torch_dtype`
                are then the generalist's only); "transformers" (default) dequantises it.
            **fields: any other field (`gamma=`, `retriever=`, ...).
        """
        options = {"device": device, "torch_dtype": torch_dtype}
        return cls(
            specialist=load_specialist(
                specialist, runtime=specialist_runtime, gguf_file=specialist_gguf_file, **options
            ),
            generalist=LocalGeneralist.from_pretrained(
                generalist, gguf_file=generalist_gguf_file, **options
            ),
            **fields,
        )

    def model_info(self) -> dict[str, Any]:
        """The models and decoding fields (LangChain's identifying params)."""
        return {
            "specialist": self.specialist.name,
            "generalist": self.generalist.name,
            **self.decoding_params().model_dump(),
        }

    def decoding_params(self, **overrides: Any) -> DecodingParams:
        """This LLM's decoding fields, with per-call overrides validated."""
        values = {name: getattr(self, name) for name in DecodingParams.model_fields}
        return DecodingParams.model_validate({**values, **overrides})

    def private_context_for(
        self, prompt: str, private_context: PrivateContext = None
    ) -> tuple[str, int]:
        """The rendered private context of a request, and how many documents were retrieved.

        An explicit `private_context` wins; without one, the `retriever` (if any) is asked.
        """
        if private_context is None and self.retriever is not None:
            return self._retrieved(retrieve_privately(self.retriever, prompt))
        return self._given(private_context)

    async def aprivate_context_for(
        self, prompt: str, private_context: PrivateContext = None
    ) -> tuple[str, int]:
        """`private_context_for` from a coroutine (the retriever's async hook)."""
        if private_context is None and self.retriever is not None:
            return self._retrieved(await aretrieve_privately(self.retriever, prompt))
        return self._given(private_context)

    def _for_call(self, kwargs: dict[str, Any]) -> Self:
        """The model that runs a call under LangChain's LLM cache: itself when no cache
        applies; a copy without the cache when a retriever would fetch the call's context
        (its documents are unknown until it runs); else a copy whose cache keys entries by
        the call too (`CallCache`: its settings, and its context as `context_digest`)."""
        cache = self.cache if isinstance(self.cache, BaseCache) else None
        if cache is None and self.cache is not False:
            cache = get_llm_cache()
        if cache is None:
            return self
        context = unredact(kwargs.get("private_context"))
        if context is None and self.retriever is not None:
            return self.model_copy(update={"cache": False})
        fields = {name: v for name, v in kwargs.items() if name != "private_context"}
        fields["private_context"] = (
            None if context is None else context_digest(self._given(context)[0])
        )
        fields["prompt_fields"] = {name: getattr(self, name) for name in self._prompt_fields}
        return self.model_copy(update={"cache": CallCache(cache, fields)})

    def _retrieved(self, documents: list[Document]) -> tuple[str, int]:
        documents = documents[: self.retrieval_k]
        return self._render_context(documents), len(documents)

    def _given(self, private_context: PrivateContext) -> tuple[str, int]:
        return self._render_context(context_pieces(private_context)), 0

    def _render_context(self, pieces: Sequence[str | Document]) -> str:
        return render_context(pieces, self.document_template, self.context_separator)

    @property
    def _chat(self) -> dict[str, Any]:
        return {"chat": self.use_chat_template, "chat_template_kwargs": self.chat_template_kwargs}

    def _turns(
        self, messages: Sequence[Message], context: str
    ) -> tuple[list[Message], list[Message]]:
        """(public, private) turns: the private context goes into the specialist's last user
        turn (`context_template`)."""
        public = [dict(m) for m in messages]
        private = [dict(m) for m in messages]
        last = max((i for i, m in enumerate(private) if m["role"] == "user"), default=None)
        if last is None:
            msg = "the conversation has no user turn to answer"
            raise ValueError(msg)
        private[last]["content"] = private_prompt(
            self.context_template, context, private[last]["content"]
        )
        return public, private

    def _prompts(
        self, messages: Sequence[Message], context: str, params: DecodingParams | None = None
    ) -> Prompts:
        """The three prompts of a conversation ending in a user turn."""
        return self._encode_turns(*self._turns(messages, context), params, self._chat)

    async def _aprompts(
        self, messages: Sequence[Message], context: str, params: DecodingParams | None = None
    ) -> Prompts:
        """`_prompts` from a coroutine."""
        return await self._aencode_turns(*self._turns(messages, context), params, self._chat)

    def _encode_turns(
        self,
        public: list[Message],
        private: list[Message],
        params: DecodingParams | None,
        chat: dict[str, Any],
    ) -> Prompts:
        """The three prompts of (public, private) turns, rendered with the template options
        `chat`. The generalist's prompt is encoded only when `params.method` uses it; for a
        generation (`params` given) a remote generalist may leave the turns for its first
        round to carry (`Generalist.public_prompt`), else they are encoded to ids (a remote
        one may ask its service)."""
        public_generalist, error = [], None
        if _uses_generalist(params):
            encode = self.generalist.encode_messages
            if params is not None:
                encode = self.generalist.public_prompt
            try:
                public_generalist = encode(public, **chat)
            except GeneralistError as err:
                public_generalist, error = _unencoded(err, params)
        return self._specialist_prompts(public, private, public_generalist, error, chat)

    async def _aencode_turns(
        self,
        public: list[Message],
        private: list[Message],
        params: DecodingParams | None,
        chat: dict[str, Any],
    ) -> Prompts:
        """`_encode_turns` from a coroutine: the generalist's encoding awaited (asynchronous
        HTTP for a remote one), the specialist's tokenizing in a worker thread."""
        public_generalist, error = [], None
        if _uses_generalist(params):
            try:
                encode = self.generalist.aencode_messages
                if params is not None:
                    encode = self.generalist.apublic_prompt
                public_generalist = await encode(public, **chat)
            except GeneralistError as err:
                public_generalist, error = _unencoded(err, params)
        return await asyncio.to_thread(
            self._specialist_prompts, public, private, public_generalist, error, chat
        )

    def _specialist_prompts(
        self,
        public: list[Message],
        private: list[Message],
        public_generalist: list[int] | PromptTurns | None,
        error: str | None,
        chat: dict[str, Any],
    ) -> Prompts:
        public_specialist = self.specialist.encode_messages(public, **chat)
        if isinstance(public_generalist, PromptTurns) and self._engine.alignment == "token":
            # One vocabulary: the specialist's rendering is the likely generalist prompt too.
            public_generalist = dataclasses.replace(
                public_generalist, guess=tuple(public_specialist)
            )
        return Prompts(
            private=self.specialist.encode_messages(private, **chat),
            public_specialist=public_specialist,
            public_generalist=public_generalist,
            generalist_error=error,
        )

    def _fit_draft(self, params: DecodingParams, prompts: Prompts) -> tuple[DecodingParams, int]:
        """`params` with `draft_tokens` (under "auto": `max_draft_tokens`) lowered to the
        generalist's longest draft per round (a verifier service's `max_draft_tokens`), and
        the longest draft the run may use."""
        field = "max_draft_tokens" if params.draft_tokens == "auto" else "draft_tokens"
        asked = getattr(params, field)
        limit = None
        if prompts.public_generalist is not None and METHOD_SPECS[params.method].drafts:
            limit = self.generalist.max_draft_tokens  # a remote one read it when encoding
        if limit is None or asked <= limit:
            return params, asked
        return params.model_copy(update={field: limit}), limit

    def _decode(
        self,
        prompts: Prompts,
        params: DecodingParams,
        stop: Sequence[str] | None,
        keep: Sequence[str] = (),
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(text piece, None) as rounds commit tokens, then ("", statistics). Special tokens
        spell nothing, except those in `keep` (a chat's tool-call markers)."""
        fitted, draft_tokens = self._fit_draft(params, prompts)
        run, text = self._engine.run(prompts, fitted), self._text(stop, keep)
        rounds = iter(run)
        try:
            for round_ in rounds:
                if piece := text.push(round_):
                    yield piece, None
                if text.stopped:
                    break
        finally:
            rounds.close()  # stops the clock; frees the KV caches
        if piece := text.flush():
            yield piece, None
        yield "", text.info(run, prompts, params, draft_tokens)

    async def _adecode(
        self,
        prompts: Prompts,
        params: DecodingParams,
        stop: Sequence[str] | None,
        keep: Sequence[str] = (),
    ) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        """`_decode` without blocking the event loop (`async for` over the run)."""
        fitted, draft_tokens = self._fit_draft(params, prompts)
        run, text = self._engine.run(prompts, fitted), self._text(stop, keep)
        rounds = aiter(run)
        try:
            async for round_ in rounds:
                if piece := text.push(round_):
                    yield piece, None
                if text.stopped:
                    break
        finally:
            await rounds.aclose()
        if piece := text.flush():
            yield piece, None
        yield "", text.info(run, prompts, params, draft_tokens)

    def _text(self, stop: Sequence[str] | None, keep: Sequence[str] = ()) -> RoundText:
        byte_level = self._engine.alignment == "byte"
        return RoundText(
            ByteDetokenizer()
            if byte_level
            else IncrementalDetokenizer(self.specialist.tokenizer, keep),
            StopStringFilter([*stop_strings(self.stop), *stop_strings(stop)]),
            byte_level=byte_level,
        )


class RoundText:
    """A run's rounds as text: detokenised incrementally, cut at the first stop string."""

    def __init__(
        self,
        detokenizer: IncrementalDetokenizer | ByteDetokenizer,
        stops: StopStringFilter,
        *,
        byte_level: bool,
    ):
        self.detokenizer = detokenizer
        self.stops = stops
        self.byte_level = byte_level

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def push(self, round_: Round) -> str:
        """The text this round adds (held back while it may begin a stop string)."""
        return self.stops.push(
            self.detokenizer.push(round_.data if self.byte_level else round_.tokens)
        )

    def flush(self) -> str:
        """What is held back, once the run ends (nothing after a stop string)."""
        if self.stopped:
            return ""
        return self.stops.push(self.detokenizer.flush()) + self.stops.flush()

    def info(
        self, run: Run, prompts: Prompts, params: DecodingParams, draft_tokens: int
    ) -> dict[str, Any]:
        """The run's statistics, as `generation_info` (with `draft_tokens_clamped_to` when the
        generalist's limit shortened the asked `draft_tokens`, or `max_draft_tokens` under
        "auto")."""
        if self.stopped:
            run.stats.finish_reason = "stop"
        info = run.stats.as_dict()
        info["prompt_tokens"] = len(prompts.private)
        auto = params.draft_tokens == "auto"
        if draft_tokens < (params.max_draft_tokens if auto else params.draft_tokens):
            info["draft_tokens_clamped_to"] = draft_tokens
        return info


def _plain(value: Any) -> Any:
    """A cache-key field as JSON: a set in order, anything else as its repr."""
    return sorted(value) if isinstance(value, set | frozenset) else repr(value)


def stop_strings(stop: str | Sequence[str] | None) -> list[str]:
    """Stop strings as a list: a single string is one stop string (as LangChain's models
    treat it), never its characters."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _uses_generalist(params: DecodingParams | None) -> bool:
    return params is None or METHOD_SPECS[params.method].uses_generalist


def _unencoded(err: GeneralistError, params: DecodingParams | None) -> tuple[None, str]:
    """No generalist prompt: raise, or carry the reason to the run (which falls back)."""
    if params is None or params.on_generalist_error == "raise":
        raise err
    return None, str(err)
