"""The byte-level path: a specialist and a generalist with different tokenizers."""

from __future__ import annotations

import pytest
import torch

from langchain_specsteer import METHODS, SpecSteerLLM
from langchain_specsteer.bytelevel import TokenBytes
from langchain_specsteer.engine import SpecSteerEngine
from tests.conftest import CONTEXT, PROMPTS

SECRET = "Zorblax quantum marmalade, my PIN is 4417"


@pytest.fixture
def make_cross_llm(specialist, cross_generalist):
    def make(**fields):
        fields.setdefault("max_new_tokens", 24)
        return SpecSteerLLM(specialist=specialist, generalist=cross_generalist, **fields)

    return make


def generate(llm, prompt=PROMPTS[0], context=CONTEXT, **kwargs):
    generation = llm.generate([prompt], private_context=context, **kwargs).generations[0][0]
    return generation.text, generation.generation_info


def test_both_alignments_run_one_loop_with_one_pair_of_drivers():
    """The byte path differs from the token path in how it drafts, accepts and recovers only."""
    from langchain_specsteer.byte_engine import ByteDecodeRun
    from langchain_specsteer.engine import DecodeRun
    from langchain_specsteer.run import Run

    shared = {"_steps", "__iter__", "__aiter__", "_verify", "_decide", "_fall_back", "_choose"}
    for run in (DecodeRun, ByteDecodeRun):
        assert issubclass(run, Run)
        assert not shared & set(vars(run)), run
    assert not issubclass(ByteDecodeRun, DecodeRun)


def test_different_vocabularies_pick_the_byte_path(specialist, generalist, cross_generalist):
    assert SpecSteerEngine(specialist, cross_generalist).alignment == "byte"
    assert SpecSteerEngine(specialist, generalist).alignment == "token"
    assert SpecSteerEngine(specialist, generalist, alignment="byte").alignment == "byte"
    with pytest.raises(ValueError, match="different vocabularies"):
        SpecSteerEngine(specialist, cross_generalist, alignment="token")
    with pytest.raises(ValueError, match="alignment"):
        SpecSteerLLM(specialist=specialist, generalist=generalist, alignment="bits")


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("draft_tokens", [1, 3, 6])
def test_speculative_equals_generalist_across_tokenizers(make_cross_llm, prompt, draft_tokens):
    """Every accepted token is the generalist's argmax, and so is every recovered one."""
    expected, _ = generate(make_cross_llm(method="generalist", max_new_tokens=32), prompt)
    llm = make_cross_llm(method="speculative", max_new_tokens=32, draft_tokens=draft_tokens)
    text, info = generate(llm, prompt)
    assert text == expected
    assert info["drafted"] > 0 and info["generalist_calls"] == info["rounds"]


def test_the_generalist_writes_what_generate_writes(make_cross_llm, cross_generalist):
    ids = cross_generalist.encode(PROMPTS[2], chat=True)
    with torch.inference_mode():
        out = cross_generalist.model.generate(
            torch.tensor([ids]), max_new_tokens=32, do_sample=False
        )[0, len(ids) :].tolist()
    spelled = TokenBytes(cross_generalist.tokenizer).spell(out)
    text, info = generate(make_cross_llm(method="generalist", max_new_tokens=32), PROMPTS[2])
    assert text == spelled.decode("utf-8", errors="replace")
    assert info["new_tokens"] == len(out)


@pytest.mark.parametrize("method", ["generalist", "specialist", "speculative"])
def test_with_one_tokenizer_the_byte_path_writes_the_token_paths_text(demo_pair, method):
    """On the trained demo pair, where drafts are mostly accepted: a held-out user's request,
    cut before the review's end (the byte path never drafts EOS, which spells nothing, so an
    EOS the token path accepts as a draft is a recovery there: one drafted token fewer)."""
    from langchain_specsteer.demo import demo_users

    specialist, generalist = demo_pair
    prompt = demo_users()[0]["input"]
    texts, infos = {}, {}
    for alignment in ("token", "byte"):
        llm = SpecSteerLLM(
            specialist=specialist,
            generalist=generalist,
            method=method,
            max_new_tokens=30,
            alignment=alignment,
        )
        texts[alignment], infos[alignment] = generate(llm, prompt, "I always say crunchy.")
    assert texts["byte"] == texts["token"]
    assert infos["token"]["finish_reason"] == "length"
    # the trained specialist drafts in its tokenizer's own split, so re-spelling the draft in
    # the (same) generalist vocabulary changes nothing: the same decisions, round by round
    counts = ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls")
    assert {k: infos["byte"][k] for k in counts} == {k: infos["token"][k] for k in counts}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_across_tokenizers(make_cross_llm, method, monkeypatch):
    """The text is the committed bytes decoded: a character split across rounds is whole, and
    U+FFFD stands only where the bytes themselves are not UTF-8 (a random pair writes some)."""
    from langchain_specsteer.base import RoundText

    committed, push = [], RoundText.push

    def recording_push(self, round_):
        committed.append(round_.data)
        return push(self, round_)

    monkeypatch.setattr(RoundText, "push", recording_push)
    for prompt in PROMPTS:
        committed.clear()
        text, info = generate(make_cross_llm(method=method, gamma=0.3), prompt)
        assert info["new_tokens"] > 0
        assert info["finish_reason"] in ("eos", "length")
        assert info["new_tokens"] == 24 or info["finish_reason"] == "eos"
        data = b"".join(committed)
        assert "\ufffd".encode() not in data  # so every U+FFFD in the text is a decoding's
        assert text == data.decode("utf-8", errors="replace")


@pytest.mark.parametrize("recovery", ["byte", "token"])
def test_oracles_hold_across_tokenizers(make_cross_llm, recovery):
    """specsteer with γ = ∞ is light_costeer; costeer is light_costeer at α = c_T (the update
    is affine in log space); with token-candidate recovery, light_costeer at α = 0 is the
    generalist."""
    from langchain_specsteer.algorithms import costeer_coefficient

    def text(prompt, **fields):
        return generate(make_cross_llm(byte_recovery=recovery, **fields), prompt)[0]

    for prompt in PROMPTS:
        light = text(prompt, method="light_costeer")
        assert text(prompt, method="specsteer", gamma=float("inf")) == light
        c_T = costeer_coefficient()
        assert text(prompt, method="costeer") == text(prompt, method="light_costeer", alpha=c_T)
        if recovery == "token":
            unsteered = text(prompt, method="light_costeer", alpha=0.0)
            assert unsteered == text(prompt, method="generalist")


def test_the_context_steers_the_recovery(make_cross_llm):
    """The specialist's context changes light_costeer's text (it is not the generalist's)."""
    steered = {generate(make_cross_llm(method="light_costeer", alpha=3.0), p)[0] for p in PROMPTS}
    plain = {generate(make_cross_llm(method="generalist"), p)[0] for p in PROMPTS}
    assert steered != plain


def test_with_one_tokenizer_specsteer_decides_the_first_round_like_the_token_path(demo_pair):
    """The same draft, chunk by chunk (every chunk one token), the same ratio test. (Later
    rounds may differ: the recovery scores candidates by the bytes they spell.)"""
    import json
    from pathlib import Path

    import langchain_specsteer
    from retrievers import PersonalBM25Retriever

    specialist, generalist = demo_pair
    users = Path(langchain_specsteer.__file__).parent / "demo_pair" / "users.jsonl"
    accepted = []
    for line in users.read_text().splitlines():
        user = json.loads(line)
        texts = [entry["reviewText"] for entry in user["profile"]]
        context = PersonalBM25Retriever.from_texts(texts, k=3).invoke(user["input"])
        firsts = {}
        for alignment in ("token", "byte"):
            llm = SpecSteerLLM(specialist=specialist, generalist=generalist, alignment=alignment)
            rounds = iter(
                llm.rounds(user["input"], private_context=[d.page_content for d in context])
            )
            first = next(rounds)
            rounds.close()
            firsts[alignment] = first.tokens[: first.accepted]
        assert firsts["byte"] == firsts["token"]
        accepted.append(len(firsts["token"]))
    assert max(accepted) > 0


def test_sampling_is_seeded(make_cross_llm):
    """The same seed writes the same text; another seed, or greedy decoding, another one (so
    sampling is neither ignored nor unseeded; the tiny models' near-uniform distributions make
    twelve equal samples from two seeds practically impossible)."""
    for method in ("generalist", "specialist", "specsteer", "costeer"):
        llm = make_cross_llm(method=method, temperature=0.9, seed=5, max_new_tokens=12)
        first = llm.invoke(PROMPTS[0])
        assert llm.invoke(PROMPTS[0]) == first
        assert llm.invoke(PROMPTS[0], seed=6) != first, method
        assert llm.invoke(PROMPTS[0], temperature=0.0) != first, method


@pytest.mark.parametrize("method", METHODS)
def test_private_context_never_reaches_the_generalist(make_cross_llm, cross_generalist, method):
    seen: list[list[int]] = []
    hook = cross_generalist.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        generate(make_cross_llm(method=method), PROMPTS[0], [SECRET, "I hate mornings."])
    finally:
        hook.remove()
    assert bool(seen) == (method != "specialist")
    encode = cross_generalist.tokenizer.encode
    secret = encode(SECRET, add_special_tokens=False)
    secret_runs = {tuple(secret[i : i + 3]) for i in range(len(secret) - 2)}
    everything = [t for fed in seen for t in fed]
    assert not {tuple(everything[i : i + 3]) for i in range(len(everything) - 2)} & secret_runs
    decoded = cross_generalist.tokenizer.decode(everything)
    for word in ("Zorblax", "marmalade", "4417", "mornings"):
        assert word not in decoded


def test_streamed_text_is_whole_characters_and_equals_invoke(make_cross_llm):
    llm = make_cross_llm(method="speculative", max_new_tokens=40)
    for prompt in PROMPTS:
        pieces = list(llm.stream(prompt, private_context=CONTEXT))
        assert "".join(pieces) == llm.invoke(prompt, private_context=CONTEXT)
        assert sum(1 for piece in pieces if piece) > 1  # it streams, not all at the end


def test_stop_strings_cut_byte_path_text(make_cross_llm):
    """The text ends before the stop string's first occurrence, and decoding stops there."""
    llm = make_cross_llm(method="speculative", max_new_tokens=40)
    full, full_info = generate(llm)
    stop = full[10:13]
    assert len(stop) == 3 and full_info["finish_reason"] == "length"
    cut, info = generate(llm, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert info["finish_reason"] == "stop" and info["new_tokens"] < full_info["new_tokens"]
    assert "".join(llm.stream(PROMPTS[0], private_context=CONTEXT, stop=[stop])) == cut


def test_an_unreachable_generalist_falls_back_to_the_specialist(
    make_cross_llm, cross_generalist, monkeypatch
):
    from langchain_specsteer.verification import GeneralistError

    def unreachable(*args, **kwargs):
        raise GeneralistError("cloud down")

    expected, _ = generate(make_cross_llm(method="specialist"))
    monkeypatch.setattr(type(cross_generalist), "open_session", unreachable)
    text, info = generate(make_cross_llm(method="speculative"))
    assert text == expected
    assert info["degraded"] is True and info["degraded_reason"] == "cloud down"
    with pytest.raises(GeneralistError, match="cloud down"):
        generate(make_cross_llm(method="speculative"), on_generalist_error="raise")


def test_the_byte_path_runs_through_the_verifier_service(specialist, cross_generalist):
    from langchain_specsteer.remote import OpenAICompatibleGeneralist, RemoteGeneralist
    from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
    from langchain_specsteer.testing import BackgroundServer

    tokenizer, vocab = cross_generalist.tokenizer, len(cross_generalist.tokenizer)
    service = VerifierService(
        cross_generalist, limits=ServiceLimits(max_top_m=vocab, max_logprobs=vocab)
    )
    with BackgroundServer(create_app(service)) as server:
        for method in ("speculative", "specsteer", "light_costeer"):
            fields = {"method": method, "gamma": 0.3, "max_new_tokens": 20}
            local = SpecSteerLLM(specialist=specialist, generalist=cross_generalist, **fields)
            expected = local.invoke(PROMPTS[1], private_context=CONTEXT)
            clients = [
                RemoteGeneralist(server.url, tokenizer=tokenizer, top_m=vocab),
                OpenAICompatibleGeneralist(
                    server.url, service.model_name, tokenizer=tokenizer, top_logprobs=vocab
                ),
            ]
            for client in clients:
                llm = SpecSteerLLM(specialist=specialist, generalist=client, **fields)
                assert llm._engine.alignment == "byte"
                assert llm.invoke(PROMPTS[1], private_context=CONTEXT) == expected
        with pytest.raises(ValueError, match="needs the generalist's tokenizer"):
            SpecSteerLLM(specialist=specialist, generalist=RemoteGeneralist(server.url))


def test_speculative_sampling_across_tokenizers_is_refused(make_cross_llm):
    with pytest.raises(ValueError, match="speculative sampling across tokenizers"):
        make_cross_llm(method="speculative", temperature=0.7).invoke(PROMPTS[0])


@pytest.mark.parametrize("method", ["specsteer", "light_costeer", "costeer"])
def test_token_candidate_recovery_runs(make_cross_llm, method):
    """`byte_recovery="token"`: the generalist's top tokens scored by the specialist's mass."""
    llm = make_cross_llm(method=method, byte_recovery="token", gamma=0.3)
    for prompt in PROMPTS:
        text, info = generate(llm, prompt)
        assert info["new_tokens"] == 24 or info["finish_reason"] == "eos"
        text.encode("utf-8")
    sampled = make_cross_llm(method=method, byte_recovery="token", temperature=0.8, seed=2)
    first = sampled.invoke(PROMPTS[1])
    assert sampled.invoke(PROMPTS[1]) == first
    assert sampled.invoke(PROMPTS[1], seed=3) != first  # the seed decides...
    assert sampled.invoke(PROMPTS[1], temperature=0.0) != first  # ...and sampling is not greedy


@pytest.mark.parametrize("method", ["speculative", "specsteer", "light_costeer", "specialist"])
def test_async_equals_sync_across_tokenizers(make_cross_llm, method):
    """ainvoke and astream drive the byte path's steps like invoke: same text and counts."""
    import asyncio

    llm = make_cross_llm(method=method, gamma=0.3)
    text, info = generate(llm)

    async def both():
        result = await llm.agenerate([PROMPTS[0]], private_context=CONTEXT)
        pieces = [p async for p in llm.astream(PROMPTS[0], private_context=CONTEXT)]
        return result.generations[0][0], "".join(pieces)

    generation, streamed = asyncio.run(both())
    assert generation.text == streamed == text
    for name in ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls"):
        assert generation.generation_info[name] == info[name]
