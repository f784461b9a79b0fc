"""eval.tool_calls: the counts of calls, right tools and exact arguments, and the command."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage

from eval.tool_calls import episodes_by_kind, main, score_calls
from eval.train_pair import load_episodes


class Scripted:
    """A chat model stand-in: one fixed reply per request, the tools it was bound recorded."""

    def __init__(self, replies: dict[str, AIMessage]):
        self.replies, self.bound = replies, []

    def bind_tools(self, tools):
        self.bound.append([tool["function"]["name"] for tool in tools])
        return self

    def invoke(self, messages):
        return self.replies[messages[-1].content]


def test_counts_calls_right_tools_and_exact_arguments(world_dir):
    episodes = episodes_by_kind(load_episodes(world_dir, "val"), 1)
    kinds = [e["kind"] for e in episodes]
    assert len(kinds) == len(set(kinds)) >= 4
    right, wrong_args, wrong_tool, none = episodes[:4]

    def call(name, args):
        return AIMessage("", tool_calls=[{"name": name, "args": args, "id": "c"}])

    chat = Scripted(
        {
            right["request"]: call(right["call"]["name"], right["call"]["arguments"]),
            wrong_args["request"]: call(wrong_args["call"]["name"], {"x": 1}),
            wrong_tool["request"]: call("no_such_tool", wrong_tool["call"]["arguments"]),
            none["request"]: AIMessage("Sure."),
        }
    )
    counts, records = score_calls(chat, episodes[:4])
    assert list(counts) == [*kinds[:4], "all"]  # the kinds in order of appearance, then all
    assert counts["all"] == {"episodes": 4, "call": 3, "name": 2, "arguments": 1}
    assert counts[right["kind"]] == {"episodes": 1, "call": 1, "name": 1, "arguments": 1}
    assert counts[none["kind"]] == {"episodes": 1, "call": 0, "name": 0, "arguments": 0}
    assert [r["got"] for r in records][3] is None and records[3]["content"] == "Sure."
    assert all(right["call"]["name"] in names for names in chat.bound[:1])


def test_the_command_scores_each_method_and_writes_every_reply(
    world_dir, micro_pair_dir, tmp_path, capsys
):
    out = tmp_path / "calls.json"
    argv = ["--data", str(world_dir), "--pair", str(micro_pair_dir / "export")]
    report = main([*argv, "--per-kind", "1", "--max-tokens", "4", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["counts"] == report["counts"]
    for method in ("generalist", "specialist", "specsteer"):
        replies = saved["replies"][method]
        assert len(replies) == report["counts"][method]["all"]["episodes"] >= 4
        assert report["counts"][method]["all"]["call"] == sum(r["got"] is not None for r in replies)
    lines = capsys.readouterr().out.splitlines()
    for method in ("generalist", "specialist", "specsteer"):
        rows = [line for line in lines if line.startswith(f"| {method} |")]
        assert rows[-1].startswith(f"| {method} | all |")  # the total closes each method
        assert sum(row.startswith(f"| {method} | all |") for row in rows) == 1
    with pytest.raises(SystemExit):
        main([*argv, "--per-kind", "0"])
    assert "--per-kind must be at least 1" in capsys.readouterr().err
