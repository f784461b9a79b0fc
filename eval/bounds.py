"""The analytical speed-up bound of a drafting method, from measured forward costs.

A round of K drafts costs d·c_S (the specialist's draft steps, d the drafts it made) plus one
(K+1)-token generalist verify forward, and for methods that read q_gen also the specialist's
(K+1)-token forward on the public prompt and, with probability α^K, the recovery step after a
fully accepted draft. Plain decoding costs c_G a token. The bound is tokens per round · c_G /
round cost: the speed-up if only model forwards cost time, so measured / bound is the share
the engine's overhead leaves (`python -m eval.bench`, docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from eval.harness import median_seconds
from langchain_specsteer import SpecSteerLLM
from langchain_specsteer.engine import Prompts
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.models import LocalModel

__all__ = [
    "Costs",
    "effective_k",
    "expected_tokens",
    "forward_seconds",
    "measure_costs",
    "round_seconds",
    "speedup_bound",
]

Costs = dict[str, dict[int, float]]
"""Median forward seconds per model role and tokens fed (`measure_costs`)."""
Job = tuple[str, LocalModel, list[list[int]], int]
"""One forward to time: (role, model, prompt rows, tokens fed)."""


def forward_seconds(
    lm: LocalModel, prompts: Sequence[list[int]], new: int, repeats: int, vocab_size: int
) -> float:
    """Median seconds of one `TokenSequence.forward` of `new` tokens after a cached prompt.

    Each timed call appends `new` tokens, feeds them (log-probs at every one, as a verify
    forward returns), and rolls the sequence and its cache back to the prompt.
    """
    sequence = lm.sequence(*prompts, vocab_size=vocab_size)
    sequence.forward()  # the prompt is now cached
    cached = sequence.length
    filler = [prompts[0][-1]] * new
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else lambda: None

    def forward() -> None:
        sequence.append(filler)
        sequence.forward(new)
        sequence.rollback(cached)
        sync()

    return median_seconds(forward, repeats)


def measure_costs(
    llm: SpecSteerLLM,
    prompts: Prompts,
    ks: Sequence[int],
    repeats: int,
    batched: bool,
    each: Callable[[list[Job]], Iterable[Job]] = iter,
) -> Costs:
    """Median forward costs in seconds, on one example's prompts, by tokens fed.

    generalist: its 1-token step (c_G) and its K+1-token verify forward, public prompt.
    specialist: its 1-token draft step on the private prompt (c_S).
    specialist_public: its K+1-token forward on the public prompt (q_gen of a round).
    specialist_batched: its 1-token step on both prompts at once (when the engine batches).
    `each` walks the forwards to time (a progress bar: `Phases.each`).
    """
    vocab = min(llm.specialist.vocab_size, llm.generalist.vocab_size)
    verify = sorted({1, *(k + 1 for k in ks)})
    jobs = [
        *(("generalist", llm.generalist, [prompts.public_generalist], n) for n in verify),
        ("specialist", llm.specialist, [prompts.private], 1),
        *(
            ("specialist_public", llm.specialist, [prompts.public_specialist], n)
            for n in verify[1:]
        ),
    ]
    if batched:
        jobs.append(
            ("specialist_batched", llm.specialist, [prompts.private, prompts.public_specialist], 1)
        )
    costs: Costs = {}
    for name, lm, rows, n in each(jobs):
        costs.setdefault(name, {})[n] = forward_seconds(lm, rows, n, repeats, vocab)
    return costs


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per round with K drafts, each accepted with probability α (i.i.d.)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def round_seconds(
    method: str, alpha: float, k: int, costs: Costs, drafts: float | None = None
) -> float:
    """Model time of one round, as the engine spends it.

    speculative: `drafts` (default K) specialist steps + one K+1-token generalist verify forward.
    specsteer (and any method reading q_gen): the same, plus q_gen — one K+1-token specialist
    forward on the public prompt (or, when the engine batches q_ctx with q_gen, K batch-of-2
    steps instead of both) — plus, with probability α^K (every draft accepted), one more q_ctx
    step for the recovery.
    """
    verify = costs["generalist"][k + 1]
    drafts = k if drafts is None else drafts
    if not METHOD_SPECS[method].uses_q_gen:
        return drafts * costs["specialist"][1] + verify
    if "specialist_batched" in costs:
        return (drafts + alpha**k) * costs["specialist_batched"][1] + verify
    steps = (drafts + alpha**k) * costs["specialist"][1]
    return steps + costs["specialist_public"][k + 1] + verify


def speedup_bound(
    method: str,
    alpha: float,
    k: int,
    costs: Costs,
    tokens_per_round: float | None = None,
    drafts_per_round: float | None = None,
) -> float:
    """Tokens/round · c_G / round cost: the speed-up if decoding cost only model forwards.

    With the measured tokens and drafts per round, the bound keeps the real acceptance pattern
    (accepted drafts come in runs, rounds near the budget draft fewer), so measured/bound
    isolates the engine's overhead; without them, the i.i.d. formula `expected_tokens` is used.
    """
    tokens = expected_tokens(alpha, k) if tokens_per_round is None else tokens_per_round
    return (
        tokens * costs["generalist"][1] / round_seconds(method, alpha, k, costs, drafts_per_round)
    )


def effective_k(k: int | str | None, drafts: float, costs: Costs) -> int:
    """The K whose forward costs a row's bound uses: its own, or under "auto" the measured
    drafts per round, rounded (within the measured verify sizes)."""
    if isinstance(k, int):
        return k
    return min(max(1, round(drafts)), max(costs["generalist"]) - 1)
