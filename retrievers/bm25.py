"""`PersonalBM25Retriever`: lexical search over a user's private memory with `bm25s`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from langchain_core.documents import Document
from pydantic import Field, PrivateAttr, model_validator

from retrievers.base import MemoryRetriever

__all__ = ["PersonalBM25Retriever"]


@dataclass(frozen=True)
class _Index:
    revision: int
    ids: np.ndarray  # (N,) memory ids in corpus order
    tokenizer: Any
    bm25: Any


class PersonalBM25Retriever(MemoryRetriever):
    """BM25 over `PrivateMemory` entries (bm25s: sparse matrices, fast on CPU).

    Tokenisation: lower-cased (`lower`), words of two or more letters/digits, `stopwords`
    removed ("en" or a list; None keeps all), optionally stemmed with a Snowball `stemmer`
    ("english", ...; needs PyStemmer, the `[stemming]` extra). The index is built on first
    use and rebuilt only when the memory's revision changes, never per query.

    Example:
        .. code-block:: python

            memory = PrivateMemory.for_user("alice")
            bm25 = PersonalBM25Retriever.from_memory(memory, k=5)
            bm25.invoke("blender review")
    """

    k1: float = Field(default=1.5, gt=0)
    """BM25 term-frequency saturation."""
    b: float = Field(default=0.75, ge=0, le=1)
    """BM25 length normalisation."""
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    """BM25 variant (bm25s names)."""
    stopwords: str | list[str] | None = "en"
    """Stopwords removed before indexing and querying: a language code, a list, or None."""
    stemmer: str | None = None
    """Snowball stemmer language (e.g. "english"), or None for no stemming."""
    lower: bool = True
    """Lower-case before tokenising."""
    min_score: float | None = None
    """Drop documents scoring below this (None returns the top k whatever their score)."""

    _stem: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_stemmer(self) -> PersonalBM25Retriever:
        if self.stemmer is not None:
            try:
                import Stemmer
            except ImportError as err:
                msg = 'stemmer= needs PyStemmer: pip install "langchain-specsteer[stemming]"'
                raise ImportError(msg) from err
            try:
                self._stem = Stemmer.Stemmer(self.stemmer).stemWord
            except KeyError as err:
                msg = f"stemmer: unknown language {self.stemmer!r}"
                raise ValueError(msg) from err
        return self

    def _build(self, revision: int) -> _Index:
        try:
            import bm25s
        except ImportError as err:
            msg = 'PersonalBM25Retriever needs bm25s: pip install "langchain-specsteer[retrievers]"'
            raise ImportError(msg) from err

        # bm25s pins its logger to DEBUG on import; let the application's logging decide.
        logging.getLogger("bm25s").setLevel(logging.NOTSET)

        entries = self.memory.list()
        tokenizer = bm25s.tokenization.Tokenizer(
            lower=self.lower, stopwords=self.stopwords or [], stemmer=self._stem
        )
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        if entries:
            corpus = tokenizer.tokenize(
                [e.text for e in entries], update_vocab=True, return_as="ids", show_progress=False
            )
            bm25.index(corpus, show_progress=False)
        ids = np.array([e.id for e in entries], dtype=np.int64)
        return _Index(revision, ids, tokenizer, bm25)

    def _search(self, query: str, k: int) -> list[Document]:
        index = self.index()
        n = len(index.ids)
        if n == 0:
            return []
        query_ids = index.tokenizer.tokenize(
            [query], update_vocab=False, return_as="ids", show_progress=False
        )
        positions, scores = index.bm25.retrieve(query_ids, k=min(k, n), show_progress=False)
        hits = [
            (int(index.ids[p]), float(s))
            for p, s in zip(positions[0], scores[0], strict=True)
            if self.min_score is None or s >= self.min_score
        ]
        entries = {e.id: e for e in self.memory.get([i for i, _ in hits])}
        return [self._document(entries[i], s) for i, s in hits if i in entries]
