"""Tool calling: how tools and tool calls are written for each chat-template family, and how
the model's tool calls are read back (whole, or incrementally while streaming).

Families (`tool_format`), each a row of `CALL_FORMATS` (its call openers and closer, the
parser of a call's text, the prefix that forces a call), as methods are rows of
`methods.METHOD_SPECS`:

- ``hermes``: Qwen 2.5/3, Hermes and most open templates: each call is
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
- ``llama3``: Llama 3.1+: the reply is a JSON object ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several separated by ``;`` or new lines).
- ``specsteer``: the demo pair's: each call is ``<|call|>name {json arguments}``.
- ``plain``: a template without tools (or none): the tools are listed in a system turn asking
  for ``hermes`` calls, calls are written back as that text and tool results as user turns.

`check_call` is the one validator of a parsed call against the bound tools. Pure functions
over strings and dicts; `ChatSpecSteer` does the LangChain side.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CALL_FORMATS",
    "FAMILIES",
    "PLAIN_TOOLS_PROMPT",
    "PRIVATE_RESULT",
    "CallFormat",
    "ParsedCall",
    "ToolCallParser",
    "ToolFormat",
    "check_call",
    "detect_family",
    "forced_prefix",
    "parse_tool_calls",
    "plain_turns",
]

ToolFormat = Literal["auto", "hermes", "llama3", "specsteer", "plain"]

PRIVATE_RESULT = "[private result: kept on the device]"
"""What the generalist reads in place of a private tool's result (same turn structure)."""

PLAIN_TOOLS_PROMPT = (
    "You may call these tools:\n{tools}\n\n"
    "To call one, reply with "
    '<tool_call>{{"name": <tool name>, "arguments": <JSON object>}}</tool_call> '
    "for each call and nothing else."
)
"""The system turn that lists tools for a template without tool support ({tools}: one JSON
schema a line)."""

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
SPECSTEER_CALL = "<|call|>"
PYTHON_TAG = "<|python_tag|>"


@dataclass
class ParsedCall:
    """One tool call read from the output: `args` is the parsed object, or None with `error`
    (and the raw `args_text`) when it is malformed."""

    name: str | None
    args: dict[str, Any] | None
    args_text: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CallFormat:
    """How one family writes tool calls in a reply.

    Attributes:
        name: what `tool_format` calls it.
        openers: the text a call starts with.
        closer: the text a call ends with; "": at the next opener, or at the reply's end.
        leading: calls only open the reply, and then the whole reply is the call text (llama3);
            otherwise calls may follow text, and each call's text is between its markers.
        body: the calls in a call's text ([]: it is no call, and stays text).
        forced: what a reply starts with to force a call.
        named: what follows `forced` to force the call of one tool ({name}: its name).
    """

    name: str
    openers: tuple[str, ...]
    closer: str
    leading: bool
    body: Callable[[str], list[ParsedCall]]
    forced: str
    named: str

    @property
    def markers(self) -> tuple[str, ...]:
        """The marker texts (openers, closer) that may be special tokens of a tokenizer."""
        return tuple(m for m in (*self.openers, self.closer) if m.startswith("<"))

    def prefix(self, name: str | None = None) -> str:
        """The text a reply starts with to force a tool call (of tool `name`, when given)."""
        return self.forced + (self.named.replace("{name}", name) if name else "")


def _json_call(text: str) -> ParsedCall:
    """A call written as one JSON object: {"name": ..., "arguments" (or "parameters"): {...}}."""
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        match = re.search(r'"name"\s*:\s*"([^"]*)"', text)
        return ParsedCall(match.group(1) if match else None, None, text, error=_malformed(err))
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ParsedCall(None, None, text, error="a tool call is an object with a name")
    arguments = value.get("parameters", value.get("arguments", {}))
    return _with_arguments(value["name"], arguments, text)


def _hermes_calls(body: str) -> list[ParsedCall]:
    return [_json_call(body)]


def _llama_calls(reply: str) -> list[ParsedCall]:
    """The reply's JSON calls (after the python tag, separated by `;`), or none when the
    JSON is not a call (then it is the answer itself)."""
    body = reply.strip().removeprefix(PYTHON_TAG).strip()
    if not body.startswith("{"):
        return []
    calls = [_json_call(part) for part in _json_objects(body)]
    return calls if any(c.valid or '"name"' in c.args_text for c in calls) else []


def _specsteer_calls(body: str) -> list[ParsedCall]:
    """`name {json arguments}`."""
    body = body.strip()
    brace = body.find("{")
    if brace < 0:
        error = "a call's arguments are a JSON object after its name"
        return [ParsedCall(body or None, None, "", error=error)]
    name, arguments = body[:brace].strip(), body[brace:]
    if not name:
        return [ParsedCall(None, None, arguments, error="a tool call needs a name")]
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as err:
        return [ParsedCall(name, None, arguments, error=_malformed(err))]
    return [_with_arguments(name, value, arguments)]


_HERMES = CallFormat(
    "hermes",
    openers=(HERMES_OPEN,),
    closer=HERMES_CLOSE,
    leading=False,
    body=_hermes_calls,
    forced=HERMES_OPEN,
    named='{"name": "{name}", "arguments": ',
)
CALL_FORMATS: dict[str, CallFormat] = {
    row.name: row
    for row in (
        _HERMES,
        CallFormat(
            "llama3",
            openers=(PYTHON_TAG, "{"),
            closer="",
            leading=True,
            body=_llama_calls,
            forced='{"name": "',
            named='{name}", "parameters": ',
        ),
        CallFormat(
            "specsteer",
            openers=(SPECSTEER_CALL,),
            closer="",
            leading=False,
            body=_specsteer_calls,
            forced=SPECSTEER_CALL,
            named="{name} ",
        ),
        dataclasses.replace(_HERMES, name="plain"),  # tools listed in a system turn
    )
}
"""The tool-call formats, one row each: the single source of their names."""

FAMILIES: tuple[str, ...] = tuple(CALL_FORMATS)


def detect_family(chat_template: str | None) -> str:
    """The tool-call family a chat template writes (`plain` when it takes no tools)."""
    if not chat_template or "tools" not in chat_template:
        return "plain"
    if SPECSTEER_CALL in chat_template:
        return "specsteer"
    if HERMES_OPEN in chat_template:
        return "hermes"
    if PYTHON_TAG in chat_template or "<|eot_id|>" in chat_template:
        return "llama3"
    return "hermes"


def forced_prefix(family: str, name: str | None = None) -> str:
    """The text a reply starts with to force a tool call (of tool `name`, when given)."""
    return CALL_FORMATS[family].prefix(name)


def plain_turns(turns: Sequence[dict[str, Any]], tools: Sequence[dict]) -> list[dict[str, Any]]:
    """Turns for a template without tools: the tools in a system turn (merged into a leading
    one), assistant calls as `hermes` text, tool results as user turns."""
    out: list[dict[str, Any]] = []
    for turn in turns:
        if turn["role"] == "assistant" and turn.get("tool_calls"):
            calls = "".join(_hermes_call(call) for call in turn["tool_calls"])
            out.append({"role": "assistant", "content": (turn.get("content") or "") + calls})
        elif turn["role"] == "tool":
            content = f"<tool_response>\n{turn['content']}\n</tool_response>"
            out.append({"role": "user", "content": content})
        else:
            out.append({"role": turn["role"], "content": turn["content"]})
    if tools:
        listed = PLAIN_TOOLS_PROMPT.format(
            tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        )
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listed}"}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out


def _hermes_call(call: dict[str, Any]) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        arguments = json.loads(arguments or "{}")
    body = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
    return f"{HERMES_OPEN}\n{body}\n{HERMES_CLOSE}"


def parse_tool_calls(text: str, family: str) -> tuple[str, list[ParsedCall]]:
    """(the text outside tool calls, the calls) of a whole reply in `family`'s format."""
    parser = ToolCallParser(family)
    content = parser.push(text) + parser.flush()
    return content, parser.calls


class ToolCallParser:
    """Reads a reply piece by piece: text outside calls passes through (held back while it
    may begin a call marker); each call is parsed once it is complete.

    `push(piece)` and `flush()` return the text to emit; `take()` returns the calls completed
    since the last `take()`; `calls` holds them all.
    """

    def __init__(self, family: str):
        if family not in CALL_FORMATS:
            msg = f"unknown tool-call family {family!r}; choose one of {', '.join(FAMILIES)}"
            raise ValueError(msg)
        self.format = CALL_FORMATS[family]
        self.calls: list[ParsedCall] = []
        self._taken = 0
        self._buffer = ""
        self._in_call = False
        self._text_started = False  # leading formats: text came first, so no call follows

    def push(self, piece: str) -> str:
        self._buffer += piece
        return self._push_leading() if self.format.leading else self._push_marked()

    def flush(self) -> str:
        """The end of the reply: an unclosed call is parsed as it stands."""
        text, self._buffer = self._buffer, ""
        if self.format.leading and not self._text_started:
            calls = self.format.body(text)
            self.calls.extend(calls)
            return "" if calls else text
        if self._in_call:
            self.calls.extend(self.format.body(text))
            self._in_call = False
            return ""
        return text

    def take(self) -> list[ParsedCall]:
        new = self.calls[self._taken :]
        self._taken = len(self.calls)
        return new

    def _push_marked(self) -> str:
        """Calls between an opener and the closer (or the next opener)."""
        out = []
        [opener] = self.format.openers
        end_marker = self.format.closer or opener
        while True:
            if not self._in_call:
                start = self._buffer.find(opener)
                if start < 0:
                    keep = _partial_suffix(self._buffer, opener)
                    out.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return "".join(out)
                out.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(opener) :]
                self._in_call = True
            end = self._buffer.find(end_marker)
            if end < 0:
                return "".join(out)
            self.calls.extend(self.format.body(self._buffer[:end]))
            # A closer is consumed; a next opener starts the next call.
            self._buffer = self._buffer[end + len(self.format.closer) :]
            self._in_call = False

    def _push_leading(self) -> str:
        """A reply that opens as a call is held to its end; one that opens as text streams."""
        if not self._text_started:
            start = self._buffer.lstrip()
            openers = self.format.openers
            if not start or any(o.startswith(start) or start.startswith(o) for o in openers):
                return ""  # a call, or text that looked like one: decided at the end
            self._text_started = True
        text, self._buffer = self._buffer, ""
        return text


def check_call(call: ParsedCall, tools: Sequence[dict]) -> ParsedCall:
    """`call` as the reply's `tool_calls` may hold it, or with the error that makes it invalid:
    it names no tool of `tools` (OpenAI-style schemas), or its arguments do not fit that
    tool's parameter schema (`schema_error`). A call already malformed keeps its error."""
    if not call.valid:
        return call
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    if call.name not in schemas:
        error = f"no bound tool is named {call.name!r}; bound: {sorted(schemas)}"
        return dataclasses.replace(call, error=error)
    if error := schema_error(call.args, schemas[call.name]):
        return dataclasses.replace(call, error=error)
    return call


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_error(value: Any, schema: dict, where: str = "arguments") -> str | None:
    """Why `value` does not fit the JSON schema `schema`, or None when it fits.

    Checks `type`, `enum`/`const`, `required`, `properties`, `additionalProperties: false`,
    `items` and `anyOf`/`oneOf`; other keywords (`$ref`, formats, bounds) are not checked.
    """
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    if kinds and not any(_JSON_TYPES.get(kind, lambda _: True)(value) for kind in kinds):
        article = "an" if kinds[0][0] in "aeiou" else "a"
        return f"{where} is not {article} {' or '.join(kinds)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{where} is not {schema['const']!r}"
    options = schema.get("anyOf") or schema.get("oneOf")
    if options and all(schema_error(value, option, where) for option in options):
        return f"{where} fits none of its schemas"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                return f"{where}: {key!r} is required"
        for key, item in value.items():
            if key in properties:
                if error := schema_error(item, properties[key], f"{where}.{key}"):
                    return error
            elif schema.get("additionalProperties") is False:
                return f"{where}: {key!r} is not in the schema"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            if error := schema_error(item, schema["items"], f"{where}[{i}]"):
                return error
    return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _malformed(err: json.JSONDecodeError) -> str:
    return f"malformed JSON: {err}"


def _with_arguments(name: str, arguments: Any, text: str) -> ParsedCall:
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            return ParsedCall(name, None, arguments, error=_malformed(err))
    if not isinstance(arguments, dict):
        return ParsedCall(name, None, text, error="tool arguments must be a JSON object")
    return ParsedCall(name, arguments, json.dumps(arguments, ensure_ascii=False))


def _json_objects(text: str) -> list[str]:
    """Top-level `{...}` spans of `text` (separated by `;`, commas or white space); an
    unbalanced tail is returned as it stands (malformed)."""
    spans, depth, start, in_string, escaped = [], 0, None, False, False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
                start = None
    if start is not None:
        spans.append(text[start:])
    return spans
