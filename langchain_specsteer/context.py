"""The private context of a request: documents and strings rendered for the specialist.

Documents come from a retriever queried without callbacks, so no tracer sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

# Quiet retrieval and document rendering live with the retrievers, which depend on nothing
# here; the LangChain classes (base.py) import them from this module with the rest.
from retrievers.privacy import aretrieve_privately, retrieve_privately
from retrievers.templates import render_document

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


def render_context(
    pieces: Sequence[str | Document], template: str, separator: str, *, strict: bool = False
) -> str:
    """Private context from strings (as they are) and documents (through `template`)."""
    rendered = (
        render_document(p, template, strict=strict) if isinstance(p, Document) else p
        for p in pieces
    )
    return separator.join(text.strip() for text in rendered if text and text.strip())


def private_prompt(context_template: str, context: str, prompt: str) -> str:
    """The specialist's prompt: the request inside `context_template`, or alone without context."""
    return context_template.format(context=context, prompt=prompt) if context else prompt
