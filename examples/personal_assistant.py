"""A personal assistant with private memory, on the shipped demo pair.

    python examples/personal_assistant.py --script      # a scripted conversation
    python examples/personal_assistant.py               # type turns; "remember: ..." stores
    python examples/personal_assistant.py --verbose     # also transformers' loading bars

Each turn goes through one LangChain runnable: "remember: <text>" writes the text into the
user's `PrivateMemory` (an owner-only SQLite file on the device); any other turn is a
request that `ChatSpecSteer` answers, with the specialist reading the memories a BM25
retriever finds for it. The generalist never sees the memory. The demo pair was trained to
write product reviews in a user's style, so remembered reviews are what steer it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableBranch, RunnableLambda

from langchain_specsteer import ChatSpecSteer, LocalGeneralist, LocalSpecialist, demo_pair
from langchain_specsteer.demo import demo_users, quiet_loading
from retrievers import PersonalBM25Retriever, PrivateMemory, task_templates

PREFIX = "remember:"
Models = tuple[LocalSpecialist, LocalGeneralist]


def load_models(verbose: bool = False) -> Models:
    """The shipped demo pair on the CPU (transformers' loading bars only when `verbose`)."""
    specialist, generalist = demo_pair()
    with quiet_loading(not verbose):
        return (
            LocalSpecialist.from_pretrained(specialist, device="cpu"),
            LocalGeneralist.from_pretrained(generalist, device="cpu"),
        )


def load_chat(models: Models, memory: PrivateMemory, max_tokens: int) -> ChatSpecSteer:
    """The demo pair as a chat model whose private context is retrieved from `memory`."""
    specialist, generalist = models
    return ChatSpecSteer(
        specialist=specialist,
        generalist=generalist,
        retriever=PersonalBM25Retriever.from_memory(memory, k=3),
        max_tokens=max_tokens,
        **task_templates("product_review"),
    )


def assistant(chat: ChatSpecSteer, memory: PrivateMemory) -> Any:
    """One agent step: store a memory, or answer a request steered by the memories."""

    def remember(turn: str) -> dict[str, Any]:
        text = turn[len(PREFIX) :].strip()
        try:  # a past review as JSON: {"reviewText": ..., "summary": ..., ...}
            fact = json.loads(text)
            memory.add(fact.pop("reviewText"), fact)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
            memory.add(text)  # a plain note: rendered as its text alone

        return {"stored": len(memory), "answer": None}

    def answer(turn: str) -> dict[str, Any]:
        message = chat.invoke(turn)
        return {"answer": message.content, "metadata": message.response_metadata}

    return RunnableBranch((lambda turn: turn.startswith(PREFIX), RunnableLambda(remember)), answer)


def scripted_turns(user: int = 0, memories: int = 4) -> list[str]:
    """A held-out demo user's past reviews as memories, then that user's request."""
    record = demo_users()[user]
    stored = [PREFIX + json.dumps(entry) for entry in record["profile"][:memories]]
    return [*stored, record["input"]]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", action="store_true", help="replay a scripted conversation")
    parser.add_argument("--memory", help="memory file (default: a temporary one)")
    parser.add_argument("--max-tokens", type=int, default=80, help="default: %(default)s")
    parser.add_argument("--verbose", action="store_true", help="show model-loading progress")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="assistant-")
    models = load_models(args.verbose)  # once: both chats below share the two models
    with PrivateMemory(args.memory or Path(folder) / "memory.db") as memory:
        chat = load_chat(models, memory, args.max_tokens)
        step = assistant(chat, memory)
        turns = scripted_turns() if args.script else (line.strip() for line in sys.stdin)
        results = []
        for turn in turns:
            if not turn:
                continue
            result = step.invoke(turn)
            results.append({"turn": turn, **result})
            if result["answer"] is None:
                print(f"[stored memory #{result['stored']}]")
                continue
            info = result["metadata"]
            print(f"> {turn}\n{result['answer']}")
            print(f"  (acceptance {info['acceptance_rate']:.0%}, {info['retrieved']} memories)")
        if args.script:  # the same request with no memory, for contrast
            with PrivateMemory(Path(folder) / "empty.db") as empty:
                plain = assistant(load_chat(models, empty, args.max_tokens), empty).invoke(turn)
            print(f"\nWithout the memories:\n{plain['answer']}")
            results.append({"turn": turn, "without_memory": True, **plain})
    return results


if __name__ == "__main__":
    main()
