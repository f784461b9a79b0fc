"""`memory_tools`: save_memory and recall_memory over a `PrivateMemory`, as agents call them."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_specsteer.chat_models import DEFAULT_PRIVATE_TOOLS
from langchain_specsteer.tiny import CORPUS
from retrievers import PRIVATE_MEMORY_TOOLS, PrivateMemory, memory_tools, task_templates
from retrievers.tools import NO_MEMORIES, SAVED

PLANTED = "My zebra-striped espresso machine hisses every morning like a kettle."


@pytest.fixture
def memory(tmp_path):
    with PrivateMemory(tmp_path / "alice.db") as memory:
        yield memory


def by_name(tools):
    return {tool.name: tool for tool in tools}


def test_the_tools_and_their_argument_schemas(memory):
    tools = by_name(memory_tools(memory))
    assert list(tools) == ["save_memory", "recall_memory"]
    assert tools["save_memory"].args == {"text": {"title": "Text", "type": "string"}}
    assert tools["recall_memory"].args == {"query": {"title": "Query", "type": "string"}}
    assert tools["recall_memory"].description == "Search the user's private memory."
    assert PRIVATE_MEMORY_TOOLS == DEFAULT_PRIVATE_TOOLS == {"recall_memory"}  # private by default


def test_saved_notes_are_recalled_best_first(memory):
    tools = by_name(memory_tools(memory, k=2))
    assert tools["recall_memory"].invoke({"query": "espresso"}) == NO_MEMORIES
    for text in [*CORPUS[:6], PLANTED]:
        assert tools["save_memory"].invoke({"text": text}) == SAVED
    assert len(memory) == 7 and memory.list()[-1].text == PLANTED
    recalled = tools["recall_memory"].invoke({"query": "espresso machine"}).split("\n")
    assert len(recalled) == 2 and recalled[0] == PLANTED
    assert (
        asyncio.run(tools["recall_memory"].ainvoke({"query": "espresso machine"})).split("\n")
        == recalled
    )


def test_recalled_entries_are_rendered_with_the_document_template(memory):
    memory.add(
        ["Honestly, the grind is even."],
        metadata=[{"overall": 4.0, "description": "Kelmo grinder", "summary": "Great grinder"}],
    )
    memory.add(["A plain note about the grinder."])  # no review fields: its text alone
    template = task_templates("product_review")["document_template"]
    recall = by_name(memory_tools(memory, document_template=template))["recall_memory"]
    lines = set(recall.invoke({"query": "grinder"}).split("\n"))
    review = '- 4.0-star review of "Kelmo grinder", titled "Great grinder": '
    assert lines == {review + "Honestly, the grind is even.", "A plain note about the grinder."}


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.events = []

    def on_retriever_start(self, serialized, query, **kwargs):
        self.events.append(query)


def test_recall_searches_without_retriever_callbacks(memory):
    memory.add([PLANTED])
    recorder = Recorder()
    recall = by_name(memory_tools(memory))["recall_memory"]
    assert recall.invoke({"query": "espresso"}, {"callbacks": [recorder]}) == PLANTED
    assert recorder.events == []


def test_k_must_be_a_positive_integer(memory):
    for k in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            memory_tools(memory, k=k)
