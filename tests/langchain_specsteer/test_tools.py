"""Tool-call formats: rendering for templates without tools, and parsing per family (whole
replies, malformed JSON, several calls, any streaming chunk boundary)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from langchain_specsteer.tools import (
    CALL_FORMATS,
    FAMILIES,
    PLAIN_TOOLS_PROMPT,
    ParsedCall,
    ToolCallParser,
    check_call,
    detect_family,
    forced_prefix,
    parse_tool_calls,
    plain_turns,
)

# One reply per family: text, then two calls (the second with nested and unicode arguments).
TWO_CALLS = {
    "hermes": (
        "Let me check. "
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<tool_call>\n{"name": "recall_memory", "arguments": {"query": "café", "k": [1, 2]}}'
        "\n</tool_call>"
    ),
    "specsteer": (
        'Let me check. <|call|>get_weather {"city": "Paris"}'
        '<|call|>recall_memory {"query": "café", "k": [1, 2]}'
    ),
    "llama3": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "recall_memory", "parameters": {"query": "café", "k": [1, 2]}}'
    ),
}
TWO_CALLS["plain"] = TWO_CALLS["hermes"]
EXPECTED_CALLS = [
    ("get_weather", {"city": "Paris"}),
    ("recall_memory", {"query": "café", "k": [1, 2]}),
]
EXPECTED_TEXT = dict.fromkeys(("hermes", "plain", "specsteer"), "Let me check. ") | {"llama3": ""}

MALFORMED = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>',
    "specsteer": '<|call|>get_weather {"city": Paris}',
    "llama3": '{"name": "get_weather", "parameters": {"city": Paris}}',
}
MALFORMED["plain"] = MALFORMED["hermes"]


def calls_of(parsed):
    return [(call.name, call.args) for call in parsed]


@pytest.mark.parametrize("family", FAMILIES)
def test_two_calls_in_one_turn_are_both_read(family):
    text, calls = parse_tool_calls(TWO_CALLS[family], family)
    assert text == EXPECTED_TEXT[family]
    assert calls_of(calls) == EXPECTED_CALLS
    assert all(call.valid for call in calls) and len({call.id for call in calls}) == 2
    assert [json.loads(call.args_text) for call in calls] == [args for _, args in EXPECTED_CALLS]


@pytest.mark.parametrize("family", FAMILIES)
def test_malformed_json_is_an_invalid_call_with_its_name(family):
    _, calls = parse_tool_calls(MALFORMED[family], family)
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].args is None
    assert not calls[0].valid and "Expecting value" in calls[0].error
    assert "Paris" in calls[0].args_text


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reply_without_calls_is_text(family):
    for reply in ("It is sunny in Paris.", "Use <tool or <|call now", "{not json at all"):
        assert parse_tool_calls(reply, family) == (reply, [])


def test_llama_json_that_is_not_a_call_stays_the_answer():
    reply = '{"answer": 42}'
    assert parse_tool_calls(reply, "llama3") == (reply, [])
    text, calls = parse_tool_calls('  {"name": "f", "parameters": {}}', "llama3")
    assert text == "" and calls_of(calls) == [("f", {})]
    text, calls = parse_tool_calls("Sure. " + TWO_CALLS["llama3"], "llama3")  # after text: text
    assert text == "Sure. " + TWO_CALLS["llama3"] and calls == []


@pytest.mark.parametrize(
    ("family", "reply", "expected"),
    [
        ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})]),
        ("specsteer", '<|call|>f {"a": 1}', [("f", {"a": 1})]),
        ("specsteer", "<|call|>f", [("f", None)]),  # no JSON arguments: not a call of f()
        ("hermes", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
         [("f", {"a": 1})]),
        ("hermes", '<tool_call>["f"]</tool_call>', [(None, None)]),
        ("hermes", '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', [("f", None)]),
        ("specsteer", '<|call|> {"a": 1}', [(None, None)]),
    ],
)  # fmt: skip
def test_edge_cases(family, reply, expected):
    """An unclosed call at the end is read as it stands; arguments written as a JSON string
    are decoded; a call without a name, or with no or non-object arguments, is invalid."""
    _, calls = parse_tool_calls(reply, family)
    assert calls_of(calls) == expected
    assert all(
        call.valid == (args is not None) for call, (_, args) in zip(calls, expected, strict=True)
    )


def streamed(reply: str, family: str, cuts: list[int]):
    parser = ToolCallParser(family)
    text, calls, bounds = "", [], [0, *cuts, len(reply)]
    for start, end in itertools.pairwise(bounds):
        text += parser.push(reply[start:end])
        calls += parser.take()
    text += parser.flush()
    calls += parser.take()
    return text, calls


@pytest.mark.parametrize("family", FAMILIES)
def test_every_chunk_boundary_reads_the_same_as_the_whole(family):
    """Pieces cut anywhere (inside markers, names, JSON) give the same text and calls; text
    outside calls is never held back past the end of a possible marker."""
    for reply in (TWO_CALLS[family], MALFORMED[family], "Plain text <tool_c and <|cal"):
        whole_text, whole_calls = parse_tool_calls(reply, family)
        for cut in range(1, len(reply)):
            text, calls = streamed(reply, family, [cut])
            assert text == whole_text
            assert [(c.name, c.args, c.args_text) for c in calls] == [
                (c.name, c.args, c.args_text) for c in whole_calls
            ]
        text, calls = streamed(reply, family, list(range(1, len(reply))))  # a char at a time
        assert text == whole_text and calls_of(calls) == calls_of(whole_calls)
        rng = random.Random(family)
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, len(reply)), 5))
            assert calls_of(streamed(reply, family, cuts)[1]) == calls_of(whole_calls)


def test_text_streams_before_the_reply_ends():
    parser = ToolCallParser("hermes")
    assert parser.push("It is sunny") == "It is sunny"
    assert parser.push(" <tool") == " "  # "<tool" may begin a call: held
    assert parser.push("s are fun") == "<tools are fun"
    assert parser.push(' <tool_call>{"name": "f", "arguments": {}}') == " "
    assert parser.take() == []  # not closed yet
    assert parser.push("</tool_call> done") == " done"
    assert calls_of(parser.take()) == [("f", {})]


@pytest.mark.parametrize("family", ["hermes", "specsteer", "llama3"])
def test_a_forced_prefix_reads_back_as_a_call_of_that_tool(family):
    rest = {"hermes": '{"q": "x"}}</tool_call>', "specsteer": '{"q": "x"}', "llama3": '{"q": "x"}}'}
    _, calls = parse_tool_calls(forced_prefix(family, "lookup") + rest[family], family)
    assert calls_of(calls) == [("lookup", {"q": "x"})]
    opener = forced_prefix(family)
    whole = {
        "hermes": '{"name": "f", "arguments": {}}</tool_call>',
        "specsteer": "f {}",
        "llama3": 'f", "parameters": {}}',
    }
    assert calls_of(parse_tool_calls(opener + whole[family], family)[1]) == [("f", {})]


def test_families_are_detected_from_chat_templates():
    from eval.train_pair import CHAT_TEMPLATE

    assert detect_family(CHAT_TEMPLATE) == "specsteer"
    assert detect_family("{% if tools %}<tool_call>{% endif %}") == "hermes"  # Qwen's shape
    llama = "{% if tools %}<|python_tag|>{{ tools }}{% endif %}<|eot_id|>"
    assert detect_family(llama) == "llama3"
    assert detect_family("{% for m in messages %}{{ m.content }}{% endfor %}") == "plain"
    assert detect_family(None) == "plain"
    with pytest.raises(ValueError, match="unknown tool-call family 'json'"):
        ToolCallParser("json")


def test_plain_turns_write_tools_calls_and_results_as_text():
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "name": "f", "tool_call_id": "c"},
    ]  # fmt: skip
    out = plain_turns(turns, [tool])
    listed = PLAIN_TOOLS_PROMPT.format(tools=json.dumps(tool))
    assert out == [
        {"role": "system", "content": f"Be brief.\n\n{listed}"},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
        },
        {"role": "user", "content": "<tool_response>\n42\n</tool_response>"},
    ]
    assert plain_turns(turns[1:2], [tool])[0] == {"role": "system", "content": listed}
    assert parse_tool_calls(out[2]["content"], "plain")[1][0].args == {"a": 1}  # round trip


def test_each_format_is_a_row():
    """Families are rows (opener, closer, body parser, forced prefix), as methods are: the
    parser, the forced prefixes and detection read them, and `plain` reads as `hermes`."""
    assert set(CALL_FORMATS) == set(FAMILIES)
    assert CALL_FORMATS["hermes"].openers == ("<tool_call>",)
    assert CALL_FORMATS["hermes"].closer == "</tool_call>"
    assert CALL_FORMATS["specsteer"].openers == ("<|call|>",)
    assert CALL_FORMATS["specsteer"].closer == ""  # a call ends at the next one, or the reply
    assert CALL_FORMATS["llama3"].leading
    for family, row in CALL_FORMATS.items():
        assert forced_prefix(family) == row.forced
        assert forced_prefix(family, "f").startswith(row.forced)
    markers = {family: row.markers for family, row in CALL_FORMATS.items()}
    assert markers == {
        "hermes": ("<tool_call>", "</tool_call>"),
        "plain": ("<tool_call>", "</tool_call>"),
        "specsteer": ("<|call|>",),
        "llama3": ("<|python_tag|>",),
    }  # what a tokenizer may hold as special tokens, kept in the text a chat parses
    plain, hermes = CALL_FORMATS["plain"], CALL_FORMATS["hermes"]
    assert (plain.openers, plain.closer, plain.body) == (hermes.openers, hermes.closer, hermes.body)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"enum": ["C", "F"]},
                "stops": {"type": "array", "items": {"type": "string"}},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
NO_ARGUMENTS = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


@pytest.mark.parametrize(
    ("name", "args", "error"),
    [
        ("get_weather", {"city": "Oslo"}, None),
        ("get_weather", {"city": "Oslo", "days": 3, "unit": "F", "stops": ["a"]}, None),
        ("get_weather", {"city": "Oslo", "note": None}, None),
        ("get_time", {}, None),
        ("lukewarm.", {}, "no bound tool is named 'lukewarm.'; bound: ['get_time', 'get_weather']"),
        ("get_weather", {}, "arguments: 'city' is required"),
        ("get_weather", {"city": 3}, "arguments.city is not a string"),
        ("get_weather", {"city": "Oslo", "days": True}, "arguments.days is not an integer"),
        ("get_weather", {"city": "Oslo", "days": 2.5}, "arguments.days is not an integer"),
        ("get_weather", {"city": "Oslo", "unit": "K"}, "arguments.unit is not one of ['C', 'F']"),
        ("get_weather", {"city": "Oslo", "stops": [1]}, "arguments.stops[0] is not a string"),
        ("get_weather", {"city": "Oslo", "note": 1}, "arguments.note fits none of its schemas"),
        ("get_weather", {"city": "Oslo", "x": 1}, "arguments: 'x' is not in the schema"),
    ],
)
def test_a_call_is_checked_against_the_bound_tools(name, args, error):
    """The one validator: a call naming no bound tool, or whose arguments its tool's schema
    refuses, is invalid, with the reason; a valid call keeps its id."""
    call = ParsedCall(name, args, json.dumps(args))
    checked = check_call(call, [WEATHER, NO_ARGUMENTS])
    assert checked.error == error
    assert checked.id == call.id and checked.args_text == call.args_text
    malformed = ParsedCall("get_weather", None, "{", error="malformed JSON: x")
    assert check_call(malformed, [WEATHER]) is malformed  # its own error stands
