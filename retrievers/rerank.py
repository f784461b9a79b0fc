"""`RerankingRetriever`: re-orders another retriever's candidates with a cross-encoder."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from retrievers.base import call_k, load_sentence_model
from retrievers.privacy import aretrieve_privately, retrieve_privately

__all__ = ["RerankingRetriever"]


class RerankingRetriever(BaseRetriever):
    """Asks `base` for candidates, scores each (query, text) pair with a cross-encoder, keeps k.

    Example:
        .. code-block:: python

            best = RerankingRetriever(base=bm25, cross_encoder="BAAI/bge-reranker-base", k=3)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    base: BaseRetriever
    """Where the candidates come from (give it a larger k than this retriever's)."""
    cross_encoder: str | Any = "BAAI/bge-reranker-base"
    """A hub id or local folder of a sentence-transformers CrossEncoder, or a loaded one."""
    k: int = Field(default=3, ge=1)
    """How many documents to keep (a call's `k`, as in `invoke(query, k=2)`, wins)."""
    device: str | None = None
    """Where the cross-encoder runs; None lets sentence-transformers choose."""
    batch_size: int = Field(default=32, ge=1)
    """Pairs scored per batch."""

    _scorer: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_scorer(self) -> RerankingRetriever:
        if isinstance(self.cross_encoder, str):
            self._scorer = load_sentence_model("CrossEncoder", self.cross_encoder, self.device)
        else:
            self._scorer = self.cross_encoder
        return self

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self._rerank(query, retrieve_privately(self.base, query), call_k(k, self.k))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        candidates = await aretrieve_privately(self.base, query)
        return await run_in_executor(None, self._rerank, query, candidates, call_k(k, self.k))

    def _rerank(self, query: str, candidates: list[Document], k: int) -> list[Document]:
        """The `k` best of `candidates` by the cross-encoder's score, best first."""
        if not candidates:
            return []
        scores = self._scorer.predict(
            [(query, d.page_content) for d in candidates],
            batch_size=self.batch_size,
            show_progress_bar=False,
        )
        ranked = sorted(zip(scores, candidates, strict=True), key=lambda pair: -float(pair[0]))
        return [
            Document(
                id=doc.id,
                page_content=doc.page_content,
                metadata={**doc.metadata, "rerank_score": float(score)},
            )
            for score, doc in ranked[:k]
        ]
