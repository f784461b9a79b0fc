"""The engine against its oracles (docs/design.md §1) and a cache-free reference implementation."""

from __future__ import annotations

import typing

import pytest
import torch
from pydantic import ValidationError

from langchain_specsteer import METHODS, SpecSteerEngine
from langchain_specsteer import algorithms as alg
from langchain_specsteer.algorithms import costeer_coefficient
from langchain_specsteer.engine import METHOD_SPECS
from langchain_specsteer.params import METHODS as PARAMS_METHODS
from langchain_specsteer.params import DecodingParams, MethodName
from tests.conftest import CONTEXT, PROMPTS


def run_ids(llm, prompt, context=CONTEXT, **params):
    """Token ids and stats of one generation through the engine."""
    run = llm.rounds(prompt, private_context=context, **params)
    return [t for round_ in run for t in round_.tokens], run.stats


def hf_greedy(lm, prompt_ids, max_new_tokens):
    out = lm.model.generate(
        torch.tensor([prompt_ids]),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    return out[0, len(prompt_ids) :].tolist()


def test_the_rows_are_the_one_list_of_methods():
    assert METHODS == PARAMS_METHODS == typing.get_args(MethodName) == tuple(METHOD_SPECS)
    for name, spec in METHOD_SPECS.items():
        assert spec.name == name and spec.description
        assert DecodingParams(method=name).method == name
    with pytest.raises(ValidationError, match="method"):
        DecodingParams(method="nope")


def test_each_row_is_what_the_design_says():
    """docs/design.md §1: (drafts, verify, recovery, uses the generalist, uses q_gen, reads
    q_ctx)."""
    expected = {
        "generalist": (False, "none", alg.recover_generalist, True, False, False),
        "specialist": (False, "none", alg.recover_specialist, False, False, True),
        "speculative": (True, "match", alg.recover_generalist, True, False, False),
        "light_costeer": (False, "none", alg.recover_steered, True, True, True),
        "costeer": (False, "none", alg.recover_costeer, True, True, True),
        "specsteer": (True, "ratio", alg.recover_steered, True, True, True),
    }
    assert set(expected) == set(METHODS)
    for name, row in expected.items():
        spec = METHOD_SPECS[name]
        got = (spec.drafts, spec.verify, spec.recover)
        got += (spec.uses_generalist, spec.uses_q_gen, spec.recovers_with_q_ctx)
        assert got == row, name


@pytest.mark.parametrize("prompt", PROMPTS)
def test_generalist_equals_transformers_generate(make_llm, prompt):
    llm = make_llm(max_new_tokens=40)
    ids, stats = run_ids(llm, prompt, method="generalist")
    expected = hf_greedy(llm.generalist, llm.render_prompts(prompt).public_generalist, 40)
    assert ids == expected
    assert stats.generalist_calls == stats.new_tokens == len(expected)
    eos = llm.generalist.tokenizer.eos_token_id
    assert stats.finish_reason == ("eos" if expected[-1] == eos else "length")


def test_specialist_equals_transformers_generate_on_the_context_prompt(make_llm):
    llm = make_llm(max_new_tokens=40)
    for prompt in PROMPTS:
        ids, stats = run_ids(llm, prompt, method="specialist")
        private = llm.render_prompts(prompt, CONTEXT).private
        assert ids == hf_greedy(llm.specialist, private, 40)
        assert stats.generalist_calls == 0


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_equals_generalist(make_llm, k):
    llm = make_llm(max_new_tokens=40, draft_tokens=k)
    accepted = 0
    for prompt in PROMPTS:
        reference, _ = run_ids(llm, prompt, method="generalist")
        ids, stats = run_ids(llm, prompt, method="speculative")
        assert ids == reference
        assert stats.generalist_calls == stats.rounds == stats.new_tokens - stats.accepted
        accepted += stats.accepted
    assert accepted > 0  # drafts were accepted, so the multi-token verify path was exercised


@pytest.mark.parametrize("batch_specialist", [True, False])
def test_specsteer_with_infinite_gamma_equals_light_costeer(make_llm, batch_specialist):
    llm = make_llm(max_new_tokens=30, batch_specialist=batch_specialist)
    for prompt in PROMPTS:
        expected, _ = run_ids(llm, prompt, method="light_costeer", alpha=1.5)
        ids, stats = run_ids(llm, prompt, method="specsteer", gamma=float("inf"), alpha=1.5)
        assert ids == expected
        assert stats.accepted == 0 and stats.drafted > 0


def test_light_costeer_without_steering_equals_generalist(make_llm):
    llm = make_llm(max_new_tokens=30)
    for prompt in PROMPTS:
        expected, _ = run_ids(llm, prompt, method="generalist")
        assert run_ids(llm, prompt, method="light_costeer", alpha=0.0)[0] == expected


def test_costeer_equals_light_costeer_at_its_closed_form_alpha(make_llm):
    llm = make_llm(max_new_tokens=30)
    c_T = costeer_coefficient()
    for prompt in PROMPTS:
        expected, _ = run_ids(llm, prompt, method="light_costeer", alpha=c_T)
        assert run_ids(llm, prompt, method="costeer")[0] == expected
    # and the steering visibly changes the text (the oracle is not trivially met)
    assert (
        run_ids(llm, PROMPTS[0], method="costeer")[0]
        != run_ids(llm, PROMPTS[0], method="generalist")[0]
    )


def test_specsteer_with_zero_gamma_accepts_every_draft(make_llm):
    llm = make_llm(max_new_tokens=30, draft_tokens=3)
    _, stats = run_ids(llm, PROMPTS[0], method="specsteer", gamma=0.0)
    assert stats.accepted == stats.drafted > 0
    assert stats.acceptance_rate == 1.0
    assert stats.rounds == 30 // 4 + (30 % 4 > 0)  # each round: 3 drafts + 1 bonus token


def reference_specsteer(
    specialist, generalist, prompts, *, gamma, alpha, k, max_new_tokens, rounds=None
):
    """SpecSteer greedy with no KV cache: every distribution from a full forward pass.

    `rounds`, a list, receives (drafted, accepted) of each round.
    """

    def logprobs(lm, ids):
        with torch.no_grad():
            return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)

    out: list[int] = []
    while len(out) < max_new_tokens:
        draft: list[int] = []
        for _ in range(min(k, max_new_tokens - len(out) - 1)):
            draft.append(int(logprobs(specialist, prompts.private + out + draft).argmax()))
        n = 0
        while n < len(draft):
            p = logprobs(generalist, prompts.public_generalist + out + draft[:n])[draft[n]]
            q = logprobs(specialist, prompts.public_specialist + out + draft[:n])[draft[n]]
            if float(p - q) < torch.log(torch.tensor(gamma)):
                break
            n += 1
        if rounds is not None:
            rounds.append((len(draft), n))
        prefix = out + draft[:n]
        fused = logprobs(generalist, prompts.public_generalist + prefix) + alpha * (
            logprobs(specialist, prompts.private + prefix)
            - logprobs(specialist, prompts.public_specialist + prefix)
        )
        out = [*prefix, int(fused.argmax())]
    return out


@pytest.mark.parametrize("batch_specialist", [True, False])
@pytest.mark.parametrize(("gamma", "k"), [(0.5, 4), (0.1, 2), (1.0, 3), (0.0, 3)])
def test_specsteer_equals_a_cache_free_reference(make_llm, gamma, k, batch_specialist):
    llm = make_llm(max_new_tokens=24, draft_tokens=k, batch_specialist=batch_specialist)
    prompts = llm.render_prompts(PROMPTS[0], CONTEXT)
    ids, stats = run_ids(llm, PROMPTS[0], method="specsteer", gamma=gamma)
    expected = reference_specsteer(
        llm.specialist, llm.generalist, prompts, gamma=gamma, alpha=1.0, k=k, max_new_tokens=24
    )
    assert ids == expected
    assert stats.accepted > 0
    if gamma >= 0.5:
        assert stats.accepted < stats.drafted  # the reject branch was exercised too


def test_eos_ends_generation_like_transformers(make_llm, generalist):
    """Make a token the generalist emits mid-text an EOS token: both stop right there."""
    llm = make_llm(max_new_tokens=30)
    free, _ = run_ids(llm, PROMPTS[0], method="generalist")
    stop_token = free[6]
    config = generalist.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [saved, stop_token]
    try:
        expected = hf_greedy(generalist, llm.render_prompts(PROMPTS[0]).public_generalist, 30)
        for method in ("generalist", "speculative"):
            ids, stats = run_ids(llm, PROMPTS[0], method=method)
            assert ids == expected == free[: free.index(stop_token) + 1]
            assert stats.finish_reason == "eos"
        ids, stats = run_ids(llm, PROMPTS[0], method="specsteer")
        assert stats.finish_reason in ("eos", "length")
        assert stop_token not in ids[:-1]  # nothing is emitted after an EOS
    finally:
        config.eos_token_id = saved


@pytest.mark.parametrize("method", METHODS)
def test_max_new_tokens_is_exact(make_llm, method):
    llm = make_llm(max_new_tokens=13, draft_tokens=5)
    ids, stats = run_ids(llm, PROMPTS[1], method=method, gamma=0.0)
    assert len(ids) == stats.new_tokens == 13
    assert stats.finish_reason == "length"


@pytest.mark.parametrize("batch_specialist", [True, False])
def test_rounds_never_re_prefill(make_llm, generalist, specialist, batch_specialist):
    """After the prompts, a round feeds each model only the pending token and the draft."""
    fed: dict[str, list[tuple[int, int]]] = {"generalist": [], "specialist": []}
    hooks = [
        lm.model.register_forward_pre_hook(
            lambda _m, _a, kw, name=name: fed[name].append(tuple(kw["input_ids"].shape)),
            with_kwargs=True,
        )
        for name, lm in (("generalist", generalist), ("specialist", specialist))
    ]
    try:
        llm = make_llm(max_new_tokens=30, draft_tokens=4, batch_specialist=batch_specialist)
        _, stats = run_ids(llm, PROMPTS[0], method="specsteer")
    finally:
        for hook in hooks:
            hook.remove()
    prompts = llm.render_prompts(PROMPTS[0], CONTEXT)
    assert len(fed["generalist"]) == stats.generalist_calls
    assert fed["generalist"][0][1] <= len(prompts.public_generalist) + 4
    assert max(width for _, width in fed["generalist"][1:]) <= 1 + 4
    assert len(fed["specialist"]) == stats.specialist_calls
    prefills = 1 if batch_specialist else 2  # the context prompt, and the public one if apart
    assert sum(width > 1 + 4 for _, width in fed["specialist"]) == prefills
    # batched: one batch-of-2 step per draft (+1 when all are accepted); apart: that + a verify
    per_round = stats.specialist_calls / stats.rounds
    if batch_specialist:
        assert {batch for batch, _ in fed["specialist"]} == {2}
        assert stats.specialist_calls <= stats.drafted + stats.rounds
    else:
        assert {batch for batch, _ in fed["specialist"]} == {1}
        assert stats.specialist_calls <= stats.drafted + 2 * stats.rounds
    assert per_round <= 4 + 2


@pytest.mark.parametrize("method", ["specsteer", "speculative", "light_costeer", "specialist"])
def test_sampling_is_reproducible_with_a_seed(make_llm, method):
    llm = make_llm(max_new_tokens=20, temperature=1.0, top_p=0.9)
    a, stats = run_ids(llm, PROMPTS[0], method=method, seed=7)
    b, _ = run_ids(llm, PROMPTS[0], method=method, seed=7)
    others = {tuple(run_ids(llm, PROMPTS[0], method=method, seed=s)[0]) for s in range(8, 12)}
    assert a == b
    assert len(others | {tuple(a)}) > 1  # the seed matters
    assert stats.accepted <= stats.drafted


def test_acceptance_statistics_count_what_the_reference_decided(make_llm):
    """Rounds, drafts and acceptances as counted by the cache-free reference, round by round,
    and the committed tokens as the rounds delivered them."""
    llm = make_llm(max_new_tokens=24, draft_tokens=4)
    prompts = llm.render_prompts(PROMPTS[0], CONTEXT)
    for gamma in (1.0, 0.1):
        run = llm.rounds(PROMPTS[0], private_context=CONTEXT, method="specsteer", gamma=gamma)
        delivered = [(len(round_.tokens), round_.accepted) for round_ in run]
        rounds = []
        reference_specsteer(
            llm.specialist,
            llm.generalist,
            prompts,
            gamma=gamma,
            alpha=1.0,
            k=4,
            max_new_tokens=24,
            rounds=rounds,
        )
        drafted, accepted = (sum(counts) for counts in zip(*rounds, strict=True))
        stats = run.stats
        assert (stats.rounds, stats.drafted, stats.accepted) == (len(rounds), drafted, accepted)
        assert stats.acceptance_rate == pytest.approx(accepted / drafted)
        assert delivered == [(n + 1, n) for _, n in rounds]  # accepted drafts + one recovered
        assert stats.new_tokens == 24
    assert 0 < stats.accepted < stats.drafted  # at γ = 0.1 both branches were taken


def test_different_vocabularies_are_refused(specialist):
    from langchain_specsteer import LocalGeneralist
    from langchain_specsteer.tiny import tiny_pair, train_tokenizer

    other = train_tokenizer(["completely different text " * 5, "zzz yyy xxx www"], vocab_size=300)
    _, generalist = tiny_pair(tokenizer=other)
    with pytest.raises(ValueError, match=r"different vocabularies.*alignment='byte'"):
        SpecSteerEngine(specialist, LocalGeneralist(generalist.model, other), alignment="token")


async def _async_rounds(run):
    return [round_ async for round_ in run]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_async_iteration_equals_sync(make_llm, method, temperature):
    """`async for` drives the same steps as `for`: same rounds, same statistics."""
    import asyncio

    llm = make_llm(max_new_tokens=24, gamma=0.4, temperature=temperature, seed=7)
    sync_run = llm.rounds(PROMPTS[1], private_context=CONTEXT, method=method)
    async_run = llm.rounds(PROMPTS[1], private_context=CONTEXT, method=method)
    expected = list(sync_run)
    assert asyncio.run(_async_rounds(async_run)) == expected
    counts = ("new_tokens", "rounds", "drafted", "accepted", "generalist_calls", "finish_reason")
    for name in counts:
        assert getattr(async_run.stats, name) == getattr(sync_run.stats, name)
    assert len(async_run.sessions) == (method != "specialist")  # the generalist's session
    assert all(s.target.cache is None for s in async_run.sessions)  # closed by the driver


def test_an_abandoned_async_run_closes_its_session_and_steps(make_llm):
    import asyncio

    llm = make_llm(method="specsteer", max_new_tokens=40)
    run = llm.rounds(PROMPTS[0], private_context=CONTEXT)

    async def first_round():
        rounds = aiter(run)
        first = await anext(rounds)
        await rounds.aclose()
        return first

    assert asyncio.run(first_round()).tokens
    assert run.stats.rounds == 1 and run.stats.seconds > 0  # the steps' finally ran
    assert run.sessions and run.sessions[0].target.cache is None


def test_a_cancelled_async_run_lets_its_running_step_finish_then_closes(make_llm, monkeypatch):
    """Cancelled while a step runs in its worker thread, the run waits for that step before
    closing the steps (closing a generator mid-step would raise)."""
    import asyncio
    import threading

    llm = make_llm(method="specsteer", max_new_tokens=40)
    run = llm.rounds(PROMPTS[0], private_context=CONTEXT)
    in_step, release = threading.Event(), threading.Event()
    step = type(run)._step

    def slow_step(self, *args):
        if self.stats.rounds == 1 and not in_step.is_set():
            in_step.set()
            release.wait(5)
        return step(self, *args)

    monkeypatch.setattr(type(run), "_step", slow_step)

    async def main():
        async def consume():
            return [round_ async for round_ in run]

        task = asyncio.create_task(consume())
        await asyncio.to_thread(in_step.wait, 5)
        task.cancel()
        threading.Timer(0.2, release.set).start()  # the step ends after the cancellation
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert in_step.is_set()
    assert run.stats.rounds == 1 and run.stats.seconds > 0
    assert run.sessions[0].target.cache is None
