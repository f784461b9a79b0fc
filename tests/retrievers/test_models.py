"""Loading a retriever's sentence-transformers model: a hub id without the hub fails fast."""

from __future__ import annotations

import time

import pytest
import sentence_transformers
from huggingface_hub import constants

from retrievers import PersonalBM25Retriever, PersonalDenseRetriever, RerankingRetriever

RERANKER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
ENCODER = "BAAI/bge-small-en-v1.5"


def build(kind, model):
    if kind == "dense":
        return PersonalDenseRetriever.from_texts(["a note"], model=model, device="cpu")
    base = PersonalBM25Retriever.from_texts(["a note"])
    return RerankingRetriever(base=base, cross_encoder=model, device="cpu")


@pytest.mark.parametrize(("kind", "model"), [("dense", ENCODER), ("rerank", RERANKER)])
@pytest.mark.parametrize("endpoint", ["http://hub.invalid", "http://127.0.0.1:9"])
def test_an_unreachable_hub_fails_fast_and_says_a_local_folder_works(
    monkeypatch, kind, model, endpoint
):
    """No name resolution (as without a network) or a refused connection: an error naming the
    model and the remedy within seconds, not a traceback after 26-50 s of retries."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' default is offline
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="hub is unreachable") as err:
        build(kind, model)
    assert time.perf_counter() - start < 5
    assert repr(model) in str(err.value) and "local folder" in str(err.value)


def test_offline_mode_says_so_at_once(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE") as err:
        build("rerank", RERANKER)
    assert time.perf_counter() - start < 5
    assert "local folder" in str(err.value)


def test_an_unreachable_hub_still_loads_a_cached_model(monkeypatch):
    """A model in the local cache loads without the hub (the loader is told not to ask it)."""
    calls = []

    class Cached:
        def __init__(self, name, *, device, local_files_only=False):
            calls.append((name, local_files_only))
            if not local_files_only:
                raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(sentence_transformers, "CrossEncoder", Cached)
    build("rerank", RERANKER)
    assert calls == [(RERANKER, True)]
