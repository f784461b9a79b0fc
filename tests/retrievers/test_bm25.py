"""`PersonalBM25Retriever`: ranking, persistence, live updates, options, bad input."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from langchain_specsteer.tiny import CORPUS
from retrievers import PersonalBM25Retriever, PrivateMemory

PLANTED = "My zebra-striped espresso machine hisses every morning like a kettle."


def distractors(n: int = 60) -> list[str]:
    return [f"{CORPUS[i % len(CORPUS)]} (entry {i})" for i in range(n)]


@pytest.fixture
def memory(tmp_path):
    with PrivateMemory(tmp_path / "alice.db") as memory:
        memory.add([*distractors()[:30], PLANTED, *distractors()[30:]])
        yield memory


def test_a_planted_entry_ranks_first(memory):
    docs = PersonalBM25Retriever.from_memory(memory, k=5).invoke("espresso machine review")
    assert docs[0].page_content == PLANTED
    assert len(docs) == 5
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    assert docs[0].metadata["memory_id"] == int(docs[0].id)


def test_results_are_stable_across_restarts(tmp_path):
    path = tmp_path / "bob.db"
    with PrivateMemory(path) as memory:
        memory.add([*distractors(), PLANTED], [{"n": i} for i in range(61)])
        before = PersonalBM25Retriever.from_memory(memory, k=4).invoke("kettle espresso storm")
    with PrivateMemory(path) as reopened:
        after = PersonalBM25Retriever.from_memory(reopened, k=4).invoke("kettle espresso storm")
    assert [(d.id, d.page_content, d.metadata) for d in after] == [
        (d.id, d.page_content, d.metadata) for d in before
    ]


def test_memory_changes_reach_the_index_without_rebuilding_per_query(memory):
    bm25 = PersonalBM25Retriever.from_memory(memory, k=3)
    first = bm25.invoke("espresso")
    index = bm25.index()
    bm25.invoke("tent storm")
    assert bm25.index() is index  # unchanged memory: the same index serves every query
    memory.delete([int(first[0].id)])
    assert PLANTED not in [d.page_content for d in bm25.invoke("espresso machine")]
    assert bm25.index() is not index
    [new_id] = memory.add("A brand-new quokka blender arrived today.")
    assert bm25.invoke("quokka")[0].id == str(new_id)


def test_stemming_and_stopwords_options():
    texts = ["The storms flooded the campsite.", "Sunny days at the lake."]
    plain = PersonalBM25Retriever.from_texts(texts, k=1, min_score=1e-9)
    stemmed = PersonalBM25Retriever.from_texts(texts, k=1, stemmer="english", min_score=1e-9)
    assert plain.invoke("storm") == []  # "storm" ≠ "storms" without stemming
    assert stemmed.invoke("storm")[0].page_content == texts[0]
    keep_all = PersonalBM25Retriever.from_texts(texts, k=1, stopwords=None, min_score=1e-9)
    assert plain.invoke("the") == []  # a stopword alone matches nothing
    assert keep_all.invoke("the")[0].page_content == texts[0]  # "the" twice in the first


def test_from_texts_and_documents_keep_metadata():
    from langchain_core.documents import Document

    docs = [Document(page_content=PLANTED, metadata={"rating": 5}), Document(page_content="x y")]
    [hit] = PersonalBM25Retriever.from_documents(docs, k=1).invoke("espresso")
    assert hit.metadata["rating"] == 5 and hit.page_content == PLANTED
    by_text = PersonalBM25Retriever.from_texts([PLANTED, "x y"], [{"rating": 5}, {}], k=1)
    assert by_text.invoke("espresso")[0].metadata == hit.metadata


def test_empty_memory_returns_nothing_and_async_batch_work(tmp_path):
    with PrivateMemory(tmp_path / "empty.db") as memory:
        bm25 = PersonalBM25Retriever.from_memory(memory)
        assert bm25.invoke("anything") == []
        memory.add([PLANTED, "Tents and storms."])
        assert asyncio.run(bm25.ainvoke("espresso"))[0].page_content == PLANTED
        assert [r[0].page_content for r in bm25.batch(["espresso", "storms"])] == [
            PLANTED,
            "Tents and storms.",
        ]


def test_bad_options_fail_at_construction(memory):
    with pytest.raises(ValidationError, match="k"):
        PersonalBM25Retriever.from_memory(memory, k=0)
    with pytest.raises(ValueError, match="stemmer: unknown language 'klingon'"):
        PersonalBM25Retriever.from_memory(memory, stemmer="klingon")
    with pytest.raises(ValidationError, match="method"):
        PersonalBM25Retriever.from_memory(memory, method="tf-idf")
