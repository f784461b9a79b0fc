"""Quiet retrieval: a retriever's documents without callbacks, so no tracer sees them."""

from __future__ import annotations

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

__all__ = ["aretrieve_privately", "retrieve_privately"]


def retrieve_privately(retriever: BaseRetriever, query: str) -> list[Document]:
    """Documents for `query` without callbacks, so no tracer ever sees the private results."""
    noop = CallbackManagerForRetrieverRun.get_noop_manager()
    # Calls the retriever's own hook, as BaseRetriever.invoke does, minus the callbacks.
    if retriever._new_arg_supported:
        return retriever._get_relevant_documents(query, run_manager=noop)
    return retriever._get_relevant_documents(query)


async def aretrieve_privately(retriever: BaseRetriever, query: str) -> list[Document]:
    """`retrieve_privately` from a coroutine (the retriever's async hook: by default its sync
    one in a worker thread)."""
    noop = AsyncCallbackManagerForRetrieverRun.get_noop_manager()
    if retriever._new_arg_supported:
        return await retriever._aget_relevant_documents(query, run_manager=noop)
    return await retriever._aget_relevant_documents(query)
