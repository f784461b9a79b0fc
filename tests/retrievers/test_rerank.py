"""`RerankingRetriever` with a tiny cross-encoder built in the test session."""

from __future__ import annotations

import pytest
from sentence_transformers import CrossEncoder

from langchain_specsteer.tiny import CORPUS
from retrievers import PersonalBM25Retriever, RerankingRetriever


def test_candidates_are_reordered_by_the_cross_encoder(tiny_cross_encoder_dir):
    base = PersonalBM25Retriever.from_texts(CORPUS, k=8, stopwords=None)
    query = "the blender is great"
    reranked = RerankingRetriever(base=base, cross_encoder=tiny_cross_encoder_dir, k=3)
    docs = reranked.invoke(query)
    candidates = base.invoke(query)
    scores = CrossEncoder(tiny_cross_encoder_dir).predict(
        [(query, d.page_content) for d in candidates]
    )
    expected = [
        d.page_content
        for _, d in sorted(zip(scores, candidates, strict=False), key=lambda p: -p[0])
    ]
    assert [d.page_content for d in docs] == expected[:3]
    assert [d.metadata["rerank_score"] for d in docs] == sorted(
        (d.metadata["rerank_score"] for d in docs), reverse=True
    )
    assert all("score" in d.metadata for d in docs)  # the base retriever's score is kept


def test_empty_base_and_bad_paths(tmp_path, tiny_cross_encoder_dir):
    empty = PersonalBM25Retriever.from_texts([])
    assert RerankingRetriever(base=empty, cross_encoder=tiny_cross_encoder_dir).invoke("q") == []
    with pytest.raises(ValueError, match="does not exist"):
        RerankingRetriever(base=empty, cross_encoder=str(tmp_path / "missing"))
