"""The private context of a request: documents and strings rendered for the specialist.

Documents come from a retriever queried without callbacks, so no tracer sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_specsteer.params import template_fields

__all__ = [
    "aretrieve_privately",
    "context_pieces",
    "private_prompt",
    "render_context",
    "render_document",
    "retrieve_privately",
]


def context_pieces(private_context: Any) -> list[str | Document]:
    """A call's `private_context` as a list of pieces: a str, a Document, or a list or tuple
    of them (None: no pieces); anything else is a TypeError naming the field."""
    if private_context is None:
        return []
    if isinstance(private_context, str | Document):
        return [private_context]
    if isinstance(private_context, list | tuple):
        wrong = [p for p in private_context if not isinstance(p, str | Document)]
        if not wrong:
            return list(private_context)
        found = f"{type(private_context).__name__} holding {type(wrong[0]).__name__}"
    else:
        found = type(private_context).__name__
    msg = f"private_context must be a str, a Document, or a list of them (or None); got {found}"
    raise TypeError(msg)


def render_document(document: Document, template: str, *, strict: bool = False) -> str:
    """One document through `template` (its `page_content` and metadata fields).

    A document without every field the template names (a plain note in a memory of
    reviews) is rendered as its `page_content` alone, so it still reaches the specialist and
    one such memory does not fail every later request; with `strict` (datasets, where a
    missing field is a schema error) it is a ValueError naming the fields.
    """
    values: dict[str, Any] = {**document.metadata, "page_content": document.page_content}
    missing = template_fields(template) - values.keys()
    if missing and strict:
        msg = (
            f"document_template needs {sorted(missing)} but the document has only {sorted(values)}"
        )
        raise ValueError(msg)
    return document.page_content if missing else template.format(**values)


def render_context(
    pieces: Sequence[str | Document], template: str, separator: str, *, strict: bool = False
) -> str:
    """Private context from strings (as they are) and documents (through `template`)."""
    rendered = (
        render_document(p, template, strict=strict) if isinstance(p, Document) else p
        for p in pieces
    )
    return separator.join(text.strip() for text in rendered if text and text.strip())


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


def private_prompt(context_template: str, context: str, prompt: str) -> str:
    """The specialist's prompt: the request inside `context_template`, or alone without context."""
    return context_template.format(context=context, prompt=prompt) if context else prompt
