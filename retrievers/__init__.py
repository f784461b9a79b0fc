"""Personal retrievers over an on-device private memory; what they return stays on the device."""

from retrievers.base import MemoryRetriever, retrieve_privately
from retrievers.bm25 import PersonalBM25Retriever
from retrievers.dense import BGE_QUERY_PROMPT, PersonalDenseRetriever
from retrievers.memory import MemoryEntry, PrivateMemory, PrivateMemoryError
from retrievers.rerank import RerankingRetriever
from retrievers.templates import TASK_TEMPLATES, ContextTemplates, render_document, task_templates

__all__ = [
    "BGE_QUERY_PROMPT",
    "TASK_TEMPLATES",
    "ContextTemplates",
    "MemoryEntry",
    "MemoryRetriever",
    "PersonalBM25Retriever",
    "PersonalDenseRetriever",
    "PrivateMemory",
    "PrivateMemoryError",
    "RerankingRetriever",
    "render_document",
    "retrieve_privately",
    "task_templates",
]
