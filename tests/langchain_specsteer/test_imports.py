"""The package's modules import one another one way only: no module imports, at the top or
lazily inside a function, a module that imports it back (directly or through others)."""

from __future__ import annotations

import ast
from pathlib import Path

import langchain_specsteer

PACKAGE = "langchain_specsteer"
ROOT = Path(langchain_specsteer.__file__).parent


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
    return name == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: module level and inside functions, not the ones
    under `if TYPE_CHECKING:` (annotations only)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _module_names(root: Path) -> set[str]:
    """Module names relative to the package: "engine", "__init__", ..."""
    return {path.stem for path in root.glob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The package's modules one import statement loads (without the package itself, which
    every submodule import loads first; a name taken from it directly counts as `__init__`)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE:
                found.add(parts[1] if len(parts) > 1 else "__init__")
        return found
    if node.level:  # relative: from . import x / from .x import y
        base = [] if node.module is None else node.module.split(".")
    elif node.module and node.module.split(".")[0] == PACKAGE:
        base = node.module.split(".")[1:]
    else:
        return found
    if base:
        found.add(base[0])
        return found
    for alias in node.names:  # from langchain_specsteer import x, y
        found.add(alias.name if alias.name in modules else "__init__")
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → the package's modules it imports (at runtime, anywhere in its source)."""
    modules = _module_names(root)
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in _imports(tree):
            edges |= _targets(node, modules)
        graph[name] = (edges & modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(
        " ↔ ".join(c) + " (" + ", ".join(f"{v}→{w}" for v in c for w in graph[v] if w in c) + ")"
        for c in found
    )


def _write(folder: Path, files: dict[str, str]) -> Path:
    package = folder / PACKAGE
    package.mkdir()
    for name, source in files.items():
        (package / f"{name}.py").write_text(source)
    return package


def test_a_lazy_import_back_is_a_cycle(tmp_path):
    package = _write(
        tmp_path,
        {
            "__init__": "",
            "a": "from langchain_specsteer import b\n",
            "b": "def f():\n    from langchain_specsteer.a import x\n",
            "c": "import langchain_specsteer.a\n",
        },
    )
    graph = import_graph(package)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_type_only_imports_and_the_package_itself_are_not_edges(tmp_path):
    package = _write(
        tmp_path,
        {
            "__init__": "from langchain_specsteer.a import A\n",
            "a": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from langchain_specsteer.b import B\n"
                "A = 1\n"
            ),
            "b": "from langchain_specsteer.a import A\nfrom . import c\n",
            "c": "from langchain_specsteer import A\n",
        },
    )
    graph = import_graph(package)
    assert graph == {"__init__": {"a"}, "a": set(), "b": {"a", "c"}, "c": {"__init__"}}
    assert cycles(graph) == []
    assert cycles({**graph, "a": {"c"}}) == [["__init__", "a", "c"]]
