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
noise hits them alike. Our methods are timed by the engine (the decoding loop, prompt
prefill included); the peer by the wall time of its `generate` call. Writes `bench.json`
(everything), `bench.md` (the tables, also printed) and `bench.png` (R-L vs speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval import pair
from eval.__main__ import _floats
from eval.cli import HelpFormatter
from eval.data import Example, load_longlamp
from eval.metrics import mean_rouge
from eval.pair import DEMO_PAIR as DEMO_PAIR
from eval.prompts import retrieve_profile
from eval.summary import TABLE_ORDER, Summary, add_speedups, summarise
from eval.tables import DASH as DASH
from eval.tables import num, percent, table
from eval.timing import median_seconds, timed
from langchain_specsteer import SpecSteerLLM, demo_pair
from langchain_specsteer.engine import Prompts, SpecSteerEngine
from langchain_specsteer.methods import METHOD_SPECS
from langchain_specsteer.models import LocalModel

__all__ = [
    "PeakMemory",
    "Setting",
    "Summary",
    "expected_tokens",
    "main",
    "markdown_report",
    "speedup_bound",
]

TASK = "product_review"
METHODS = TABLE_ORDER  # every method of the engine, in table order
HF_PEER = "hf_assisted"  # transformers generate(assistant_model=...)
HF_DEFAULT_CONFIDENCE = 0.4  # transformers' default assistant_confidence_threshold
DRAFTERS = tuple(name for name, spec in METHOD_SPECS.items() if spec.drafts)  # K sweep, bounds
DRAFTING = (*DRAFTERS, HF_PEER)  # settings that take a K
GATED = tuple(name for name, spec in METHOD_SPECS.items() if spec.verify == "ratio")  # take a γ
MIB = 2**20
SUMMARY_FIELDS = frozenset(Summary.__dataclass_fields__)
_num = num  # eval.bench_remote's name for it
BASELINE_STYLE = {"generalist": ("s", "black"), "specialist": ("^", "tab:grey")}  # in plots


# ---------------------------------------------------------------- what runs


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


@dataclass(frozen=True)
class Case:
    """One held-out example, retrieved and tokenised once for every setting."""

    example: Example
    prompts: Prompts
    documents: int  # profile entries in the private context


def prepare_cases(llm: SpecSteerLLM, examples: Sequence[Example], k: int) -> list[Case]:
    """Retrieve each example's top-k profile entries (BM25) and tokenise its prompts."""
    cases = []
    for example in examples:
        documents = retrieve_profile(example, TASK, "bm25", k)
        cases.append(Case(example, llm.render_prompts(example.input, documents), len(documents)))
    return cases


# ---------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory growth while the `with` block runs, in MiB (None where not measurable).

    CPU (`rss_mb`): a background thread reads the resident set size from /proc/self/statm
    every `interval` seconds (plus once on entry and on exit); the growth is the largest
    sample minus the entry value. It covers everything the process allocates (torch tensors,
    KV caches, Python objects) but is approximate: it misses spikes shorter than the
    interval, and memory the allocator kept from earlier generations is reused without
    showing as growth. The thread runs for every setting alike, so it slows all equally.
    CUDA (`cuda_mb`): `torch.cuda.max_memory_allocated` minus the allocation on entry.
    """

    def __init__(self, interval: float = 0.001, cuda: bool = False):
        self.interval = interval
        self.cuda = cuda and torch.cuda.is_available()
        self.rss_mb: float | None = None
        self.cuda_mb: float | None = None
        self._fd: int | None = None
        self._start = self._peak = 0  # bytes resident on entry, and the most seen since
        self._cuda_start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:  # not Linux: no RSS samples
            return self
        self._start = self._peak = self._rss()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.cuda_mb = (torch.cuda.max_memory_allocated() - self._cuda_start) / MIB
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self._rss())
        os.close(self._fd)
        self.rss_mb = (self._peak - self._start) / MIB


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


def _decode(llm: SpecSteerLLM, tokens: list[int]) -> str:
    """The text `SpecSteerLLM` returns for these tokens (special tokens dropped)."""
    return llm.generalist.tokenizer.decode(
        tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def run_engine(
    engine: SpecSteerEngine, llm: SpecSteerLLM, case: Case, setting: Setting, memory: PeakMemory
) -> Sample:
    """One generation of an engine method; the engine's own clock times the decoding loop."""
    run = engine.run(case.prompts, llm.decoding_params(**setting.overrides()))
    with memory:
        tokens = [token for round_ in run for token in round_.tokens]
    stats = run.stats
    return Sample(
        example_id=case.example.id,
        rep=0,
        tokens=tokens,
        text=_decode(llm, tokens),
        new_tokens=stats.new_tokens,
        seconds=stats.seconds,
        drafted=stats.drafted,
        accepted=stats.accepted,
        generalist_calls=stats.generalist_calls,
        peak_rss_mb=memory.rss_mb,
        peak_cuda_mb=memory.cuda_mb,
    )


@contextmanager
def assistant_config(
    assistant: Any, k: int, schedule: str = "constant", confidence: float = 0.0
) -> Iterator[None]:
    """The assistant's drafting settings that HF reads, restored afterwards (so settings HF
    carries from one call to the next, the heuristic's K and the tuned threshold, start
    afresh each generation). Default: exactly K tokens a round."""
    config = assistant.generation_config
    wanted = {
        "num_assistant_tokens": k,
        "num_assistant_tokens_schedule": schedule,
        "assistant_confidence_threshold": confidence,  # ≤ 0 adds no confidence stopping
    }
    saved = {name: getattr(config, name, None) for name in wanted}
    for name, value in wanted.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


@contextmanager
def forward_counter(model: Any) -> Iterator[list[int]]:
    """Counts the forward calls of a model while the block runs: `counter[0]`."""
    counter = [0]

    def count(*_: object) -> None:
        counter[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        yield counter
    finally:
        handle.remove()


def run_hf_assisted(
    llm: SpecSteerLLM,
    case: Case,
    k: int,
    memory: PeakMemory,
    schedule: str = "constant",
    confidence: float = 0.0,
) -> Sample:
    """`transformers` assisted generation, greedy, the specialist drafting K tokens a round
    (its first K under the heuristic `schedule`; fewer past its `confidence` threshold).

    HF gives the assistant the target's prompt, so the specialist drafts from the public
    prompt here (our `speculative` drafts from the private one). Counts come from forward
    calls: every target forward is one round that commits n_matches + 1 tokens, and every
    assistant forward drafts one token, so accepted = new tokens − rounds.
    """
    target, assistant = llm.generalist.model, llm.specialist.model
    prompt = torch.tensor([case.prompts.public_generalist], device=target.device)
    eos = sorted(llm.generalist.eos_token_ids | llm.specialist.eos_token_ids)
    pad = llm.generalist.tokenizer.pad_token_id
    sync = torch.cuda.synchronize if target.device.type == "cuda" else lambda: None

    def generate() -> torch.Tensor:
        output = target.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            assistant_model=assistant,
            do_sample=False,
            max_new_tokens=llm.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos[0] if pad is None else pad,
        )
        sync()
        return output

    with (
        assistant_config(assistant, k, schedule, confidence),
        forward_counter(target) as rounds,
        forward_counter(assistant) as drafted,
        memory,
        torch.inference_mode(),
    ):
        output, seconds = timed(generate)
    tokens = output[0, prompt.shape[1] :].tolist()
    return Sample(
        example_id=case.example.id,
        rep=0,
        tokens=tokens,
        text=_decode(llm, tokens),
        new_tokens=len(tokens),
        seconds=seconds,
        drafted=drafted[0],
        accepted=len(tokens) - rounds[0],
        generalist_calls=rounds[0],
        peak_rss_mb=memory.rss_mb,
        peak_cuda_mb=memory.cuda_mb,
    )


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def run_interleaved(
    engine: SpecSteerEngine,
    llm: SpecSteerLLM,
    cases: Sequence[Case],
    settings: Sequence[Setting],
    reps: int,
    memory_interval: float,
) -> dict[Setting, list[Sample]]:
    """Every setting on every case, `reps` times; the setting order rotates per example."""
    cuda = llm.generalist.device.type == "cuda"

    def one(case: Case, setting: Setting) -> Sample:
        memory = PeakMemory(memory_interval, cuda=cuda)
        if setting.method == HF_PEER:
            schedule = setting.schedule or "constant"
            return run_hf_assisted(llm, case, setting.k, memory, schedule, setting.confidence or 0)
        return run_engine(engine, llm, case, setting, memory)

    for setting in settings:  # warm-up, not counted
        one(cases[0], setting)
    samples: dict[Setting, list[Sample]] = {setting: [] for setting in settings}
    for rep in range(reps):
        for index, case in enumerate(cases):
            for setting in rotated(settings, rep * len(cases) + index):
                sample = one(case, setting)
                sample.rep = rep
                samples[setting].append(sample)
    return samples


# ---------------------------------------------------------------- forward costs and the bound


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
    llm: SpecSteerLLM, case: Case, ks: Sequence[int], repeats: int, batched: bool
) -> dict[str, dict[int, float]]:
    """Median forward costs in seconds, on the first example's prompts, by tokens fed.

    generalist: its 1-token step (c_G) and its K+1-token verify forward, public prompt.
    specialist: its 1-token draft step on the private prompt (c_S).
    specialist_public: its K+1-token forward on the public prompt (q_gen of a round).
    specialist_batched: its 1-token step on both prompts at once (when the engine batches).
    """
    prompts, vocab = case.prompts, min(llm.specialist.vocab_size, llm.generalist.vocab_size)
    verify = sorted({1, *(k + 1 for k in ks)})

    def time_all(lm: LocalModel, rows: list[list[int]], sizes: Sequence[int]) -> dict[int, float]:
        return {n: forward_seconds(lm, rows, n, repeats, vocab) for n in sizes}

    costs = {
        "generalist": time_all(llm.generalist, [prompts.public_generalist], verify),
        "specialist": time_all(llm.specialist, [prompts.private], [1]),
        "specialist_public": time_all(llm.specialist, [prompts.public_specialist], verify[1:]),
    }
    if batched:
        rows = [prompts.private, prompts.public_specialist]
        costs["specialist_batched"] = time_all(llm.specialist, rows, [1])
    return costs


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per round with K drafts, each accepted with probability α (i.i.d.)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def round_seconds(
    method: str,
    alpha: float,
    k: int,
    costs: dict[str, dict[int, float]],
    drafts: float | None = None,
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
    costs: dict[str, dict[int, float]],
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


def add_speedups_and_bounds(
    summaries: dict[Setting, Summary], costs: dict[str, dict[int, float]]
) -> None:
    """Speed-up over the generalist row; the bound for the rows of drafting methods (ours)."""
    add_speedups(list(summaries.values()))
    for setting, row in summaries.items():
        if setting.method in DRAFTERS and row.acceptance is not None:
            row.tokens_per_round = row.new_tokens / row.generalist_calls
            drafts = row.drafted / row.generalist_calls
            k = effective_k(setting, drafts, costs)
            row.bound_speedup = speedup_bound(
                setting.method, row.acceptance, k, costs, row.tokens_per_round, drafts
            )
            row.expected_tokens_per_round = expected_tokens(row.acceptance, k)
            row.round_seconds = round_seconds(setting.method, row.acceptance, k, costs, drafts)
            if row.speedup is not None:
                row.measured_over_bound = row.speedup / row.bound_speedup


def effective_k(setting: Setting, drafts: float, costs: dict[str, dict[int, float]]) -> int:
    """The K whose forward costs a row's bound uses: its own, or under "auto" the measured
    drafts per round, rounded (within the measured verify sizes)."""
    if isinstance(setting.k, int):
        return setting.k
    return min(max(1, round(drafts)), max(costs["generalist"]) - 1)


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
        best = max(fixed, key=lambda r: r.tokens_per_second)
        k6 = next((r for r in fixed if r.k == 6), None)
        for row in at:
            if row in fixed:
                continue
            verdicts.append(
                {
                    "gamma": gamma,
                    "setting": row.label,
                    "best_fixed": best.label,
                    "over_best_fixed": row.tokens_per_second / best.tokens_per_second,
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


def costs_table(costs: dict[str, dict[int, float]]) -> str:
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
    from langchain_specsteer.extras import optional_import

    optional_import("matplotlib", extra="eval", purpose="Plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("gamma_sweep", "gamma", "γ"), ("k_sweep", "k", "K"))
    baselines = [r for r in record["methods"] if r["method"] in ("generalist", "specialist")]
    for index, (key, knob, symbol) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
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
    figure.savefig(path, format="png", dpi=120)


# ---------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    values = [int(v) for v in _floats(text)]
    if any(v < 1 for v in values):
        msg = f"expected positive integers such as 1,2,4, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
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
    parser.add_argument("--gamma", type=float, default=0.5, help="specsteer's γ in the tables")
    parser.add_argument(
        "--gammas",
        type=_floats,
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
        type=_floats,
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
        type=_floats,
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
    parser.add_argument("--out", default="runs/bench", help="output folder")
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


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine_info(llm: SpecSteerLLM, engine: SpecSteerEngine) -> dict[str, Any]:
    import transformers

    device = llm.generalist.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": f"{device.type} ({name or 'unknown'})",
        "batch_specialist": engine.batch_specialist,
        "parameters": {
            role: sum(p.numel() for p in lm.model.parameters())
            for role, lm in (("specialist", llm.specialist), ("generalist", llm.generalist))
        },
    }


def _write(out: Path, record: dict[str, Any], report: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
    (out / "bench.json").write_text(text + "\n", encoding="utf-8")
    (out / "bench.md").write_text(report + "\n", encoding="utf-8")
    plot_sweeps(record, out / "bench.png")


def main(argv: Sequence[str] | None = None, *, progress: Callable[[str], None] = print) -> dict:
    """Run the suite; write bench.json, bench.md and bench.png into --out; return the record."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    llm = load_llm(args)
    examples = load_longlamp(TASK, split=args.split, source=args.data, limit=args.prompts)
    cases = prepare_cases(llm, examples, args.k)
    plan = Plan.from_args(args)
    engine = SpecSteerEngine(llm.specialist, llm.generalist, batch_specialist=llm.batch_specialist)
    interval = args.memory_interval_ms / 1e3
    samples = run_interleaved(engine, llm, cases, plan.settings, args.reps, interval)
    ks = [s.k for s in plan.settings if s.method in DRAFTING and isinstance(s.k, int)]
    if any(s.k == "auto" for s in plan.settings):  # any draft length up to the longest
        ks += range(1, llm.max_draft_tokens + 1)
    costs = measure_costs(llm, cases[0], ks, args.cost_repeats, engine.batch_specialist)
    references = {case.example.id: case.example.output for case in cases}
    summaries = {s: summarise_setting(s, samples[s], references) for s in plan.settings}
    add_speedups_and_bounds(summaries, costs)
    record = {
        "config": vars(args),
        "machine": machine_info(llm, engine),
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
    _write(Path(args.out), record, report)
    progress(report)
    return record


if __name__ == "__main__":
    main()
