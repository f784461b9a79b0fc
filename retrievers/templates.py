"""How retrieved documents become the specialist's private context, per task.

A task's templates are two format strings: `document` renders one document (its
`page_content` and metadata fields), `context` joins the rendered documents (`{context}`)
with the public request (`{prompt}`). The LongLaMP renderings follow the paper's specialist
prompt ("Here are past reviews written by this user: … Following their style, <input>");
the eval package uses the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from langchain_specsteer.context import render_document
from langchain_specsteer.params import DEFAULT_CONTEXT_TEMPLATE

__all__ = ["TASK_TEMPLATES", "ContextTemplates", "render_document", "task_templates"]


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
