"""Personal retrievers over an on-device private memory; what they return stays on the device.

Each name is imported from its module on first use (PEP 562), so importing one light module
(`retrievers.templates`, `retrievers.privacy`) loads nothing else; the search libraries
themselves (bm25s, sentence-transformers: the `[retrievers]` extra) load only when an index
or a model is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# As in langchain_core: imports for type checkers, each name's module, and `__all__`.
if TYPE_CHECKING:
    from retrievers.base import MemoryRetriever
    from retrievers.bm25 import PersonalBM25Retriever
    from retrievers.dense import BGE_QUERY_PROMPT, PersonalDenseRetriever
    from retrievers.memory import MemoryEntry, PrivateMemory, PrivateMemoryError
    from retrievers.privacy import aretrieve_privately, retrieve_privately
    from retrievers.rerank import RerankingRetriever
    from retrievers.templates import (
        DEFAULT_CONTEXT_TEMPLATE,
        TASK_TEMPLATES,
        ContextTemplates,
        render_document,
        task_templates,
    )
    from retrievers.tools import PRIVATE_MEMORY_TOOLS, memory_tools

_MODULES = {
    "BGE_QUERY_PROMPT": "dense",
    "DEFAULT_CONTEXT_TEMPLATE": "templates",
    "TASK_TEMPLATES": "templates",
    "ContextTemplates": "templates",
    "MemoryEntry": "memory",
    "MemoryRetriever": "base",
    "PRIVATE_MEMORY_TOOLS": "tools",
    "PersonalBM25Retriever": "bm25",
    "PersonalDenseRetriever": "dense",
    "PrivateMemory": "memory",
    "PrivateMemoryError": "memory",
    "RerankingRetriever": "rerank",
    "aretrieve_privately": "privacy",
    "memory_tools": "tools",
    "render_document": "templates",
    "retrieve_privately": "privacy",
    "task_templates": "templates",
}
"""Where each public name lives."""

__all__ = [
    "BGE_QUERY_PROMPT",
    "DEFAULT_CONTEXT_TEMPLATE",
    "PRIVATE_MEMORY_TOOLS",
    "TASK_TEMPLATES",
    "ContextTemplates",
    "MemoryEntry",
    "MemoryRetriever",
    "PersonalBM25Retriever",
    "PersonalDenseRetriever",
    "PrivateMemory",
    "PrivateMemoryError",
    "RerankingRetriever",
    "aretrieve_privately",
    "memory_tools",
    "render_document",
    "retrieve_privately",
    "task_templates",
]


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its module on first use."""
    if name not in _MODULES:
        msg = f"module 'retrievers' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(f"retrievers.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
