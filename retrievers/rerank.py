"""`RerankingRetriever`: re-orders another retriever's candidates with a cross-encoder."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from retrievers.base import load_sentence_model
from retrievers.privacy import retrieve_privately

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
    """How many documents to keep."""
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
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        candidates = retrieve_privately(self.base, query)
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
            for score, doc in ranked[: self.k]
        ]
