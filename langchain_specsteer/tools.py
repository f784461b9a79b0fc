"""Tool calling: how tools and tool calls are written for each chat-template family, and how
the model's tool calls are read back (whole, or incrementally while streaming).

Families (`tool_format`):

- ``hermes``: Qwen 2.5/3, Hermes and most open templates: each call is
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
- ``llama3``: Llama 3.1+: the reply is a JSON object ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several separated by ``;`` or new lines).
- ``specsteer``: the demo pair's: each call is ``<|call|>name {json arguments}``.
- ``plain``: a template without tools (or none): the tools are listed in a system turn asking
  for ``hermes`` calls, calls are written back as that text and tool results as user turns.

Pure functions over strings and dicts; `ChatSpecSteer` does the LangChain side.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "FAMILIES",
    "PLAIN_TOOLS_PROMPT",
    "PRIVATE_RESULT",
    "ParsedCall",
    "ToolCallParser",
    "ToolFormat",
    "detect_family",
    "forced_prefix",
    "parse_tool_calls",
    "plain_turns",
]

ToolFormat = Literal["auto", "hermes", "llama3", "specsteer", "plain"]
FAMILIES: tuple[str, ...] = ("hermes", "llama3", "specsteer", "plain")

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
    if family == "specsteer":
        return SPECSTEER_CALL + (f"{name} " if name else "")
    if family == "llama3":
        return '{"name": "' + (f'{name}", "parameters": ' if name else "")
    return HERMES_OPEN + ('{"name": "' + name + '", "arguments": ' if name else "")


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
        if family not in FAMILIES:
            msg = f"unknown tool-call family {family!r}; choose one of {', '.join(FAMILIES)}"
            raise ValueError(msg)
        self.family = "hermes" if family == "plain" else family
        self.calls: list[ParsedCall] = []
        self._taken = 0
        self._buffer = ""
        self._in_call = False
        self._emitted_text = False  # llama3: a JSON reply must start the message

    def push(self, piece: str) -> str:
        self._buffer += piece
        if self.family == "llama3":
            return self._push_llama()
        return self._push_marked()

    def flush(self) -> str:
        """The end of the reply: an unclosed call is parsed as it stands."""
        if self.family == "llama3":
            return self._flush_llama()
        if self._in_call:
            self._finish(self._buffer)
            self._buffer, self._in_call = "", False
            return ""
        text, self._buffer = self._buffer, ""
        return text

    def take(self) -> list[ParsedCall]:
        new = self.calls[self._taken :]
        self._taken = len(self.calls)
        return new

    # hermes / specsteer: calls between markers
    def _push_marked(self) -> str:
        out = []
        opener = HERMES_OPEN if self.family == "hermes" else SPECSTEER_CALL
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
            if self.family == "hermes":
                end = self._buffer.find(HERMES_CLOSE)
                if end < 0:
                    return "".join(out)
                self._finish(self._buffer[:end])
                self._buffer = self._buffer[end + len(HERMES_CLOSE) :]
            else:
                end = self._buffer.find(SPECSTEER_CALL)
                if end < 0:
                    return "".join(out)
                self._finish(self._buffer[:end])
                self._buffer = self._buffer[end:]
            self._in_call = False

    def _finish(self, body: str) -> None:
        if self.family == "hermes":
            self.calls.append(_hermes_body(body))
        else:
            self.calls.append(_specsteer_body(body))

    # llama3: the whole reply is JSON when it starts with "{" (or the python tag)
    def _push_llama(self) -> str:
        if self._emitted_text:
            text, self._buffer = self._buffer, ""
            return text
        stripped = self._buffer.lstrip()
        if not stripped or PYTHON_TAG.startswith(stripped) or stripped.startswith(PYTHON_TAG):
            return ""
        if stripped.startswith("{"):
            return ""  # held until the end: a call, or text that looked like one
        self._emitted_text = True
        text, self._buffer = self._buffer, ""
        return text

    def _flush_llama(self) -> str:
        text, self._buffer = self._buffer, ""
        if self._emitted_text:
            return text
        body = text.strip().removeprefix(PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text
        calls = [_llama_call(part) for part in _json_objects(body)]
        if not calls or not any(c.valid or '"name"' in c.args_text for c in calls):
            return text  # JSON that is not a call is the answer itself
        self.calls.extend(calls)
        return ""


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _hermes_body(body: str) -> ParsedCall:
    text = body.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        match = re.search(r'"name"\s*:\s*"([^"]*)"', text)
        return ParsedCall(match.group(1) if match else None, None, text, error=str(err))
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ParsedCall(None, None, text, error="a tool call is an object with a name")
    return _with_arguments(value["name"], value.get("arguments", {}), text)


def _specsteer_body(body: str) -> ParsedCall:
    body = body.strip()
    brace = body.find("{")
    name, arguments = (body, "{}") if brace < 0 else (body[:brace].strip(), body[brace:])
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as err:
        return ParsedCall(name or None, None, arguments, error=str(err))
    return _with_arguments(name, value, arguments) if name else _no_name(arguments)


def _llama_call(text: str) -> ParsedCall:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        match = re.search(r'"name"\s*:\s*"([^"]*)"', text)
        return ParsedCall(match.group(1) if match else None, None, text, error=str(err))
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ParsedCall(None, None, text, error="a tool call is an object with a name")
    arguments = value.get("parameters", value.get("arguments", {}))
    return _with_arguments(value["name"], arguments, text)


def _with_arguments(name: str, arguments: Any, text: str) -> ParsedCall:
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            return ParsedCall(name, None, arguments, error=str(err))
    if not isinstance(arguments, dict):
        return ParsedCall(name, None, text, error="tool arguments must be a JSON object")
    return ParsedCall(name, arguments, json.dumps(arguments, ensure_ascii=False))


def _no_name(arguments: str) -> ParsedCall:
    return ParsedCall(None, None, arguments, error="a tool call needs a name")


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
