"""Adaptive rounds (issue 17): `draft_tokens="auto"` and `gate="context"` against the oracles.

Greedy speculative decoding with any device-side draft length is the generalist; SpecSteer
with γ = ∞ is LightCoSteer; a cache-free reference of both options equals the engine; the
private context stays private; remote transports and the byte path agree with in-process.
The tiny random pair is unsure of every token, so these tests lower `draft_stop` to draft
more than one token a round.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from langchain_specsteer import algorithms as alg
from langchain_specsteer.run import Run
from tests.conftest import CONTEXT, COUNTS, PROMPTS, counts
from tests.langchain_specsteer import test_privacy as privacy

AUTO = {"draft_tokens": "auto", "max_draft_tokens": 5, "draft_stop": 1e-4}
BOTH = {**AUTO, "gate": "context"}


def run_ids(llm, prompt=PROMPTS[0], context=CONTEXT, **params):
    """Token ids and stats of one generation through the engine."""
    run = llm.rounds(prompt, private_context=context, **params)
    return [t for round_ in run for t in round_.tokens], run.stats


@pytest.fixture
def rounds(monkeypatch):
    """Each round's (drafted specialist tokens, their q_ctx confidences, accepted) as the
    engine saw them."""
    seen: list[tuple[int, list[float], int]] = []
    observe = Run._observe

    def record(self, draft, accepted):
        seen.append((len(draft.q_ctx), list(draft.confidences), accepted))
        observe(self, draft, accepted)

    monkeypatch.setattr(Run, "_observe", record)
    return seen


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"draft_tokens": "fast"}, ("draft_tokens", "'auto'")),
        ({"draft_tokens": 0}, ("draft_tokens", "greater than or equal to 1")),
        ({"draft_tokens": 2.5}, ("draft_tokens", "greater than or equal to 1")),
        ({"max_draft_tokens": 0}, ("max_draft_tokens", "greater than or equal to 1")),
        ({"draft_stop": 1.5}, ("draft_stop", "less than or equal to 1")),
        ({"gate": "asym"}, ("gate", "'fixed' or 'context'")),
    ],
)
def test_bad_adaptive_fields_fail_at_construction_and_per_call(make_llm, fields, words):
    with pytest.raises(ValidationError) as caught:
        make_llm(**fields)
    for word in words:
        assert word in str(caught.value)
    llm = make_llm()
    with pytest.raises(ValidationError) as caught:
        llm.invoke(PROMPTS[0], **fields)
    assert words[0] in str(caught.value)


def test_the_new_fields_reach_both_surfaces_and_per_call(make_llm, specialist, generalist):
    from langchain_specsteer import ChatSpecSteer

    chat = ChatSpecSteer(specialist=specialist, generalist=generalist, **BOTH)
    assert chat.decoding_params().draft_tokens == "auto"
    assert chat.decoding_params().gate == "context"
    llm = make_llm()
    params = llm.decoding_params(draft_tokens="auto", max_draft_tokens=3, gate="context")
    assert (params.draft_tokens, params.max_draft_tokens, params.gate) == ("auto", 3, "context")
    assert llm.decoding_params().draft_tokens == 6  # the default stays K = 6
    assert llm.decoding_params().gate == "fixed"
    assert llm.decoding_params(draft_tokens="7").draft_tokens == 7  # lax, as before


# ---------------------------------------------------------------- the draft length


def test_auto_stops_where_the_rule_says_from_device_side_quantities(make_llm, rounds):
    """Every round's length is `keep_drafting` on its drafts' q_ctx confidences, calibrated
    by the earlier rounds' accepted counts: nothing else (no generalist row) decides it."""
    llm = make_llm(max_new_tokens=40)
    _, stats = run_ids(llm, method="specsteer", gamma=0.3, **AUTO)
    assert len(rounds) == stats.rounds > 3
    verified, committed = [0.0, 0.0], 0
    for drafted, confidences, accepted in rounds:
        longest = min(AUTO["max_draft_tokens"], 40 - committed - 1)
        assert 1 <= drafted <= longest
        assert len(confidences) == drafted  # no EOS drafted in this text
        rho = alg.draft_calibration(*verified)
        for i in range(1, drafted):  # it went on while the rule said so...
            assert alg.keep_drafting(confidences[:i], rho, AUTO["draft_stop"])
        if drafted < longest:  # ...and stopped short only where it said stop
            assert not alg.keep_drafting(confidences, rho, AUTO["draft_stop"])
        judged = confidences[: accepted + 1]
        verified = [verified[0] + min(accepted, len(judged)), verified[1] + sum(judged)]
        committed += accepted + 1
    assert committed == stats.new_tokens
    lengths = [drafted for drafted, _, _ in rounds]
    assert len(set(lengths)) > 1  # the length really adapts on this text
    assert any(d < min(5, 40 - 1) for d in lengths)  # and the rule, not the budget, cut some


def test_auto_drafts_at_most_max_draft_tokens(make_llm, rounds):
    llm = make_llm(max_new_tokens=30)
    _, stats = run_ids(llm, method="specsteer", gamma=0.0, **{**AUTO, "draft_stop": 0.0})
    assert rounds and all(drafted <= 5 for drafted, _, _ in rounds)
    assert max(drafted for drafted, _, _ in rounds) == 5  # γ = 0 accepts all: always the most
    assert stats.accepted == stats.drafted


def test_fixed_k_is_unchanged_by_the_new_fields(make_llm):
    llm = make_llm(max_new_tokens=30, draft_tokens=3)
    ids, stats = run_ids(llm, method="specsteer", gamma=0.3)
    again, stats_again = run_ids(llm, method="specsteer", gamma=0.3, draft_stop=0.9)
    assert (ids, stats.drafted, stats.rounds) == (again, stats_again.drafted, stats_again.rounds)


# ---------------------------------------------------------------- oracles


@pytest.mark.parametrize("batch_specialist", [True, False])
def test_speculative_with_auto_equals_generalist_and_transformers(make_llm, batch_specialist):
    llm = make_llm(max_new_tokens=40, batch_specialist=batch_specialist)
    accepted = 0
    for prompt in PROMPTS:
        reference, _ = run_ids(llm, prompt, method="generalist")
        public = llm.render_prompts(prompt).public_generalist
        generated = llm.generalist.model.generate(
            torch.tensor([public]),
            do_sample=False,
            max_new_tokens=40,
            pad_token_id=llm.generalist.tokenizer.pad_token_id,
        )
        assert reference == generated[0, len(public) :].tolist()
        ids, stats = run_ids(llm, prompt, method="speculative", **BOTH)
        assert ids == reference
        assert stats.generalist_calls == stats.rounds == stats.new_tokens - stats.accepted
        accepted += stats.accepted
    assert accepted > 0


@pytest.mark.parametrize("batch_specialist", [True, False])
@pytest.mark.parametrize("options", [AUTO, {"gate": "context"}, BOTH])
def test_specsteer_with_infinite_gamma_equals_light_costeer(make_llm, batch_specialist, options):
    llm = make_llm(max_new_tokens=30, batch_specialist=batch_specialist)
    for prompt in PROMPTS:
        expected, _ = run_ids(llm, prompt, method="light_costeer", alpha=1.5)
        ids, stats = run_ids(
            llm, prompt, method="specsteer", gamma=float("inf"), alpha=1.5, **options
        )
        assert ids == expected
        assert stats.accepted == 0 and stats.drafted > 0


def _jsd(a: torch.Tensor, b: torch.Tensor) -> float:
    """JSD of two log-prob rows, written out (not `algorithms.jensen_shannon`)."""
    p, q = a.double().exp(), b.double().exp()
    m = (p + q) / 2
    return float(0.5 * (p * (p / m).log()).nansum() + 0.5 * (q * (q / m).log()).nansum())


def reference_adaptive(llm, prompts, *, gamma, context_gate, max_new_tokens, **auto):
    """SpecSteer greedy, no KV cache, `draft_tokens="auto"` and optionally the context gate."""

    def logprobs(lm, ids):
        with torch.no_grad():
            return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)

    s, g = llm.specialist, llm.generalist
    out: list[int] = []
    verified = [0.0, 0.0]
    while len(out) < max_new_tokens:
        draft: list[int] = []
        confidences: list[float] = []
        rho = alg.draft_calibration(*verified)
        for _ in range(min(auto["max_draft_tokens"], max_new_tokens - len(out) - 1)):
            row = logprobs(s, prompts.private + out + draft)
            draft.append(int(row.argmax()))
            confidences.append(float(row.max().exp()))
            if not alg.keep_drafting(confidences, rho, auto["draft_stop"]):
                break
        n = 0
        while n < len(draft):
            p = logprobs(g, prompts.public_generalist + out + draft[:n])
            q = logprobs(s, prompts.public_specialist + out + draft[:n])
            c = logprobs(s, prompts.private + out + draft[:n])
            gate = gamma * math.exp(-_jsd(c, q)) if context_gate else gamma
            if float(p[draft[n]] - q[draft[n]]) < math.log(gate):
                break
            n += 1
        judged = confidences[: n + 1]
        verified = [verified[0] + min(n, len(judged)), verified[1] + sum(judged)]
        prefix = out + draft[:n]
        fused = logprobs(g, prompts.public_generalist + prefix) + (
            logprobs(s, prompts.private + prefix) - logprobs(s, prompts.public_specialist + prefix)
        )
        out = [*prefix, int(fused.argmax())]
    return out


@pytest.mark.parametrize("batch_specialist", [True, False])
@pytest.mark.parametrize("gamma", [0.5, 0.1])
@pytest.mark.parametrize("context_gate", [False, True])
def test_auto_and_the_context_gate_equal_a_cache_free_reference(
    make_llm, gamma, context_gate, batch_specialist
):
    llm = make_llm(max_new_tokens=24, batch_specialist=batch_specialist)
    prompts = llm.render_prompts(PROMPTS[0], CONTEXT)
    gate = "context" if context_gate else "fixed"
    ids, stats = run_ids(llm, method="specsteer", gamma=gamma, gate=gate, **AUTO)
    expected = reference_adaptive(
        llm, prompts, gamma=gamma, context_gate=context_gate, max_new_tokens=24, **AUTO
    )
    assert ids == expected
    assert stats.accepted > 0
    if gamma >= 0.5:
        assert stats.accepted < stats.drafted  # the reject branch was exercised too


def test_the_context_gate_loosens_only_where_the_context_moved_the_specialist(make_llm):
    """With the same prompt for both (no context) q_ctx = q_gen: the gate is γ, the text the
    fixed gate's; with the context it accepts at least as much at every γ tried."""
    llm = make_llm(max_new_tokens=30, draft_tokens=4)
    for gamma in (1.0, 0.5, 0.3):
        fixed = run_ids(llm, context=None, method="specsteer", gamma=gamma)
        context = run_ids(llm, context=None, method="specsteer", gamma=gamma, gate="context")
        assert fixed[0] == context[0]
    looser = []
    for gamma in (1.0, 0.5, 0.3):
        _, fixed = run_ids(llm, method="specsteer", gamma=gamma)
        _, context = run_ids(llm, method="specsteer", gamma=gamma, gate="context")
        looser.append(context.accepted / context.rounds - fixed.accepted / fixed.rounds)
    assert max(looser) > 0 and min(looser) >= -0.5


# ---------------------------------------------------------------- privacy

recorded = privacy.recorded  # the generalist-side recorder of test_privacy (a fixture)


@pytest.mark.parametrize("batch_specialist", [False, True])
@pytest.mark.parametrize("method", ["specsteer", "speculative"])
@pytest.mark.parametrize("options", [AUTO, BOTH])
def test_private_context_never_reaches_the_generalist(
    make_llm, recorded, method, batch_specialist, options
):
    llm = make_llm(method=method, gamma=0.3, batch_specialist=batch_specialist, **options)
    secret_runs = privacy.runs(
        llm.specialist.tokenizer.encode(privacy.SECRET, add_special_tokens=False), 3
    )
    context = [privacy.SECRET, "Also: I hate mornings."]
    recorded["generalist_texts"].clear()
    info = llm.generate([PROMPTS[0]], private_context=context).generations[0][0].generation_info
    assert info["drafted"] > info["rounds"]  # drafts longer than one token crossed
    privacy.assert_generalist_saw_only_public(recorded, llm, PROMPTS[0], secret_runs, 3)
    private = llm.render_prompts(PROMPTS[0], context).private
    for seq in recorded["sequences"]:
        if seq.lm is llm.generalist or seq.tokens[: len(private)] != private:
            assert not privacy.runs(seq.tokens, 3) & secret_runs


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize("method", ["specsteer", "speculative"])
def test_nothing_private_crosses_the_wire(make_remote_llm, verifier, method, client):
    """Every request body holds only the protocol's public fields (no γ_eff, no q_ctx value,
    no draft length rule input) and no private word or id run."""
    decode = verifier.service.generalist.tokenizer.decode
    encode = verifier.service.generalist.tokenizer.encode
    llm = make_remote_llm(client, method=method, gamma=0.3, max_new_tokens=16, **BOTH)
    verifier.requests.clear()
    context = [privacy.SECRET, "I hate mornings."]
    info = llm.generate([PROMPTS[0]], private_context=context).generations[0][0].generation_info
    assert info["degraded"] is False and info["drafted"] > 0
    requests = list(verifier.requests)
    assert any(r["path"].endswith(("/rounds", "/completions")) for r in requests)
    secret_runs = privacy.runs(encode(privacy.SECRET), 5) - privacy.runs(encode(PROMPTS[0]), 5)
    allowed = privacy.SESSION_FIELDS if client == "session" else privacy.OPENAI_FIELDS
    allowed = allowed | privacy.TOKENIZE_FIELDS
    for request in requests:
        raw = request["path"] + request["query"] + request["body"].decode()
        for word in ("Zorblax", "4417", "Quibble", "mornings", "marmalade"):
            assert word not in raw
        if not request["body"]:
            continue
        body = json.loads(request["body"])
        assert set(body) <= allowed, set(body) - allowed
        if body.get("gamma") is not None:
            assert body["gamma"] == 0.3  # γ itself, never a γ_eff derived from q_ctx
        for ids in privacy.id_lists(body):
            assert not privacy.runs(ids, 5) & secret_runs
            assert "Zorblax" not in decode(ids)


# ---------------------------------------------------------------- transports


def generate(llm, prompt=PROMPTS[0], context=CONTEXT, **kwargs):
    generation = llm.generate([prompt], private_context=context, **kwargs).generations[0][0]
    return generation.text, generation.generation_info


@pytest.mark.parametrize("client", ["session", "openai"])
@pytest.mark.parametrize(
    ("method", "options"),
    [("specsteer", AUTO), ("specsteer", {"gate": "context"}), ("specsteer", BOTH),
     ("speculative", AUTO)],
)  # fmt: skip
def test_remote_output_equals_in_process(make_llm, make_remote_llm, client, method, options):
    """Greedy, hints as large as the vocabulary: the in-process text and counters, over the
    session protocol (q_gen hosted by the service, unless the context gate keeps it on the
    device) and the OpenAI dialect (q_gen always on the device)."""
    local_text, local_info = generate(make_llm(method=method, gamma=0.3, **options))
    # One round at a time: a round drafted ahead of a verdict is sized on the calibration
    # before that verdict, so under "auto" rounds in flight may end drafts elsewhere.
    remote_text, remote_info = generate(
        make_remote_llm(client, method=method, gamma=0.3, rounds_in_flight=1, **options)
    )
    assert remote_text == local_text
    assert counts(remote_info) == counts(local_info)
    assert remote_info["degraded"] is False
    assert local_info["drafted"] > local_info["rounds"]


def test_the_services_draft_limit_bounds_auto(make_llm, make_remote_llm, specialist, generalist):
    from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
    from langchain_specsteer.testing import BackgroundServer

    vocab = min(specialist.vocab_size, generalist.vocab_size)
    limits = ServiceLimits(max_draft_tokens=2, max_top_m=vocab, max_logprobs=20)
    service = VerifierService(generalist, specialist, limits=limits)
    fields = {"method": "specsteer", "gamma": 0.3, **AUTO}
    local_text, local_info = generate(make_llm(**{**fields, "max_draft_tokens": 2}))
    with BackgroundServer(create_app(service)) as server:
        text, info = generate(make_remote_llm(url=server.url, rounds_in_flight=1, **fields))
    assert info["degraded"] is False and info["draft_tokens_clamped_to"] == 2
    assert text == local_text
    assert counts(info) == counts(local_info)
    assert "draft_tokens_clamped_to" not in local_info


# ---------------------------------------------------------------- the byte path


@pytest.fixture
def make_cross_llm(specialist, cross_generalist):
    from langchain_specsteer import SpecSteerLLM

    def make(**fields):
        fields.setdefault("max_new_tokens", 24)
        return SpecSteerLLM(specialist=specialist, generalist=cross_generalist, **fields)

    return make


@pytest.mark.parametrize("options", [AUTO, BOTH])
def test_byte_path_oracles_hold_with_the_new_options(make_cross_llm, options):
    """Across tokenizers: speculative with "auto" is the generalist; specsteer at γ = ∞ is
    light_costeer."""
    drafted = 0
    for prompt in PROMPTS:
        expected, _ = generate(make_cross_llm(method="generalist"), prompt)
        text, info = generate(make_cross_llm(method="speculative", **options), prompt)
        assert text == expected
        drafted += info["drafted"] - info["rounds"]
        light, _ = generate(make_cross_llm(method="light_costeer"), prompt)
        steered = make_cross_llm(method="specsteer", gamma=float("inf"), **options)
        assert generate(steered, prompt)[0] == light
    assert drafted > 0  # some rounds drafted more than one token


def test_with_one_tokenizer_the_byte_path_decides_like_the_token_path(demo_pair):
    """On the trained pair, with "auto" and the context gate: speculative writes the token
    path's text round for round (the draft lengths learn from the same verdicts); specsteer's
    first round drafts and accepts what the token path's does (every chunk one token, the
    gate's mean over one token; later rounds may differ, as the byte recovery scores
    candidates by the bytes they spell)."""
    from pathlib import Path

    import langchain_specsteer
    from langchain_specsteer import SpecSteerLLM
    from retrievers import PersonalBM25Retriever

    specialist, generalist = demo_pair

    def make(alignment, **fields):
        return SpecSteerLLM(
            specialist=specialist,
            generalist=generalist,
            alignment=alignment,
            draft_tokens="auto",
            gate="context",
            **fields,
        )

    # A held-out user's request, cut before the review's end: the byte path never drafts EOS
    # (it spells nothing), so there an EOS draft the token path accepts is a recovery.
    prompt = json.loads((Path(langchain_specsteer.__file__).parent / "demo_pair" / "users.jsonl")
                        .read_text().splitlines()[0])["input"]  # fmt: skip
    infos, texts = {}, {}
    for alignment in ("token", "byte"):
        llm = make(alignment, method="speculative", max_new_tokens=30)
        texts[alignment], infos[alignment] = generate(llm, prompt, "I always say crunchy.")
    assert texts["byte"] == texts["token"]
    assert infos["token"]["finish_reason"] == "length"
    assert {k: infos["byte"][k] for k in COUNTS} == {k: infos["token"][k] for k in COUNTS}
    assert infos["token"]["drafted"] > 2 * infos["token"]["rounds"]

    users = Path(langchain_specsteer.__file__).parent / "demo_pair" / "users.jsonl"
    accepted = []
    for line in users.read_text().splitlines():
        user = json.loads(line)
        texts = [entry["reviewText"] for entry in user["profile"]]
        context = PersonalBM25Retriever.from_texts(texts, k=3).invoke(user["input"])
        firsts = {}
        for alignment in ("token", "byte"):
            llm = make(alignment)
            run = llm.rounds(user["input"], private_context=[d.page_content for d in context])
            rounds = iter(run)
            first = next(rounds)
            rounds.close()
            firsts[alignment] = (first.tokens[: first.accepted], run.stats.drafted)
        assert firsts["byte"] == firsts["token"]
        accepted.append(len(firsts["token"][0]))
    assert max(accepted) > 0
