"""`SpecSteerLLM`: SpecSteer as a drop-in LangChain `LLM`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_specsteer.context import private_prompt, render_context, retrieve_privately
from langchain_specsteer.engine import METHOD_SPECS, Prompts, SpecSteerEngine
from langchain_specsteer.models import LocalGeneralist, LocalSpecialist
from langchain_specsteer.params import (
    DEFAULT_CONTEXT_TEMPLATE,
    DecodingParams,
    check_context_template,
    template_fields,
)
from langchain_specsteer.text import ByteDetokenizer, IncrementalDetokenizer, StopStringFilter
from langchain_specsteer.verification import Generalist, GeneralistError

__all__ = ["SpecSteerLLM"]

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


class SpecSteerLLM(LLM, DecodingParams):
    """A small private specialist and a large public generalist writing one text (SpecSteer).

    The specialist reads `private_context` (per call) and drafts; the generalist, which only
    ever receives the public prompt and drafted token ids, verifies and helps recover.

    Example:
        .. code-block:: python

            from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM

            llm = SpecSteerLLM(
                specialist=LocalSpecialist.from_pretrained("Qwen/Qwen3-0.6B"),
                generalist=LocalGeneralist.from_pretrained("Qwen/Qwen3-8B"),
            )
            llm.invoke("Write a review of this blender.", private_context="<past reviews>")

    Every decoding field (`method`, `gamma`, `alpha`, `draft_tokens`, `max_new_tokens`,
    `temperature`, `top_p`, `seed`, `costeer_*`) can also be overridden per call:
    `llm.invoke(prompt, method="generalist")`.
    """

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
    def _build_engine(self) -> SpecSteerLLM:
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
    ) -> SpecSteerLLM:
        """Load both models (hub ids or folders) with `transformers` and build the LLM.

        Args:
            specialist: the on-device model, e.g. "Qwen/Qwen3-0.6B".
            generalist: the large model, e.g. "Qwen/Qwen3-8B".
            device: for both models (default: CUDA when available).
            torch_dtype: for both models (default: float32 on CPU, "auto" on CUDA).
            **fields: any other `SpecSteerLLM` field (`gamma=`, `retriever=`, ...).
        """
        options = {"device": device, "torch_dtype": torch_dtype}
        return cls(
            specialist=LocalSpecialist.from_pretrained(specialist, **options),
            generalist=LocalGeneralist.from_pretrained(generalist, **options),
            **fields,
        )

    @property
    def _llm_type(self) -> str:
        return "specsteer"

    @property
    def _identifying_params(self) -> dict[str, Any]:
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

    def render_prompts(self, prompt: str, private_context: PrivateContext = None) -> Prompts:
        """Token ids of the private (specialist + context) and public prompts of a request."""
        return self._encode(prompt, self.private_context_for(prompt, private_context)[0])

    def _encode(self, prompt: str, context: str, params: DecodingParams | None = None) -> Prompts:
        """The three prompts; the generalist's only when `params.method` uses it."""
        private = private_prompt(self.context_template, context, prompt)
        chat = {"chat": self.use_chat_template, "chat_template_kwargs": self.chat_template_kwargs}
        public_generalist, error = [], None
        if params is None or METHOD_SPECS[params.method].uses_generalist:
            try:  # a remote generalist may encode with the service's tokenizer: a request
                public_generalist = self.generalist.encode(prompt, **chat)
            except GeneralistError as err:
                if params is None or params.on_generalist_error == "raise":
                    raise
                public_generalist, error = None, str(err)
        return Prompts(
            private=self.specialist.encode(private, **chat),
            public_specialist=self.specialist.encode(prompt, **chat),
            public_generalist=public_generalist,
            generalist_error=error,
        )

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **_redact(kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **_redact(kwargs))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for chunk in self._chunks(prompt, stop, **kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop, run_manager, **kwargs))

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                final = chunk if final is None else final + chunk
            generations.append([Generation(text=final.text, generation_info=final.generation_info)])
        return LLMResult(generations=generations)

    def _chunks(
        self,
        prompt: str,
        stop: list[str] | None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """Text pieces as rounds commit tokens, then one empty chunk carrying the statistics."""
        if isinstance(private_context, RedactedContext):
            private_context = private_context.reveal()
        params = self.decoding_params(**kwargs)
        context, retrieved = self.private_context_for(prompt, private_context)
        prompts = self._encode(prompt, context, params)
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
                    yield GenerationChunk(text=piece)
                if stops.stopped:
                    break
            if not stops.stopped:
                piece = stops.push(detokenizer.flush()) + stops.flush()
                if piece:
                    yield GenerationChunk(text=piece)
        finally:
            rounds.close()  # stops the clock; frees the KV caches
        if stops.stopped:
            run.stats.finish_reason = "stop"
        info = run.stats.as_dict()
        info["private_context"] = bool(context)
        info["retrieved"] = retrieved
        yield GenerationChunk(text="", generation_info=info)


def _redact(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("private_context") is not None:
        kwargs = {**kwargs, "private_context": RedactedContext(kwargs["private_context"])}
    return kwargs
