"""Every page the code, tests, README and docs cite is in the repository, and every section
of docs/design.md they cite (`docs/design.md §N`) is one of its numbered sections."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["langchain_specsteer", "retrievers", "eval", "examples", "scripts", "tests", "docs"]
SUFFIXES = {".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".txt", ".json", ".html"}
CITED = re.compile(r"\bdocs/[\w./-]*\w\.(?:md|json|svg|png)")
SECTION = re.compile(r"\bdesign\.md(?:'s)? §(\d+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def texts() -> dict[Path, str]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"]
    for folder in SOURCES:
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.suffix in SUFFIXES and p.is_file() and "demo_pair" not in p.parts
        ]
    return {p: p.read_text(encoding="utf-8", errors="replace") for p in files}


def test_every_cited_doc_exists():
    cited = {
        (path.relative_to(ROOT).as_posix(), doc)
        for path, text in texts().items()
        for doc in CITED.findall(text)
    }
    assert ("langchain_specsteer/algorithms.py", "docs/design.md") in cited  # the scan works
    assert not {(path, doc) for path, doc in cited if not (ROOT / doc).is_file()}


def test_every_relative_link_in_the_docs_resolves():
    broken, links = [], 0
    for page in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:|#", target):  # a URL or an anchor on the same page
                continue
            links += 1
            if not (page.parent / target.split("#")[0]).exists():
                broken.append((page.name, target))
    assert links > 50 and not broken


def test_cited_sections_of_the_design_page_exist():
    numbered = set(re.findall(r"^## §(\d+) ", (ROOT / "docs/design.md").read_text(), re.M))
    assert numbered == {"1", "2", "3"}
    cited = {
        (path.relative_to(ROOT).as_posix(), number)
        for path, text in texts().items()
        for number in SECTION.findall(text)
    }
    assert {number for _, number in cited} == numbered  # each section is cited somewhere
    assert not {(path, n) for path, n in cited if n not in numbered}


def test_nothing_cites_the_design_notes_outside_the_repository():
    outside = "DESIGN" + ".md"  # spelled apart, so this file does not cite it either
    assert not [path for path, text in texts().items() if outside in text]
