"""Package boundaries: the retrievers depend on neither the core nor eval, the core loads no
optional library on import, and each optional library missing names the extra to install."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import retrievers

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("langchain_specsteer", "eval")
"""Packages the retrievers must never import (they import the retrievers)."""
OPTIONAL = (
    "fastapi",
    "uvicorn",
    "starlette",
    "httpx",
    "bm25s",
    "sentence_transformers",
    "Stemmer",
    "datasets",
    "matplotlib",
    "rouge_score",
)
"""Top-level modules of the optional dependencies (the extras of pyproject.toml)."""


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, at any depth: `import`, `from ... import`
    (relative ones as written, e.g. "..x"), and `import_module`/`__import__` of a constant."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def upstream_imports(source: str) -> list[tuple[int, str]]:
    """The imports in a retrievers module that reach above the package."""
    return [
        (line, module)
        for line, module in imported_modules(source)
        if module.split(".")[0] in UPSTREAM or module.startswith("..")
    ]


def test_the_scan_sees_imports_at_any_depth():
    source = (
        "import os\n"
        "from retrievers.memory import PrivateMemory\n"
        "def f():\n"
        "    from langchain_specsteer.context import render_document\n"
        "class C:\n"
        "    def g(self):\n"
        "        import eval.metrics\n"
        "        return importlib.import_module('langchain_specsteer.params')\n"
        "from .. import langchain_specsteer\n"
    )
    assert sorted(upstream_imports(source)) == [
        (4, "langchain_specsteer.context"),
        (7, "eval.metrics"),
        (8, "langchain_specsteer.params"),
        (9, ".."),
    ]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "retrievers").glob("*.py")), ids=lambda path: path.name
)
def test_retrievers_import_neither_the_core_nor_eval(path):
    assert upstream_imports(path.read_text(encoding="utf-8")) == []


def test_every_retrievers_name_resolves():
    assert sorted(retrievers.__all__) == sorted(retrievers._MODULES)
    names = {name: getattr(retrievers, name) for name in retrievers.__all__}
    assert names["task_templates"]("default")["document_template"] == "{page_content}"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        retrievers.nothing  # noqa: B018


def loaded_after(statement: str) -> list[str]:
    """The optional libraries in `sys.modules` after a fresh interpreter runs `statement`."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_probe_sees_an_optional_library():
    assert loaded_after("import rouge_score.rouge_scorer") == ["rouge_score"]


@pytest.mark.parametrize(
    "statement",
    [
        "import langchain_specsteer",
        "import langchain_specsteer.remote, langchain_specsteer.server, langchain_specsteer.cli",
        "import retrievers\nfor name in retrievers.__all__: getattr(retrievers, name)",
    ],
    ids=["core", "transports", "retrievers"],
)
def test_importing_loads_no_optional_library(statement):
    assert loaded_after(statement) == []


def hide(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    """Make `import library` (and its submodules) fail, as if it were not installed."""
    for name in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, library, None)


def _bm25() -> Any:
    return retrievers.PersonalBM25Retriever.from_texts(["a note"]).invoke("note")


def _stemmer() -> Any:
    return retrievers.PersonalBM25Retriever.from_texts(["a note"], stemmer="english")


def _dense() -> Any:
    return retrievers.PersonalDenseRetriever.from_texts(["a note"], model="some/model")


def _reranker() -> Any:
    base = retrievers.PersonalBM25Retriever.from_texts(["a note"])
    return retrievers.RerankingRetriever(base=base, cross_encoder="some/model")


def _remote() -> Any:
    from langchain_specsteer.remote import RemoteGeneralist

    return RemoteGeneralist("http://127.0.0.1:9")


def _openai() -> Any:
    from langchain_specsteer.remote import OpenAICompatibleGeneralist

    return OpenAICompatibleGeneralist("http://127.0.0.1:9", "model")


def _service() -> Any:
    from langchain_specsteer.server import create_app

    return create_app(None)


def _serve() -> Any:
    from langchain_specsteer.cli import main

    return main(["serve", "--generalist", "no/such-model"])


def _rouge() -> Any:
    from eval import metrics

    metrics._scorer.cache_clear()  # a scorer built earlier would hide the import
    return metrics.rouge("a", "a")


def _hub_data() -> Any:
    from eval.data import _hub_rows

    return _hub_rows("user/data", "config", "test")


def _plot(tmp_path: Path) -> Any:
    from eval.report import plot_quality_vs_speed

    return plot_quality_vs_speed([], tmp_path / "plot.png")


@pytest.mark.parametrize(
    ("library", "use", "extra"),
    [
        ("bm25s", _bm25, "retrievers"),
        ("Stemmer", _stemmer, "stemming"),
        ("sentence_transformers", _dense, "retrievers"),
        ("sentence_transformers", _reranker, "retrievers"),
        ("httpx", _remote, "server"),
        ("httpx", _openai, "server"),
        ("fastapi", _service, "server"),
        ("uvicorn", _serve, "server"),
        ("rouge_score", _rouge, "eval"),
        ("datasets", _hub_data, "eval"),
        ("matplotlib", _plot, "eval"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_a_missing_optional_library_names_its_extra(
    monkeypatch, tmp_path, library: str, use: Callable[..., Any], extra: str
):
    hide(monkeypatch, library)
    arguments = [tmp_path] if use is _plot else []
    with pytest.raises(ImportError, match=rf'pip install "langchain-specsteer\[{extra}\]"'):
        use(*arguments)
