"""Shared tiny models, built once per test session and loaded back with `from_pretrained`."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

PROMPTS = [
    "Write a short review of a kitchen blender.",
    "Summary: solid build, fair price. Rating: 4 out of 5.",
    "Le café est délicieux 😀",
]
CONTEXT = "Zorblax quantum marmalade sixty-seven. I always say crunchy and rate things 5 stars."


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random specialist (Qwen3) and generalist (Llama) saved as HF model folders."""
    from langchain_specsteer.tiny import tiny_pair

    root = tmp_path_factory.mktemp("tiny")
    specialist, generalist = tiny_pair(seed=0)
    for name, lm in (("specialist", specialist), ("generalist", generalist)):
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def specialist(tiny_dir):
    from langchain_specsteer import LocalSpecialist

    return LocalSpecialist.from_pretrained(str(tiny_dir / "specialist"), device="cpu")


@pytest.fixture(scope="session")
def generalist(tiny_dir):
    from langchain_specsteer import LocalGeneralist

    return LocalGeneralist.from_pretrained(str(tiny_dir / "generalist"), device="cpu")


@pytest.fixture
def make_llm(specialist, generalist):
    """Build a `SpecSteerLLM` on the tiny pair; keyword arguments become its fields."""
    from langchain_specsteer import SpecSteerLLM

    def make(**fields):
        fields.setdefault("max_new_tokens", 24)
        return SpecSteerLLM(specialist=specialist, generalist=generalist, **fields)

    return make
