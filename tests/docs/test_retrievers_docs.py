"""docs/retrievers.md's code runs as printed (its hub ids swapped for the local test models)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "retrievers.md"


def test_the_retrievers_page_runs_from_memory_to_a_personalised_answer(
    minilm_path, tiny_cross_encoder_dir
):
    first, second = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)[:2]
    assert "{...}" not in first + second  # placeholders are not code
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        quick = first.replace("max_new_tokens=64", "max_new_tokens=6")  # the same, shorter
        exec(compile(quick, "retrievers.md", "exec"), namespace)
    assert printed.getvalue().strip()
    assert len(namespace["memory"]) == 2
    docs = namespace["bm25"].invoke("blender")
    assert docs[0].metadata["summary"] == "Great blender"  # the metadata is each entry's
    context, retrieved = namespace["llm"].private_context_for("a blender")
    assert retrieved == 2  # the retriever feeds the specialist's context, through the template
    assert 'review of "Quorix T100 blender", titled "Great blender": Short version' in context

    local = second.replace('"BAAI/bge-small-en-v1.5"', repr(minilm_path))
    local = local.replace('"BAAI/bge-reranker-base"', repr(tiny_cross_encoder_dir))
    assert local.count(repr(minilm_path)) == local.count(repr(tiny_cross_encoder_dir)) == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(local, "retrievers.md", "exec"), namespace)
    assert printed.getvalue().count("Document(") == 1  # k=1 at call time
    assert namespace["llm"].retriever is namespace["best"]
