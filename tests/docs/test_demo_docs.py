"""What the docs tell a new user about the demo pair and the eval commands holds."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def test_readme_and_getting_started_load_the_demo_pair_the_same_way():
    [readme] = [b for b in python_blocks(ROOT / "README.md") if "demo_pair()" in b]
    [guide] = [b for b in python_blocks(ROOT / "docs" / "getting-started.md") if "demo_pair()" in b]
    assert readme == guide
    code = guide.replace("max_new_tokens=64", "max_new_tokens=6")  # the same code, quicker
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "getting-started.md", "exec"), {})
    assert printed.getvalue().strip()


def test_eval_docs_start_from_the_world_and_promise_nothing_already_there():
    page = (ROOT / "docs" / "eval.md").read_text(encoding="utf-8")
    assert "later issue" not in page and "once the cloud client lands" not in page
    world, run = (
        page.index("python -m eval.world --out data/world"),
        page.index("python -m eval run"),
    )
    assert world < run  # the data folder is written before the first run reads it
    assert "--data data/world" in page[run:]
    assert "demo_pair()" in page
