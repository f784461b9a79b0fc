"""`ChatSpecSteer`: SpecSteer as a LangChain chat model (for chains, agents and chat UIs)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import Field, field_validator, model_validator

from langchain_specsteer.base import (
    PrivateContext,
    SpecSteerBase,
    redact,
    stop_strings,
    unredact,
)
from langchain_specsteer.models import Message
from langchain_specsteer.params import DecodingParams
from langchain_specsteer.run import Prompts
from langchain_specsteer.tools import (
    CALL_FORMATS,
    PRIVATE_RESULT,
    ParsedCall,
    ToolCallParser,
    ToolFormat,
    check_call,
    detect_family,
    forced_prefix,
    plain_turns,
)
from langchain_specsteer.verification import PromptTurns

__all__ = ["DEFAULT_PRIVATE_TOOLS", "ChatSpecSteer"]

ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
DEFAULT_PRIVATE_TOOLS = frozenset({"recall_memory"})
"""Tools whose results only the specialist reads, unless `private_tools` says otherwise
(`retrievers.memory_tools`' `recall_memory`)."""
_PRIVATE = "_specsteer_private"  # marks a rendered tool turn whose result is private


@dataclass(frozen=True)
class ToolPlan:
    """How one call renders and reads tools.

    Attributes:
        family: the tool-call format (`langchain_specsteer.tools`).
        tools: the bound tools as OpenAI-style schemas.
        forced: text the reply is made to start with (`tool_choice` forcing a call).
        parse: read tool calls out of the reply (False without tools bound, or with
            `tool_choice="none"`: the reply is text).
        parallel: keep every call of the reply (`parallel_tool_calls=False`: the first only).
    """

    family: str
    tools: tuple[dict, ...] = ()
    forced: str = ""
    parse: bool = True
    parallel: bool = True

    @property
    def markers(self) -> tuple[str, ...]:
        """The call markers the reply's text keeps (special tokens or not) to be parsed."""
        return CALL_FORMATS[self.family].markers if self.parse else ()

    @property
    def chat_template_tools(self) -> list[dict] | None:
        """The tools a chat template renders (None: none, or listed in a `plain` turn)."""
        return list(self.tools) if self.tools and self.family != "plain" else None


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

    Tools: `bind_tools(tools, tool_choice=...)` renders them with each model's chat template
    (`apply_chat_template(..., tools=...)`; the `plain` format for a template without tools),
    and tool calls in the reply become `AIMessage.tool_calls` (`invalid_tool_calls` when
    malformed, naming a tool not bound, or with arguments its schema refuses;
    `tool_call_chunks` when streaming); without tools bound the reply is text. A
    `ToolMessage` from one of `private_tools` is read by the specialist only: the generalist
    reads `PRIVATE_RESULT` in its place. `with_structured_output` is built on tool calling.
    `response_metadata` carries the decoding statistics (acceptance rate, rounds, ...);
    `usage_metadata` counts the specialist's prompt tokens in and the generated tokens out.
    """

    _prompt_fields: ClassVar[tuple[str, ...]] = (
        *SpecSteerBase._prompt_fields,
        "private_tools",
        "tool_format",
    )

    streaming: bool = False
    """LangChain's switch to stream inside `invoke`; here tokens reach callbacks as rounds
    commit them either way, and `invoke` answers with the checked tool calls."""

    private_tools: frozenset[str] = Field(default=DEFAULT_PRIVATE_TOOLS)
    """Names of tools whose results are private: their `ToolMessage` goes into the
    specialist's conversation only, and the generalist's holds `PRIVATE_RESULT` in its place.
    A tool *call* is generated output, which the generalist verifies like any output."""
    tool_format: ToolFormat = "auto"
    """How tools and tool calls are written: "auto" (from the specialist's chat template:
    "specsteer", "hermes", "llama3", else "plain"), or one of those."""

    @model_validator(mode="before")
    @classmethod
    def _standard_names(cls, values: Any) -> Any:
        return _max_tokens_alias(values)

    @field_validator("private_tools", mode="before")
    @classmethod
    def _tool_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            msg = (
                f"private_tools is a set of tool names; got the string {value!r}"
                f" (write {{{value!r}}})"
            )
            raise ValueError(msg)
        return value

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

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        # Only `stream`/`astream` (which ask with stream=True) hand chunks out. `invoke` always
        # answers from `_generate`, whose message holds the checked calls (LangChain's own
        # assembly re-reads calls from the chunks' text) and whose chunks reach the callbacks
        # as rounds commit them, `streaming` or not.
        return bool(kwargs.get("stream")) and super()._should_stream(
            async_api=async_api, run_manager=run_manager, **kwargs
        )

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
        # LangChain's cache key: never the private context; `_for_call`'s `CallCache` adds
        # its keyed digest.
        kwargs.pop("private_context", None)
        return super()._get_llm_string(stop=stop, **kwargs)

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return BaseChatModel.generate(
            self._for_call(kwargs),
            messages,
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
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: uuid.UUID | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return await BaseChatModel.agenerate(
            self._for_call(kwargs),
            messages,
            stop,
            callbacks,
            tags=tags,
            metadata=metadata,
            run_name=run_name,
            run_id=run_id,
            **kwargs,
        )

    def decoding_params(self, **overrides: Any) -> DecodingParams:
        """Decoding fields with per-call overrides (`max_tokens` too)."""
        return super().decoding_params(**_max_tokens_alias(overrides))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: rendered with the chat templates, their calls parsed from the reply.

        Args:
            tools: LangChain tools, functions, pydantic models or OpenAI-style schemas.
            tool_choice: None or "auto" (the model decides), "none" (tools are not offered),
                "any"/"required"/True (a call is forced: the reply starts with the format's
                call marker, and the tool's name when only one is bound), or a tool's name
                (or {"function": {"name": ...}}) to force it.
            **kwargs: bound too; `parallel_tool_calls=False` keeps the first call of a reply.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        _check_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def tool_family(self) -> str:
        """The tool-call format in use (`tool_format`, or detected from the specialist)."""
        if self.tool_format != "auto":
            return self.tool_format
        if not self.use_chat_template:
            return "plain"
        return detect_family(getattr(self.specialist.tokenizer, "chat_template", None))

    def tool_plan(
        self,
        tools: Sequence[dict] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
    ) -> ToolPlan:
        """How a call with these bound tools renders and reads them."""
        family = self.tool_family()
        tools = tuple(tools or ())
        parallel = parallel_tool_calls is not False
        if not tools:
            return ToolPlan(family, parse=False, parallel=parallel)
        _check_tool_choice(tool_choice, [t["function"]["name"] for t in tools])
        if tool_choice == "none":
            return ToolPlan(family, parse=False)
        forced = ""
        if tool_choice in ("any", "required", True):
            # A call is required: with one tool bound, which one is decided too.
            forced = forced_prefix(
                family, tools[0]["function"]["name"] if len(tools) == 1 else None
            )
        elif isinstance(tool_choice, dict | str) and tool_choice != "auto":
            name = tool_choice
            if isinstance(tool_choice, dict):
                name = tool_choice.get("function", tool_choice).get("name")
            forced = forced_prefix(family, name)
        return ToolPlan(family, tools, forced, parallel=parallel)

    def _plan(self, kwargs: dict[str, Any]) -> ToolPlan:
        """The call's tool plan, its tool keywords taken out of `kwargs`."""
        kwargs.pop("ls_structured_output_format", None)
        return self.tool_plan(
            kwargs.pop("tools", None),
            kwargs.pop("tool_choice", None),
            kwargs.pop("parallel_tool_calls", None),
        )

    def render_messages(self, messages: Sequence[BaseMessage]) -> list[Message]:
        """LangChain messages as chat-template turns: {"role", "content"}, an AI message's
        `tool_calls` (OpenAI-style, arguments as objects), a tool message's `name` and
        `tool_call_id` (the name looked up from the call when the message has none)."""
        turns: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for message in messages:
            role = ROLES.get(message.type)
            if role is None:
                msg = (
                    "ChatSpecSteer answers system, human, AI and tool messages; got a"
                    f" {message.type!r} message"
                )
                raise ValueError(msg)
            turn: dict[str, Any] = {"role": role, "content": _text(message)}
            if isinstance(message, AIMessage) and message.tool_calls:
                turn["tool_calls"] = [_openai_call(call) for call in message.tool_calls]
                names.update({c["id"]: c["name"] for c in message.tool_calls if c.get("id")})
            if isinstance(message, ToolMessage):
                name = message.name or names.get(message.tool_call_id, "")
                turn.update(name=name, tool_call_id=message.tool_call_id)
                if name in self.private_tools:
                    turn[_PRIVATE] = True
            turns.append(turn)
        return turns

    def _chat_for(self, plan: ToolPlan) -> dict[str, Any]:
        """The chat-template options of a call under `plan` (its tools, for a template that
        renders them)."""
        chat = self._chat
        if (tools := plan.chat_template_tools) is None:
            return chat
        return {**chat, "chat_template_kwargs": {**chat["chat_template_kwargs"], "tools": tools}}

    def _turns(
        self, messages: Sequence[Message], context: str, plan: ToolPlan | None = None
    ) -> tuple[list[Message], list[Message]]:
        """(public, private) turns: a private tool's result only in the private ones (the
        placeholder in the public ones), then the private context as `SpecSteerLLM` adds it;
        under a `plain` plan, tools and calls as text."""
        plan = plan or self.tool_plan()
        public = [_public_turn(turn) for turn in messages]
        private = [{k: v for k, v in turn.items() if k != _PRIVATE} for turn in messages]
        _, private = super()._turns(private, context)  # into the request, not a tool result
        if plan.family == "plain":
            public, private = plain_turns(public, plan.tools), plain_turns(private, plan.tools)
        return public, private

    def _prompts(
        self,
        messages: Sequence[Message],
        context: str,
        params: DecodingParams | None = None,
        plan: ToolPlan | None = None,
    ) -> Prompts:
        """The three prompts of a conversation under `plan` (default: no tools), ending in
        the reply's forced start when the plan forces a call."""
        plan = plan or self.tool_plan()
        public, private = self._turns(messages, context, plan)
        prompts = self._encode_turns(public, private, params, self._chat_for(plan))
        return self._force(prompts, plan.forced)

    async def _aprompts(
        self,
        messages: Sequence[Message],
        context: str,
        params: DecodingParams | None = None,
        plan: ToolPlan | None = None,
    ) -> Prompts:
        """`_prompts` from a coroutine."""
        plan = plan or self.tool_plan()
        public, private = self._turns(messages, context, plan)
        prompts = await self._aencode_turns(public, private, params, self._chat_for(plan))
        return self._force(prompts, plan.forced)

    def _force(self, prompts: Prompts, forced: str) -> Prompts:
        """The prompts with the reply's forced start appended (a forced tool call)."""
        if not forced:
            return prompts
        ids = self.specialist.tokenizer.encode(forced, add_special_tokens=False)
        generalist_ids = ids
        if self._engine.alignment == "byte":
            tokenizer = getattr(self.generalist, "tokenizer", None)
            if tokenizer is None:
                msg = (
                    "tool_choice forcing a call needs the generalist's tokenizer when the"
                    " vocabularies differ; give the remote generalist its tokenizer, or use"
                    ' tool_choice="auto"'
                )
                raise ValueError(msg)
            generalist_ids = tokenizer.encode(forced, add_special_tokens=False)
        public_generalist = prompts.public_generalist
        if isinstance(public_generalist, PromptTurns):  # rendered by the service, then these
            public_generalist = public_generalist.followed_by(generalist_ids)
        elif public_generalist is not None:
            public_generalist = [*public_generalist, *generalist_ids]
        return dataclasses.replace(
            prompts,
            private=[*prompts.private, *ids],
            public_specialist=[*prompts.public_specialist, *ids],
            public_generalist=public_generalist,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reader = _Reader(self._plan(kwargs))
        yield from self._reply(reader, messages, stop, run_manager, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        reader = _Reader(self._plan(kwargs))
        async for chunk in self._areply(reader, messages, stop, run_manager, **kwargs):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reader = _Reader(self._plan(kwargs))
        chunks = list(self._reply(reader, messages, stop, run_manager, **kwargs))
        return _result(chunks, reader.calls, run_manager)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reader = _Reader(self._plan(kwargs))
        replied = self._areply(reader, messages, stop, run_manager, **kwargs)
        return _result([chunk async for chunk in replied], reader.calls, run_manager)

    def _reply(
        self,
        reader: _Reader,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The reply's chunks, read by `reader` (which holds the call's tool plan)."""
        params = self.decoding_params(**kwargs)
        turns = self.render_messages(messages)
        context, retrieved = self.private_context_for(_query(turns), unredact(private_context))
        prompts = self._prompts(turns, context, params, reader.plan)
        for piece, info in self._decode(prompts, params, stop, reader.plan.markers):
            for chunk in self._chunks(reader, piece, info, context, retrieved):
                if run_manager:
                    chunk.message.id = f"{LC_ID_PREFIX}-{run_manager.run_id}"
                    if info is None:
                        run_manager.on_llm_new_token(_piece_text(chunk), chunk=chunk)
                yield chunk

    async def _areply(
        self,
        reader: _Reader,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        private_context: PrivateContext = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """`_reply` without blocking the event loop."""
        params = self.decoding_params(**kwargs)
        turns = self.render_messages(messages)
        context, retrieved = await self.aprivate_context_for(
            _query(turns), unredact(private_context)
        )
        prompts = await self._aprompts(turns, context, params, reader.plan)
        async for piece, info in self._adecode(prompts, params, stop, reader.plan.markers):
            for chunk in self._chunks(reader, piece, info, context, retrieved):
                if run_manager:
                    chunk.message.id = f"{LC_ID_PREFIX}-{run_manager.run_id}"
                    if info is None:
                        await run_manager.on_llm_new_token(_piece_text(chunk), chunk=chunk)
                yield chunk

    def _chunks(
        self,
        reader: _Reader,
        piece: str,
        info: dict[str, Any] | None,
        context: str,
        retrieved: int,
    ) -> Iterator[ChatGenerationChunk]:
        """A piece's text and completed tool calls as chunks; at the end (with `info`), what
        the reader held back, then the last (empty) chunk with usage and statistics."""
        text, calls = reader.push(piece) if info is None else reader.flush()
        if text:
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        for index, call in calls:
            chunk = tool_call_chunk(name=call.name, args=call.args_text, id=call.id, index=index)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        if info is not None:
            yield self._chunk("", info, context, retrieved)

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


class _Reader:
    """A reply's text split into content and tool calls under a tool plan (passed through
    when the plan reads none). The plan's forced start is read first: the reply is made to
    begin with it, for the specialist and the generalist alike (`ChatSpecSteer._force`).
    `calls` holds every call kept, each checked against the bound tools (`check_call`)."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.parser = ToolCallParser(plan.family) if plan.parse else None
        self.calls: list[ParsedCall] = []
        if self.parser is not None and plan.forced:
            self.parser.push(plan.forced)  # a call's start: no text to emit

    def push(self, piece: str) -> tuple[str, list[tuple[int, ParsedCall]]]:
        if self.parser is None:
            return piece, []
        return self.parser.push(piece), self._taken()

    def flush(self) -> tuple[str, list[tuple[int, ParsedCall]]]:
        if self.parser is None:
            return "", []
        return self.parser.flush(), self._taken()

    def _taken(self) -> list[tuple[int, ParsedCall]]:
        calls = [check_call(call, self.plan.tools) for call in self.parser.take()]
        if not self.plan.parallel:  # the first call of the reply only
            calls = calls[: max(0, 1 - len(self.calls))]
        start = len(self.calls)
        self.calls.extend(calls)
        return list(enumerate(calls, start))


def _piece_text(chunk: ChatGenerationChunk) -> str:
    content = chunk.message.content
    return content if isinstance(content, str) else ""


def _public_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as the generalist reads it: a private tool's result replaced by the placeholder."""
    public = {k: v for k, v in turn.items() if k != _PRIVATE}
    if turn.get(_PRIVATE):
        public["content"] = PRIVATE_RESULT
    return public


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    """A LangChain tool call as chat templates take it (arguments as an object)."""
    function = {"name": call["name"], "arguments": call.get("args") or {}}
    return {"id": call.get("id"), "type": "function", "function": function}


def _check_tool_choice(tool_choice: Any, names: Sequence[str]) -> None:
    """A ValueError naming the remedy for a tool_choice that names no bound tool."""
    if tool_choice in (None, "auto", "none", "any", "required", True, False):
        return
    name = tool_choice
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", tool_choice).get("name")
    if not isinstance(name, str) or name not in names:
        msg = (
            f"tool_choice {tool_choice!r} names no bound tool; give one of {sorted(names)},"
            ' or "auto", "any", "required" or "none"'
        )
        raise ValueError(msg)


def _query(turns: list[Message]) -> str:
    """What a retriever is asked: the last user turn."""
    return next((t["content"] for t in reversed(turns) if t["role"] == "user"), "")


def _result(
    chunks: list[ChatGenerationChunk],
    calls: Sequence[ParsedCall],
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
) -> ChatResult:
    """One message from the streamed chunks and the reply's checked calls: the valid ones
    its `tool_calls`, the others its `invalid_tool_calls` with their errors. Its id is the
    run's, as LangChain names streamed messages (the chunks the callbacks saw carry it)."""
    final = chunks[0]
    for chunk in chunks[1:]:
        final += chunk
    message = AIMessage(
        id=final.message.id or (f"{LC_ID_PREFIX}-{run_manager.run_id}" if run_manager else None),
        content=final.message.content,
        tool_calls=[
            tool_call(name=call.name, args=call.args, id=call.id) for call in calls if call.valid
        ],
        invalid_tool_calls=[
            invalid_tool_call(name=call.name, args=call.args_text, id=call.id, error=call.error)
            for call in calls
            if not call.valid
        ],
        usage_metadata=final.message.usage_metadata,
        response_metadata=final.message.response_metadata,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=final.generation_info)]
    )


_CALL_BLOCKS = frozenset({"tool_use", "tool_call", "function_call"})


def _text(message: BaseMessage) -> str:
    """A message's text; an AI message's call blocks (Anthropic's `tool_use`, LangChain's
    `tool_call`) are read from its `tool_calls` instead; other non-text blocks are refused."""
    if isinstance(message.content, str):
        return message.content
    calls = isinstance(message, AIMessage) and bool(message.tool_calls)
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif calls and isinstance(block, dict) and block.get("type") in _CALL_BLOCKS:
            continue
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
