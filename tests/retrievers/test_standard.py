"""LangChain's standard retriever tests (`langchain-tests`) on the three personal retrievers.

Each retriever is built from a few in-process texts (`from_texts`), its models loaded once per
session: all-MiniLM-L6-v2 for the dense retriever, the tiny random cross-encoder for the
reranker. The suite checks that `k` works at construction and at call time
(`invoke(query, k=1)` returns one document) and that invoke and ainvoke return documents.
"""

from __future__ import annotations

import functools

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from retrievers import PersonalBM25Retriever, PersonalDenseRetriever, RerankingRetriever

TEXTS = [
    "I grind fresh coffee beans every morning; the espresso is as good as the café's.",
    "The coffee grinder is loud, but the grind is even and fast.",
    "A cheap coffee maker: the carafe leaks and the coffee tastes burnt.",
    "These over-ear headphones have deep bass and a cheap plastic case.",
    "The tent kept my kids dry through a thunderstorm at the lake.",
    "The running shoes gave me blisters after two miles.",
]


class TestPersonalBM25Retriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return functools.partial(PersonalBM25Retriever.from_texts, TEXTS)

    @property
    def retriever_constructor_params(self) -> dict:
        return {"k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "coffee"


class TestPersonalDenseRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _encoder(self, minilm):
        self.encoder = minilm

    @property
    def retriever_constructor(self):
        return functools.partial(PersonalDenseRetriever.from_texts, TEXTS)

    @property
    def retriever_constructor_params(self) -> dict:
        return {"model": self.encoder, "model_name": "all-MiniLM-L6-v2", "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "a morning espresso"


class TestRerankingRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _scorer(self, tiny_cross_encoder):
        self.scorer = tiny_cross_encoder

    @property
    def retriever_constructor(self):
        return RerankingRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        base = PersonalBM25Retriever.from_texts(TEXTS, k=len(TEXTS))
        return {"base": base, "cross_encoder": self.scorer, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "coffee"


async def test_a_calls_k_wins_in_ainvoke_too_and_must_be_positive(tiny_cross_encoder):
    """langchain-tests checks a call's `k` in invoke only; the async hooks take it as well."""
    bm25 = PersonalBM25Retriever.from_texts(TEXTS, k=4)
    best = RerankingRetriever(base=bm25, cross_encoder=tiny_cross_encoder, k=4)
    for retriever in (bm25, best):
        assert len(await retriever.ainvoke("coffee", k=2)) == 2
        assert len(await retriever.ainvoke("coffee")) == 4
        for k in (0, 1.5, True):
            with pytest.raises(ValueError, match="k must be a positive integer"):
                retriever.invoke("coffee", k=k)
