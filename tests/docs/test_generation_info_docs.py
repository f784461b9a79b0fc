"""docs/index.md's table of `generation_info` names every key a generation reports, and no
other: from `SpecSteerLLM` and `ChatSpecSteer`, in process, with and without a retriever."""

from __future__ import annotations

import re
from pathlib import Path

from langchain_core.messages import HumanMessage

from langchain_specsteer import ChatSpecSteer, SpecSteerLLM
from retrievers import PersonalBM25Retriever

ROOT = Path(__file__).resolve().parents[2]
ONLY_SOMETIMES = {"draft_tokens_clamped_to"}  # a verifier service shortened draft_tokens


def documented() -> dict[str, str]:
    page = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    section = page.split("## What comes back", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`.*?) \| (.+) \|$", section, re.M)
    return {key: what for keys, what in rows for key in re.findall(r"`(\w+)`", keys)}


def test_every_generation_info_key_is_documented(specialist, generalist):
    fields = {"specialist": specialist, "generalist": generalist, "max_new_tokens": 4}
    llm = SpecSteerLLM(**fields)
    [[generation]] = llm.generate(["a review"], private_context="notes").generations
    seen = set(generation.generation_info)
    retriever = PersonalBM25Retriever.from_texts(["a note", "another note"])
    generation = SpecSteerLLM(**fields, retriever=retriever).generate(["a note"]).generations[0][0]
    assert generation.generation_info["retrieved"] == 2
    chat = ChatSpecSteer(specialist=specialist, generalist=generalist, max_tokens=4)
    message = chat.invoke([HumanMessage("a review")])
    chat_keys = set(message.response_metadata)
    assert chat_keys > seen  # the chat model reports the same, and its model's name
    assert message.usage_metadata["input_tokens"] == message.response_metadata["prompt_tokens"]
    table = documented()
    assert set(table) == chat_keys | ONLY_SOMETIMES
    assert all(what.strip() for what in table.values())
