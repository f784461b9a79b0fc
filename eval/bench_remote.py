#!/usr/bin/env python
"""The network benchmark: every method in-process, over our session protocol and vLLM's dialect.

    python -m eval.bench_remote                                  # the shipped demo pair
    python -m eval.bench_remote --cases 6 --max-new-tokens 64 --latencies 0,20,50
    python -m eval.bench_remote --pair tiny --data data/world    # the tiny random pair

One process holds the models (on the CPU) and serves them on loopback: a `VerifierService`
with the generalist and, as its public specialist, the very specialist object the device
uses, behind `BackgroundServer(create_app(service))`. On the same held-out product reviews
as `eval.bench` (first --cases of the split, BM25 top-k profile entries as private context),
it measures:

1. every method through three transports: in-process (`LocalGeneralist`), our session
   protocol (`RemoteGeneralist`: KV caches and q_gen in the service) and the OpenAI dialect
   (`OpenAICompatibleGeneralist`: stateless, q_gen on the device), both with hints of 20
   (vLLM's `max_logprobs`). Per method and transport: tokens/s, the HTTP path's overhead per
   generalist round over in-process, requests per token, bytes up and down per generated
   token (bodies, and bodies + headers), requests per generation beyond the rounds, and the
   share of outputs identical to the in-process text;
2. the same with hints as large as the vocabulary on the first --exact-cases cases, where
   the remote outputs must equal the in-process ones;
3. an injected round-trip latency d (`RemoteGeneralist(wrap_transport=simulated_rtt(d))`, a
   sleep before every request) for d in --latencies: tokens/s of `generalist`, `light_costeer` and
   `specsteer`, next to the simple model  time(d) ≈ time(0) + requests · d.

4. concurrent users (for each N in `--users`, N generations of `specsteer` over the session
   protocol at a round trip of `--concurrency-rtt` ms): one after another with `generate`,
   at once from a thread pool (blocking HTTP), and at once with `agenerate` on one event
   loop (asynchronous HTTP, model work in worker threads): aggregate tokens/s of each, and
   whether every mode wrote the same texts. N = 1 is what each path costs one caller.

The per-token methods pay one round trip per token; SpecSteer pays one per round.

Timing is the wall time of `SpecSteerLLM.generate` (prompt encoding, over /tokenize for the
remote clients, included); the decode loop's own clock is kept in the JSON. The settings
(method and transport, or round trip and method) rotate from case to case, so machine noise
hits all alike, after one short warm-up generation of each (`eval.harness`). Writes
`bench_remote.json` (everything, every generation) and `bench_remote.md` (the tables, also
printed) into --out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_heldout_options, add_output_options, command_parser, counts, floats
from eval.harness import (
    BURST_MODES,
    TASK,
    Case,
    Phases,
    burst,
    checked_output,
    interleaved,
    load_cases,
    machine_info,
    ratio,
    write_outputs,
)
from eval.pair import DEMO_PAIR, TINY, load_pair
from eval.summary import TABLE_ORDER as METHODS
from eval.tables import DASH, num, percent, table
from langchain_specsteer import LocalSpecialist, SpecSteerEngine, SpecSteerLLM
from langchain_specsteer.remote import OpenAICompatibleGeneralist, RemoteGeneralist
from langchain_specsteer.server import ServiceLimits, VerifierService, create_app
from langchain_specsteer.testing import BackgroundServer, simulated_rtt
from langchain_specsteer.verification import Generalist
from retrievers import task_templates

__all__ = [
    "CONCURRENCY_MODES",
    "SWEEP_METHODS",
    "TRANSPORTS",
    "Generation",
    "main",
    "markdown_report",
    "summarise_concurrency",
    "summarise_latency",
    "summarise_transports",
]

LOCAL, SESSION, OPENAI = "in_process", "session", "openai"
TRANSPORTS = (LOCAL, SESSION, OPENAI)
SWEEP_METHODS = ("generalist", "light_costeer", "specsteer")
HINT = 20  # top_m / top_logprobs of the main table: vLLM's default max_logprobs
EXACT_METHODS = tuple(m for m in METHODS if m != "specialist")  # full hints: the generalist's
WARMUP_TOKENS = 8
CONCURRENCY_MODES = BURST_MODES


# ---------------------------------------------------------------- one generation


@dataclass
class Generation:
    """One generation of one method through one transport, with what went over the wire."""

    case: str
    method: str
    transport: str
    hint: int | None  # top_m / top_logprobs (None in-process: the whole vocabulary)
    rtt_ms: float
    text: str
    wall_seconds: float  # SpecSteerLLM.generate, end to end
    decode_seconds: float  # the engine's clock: the decoding loop
    new_tokens: int
    rounds: int
    generalist_calls: int
    drafted: int
    accepted: int
    requests: int = 0
    retries: int = 0
    reopened: int = 0
    body_bytes_sent: int = 0
    body_bytes_received: int = 0
    header_bytes_sent: int = 0
    header_bytes_received: int = 0


def generate(
    llm: SpecSteerLLM,
    case: Case,
    method: str,
    transport: str,
    *,
    hint: int | None = None,
    rtt_ms: float = 0.0,
    **overrides: Any,
) -> Generation:
    """Decode one case with `llm` (its generalist is the transport), counting its traffic."""
    stats = getattr(llm.generalist, "stats", None)
    if stats is not None:
        llm.generalist.wait_released()
        stats.reset()
    start = time.perf_counter()
    result = llm.generate([case.prompt], private_context=case.documents, method=method, **overrides)
    wall = time.perf_counter() - start
    output = checked_output(result, f"{method} over {transport}")  # on_generalist_error="raise"
    info = output.generation_info
    if stats is not None:
        llm.generalist.wait_released()  # count the session's release, off the clock
    counted = {} if stats is None else asdict(stats)
    for name in ("seconds", "busy_seconds"):
        counted.pop(name, None)  # time inside requests; the wall clock above covers it
    return Generation(
        case=case.id,
        method=method,
        transport=transport,
        hint=hint,
        rtt_ms=rtt_ms,
        text=output.text,
        wall_seconds=wall,
        decode_seconds=info["seconds"],
        new_tokens=info["new_tokens"],
        rounds=info["rounds"],
        generalist_calls=info["generalist_calls"],
        drafted=info["drafted"],
        accepted=info["accepted"],
        **counted,
    )


# ---------------------------------------------------------------- the service and the clients


def make_llm(
    specialist: LocalSpecialist, generalist: Generalist, args: argparse.Namespace
) -> SpecSteerLLM:
    return SpecSteerLLM(
        specialist=specialist,
        generalist=generalist,
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        draft_tokens=args.draft_tokens,
        on_generalist_error="raise",  # a failed request must fail the benchmark, not hide
        **task_templates(TASK),
    )


def clients(url: str, model: str, hint: int) -> dict[str, Generalist]:
    """The two remote transports with hints of `hint` candidates per position."""
    return {
        SESSION: RemoteGeneralist(url, top_m=hint),
        OPENAI: OpenAICompatibleGeneralist(url, model, top_logprobs=hint),
    }


def delayed_client(url: str, rtt_ms: float) -> RemoteGeneralist:
    """The session client (hints of HINT) over a wire with a round trip of `rtt_ms`."""
    return RemoteGeneralist(url, top_m=HINT, wrap_transport=simulated_rtt(rtt_ms / 1e3))


# ---------------------------------------------------------------- the phases


@dataclass
class ModeBurst:
    """`users` generations started together (or one after another), timed as a whole."""

    mode: str
    repeat: int
    users: int
    rtt_ms: float
    wall_seconds: float
    new_tokens: int
    texts: list[str]


def run_concurrency(
    llm: SpecSteerLLM, cases: Sequence[Case], users: int, repeats: int, rtt_ms: float
) -> list[ModeBurst]:
    """Each mode `repeats` times on `users` cases (cycling through `cases`), orders rotating;
    with one user, `threads` and `async` measure what each path costs a single caller."""
    chosen = [cases[i % len(cases)] for i in range(users)]

    def one(case: Case) -> Any:
        return llm.generate([case.prompt], private_context=case.documents)

    async def one_async(case: Case) -> Any:
        return await llm.agenerate([case.prompt], private_context=case.documents)

    bursts = []
    for _, repeat, mode in interleaved(range(repeats), CONCURRENCY_MODES):
        timing = burst(chosen, mode, one, one_async, close=llm.generalist.aclose)
        outputs = [checked_output(r, f"a {mode} generation") for r in timing.results]
        tokens = sum(o.generation_info["new_tokens"] for o in outputs)
        texts = [o.text for o in outputs]
        bursts.append(ModeBurst(mode, repeat, users, rtt_ms, timing.wall_seconds, tokens, texts))
    return bursts


# ---------------------------------------------------------------- summaries


def _sum(runs: Sequence[Generation], field: str) -> float:
    return sum(getattr(run, field) for run in runs)


def _same_text(runs: Sequence[Generation], reference: dict[tuple[str, str], str]) -> float:
    same = [run.text == reference[run.case, run.method] for run in runs]
    return sum(same) / len(same)


def traffic(runs: Sequence[Generation]) -> dict[str, Any]:
    """Requests and bytes of some generations: totals, per generated token, per generation."""
    tokens = _sum(runs, "new_tokens")
    up, down = _sum(runs, "body_bytes_sent"), _sum(runs, "body_bytes_received")
    up_all = up + _sum(runs, "header_bytes_sent")
    down_all = down + _sum(runs, "header_bytes_received")
    requests = _sum(runs, "requests")
    extra = requests - _sum(runs, "generalist_calls") if requests else 0
    return {
        "requests": requests,
        "requests_per_token": ratio(requests, tokens),
        "extra_requests_per_generation": extra / len(runs),
        "body_up_per_token": ratio(up, tokens),
        "body_down_per_token": ratio(down, tokens),
        "total_up_per_token": ratio(up_all, tokens),
        "total_down_per_token": ratio(down_all, tokens),
    }


def summarise_transports(runs: Sequence[Generation]) -> list[dict[str, Any]]:
    """One row per (method, transport), in METHODS order: speed, overhead, traffic, equality.

    The overhead per round is (Σ remote seconds − Σ in-process seconds) / Σ generalist calls
    over the same cases: wall time (`overhead_ms_per_round`) and the decode loop alone
    (`loop_overhead_ms_per_round`, without prompt encoding and closing the session).
    """
    groups: dict[tuple[str, str], list[Generation]] = {}
    for run in runs:
        groups.setdefault((run.method, run.transport), []).append(run)
    reference = {(r.case, r.method): r.text for r in runs if r.transport == LOCAL}
    rows = []
    for method in METHODS:
        local = groups.get((method, LOCAL), [])
        for transport in TRANSPORTS:
            group = groups.get((method, transport))
            if not group:
                continue
            tokens, wall = _sum(group, "new_tokens"), _sum(group, "wall_seconds")
            calls = _sum(group, "generalist_calls")
            row = {
                "method": method,
                "transport": transport,
                "hint": group[0].hint,
                "examples": len(group),
                "new_tokens": tokens,
                "wall_seconds": wall,
                "decode_seconds": _sum(group, "decode_seconds"),
                "tokens_per_second": ratio(tokens, wall),
                "generalist_calls": calls,
                "generalist_calls_per_token": ratio(calls, tokens),
                "overhead_ms_per_round": None,
                "loop_overhead_ms_per_round": None,
                "same_text": _same_text(group, reference) if local and transport != LOCAL else None,
                **traffic(group),
            }
            if transport != LOCAL and local and calls:
                for key, field in (
                    ("overhead_ms_per_round", "wall_seconds"),
                    ("loop_overhead_ms_per_round", "decode_seconds"),
                ):
                    row[key] = 1e3 * (_sum(group, field) - _sum(local, field)) / calls
            rows.append(row)
    return rows


def summarise_exact(
    exact: Sequence[Generation], main_runs: Sequence[Generation]
) -> list[dict[str, Any]]:
    """Per remote transport with full hints: identical outputs and bytes per token."""
    reference = {(r.case, r.method): r.text for r in main_runs if r.transport == LOCAL}
    rows = []
    for transport in (SESSION, OPENAI):
        group = [run for run in exact if run.transport == transport]
        if not group:
            continue
        rows.append(
            {
                "transport": transport,
                "hint": group[0].hint,
                "generations": len(group),
                "identical": sum(r.text == reference[r.case, r.method] for r in group),
                "different": sorted(
                    {r.method for r in group if r.text != reference[r.case, r.method]}
                ),
                "seconds": _sum(group, "wall_seconds"),
                **traffic(group),
            }
        )
    return rows


def summarise_latency(runs: Sequence[Generation]) -> list[dict[str, Any]]:
    """Per (method, round trip): measured tokens/s and the model's, and the ratio to
    `light_costeer` at the same round trip.

    Model: a generation at round trip d takes its time at d = 0 (same case and method) plus
    requests · d; with greedy decoding the requests at every d are the same.
    """
    base = {(r.case, r.method): r.wall_seconds for r in runs if r.rtt_ms == 0}
    rows = []
    for rtt in sorted({r.rtt_ms for r in runs}):
        for method in SWEEP_METHODS:
            group = [r for r in runs if r.rtt_ms == rtt and r.method == method]
            tokens = _sum(group, "new_tokens")
            wall = _sum(group, "wall_seconds")
            predicted = sum(base[r.case, method] + r.requests * rtt / 1e3 for r in group)
            rows.append(
                {
                    "method": method,
                    "rtt_ms": rtt,
                    "examples": len(group),
                    "new_tokens": tokens,
                    "requests": _sum(group, "requests"),
                    "requests_per_token": ratio(_sum(group, "requests"), tokens),
                    "wall_seconds": wall,
                    "predicted_seconds": predicted,
                    "tokens_per_second": ratio(tokens, wall),
                    "predicted_tokens_per_second": ratio(tokens, predicted),
                }
            )
    by_key = {(row["rtt_ms"], row["method"]): row for row in rows}
    for row in rows:
        light = by_key[row["rtt_ms"], "light_costeer"]
        for key in ("tokens_per_second", "predicted_tokens_per_second"):
            row[f"{key}_vs_light_costeer"] = ratio(row[key], light[key])
    return rows


def summarise_concurrency(bursts: Sequence[ModeBurst]) -> list[dict[str, Any]]:
    """Per mode: aggregate tokens/s over its bursts, the ratio to `sequential`, and whether
    its texts equal the sequential ones."""
    if not bursts:
        return []
    reference = {(b.users, b.repeat): b.texts for b in bursts if b.mode == "sequential"}
    rows = []
    for users in sorted({b.users for b in bursts}):
        for mode in CONCURRENCY_MODES:
            group = [b for b in bursts if b.mode == mode and b.users == users]
            tokens, wall = sum(b.new_tokens for b in group), sum(b.wall_seconds for b in group)
            rows.append(
                {
                    "mode": mode,
                    "users": users,
                    "rtt_ms": group[0].rtt_ms,
                    "bursts": len(group),
                    "new_tokens": tokens,
                    "wall_seconds": wall,
                    "tokens_per_second": ratio(tokens, wall),
                    "same_texts": all(b.texts == reference[users, b.repeat] for b in group),
                }
            )
    sequential = {r["users"]: r["tokens_per_second"] for r in rows if r["mode"] == "sequential"}
    for row in rows:
        row["vs_sequential"] = ratio(row["tokens_per_second"], sequential[row["users"]])
    return rows


# ---------------------------------------------------------------- rendering


def transports_table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "Method", "Transport", "tokens/s", "G calls/token", "ms/round vs in-proc",
        "req./token", "extra req./gen", "up B/token", "down B/token", "up+hdr", "down+hdr",
        "same text",
    ]  # fmt: skip
    body = [
        [
            row["method"],
            row["transport"],
            num(row["tokens_per_second"], ".1f"),
            num(row["generalist_calls_per_token"]),
            num(row["overhead_ms_per_round"], "+.2f"),
            num(row["requests_per_token"]) if row["transport"] != LOCAL else DASH,
            num(row["extra_requests_per_generation"], ".1f") if row["transport"] != LOCAL else DASH,
            *(
                num(row[key], ".0f") if row["transport"] != LOCAL else DASH
                for key in (
                    "body_up_per_token",
                    "body_down_per_token",
                    "total_up_per_token",
                    "total_down_per_token",
                )
            ),
            percent(row["same_text"], ".0f", " %") if row["transport"] != LOCAL else DASH,
        ]
        for row in rows
    ]
    return table(header, body, 2)


def exact_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["Transport", "hint", "identical / generations", "down B/token", "seconds"]
    body = [
        [
            row["transport"],
            str(row["hint"]),
            f"{row['identical']} / {row['generations']}"
            + (f" (differ: {', '.join(row['different'])})" if row["different"] else ""),
            num(row["body_down_per_token"], ".0f"),
            num(row["seconds"], ".1f"),
        ]
        for row in rows
    ]
    return table(header, body)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "Method", "RTT ms", "req./token", "tokens/s", "model tokens/s",
        "× light_costeer", "model ×",
    ]  # fmt: skip
    body = [
        [
            row["method"],
            num(row["rtt_ms"], "g"),
            num(row["requests_per_token"]),
            num(row["tokens_per_second"], ".1f"),
            num(row["predicted_tokens_per_second"], ".1f"),
            num(row["tokens_per_second_vs_light_costeer"], ".2f", "×"),
            num(row["predicted_tokens_per_second_vs_light_costeer"], ".2f", "×"),
        ]
        for row in rows
    ]
    return table(header, body)


def concurrency_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["Mode", "users", "RTT ms", "tokens/s (all users)", "× sequential", "same texts"]
    body = [
        [
            row["mode"],
            str(row["users"]),
            num(row["rtt_ms"], "g"),
            num(row["tokens_per_second"], ".1f"),
            num(row["vs_sequential"], ".2f", "×"),
            "yes" if row["same_texts"] else "no",
        ]
        for row in rows
    ]
    return table(header, body)


def markdown_report(record: dict[str, Any]) -> str:
    config, machine = record["config"], record["machine"]
    exact = record["exact"]
    lines = [
        "# SpecSteer over HTTP: loopback overhead, bytes per token, round-trip latency",
        "",
        f"Pair `{config['pair']}` ({record['vocab_size']}-token vocabulary); "
        f"{record['examples']} held-out {TASK} examples ({config['split']} of "
        f"`{config['data']}`), BM25 top-{config['k']} profile entries as private context; "
        f"greedy, max_new_tokens {config['max_new_tokens']}, K={config['draft_tokens']}, "
        f"γ={config['gamma']:g}. Service on loopback in the same process, "
        f"public specialist hosted; torch {machine['torch']}, {machine['device']}, "
        f"{config['threads']} threads.",
        "",
        f"## Transports (hints of {HINT})",
        "",
        transports_table(record["transports"]),
        "",
        "tokens/s: Σtokens / Σwall time of `generate` (prompt encoding included). "
        "ms/round vs in-proc: (Σremote − Σin-process wall seconds) / Σgeneralist calls. "
        "Bytes per generated token: bodies (+ URL path) and bodies + headers. extra req./gen: "
        "requests beyond the generalist rounds (/tokenize, opening and closing a session). "
        "same text: share of cases whose output equals the in-process one.",
        "",
    ]
    if exact:
        lines += [
            "## Exact hints (top_m = top_logprobs = the vocabulary)",
            "",
            exact_table(exact),
            "",
            f"Every method but `specialist` on the first {config['exact_cases']} case(s), "
            "compared with the in-process output.",
            "",
        ]
    lines += [
        f"## Injected round-trip latency (session protocol, hints of {HINT})",
        "",
        latency_table(record["latency"]),
        "",
        "A sleep of RTT before every request (`wrap_transport=simulated_rtt(...)`). "
        "Model: time = time at RTT 0 (same case and method) + requests · RTT.",
    ]
    if record["concurrency"]:
        lines += [
            "",
            "## Concurrent users (specsteer, session protocol)",
            "",
            concurrency_table(record["concurrency"]),
            "",
            "sequential: `generate` one user after another; threads: every user at once from "
            "a thread pool (blocking HTTP); async: every user at once with `agenerate` on one "
            "event loop (asynchronous HTTP; model work in worker threads). One client, one "
            f"specialist, {config['threads']} torch threads; the service serialises model work.",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def _latencies(text: str) -> list[float]:
    values = floats(text)
    if any(v < 0 for v in values):
        msg = f"expected non-negative milliseconds such as 0,20,50, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return sorted({0.0, *values})  # the model needs the time at 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_remote", __doc__)
    parser.add_argument(
        "--pair",
        default=str(DEMO_PAIR),
        help=f"folder with specialist/ and generalist/, or {TINY!r} (the tiny random pair; "
        "default: the shipped demo pair)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed; the tiny pair's seed")
    add_heldout_options(parser, max_new_tokens=64)
    parser.add_argument("--cases", type=int, default=6, help="held-out examples used")
    parser.add_argument(
        "--latencies", type=_latencies, default=[0.0, 20.0, 50.0], metavar="MS,..",
        help="injected round trips in ms (0 is always added)",
    )  # fmt: skip
    parser.add_argument(
        "--exact-cases", type=int, default=1, help="cases run with full-vocabulary hints (0: none)"
    )
    parser.add_argument(
        "--users", type=counts, default=[1, 4], metavar="N,..",
        help="concurrent generations in phase 4, one burst size each (0: skip the phase)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency-rtt", type=float, default=50.0, metavar="MS",
        help="injected round trip of phase 4",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency-repeats", type=int, default=2, help="bursts per mode in phase 4"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    add_output_options(parser, "runs/bench_remote")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cases < 1 or args.max_new_tokens < 1 or args.exact_cases < 0:
        parser.error("--cases and --max-new-tokens must be positive, --exact-cases at least 0")
    if args.concurrency_repeats < 1 or args.concurrency_rtt < 0:
        parser.error("--concurrency-repeats must be positive and --concurrency-rtt non-negative")
    if args.pair != TINY and not (Path(args.pair) / "specialist").is_dir():
        parser.error(f"--pair {args.pair}: no specialist/ folder there")
    return args


def main(argv: Sequence[str] | None = None, *, progress: Callable[[str], None] = print) -> dict:
    """Run the benchmark; write bench_remote.json and bench_remote.md; return the record."""
    args = parse_args(argv)
    phases = Phases("bench_remote", quiet=args.quiet)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    specialist, generalist = load_pair(args.pair, seed=args.seed)
    cases = load_cases(args.data, args.split, args.cases, args.k, write_world=True)
    vocab = min(specialist.vocab_size, generalist.vocab_size)
    limits = ServiceLimits(max_top_m=vocab, max_logprobs=vocab)  # full-vocabulary hints allowed
    service = VerifierService(generalist, public_specialist=specialist, limits=limits)

    def llms_over(clients: dict[Any, Generalist]) -> dict[Any, SpecSteerLLM]:
        return {name: make_llm(specialist, client, args) for name, client in clients.items()}

    with BackgroundServer(create_app(service)) as server:
        url, model = server.url, service.model_name
        llms = llms_over({LOCAL: generalist, **clients(url, model, HINT)})
        hints = {LOCAL: None, SESSION: HINT, OPENAI: HINT}
        settings = list(product(METHODS, llms))  # (method, transport)
        for method, transport in phases.each("warm-up", settings):  # not counted
            generate(llms[transport], cases[0], method, transport, max_new_tokens=WARMUP_TOKENS)
        runs = [
            generate(llms[transport], case, method, transport, hint=hints[transport])
            for _, case, (method, transport) in phases.each(
                "transports", interleaved(cases, settings), len(cases) * len(settings)
            )
        ]
        exact_llms = llms_over(clients(url, model, vocab))
        exact_settings = list(product(cases[: args.exact_cases], EXACT_METHODS, exact_llms))
        exact = [
            generate(exact_llms[transport], case, method, transport, hint=vocab)
            for case, method, transport in phases.each("exact hints", exact_settings)
        ]
        latency_llms = llms_over({rtt: delayed_client(url, rtt) for rtt in args.latencies})
        sweep = list(product(args.latencies, SWEEP_METHODS))  # (rtt, method)
        latency = [
            generate(latency_llms[rtt], case, method, SESSION, hint=HINT, rtt_ms=rtt)
            for _, case, (rtt, method) in phases.each(
                "latency sweep", interleaved(cases, sweep), len(cases) * len(sweep)
            )
        ]
        bursts = []
        if args.users:
            rtt = args.concurrency_rtt
            concurrent = make_llm(specialist, delayed_client(url, rtt), args)  # specsteer
            for users in phases.each("concurrent users", args.users):
                repeats = args.concurrency_repeats
                bursts += run_concurrency(concurrent, cases, users, repeats, rtt)
    record = {
        "config": vars(args),
        "machine": machine_info(SpecSteerEngine(specialist, generalist)),
        "examples": len(cases),
        "vocab_size": vocab,
        "transports": summarise_transports(runs),
        "exact": summarise_exact(exact, runs),
        "latency": summarise_latency(latency),
        "concurrency": summarise_concurrency(bursts),
        "bursts": [asdict(b) for b in bursts],
        "seconds": time.perf_counter() - phases.start,
        "generations": [asdict(g) for g in [*runs, *exact, *latency]],
    }
    report = markdown_report(record)
    write_outputs(Path(args.out), "bench_remote", record, report)
    progress(report)
    return record


if __name__ == "__main__":
    main()
