"""LangChain tools over a `PrivateMemory`: `save_memory` and `recall_memory`, for agents.

    tools = memory_tools(memory)                      # [save_memory, recall_memory]
    chat = ChatSpecSteer(..., private_tools=PRIVATE_MEMORY_TOOLS)

`recall_memory`'s result is the user's private history: name it in `ChatSpecSteer`'s
`private_tools` (`PRIVATE_MEMORY_TOOLS`, the default there) and only the specialist reads it.
Both tools run on the device; searching uses the given retriever or BM25 over the memory, with
callbacks off (`retrieve_privately`), so tracers never see the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from langchain_core.documents import Document
from langchain_core.tools import BaseTool, StructuredTool

from retrievers.privacy import retrieve_privately
from retrievers.templates import render_document

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever

    from retrievers.memory import PrivateMemory

__all__ = ["NO_MEMORIES", "PRIVATE_MEMORY_TOOLS", "SAVED", "memory_tools", "recall_text"]

PRIVATE_MEMORY_TOOLS = frozenset({"recall_memory"})
"""The memory tools whose results are private: only the specialist reads them."""
NO_MEMORIES = "No memories found."
SAVED = "Saved."


def recall_text(documents: Sequence[Document], document_template: str = "{page_content}") -> str:
    """What `recall_memory` returns: each document rendered, one a line."""
    if not documents:
        return NO_MEMORIES
    return "\n".join(render_document(document, document_template) for document in documents)


def memory_tools(
    memory: PrivateMemory,
    *,
    k: int = 3,
    document_template: str = "{page_content}",
    retriever: BaseRetriever | None = None,
) -> list[BaseTool]:
    """`save_memory(text)` and `recall_memory(query)` over `memory`.

    Args:
        memory: the user's on-device store; `save_memory` adds to it.
        k: how many entries `recall_memory` returns (BM25, when no `retriever` is given).
        document_template: renders each recalled entry ({page_content} and metadata fields;
            `task_templates(task)["document_template"]`).
        retriever: searches instead of BM25 (e.g. a dense retriever over the same memory).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        msg = f"k must be a positive integer (entries recall_memory returns), got {k!r}"
        raise ValueError(msg)
    if retriever is None:
        from retrievers.bm25 import PersonalBM25Retriever

        retriever = PersonalBM25Retriever.from_memory(memory, k=k)

    def save_memory(text: str) -> str:
        """Save a note to the user's private memory."""
        memory.add([text])
        return SAVED

    def recall_memory(query: str) -> str:
        """Search the user's private memory."""
        if len(memory) == 0:
            return NO_MEMORIES
        return recall_text(retrieve_privately(retriever, query)[:k], document_template)

    return [StructuredTool.from_function(save_memory), StructuredTool.from_function(recall_memory)]
