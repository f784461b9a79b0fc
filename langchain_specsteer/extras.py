"""Optional dependencies: each imported where it is used, or an error naming its extra.

The core (`SpecSteerLLM`, `ChatSpecSteer`, local models) needs none of them; `pip install
"langchain-specsteer[all]"` installs every extra (pyproject.toml lists them) but `llamacpp`,
whose llama-cpp-python pip compiles from source.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__all__ = ["optional_import"]


def optional_import(
    module: str, *, extra: str, purpose: str, package: str | None = None
) -> ModuleType:
    """`module` imported, or an ImportError saying which extra of ours installs it.

    Args:
        module: what to import, e.g. "httpx" or "matplotlib.figure".
        extra: the extra that installs it ("server", "retrievers", "eval", "llamacpp").
        purpose: what needs it, for the message (e.g. "RemoteGeneralist").
        package: its name on PyPI when that is not the module's (e.g. "rouge-score").
    """
    try:
        return import_module(module)
    except ImportError as err:
        name = package or module.partition(".")[0]
        msg = f'{purpose} needs {name}: pip install "langchain-specsteer[{extra}]"'
        raise ImportError(msg) from err
