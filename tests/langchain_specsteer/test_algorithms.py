"""The pure SpecSteer math (docs/design.md §1) on small hand-made tensors.

Expected values are computed independently here (plain Python / numpy), never copied from the
functions under test. Statistical checks use fixed seeds and tolerances of several σ.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from langchain_specsteer import algorithms as alg
from langchain_specsteer.algorithms import (
    Hint,
    RecoveryParams,
    Rows,
    accept,
    chunk_accept,
    costeer_coefficient,
    costeer_policy,
    make_hint,
    pick,
    ratio_accept,
    recover_costeer,
    recover_generalist,
    recover_specialist,
    recover_steered,
    residual,
    speculative_accept,
    temper,
    tilt,
    top_p_filter,
)


def logs(values) -> torch.Tensor:
    """Float32 log of a list of probabilities (0 → -inf)."""
    return torch.tensor([math.log(v) if v > 0 else -math.inf for v in values])


def knobs(**fields) -> RecoveryParams:
    """`DecodingParams`' recovery knobs (the one place their defaults live) with `fields`
    changed (any value: the math is tested beyond what the params allow)."""
    from dataclasses import replace

    from langchain_specsteer.params import DecodingParams

    return replace(DecodingParams().recovery, **fields)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def greedy_ratio_reference(p: list[float], q: list[float], gamma: float) -> int:
    """Plain-Python greedy ratio test: count leading drafts with p/q ≥ γ."""
    n = 0
    for p_i, q_i in zip(p, q, strict=True):
        if p_i / q_i < gamma:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- ratio_accept


def test_ratio_accept_greedy_stops_at_first_failure():
    # r = [2.0, 0.8, 0.3, 0.9]: with γ = 0.5 the third fails; the passing fourth is not counted.
    q = [0.25, 0.5, 0.5, 0.5]
    p = [0.5, 0.4, 0.15, 0.45]
    assert ratio_accept(logs(p), logs(q), 0.5) == 2
    assert ratio_accept(logs(p), logs(q), 0.85) == 1
    assert ratio_accept(logs(p), logs(q), 0.25) == 4
    assert ratio_accept(logs(p), logs(q), 3.0) == 0


def test_ratio_accept_greedy_matches_reference_on_random_drafts():
    rng = random.Random(0)
    for _ in range(300):
        k = rng.randint(1, 6)
        q = [rng.uniform(0.01, 1.0) for _ in range(k)]
        p = [rng.uniform(0.01, 1.0) for _ in range(k)]
        gamma = rng.choice([0.1, 0.5, 1.0, 2.0])
        if any(
            abs(math.log(pi / qi) - math.log(gamma)) < 1e-4 for pi, qi in zip(p, q, strict=True)
        ):
            continue  # too close to the boundary for float32
        assert ratio_accept(logs(p), logs(q), gamma) == greedy_ratio_reference(p, q, gamma)


@pytest.mark.parametrize("greedy", [True, False])
def test_ratio_accept_gamma_zero_accepts_all_and_infinity_none(greedy):
    # Includes a draft the generalist gives probability zero: only γ = 0 still accepts it.
    p = logs([0.01, 0.0, 0.9])
    q = logs([0.9, 0.9, 0.01])
    assert ratio_accept(p, q, 0.0, greedy=greedy, generator=gen(0)) == 3
    assert ratio_accept(p, q, math.inf, greedy=greedy, generator=gen(0)) == 0
    assert ratio_accept(p[2:], q[2:], math.inf, greedy=greedy, generator=gen(0)) == 0


def test_ratio_accept_boundary_ratio_equal_to_gamma_is_accepted():
    # Powers of two are exact in float32: r = 0.25 / 0.5 = 0.5 = γ.
    assert ratio_accept(logs([0.25]), logs([0.5]), 0.5) == 1
    assert ratio_accept(logs([0.25, 0.125]), logs([0.5, 0.25]), 0.5) == 2
    # p == q and γ = 1: r = 1 ≥ 1.
    p = torch.log_softmax(torch.tensor([0.3, -1.2, 2.0]), dim=-1)
    assert ratio_accept(p, p.clone(), 1.0) == 3
    # Just below the boundary fails.
    assert ratio_accept(logs([0.25]), logs([0.5]), 0.5001) == 0


@pytest.mark.parametrize("greedy", [True, False])
def test_ratio_accept_empty_draft(greedy):
    empty = torch.empty(0)
    for gamma in (0.0, 0.5, math.inf):
        assert ratio_accept(empty, empty, gamma, greedy=greedy, generator=gen(0)) == 0


def test_ratio_accept_sampling_is_reproducible_with_a_seeded_generator():
    rng = random.Random(1)
    p = logs([rng.uniform(0.05, 1) for _ in range(4)])
    q = logs([rng.uniform(0.05, 1) for _ in range(4)])

    def run(seed):
        g = gen(seed)
        return [ratio_accept(p, q, 1.0, greedy=False, generator=g) for _ in range(200)]

    first = run(123)
    assert run(123) == first
    assert run(124) != first  # really random, not a constant
    assert len(set(first)) > 1


def test_ratio_accept_sampling_acceptance_frequency_is_r_over_gamma():
    # One draft with r = 0.075 / 0.5 = 0.15 and γ = 0.5: accepted with probability 0.3.
    p, q, gamma, trials = logs([0.075]), logs([0.5]), 0.5, 4000
    g = gen(7)
    hits = sum(ratio_accept(p, q, gamma, greedy=False, generator=g) for _ in range(trials))
    sigma = math.sqrt(0.3 * 0.7 / trials)
    assert abs(hits / trials - 0.3) < 4 * sigma


def test_ratio_accept_sampling_always_accepts_when_ratio_reaches_gamma():
    g = gen(3)
    p, q = logs([0.5, 0.3, 0.2]), logs([0.5, 0.1, 0.2])  # r = [1, 3, 1] ≥ γ = 1
    assert all(ratio_accept(p, q, 1.0, greedy=False, generator=g) == 3 for _ in range(200))


def test_ratio_accept_sampling_first_failure_ends_acceptance():
    # Acceptance probabilities a1 = 0.6, a2 = 0.5: P(n=0) = 0.4, P(n=1) = 0.3, P(n=2) = 0.3.
    p, q = logs([0.3, 0.25]), logs([0.5, 0.5])
    trials, g = 4000, gen(11)
    counts = np.bincount(
        [ratio_accept(p, q, 1.0, greedy=False, generator=g) for _ in range(trials)], minlength=3
    )
    expected = np.array([0.4, 0.3, 0.3])
    sigma = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(counts / trials - expected) < 4 * sigma)


# --------------------------------------------------------------------------- speculative_accept


def test_speculative_accept_greedy_matches_argmax_prefix():
    log_p = torch.log_softmax(
        torch.tensor(
            [
                [0.0, 3.0, 1.0, 0.0],  # argmax 1
                [2.0, 0.0, 0.0, 0.0],  # argmax 0
                [0.0, 0.0, 0.0, 5.0],  # argmax 3
                [0.0, 0.0, 4.0, 0.0],  # argmax 2
            ]
        ),
        dim=-1,
    )
    log_q = torch.log_softmax(torch.zeros(4, 4), dim=-1)
    assert speculative_accept(torch.tensor([1, 0, 3, 2]), log_p, log_q) == 4
    assert speculative_accept(torch.tensor([1, 0, 2, 2]), log_p, log_q) == 2  # 4th not counted
    assert speculative_accept(torch.tensor([0, 0, 3, 2]), log_p, log_q) == 0
    assert speculative_accept(torch.tensor([1]), log_p[:1], log_q[:1]) == 1
    assert speculative_accept(torch.empty(0, dtype=torch.long), log_p[:0], log_q[:0]) == 0


def test_speculative_accept_greedy_random_against_reference():
    torch.manual_seed(0)
    rng = random.Random(0)
    for _ in range(100):
        k, v = 5, 6
        log_p = torch.log_softmax(torch.randn(k, v) * 3, dim=-1)
        log_q = torch.log_softmax(torch.randn(k, v), dim=-1)
        best = log_p.argmax(-1).tolist()
        draft = [b if rng.random() < 0.7 else (b + 1) % v for b in best]
        expected = 0
        for d, b in zip(draft, best, strict=True):
            if d != b:
                break
            expected += 1
        assert speculative_accept(torch.tensor(draft), log_p, log_q) == expected


def test_speculative_accept_sampling_accepts_everything_when_p_equals_q():
    torch.manual_seed(1)
    log_p = torch.log_softmax(torch.randn(4, 5), dim=-1)
    g = gen(5)
    for _ in range(200):
        draft = torch.multinomial(log_p.exp(), 1, generator=g).squeeze(-1)
        assert speculative_accept(draft, log_p, log_p.clone(), greedy=False, generator=g) == 4


def test_speculative_accept_sampling_frequency_is_min_one_p_over_q():
    # Position 0 draft token 2: p = 0.2, q = 0.5 → accepted w.p. 0.4.
    # Token 1 at the same position: p = 0.5, q = 0.25 → always accepted.
    log_p = logs([0.1, 0.5, 0.2, 0.2]).unsqueeze(0)
    log_q = logs([0.1, 0.25, 0.5, 0.15]).unsqueeze(0)
    trials, g = 4000, gen(9)
    hits = sum(
        speculative_accept(torch.tensor([2]), log_p, log_q, greedy=False, generator=g)
        for _ in range(trials)
    )
    assert abs(hits / trials - 0.4) < 4 * math.sqrt(0.4 * 0.6 / trials)
    assert all(
        speculative_accept(torch.tensor([1]), log_p, log_q, greedy=False, generator=g) == 1
        for _ in range(200)
    )


# --------------------------------------------------------------------------- residual


def test_residual_is_normalised_positive_part_of_p_minus_q():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.4, 0.3, 0.2, 0.1])
    expected = np.maximum(p - q, 0) / np.maximum(p - q, 0).sum()  # [0, 0, 0.25, 0.75]
    got = residual(torch.tensor(np.log(p)), torch.tensor(np.log(q)))
    np.testing.assert_allclose(got.exp().numpy(), expected, atol=1e-7)
    assert torch.isneginf(got[:2]).all()  # tokens where q ≥ p can never be recovered
    assert torch.isclose(torch.logsumexp(got, -1), torch.tensor(0.0, dtype=got.dtype))


def test_residual_random_distributions_against_numpy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.dirichlet(np.ones(7))
        q = rng.dirichlet(np.ones(7))
        expected = np.maximum(p - q, 0)
        expected /= expected.sum()
        got = residual(torch.tensor(np.log(p)), torch.tensor(np.log(q))).exp().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-9)


def test_residual_falls_back_to_p_when_p_equals_q():
    log_p = torch.log_softmax(torch.tensor([0.5, -1.0, 2.0]), dim=-1)
    out = residual(log_p, log_p.clone())
    assert torch.equal(out, log_p)
    assert torch.isfinite(out).all()  # not the NaN of 0/0


def test_speculative_sampling_end_to_end_recovers_the_target_distribution():
    """Draft from q, accept with min(1, p/q), else sample the residual: tokens ~ p."""
    p = [0.1, 0.2, 0.3, 0.4]
    q = [0.4, 0.3, 0.2, 0.1]
    log_p, log_q = logs(p).unsqueeze(0), logs(q).unsqueeze(0)
    recover = residual(log_p[0], log_q[0])
    trials, g = 4000, gen(2024)
    drafts = torch.multinomial(log_q[0].exp(), trials, replacement=True, generator=g)
    counts = [0] * 4
    accepted = 0
    for d in drafts.tolist():
        if speculative_accept(torch.tensor([d]), log_p, log_q, greedy=False, generator=g):
            token = d
            accepted += 1
        else:
            token = pick(recover, greedy=False, generator=g)
        counts[token] += 1
    chi2 = sum((c - trials * pi) ** 2 / (trials * pi) for c, pi in zip(counts, p, strict=True))
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001
    # And drafting alone would have been far off: the acceptance rate is Σ min(p, q) = 0.6.
    assert abs(accepted / trials - 0.6) < 4 * math.sqrt(0.24 / trials)


# --------------------------------------------------------------------------- accept (one round)


def test_accept_decides_each_rule_from_the_rows_it_is_given():
    # 3 drafts over V = 4 (rows at each draft position, then the bonus one)
    p = torch.log_softmax(
        torch.tensor([[0, 3, 1, 0], [0, 2, 1, 0], [0, 1, 3, 0], [4, 0, 0, 0.0]]), -1
    )
    q = p.clone()
    q[1] = torch.log_softmax(torch.tensor([0, 0, 4, 0.0]), -1)  # q_gen(d_2) < p_G(d_2)
    draft = [1, 1, 2]  # p_G's argmax at each position: 1, 1, 2
    assert accept("none", draft, p, q, 0.5) == 0
    assert accept("ratio", [], p, q, 0.5) == 0
    # log ratios: 0, > 0, 0
    assert accept("ratio", draft, p, q, 1.0) == 3
    assert accept("ratio", draft, p, q, 1.5) == 0
    assert accept("ratio", draft, p, q[:3], 1.0) == 3  # q_gen rows at the draft suffice
    assert accept("ratio", draft, p, None, 1.0) is None  # no q_gen here: the device decides
    # a sampled ratio test applies the device's uniforms: accept while log u < log(p/(γq))
    assert accept("ratio", draft, p, q, 1.0, [0.9, 0.9, 0.9]) == 3
    assert accept("ratio", draft, p, q, 1.0, [0.9, 0.9, 1.0]) == 2
    assert accept("match", draft, p, None, 0.5) == 3
    assert accept("match", [1, 2, 2], p, None, 0.5) == 1
    assert accept("device", draft, p, q, 0.5) is None


def test_sampled_matching_is_speculative_sampling_on_the_filtered_rows():
    torch.manual_seed(8)
    p = torch.log_softmax(torch.randn(4, 6), -1)
    draft = [2, 0, 5]
    proposal = torch.randn(3, 6)
    proposal[range(3), draft] += 3.0  # the drafts are likelier under q than under p
    proposal = torch.log_softmax(proposal, -1)
    for top_p in (1.0, 0.6):
        got = [
            accept("match", draft, p, None, 0.5, proposal=proposal, top_p=top_p, generator=g)
            for g in [gen(s) for s in range(50)]
        ]
        want = [
            speculative_accept(
                torch.tensor(draft),
                top_p_filter(p[:3], top_p),
                top_p_filter(proposal, top_p),
                greedy=False,
                generator=g,
            )
            for g in [gen(s) for s in range(50)]
        ]
        assert got == want
        assert len(set(got)) > 1  # the draws decide


def test_chunk_accept_with_one_token_chunks_is_the_ratio_test():
    torch.manual_seed(1)
    for _ in range(200):
        k = int(torch.randint(1, 7, ()))
        log_p, log_q = -torch.rand(k) * 4, -torch.rand(k) * 4
        gamma = float(torch.rand(())) * 2
        boundaries = [(i + 1, i + 1) for i in range(k)]
        s, n = chunk_accept(boundaries, log_q.tolist(), log_p.tolist(), gamma)
        assert s == n == ratio_accept(log_p, log_q, gamma)
        u = torch.rand(k)
        sampled = chunk_accept(boundaries, log_q.tolist(), log_p.tolist(), gamma, u.tolist())
        assert sampled[0] == ratio_accept(log_p, log_q, gamma, greedy=False, uniforms=u)


def test_chunks_sum_their_tokens_log_probs():
    # one chunk: specialist 2 tokens (log q −1, −1), generalist 1 token (log p −2.5)
    boundaries = [(2, 1)]
    assert chunk_accept(boundaries, [-1, -1], [-2.5], gamma=math.exp(-0.5)) == (2, 1)
    assert chunk_accept(boundaries, [-1, -1], [-2.5], gamma=math.exp(-0.4)) == (0, 0)
    assert chunk_accept(boundaries, [-1, -1], [-2.5], gamma=math.inf) == (0, 0)
    assert chunk_accept(boundaries, [-1, -1], [-9.0], gamma=0.0) == (2, 1)


# --------------------------------------------------------------------------- recoveries


def steered(log_p_G, log_q_ctx, log_q_gen, alpha):
    """SpecSteer's recovery scores, as the engine asks for them."""
    return recover_steered(Rows(log_p_G, log_q_ctx, log_q_gen), knobs(alpha=alpha))


def test_steered_recovery_is_log_p_G_plus_alpha_delta():
    log_p_G = logs([0.5, 0.25, 0.25])
    log_q_ctx = logs([0.1, 0.8, 0.1])
    log_q_gen = logs([0.4, 0.2, 0.4])
    for alpha in (0.5, 1.0, 2.0, -1.0):
        expected = [
            math.log(pg) + alpha * (math.log(qc) - math.log(qg))
            for pg, qc, qg in zip([0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.4, 0.2, 0.4], strict=True)
        ]
        got = steered(log_p_G, log_q_ctx, log_q_gen, alpha)
        assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    # α = 1 makes the private preference for token 1 win over the generalist's token 0.
    assert int(steered(log_p_G, log_q_ctx, log_q_gen, 1.0).argmax()) == 1
    assert int(log_p_G.argmax()) == 0


def test_steered_recovery_at_alpha_zero_returns_p_G_exactly():
    log_p_G = torch.log_softmax(torch.randn(9, generator=gen(0)), dim=-1)
    log_q_ctx = torch.log_softmax(torch.randn(9, generator=gen(1)), dim=-1)
    log_q_gen = log_q_ctx.clone()
    log_q_gen[3] = -math.inf  # α·δ would be NaN or ±inf there if it were added
    log_q_ctx[5] = -math.inf
    assert torch.equal(steered(log_p_G, log_q_ctx, log_q_gen, 0.0), log_p_G)


def test_tilt_adds_alpha_delta_and_a_given_delta_is_used_as_is():
    log_p = logs([0.5, 0.3, 0.2])
    delta = torch.tensor([0.0, 2.0, -math.inf])  # e.g. δ measured on bytes by the byte path
    assert torch.equal(tilt(log_p, delta, 0.0), log_p)
    expected = [math.log(0.5), math.log(0.3) + 3.0, -math.inf]
    assert torch.allclose(tilt(log_p, delta, 1.5), torch.tensor(expected))
    rows = Rows(log_p_G=log_p, delta=delta)
    assert torch.equal(recover_steered(rows, knobs(alpha=1.5)), tilt(log_p, delta, 1.5))
    # Without a given δ, Rows measures it from the two specialist rows.
    q_ctx, q_gen = logs([0.2, 0.2, 0.6]), logs([0.5, 0.25, 0.25])
    assert torch.equal(Rows(log_p, q_ctx, q_gen).delta, q_ctx - q_gen)


def test_the_generalist_and_specialist_recoveries_are_their_own_rows():
    log_p_G, log_q_ctx = logs([0.5, 0.3, 0.2]), logs([0.1, 0.1, 0.8])
    params = knobs(alpha=3.0)
    assert torch.equal(recover_generalist(Rows(log_p_G=log_p_G), params), log_p_G)
    assert torch.equal(recover_specialist(Rows(log_q_ctx=log_q_ctx), params), log_q_ctx)


def test_after_a_sampled_speculative_rejection_the_generalist_recovers_from_the_residual():
    p, q = [0.5, 0.3, 0.2, 0.0], [0.25, 0.5, 0.1, 0.15]
    got = recover_generalist(Rows(log_p_G=logs(p), proposal=logs(q)), knobs())
    mass = [max(0.0, a - b) for a, b in zip(p, q, strict=True)]  # (0.25, 0, 0.1, 0)
    np.testing.assert_allclose(got.exp().numpy(), [m / sum(mass) for m in mass], atol=1e-6)
    # top-p filters both distributions first, as they were sampled: each keeps {0, 1}
    nucleus = recover_generalist(Rows(log_p_G=logs(p), proposal=logs(q)), knobs(top_p=0.7))
    p_top, q_top = [0.5 / 0.8, 0.3 / 0.8, 0, 0], [0.25 / 0.75, 0.5 / 0.75, 0, 0]
    mass = [max(0.0, a - b) for a, b in zip(p_top, q_top, strict=True)]
    np.testing.assert_allclose(nucleus.exp().numpy(), [m / sum(mass) for m in mass], atol=1e-6)


def test_the_costeer_recovery_is_the_policy_with_the_rows_knobs():
    torch.manual_seed(6)
    log_p_G = torch.log_softmax(torch.randn(11), -1)
    log_q_ctx, log_q_gen = torch.log_softmax(torch.randn(2, 11), -1)
    params = knobs(costeer_steps=7, costeer_a=1.5, costeer_b=0.5, costeer_lambda=3.0)
    got = recover_costeer(Rows(log_p_G, log_q_ctx, log_q_gen), params)
    c = costeer_coefficient(steps=7, a=1.5, b=0.5, lam=3.0, eta=10.0)
    closed = torch.log_softmax(log_p_G + c * (log_q_ctx - log_q_gen), -1)
    assert torch.allclose(got, closed, atol=1e-5)


# --------------------------------------------------------------------------- CoSteer


def costeer_reference(log_p_G: np.ndarray, delta: np.ndarray, T, a, b, lam, eta) -> np.ndarray:
    """docs/design.md's CoSteer recursion in float64 numpy."""

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    pi_ref = log_softmax(log_p_G)
    pi, q_sum = pi_ref, np.zeros_like(pi_ref)
    for t in range(1, T + 1):
        q_sum = q_sum + a * (pi - pi_ref) + b * delta
        pi = log_softmax((t * lam * pi_ref + q_sum + pi / eta) / (t * lam + 1 / eta))
    return pi


PARAMS = [
    {},  # defaults T=20, a=2, b=1, λ=2, η=10
    {"steps": 5, "a": 1.0, "b": 0.5, "lam": 1.0, "eta": 4.0},
    {"steps": 1, "a": 0.0, "b": 2.0, "lam": 3.0, "eta": 0.5},
    {"steps": 40, "a": 0.5, "b": 1.5, "lam": 0.7, "eta": 20.0},
]
DEFAULTS = {"steps": 20, "a": 2.0, "b": 1.0, "lam": 2.0, "eta": 10.0}


def independent_coefficient(steps, a, b, lam, eta) -> float:
    """c_T from the vector recursion on 2 tokens: δ = (d, 0) shifts the log-odds by c·d."""
    log_p_G = np.array([0.3, -0.4])
    d = 1.0
    pi = costeer_reference(log_p_G, np.array([d, 0.0]), steps, a, b, lam, eta)
    pi_ref = costeer_reference(log_p_G, np.zeros(2), 0, a, b, lam, eta)
    return ((pi[0] - pi[1]) - (pi_ref[0] - pi_ref[1])) / d


@pytest.mark.parametrize("params", PARAMS)
def test_costeer_policy_matches_the_design_recursion(params):
    full = DEFAULTS | params
    rng = np.random.default_rng(3)
    log_p_G = rng.normal(size=11) * 2
    delta = rng.normal(size=11)
    expected = costeer_reference(
        log_p_G, delta, full["steps"], *[full[k] for k in ("a", "b", "lam", "eta")]
    )
    got = costeer_policy(torch.tensor(log_p_G), torch.tensor(delta), **params)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("params", PARAMS)
def test_costeer_policy_is_the_closed_form(params):
    torch.manual_seed(4)
    log_p_G = torch.log_softmax(torch.randn(13) * 2, dim=-1)
    delta = torch.log_softmax(torch.randn(13), -1) - torch.log_softmax(torch.randn(13), -1)
    c = costeer_coefficient(**params)
    closed = torch.log_softmax(log_p_G + c * delta, dim=-1)
    assert torch.allclose(costeer_policy(log_p_G, delta, **params), closed, atol=1e-5)


@pytest.mark.parametrize("params", PARAMS)
def test_costeer_coefficient_matches_two_token_recursion(params):
    full = DEFAULTS | params
    assert costeer_coefficient(**params) == pytest.approx(independent_coefficient(**full), rel=1e-9)


def test_costeer_coefficient_defaults_is_about_1_78():
    assert costeer_coefficient() == pytest.approx(1.78, abs=0.01)
    assert independent_coefficient(**DEFAULTS) == pytest.approx(1.78, abs=0.01)
    # One step by hand: c_1 = b / (λ + 1/η).
    assert costeer_coefficient(steps=1) == pytest.approx(1.0 / (2.0 + 0.1))
    assert costeer_coefficient(steps=0) == 0.0


def test_every_accepted_costeer_setting_gives_finite_scores():
    """Extreme knobs that DecodingParams accepts never overflow the float32 iteration (full
    rows and sparse hints, log-probs down to −200); the ones it refuses would."""
    import itertools

    from pydantic import ValidationError

    from langchain_specsteer.params import DecodingParams, costeer_peak

    torch.manual_seed(5)
    log_p_G = torch.log_softmax(torch.randn(300) * 30, -1)
    delta = torch.log_softmax(torch.randn(300) * 30, -1) - torch.log_softmax(torch.randn(300), -1)
    sparse = log_p_G.clone()
    sparse[40:] = -math.inf
    grid = {
        "a": [-1e6, -3.0, 0.0, 2.0, 1e6],
        "b": [-1e6, -1.0, 1.0, 1e6],
        "lam": [1e-30, 2.0, 1e6],
        "eta": [1e-6, 10.0, 1e30],
        "steps": [1, 20, 200],
    }
    accepted = refused = 0
    for a, b, lam, eta, steps in itertools.product(*grid.values()):
        knobs = {"steps": steps, "a": a, "b": b, "lam": lam, "eta": eta}
        try:
            DecodingParams(
                costeer_steps=steps, costeer_a=a, costeer_b=b, costeer_lambda=lam, costeer_eta=eta
            )
        except ValidationError:
            refused += 1
            assert costeer_peak(**knobs) > 1e8
            continue
        accepted += 1
        assert costeer_peak(**knobs) >= abs(costeer_coefficient(**knobs))
        for row in (log_p_G, sparse):
            pi = costeer_policy(row, delta, **knobs)
            assert not torch.isnan(pi).any() and torch.isfinite(pi.max()), knobs
    assert accepted > 100 and refused > 10
    assert math.isnan(float(costeer_policy(log_p_G, delta, b=-1e308).max()))  # why b is bounded


def test_costeer_policy_without_delta_is_the_generalist():
    log_p_G = torch.tensor([1.0, 2.0, -3.0, 0.5])
    out = costeer_policy(log_p_G, torch.zeros(4))
    assert torch.allclose(out, torch.log_softmax(log_p_G, -1), atol=1e-6)


# --------------------------------------------------------------------------- hints


def test_make_hint_is_top_m_by_p_G_with_matching_q_gen():
    p_G = [0.05, 0.3, 0.1, 0.2, 0.25, 0.1 - 1e-3, 1e-3]
    q_gen = [0.1, 0.2, 0.3, 0.15, 0.05, 0.1, 0.1]
    hint = make_hint(logs(p_G), logs(q_gen), m=3)
    assert isinstance(hint, Hint)
    expected = sorted(range(len(p_G)), key=lambda i: -p_G[i])[:3]  # [1, 4, 3]
    assert hint.token_ids.tolist() == expected
    assert torch.allclose(hint.log_p_G, logs([p_G[i] for i in expected]))
    assert torch.allclose(hint.log_q_gen, logs([q_gen[i] for i in expected]))


def test_make_hint_default_m_is_20_and_m_larger_than_v_clamps():
    torch.manual_seed(0)
    log_p_G = torch.log_softmax(torch.randn(50), -1)
    log_q_gen = torch.log_softmax(torch.randn(50), -1)
    assert len(make_hint(log_p_G, log_q_gen).token_ids) == 20
    small_p, small_q = log_p_G[:6], log_q_gen[:6]
    for m in (6, 7, 1000, None):
        hint = make_hint(small_p, small_q, m=m)
        assert sorted(hint.token_ids.tolist()) == list(range(6))
        assert torch.equal(hint.log_q_gen, small_q[hint.token_ids])
        assert torch.all(hint.log_p_G[:-1] >= hint.log_p_G[1:])  # best first


def hint_rows(hint: Hint, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense rows a verdict carries for a hint (`verification.Verdict`): log p_G −inf and
    log q_gen 0 where the hint sent nothing."""
    log_p_G, log_q_gen = torch.full((v,), -math.inf), torch.zeros(v)
    log_p_G[hint.token_ids], log_q_gen[hint.token_ids] = hint.log_p_G, hint.log_q_gen
    return log_p_G, log_q_gen


@pytest.mark.parametrize("m", [None, "V"])
def test_a_full_hint_recovers_the_same_token_as_the_full_rows(m):
    v = 40
    for seed in range(30):
        g = gen(seed)
        log_p_G = torch.log_softmax(torch.randn(v, generator=g) * 2, -1)
        log_q_ctx = torch.log_softmax(torch.randn(v, generator=g) * 2, -1)
        log_q_gen = torch.log_softmax(torch.randn(v, generator=g) * 2, -1)
        alpha = [0.5, 1.0, 3.0][seed % 3]
        hint = make_hint(log_p_G, log_q_gen, m=v if m == "V" else None)
        p_rows, q_rows = hint_rows(hint, v)
        scores = steered(p_rows, log_q_ctx, q_rows, alpha)
        full = steered(log_p_G, log_q_ctx, log_q_gen, alpha)
        assert int(scores.argmax()) == int(full.argmax())
        assert torch.equal(scores, full)


def test_a_hint_scores_its_candidates_by_the_steered_score_and_nothing_else():
    log_p_G = logs([0.4, 0.3, 0.2, 0.1])
    log_q_gen = logs([0.1, 0.2, 0.3, 0.4])
    log_q_ctx = logs([0.1, 0.1, 0.7, 0.1])
    p_rows, q_rows = hint_rows(make_hint(log_p_G, log_q_gen, m=3), 4)
    scores = steered(p_rows, log_q_ctx, q_rows, 2.0)
    expected = [
        math.log(pg) + 2.0 * (math.log(qc) - math.log(qg))
        for pg, qc, qg in zip([0.4, 0.3, 0.2], [0.1, 0.1, 0.7], [0.1, 0.2, 0.3], strict=True)
    ]
    assert torch.allclose(scores[:3], torch.tensor(expected), atol=1e-5)
    assert scores[3] == -math.inf  # outside the hint
    assert int(scores.argmax()) == 2


def test_small_hint_keeps_choice_inside_generalist_top_m():
    """A token outside the top-m by p_G with a huge δ wins full steering, but not the hint."""
    p_G = [0.3, 0.25, 0.2, 0.15, 0.0999, 1e-4]
    q_gen = [0.2, 0.2, 0.2, 0.2, 0.2 - 1e-6, 1e-6]  # the generic specialist finds token 5 unlikely
    q_ctx = [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]  # ...the private one loves it: δ_5 = log 5e5
    log_p_G, log_q_gen, log_q_ctx = logs(p_G), logs(q_gen), logs(q_ctx)
    assert int(steered(log_p_G, log_q_ctx, log_q_gen, 1.0).argmax()) == 5
    for m in (1, 2, 3, 5):
        p_rows, q_rows = hint_rows(make_hint(log_p_G, log_q_gen, m=m), 6)
        choice = int(steered(p_rows, log_q_ctx, q_rows, 1.0).argmax())
        assert choice in sorted(range(6), key=lambda i: -p_G[i])[:m]
        assert choice != 5
    # Ranking the hint by log p_G − α log q_gen instead would have let token 5 in first.
    assert int((log_p_G - log_q_gen).argmax()) == 5


# --------------------------------------------------------------------------- top-p, temper, pick


def nucleus_reference(p: list[float], top_p: float) -> set[int]:
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += p[i]
        if mass >= top_p:
            break
    return kept


def test_top_p_filter_keeps_smallest_nucleus_and_renormalises():
    p = [0.15, 0.5, 0.05, 0.3]
    for top_p, kept in [(0.4, {1}), (0.79, {1, 3}), (0.81, {0, 1, 3}), (0.99, {0, 1, 2, 3})]:
        out = top_p_filter(logs(p), top_p)
        assert {i for i in range(4) if out[i] > -math.inf} == kept
        total = sum(p[i] for i in kept)
        for i in kept:
            assert float(out[i]) == pytest.approx(math.log(p[i] / total), abs=1e-6)
        assert float(torch.logsumexp(out, -1)) == pytest.approx(0.0, abs=1e-6)


def test_top_p_filter_nucleus_that_reaches_top_p_exactly_is_enough():
    # Powers of two: the cumulative masses 0.5, 0.75, 0.875, 1 are exact in float32.
    log_p = logs([0.125, 0.5, 0.125, 0.25])
    for top_p, kept in [(0.5, {1}), (0.75, {1, 3}), (0.875, None)]:
        out = top_p_filter(log_p, top_p)
        finite = {i for i in range(4) if out[i] > -math.inf}
        if kept is None:  # the two 0.125 tie: exactly one of them completes the nucleus
            assert len(finite) == 3 and {1, 3} < finite
        else:
            assert finite == kept


def test_top_p_filter_random_against_reference():
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.dirichlet(np.ones(8) * 0.5)
        top_p = float(rng.uniform(0.05, 0.999))
        cum = np.cumsum(np.sort(p)[::-1])
        if np.min(np.abs(cum - top_p)) < 1e-5:
            continue
        out = top_p_filter(torch.tensor(np.log(p), dtype=torch.float32), top_p)
        kept = {i for i in range(8) if out[i] > -math.inf}
        assert kept == nucleus_reference(p.tolist(), top_p)
        assert float(torch.logsumexp(out, -1)) == pytest.approx(0.0, abs=1e-5)


def test_top_p_filter_always_keeps_top_token_and_top_p_one_is_identity():
    log_p = torch.log_softmax(torch.tensor([0.1, 3.0, 0.2, -1.0]), -1)
    out = top_p_filter(log_p, 1e-9)
    assert out[1] == 0.0 and torch.isneginf(out[[0, 2, 3]]).all()
    assert top_p_filter(log_p, 1.0) is log_p


@pytest.mark.parametrize("top_p", [1e-46, 1e-300, 5e-324])
def test_top_p_filter_below_float32_keeps_the_top_token(top_p):
    """top_p rounds to 0 in float32: every row still keeps its most likely token alone."""
    rows = torch.log_softmax(torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.0, -1.0]]), -1)
    out = top_p_filter(rows, top_p)
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False]]
    assert out[0, 1] == 0.0 and out[1, 0] == 0.0


def test_top_p_filter_rows_are_independent():
    rows = torch.log_softmax(torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]]), -1)
    out = top_p_filter(rows, 0.5)
    assert torch.isfinite(out[0]).tolist() == [True, False, False, False]
    assert torch.isfinite(out[1]).tolist() == [False, False, False, True]
    for i in range(2):
        assert torch.equal(out[i], top_p_filter(rows[i], 0.5))


def test_temper():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    logp = torch.log_softmax(logits, -1)
    assert temper(logp, 1.0) is logp
    assert temper(logp, 0.0) is logp
    assert torch.allclose(temper(logp, 2.0), torch.log_softmax(logits / 2, -1), atol=1e-6)
    assert torch.allclose(temper(logits, 0.5), torch.log_softmax(logits * 2, -1), atol=1e-6)
    hot = temper(logp, 2.0).exp()
    assert float(hot.max()) < float(logp.exp().max())  # flatter
    assert float(hot.sum()) == pytest.approx(1.0, abs=1e-6)


def test_pick_greedy_is_argmax():
    assert pick(torch.tensor([0.1, 5.0, -2.0, 4.9]), greedy=True) == 1
    assert pick(torch.tensor([-math.inf, -3.0, -math.inf]), greedy=True) == 1


def test_pick_sampling_is_reproducible_and_follows_softmax():
    scores = torch.log(torch.tensor([0.1, 0.6, 0.3]))

    def draw(seed, n):
        g = gen(seed)
        return [pick(scores, greedy=False, generator=g) for _ in range(n)]

    assert draw(42, 100) == draw(42, 100)
    assert draw(42, 100) != draw(43, 100)
    trials = 3000
    counts = np.bincount(draw(0, trials), minlength=3) / trials
    assert np.all(np.abs(counts - [0.1, 0.6, 0.3]) < 4 * np.sqrt(0.25 / trials))
    # A token with score -inf (top-p filtered) is never drawn; unnormalised scores work too.
    g = gen(1)
    masked = torch.tensor([-math.inf, 10.0, 10.0, -math.inf])
    assert {pick(masked, greedy=False, generator=g) for _ in range(200)} == {1, 2}


# ---------------------------------------------------------------- adaptive rounds (issue 17)


def test_keep_drafting_is_the_calibrated_product_against_the_stop():
    assert alg.keep_drafting([], 1.0, 0.1)
    assert alg.keep_drafting([0.5, 0.5], 1.0, 0.1)  # 0.25
    assert not alg.keep_drafting([0.5, 0.5, 0.3], 1.0, 0.1)  # 0.075
    assert alg.keep_drafting([0.5, 0.5, 0.3], 1.5, 0.1)  # 0.75 · 0.75 · 0.45 = 0.253
    assert alg.keep_drafting([0.9] * 40, 2.0, 0.1)  # min(1, ρ·q) caps each factor at 1
    assert alg.keep_drafting([0.1], 1.0, 0.1)  # at the stop: still drafting
    assert not alg.keep_drafting([0.0999], 1.0, 0.1)
    assert alg.keep_drafting([1e-9] * 3, 1.0, 0.0)  # stop 0: never stops


def test_draft_calibration_starts_at_one_and_follows_the_verdicts():
    assert alg.draft_calibration(0, 0) == 1.0
    assert alg.draft_calibration(6, 3.0) == pytest.approx(10 / 7)
    assert alg.draft_calibration(0, 5.0) == pytest.approx(4 / 9)
    assert alg.draft_calibration(2, 2.0, prior=0.0) == 1.0


def test_jensen_shannon_against_its_formula():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]).log()
    q = torch.tensor([[0.1, 0.2, 0.7], [0.0, 0.0, 1.0]]).log()
    m1 = torch.tensor([0.4, 0.2, 0.4])
    expected = 0.5 * sum(
        a * math.log(a / b) for a, b in zip([0.7, 0.2, 0.1], m1.tolist(), strict=True)
    ) + 0.5 * sum(a * math.log(a / b) for a, b in zip([0.1, 0.2, 0.7], m1.tolist(), strict=True))
    got = alg.jensen_shannon(p, q)
    assert got[0].item() == pytest.approx(expected, rel=1e-5)
    assert got[1].item() == pytest.approx(math.log(2), rel=1e-6)  # disjoint supports
    assert torch.equal(alg.jensen_shannon(q, p), got)  # symmetric
    assert alg.jensen_shannon(p, p).abs().max().item() < 1e-7


def test_context_gate_scales_gamma_by_the_specialists_shift():
    same = torch.log_softmax(torch.randn(3, 11, generator=torch.Generator().manual_seed(0)), -1)
    other = torch.log_softmax(torch.randn(3, 11, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.allclose(
        alg.context_gate(0.5, same, same), torch.full((3,), 0.5, dtype=torch.float64)
    )
    gates = alg.context_gate(0.5, same, other)
    jsd = alg.jensen_shannon(same.double(), other.double())
    assert torch.allclose(gates, 0.5 * torch.exp(-jsd))
    assert bool((gates < 0.5).all()) and bool((gates >= 0.25).all())  # JSD ≤ ln 2
    assert bool(torch.isinf(alg.context_gate(math.inf, same, other)).all())
    assert bool((alg.context_gate(0.0, same, other) == 0).all())


def test_ratio_accept_per_position_gates():
    log_p = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    log_q = torch.tensor([-0.5, -0.5, -0.5, -0.5])  # r = e^-0.5 ≈ 0.61 everywhere
    for gamma in (0.5, 0.7, 0.0, math.inf):
        constant = torch.full((4,), gamma, dtype=torch.float64)
        assert alg.ratio_accept(log_p, log_q, constant) == alg.ratio_accept(log_p, log_q, gamma)
    assert alg.ratio_accept(log_p, log_q, torch.tensor([0.5, 0.5, 0.7, 0.5])) == 2
    assert alg.ratio_accept(log_p, log_q, torch.tensor([0.5, math.inf, 0.0, 0.0])) == 1
    assert alg.ratio_accept(log_p, log_q, torch.tensor([0.0, 0.0, 0.0, 0.7])) == 3
    uniforms = torch.tensor([0.5, 0.5, 0.99, 0.5])  # u < r/γ: 0.61/0.7 = 0.87
    assert alg.ratio_accept(log_p, log_q, torch.full((4,), 0.7), uniforms=uniforms) == 2


def test_chunk_accept_per_chunk_gates():
    boundaries = [(1, 1), (2, 3), (3, 4)]
    log_q = [-1.0, -1.0, -1.0]
    log_p = [-1.5, -0.5, -0.6, -1.5]  # chunk margins: -0.5, -0.1, -0.5 (before log γ)
    assert alg.chunk_accept(boundaries, log_q, log_p, 0.5) == (3, 4)  # log 0.5 = -0.69
    assert alg.chunk_accept(boundaries, log_q, log_p, 0.7) == (0, 0)  # log 0.7 = -0.36
    assert alg.chunk_accept(boundaries, log_q, log_p, [0.5, 0.5, 0.5]) == (3, 4)
    assert alg.chunk_accept(boundaries, log_q, log_p, [0.5, 0.95, 0.5]) == (1, 1)
    assert alg.chunk_accept(boundaries, log_q, log_p, [0.5, 0.5, 0.7]) == (2, 3)
    assert alg.chunk_accept(boundaries, log_q, log_p, [0.0, 0.0, math.inf]) == (2, 3)
    assert alg.chunk_accept(boundaries, log_q, log_p, [math.inf, 0.0, 0.0]) == (0, 0)


def _best_draft_length(acceptance: float, steps: float, longest: int) -> int:
    """The k that maximises a round's tokens per step, E_k / (F/c_S + k), by brute force."""

    def rate(k: int) -> float:
        expected = sum(acceptance**i for i in range(k + 1))  # 1 + a + ... + a^k
        return expected / (steps + k)

    return max(range(longest + 1), key=rate)


@pytest.mark.parametrize("acceptance", [0.3, 0.6, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("steps", [2.0, 10.0, 40.0, 100.0])
def test_worth_drafting_stops_at_the_most_tokens_per_step(acceptance, steps):
    """Drafting one more token pays exactly while it raises the round's expected tokens per
    step: the rule's length is the brute-force best."""
    longest = 64
    k = next(
        (k for k in range(1, longest + 1) if not alg.worth_drafting(k, acceptance, steps)),
        longest,
    )
    # the draft stops before the first token that does not pay: k − 1 tokens
    assert k - 1 == _best_draft_length(acceptance, steps, longest) or k == longest
    assert alg.worth_drafting(1, acceptance, None) == alg.worth_drafting(
        1, acceptance, alg.ROUND_STEPS_PRIOR
    )


def test_worth_drafting_drafts_longer_for_a_farther_generalist():
    lengths = []
    for steps in (5.0, 20.0, 80.0):
        lengths.append(next(k for k in range(1, 200) if not alg.worth_drafting(k, 0.9, steps)))
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_send_ahead_needs_a_likely_pipeline_and_a_verdict_not_yet_due():
    assert alg.send_ahead(0.5, ahead_steps=10, round_steps=40)
    assert not alg.send_ahead(0.5, ahead_steps=40, round_steps=40)  # the verdict is due
    assert not alg.send_ahead(0.04, ahead_steps=10, round_steps=40)  # below the floor
    assert alg.send_ahead(0.05, ahead_steps=10, round_steps=40)
    assert alg.send_ahead(0.5, ahead_steps=100, round_steps=None)  # nothing measured yet
    assert not alg.send_ahead(0.2, 1, 40, floor=0.3)


@pytest.mark.parametrize(
    ("share", "least"),
    [(None, 0.05), (0.3, 0.05), (0.5, 0.05), (0.8, 0.6), (0.95, 0.9), (1.0, 1.0)],
)
def test_send_ahead_weighs_the_generalist_sides_share_of_the_wait(share, least):
    """A voided round delays the next by the service's work beyond the round trip: a share
    2v − 1 of the wait; far generalists (v small) send at the floor's chance."""
    assert alg.send_ahead(least + 1e-9, 1, 40, share)
    assert not alg.send_ahead(least - 0.01, 1, 40, share)


def test_choice_seeds_depend_on_the_seed_the_position_and_the_purpose_only():
    seeds = {
        alg.choice_seed(seed, position, purpose)
        for seed in (0, 1, 2**62)
        for position in range(50)
        for purpose in ("draft", "verify", "recover", "accept")
    }
    assert len(seeds) == 3 * 50 * 4  # no two choices share a seed
    assert alg.choice_seed(7, 3, "draft") == alg.choice_seed(7, 3, "draft")
    assert all(0 <= s < 2**63 for s in seeds)  # torch's manual_seed takes them
