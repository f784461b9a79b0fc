"""A personal assistant agent with private memory, on the shipped demo pair.

    python examples/personal_assistant.py --script      # a scripted conversation, traced
    python examples/personal_assistant.py               # type requests yourself
    python examples/personal_assistant.py --user 2      # another held-out user's memory
    python examples/personal_assistant.py --verbose     # also transformers' loading bars
    python examples/personal_assistant.py --script --pair build/demo_pair   # another pair

LangChain's own `create_agent` runs over `ChatSpecSteer` with two tools on the user's
`PrivateMemory` (an owner-only SQLite file on the device): `recall_memory(query)` and
`save_memory(text)`. The model decides when to call them. `recall_memory`'s result is
private: only the specialist reads it, and the generalist reads a placeholder in its place.
The memory starts with a held-out demo user's past reviews (`--user`, 0 by default), unless
`--memory` names a file that already holds entries. The demo pair was trained on a synthetic
review world, so ask it for a review "in my style" (it recalls your past reviews first) or to
"remember ..." something.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from langchain_specsteer import ChatSpecSteer, LocalGeneralist, LocalSpecialist, demo_pair
from langchain_specsteer.demo import demo_users, pick_user, quiet_loading
from retrievers import PrivateMemory, memory_tools, task_templates

Models = tuple[LocalSpecialist, LocalGeneralist]
REVIEW = task_templates("product_review")["document_template"]


def load_models(verbose: bool = False, pair: str | None = None) -> Models:
    """The shipped demo pair (or the pair in folder `pair`: specialist/, generalist/) on the
    CPU (transformers' loading bars only when `verbose`)."""
    specialist, generalist = (
        demo_pair() if pair is None else (f"{pair}/specialist", f"{pair}/generalist")
    )
    with quiet_loading(not verbose):
        return (
            LocalSpecialist.from_pretrained(specialist, device="cpu"),
            LocalGeneralist.from_pretrained(generalist, device="cpu"),
        )


def build_agent(
    models: Models, memory: PrivateMemory, max_tokens: int, method: str = "specsteer"
) -> Any:
    """`create_agent` over the pair, with the memory tools (`recall_memory` private)."""
    specialist, generalist = models
    chat = ChatSpecSteer(
        specialist=specialist,
        generalist=generalist,
        max_tokens=max_tokens,
        method=method,
        private_tools={"recall_memory"},  # the default, spelled out
    )
    return create_agent(chat, memory_tools(memory, k=3, document_template=REVIEW))


def remember_reviews(memory: PrivateMemory, profile: Sequence[dict]) -> None:
    """A user's past reviews as memory entries (the text, the other fields as metadata)."""
    for entry in profile:
        fields = {key: value for key, value in entry.items() if key != "reviewText"}
        memory.add([entry["reviewText"]], metadata=[fields])


def scripted(user: int = 0, pair: str | None = None) -> tuple[list[dict], list[str]]:
    """A held-out demo user's past reviews, and two requests: their next review in their
    style, and something to remember (`pair`: another pair's folder)."""
    record = pick_user(demo_users(pair), user)
    last = record["profile"][-1]
    request = (
        f'Write my review of the "{last["description"]}" in my style. '
        f'I rate it {round(last["overall"])} stars; the summary is "{last["summary"]}".'
    )
    turns = [request, "Remember that I prefer a glass jar on a blender."]
    return record["profile"][:-1], turns


def trace(messages: Sequence[BaseMessage]) -> list[str]:
    """One line per message of an agent run (tool results on the device are shown: this is
    the device)."""
    lines = []
    for message in messages:
        if isinstance(message, HumanMessage):
            lines.append(f"user: {message.content}")
        elif isinstance(message, AIMessage) and message.tool_calls:
            calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
            lines.append(f"assistant calls: {calls}")
        elif isinstance(message, AIMessage) and message.invalid_tool_calls:
            calls = ", ".join(f"{c['name']}({c['args']})" for c in message.invalid_tool_calls)
            lines.append(f"assistant writes a malformed call (not run): {calls}")
        elif isinstance(message, ToolMessage):
            lines.extend(f"  {message.name} → {line}" for line in message.content.splitlines())
        elif isinstance(message, AIMessage):
            lines.append(f"assistant: {message.content}")
    return lines


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", action="store_true", help="replay a scripted conversation")
    parser.add_argument("--memory", help="memory file (default: a temporary one)")
    parser.add_argument(
        "--user",
        type=int,
        default=0,
        help="held-out demo user whose past reviews start the memory (the shipped pair has 5: "
        "0 to 4; default: 0)",
    )
    parser.add_argument("--max-tokens", type=int, default=80, help="default: %(default)s")
    parser.add_argument("--verbose", action="store_true", help="show model-loading progress")
    parser.add_argument("--pair", help="folder with specialist/ and generalist/ (default: shipped)")
    parser.add_argument(
        "--method", default="specsteer", help="decoding method (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        record = pick_user(demo_users(args.pair), args.user)
    except ValueError as err:
        parser.error(f"--{err}")
    path = args.memory or Path(tempfile.mkdtemp(prefix="assistant-")) / "memory.db"
    models = load_models(args.verbose, args.pair)
    results = []
    with PrivateMemory(path) as memory:
        agent = build_agent(models, memory, args.max_tokens, args.method)
        if args.script:
            profile, turns = scripted(args.user, args.pair)
        else:
            profile = record["profile"]
            turns = (line.strip() for line in sys.stdin)
        if len(memory):
            print(f"[{len(memory)} entries already in the private memory {path}]")
        elif args.script:
            remember_reviews(memory, profile)
            print(f"[{len(memory)} past reviews in the private memory]")
        else:
            remember_reviews(memory, profile)
            print(
                f"[{len(memory)} past reviews of demo user {args.user} ({record['user']}) in the "
                'private memory. Ask for a review "in my style", e.g. of a product with a '
                'summary and a rating, or to "remember ..." something; one request a line.]'
            )
        for turn in turns:
            if not turn:
                continue
            state = agent.invoke({"messages": [HumanMessage(turn)]})
            messages = state["messages"]
            print("\n".join(trace(messages)) + "\n")
            calls = [c["name"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
            results.append(
                {"turn": turn, "messages": messages, "calls": calls, "answer": messages[-1].content}
            )
        results.append({"memories": len(memory)})
    return results


if __name__ == "__main__":
    main()
