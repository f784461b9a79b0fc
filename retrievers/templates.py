"""How retrieved documents become the specialist's private context, per task.

A task's templates are two format strings: `document` renders one document (its
`page_content` and metadata fields), `context` joins the rendered documents (`{context}`)
with the public request (`{prompt}`). The LongLaMP renderings follow the paper's specialist
prompt ("Here are past reviews written by this user: … Following their style, <input>");
the eval package uses the same ones.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.documents import Document

__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "TASK_TEMPLATES",
    "ContextTemplates",
    "render_document",
    "task_templates",
    "template_fields",
]

DEFAULT_CONTEXT_TEMPLATE = "Here is what we know about the user:\n{context}\n\n{prompt}"
"""How private context and the prompt are joined when no task is chosen: {context}, {prompt}."""


@dataclass(frozen=True)
class ContextTemplates:
    """The two templates that turn documents into a private prompt.

    Attributes:
        context_template: joins the rendered documents and the request: {context}, {prompt}.
        document_template: renders one document: {page_content} and any metadata field.
    """

    context_template: str
    document_template: str


TASK_TEMPLATES: Mapping[str, ContextTemplates] = {
    "default": ContextTemplates(DEFAULT_CONTEXT_TEMPLATE, "{page_content}"),
    "product_review": ContextTemplates(
        "Here are past reviews written by this user:\n{context}\n\nFollowing their style, {prompt}",
        '- {overall}-star review of "{description}", titled "{summary}": {page_content}',
    ),
    "abstract_generation": ContextTemplates(
        "Here are abstracts of past papers by this author:\n{context}\n\n"
        "Following their style, {prompt}",
        '- "{title}": {page_content}',
    ),
    "topic_writing": ContextTemplates(
        "Here are past posts written by this user:\n{context}\n\nFollowing their style, {prompt}",
        '- A post about "{summary}": {page_content}',
    ),
}


def task_templates(task: str) -> dict[str, str]:
    """`SpecSteerLLM` fields for a task: `SpecSteerLLM(..., **task_templates("product_review"))`."""
    if task not in TASK_TEMPLATES:
        msg = f"unknown task {task!r}; known tasks: {', '.join(TASK_TEMPLATES)}"
        raise ValueError(msg)
    return asdict(TASK_TEMPLATES[task])


def template_fields(template: str) -> set[str]:
    """The named fields of a format string; a clear error for positional or broken ones."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        msg = f"not a valid format string: {template!r} ({err})"
        raise ValueError(msg) from err
    if any(not name or name.isdigit() for name in names):
        msg = f"format string {template!r} has a positional field; name every field"
        raise ValueError(msg)
    return set(names)


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
