#!/usr/bin/env python
"""The benchmark suite: every method on held-out LongLaMP product reviews, with sweeps and bounds.

    python -m eval.world --out data/world                  # the held-out data, once
    python -m eval.bench --data data/world --prompts 20 --out runs/bench
    python -m eval.bench --specialist S --generalist G --data FOLDER --split val --reps 3

On one specialist/generalist pair (HF folders sharing a tokenizer; default: the packaged
`langchain_specsteer/demo_pair`) and the same held-out examples, it measures:

1. every method (generalist, specialist, speculative, light_costeer, costeer, specsteer at
   γ=--gamma) greedily: tokens/s (Σtokens/Σseconds), speed-up over `generalist`, acceptance
   (Σaccepted/Σdrafted), generalist calls per token, ROUGE-1/L ×100 against the references,
   and the peak memory growth of a generation (see `PeakMemory`);
2. `transformers` assisted generation (`generate(assistant_model=...)`, K drafts a round,
   constant schedule, no confidence stopping) as an outside peer of `speculative`, and
   whether its tokens, ours (`speculative`) and the generalist's are the same;
3. the analytical speed-up bound of speculative and specsteer from measured forward costs
   and the measured acceptance (`speedup_bound`), and measured / bound;
4. a γ sweep of specsteer and a K sweep of specsteer (γ=--gamma) and speculative;
5. adaptive rounds: at each γ of --adaptive-gammas, specsteer at every fixed K of
   --adaptive-k beside `draft_tokens="auto"` and `gate="context"`, and speculative with
   "auto"; and `transformers` assisted generation's own adaptive settings: its heuristic
   schedule (`num_assistant_tokens_schedule="heuristic"`) and its confidence threshold
   (`assistant_confidence_threshold`, at --hf-thresholds; 0.4 is its default), starting
   from --hf-start drafts (20, its default).

Every setting runs on every example in one process, interleaved: the order of the settings
rotates by one from example to example (and from repetition to repetition), so machine
noise hits them alike, after one uncounted generation of each (`eval.harness`). Our methods
are timed by the engine (the decoding loop, prompt prefill included); the peer by the wall
time of its `generate` call. Writes `bench.json` (everything), `bench.md` (the tables, also
printed) and `bench.png` (R-L vs speed-up).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval import hf_assisted, pair
from eval.bounds import (
    Costs,
    effective_k,
    expected_tokens,
    measure_costs,
    round_seconds,
    speedup_bound,
)
from eval.cli import PACKAGE, add_output_options, command_parser, floats
from eval.harness import (
    TASK,
    Case,
    PeakMemory,
    Phases,
    figure,
    interleaved,
    load_cases,
    machine_info,
    ratio,
    write_outputs,
)
from eval.hf_assisted import HF_PEER
from eval.metrics import mean_rouge
from eval.summary import TABLE_ORDER, Summary, add_speedups, summarise
from eval.tables import DASH, num, percent, table
from langchain_specsteer import SpecSteerLLM, demo_pair
from langchain_specsteer.engine import SpecSteerEngine
from langchain_specsteer.methods import METHOD_SPECS

__all__ = ["Plan", "Setting", "build_parser", "main", "markdown_report", "parse_args"]

METHODS = TABLE_ORDER  # every method of the engine, in table order
HF_DEFAULT_CONFIDENCE = 0.4  # transformers' default assistant_confidence_threshold
DRAFTERS = tuple(name for name, spec in METHOD_SPECS.items() if spec.drafts)  # K sweep, bounds
DRAFTING = (*DRAFTERS, HF_PEER)  # settings that take a K
GATED = tuple(name for name, spec in METHOD_SPECS.items() if spec.verify == "ratio")  # take a γ
SUMMARY_FIELDS = frozenset(Summary.__dataclass_fields__)
BASELINE_STYLE = {"generalist": ("s", "black"), "specialist": ("^", "tab:grey")}  # in plots


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Setting:
    """One thing to time: a method of the engine (or the HF peer) with its γ and K.

    Attributes:
        k: drafts per round, or "auto" (`draft_tokens="auto"`); the HF peer's (first) K.
        gate: "context" for `gate="context"` (None: the default, "fixed").
        schedule: the HF peer's `num_assistant_tokens_schedule` (None: "constant").
        confidence: the HF peer's `assistant_confidence_threshold` (None: 0, none).
    """

    method: str
    gamma: float | None = None
    k: int | str | None = None
    gate: str | None = None
    schedule: str | None = None
    confidence: float | None = None

    @property
    def label(self) -> str:
        knobs = [f"γ={self.gamma:g}"] if self.gamma is not None else []
        knobs += [f"K={self.k}"] if self.k is not None else []
        knobs += [f"gate={self.gate}"] if self.gate is not None else []
        knobs += [self.schedule] if self.schedule is not None else []
        knobs += [f"conf={self.confidence:g}"] if self.confidence is not None else []
        return f"{self.method} ({', '.join(knobs)})" if knobs else self.method

    def overrides(self) -> dict[str, Any]:
        """Per-call `DecodingParams` overrides for the engine."""
        values = {
            "method": self.method,
            "gamma": self.gamma,
            "draft_tokens": self.k,
            "gate": self.gate,
        }
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Plan:
    """The settings of each table; `settings` is all of them once, in table order."""

    methods: list[Setting]
    gamma_sweep: list[Setting]
    k_sweep: list[Setting]
    adaptive: list[Setting] = field(default_factory=list)
    hf_adaptive: list[Setting] = field(default_factory=list)

    @property
    def settings(self) -> list[Setting]:
        tables = [*self.methods, *self.gamma_sweep, *self.k_sweep, *self.adaptive]
        return list(dict.fromkeys([*tables, *self.hf_adaptive]))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        k, gamma = args.draft_tokens, args.gamma

        def setting(method: str, g: float | None = None, kk: int | None = None) -> Setting:
            return Setting(method, g if method in GATED else None, kk)

        methods = [setting(m, gamma, k if m in DRAFTING else None) for m in (*METHODS, HF_PEER)]
        k_sweep = [setting(m, gamma, kk) for m in DRAFTERS for kk in args.k_sweep]
        adaptive = [
            *(
                Setting("specsteer", g, kk, gate)
                for g in args.adaptive_gammas
                for kk, gate in [
                    *((kk, None) for kk in args.adaptive_k),
                    (k, "context"),
                    ("auto", None),
                    ("auto", "context"),
                ]
            ),
            Setting("speculative", k="auto"),
        ]
        start = args.hf_start
        hf_adaptive = [
            Setting(HF_PEER, k=start, schedule="heuristic"),
            Setting(HF_PEER, k=start, schedule="heuristic", confidence=HF_DEFAULT_CONFIDENCE),
            *(Setting(HF_PEER, k=start, confidence=c) for c in args.hf_thresholds),
        ]
        gamma_sweep = [setting("specsteer", g, k) for g in args.gammas]
        if not args.adaptive:
            return cls(methods, gamma_sweep, k_sweep)
        return cls(methods, gamma_sweep, k_sweep, adaptive, hf_adaptive)


# ---------------------------------------------------------------- one generation


@dataclass
class Sample:
    """One timed generation of one setting on one example."""

    example_id: str
    rep: int
    tokens: list[int]
    text: str
    new_tokens: int
    seconds: float
    drafted: int
    accepted: int
    generalist_calls: int
    peak_rss_mb: float | None
    peak_cuda_mb: float | None


def run_setting(
    engine: SpecSteerEngine, llm: SpecSteerLLM, case: Case, setting: Setting, memory: PeakMemory
) -> Sample:
    """One generation of a setting: an engine method, timed by the engine's own clock (the
    decoding loop, prompt prefill included), or the HF peer, timed by its `generate` call."""
    if setting.method == HF_PEER:
        schedule, confidence = setting.schedule or "constant", setting.confidence or 0.0
        counts = hf_assisted.generate(llm, case.prompts, setting.k, memory, schedule, confidence)
    else:
        run = engine.run(case.prompts, llm.decoding_params(**setting.overrides()))
        with memory:
            tokens = [token for round_ in run for token in round_.tokens]
        stats = run.stats
        counts = {
            "tokens": tokens,
            "new_tokens": stats.new_tokens,
            "seconds": stats.seconds,
            "drafted": stats.drafted,
            "accepted": stats.accepted,
            "generalist_calls": stats.generalist_calls,
        }
    text = llm.generalist.tokenizer.decode(  # what SpecSteerLLM returns for these tokens
        counts["tokens"], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return Sample(
        example_id=case.id,
        rep=0,
        text=text,
        peak_rss_mb=memory.rss_mb,
        peak_cuda_mb=memory.cuda_mb,
        **counts,
    )


# ---------------------------------------------------------------- summaries


def _max(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarise_setting(
    setting: Setting, samples: Sequence[Sample], references: dict[str, str]
) -> Summary:
    """Σtokens/Σseconds, acceptance, calls/token, ROUGE (first repetition) and peak memory."""
    first = [s for s in samples if s.rep == 0]
    scores = mean_rouge([s.text for s in first], [references[s.example_id] for s in first])
    return summarise(
        [vars(sample) for sample in samples],
        label=setting.label,
        method=setting.method,
        gamma=setting.gamma,
        k=setting.k,
        examples=len(first),
        rouge1=scores["rouge1"],
        rougeL=scores["rougeL"],
        peak_rss_mb=_max([s.peak_rss_mb for s in samples]),
        peak_cuda_mb=_max([s.peak_cuda_mb for s in samples]),
    )


def add_speedups_and_bounds(summaries: dict[Setting, Summary], costs: Costs) -> None:
    """Speed-up over the generalist row; the bound for the rows of drafting methods (ours)."""
    add_speedups(list(summaries.values()))
    for setting, row in summaries.items():
        if setting.method in DRAFTERS and row.acceptance is not None:
            row.tokens_per_round = row.new_tokens / row.generalist_calls
            drafts = row.drafted / row.generalist_calls
            k = effective_k(setting.k, drafts, costs)
            row.bound_speedup = speedup_bound(
                setting.method, row.acceptance, k, costs, row.tokens_per_round, drafts
            )
            row.expected_tokens_per_round = expected_tokens(row.acceptance, k)
            row.round_seconds = round_seconds(setting.method, row.acceptance, k, costs, drafts)
            row.measured_over_bound = ratio(row.speedup, row.bound_speedup)


def compare_outputs(a: Sequence[Sample], b: Sequence[Sample]) -> dict[str, Any]:
    """How many examples (first repetition) two settings decoded to the same tokens."""
    first_b = {s.example_id: s.tokens for s in b if s.rep == 0}
    pairs = [(s.tokens, first_b[s.example_id]) for s in a if s.rep == 0]
    divergence = [_first_difference(x, y) for x, y in pairs]
    return {
        "equal": sum(d is None for d in divergence),
        "total": len(pairs),
        "first_difference": divergence,  # per example: token index, or None when equal
    }


def _first_difference(x: Sequence[int], y: Sequence[int]) -> int | None:
    for index, (u, v) in enumerate(zip(x, y, strict=False)):
        if u != v:
            return index
    return None if len(x) == len(y) else min(len(x), len(y))


def equivalences(plan: Plan, samples: dict[Setting, list[Sample]]) -> list[dict[str, Any]]:
    """Greedy speculative decoding (ours at every K, and HF's) must equal the generalist."""
    generalist = Setting("generalist")
    peers = [s for s in plan.settings if s.method in ("speculative", HF_PEER)]
    checks = [(peer, generalist) for peer in peers]
    checks += [
        (hf, Setting("speculative", k=hf.k))
        for hf in peers
        if hf.method == HF_PEER and Setting("speculative", k=hf.k) in samples
    ]
    return [
        {"a": a.label, "b": b.label, **compare_outputs(samples[a], samples[b])} for a, b in checks
    ]


# ---------------------------------------------------------------- rendering


def _speed_cells(row: Summary) -> list[str]:
    return [
        num(row.tokens_per_second, ".1f"),
        num(row.speedup, ".2f", "×"),
        percent(row.acceptance),
    ]


def methods_table(rows: Sequence[Summary]) -> str:
    header = [
        "Method", "γ", "K", "tokens/s", "Speed-up", "Accept. %", "G calls/token",
        "R-1", "R-L", "Peak RSS +MB",
    ]  # fmt: skip
    body = [
        [
            row.method,
            num(row.gamma, "g"),
            num(row.k, "d"),
            *_speed_cells(row),
            num(row.generalist_calls_per_token),
            num(row.rouge1),
            num(row.rougeL),
            num(row.peak_rss_mb, ".1f"),
        ]
        for row in rows
    ]
    return table(header, body)


def sweep_table(rows: Sequence[Summary], knob: str) -> str:
    """Like the paper's Table 10: one line per γ (or K) with speed and quality side by side."""
    header = [
        "Method", knob, "tokens/s", "Speed-up", "Accept. %", "R-1", "R-L", "Bound", "Meas./bound",
    ]  # fmt: skip
    body = [
        [
            row.method,
            num(row.gamma if knob == "γ" else row.k, "g"),
            *_speed_cells(row),
            num(row.rouge1),
            num(row.rougeL),
            num(row.bound_speedup, ".2f", "×"),
            num(row.measured_over_bound, ".2f"),
        ]
        for row in rows
    ]
    return table(header, body)


def adaptive_table(rows: Sequence[Summary]) -> str:
    """The adaptive settings beside every fixed K, γ by γ."""
    header = [
        "Method", "γ", "K", "gate", "tokens/s", "Speed-up", "Accept. %", "tokens/round",
        "R-L", "Bound", "Meas./bound",
    ]  # fmt: skip
    body = [
        [
            row.method,
            num(row.gamma, "g"),
            str(row.k),
            "context" if "gate=context" in (row.label or "") else "fixed",
            *_speed_cells(row),
            num(row.tokens_per_round, ".2f"),
            num(row.rougeL),
            num(row.bound_speedup, ".2f", "×"),
            num(row.measured_over_bound, ".2f"),
        ]
        for row in rows
    ]
    return table(header, body)


def adaptive_verdicts(rows: Sequence[Summary]) -> list[dict[str, Any]]:
    """Per γ: the best fixed K (tokens/s) and each adaptive setting against it."""
    verdicts = []
    for gamma in dict.fromkeys(r.gamma for r in rows if r.method == "specsteer"):
        at = [r for r in rows if r.method == "specsteer" and r.gamma == gamma]
        fixed = [r for r in at if isinstance(r.k, int) and "gate=" not in (r.label or "")]
        if not fixed:
            continue
        best = max(fixed, key=lambda r: r.tokens_per_second or 0.0)
        k6 = next((r for r in fixed if r.k == 6), None)
        for row in at:
            if row in fixed:
                continue
            verdicts.append(
                {
                    "gamma": gamma,
                    "setting": row.label,
                    "best_fixed": best.label,
                    "over_best_fixed": ratio(row.tokens_per_second, best.tokens_per_second),
                    "speedup": row.speedup,
                    "rougeL_minus_k6": None if k6 is None else row.rougeL - k6.rougeL,
                }
            )
    return verdicts


def verdict_lines(verdicts: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"- {v['setting']}: {v['over_best_fixed']:.2f}× the best fixed K ({v['best_fixed']}), "
        f"{num(v['speedup'], '.2f', '×')} the generalist, R-L "
        f"{num(v['rougeL_minus_k6'], '+.2f')} against K=6"
        for v in verdicts
    )


def hf_table(rows: Sequence[dict[str, Any]], ours: Sequence[Summary]) -> str:
    """transformers' adaptive settings beside our speculative decoding."""
    header = [
        "Setting", "schedule", "first K", "threshold", "tokens/s", "Speed-up", "Accept. %",
        "G calls/token",
    ]  # fmt: skip
    body = [
        [
            row["label"],
            row["schedule"],
            str(row["k"]),
            num(row["confidence"], "g"),
            *_speed_cells(Summary(**{k: v for k, v in row.items() if k in SUMMARY_FIELDS})),
            num(row["generalist_calls_per_token"]),
        ]
        for row in rows
    ]
    body += [
        [r.label, "auto" if r.k == "auto" else "constant", str(r.k), DASH, *_speed_cells(r),
         num(r.generalist_calls_per_token)]
        for r in ours
    ]  # fmt: skip
    return table(header, body)


def costs_table(costs: Costs) -> str:
    names = {
        "generalist": "generalist, public prompt (c_G at 1; verify at K+1)",
        "specialist": "specialist, private prompt (c_S, a draft step)",
        "specialist_public": "specialist, public prompt (q_gen of a round)",
        "specialist_batched": "specialist, both prompts as a batch of 2",
    }
    body = [
        [names[name], str(n), num(seconds * 1e6, ".0f")]
        for name, by_size in costs.items()
        for n, seconds in sorted(by_size.items())
    ]
    return table(["Forward", "tokens fed", "µs (median)"], body)


def equivalence_lines(checks: Sequence[dict[str, Any]]) -> str:
    lines = []
    for check in checks:
        verdict = "identical" if check["equal"] == check["total"] else "DIFFERENT"
        lines.append(
            f"- {check['a']} vs {check['b']}: {check['equal']}/{check['total']} examples "
            f"token-for-token equal ({verdict})"
        )
    return "\n".join(lines)


def markdown_report(record: dict[str, Any]) -> str:
    """The report: setup, the methods, output equality, bounds, sweeps, notes."""
    config, machine = record["config"], record["machine"]
    rows = {
        key: [Summary(**row) for row in record[key]]
        for key in ("methods", "gamma_sweep", "k_sweep", "adaptive")
    }
    drafting = [r for r in rows["methods"] if r.bound_speedup is not None]
    bound_rows = [
        [
            r.label,
            percent(r.acceptance),
            num(r.expected_tokens_per_round),
            num(r.tokens_per_round),
            num(r.round_seconds * 1e6, ".0f"),
            num(r.bound_speedup, ".2f", "×"),
            num(r.speedup, ".2f", "×"),
            num(r.measured_over_bound, ".2f"),
        ]
        for r in drafting
    ]
    return "\n".join(
        [
            "# SpecSteer benchmark",
            "",
            f"Specialist `{config['specialist']}`, generalist `{config['generalist']}`; "
            f"{record['examples']} held-out {TASK} examples ({config['split']} of "
            f"`{config['data']}`), BM25 top-{config['k']} profile entries as private context; "
            f"greedy, max_new_tokens {config['max_new_tokens']}, K={config['draft_tokens']}, "
            f"γ={config['gamma']:g}, {config['reps']} rep(s), settings interleaved; "
            f"torch {machine['torch']}, transformers {machine['transformers']}, "
            f"{machine['device']}, {config['threads']} threads.",
            "",
            "## Methods",
            "",
            methods_table(rows["methods"]),
            "",
            f"`{HF_PEER}` is `transformers` assisted generation (`generate(assistant_model=...)`, "
            "constant K, no confidence stopping); its assistant sees the public prompt only, ours "
            "(`speculative`) drafts with the private context. Its acceptance is "
            "(tokens − target forwards) / assistant forwards.",
            "",
            "## Same outputs?",
            "",
            equivalence_lines(record["equivalence"]),
            "",
            "## Speed-up bound",
            "",
            "Bound = tokens per round · c_G / round cost, with the measured tokens per round "
            "(Σtokens/Σrounds) and round cost = d·c_S + c_verify(K+1), d the measured drafts "
            "per round (+ for specsteer: q_gen's K+1-token specialist forward and α̂^K·c_S for "
            "the recovery step after a fully accepted draft): the speed-up if only model "
            "forwards cost time, so measured/bound is the share the engine's overhead leaves. "
            "For reference, E i.i.d. = (1 − α̂^(K+1)) / (1 − α̂) is what independent acceptance "
            "at the measured rate α̂ would give; accepted drafts come in runs here.",
            "",
            table(
                [
                    "Setting",
                    "α̂ %",
                    "E i.i.d.",
                    "tokens/round",
                    "round µs",
                    "Bound",
                    "Measured",
                    "Meas./bound",
                ],
                bound_rows,
            ),
            "",
            costs_table(record["forward_seconds"]),
            "",
            "## γ sweep (specsteer)",
            "",
            sweep_table(rows["gamma_sweep"], "γ"),
            "",
            "## K sweep",
            "",
            sweep_table(rows["k_sweep"], "K"),
            "",
            "Speed-up is over the generalist measured in the same run. Peak RSS +MB: the "
            "largest resident-memory growth during one generation, sampled every "
            f"{config['memory_interval_ms']:g} ms from /proc/self/statm (approximate: misses "
            "shorter spikes; memory the allocator already holds is not counted).",
            *adaptive_section(record, rows["adaptive"]),
        ]
    )


def adaptive_section(record: dict[str, Any], rows: Sequence[Summary]) -> list[str]:
    """The adaptive rounds' tables (empty without --adaptive)."""
    if not rows:
        return []
    speculative = [
        r for r in [*record["k_sweep"], *record["adaptive"]] if r["method"] == "speculative"
    ]
    return [
        "",
        "## Adaptive rounds",
        "",
        '`draft_tokens="auto"` (the device stops drafting once its estimate that the whole '
        'draft is accepted falls below `draft_stop`) and `gate="context"` '
        "(γ·exp(−JSD(q_ctx, q_gen)) per position) beside every fixed K, γ by γ. Under "
        '"auto" the bound uses the forward costs at the measured drafts per round.',
        "",
        adaptive_table(rows),
        "",
        verdict_lines(record["adaptive_verdicts"]),
        "",
        "## transformers assisted generation, adaptive",
        "",
        "Its heuristic schedule (K + 2 after a round accepted whole, else K − 1) and its "
        "confidence threshold (the assistant stops drafting below it; `transformers` retunes it "
        "from each round's matches), each generation starting afresh; beside our "
        'speculative decoding at fixed K and "auto".',
        "",
        hf_table(record["hf_adaptive"], [Summary(**r) for r in speculative]),
    ]


def plot_sweeps(record: dict[str, Any], path: Path) -> None:
    """PNG: R-L against speed-up for the γ sweep (left) and the K sweep (right)."""
    drawing = figure(11.0, 4.5)
    panels = (("gamma_sweep", "gamma", "γ"), ("k_sweep", "k", "K"))
    baselines = [r for r in record["methods"] if r["method"] in ("generalist", "specialist")]
    for index, (key, knob, symbol) in enumerate(panels):
        axes = drawing.add_subplot(1, 2, index + 1)
        for method in dict.fromkeys(r["method"] for r in record[key]):
            series = [r for r in record[key] if r["method"] == method]
            xs, ys = [r["speedup"] for r in series], [r["rougeL"] for r in series]
            axes.plot(xs, ys, marker="o", label=method)
            for row, x, y in zip(series, xs, ys, strict=True):
                text = f"{symbol}={row[knob]:g}"
                axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for row in baselines:
            point = ([row["speedup"]], [row["rougeL"]])
            marker, color = BASELINE_STYLE[row["method"]]
            axes.plot(*point, marker=marker, color=color, linestyle="none", label=row["method"])
        axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("speed-up over generalist (×)")
        axes.set_ylabel("ROUGE-L (×100)")
        axes.set_title(f"{symbol} sweep")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    drawing.savefig(path, format="png", dpi=120)


# ---------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    values = [int(v) for v in floats(text)]
    if any(v < 1 for v in values):
        msg = f"expected positive integers such as 1,2,4, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench", __doc__)
    pair = "default: langchain_specsteer/demo_pair/{name} when present"
    parser.add_argument(
        "--specialist", help=f"HF folder or hub id ({pair.format(name='specialist')})"
    )
    parser.add_argument(
        "--generalist", help=f"HF folder or hub id ({pair.format(name='generalist')})"
    )
    parser.add_argument(
        "--data", required=True, help="folder with val.jsonl / test.jsonl (`python -m eval.world`)"
    )
    parser.add_argument("--split", default="test", choices=("val", "test"), help="held-out split")
    parser.add_argument("--prompts", type=int, default=20, help="held-out examples used")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--k", type=int, default=3, help="BM25 profile entries retrieved")
    parser.add_argument(
        "--gamma", type=float, default=PACKAGE.gamma, help="specsteer's γ in the tables"
    )
    parser.add_argument(
        "--gammas",
        type=floats,
        default=[1.0, 0.5, 0.1, 0.01],
        metavar="G,..",
        help="γ values of the specsteer sweep",
    )
    parser.add_argument("--draft-tokens", type=int, default=6, help="K in the methods table")
    parser.add_argument(
        "--k-sweep",
        type=_ints,
        default=[1, 2, 4, 6, 8],
        metavar="K,..",
        help="K values of the speculative and specsteer sweeps",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="add the adaptive rounds: specsteer's fixed K vs draft_tokens='auto' and "
        "gate='context' at each --adaptive-gammas, speculative with 'auto', and transformers' "
        "heuristic schedule and confidence thresholds",
    )
    parser.add_argument(
        "--adaptive-gammas",
        type=floats,
        default=[1.0, 0.5, 0.1],
        metavar="G,..",
        help="γ values of the adaptive table",
    )
    parser.add_argument(
        "--adaptive-k",
        type=_ints,
        default=[4, 6, 8, 12],
        metavar="K,..",
        help="fixed K values the adaptive settings are compared with at each γ",
    )
    parser.add_argument(
        "--hf-start", type=int, default=20, help="transformers' num_assistant_tokens (its default)"
    )
    parser.add_argument(
        "--hf-thresholds",
        type=floats,
        default=[0.2, 0.4, 0.6],
        metavar="C,..",
        help="transformers' assistant_confidence_threshold values (0.4: its default)",
    )
    parser.add_argument("--reps", type=int, default=1, help="passes over the examples")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="e.g. bfloat16 (default: float32 on CPU)")
    parser.add_argument("--cost-repeats", type=int, default=200, help="timed forwards per cost")
    parser.add_argument(
        "--memory-interval-ms", type=float, default=1.0, help="RSS sampling period; 0: ends only"
    )
    add_output_options(parser, "runs/bench")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.specialist is None or args.generalist is None:
        try:
            shipped = demo_pair()
        except FileNotFoundError as error:
            missing = "--specialist" if args.specialist is None else "--generalist"
            parser.error(f"{missing} is required: {error}")
        args.specialist = args.specialist or shipped.specialist
        args.generalist = args.generalist or shipped.generalist
    return args


def load_llm(args: argparse.Namespace) -> SpecSteerLLM:
    return pair.load_llm(
        args.specialist,
        args.generalist,
        TASK,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        draft_tokens=args.draft_tokens,
    )


def main(argv: Sequence[str] | None = None, *, progress: Callable[[str], None] = print) -> dict:
    """Run the suite; write bench.json, bench.md and bench.png into --out; return the record."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    phases = Phases("bench", quiet=args.quiet)
    llm = load_llm(args)
    cases = [c.rendered(llm) for c in load_cases(args.data, args.split, args.prompts, args.k)]
    plan = Plan.from_args(args)
    engine = SpecSteerEngine(llm.specialist, llm.generalist, batch_specialist=llm.batch_specialist)
    cuda = llm.generalist.device.type == "cuda"

    def run(case: Case, setting: Setting) -> Sample:
        memory = PeakMemory(args.memory_interval_ms / 1e3, cuda=cuda)
        return run_setting(engine, llm, case, setting, memory)

    for setting in phases.each("warm-up", plan.settings):  # not counted
        run(cases[0], setting)
    samples: dict[Setting, list[Sample]] = {setting: [] for setting in plan.settings}
    trials = interleaved(cases, plan.settings, args.reps)
    total = args.reps * len(cases) * len(plan.settings)
    for rep, case, setting in phases.each("settings", trials, total):
        sample = run(case, setting)
        sample.rep = rep
        samples[setting].append(sample)
    ks = [s.k for s in plan.settings if s.method in DRAFTING and isinstance(s.k, int)]
    if any(s.k == "auto" for s in plan.settings):  # any draft length up to the longest
        ks += range(1, llm.max_draft_tokens + 1)
    costs = measure_costs(
        llm,
        cases[0].prompts,
        ks,
        args.cost_repeats,
        engine.batch_specialist,
        each=lambda jobs: phases.each("forward costs", jobs),
    )
    references = {case.id: case.example.output for case in cases}
    summaries = {s: summarise_setting(s, samples[s], references) for s in plan.settings}
    add_speedups_and_bounds(summaries, costs)
    record = {
        "config": vars(args),
        "machine": machine_info(engine),
        "examples": len(cases),
        "methods": [asdict(summaries[s]) for s in plan.methods],
        "gamma_sweep": [asdict(summaries[s]) for s in plan.gamma_sweep],
        "k_sweep": [asdict(summaries[s]) for s in plan.k_sweep],
        "adaptive": [asdict(summaries[s]) for s in plan.adaptive],
        "hf_adaptive": [
            {
                **asdict(summaries[s]),
                "schedule": s.schedule or "constant",
                "confidence": s.confidence,
            }
            for s in plan.hf_adaptive
        ],
        "equivalence": equivalences(plan, samples),
        "adaptive_verdicts": adaptive_verdicts([summaries[s] for s in plan.adaptive]),
        "forward_seconds": costs,
        "samples": {s.label: [asdict(x) for x in samples[s]] for s in plan.settings},
    }
    report = markdown_report(record)
    write_outputs(Path(args.out), "bench", record, report, plot_sweeps)
    progress(report)
    return record


if __name__ == "__main__":
    main()
