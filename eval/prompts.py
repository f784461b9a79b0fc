"""LongLaMP prompts: the public request, and the private context the specialist alone reads.

The public prompt is the example's `input`. The private context is the top-k entries of the
user's profile for that input, from the chosen retriever, rendered with the task's templates
(`retrievers.task_templates`), as in the paper's specialist prompt.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.documents import Document

from eval.data import PROFILE_TEXT_FIELD, Example
from langchain_specsteer.context import private_prompt, render_context
from retrievers import PersonalBM25Retriever, PersonalDenseRetriever, task_templates

__all__ = ["RETRIEVERS", "profile_documents", "rendered_prompts", "retrieve_profile"]

RetrieverName = Literal["bm25", "dense", "none"]
RETRIEVERS: tuple[str, ...] = RetrieverName.__args__


def profile_documents(example: Example, task: str) -> list[Document]:
    """The user's profile entries as documents: the main text, the other fields as metadata."""
    text_field = PROFILE_TEXT_FIELD[task]
    return [
        Document(
            page_content=str(entry[text_field]),
            metadata={key: value for key, value in entry.items() if key != text_field},
        )
        for entry in example.profile
    ]


def retrieve_profile(
    example: Example,
    task: str,
    retriever: RetrieverName = "bm25",
    k: int = 5,
    *,
    dense_model: str | None = None,
) -> list[Document]:
    """The top-k profile entries for the example's input (all of them would not fit a prompt)."""
    documents = profile_documents(example, task)
    if retriever == "none" or not documents:
        return []
    if retriever == "bm25":
        search = PersonalBM25Retriever.from_documents(documents, k=k)
    elif retriever == "dense":
        search = PersonalDenseRetriever.from_documents(
            documents, k=k, model=dense_model or "BAAI/bge-small-en-v1.5"
        )
    else:
        msg = f"unknown retriever {retriever!r}; choose one of {', '.join(RETRIEVERS)}"
        raise ValueError(msg)
    return search.invoke(example.input)


def rendered_prompts(
    example: Example, task: str, documents: list[Document], separator: str = "\n\n"
) -> tuple[str, str]:
    """(the specialist's private prompt, the generalist's public prompt) as text."""
    templates = task_templates(task)
    # strict: a profile entry without a template field is a schema error, not a note
    context = render_context(documents, templates["document_template"], separator, strict=True)
    return private_prompt(templates["context_template"], context, example.input), example.input
