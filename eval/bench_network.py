"""The network bench: SpecSteer across a real round trip, against the generalist streamed.

    python -m eval.bench_network                              # 12 test users, 64 tokens
    python -m eval.bench_network --rtts 0,50 --cases 4        # a quick look

`specsteer serve` serves the shipped demo pair's generalist (with the specialist as its public
copy) on loopback, in a process of its own on half the machine's cores while the device runs
on the other half (`--cores split`, as on two machines: the device's drafting never takes a
core from the verification it overlaps; `--cores shared` serves it from this process, both
sides on every core), behind a `DelayProxy` that holds every byte for half the round trip each way:
every request, one at a time or many at once, waits its own round trip on the wire, and a
new connection pays one more (its handshake). On held-out users (BM25 top-k profile entries
as the private context), every setting runs at every round trip, interleaved and rotated
(`eval.harness`), after a warm-up of each:

- **today**: what a generation cost before the network work, `specsteer/1` (a `/tokenize` and
  a session opening before the first round, one round at a time), at K = --draft-tokens and
  at `draft_tokens="auto"` with `draft_stop` 0.1;
- each lever alone, over `specsteer/2`: **no request before the first round** (K, one round
  at a time), **rounds in flight** (K), **drafts sized by the round's cost** ("auto" with
  `draft_stop=None`);
- **all together** (`specsteer/2`, rounds in flight, "auto" by the round's cost);
- **generalist streamed**: the generalist alone, one streamed completion (its client has the
  generalist's tokenizer, so it asks nothing before it: one round trip and its decoding).

Per setting and round trip: tokens/s and its ratio to the streamed generalist at the same
round trip, requests and round trips waited per token (the device's waiting time over the
round trip), voided rounds per token, bytes each way per token, and ROUGE-L against the
users' real reviews. Writes bench_network.json (every generation), bench_network.md (the
tables, also printed) and bench_network.png into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_heldout_options, add_output_options, command_parser, counts_with_zero
from eval.harness import (
    TASK,
    Phases,
    checked_output,
    figure,
    interleaved,
    load_cases,
    machine_info,
    timed,
    write_outputs,
)
from eval.metrics import mean_rouge
from eval.pair import DEMO_PAIR, load_pair
from eval.tables import num, table
from eval.vllm_server import SpecSteerServer
from langchain_specsteer import SpecSteerLLM
from langchain_specsteer.remote import RemoteGeneralist
from langchain_specsteer.remote.proxy import DelayProxy
from langchain_specsteer.server import VerifierService, create_app
from langchain_specsteer.testing import BackgroundServer
from retrievers import task_templates

__all__ = ["SETTINGS", "Setting", "main"]


@dataclass(frozen=True)
class Setting:
    """One way to generate: its client's options and its decoding fields."""

    name: str
    client: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


TODAY = {"protocol": "specsteer/1"}
ONE_AT_A_TIME = {"rounds_in_flight": 1}
BY_COST = {"draft_tokens": "auto", "draft_stop": None}
K = {"draft_tokens": "K"}  # --draft-tokens
SETTINGS = (
    Setting("today, K", TODAY, {**K, **ONE_AT_A_TIME}),
    Setting("today, auto", TODAY, {"draft_tokens": "auto", "draft_stop": 0.1, **ONE_AT_A_TIME}),
    Setting("no request before the first round", {}, {**K, **ONE_AT_A_TIME}),
    Setting("rounds in flight", {}, {**K, "rounds_in_flight": "auto"}),
    Setting("drafts by round cost", {}, {**BY_COST, **ONE_AT_A_TIME}),
    Setting("all together", {}, {**BY_COST, "rounds_in_flight": "auto"}),
    Setting("generalist streamed", {"tokenizer": True}, {"method": "generalist"}),
)
BASELINE = SETTINGS[-1].name


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_network", __doc__)
    add_heldout_options(parser, max_new_tokens=64)
    parser.add_argument("--cases", type=int, default=12, help="held-out users")
    parser.add_argument(
        "--rtts", type=counts_with_zero, default=[0, 20, 50, 100], help="round trips, in ms"
    )
    parser.add_argument("--pair", default=str(DEMO_PAIR), help="a pair folder (or 'tiny')")
    parser.add_argument(
        "--cores",
        choices=["split", "shared"],
        default="split",
        help="split: the service in its own process on half the cores, the device on the other"
        " half; shared: the service in this process, both on every core",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (--cores shared)")
    add_output_options(parser, "runs/bench-network")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench; write its record and report into --out; return the record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cores == "split" and (
        len(os.sched_getaffinity(0)) < 2 or not (Path(args.pair) / "generalist").is_dir()
    ):
        parser.error("--cores split needs 2 cores or more and a pair folder; use --cores shared")
    specialist, generalist = load_pair(args.pair)
    cases = load_cases(args.data, args.split, args.cases, args.k, write_world=True)
    phases = Phases("bench_network", quiet=args.quiet)
    with _service(args, specialist, generalist) as url, DelayProxy(url, 0.0) as wire:
        llms = {s.name: _llm(s, wire.url, specialist, generalist, args) for s in SETTINGS}
        for setting, rtt in phases.each("warm-up", [(s, r) for s in SETTINGS for r in args.rtts]):
            wire.rtt_s = rtt / 1e3
            _generate(llms[setting.name], cases[0])
        runs: list[dict[str, Any]] = []
        plan = [(s, r) for s in SETTINGS for r in args.rtts]
        for _, case, (setting, rtt) in phases.each("settings", interleaved(cases, plan)):
            wire.rtt_s = rtt / 1e3
            runs.append(_run(llms[setting.name], case, setting, rtt))
    record = {
        "machine": machine_info(),
        "settings": vars(args) | {"pair": str(args.pair)},
        "rows": _rows(runs, args.rtts),
        "runs": runs,
    }
    write_outputs(Path(args.out), "bench_network", record, report(record), plot)
    print(report(record))
    return record


@contextlib.contextmanager
def _service(args, specialist, generalist) -> Iterator[str]:
    """The service's URL: in a process of its own on half the cores, the device (this process)
    pinned to the other half (`--cores split`), or in this process (`shared`)."""
    if args.cores == "shared":
        torch.set_num_threads(args.threads)
        service = VerifierService(generalist, specialist)
        with BackgroundServer(create_app(service)) as server:
            yield server.url
        return
    cores, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
    device, served = cores[: len(cores) // 2], cores[len(cores) // 2 :]
    args.device_cores, args.service_cores = device, served
    pair = Path(args.pair)
    with SpecSteerServer(pair / "generalist", pair / "specialist", cores=served) as server:
        os.sched_setaffinity(0, device)
        torch.set_num_threads(len(device))
        try:
            yield server.url
        finally:  # this process as it was (main() may be called from Python)
            os.sched_setaffinity(0, cores)
            torch.set_num_threads(threads)


def _llm(setting: Setting, url: str, specialist, generalist, args) -> SpecSteerLLM:
    client = dict(setting.client)
    if client.pop("tokenizer", False):
        client["tokenizer"] = generalist.tokenizer
    remote = RemoteGeneralist(url, **client)
    fields = {"gamma": args.gamma, "max_new_tokens": args.max_new_tokens, **setting.fields}
    if fields.get("draft_tokens") == "K":
        fields["draft_tokens"] = args.draft_tokens
    return SpecSteerLLM(specialist=specialist, generalist=remote, **task_templates(TASK), **fields)


def _generate(llm: SpecSteerLLM, case) -> Any:
    result = llm.generate([case.prompt], private_context=case.documents)
    llm.generalist.wait_released()  # the session's release is not the next call's
    return checked_output(result, "a network bench generation")


def _run(llm: SpecSteerLLM, case, setting: Setting, rtt: int) -> dict[str, Any]:
    """One generation: its time, its statistics and what crossed the wire."""
    stats = llm.generalist.stats
    stats.reset()
    result, seconds = timed(
        lambda: llm.generate([case.prompt], private_context=case.documents)
    )  # the call's wall time: prompt encoding (a `/tokenize` for `specsteer/1`) included
    output = checked_output(result, setting.name)
    info = output.generation_info
    wire = {k: getattr(stats, k) for k in ("requests", "body_bytes_sent", "body_bytes_received")}
    llm.generalist.wait_released()
    return {
        "setting": setting.name,
        "rtt_ms": rtt,
        "case": case.id,
        "text": output.text,
        "reference": case.example.output,
        "seconds": seconds,
        **{k: info[k] for k in ("new_tokens", "rounds", "voided_rounds", "waited_seconds")},
        **{k: info.get(k) for k in ("drafted", "accepted")},
        **wire,
    }


def _rows(runs: list[dict[str, Any]], rtts: list[int]) -> list[dict[str, Any]]:
    """Per setting and round trip: sums over cases, the rates and ROUGE-L."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["setting"], run["rtt_ms"]].append(run)
    rows = []
    for (name, rtt), group in groups.items():
        tokens = sum(r["new_tokens"] for r in group)
        seconds = sum(r["seconds"] for r in group)
        waited = sum(r["waited_seconds"] for r in group)
        rouge = mean_rouge([r["text"] for r in group], [r["reference"] for r in group])
        rows.append(
            {
                "setting": name,
                "rtt_ms": rtt,
                "tokens_per_second": tokens / seconds,
                "requests_per_token": sum(r["requests"] for r in group) / tokens,
                "round_trips_per_token": waited / (rtt / 1e3) / tokens if rtt else None,
                "voided_per_token": sum(r["voided_rounds"] for r in group) / tokens,
                "bytes_up_per_token": sum(r["body_bytes_sent"] for r in group) / tokens,
                "bytes_down_per_token": sum(r["body_bytes_received"] for r in group) / tokens,
                "rouge_l": rouge["rougeL"],
                "median_seconds": statistics.median(r["seconds"] for r in group),
                "cases": len(group),
            }
        )
    by = {(r["setting"], r["rtt_ms"]): r for r in rows}
    for row in rows:
        base = by.get((BASELINE, row["rtt_ms"]))
        row["vs_streamed"] = row["tokens_per_second"] / base["tokens_per_second"] if base else None
    order = {s.name: i for i, s in enumerate(SETTINGS)}
    return sorted(rows, key=lambda r: (order[r["setting"]], r["rtt_ms"]))


def report(record: dict[str, Any]) -> str:
    """The tables, as Markdown."""
    rows, rtts = record["rows"], record["settings"]["rtts"]
    by = {(r["setting"], r["rtt_ms"]): r for r in rows}
    names = [s.name for s in SETTINGS]
    speed = [[name, *[_speed(by.get((name, rtt))) for rtt in rtts]] for name in names]
    detail_header = [
        "setting",
        "round trip",
        "requests/token",
        "round trips waited/token",
        "voided/token",
        "up B/token",
        "down B/token",
        "R-L",
    ]
    detail = [
        [
            r["setting"],
            f"{r['rtt_ms']} ms",
            num(r["requests_per_token"], ".3f"),
            num(r["round_trips_per_token"], ".3f"),
            num(r["voided_per_token"], ".3f"),
            num(r["bytes_up_per_token"], ".0f"),
            num(r["bytes_down_per_token"], ".0f"),
            num(r["rouge_l"], ".2f"),
        ]
        for r in rows
    ]
    machine, settings = record["machine"], record["settings"]
    if settings.get("cores", "shared") == "split":
        where = (
            f"device on cores {settings['device_cores']}, service on cores"
            f" {settings['service_cores']}"
        )
    else:
        where = f"device and service in one process, {settings.get('threads')} threads"
    return "\n".join(
        [
            f"Tokens/s (÷ the generalist streamed at the same round trip); {len(record['runs'])} "
            f"generations; {where}; load average {machine.get('load_average')}",
            "",
            table(["setting", *[f"{rtt} ms" for rtt in rtts]], speed),
            "",
            table(detail_header, detail, text_columns=2),
        ]
    )


def _speed(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    return f"{row['tokens_per_second']:.1f} ({num(row['vs_streamed'], '.2f', '×')})"


def plot(record: dict[str, Any], path: Path) -> None:
    """Tokens/s against the round trip, one line per setting."""
    fig = figure(7, 4)
    ax = fig.add_subplot()
    rtts = record["settings"]["rtts"]
    by = {(r["setting"], r["rtt_ms"]): r for r in record["rows"]}
    for setting in SETTINGS:
        values = [by[setting.name, rtt]["tokens_per_second"] for rtt in rtts]
        style = "--" if setting.name == BASELINE else "-"
        ax.plot(rtts, values, style, marker="o", label=setting.name)
    ax.set_xlabel("round trip (ms)")
    ax.set_ylabel("tokens/s")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
