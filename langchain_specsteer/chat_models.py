"""`ChatSpecSteer`: SpecSteer as a LangChain chat model (for chains, agents and chat UIs)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import model_validator

from langchain_specsteer.base import (
    PrivateContext,
    RedactedContext,
    SpecSteerBase,
    redact,
    stop_strings,
    unredact,
)
from langchain_specsteer.models import Message
from langchain_specsteer.params import DecodingParams

__all__ = ["ChatSpecSteer"]

ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class ChatSpecSteer(BaseChatModel, SpecSteerBase):
    """A small private specialist and a large public generalist answering a conversation.

    The same engine and fields as `SpecSteerLLM`. Messages are rendered with each model's
    chat template: the specialist's with the private context in the last user turn, the
    generalist's without it. `max_tokens` is accepted for `max_new_tokens`.

    Example:
        .. code-block:: python

            from langchain_specsteer import ChatSpecSteer, LocalGeneralist, LocalSpecialist

            chat = ChatSpecSteer(
                specialist=LocalSpecialist.from_pretrained("Qwen/Qwen3-0.6B"),
                generalist=LocalGeneralist.from_pretrained("Qwen/Qwen3-8B"),
                max_tokens=200,
            )
            chat.invoke(
                [("system", "Be brief."), ("human", "Suggest a gift for my sister.")],
                private_context="She climbs and hates clutter.",
            )

    Tool calling and structured output are not supported (`bind_tools` raises
    `NotImplementedError`): the generalist verifies free text drafted by the specialist.
    `response_metadata` carries the decoding statistics (acceptance rate, rounds, ...);
    `usage_metadata` counts the specialist's prompt tokens in and the generated tokens out.
    """

    streaming: bool = False
    """Stream by default inside `invoke` (LangChain's convention): tokens reach callbacks as
    rounds commit them. Decoding is incremental either way."""

    @model_validator(mode="before")
    @classmethod
    def _standard_names(cls, values: Any) -> Any:
        return _max_tokens_alias(values)

    @property
    def _llm_type(self) -> str:
        return "specsteer-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.model_info()

    @property
    def max_tokens(self) -> int:
        """LangChain's standard name for `max_new_tokens`."""
        return self.max_new_tokens

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = self.decoding_params(**_call_options(kwargs))
        ls_params = {
            "ls_provider": "specsteer",
            "ls_model_name": kwargs.get("model", self.generalist.name),
            "ls_model_type": "chat",
            "ls_temperature": params.temperature,
            "ls_max_tokens": params.max_new_tokens,
        }
        if stop or self.stop:
            ls_params["ls_stop"] = [*stop_strings(self.stop), *stop_strings(stop)]
        return ls_params

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict:
        # Callbacks and tracers receive these: never the private context itself.
        return super()._get_invocation_params(stop=stop, **redact(kwargs))

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        # LangChain's cache key: a digest of the private context, so different contexts
        # never share an entry and the key carries no text.
        return super()._get_llm_string(stop=stop, **_digest(kwargs))

    def decoding_params(self, **overrides: Any) -> DecodingParams:
        """Decoding fields with per-call overrides (`max_tokens` too)."""
        return super().decoding_params(**_max_tokens_alias(overrides))

    def render_messages(self, messages: Sequence[BaseMessage]) -> list[Message]:
        """LangChain messages as chat-template turns ({"role", "content"})."""
        turns = []
        for message in messages:
            role = ROLES.get(message.type)
            if role is None:
                msg = (
                    f"ChatSpecSteer answers system, human and AI messages; got a {message.type!r}"
                    " message (tool calling is not supported)"
                )
                raise ValueError(msg)
            turns.append({"role": role, "content": _text(message)})
        return turns

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        params = self.decoding_params(**kwargs)
        turns = self.render_messages(messages)
        context, retrieved = self.private_context_for(_query(turns), unredact(private_context))
        prompts = self._prompts(turns, context, params)
        for piece, info in self._decode(prompts, params, stop):
            chunk = self._chunk(piece, info, context, retrieved)
            if run_manager and info is None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        params = self.decoding_params(**kwargs)
        turns = self.render_messages(messages)
        context, retrieved = await self.aprivate_context_for(
            _query(turns), unredact(private_context)
        )
        prompts = await self._aprompts(turns, context, params)
        async for piece, info in self._adecode(prompts, params, stop):
            chunk = self._chunk(piece, info, context, retrieved)
            if run_manager and info is None:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def _chunk(
        self, piece: str, info: dict[str, Any] | None, context: str, retrieved: int
    ) -> ChatGenerationChunk:
        """A text piece, or the last (empty) chunk with usage and statistics."""
        if info is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=piece))
        info.update(private_context=bool(context), retrieved=retrieved)
        info["model_name"] = self.generalist.name
        usage = UsageMetadata(
            input_tokens=info["prompt_tokens"],
            output_tokens=info["new_tokens"],
            total_tokens=info["prompt_tokens"] + info["new_tokens"],
        )
        last = AIMessageChunk(
            content="", usage_metadata=usage, response_metadata=info, chunk_position="last"
        )
        return ChatGenerationChunk(message=last, generation_info=info)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _result(list(self._stream(messages, stop, run_manager, **kwargs)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [c async for c in self._astream(messages, stop, run_manager, **kwargs)]
        return _result(chunks)


def _query(turns: list[Message]) -> str:
    """What a retriever is asked: the last user turn."""
    return next((t["content"] for t in reversed(turns) if t["role"] == "user"), "")


def _result(chunks: list[ChatGenerationChunk]) -> ChatResult:
    """One message from the streamed chunks."""
    final = chunks[0]
    for chunk in chunks[1:]:
        final += chunk
    message = AIMessage(
        content=final.message.content,
        usage_metadata=final.message.usage_metadata,
        response_metadata=final.message.response_metadata,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=final.generation_info)]
    )


def _text(message: BaseMessage) -> str:
    """A message's text; non-text content blocks are refused."""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            msg = f"ChatSpecSteer reads text only; got a {kind!r} content block"
            raise ValueError(msg)
    return "".join(parts)


def _max_tokens_alias(values: Any) -> Any:
    """Map LangChain's `max_tokens` onto `max_new_tokens` (both given must agree)."""
    if not isinstance(values, dict) or "max_tokens" not in values:
        return values
    values = dict(values)
    max_tokens = values.pop("max_tokens")
    if max_tokens is None:
        return values
    if values.get("max_new_tokens", max_tokens) != max_tokens:
        msg = "max_tokens and max_new_tokens name the same limit; give one of them"
        raise ValueError(msg)
    values["max_new_tokens"] = max_tokens
    return values


def _call_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The decoding fields among a call's keyword arguments."""
    names = {*DecodingParams.model_fields, "max_tokens"}
    return {k: v for k, v in kwargs.items() if k in names}


def _digest(kwargs: dict[str, Any]) -> dict[str, Any]:
    context = kwargs.get("private_context")
    if context is None:
        return kwargs
    if isinstance(context, RedactedContext):
        context = context.reveal()
    digest = hashlib.sha256(repr(context).encode()).hexdigest()
    return {**kwargs, "private_context": f"sha256:{digest}"}
