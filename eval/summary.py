"""One row of a results table, for `eval.report` and `eval.bench` alike: generations pooled.

Every figure pools its group rather than averaging per generation: tokens/s is
Σnew_tokens/Σseconds, acceptance Σaccepted/Σdrafted (a fraction; tables print it ×100),
generalist calls per token Σcalls/Σtokens, and the speed-up is tokens/s over the generalist
row's. ROUGE-1/L are means over examples, ×100 as the paper reports them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_specsteer.methods import METHODS

__all__ = [
    "BASELINE",
    "COUNTERS",
    "TABLE_ORDER",
    "Summary",
    "add_speedups",
    "ratio",
    "summarise",
]

COUNTERS = ("new_tokens", "seconds", "drafted", "accepted", "generalist_calls")
"""The counters of one generation (its `generation_info`) that a row sums."""
BASELINE = "generalist"
"""The method speed-ups are measured against."""
PROPOSED = "specsteer"
TABLE_ORDER: tuple[str, ...] = (*(m for m in METHODS if m != PROPOSED), PROPOSED)
"""Methods as tables list them: the baselines in the rows' order (`methods.METHODS`), then
SpecSteer, as the paper orders them."""


@dataclass(kw_only=True)
class Summary:
    """One table row: the generations of one setting (method, γ, α, K) pooled.

    The last fields belong to one producer each and stay None elsewhere: `run` names the run
    of an `eval.report` row; `label`, the peak memory and the speed-up bound are `eval.bench`'s.
    """

    method: str
    gamma: float | None = None
    alpha: float | None = None
    k: int | None = None  # draft tokens, where the table varies them
    examples: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    generalist_calls: int = 0
    tokens_per_second: float | None = None  # Σnew_tokens / Σseconds; None: nothing timed
    acceptance: float | None = None  # fraction Σaccepted / Σdrafted; None: nothing drafted
    generalist_calls_per_token: float | None = None
    rouge1: float = math.nan  # ×100, mean over examples
    rougeL: float = math.nan  # ×100, mean over examples
    speedup: float | None = None  # tokens/s over the generalist row's; None without one
    run: str | None = None
    label: str | None = None
    peak_rss_mb: float | None = None  # max over generations
    peak_cuda_mb: float | None = None
    expected_tokens_per_round: float | None = None  # E at the measured acceptance (i.i.d.)
    tokens_per_round: float | None = None  # measured
    round_seconds: float | None = None  # model time of one round, from the forward costs
    bound_speedup: float | None = None
    measured_over_bound: float | None = None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None (a dash in tables, null in JSON) when either is missing or
    the denominator is not positive. Every table of the eval package divides with this."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def summarise(
    generations: Iterable[Mapping[str, Any]],
    *,
    examples: int,
    rouge1: float,
    rougeL: float,
    **fields: Any,
) -> Summary:
    """Pool the `COUNTERS` of `generations` into one row; `fields` name it (method, γ, ...)."""
    generations = list(generations)
    totals = {name: sum(g[name] for g in generations) for name in COUNTERS}
    tokens, drafted = totals["new_tokens"], totals["drafted"]
    return Summary(
        **fields,
        **totals,
        examples=examples,
        rouge1=rouge1,
        rougeL=rougeL,
        tokens_per_second=ratio(tokens, totals["seconds"]),
        acceptance=ratio(totals["accepted"], drafted),
        generalist_calls_per_token=ratio(totals["generalist_calls"], tokens),
    )


def add_speedups(rows: Sequence[Summary]) -> None:
    """Set each row's speed-up over the pooled tokens/s of the `BASELINE` rows among `rows`."""
    baseline = [row for row in rows if row.method == BASELINE]
    speed = ratio(sum(r.new_tokens for r in baseline), sum(r.seconds for r in baseline))
    for row in rows:
        speedup = ratio(row.tokens_per_second, speed)
        row.speedup = speedup if speedup is not None and math.isfinite(speedup) else None
