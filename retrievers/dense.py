"""`PersonalDenseRetriever`: embedding search over a user's private memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.documents import Document
from pydantic import Field, PrivateAttr, model_validator

from retrievers.base import MemoryRetriever, load_sentence_model

__all__ = ["BGE_QUERY_PROMPT", "PersonalDenseRetriever"]

BGE_QUERY_PROMPT = "Represent this sentence for searching relevant passages: "
"""The query instruction BGE English v1.5 models were trained with (optional for them)."""


@dataclass(frozen=True)
class _Matrix:
    revision: int
    ids: np.ndarray  # (N,) memory ids
    vectors: np.ndarray  # (N, d) unit-norm float32


class PersonalDenseRetriever(MemoryRetriever):
    """Cosine similarity between the query and each entry, with a sentence-transformers model.

    Each entry's embedding is computed once per model and cached in the memory store itself,
    so restarts and new entries only embed what is new.

    Example:
        .. code-block:: python

            dense = PersonalDenseRetriever.from_memory(memory, model="BAAI/bge-small-en-v1.5")
    """

    model: str | Any = "BAAI/bge-small-en-v1.5"
    """A hub id or local folder of a sentence-transformers bi-encoder, or a loaded one."""
    model_name: str | None = None
    """Key of the embedding cache (default: `model` when it is a string)."""
    query_prompt: str = ""
    """Prepended to queries, e.g. `BGE_QUERY_PROMPT`."""
    device: str | None = None
    """Where the encoder runs ("cpu", "cuda"); None lets sentence-transformers choose."""
    batch_size: int = Field(default=32, ge=1)
    """Entries embedded per batch."""

    _encoder: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_encoder(self) -> PersonalDenseRetriever:
        if isinstance(self.model, str):
            self._encoder = load_sentence_model("SentenceTransformer", self.model, self.device)
            self.model_name = self.model_name or self.model
        else:
            self._encoder = self.model
            if self.model_name is None:
                msg = "model_name is required with a loaded model: it keys the embedding cache"
                raise ValueError(msg)
        return self

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = self._encoder.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)  # (n, d)

    def _build(self, revision: int) -> _Matrix:
        entries = self.memory.list()
        ids = [e.id for e in entries]
        cached = self.memory.cached_embeddings(self.model_name, ids)
        fresh = [e for e in entries if e.id not in cached]
        if fresh:
            vectors = self._embed([e.text for e in fresh])
            new = dict(zip([e.id for e in fresh], vectors, strict=True))
            self.memory.cache_embeddings(self.model_name, new)
            cached.update(new)
        matrix = np.stack([cached[i] for i in ids]) if ids else np.zeros((0, 0), np.float32)
        return _Matrix(revision, np.array(ids, dtype=np.int64), matrix)

    def _search(self, query: str, k: int) -> list[Document]:
        index = self.index()
        if len(index.ids) == 0:
            return []
        scores = index.vectors @ self._embed([self.query_prompt + query])[0]  # (N,)
        top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]  # best first
        entries = {e.id: e for e in self.memory.get(index.ids[top].tolist())}
        hits = [(int(index.ids[p]), float(scores[p])) for p in top]
        return [self._document(entries[i], s) for i, s in hits if i in entries]
