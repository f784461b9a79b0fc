"""The math of Draft–Verify–Recover: pure functions over log-probability tensors.

Glossary (docs/design.md §1). At one generation step, with committed output y<t:

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

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Hint",
    "Recovery",
    "RecoveryParams",
    "Rows",
    "accept",
    "choice_seed",
    "chunk_accept",
    "context_gate",
    "costeer_coefficient",
    "costeer_coefficients",
    "costeer_policy",
    "draft_calibration",
    "jensen_shannon",
    "keep_drafting",
    "make_hint",
    "pick",
    "ratio_accept",
    "recover_costeer",
    "recover_generalist",
    "recover_specialist",
    "recover_steered",
    "residual",
    "send_ahead",
    "speculative_accept",
    "temper",
    "tilt",
    "top_p_filter",
    "worth_drafting",
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
    gamma: float | torch.Tensor,
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
        gamma: γ, or (K,) one per position (`context_gate`).
        uniforms: (K,) the sampling test's uniform draws, when drawn elsewhere (the device
            draws them and a remote verifier applies them); implies sampling mode.
    """
    if log_p_G.numel() == 0:
        return 0
    if isinstance(gamma, torch.Tensor):  # per position: ∞ rejects there, 0 accepts there
        log_gamma = torch.log(gamma.to(log_p_G.device, torch.float64)).to(log_p_G.dtype)
        margin = torch.where(torch.isinf(log_gamma), -log_gamma, log_p_G - log_q_gen - log_gamma)
    elif math.isinf(gamma):
        return 0
    elif gamma > 0:
        margin = log_p_G - log_q_gen - math.log(gamma)
    else:
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


def accept(
    rule: str,
    draft: Sequence[int],
    log_p_G: torch.Tensor,
    log_q_gen: torch.Tensor | None,
    gamma: float | torch.Tensor,
    uniforms: Sequence[float] | None = None,
    *,
    proposal: torch.Tensor | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int | None:
    """How many leading drafts a round accepts, or None when the values it needs are not here.

    Wherever it is decided (the device, or a generalist side that needs nothing private):
    "none" accepts nothing; "ratio" is SpecSteer's test on q_gen (`ratio_accept`; None
    without q_gen); "match" is standard speculative decoding (`speculative_accept`), greedy
    unless `proposal` is given; "device" leaves the decision to the device (None).

    Args:
        rule: "none", "ratio", "match" or "device" (`verification.Rule`).
        draft: drafted ids (k,).
        log_p_G: (k+1, V) generalist rows at the draft positions and after.
        log_q_gen: (≥k, V) public-specialist rows, or None.
        gamma: γ of the ratio test, or (k,) one per draft position (`context_gate`).
        uniforms: the device's draws for a sampled ratio test (None: greedy).
        proposal: (k, V) the q_ctx rows the drafts were sampled from: sampled matching, which
            only the device may decide (target and proposal top-p filtered as they were sampled).
        top_p: nucleus mass of sampled matching.
        generator: the device's RNG for sampled matching.
    """
    if not draft or rule == "none":
        return 0
    k = len(draft)
    ids = torch.tensor(list(draft), device=log_p_G.device)
    if rule == "ratio" and log_q_gen is not None:
        return ratio_accept(
            log_p_G[:k].gather(-1, ids.unsqueeze(-1)).squeeze(-1),
            log_q_gen[:k].gather(-1, ids.unsqueeze(-1)).squeeze(-1),
            gamma,
            uniforms=None if uniforms is None else torch.tensor(list(uniforms)),
        )
    if rule == "match" and proposal is not None:
        return speculative_accept(
            ids,
            top_p_filter(log_p_G[:k], top_p),
            top_p_filter(proposal, top_p),
            greedy=False,
            generator=generator,
        )
    if rule == "match" and uniforms is None:
        return speculative_accept(ids, log_p_G[:k], log_p_G[:k])
    return None


def chunk_accept(
    boundaries: Sequence[tuple[int, int]],
    log_q: Sequence[float],
    log_p: Sequence[float],
    gamma: float | Sequence[float],
    uniforms: Sequence[float] | None = None,
) -> tuple[int, int]:
    """SpecSteer's ratio test per aligned chunk (the byte path): summed log p_G against summed
    log q_gen.

    Greedy: accept chunks while log p_G(chunk) − log q_gen(chunk) ≥ log γ. Sampling: accept a
    chunk when its uniform u < p_G(chunk) / (γ q_gen(chunk)). The first failure ends
    acceptance.

    Args:
        boundaries: `bytelevel.aligned_boundaries(specialist ends, generalist ends)`.
        log_q: log q_gen of each specialist token.
        log_p: log p_G of each generalist token.
        gamma: γ (inf: accept nothing; 0: everything), or one per chunk (`context_gate`).
        uniforms: one draw per chunk in sampling mode.

    Returns:
        (specialist tokens, generalist tokens) accepted.
    """
    gammas = [gamma] * len(boundaries) if isinstance(gamma, int | float) else list(gamma)
    accepted, previous = (0, 0), (0, 0)
    for c, (i, j) in enumerate(boundaries):
        if math.isinf(gammas[c]):
            break
        log_gamma = math.log(gammas[c]) if gammas[c] > 0 else -math.inf
        margin = sum(log_p[previous[1] : j]) - sum(log_q[previous[0] : i]) - log_gamma
        passed = margin >= 0 if uniforms is None else math.log(max(uniforms[c], 1e-300)) < margin
        if not passed:
            break
        accepted = previous = (i, j)
    return accepted


def jensen_shannon(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD(p, q) over the last dimension, in nats (0 when equal, at most ln 2).

    ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = (p + q) / 2; tokens one distribution gives no mass add
    nothing to its half.
    """
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)

    def half(log_a: torch.Tensor) -> torch.Tensor:
        terms = log_a.exp() * (log_a - log_m)
        return torch.where(torch.isfinite(log_a), terms, 0.0).sum(-1)

    return (0.5 * (half(log_p) + half(log_q))).clamp_min(0.0)


def context_gate(gamma: float, log_q_ctx: torch.Tensor, log_q_gen: torch.Tensor) -> torch.Tensor:
    """AsymSpec's gate per position: γ_eff = γ · exp(−JSD(q_ctx, q_gen)).

    Looser where the private context moved the specialist (its personal signal), γ where it
    did not; γ = ∞ stays ∞ (nothing accepted) and γ = 0 stays 0. Device only: it reads q_ctx.

    Args:
        gamma: the gate γ.
        log_q_ctx: (k, V) q_ctx rows at the draft positions.
        log_q_gen: (k, V) q_gen rows at the same positions.
    """
    shrink = torch.exp(-jensen_shannon(log_q_ctx.double(), log_q_gen.double()))
    return gamma * shrink


# --------------------------------------------------------------------------- draft length

DRAFT_STOP = 0.1
"""`draft_tokens="auto"` stops drafting once the draft's estimated chance of being accepted
whole falls below this (`DecodingParams.draft_stop`): about the cost of a specialist step over
a generalist step (1.6–2.3 ms over 17 ms on the demo pair), below which one more draft costs
more than it is expected to save (docs/concepts.md)."""
CALIBRATION_PRIOR = 4.0
"""Pseudo-counts behind `draft_calibration`: a generation starts trusting q_ctx as it is."""


def draft_calibration(
    accepted: float, confidence: float, prior: float = CALIBRATION_PRIOR
) -> float:
    """ρ: how far this generation's verdicts bear out the specialist's confidence.

    (accepted + prior) / (confidence + prior), over the drafts of past rounds whose verdict
    is known: those accepted and the first rejected one (`accepted` counts the former,
    `confidence` sums q_ctx(d_i) over both). Above 1 when drafts fare better than q_ctx says
    (a loose gate), below when worse (a strict one).
    """
    return (accepted + prior) / (confidence + prior)


def keep_drafting(
    confidences: Sequence[float], calibration: float = 1.0, stop: float = DRAFT_STOP
) -> bool:
    """Whether the device drafts one more token (`draft_tokens="auto"`).

    Device-side quantities only: the drafted tokens' probabilities under q_ctx and the
    calibration ρ from past verdicts. The estimated chance that the generalist side accepts
    the whole draft, Π_i min(1, ρ·q_ctx(d_i)), must stay at least `stop`.

    Args:
        confidences: q_ctx(d_i) of each token drafted so far this round.
        calibration: ρ (`draft_calibration`).
        stop: the threshold (`DRAFT_STOP`).
    """
    chance = 1.0
    for confidence in confidences:
        chance *= min(1.0, calibration * confidence)
    return chance >= stop


ROUND_STEPS_PRIOR = 10.0
"""A round's fixed cost in specialist steps before the run has measured one: about a
generalist step's cost over a specialist step's in one process (`worth_drafting`)."""


def worth_drafting(drafted: int, acceptance: float, round_steps: float | None = None) -> bool:
    """Whether the device drafts one more token (`draft_tokens="auto"` with
    `draft_stop=None`), by the round's cost.

    A round that drafts k tokens costs its fixed part F (waiting on the verdict: the round
    trip and the generalist side's work; then the device's work on it) plus k specialist
    steps c_S, and yields E_k = 1 + Σ_{i≤k} a^i tokens, where a is the chance that a draft
    is accepted given the ones before it were, as this run has measured it
    (`run.Calibration.acceptance`). Drafting on pays while the last token drafted adds more
    tokens per step than the round yields per step so far: a^k · (F/c_S + k) ≥ E_k. That
    side falls as k grows, so the draft stops before the first k that fails.
    A far generalist (large F) makes drafts long, a near one short; nothing to tune.

    Args:
        drafted: k, counting the token in question.
        acceptance: a, the measured chance that a draft is accepted.
        round_steps: F / c_S, measured on this run (`run.RoundCosts.round_steps`); None
            before it is (`ROUND_STEPS_PRIOR`).
    """
    steps = ROUND_STEPS_PRIOR if round_steps is None else round_steps
    chance, expected = 1.0, 1.0
    for _ in range(drafted):
        chance *= acceptance
        expected += chance
    return chance * (steps + drafted) >= expected


SEND_AHEAD_FLOOR = 0.05
"""Rounds in flight: the device sends another round ahead of the verdicts only while the
chance that every round in flight stands (all drafts accepted and every guessed last token
right) is at least this, so that a verifier is not flooded with rounds that are likely void
(docs/concepts.md)."""


def send_ahead(
    chance: float,
    ahead_steps: float,
    round_steps: float | None,
    verify_share: float | None = None,
    floor: float = SEND_AHEAD_FLOOR,
) -> bool:
    """Whether the device drafts and sends one more round while earlier ones are in flight.

    A round sent ahead that stands saves the device the wait for it. One that is voided cost
    the generalist side a verification V, begun when the round before it was verified; the
    round that replaces it arrives a round trip R later at the earliest, so it waits
    max(0, V − R). With F = R + V the wait for a verdict and v = V / F the generalist side's
    share of it, the loss is a share 2v − 1 of F, the gain up to F: one more round pays
    while chance ≥ 2v − 1, and `chance` ≥ `floor`, and while the device has not yet drafted
    past the time the oldest verdict takes (`ahead_steps` < `round_steps`: beyond it that
    verdict is due, and the device takes it first). So next to the generalist, where the
    wait is the generalist's work (v near 1), one round at a time; the farther the
    generalist, the more rounds in flight.

    Args:
        chance: the estimated chance that every round in flight stands: a^n for the n drafts
            and guessed tokens in flight (a: `run.Calibration.acceptance`).
        ahead_steps: specialist steps drafted ahead of the oldest round's request.
        round_steps: a round's fixed cost in specialist steps (None: not measured yet, so
            the chance alone decides).
        verify_share: v, the generalist side's share of the wait (`run.RoundCosts.
            verify_share`); None where verdicts do not say (a batching server, such as vLLM,
            verifies rounds in flight side by side: v counts as 0).
        floor: the least `chance` worth a round.
    """
    if chance < max(floor, 2 * (verify_share or 0.0) - 1):
        return False
    return round_steps is None or ahead_steps < round_steps


def choice_seed(seed: int, position: int, purpose: str) -> int:
    """The seed of one random choice: a hash of (the run's seed, the generated position, what
    is chosen there), so sampled text does not depend on how rounds were scheduled."""
    digest = hashlib.blake2b(f"{seed}:{position}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def residual(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Log of norm(max(0, p − q)): where speculative sampling recovers after a rejection."""
    mass = (log_p.exp() - log_q.exp()).clamp_min(0)
    if float(mass.sum()) <= 0:  # p == q: a rejection had probability zero; fall back to p
        return log_p
    return torch.log(mass / mass.sum())


def tilt(log_p: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """log p + α·δ: `log_p` tilted towards where δ is high (unnormalised; α = 0 leaves it).

    With log p = log p_G and δ = log q_ctx − log q_gen it is SpecSteer's fused score, the
    unnormalised log π*; the byte path tilts next-byte distributions by a δ measured on bytes.
    """
    if alpha == 0:
        return log_p
    return log_p + alpha * delta


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


def costeer_coefficients(
    *, steps: int = 20, a: float = 2.0, b: float = 1.0, lam: float = 2.0, eta: float = 10.0
) -> Iterator[float]:
    """c_1..c_T, where CoSteer's policy after t steps is log_softmax(π_ref + c_t·δ): the update
    is affine in log space, so the whole iteration is this scalar recurrence."""
    c, c_sum = 0.0, 0.0
    for t in range(1, steps + 1):
        c_sum += a * c + b
        c = (c_sum + c / eta) / (t * lam + 1 / eta)
        yield c


def costeer_coefficient(
    *, steps: int = 20, a: float = 2.0, b: float = 1.0, lam: float = 2.0, eta: float = 10.0
) -> float:
    """c_T with CoSteer's policy = log_softmax(π_ref + c_T·δ) (`costeer_coefficients`)."""
    c = 0.0
    for c in costeer_coefficients(steps=steps, a=a, b=b, lam=lam, eta=eta):  # noqa: B007
        pass
    return c


# --------------------------------------------------------------------------- recovery


@dataclass
class Rows:
    """What a recovery reads at the position it fills: next-token log-probs, each (V,) over
    one vocabulary (the byte path: next-byte buckets), None where the method reads none.

    Attributes:
        log_p_G: the generalist's.
        log_q_ctx: the specialist's with the private context.
        log_q_gen: the specialist's without it.
        delta: δ = log q_ctx − log q_gen, filled in from the two rows when not given (the
            byte path gives δ measured on bytes).
        proposal: after a sampled speculative rejection at this position, the q_ctx row the
            rejected draft was sampled from.
    """

    log_p_G: torch.Tensor | None = None
    log_q_ctx: torch.Tensor | None = None
    log_q_gen: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    proposal: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.delta is None and self.log_q_ctx is not None and self.log_q_gen is not None:
            self.delta = self.log_q_ctx - self.log_q_gen


@dataclass(frozen=True)
class RecoveryParams:
    """The knobs recoveries read: `DecodingParams`' fields of the same names, which hold their
    defaults (`DecodingParams.recovery`)."""

    alpha: float
    top_p: float
    costeer_steps: int
    costeer_a: float
    costeer_b: float
    costeer_lambda: float
    costeer_eta: float


Recovery = Callable[[Rows, RecoveryParams], torch.Tensor]
"""A method's recovery: scores over the candidates (argmax, or softmax to sample from)."""


def recover_generalist(rows: Rows, params: RecoveryParams) -> torch.Tensor:
    """The generalist's own choice: log p_G; after a sampled speculative rejection, the
    residual norm(max(0, p_G − q_ctx)) of the two top-p filtered distributions."""
    if rows.proposal is None:
        return rows.log_p_G
    return residual(
        top_p_filter(rows.log_p_G, params.top_p), top_p_filter(rows.proposal, params.top_p)
    )


def recover_specialist(rows: Rows, params: RecoveryParams) -> torch.Tensor:
    """The specialist's own choice: log q_ctx."""
    return rows.log_q_ctx


def recover_steered(rows: Rows, params: RecoveryParams) -> torch.Tensor:
    """SpecSteer's (and LightCoSteer's) fused score: log p_G + α δ (`tilt`)."""
    return tilt(rows.log_p_G, rows.delta, params.alpha)


def recover_costeer(rows: Rows, params: RecoveryParams) -> torch.Tensor:
    """CoSteer's iterative fusion of log p_G and δ (`costeer_policy`)."""
    return costeer_policy(
        rows.log_p_G,
        rows.delta,
        steps=params.costeer_steps,
        a=params.costeer_a,
        b=params.costeer_b,
        lam=params.costeer_lambda,
        eta=params.costeer_eta,
    )


# --------------------------------------------------------------------------- hints


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
