"""The specialist/generalist pair a benchmark decodes with: a pair folder, or the shipped one.

A pair folder holds `specialist/` and `generalist/` (HF model folders sharing a tokenizer), as
`python -m eval.train_pair --export` writes it; the default is the shipped demo pair,
`langchain_specsteer.demo_pair()`; "tiny" names the tiny random pair of
`langchain_specsteer.tiny`, which the tests decode with.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM, demo_pair
from langchain_specsteer.demo import DEMO_PAIR
from retrievers import task_templates

__all__ = ["DEMO_PAIR", "TINY", "load_llm", "load_pair"]

TINY = "tiny"
"""The `load_pair` folder name of the tiny random pair."""


def load_pair(
    folder: str | os.PathLike[str] | None = None, device: str = "cpu", *, seed: int = 0
) -> tuple[LocalSpecialist, LocalGeneralist]:
    """The pair of `folder` (default: the shipped demo pair), loaded on `device`; for
    `TINY`, the tiny random pair drawn from `seed` (on the CPU).

    FileNotFoundError, saying how to get one, when the folder holds no pair.
    """
    if str(folder) == TINY:
        from langchain_specsteer.tiny import tiny_pair

        return tiny_pair(seed)
    specialist, generalist = demo_pair(folder)
    return (
        LocalSpecialist.from_pretrained(specialist, device=device),
        LocalGeneralist.from_pretrained(generalist, device=device),
    )


def load_llm(
    specialist: str,
    generalist: str,
    task: str,
    *,
    device: str | None,
    dtype: str | None,
    **fields: Any,
) -> SpecSteerLLM:
    """A `SpecSteerLLM` of two model folders (or hub ids) with `task`'s prompt templates;
    `fields` (max_new_tokens, draft_tokens, ...) are its own."""
    return SpecSteerLLM.from_pretrained(
        specialist, generalist, device=device, torch_dtype=dtype, **task_templates(task), **fields
    )
