"""How often a pair calls the right tool with the right arguments, per method, on the world's
assistant episodes (the first turn of each: the request, with the episode's tools bound).

    python -m eval.world --out data/world        # the episodes: data/world/assistant/
    python -m eval.tool_calls --data data/world --split val --per-kind 20 \
        --out runs/tool-calls.json

For each kind of episode (recall, remember, weather, timer, currency, function) and each
method it counts the replies that hold a call, the calls of the right tool, and the calls
whose arguments equal the episode's exactly; the JSON has every reply.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.cli import command_parser
from eval.pair import DEMO_PAIR, load_pair
from eval.train_pair import load_episodes
from eval.world import assistant_tools

__all__ = ["episodes_by_kind", "score_calls"]

METHODS = ("generalist", "specialist", "specsteer")


def episodes_by_kind(episodes: Sequence[dict], per_kind: int) -> list[dict]:
    """The first `per_kind` episodes of each kind, kinds in order of first appearance."""
    kinds: dict[str, list[dict]] = {}
    for episode in episodes:
        kinds.setdefault(episode["kind"], [])
        if len(kinds[episode["kind"]]) < per_kind:
            kinds[episode["kind"]].append(episode)
    return [episode for group in kinds.values() for episode in group]


def score_calls(chat: Any, episodes: Sequence[dict]) -> tuple[dict[str, dict], list[dict]]:
    """(counts per kind, in order of first appearance, then "all": episodes, call, name,
    arguments; one record per reply)."""
    from langchain_core.messages import HumanMessage

    counts: dict[str, dict[str, int]] = {}
    records = []
    for episode in episodes:
        reply = chat.bind_tools(assistant_tools(episode)).invoke([HumanMessage(episode["request"])])
        call = reply.tool_calls[0] if reply.tool_calls else None
        want = episode["call"]
        hit = {
            "episodes": 1,
            "call": call is not None,
            "name": call is not None and call["name"] == want["name"],
            "arguments": call is not None
            and call["name"] == want["name"]
            and call["args"] == want["arguments"],
        }
        for kind in (episode["kind"], "all"):
            row = counts.setdefault(kind, dict.fromkeys(hit, 0))
            for key, value in hit.items():
                row[key] += int(value)
        records.append(
            {
                "kind": episode["kind"],
                "request": episode["request"],
                "want": want,
                "got": None if call is None else {"name": call["name"], "arguments": call["args"]},
                "content": reply.content,
                "invalid": [c.get("error") for c in reply.invalid_tool_calls],
                "accepted": reply.response_metadata.get("accepted"),
                "drafted": reply.response_metadata.get("drafted"),
            }
        )
    if counts:
        counts["all"] = counts.pop("all")  # the total after the kinds: each table ends on it
    return counts, records


def table(results: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown: per method and kind, % of replies with a call, the right tool, exact args."""
    lines = [
        "| method | kind | n | call % | right tool % | exact arguments % |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for method, counts in results.items():
        for kind, row in counts.items():
            n = row["episodes"]
            shares = " | ".join(
                f"{100 * row[key] / n:.0f}" for key in ("call", "name", "arguments")
            )
            lines.append(f"| {method} | {kind} | {n} | {shares} |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.tool_calls", __doc__)
    parser.add_argument("--data", default="data/world", help="a world folder with assistant/")
    parser.add_argument("--split", default="val", help="assistant/{split}.jsonl")
    parser.add_argument("--per-kind", type=int, default=20, help="episodes of each kind")
    parser.add_argument("--pair", default=str(DEMO_PAIR), help="folder with the pair")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--gamma", type=float, default=0.5, help="specsteer's γ")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per reply")
    parser.add_argument("--out", help="write the counts and every reply as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from langchain_specsteer import ChatSpecSteer

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.per_kind < 1:
        parser.error(f"--per-kind must be at least 1, got {args.per_kind}")
    episodes = episodes_by_kind(load_episodes(Path(args.data), args.split), args.per_kind)
    if not episodes:
        parser.error(f"no assistant episodes in {Path(args.data) / 'assistant'}/{args.split}.jsonl")
    specialist, generalist = load_pair(args.pair)
    results, replies = {}, {}
    for method in args.methods.split(","):
        chat = ChatSpecSteer(
            specialist=specialist,
            generalist=generalist,
            method=method,
            gamma=args.gamma,
            max_tokens=args.max_tokens,
        )
        results[method], replies[method] = score_calls(chat, episodes)
    print("\n".join(table(results)))
    report = {"pair": args.pair, "data": args.data, "split": args.split, "counts": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({**report, "replies": replies}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
    return report


if __name__ == "__main__":
    main()
