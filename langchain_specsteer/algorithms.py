"""The math of Draft–Verify–Recover: pure functions over log-probability tensors.

Glossary (DESIGN.md §1). At one generation step, with committed output y<t:

    p_G        log-probs of the generalist given the public prompt x       (never sees c)
    q_ctx      log-probs of the specialist given private context c ⊕ x     (device only)
    q_gen      log-probs of the same specialist given x alone              (public)
    delta      q_ctx − q_gen, the specialist's pointwise mutual information with c
    draft      tokens d_1..d_K the specialist proposes from q_ctx
    accepted   the leading drafts that pass verification
    recovered  the token emitted at the first rejected position, or at K+1 (the bonus
               position) when every draft was accepted, so a round yields ≥ 1 token
    hint       the top-m tokens by log p_G with their log p_G and log q_gen: what a remote
               verifier sends so the device can recover without revealing q_ctx

Target of SpecSteer:  π*(v) ∝ p_G(v) · (q_ctx(v) / q_gen(v))^α.
Everything here is a function of tensors; nothing knows about models or transport.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Hint",
    "costeer_coefficient",
    "costeer_policy",
    "make_hint",
    "pick",
    "ratio_accept",
    "recover_from_hint",
    "residual",
    "speculative_accept",
    "steer",
    "temper",
    "top_p_filter",
]


def temper(logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of the distribution at `temperature` (0 or 1 leave `logp` as it is)."""
    if temperature in (0.0, 1.0):
        return logp
    return torch.log_softmax(logp / temperature, dim=-1)


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Renormalised log-probs of the smallest set of tokens whose mass reaches `top_p`."""
    if top_p >= 1.0:
        return logp
    sorted_logp, order = torch.sort(logp, descending=True, dim=-1)
    mass_before = torch.cumsum(sorted_logp.exp(), dim=-1) - sorted_logp.exp()
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False  # the top token always stays (top_p below float32's 1e-45 is 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logp.masked_fill(drop, -math.inf), dim=-1)


def pick(scores: torch.Tensor, *, greedy: bool, generator: torch.Generator | None = None) -> int:
    """Argmax of `scores` (V,), or a sample from softmax(scores)."""
    if greedy:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores.float(), dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def ratio_accept(
    log_p_G: torch.Tensor,
    log_q_gen: torch.Tensor,
    gamma: float,
    *,
    greedy: bool = True,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> int:
    """Number of leading drafts that pass SpecSteer's ratio test r_i = p_G(d_i) / q_gen(d_i).

    Greedy: accept while r_i ≥ γ. Sampling: accept d_i with probability min(1, r_i / γ).
    The first failure ends acceptance. γ = ∞ accepts nothing; γ = 0 accepts everything.

    Args:
        log_p_G: (K,) log p_G of each drafted token at its position.
        log_q_gen: (K,) log q_gen of each drafted token at its position.
        uniforms: (K,) the sampling test's uniform draws, when drawn elsewhere (the device
            draws them and a remote verifier applies them); implies sampling mode.
    """
    if math.isinf(gamma) or log_p_G.numel() == 0:
        return 0
    margin = log_p_G - log_q_gen - math.log(gamma) if gamma > 0 else None
    if margin is None:
        return int(log_p_G.numel())
    if uniforms is not None:
        passed = torch.log(uniforms.to(margin.device, margin.dtype)) < margin
    elif greedy:
        passed = margin >= 0
    else:
        u = torch.rand(margin.shape, generator=generator, device=margin.device)
        passed = torch.log(u) < margin
    return int(passed.long().cumprod(0).sum())


def speculative_accept(
    draft: torch.Tensor,
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    *,
    greedy: bool = True,
    generator: torch.Generator | None = None,
) -> int:
    """Number of leading drafts standard speculative decoding accepts (target p, proposal q).

    Greedy: accept while d_i is the target's argmax. Sampling: accept with min(1, p(d_i)/q(d_i)).

    Args:
        draft: (K,) drafted token ids.
        log_p: (K, V) target log-probs at the draft positions.
        log_q: (K, V) proposal log-probs the drafts were sampled from.
    """
    if draft.numel() == 0:
        return 0
    if greedy:
        passed = torch.argmax(log_p, dim=-1) == draft
    else:
        idx = draft.unsqueeze(-1)
        margin = (log_p.gather(-1, idx) - log_q.gather(-1, idx)).squeeze(-1)
        u = torch.rand(margin.shape, generator=generator, device=margin.device)
        passed = torch.log(u) < margin
    return int(passed.long().cumprod(0).sum())


def residual(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Log of norm(max(0, p − q)): where speculative sampling recovers after a rejection."""
    mass = (log_p.exp() - log_q.exp()).clamp_min(0)
    if float(mass.sum()) <= 0:  # p == q: a rejection had probability zero; fall back to p
        return log_p
    return torch.log(mass / mass.sum())


def steer(
    log_p_G: torch.Tensor, log_q_ctx: torch.Tensor, log_q_gen: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The fused score log p_G + α (log q_ctx − log q_gen) (unnormalised log π*)."""
    if alpha == 0:
        return log_p_G
    return log_p_G + alpha * (log_q_ctx - log_q_gen)


def costeer_policy(
    log_p_G: torch.Tensor,
    delta: torch.Tensor,
    *,
    steps: int = 20,
    a: float = 2.0,
    b: float = 1.0,
    lam: float = 2.0,
    eta: float = 10.0,
) -> torch.Tensor:
    """CoSteer's iterative fusion: log π_T from π_ref = log p_G and delta = log q_ctx − log q_gen.

    Q_t = a(π_{t−1} − π_ref) + b·δ
    π_t = log_softmax((tλπ_ref + Σ_{s≤t} Q_s + π_{t−1}/η) / (tλ + 1/η))
    """
    pi_ref = torch.log_softmax(log_p_G, dim=-1)
    support = torch.isfinite(pi_ref)  # a sparse hint leaves −inf outside its candidates
    pi = pi_ref
    q_sum = torch.zeros_like(pi_ref)
    for t in range(1, steps + 1):
        drift = torch.where(support, pi - pi_ref, 0.0)
        q_sum = q_sum + a * drift + b * delta
        pi = torch.log_softmax((t * lam * pi_ref + q_sum + pi / eta) / (t * lam + 1 / eta), dim=-1)
    return pi


def costeer_coefficient(
    *, steps: int = 20, a: float = 2.0, b: float = 1.0, lam: float = 2.0, eta: float = 10.0
) -> float:
    """c_T with CoSteer's policy = log_softmax(π_ref + c_T·δ): the update is affine in log space."""
    c, c_sum = 0.0, 0.0
    for t in range(1, steps + 1):
        c_sum += a * c + b
        c = (c_sum + c / eta) / (t * lam + 1 / eta)
    return c


@dataclass(frozen=True)
class Hint:
    """The sparse recovery hint a verifier sends: candidates ranked by log p_G.

    Attributes:
        token_ids: (m,) candidate token ids, best first by log p_G.
        log_p_G: (m,) their generalist log-probs.
        log_q_gen: (m,) their public-specialist log-probs.
    """

    token_ids: torch.Tensor
    log_p_G: torch.Tensor
    log_q_gen: torch.Tensor


def make_hint(log_p_G: torch.Tensor, log_q_gen: torch.Tensor, m: int | None = 20) -> Hint:
    """The top-m tokens by log p_G (all tokens when m is None) with their log p_G and log q_gen."""
    m = log_p_G.shape[-1] if m is None else min(m, log_p_G.shape[-1])
    top = torch.topk(log_p_G, m, dim=-1)
    return Hint(top.indices, top.values, log_q_gen.gather(-1, top.indices))


def recover_from_hint(
    hint: Hint, log_q_ctx: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused scores over the hint's candidates: the device adds α·log q_ctx and picks.

    Returns:
        (candidate token ids (m,), their scores (m,)).
    """
    scores = steer(hint.log_p_G, log_q_ctx.gather(-1, hint.token_ids), hint.log_q_gen, alpha)
    return hint.token_ids, scores
