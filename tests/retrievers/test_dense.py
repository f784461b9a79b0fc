"""`PersonalDenseRetriever` on the locally shipped all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from retrievers import PersonalDenseRetriever, PrivateMemory

ENTRIES = [
    "The tent kept my kids dry through a thunderstorm at the lake.",
    "These over-ear headphones have deep bass and a cheap plastic case.",
    "I grind fresh beans every morning; my espresso is finally as good as the café's.",
    "The running shoes gave me blisters after two miles.",
]


class CountingEncoder:
    """A SentenceTransformer that counts the texts it embeds."""

    def __init__(self, model):
        self.model, self.texts = model, []

    def encode(self, texts, **kwargs):
        self.texts += list(texts)
        return self.model.encode(texts, **kwargs)


def test_semantic_match_ranks_first_with_cosine_scores(minilm_path, minilm):
    dense = PersonalDenseRetriever.from_texts(ENTRIES, model=minilm_path, k=4, device="cpu")
    docs = dense.invoke("coffee")
    assert docs[0].page_content == ENTRIES[2]  # no word in common with the query
    vectors = minilm.encode([*ENTRIES, "coffee"], normalize_embeddings=True)
    expected = {text: float(vectors[i] @ vectors[-1]) for i, text in enumerate(ENTRIES)}
    for doc in docs:
        assert doc.metadata["score"] == pytest.approx(expected[doc.page_content], abs=1e-5)


def test_embeddings_are_computed_once_per_entry(tmp_path, minilm):
    path = tmp_path / "carol.db"
    with PrivateMemory(path) as memory:
        memory.add(ENTRIES)
        first = CountingEncoder(minilm)
        PersonalDenseRetriever.from_memory(memory, model=first, model_name="minilm").invoke("x")
        assert first.texts == [*ENTRIES, "x"]
        assert set(memory.cached_embeddings("minilm", [e.id for e in memory])) == {1, 2, 3, 4}
    with PrivateMemory(path) as reopened:  # a restart: the cache is in the store itself
        second = CountingEncoder(minilm)
        dense = PersonalDenseRetriever.from_memory(reopened, model=second, model_name="minilm")
        dense.invoke("coffee")
        reopened.add("Quokkas are the happiest animals.")
        assert dense.invoke("a cheerful marsupial")[0].page_content.startswith("Quokkas")
        assert second.texts == [
            "coffee",
            "Quokkas are the happiest animals.",
            "a cheerful marsupial",
        ]


def test_cached_vectors_match_fresh_embeddings(tmp_path, minilm):
    with PrivateMemory(tmp_path / "d.db") as memory:
        ids = memory.add(ENTRIES)
        PersonalDenseRetriever.from_memory(memory, model=minilm, model_name="m").invoke("q")
        cached = memory.cached_embeddings("m", ids)
        fresh = minilm.encode(ENTRIES, normalize_embeddings=True)
        np.testing.assert_allclose(np.stack([cached[i] for i in ids]), fresh, atol=1e-6)


def test_bad_models_fail_clearly(tmp_path, minilm):
    with pytest.raises(ValueError, match="does not exist"):
        PersonalDenseRetriever.from_texts(ENTRIES, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="model_name is required"):
        PersonalDenseRetriever.from_texts(ENTRIES, model=minilm)


def test_empty_memory(minilm):
    dense = PersonalDenseRetriever.from_texts([], model=minilm, model_name="m")
    assert dense.invoke("anything") == []
