"""`SpecSteerLLM(retriever=...)`: retrieved documents become the specialist's private context."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from pydantic import ValidationError

from retrievers import PersonalBM25Retriever, PrivateMemory, task_templates
from retrievers.templates import TASK_TEMPLATES
from tests.conftest import PROMPTS

REVIEWS = [
    (
        "The blender crushes ice in seconds.",
        {"overall": 5, "summary": "Fast", "description": "X1 blender"},
    ),
    (
        "The kettle leaks at the lid.",
        {"overall": 2, "summary": "Leaky", "description": "K2 kettle"},
    ),
    ("Tent survived the storm.", {"overall": 4, "summary": "Dry", "description": "T3 tent"}),
]


@pytest.fixture
def memory(tmp_path):
    with PrivateMemory(tmp_path / "user.db") as memory:
        memory.add([text for text, _ in REVIEWS], [meta for _, meta in REVIEWS])
        yield memory


def test_retrieved_documents_become_the_private_context(make_llm, memory):
    bm25 = PersonalBM25Retriever.from_memory(memory, k=2)
    llm = make_llm(retriever=bm25, **task_templates("product_review"))
    query = "Write a review of a blender for crushing ice."
    context, retrieved = llm.private_context_for(query)
    docs = bm25.invoke(query)
    assert retrieved == 2
    assert context == "\n\n".join(
        f'- {d.metadata["overall"]}-star review of "{d.metadata["description"]}", titled '
        f'"{d.metadata["summary"]}": {d.page_content}'
        for d in docs
    )
    assert context.startswith('- 5-star review of "X1 blender", titled "Fast": The blender')
    prompts = llm.render_prompts(query)
    decoded = llm.specialist.tokenizer.decode(prompts.private, skip_special_tokens=True)
    assert decoded == TASK_TEMPLATES["product_review"].context_template.format(
        context=context, prompt=query
    )
    info = llm.generate([query]).generations[0][0].generation_info
    assert info["retrieved"] == 2 and info["private_context"] is True
    # the retrieved context steers the specialist exactly like passing it by hand
    assert llm.invoke(query, method="specialist") == make_llm(
        **task_templates("product_review")
    ).invoke(query, method="specialist", private_context=docs)


def test_retrieval_k_and_explicit_context(make_llm, memory):
    llm = make_llm(retriever=PersonalBM25Retriever.from_memory(memory, k=3), retrieval_k=1)
    assert llm.private_context_for("kettle")[1] == 1
    info = llm.generate(["kettle"], private_context="given").generations[0][0].generation_info
    assert info["retrieved"] == 0 and info["private_context"] is True


def test_an_empty_memory_runs_without_context_and_says_so(make_llm, tmp_path):
    with PrivateMemory(tmp_path / "empty.db") as empty:
        llm = make_llm(retriever=PersonalBM25Retriever.from_memory(empty))
        result = llm.generate([PROMPTS[0]], method="specialist")
    info = result.generations[0][0].generation_info
    assert info["retrieved"] == 0 and info["private_context"] is False
    assert result.generations[0][0].text == make_llm().invoke(PROMPTS[0], method="specialist")


def test_a_note_without_the_templates_fields_is_given_as_its_text(make_llm, tmp_path):
    """A plain note stored among reviews reaches the specialist as its text; it does not fail
    the requests that retrieve it. Datasets render strictly: a missing field is named."""
    from langchain_specsteer.context import render_context

    review = {"overall": "5", "description": "a tent", "summary": "Dry at last"}
    with PrivateMemory(tmp_path / "m.db") as memory:
        memory.add("Kept me dry in a storm, tent review.", review)
        memory.add("I camp in Wales every autumn, tent notes.")
        llm = make_llm(
            retriever=PersonalBM25Retriever.from_memory(memory, k=2),
            **task_templates("product_review"),
        )
        context, retrieved = llm.private_context_for("Review my tent.")
        assert llm.invoke("Review my tent.", method="specialist")
    assert retrieved == 2
    assert '- 5-star review of "a tent", titled "Dry at last": Kept me dry' in context
    assert "\n\nI camp in Wales every autumn, tent notes." in "\n\n" + context
    note = Document(page_content="an abstract")
    template = task_templates("abstract_generation")["document_template"]
    assert render_context([note], template, "\n") == "an abstract"
    with pytest.raises(ValueError, match=r"needs \['title'\] but the document has only"):
        render_context([note], template, "\n", strict=True)
    with pytest.raises(ValidationError, match="document_template"):
        make_llm(document_template="{0}")
    with pytest.raises(ValueError, match="unknown task 'poetry'; known tasks: default"):
        task_templates("poetry")


@pytest.mark.parametrize("task", list(TASK_TEMPLATES))
def test_every_task_template_is_accepted(make_llm, task):
    assert (
        make_llm(**task_templates(task)).context_template == TASK_TEMPLATES[task].context_template
    )
