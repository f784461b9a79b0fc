"""`ChatSpecSteer`: the engine behind LangChain's chat-model interface."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_specsteer import ChatSpecSteer
from tests.conftest import CONTEXT, PROMPTS, counts, off_the_loop

SECRET = "Zorblax quantum marmalade, my PIN is 4417"


@pytest.fixture
def make_chat(specialist, generalist):
    def make(**fields):
        fields.setdefault("max_tokens", 16)
        return ChatSpecSteer(specialist=specialist, generalist=generalist, **fields)

    return make


@pytest.mark.parametrize("method", ["specsteer", "generalist", "specialist"])
def test_one_user_turn_answers_what_the_llm_writes(make_chat, make_llm, method):
    chat = make_chat(method=method)
    for prompt in PROMPTS:
        message = chat.invoke(prompt, private_context=CONTEXT)
        expected = make_llm(method=method, max_new_tokens=16).invoke(
            prompt, private_context=CONTEXT
        )
        assert message.content == expected


def test_messages_are_rendered_with_each_models_chat_template(make_chat, specialist):
    chat = make_chat()
    turns = chat.render_messages(
        [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("Gift?")]
    )
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    prompts = chat._prompts(turns, "She climbs.")
    decoded = specialist.tokenizer.decode(prompts.private)
    assert "She climbs." in decoded and "Be brief." in decoded and "Hello!" in decoded
    public = specialist.tokenizer.decode(prompts.public_specialist)
    assert "She climbs." not in public and "Gift?" in public
    assert "She climbs." not in chat.generalist.tokenizer.decode(prompts.public_generalist)


def test_usage_and_response_metadata(make_chat):
    chat = make_chat(method="specsteer", max_tokens=20)
    message = chat.invoke(PROMPTS[0], private_context=CONTEXT)
    info = message.response_metadata
    prompts = chat._prompts([{"role": "user", "content": PROMPTS[0]}], CONTEXT)
    assert message.usage_metadata["input_tokens"] == len(prompts.private)
    assert message.usage_metadata["output_tokens"] == info["new_tokens"] == 20
    assert info["finish_reason"] == "length" and info["private_context"] is True
    assert 0 <= info["acceptance_rate"] <= 1 and info["model_name"] == chat.generalist.name
    chunks = list(chat.stream(PROMPTS[0], private_context=CONTEXT))
    assert "".join(c.content for c in chunks) == message.content
    assert sum(c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata) == 20


def test_max_tokens_is_max_new_tokens(make_chat):
    chat = make_chat(max_tokens=7)
    assert chat.max_new_tokens == chat.max_tokens == 7
    assert chat.invoke(PROMPTS[0]).usage_metadata["output_tokens"] == 7
    assert chat.invoke(PROMPTS[0], max_tokens=3).usage_metadata["output_tokens"] == 3
    with pytest.raises(ValueError, match="max_tokens and max_new_tokens"):
        make_chat(max_tokens=5, max_new_tokens=6)
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_chat(max_tokens=0)


def test_unsupported_input_is_refused_clearly(make_chat):
    chat = make_chat()
    with pytest.raises(ValueError, match="system, human, AI and tool messages; got a 'function'"):
        chat.invoke([HumanMessage("hi"), FunctionMessage("42", name="f")])
    image = {"type": "image", "url": "https://example.com/x.png"}
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "hi"}, image])])
    with pytest.raises(ValueError, match="no user turn"):
        chat.invoke([SystemMessage("only a system prompt")])


class StartRecorder(BaseCallbackHandler):
    def __init__(self):
        self.seen: list[str] = []

    def on_chat_model_start(self, serialized, messages, **kwargs):
        self.seen.append(json.dumps([serialized, kwargs], default=repr))


def test_private_context_stays_out_of_callbacks_and_cache_keys(make_chat):
    chat = make_chat(max_tokens=4)
    recorder = StartRecorder()
    config = {"callbacks": [recorder]}
    chat.invoke(PROMPTS[0], config, private_context=SECRET)
    list(chat.stream(PROMPTS[0], config, private_context=SECRET))
    chat.batch([PROMPTS[0], PROMPTS[1]], config, private_context=SECRET)
    chat.bind(private_context=SECRET).invoke(PROMPTS[0], config)

    async def consume():
        await chat.ainvoke(PROMPTS[0], config, private_context=SECRET)
        return [c async for c in chat.astream(PROMPTS[0], config, private_context=SECRET)]

    asyncio.run(consume())
    assert len(recorder.seen) == 7
    for event in recorder.seen:
        assert "Zorblax" not in event and "4417" not in event
    # LangChain's own key leaves the context out; the cache keys it by a keyed digest
    # (`CallCache`, tests/langchain_specsteer/test_privacy.py)
    assert chat._get_llm_string(private_context=SECRET) == chat._get_llm_string()
    # ...while the specialist did read it
    plain = chat.invoke(PROMPTS[0], method="specialist").content
    assert chat.invoke(PROMPTS[0], method="specialist", private_context=SECRET).content != plain


def test_standard_params_for_tracing(make_chat):
    chat = make_chat(temperature=0.5, stop=["\n"])
    params = chat._get_ls_params(max_tokens=9)
    assert params["ls_provider"] == "specsteer" and params["ls_model_type"] == "chat"
    assert params["ls_max_tokens"] == 9 and params["ls_temperature"] == 0.5
    assert params["ls_stop"] == ["\n"] and params["ls_model_name"] == chat.generalist.name


def test_a_single_stop_string_is_one_stop_not_its_characters(make_chat):
    """stop="xyz" is one stop string in invoke and stream, sync and async, and in tracing."""
    chat = make_chat(method="generalist", max_tokens=40, streaming=False)
    full = chat.invoke(PROMPTS[0]).content
    never = full[0] + "\u2603\u2603"  # its first character starts the text; the whole never
    cut = full[10:13]

    async def astreamed(**kwargs):
        return "".join([chunk.content async for chunk in chat.astream(PROMPTS[0], **kwargs)])

    for stop, text in ((never, full), (cut, full[: full.find(cut)])):
        assert chat.invoke(PROMPTS[0], stop=stop).content == text
        assert "".join(chunk.content for chunk in chat.stream(PROMPTS[0], stop=stop)) == text
        assert asyncio.run(chat.ainvoke(PROMPTS[0], stop=stop)).content == text
        assert asyncio.run(astreamed(stop=stop)) == text
    assert chat._get_ls_params(stop=never)["ls_stop"] == [never]
    field = make_chat(method="generalist", max_tokens=40, stop=never)
    assert field.invoke(PROMPTS[0]).content == full
    assert field._get_ls_params(stop=cut)["ls_stop"] == [never, cut]


@pytest.mark.parametrize("context", [5, [1, 2], b"PIN 4417", [["x"]], {SECRET: 1}])
def test_a_private_context_of_another_type_is_refused_naming_the_field(make_chat, context):
    chat = make_chat(method="specialist", max_tokens=4)
    for call in (
        lambda: chat.invoke(PROMPTS[0], private_context=context),
        lambda: asyncio.run(chat.ainvoke(PROMPTS[0], private_context=context)),
    ):
        with pytest.raises(TypeError, match="private_context must be a str, a Document") as err:
            call()
        assert "4417" not in str(err.value)


def test_async_does_not_block_the_event_loop(make_chat, monkeypatch):
    """Model work runs off the loop: every forward of ainvoke runs while the loop is free."""
    chat = make_chat(max_tokens=40, method="generalist")
    message, forwards = off_the_loop(lambda: chat.ainvoke(PROMPTS[0]), monkeypatch)
    assert message.usage_metadata["output_tokens"] == 40
    assert forwards == 40


def test_async_chat_with_a_remote_generalist_answers_like_the_sync_call(
    specialist, make_remote_llm
):
    """ainvoke/astream of the chat model, the generalist over async HTTP (its `/tokenize`
    with `messages` too): the same message, usage and statistics as invoke."""
    generalist = make_remote_llm().generalist
    chat = ChatSpecSteer(specialist=specialist, generalist=generalist, max_tokens=20)
    turns = [("system", "Be brief."), ("human", PROMPTS[1])]
    expected = chat.invoke(turns, private_context=CONTEXT)

    async def both():
        message = await chat.ainvoke(turns, private_context=CONTEXT)
        chunks = [c async for c in chat.astream(turns, private_context=CONTEXT)]
        await generalist.aclose()
        return message, chunks

    message, chunks = asyncio.run(both())
    assert message.content == "".join(c.content for c in chunks) == expected.content
    assert message.usage_metadata == expected.usage_metadata
    assert counts(message.response_metadata) == counts(expected.response_metadata)


# Tool calling (issue 18). The tiny pair has no chat template, so tools use the `plain`
# format (a system turn listing them; `<tool_call>` replies); `scripted` replaces the decoding
# with a fixed reply to test reading it, whatever the random models would write.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now.", "parameters": {}},
}
TWO_CALLS = (
    "Let me check. "
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>'
)


@pytest.fixture
def scripted(monkeypatch):
    """Make ChatSpecSteer's decoding yield `pieces` (recording the prompts it was given)."""
    seen = []

    def script(*pieces):
        def info(prompts):
            seen.append(prompts)
            return {"prompt_tokens": len(prompts.private), "new_tokens": len(pieces)}

        def decode(self, prompts, params, stop, keep=()):
            yield from ((piece, None) for piece in pieces)
            yield "", info(prompts)

        async def adecode(self, prompts, params, stop, keep=()):
            for piece in pieces:
                yield piece, None
            yield "", info(prompts)

        monkeypatch.setattr(ChatSpecSteer, "_decode", decode)
        monkeypatch.setattr(ChatSpecSteer, "_adecode", adecode)
        return seen

    return script


def call_pairs(calls):
    return [(call["name"], call["args"]) for call in calls]


def test_tool_calls_are_read_into_the_message_invoked_streamed_or_awaited(make_chat, scripted):
    pieces = [TWO_CALLS[i : i + 7] for i in range(0, len(TWO_CALLS), 7)]  # cuts inside calls
    scripted(*pieces)
    chat = make_chat().bind_tools([WEATHER])
    expected = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Lima"})]
    message = chat.invoke("Weather in Paris and Lima?")
    assert message.content == "Let me check. " and message.invalid_tool_calls == []
    assert call_pairs(message.tool_calls) == expected
    assert all(call["id"].startswith("call_") for call in message.tool_calls)
    chunks = list(chat.stream("Weather in Paris and Lima?"))
    with_calls = [c for c in chunks if c.tool_call_chunks]
    assert [c.tool_call_chunks[0]["index"] for c in with_calls] == [0, 1]
    assert [c.tool_call_chunks[0]["name"] for c in with_calls] == ["get_weather"] * 2
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == "Let me check. " and call_pairs(merged.tool_calls) == expected
    assert "".join(c.content for c in chunks) == "Let me check. "
    awaited = asyncio.run(chat.ainvoke("Weather in Paris and Lima?"))
    assert awaited.content == message.content
    assert call_pairs(awaited.tool_calls) == expected


def test_parallel_tool_calls_false_keeps_the_first_call(make_chat, scripted):
    scripted(TWO_CALLS)
    chat = make_chat().bind_tools([WEATHER], parallel_tool_calls=False)
    assert call_pairs(chat.invoke("Weather?").tool_calls) == [("get_weather", {"city": "Paris"})]
    chunks = [c for c in chat.stream("Weather?") if c.tool_call_chunks]
    assert len(chunks) == 1


def test_a_malformed_call_is_an_invalid_tool_call(make_chat, scripted):
    scripted('<tool_call>{"name": "get_weather", "arguments": {"city": Paris}}</tool_call>')
    message = make_chat().bind_tools([WEATHER]).invoke("Weather in Paris?")
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    invalid = message.invalid_tool_calls[0]
    assert invalid["name"] == "get_weather" and "Paris" in invalid["args"]
    assert invalid["error"].startswith("malformed JSON: Expecting value")


def test_without_tools_bound_the_reply_is_text(make_chat, scripted):
    """No tools bound (or tool_choice="none"): nothing is read as a call, whatever the
    model writes (issue 23 item 10)."""
    scripted(TWO_CALLS)
    chat = make_chat()
    assert chat.tool_plan().parse is False
    message = chat.invoke("Weather in Paris and Lima?")
    assert message.content == TWO_CALLS
    assert message.tool_calls == [] and message.invalid_tool_calls == []
    chunks = list(chat.stream("Weather in Paris and Lima?"))
    assert "".join(c.content for c in chunks) == TWO_CALLS
    assert not any(c.tool_call_chunks for c in chunks)
    assert asyncio.run(chat.ainvoke("Weather?")).content == TWO_CALLS


UNFIT = (
    '<tool_call>{"name": "lukewarm.", "arguments": {}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)


def test_a_call_of_an_unbound_tool_or_with_unfit_arguments_is_invalid(make_chat, scripted):
    """A call naming no bound tool, or whose arguments its schema refuses, goes to
    `invalid_tool_calls` with the reason, never to `tool_calls` (issue 23 item 10)."""
    scripted(UNFIT)
    chat = make_chat().bind_tools([WEATHER])
    for message in (chat.invoke("Weather?"), asyncio.run(chat.ainvoke("Weather?"))):
        assert call_pairs(message.tool_calls) == [("get_weather", {"city": "Oslo"})]
        assert [(c["name"], c["error"]) for c in message.invalid_tool_calls] == [
            ("lukewarm.", "no bound tool is named 'lukewarm.'; bound: ['get_weather']"),
            ("get_weather", "arguments.city is not a string"),
        ]
        assert json.loads(message.invalid_tool_calls[1]["args"]) == {"city": 3}


class TokenTap(BaseCallbackHandler):
    """A streaming callback handler, as LangGraph's `stream_mode="messages"` attaches (it
    has `tap_output_iter`): LangChain then streams inside `invoke`."""

    def __init__(self):
        self.chunks = []

    def on_llm_new_token(self, token, *, chunk=None, **kwargs):
        self.chunks.append(chunk)

    def tap_output_iter(self, run_id, output):
        return output

    def tap_output_aiter(self, run_id, output):
        return output


def test_invoke_checks_the_calls_when_it_streams_to_callbacks(make_chat, scripted):
    """`streaming=True`, or a streaming handler (an agent's graph streamed by messages):
    invoke still answers with the checked calls, and its chunks reach the callbacks."""
    scripted(UNFIT)
    tap = TokenTap()
    for chat, config in (
        (make_chat(streaming=True).bind_tools([WEATHER]), {}),
        (make_chat().bind_tools([WEATHER]), {"callbacks": [tap]}),
    ):
        for awaited in (False, True):
            if awaited:
                message = asyncio.run(chat.ainvoke("Weather?", config))
            else:
                message = chat.invoke("Weather?", config)
            assert call_pairs(message.tool_calls) == [("get_weather", {"city": "Oslo"})]
            assert [c["name"] for c in message.invalid_tool_calls] == ["lukewarm.", "get_weather"]
            if config:  # the chunks the callbacks saw are of this message
                assert {c.message.id for c in tap.chunks[-3:]} == {message.id}
    streamed = [c.message.tool_call_chunks for c in tap.chunks if c.message.tool_call_chunks]
    names = ["lukewarm.", "get_weather", "get_weather"]
    assert [chunks[0]["name"] for chunks in streamed] == names * 2  # invoke, ainvoke


def test_tools_and_tool_messages_are_rendered_for_both_models(make_chat, specialist, scripted):
    seen = scripted("It is sunny.")
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}
    history = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("sunny, 21 C", tool_call_id="c1"),  # its name comes from the call
    ]
    message = make_chat().bind_tools([WEATHER]).invoke(history)
    assert message.content == "It is sunny." and message.tool_calls == []
    decode = specialist.tokenizer.decode
    for ids in (seen[0].private, seen[0].public_specialist, seen[0].public_generalist):
        text = decode(ids)
        listed = "You may call these tools:\n" + json.dumps(WEATHER)
        assert text.startswith(f"<|bos|>Be brief.\n\n{listed}")  # in the system turn
        assert "Weather in Paris?" in text
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
        assert text.endswith("<tool_response>\nsunny, 21 C\n</tool_response>")
    # The call as a content block too (Anthropic's `tool_use`): the same conversation.
    block = {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}
    blocks = AIMessage([{"type": "text", "text": ""}, block], tool_calls=[call])
    make_chat().bind_tools([WEATHER]).invoke([*history[:2], blocks, history[3]])
    assert seen[1] == seen[0]
    with pytest.raises(ValueError, match="reads text only; got a 'tool_use' content block"):
        make_chat().invoke([HumanMessage([block])])  # not a call of an AI message


def test_tool_choice_forces_a_call(make_chat, specialist, scripted):
    seen = scripted('{"city": "Oslo"}}</tool_call>')
    chat = make_chat().bind_tools([WEATHER], tool_choice="get_weather")
    message = chat.invoke("Weather?")
    assert call_pairs(message.tool_calls) == [("get_weather", {"city": "Oslo"})]
    forced = specialist.tokenizer.encode(
        '<tool_call>{"name": "get_weather", "arguments": ', add_special_tokens=False
    )
    prompts = seen[0]
    for ids in (prompts.private, prompts.public_specialist, prompts.public_generalist):
        assert ids[-len(forced) :] == forced
    seen = scripted('{"city": "Oslo"}}</tool_call>')  # one tool bound: "any" names it too
    message = make_chat().bind_tools([WEATHER], tool_choice="any").invoke("Weather?")
    assert call_pairs(message.tool_calls) == [("get_weather", {"city": "Oslo"})]
    assert seen[-1].private[-len(forced) :] == forced
    seen = scripted('{"name": "get_time", "arguments": {}}</tool_call>')  # two: the marker
    message = make_chat().bind_tools([WEATHER, TIME], tool_choice="any").invoke("Time?")
    assert call_pairs(message.tool_calls) == [("get_time", {})]
    marker = specialist.tokenizer.encode("<tool_call>", add_special_tokens=False)
    assert seen[-1].private[-len(marker) :] == marker
    seen = scripted('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>')
    message = make_chat().bind_tools([WEATHER], tool_choice="none").invoke("Weather?")
    assert message.tool_calls == [] and "<tool_call>" in message.content  # not offered, not read
    assert "You may call" not in specialist.tokenizer.decode(seen[-1].private)
    with pytest.raises(ValueError, match=r"tool_choice 'get_time' names no bound tool.*get_weat"):
        make_chat().bind_tools([WEATHER], tool_choice="get_time")


def test_structured_output_is_built_on_tool_calling(make_chat, scripted):
    from pydantic import BaseModel

    class Weather(BaseModel):
        """Weather in a city."""

        city: str
        degrees: int

    seen = scripted('{"city": "Oslo", "degrees": 3}}</tool_call>')  # the one tool is forced
    structured = make_chat().with_structured_output(Weather)
    assert structured.invoke("Weather in Oslo?") == Weather(city="Oslo", degrees=3)
    assert seen and structured.invoke("again") == Weather(city="Oslo", degrees=3)
    raw = make_chat().with_structured_output(Weather, include_raw=True).invoke("Weather?")
    assert raw["parsed"] == Weather(city="Oslo", degrees=3) and raw["parsing_error"] is None


def test_private_tools_is_a_set_of_names(make_chat):
    from retrievers import PRIVATE_MEMORY_TOOLS

    assert make_chat().private_tools == PRIVATE_MEMORY_TOOLS == {"recall_memory"}
    assert make_chat(private_tools={"a", "b"}).private_tools == {"a", "b"}
    with pytest.raises(ValueError, match=r"private_tools is a set of tool names.*\{'a'\}"):
        make_chat(private_tools="a")
    with pytest.raises(ValueError, match="tool_format"):
        make_chat(tool_format="json")


# A Qwen-shaped template (tools in the system turn, calls in <tool_call>, results as tool
# turns), to test rendering through a template that takes `tools=`.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}{% for call in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def recall_history() -> tuple[dict, list]:
    """A `recall_memory` schema, and a conversation that called it and holds its private
    result ("Zorblax secret memory")."""
    recall = {**WEATHER, "function": {**WEATHER["function"], "name": "recall_memory"}}
    call = {"name": "recall_memory", "args": {"city": "Paris"}, "id": "c1"}
    history = [
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("Zorblax secret memory", tool_call_id="c1"),
    ]
    return recall, history


def test_a_template_that_takes_tools_renders_them_and_private_results_stay_private(
    specialist, generalist, scripted
):
    import copy

    from langchain_specsteer import LocalGeneralist, LocalSpecialist
    from langchain_specsteer.tools import PRIVATE_RESULT

    tokenizer = copy.deepcopy(specialist.tokenizer)
    tokenizer.chat_template = HERMES_TEMPLATE
    chat = ChatSpecSteer(
        specialist=LocalSpecialist(specialist.model, tokenizer),
        generalist=LocalGeneralist(specialist.model, tokenizer),
        max_tokens=4,
    )
    assert chat.tool_family() == "hermes"
    seen = scripted("Done.")
    recall, history = recall_history()
    chat.bind_tools([recall]).invoke(history)
    private, public = (
        tokenizer.decode(ids) for ids in (seen[0].private, seen[0].public_generalist)
    )
    for text in (private, public):
        assert text.startswith("<|im_start|>system\n# Tools\n" + json.dumps(recall))
        assert '<tool_call>\n{"name": "recall_memory", "arguments": {"city": "Paris"}}' in text
        assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>tool\nZorblax secret memory<|im_end|>" in private
    assert f"<|im_start|>tool\n{PRIVATE_RESULT}<|im_end|>" in public and "Zorblax" not in public
    assert tokenizer.decode(seen[0].public_specialist) == public


@pytest.mark.parametrize("client", ["session", "openai"])
def test_a_remote_generalist_renders_the_tools_with_its_own_template(
    specialist, client, request_recorder
):
    """Tools reach a remote generalist's template through `/tokenize` (in its `tools` field,
    as vLLM takes them); the private result stays on the device."""
    import copy

    from langchain_specsteer import LocalGeneralist, LocalSpecialist
    from langchain_specsteer.remote import OpenAICompatibleGeneralist, RemoteGeneralist
    from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
    from langchain_specsteer.testing import BackgroundServer

    tokenizer = copy.deepcopy(specialist.tokenizer)
    tokenizer.chat_template = HERMES_TEMPLATE
    local = LocalSpecialist(specialist.model, tokenizer)
    vocab = local.vocab_size
    service = VerifierService(
        LocalGeneralist(specialist.model, tokenizer),
        local,
        limits=ServiceLimits(max_top_m=vocab, max_logprobs=vocab),
    )
    recall, history = recall_history()
    recorder = request_recorder(create_app(service))
    with BackgroundServer(recorder) as server:
        remote = (
            RemoteGeneralist(server.url, top_m=20)
            if client == "session"
            else OpenAICompatibleGeneralist(server.url, service.model_name, top_logprobs=20)
        )
        chat = ChatSpecSteer(specialist=local, generalist=remote, max_tokens=4)
        local_chat = ChatSpecSteer(specialist=local, generalist=service.generalist, max_tokens=4)
        plan = chat.tool_plan([recall])  # passed explicitly: no state between calls
        prompts = chat._prompts(chat.render_messages(history), "", plan=plan)
        expected = local_chat._prompts(local_chat.render_messages(history), "", plan=plan)
        unplanned = local_chat._prompts(local_chat.render_messages(history), "")
        assert "# Tools" not in tokenizer.decode(unplanned.public_generalist)  # no plan: no tools
        assert prompts.public_generalist == expected.public_generalist
        assert "# Tools" in tokenizer.decode(prompts.public_generalist)
        [body] = [json.loads(r["body"]) for r in recorder.requests if r["path"] == "/tokenize"]
        assert body["tools"] == [recall] and "tools" not in body["chat_template_kwargs"]
        [sent] = body["messages"][1]["tool_calls"]  # OpenAI's wire form: arguments as JSON text
        assert sent["function"] == {"name": "recall_memory", "arguments": '{"city": "Paris"}'}
        assert "Zorblax" not in tokenizer.decode(prompts.public_generalist)
        message = chat.bind_tools([recall]).invoke(history)
        assert message.response_metadata["new_tokens"] == 4
        remote.close()


RECALL = {
    "type": "function",
    "function": {
        "name": "recall_memory",
        "description": "Search the private memory.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


@pytest.fixture
def scripted_ids(monkeypatch):
    """Make every run commit `ids` in one round: the detokenizer and the call reader still
    run on them, whatever the models would write."""
    from langchain_specsteer.engine import SpecSteerEngine
    from langchain_specsteer.run import DecodeStats, Round

    def script(ids):
        class Scripted:
            stats = DecodeStats("specsteer", new_tokens=len(ids))

            def __iter__(self):
                yield Round(list(ids), 0)

            async def __aiter__(self):
                yield Round(list(ids), 0)

        monkeypatch.setattr(SpecSteerEngine, "run", lambda self, prompts, params: Scripted())

    return script


def test_the_demo_pairs_call_marker_is_special_read_by_the_chat_and_never_text(
    demo_pair, scripted_ids
):
    """`<|call|>` is one special token of the demo pair: `SpecSteerLLM`'s text and a chat
    without tools never show it, and a chat with tools still reads the call it opens (issue
    23 item 11)."""
    from langchain_specsteer import SpecSteerLLM

    specialist, generalist = demo_pair
    tokenizer = specialist.tokenizer
    call = tokenizer.convert_tokens_to_ids("<|call|>")
    assert call != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(call) == "<|call|>"
    assert "<|call|>" in tokenizer.all_special_tokens
    ids = tokenizer.encode('<|call|>recall_memory {"query": "blender"}', add_special_tokens=False)
    assert ids[0] == call
    scripted_ids(ids)
    text = 'recall_memory {"query": "blender"}'
    assert SpecSteerLLM(specialist=specialist, generalist=generalist).invoke("Hi") == text
    chat = ChatSpecSteer(specialist=specialist, generalist=generalist)
    assert chat.invoke("Hi").content == text
    bound = chat.bind_tools([RECALL])
    for message in (bound.invoke("Hi"), asyncio.run(bound.ainvoke("Hi"))):
        assert message.content == "" and message.invalid_tool_calls == []
        assert call_pairs(message.tool_calls) == [("recall_memory", {"query": "blender"})]
    chunks = list(bound.stream("Hi"))
    assert [c.tool_call_chunks[0]["name"] for c in chunks if c.tool_call_chunks] == [
        "recall_memory"
    ]
    assert "".join(c.content for c in chunks) == ""
