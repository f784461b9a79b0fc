"""`SpecSteerLLM`: SpecSteer as a drop-in LangChain `LLM`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig

from langchain_specsteer.base import (
    PrivateContext,
    SpecSteerBase,
    redact,
    unredact,
)
from langchain_specsteer.engine import Prompts
from langchain_specsteer.params import DecodingParams
from langchain_specsteer.run import Run

__all__ = ["SpecSteerLLM"]


class SpecSteerLLM(LLM, SpecSteerBase):
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

    Every decoding field (`method`, `gamma`, `alpha`, `draft_tokens` (or "auto", with
    `max_draft_tokens` and `draft_stop`), `gate`, `max_new_tokens`, `temperature`, `top_p`,
    `seed`, `costeer_*`) can also be overridden per call:
    `llm.invoke(prompt, method="generalist")`.
    """

    @property
    def _llm_type(self) -> str:
        return "specsteer"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.model_info()

    def render_prompts(self, prompt: str, private_context: PrivateContext = None) -> Prompts:
        """Token ids of the private (specialist + context) and public prompts of a request."""
        return self._encode(prompt, self.private_context_for(prompt, private_context)[0])

    def rounds(self, prompt: str, private_context: PrivateContext = None, **params: Any) -> Run:
        """One generation as the engine's rounds, for tools, demos and tests.

        `for round_ in llm.rounds(prompt, private_context=...)` (or `async for`) gives each
        `Round` as it is committed (its token ids, how many were accepted drafts), and the
        run's `stats` fill in as it goes. `params` override decoding fields for this call, as
        in `invoke`; stop strings and LangChain callbacks do not apply.
        """
        decoding = self.decoding_params(**params)
        context = self.private_context_for(prompt, private_context)[0]
        prompts = self._encode(prompt, context, decoding)
        return self._engine.run(prompts, self._fit_draft(decoding, prompts)[0])

    def _encode(self, prompt: str, context: str, params: DecodingParams | None = None) -> Prompts:
        """The three prompts of one user turn (`SpecSteerBase._prompts`)."""
        return self._prompts([{"role": "user", "content": prompt}], context, params)

    def generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # LangChain's cache key is the prompt and the model alone: `_for_call` adds the call.
        return LLM.generate(
            self._for_call(kwargs),
            prompts,
            stop,
            callbacks,
            tags=tags,
            metadata=metadata,
            run_name=run_name,
            run_id=run_id,
            **kwargs,
        )

    async def agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return await LLM.agenerate(
            self._for_call(kwargs),
            prompts,
            stop,
            callbacks,
            tags=tags,
            metadata=metadata,
            run_name=run_name,
            run_id=run_id,
            **kwargs,
        )

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **redact(kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **redact(kwargs))

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

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._achunks(prompt, stop, **kwargs):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
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

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            final: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
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
        params = self.decoding_params(**kwargs)
        context, retrieved = self.private_context_for(prompt, unredact(private_context))
        prompts = self._encode(prompt, context, params)
        for piece, info in self._decode(prompts, params, stop):
            yield _chunk(piece, info, context, retrieved)

    async def _achunks(
        self,
        prompt: str,
        stop: list[str] | None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """`_chunks` without blocking the event loop."""
        params = self.decoding_params(**kwargs)
        context, retrieved = await self.aprivate_context_for(prompt, unredact(private_context))
        prompts = await self._aprompts([{"role": "user", "content": prompt}], context, params)
        async for piece, info in self._adecode(prompts, params, stop):
            yield _chunk(piece, info, context, retrieved)


def _chunk(
    piece: str, info: dict[str, Any] | None, context: str, retrieved: int
) -> GenerationChunk:
    """A text piece, or the last (empty) chunk with the statistics."""
    if info is None:
        return GenerationChunk(text=piece)
    info.update(private_context=bool(context), retrieved=retrieved)
    return GenerationChunk(text="", generation_info=info)
