"""What every personal retriever shares: a `PrivateMemory` to search, and quiet retrieval."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr

from retrievers.memory import MemoryEntry, PrivateMemory
from retrievers.privacy import retrieve_privately

__all__ = [
    "HUB_TIMEOUT",
    "MemoryRetriever",
    "call_k",
    "hub_unreachable",
    "load_sentence_model",
    "retrieve_privately",
]


class MemoryRetriever(BaseRetriever):
    """A retriever over a user's `PrivateMemory`; subclasses score entries against a query."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    memory: PrivateMemory
    """The on-device store searched; it is re-read whenever its revision changes."""
    k: int = Field(default=5, ge=1)
    """How many documents to return (a call's `k`, as in `invoke(query, k=2)`, wins)."""

    _built: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def index(self) -> Any:
        """The index for the memory's current revision (rebuilt only when the memory changed)."""
        revision = self.memory.revision
        with self._lock:
            if self._built is None or self._built.revision != revision:
                self._built = self._build(revision)
            return self._built

    def _build(self, revision: int) -> Any:
        """A search structure over every entry, with a `revision` attribute."""
        raise NotImplementedError

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self._search(query, call_k(k, self.k))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        return await run_in_executor(None, self._search, query, call_k(k, self.k))

    def _search(self, query: str, k: int) -> list[Document]:
        """The `k` best entries for `query`, best first, as documents."""
        raise NotImplementedError

    @classmethod
    def from_memory(cls, memory: PrivateMemory, **kwargs: Any) -> MemoryRetriever:
        """Search an existing store (`k=` and the retriever's other fields as keywords)."""
        return cls(memory=memory, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        metadatas: Sequence[dict] | None = None,
        **kwargs: Any,
    ) -> MemoryRetriever:
        """Search texts held in an in-process store (nothing is written to disk)."""
        memory = PrivateMemory(":memory:")
        texts = list(texts)
        if texts:
            memory.add(texts, metadatas)
        return cls(memory=memory, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[Document], **kwargs: Any) -> MemoryRetriever:
        """Search LangChain documents (their metadata is kept)."""
        documents = list(documents)
        return cls.from_texts(
            [d.page_content for d in documents], [dict(d.metadata) for d in documents], **kwargs
        )

    @staticmethod
    def _document(entry: MemoryEntry, score: float) -> Document:
        metadata = {**entry.metadata, "memory_id": entry.id, "score": float(score)}
        return Document(id=str(entry.id), page_content=entry.text, metadata=metadata)


def call_k(k: object, default: int) -> int:
    """How many documents a call returns: its `k` when given (LangChain's convention: a call's
    `k` wins over the retriever's), else `default`; a `k` below 1 is a ValueError."""
    if k is None:
        return default
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        msg = f"k must be a positive integer (how many documents to return), got {k!r}"
        raise ValueError(msg)
    return k


HUB_TIMEOUT = 3.0
"""Seconds the Hugging Face hub has to answer before a hub id is loaded from the local cache
alone (instead of huggingface_hub's retries, 26-50 s without a network)."""


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be asked for a model now, or None when it answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT)
    except Exception as err:  # no answer at all: name resolution, refused, timeout, proxy
        return f"{constants.ENDPOINT}: {err}"
    return None


def load_sentence_model(kind: str, model: str, device: str | None) -> Any:
    """A `SentenceTransformer` or `CrossEncoder` from a hub id or local folder, or a clear error.

    A hub id is fetched from the Hugging Face hub, or read from the local cache alone when the
    hub does not answer within `HUB_TIMEOUT` (or `HF_HUB_OFFLINE` is set); a model in neither
    place is a ValueError at once, saying that a local folder works.

    Args:
        kind: "SentenceTransformer" or "CrossEncoder".
        model: hub id (e.g. "BAAI/bge-small-en-v1.5") or a local folder.
        device: "cpu", "cuda", ...; None lets sentence-transformers choose.
    """
    try:
        import sentence_transformers
    except ImportError as err:
        msg = f'{kind} needs sentence-transformers: pip install "langchain-specsteer[retrievers]"'
        raise ImportError(msg) from err
    load = getattr(sentence_transformers, kind)
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") > 1
    if looks_local and not path.is_dir():
        msg = f"model path {model!r} does not exist (or is not a folder)"
        raise ValueError(msg)
    try:
        if looks_local:
            return load(str(path), device=device)
        unreachable = hub_unreachable()
        if unreachable is None:
            return load(model, device=device)
        return load(model, device=device, local_files_only=True)
    except (OSError, ValueError) as err:
        if looks_local or unreachable is None:
            msg = f"could not load the {kind} model {model!r}: {err}"
            raise ValueError(msg) from err
        msg = (
            f"could not load the {kind} model {model!r}: the Hugging Face hub is unreachable "
            f"({unreachable}) and the model is not in the local cache. A local folder works: "
            f"download it where the hub is reachable (`hf download {model} --local-dir DIR`) "
            "and pass DIR instead of the hub id"
        )
        raise ValueError(msg) from None
