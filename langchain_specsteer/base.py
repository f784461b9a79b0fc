"""What `SpecSteerLLM` and `ChatSpecSteer` share: fields, private context, prompts, decoding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_specsteer.context import private_prompt, render_context, retrieve_privately
from langchain_specsteer.engine import METHOD_SPECS, Prompts, SpecSteerEngine
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist, Message
from langchain_specsteer.params import (
    DEFAULT_CONTEXT_TEMPLATE,
    DecodingParams,
    check_context_template,
    template_fields,
)
from langchain_specsteer.text import ByteDetokenizer, IncrementalDetokenizer, StopStringFilter
from langchain_specsteer.verification import Generalist, GeneralistError

__all__ = ["PrivateContext", "RedactedContext", "SpecSteerBase"]

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


class SpecSteerBase(DecodingParams):
    """The fields and the decoding shared by the LangChain surfaces (not used alone)."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=True
    )

    specialist: LocalSpecialist
    """The on-device model; the only one that sees private context."""
    generalist: Generalist
    """The large model: `LocalGeneralist` in this process, `RemoteGeneralist` (our verifier
    service) or `OpenAICompatibleGeneralist` (e.g. vLLM). It receives public token ids only."""
    stop: list[str] | None = None
    """Stop strings: output ends just before the first one (added to per-call `stop`)."""
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

    _engine: SpecSteerEngine = PrivateAttr()

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
    def _build_engine(self) -> SpecSteerBase:
        self._engine = SpecSteerEngine(
            self.specialist,
            self.generalist,
            batch_specialist=self.batch_specialist,
            alignment=self.alignment,
        )
        return self

    @classmethod
    def from_pretrained(
        cls,
        specialist: str,
        generalist: str,
        *,
        device: str | None = None,
        torch_dtype: Any = None,
        **fields: Any,
    ) -> Self:
        """Load both models (hub ids or folders) with `transformers` and build the LLM.

        Args:
            specialist: the on-device model, e.g. "Qwen/Qwen3-0.6B".
            generalist: the large model, e.g. "Qwen/Qwen3-8B".
            device: for both models (default: CUDA when available).
            torch_dtype: for both models (default: float32 on CPU, "auto" on CUDA).
            **fields: any other field (`gamma=`, `retriever=`, ...).
        """
        options = {"device": device, "torch_dtype": torch_dtype}
        return cls(
            specialist=LocalSpecialist.from_pretrained(specialist, **options),
            generalist=LocalGeneralist.from_pretrained(generalist, **options),
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
            documents = retrieve_privately(self.retriever, prompt)[: self.retrieval_k]
            return self._render_context(documents), len(documents)
        if isinstance(private_context, str | Document):
            private_context = [private_context]
        return self._render_context(private_context or []), 0

    def _render_context(self, pieces: Sequence[str | Document]) -> str:
        return render_context(pieces, self.document_template, self.context_separator)

    def _prompts(
        self, messages: Sequence[Message], context: str, params: DecodingParams | None = None
    ) -> Prompts:
        """The three prompts of a conversation ending in a user turn; the private context goes
        into the specialist's last user turn (`context_template`). The generalist's prompt is
        encoded only when `params.method` uses it."""
        public = [dict(m) for m in messages]
        private = [dict(m) for m in messages]
        last = max((i for i, m in enumerate(private) if m["role"] == "user"), default=None)
        if last is None:
            msg = "the conversation has no user turn to answer"
            raise ValueError(msg)
        private[last]["content"] = private_prompt(
            self.context_template, context, private[last]["content"]
        )
        chat = {"chat": self.use_chat_template, "chat_template_kwargs": self.chat_template_kwargs}
        public_generalist, error = [], None
        if params is None or METHOD_SPECS[params.method].uses_generalist:
            try:  # a remote generalist may encode with the service's tokenizer: a request
                public_generalist = self.generalist.encode_messages(public, **chat)
            except GeneralistError as err:
                if params is None or params.on_generalist_error == "raise":
                    raise
                public_generalist, error = None, str(err)
        return Prompts(
            private=self.specialist.encode_messages(private, **chat),
            public_specialist=self.specialist.encode_messages(public, **chat),
            public_generalist=public_generalist,
            generalist_error=error,
        )

    def _decode(
        self, prompts: Prompts, params: DecodingParams, stop: Sequence[str] | None
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(text piece, None) as rounds commit tokens, then ("", statistics)."""
        run = self._engine.run(prompts, params)
        byte_level = self._engine.alignment == "byte"
        detokenizer = (
            ByteDetokenizer() if byte_level else IncrementalDetokenizer(self.specialist.tokenizer)
        )
        stops = StopStringFilter([*(self.stop or []), *(stop or [])])
        rounds = iter(run)
        try:
            for round_ in rounds:
                piece = stops.push(detokenizer.push(round_.data if byte_level else round_.tokens))
                if piece:
                    yield piece, None
                if stops.stopped:
                    break
            if not stops.stopped:
                piece = stops.push(detokenizer.flush()) + stops.flush()
                if piece:
                    yield piece, None
        finally:
            rounds.close()  # stops the clock; frees the KV caches
        if stops.stopped:
            run.stats.finish_reason = "stop"
        info = run.stats.as_dict()
        info["prompt_tokens"] = len(prompts.private)
        yield "", info
