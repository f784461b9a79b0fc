"""Replay recorded rounds under other schedules: how long drafts and rounds in flight should
be at a given round trip (docs/concepts.md, "Over a network").

    python -m eval.replay --data data/world --split val --examples 12 --out runs/replay

1. **Record** (in-process, the demo pair): SpecSteer drafts `--record-k` tokens a round and,
   at every drafted position i, notes q_ctx(d_i) (the device's confidence), whether the ratio
   test accepts d_i, and whether the fused recovery would pick d_i there (whether a guess of a
   round's last token at i would hold). A rejection ends the round there, as in a real run,
   so the recorded positions are the text SpecSteer writes. It also times a specialist step
   and the generalist's verification of 1 to `--record-k` tokens.
2. **Replay** each schedule on those positions with a cost model (specialist steps, the
   verification's fixed and per-token cost, the round trip, the device's work on a verdict):
   one round at a time with a fixed K, "auto" with a fixed `draft_stop` or the round's cost
   (`algorithms.worth_drafting`), and rounds in flight (fixed depth, or
   `algorithms.send_ahead`). The round's tokens and time follow the recorded outcomes; a
   void round costs the generalist side its verification and commits nothing.

The replay is a model: a wrong guess of a round's last token changes the text after it, and
the replay goes on with the recorded text instead (what a run recovers there is as likely to
be drafted well as what it recorded). eval/bench_network.py measures the real thing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_output_options, command_parser, counts_with_zero
from eval.harness import Phases, load_cases, machine_info, write_outputs
from eval.pair import DEMO_PAIR, load_llm
from eval.tables import num, table
from langchain_specsteer import algorithms as alg
from langchain_specsteer.run import Calibration

__all__ = ["Costs", "Position", "Schedule", "record", "replay"]


@dataclass(frozen=True)
class Position:
    """One drafted position of the recorded text.

    Attributes:
        confidence: q_ctx(d_i) of the drafted token.
        accepted: whether the ratio test accepts it.
        guessed: whether the fused recovery there picks the drafted token (a round ending
            just before it would have its last token guessed right).
    """

    confidence: float
    accepted: bool
    guessed: bool


@dataclass(frozen=True)
class Costs:
    """What the replay charges, in seconds.

    Attributes:
        step: one specialist step on the device.
        verify_fixed: the generalist side's verification of a round, its fixed part.
        verify_token: ... and per verified position (k drafts + 1).
        finish: the device's work on a verdict (recovery, commit).
        parallel: the generalist side verifies rounds in flight at once (a GPU server's
            batch), else one after another (one CPU).
    """

    step: float
    verify_fixed: float
    verify_token: float
    finish: float
    parallel: bool = False

    def verify(self, k: int) -> float:
        return self.verify_fixed + self.verify_token * (k + 1)


@dataclass(frozen=True)
class Schedule:
    """How a device drafts and sends: a name, the draft length rule and the depth rule.

    Attributes:
        draft: an integer K, or "stop=<p>" (`keep_drafting` at p), or "cost"
            (`worth_drafting` on the round's cost).
        depth: rounds in flight at most (1: one at a time).
        ahead: "fixed" (always `depth`) or "send_ahead" (`algorithms.send_ahead`).
    """

    name: str
    draft: int | str
    depth: int = 1
    ahead: str = "fixed"


SCHEDULES = (
    Schedule("K=6", 6),
    Schedule("K=16", 16),
    Schedule("auto, draft_stop 0.1", "stop=0.1"),
    Schedule("auto, by round cost", "cost"),
    Schedule("in flight: K=6, depth 4", 6, 4),
    Schedule("in flight: K=6, send_ahead", 6, 8, "send_ahead"),
    Schedule("in flight: by round cost, depth 2", "cost", 2),
    Schedule("in flight: by round cost, depth 4", "cost", 4),
    Schedule("in flight: by round cost, send_ahead", "cost", 8, "send_ahead"),
)


# ---------------------------------------------------------------- recording


def record(llm: Any, cases: Sequence[Any], k: int, phases: Phases) -> list[list[Position]]:
    """Each case's drafted positions, as SpecSteer verifies them with K = k in-process."""
    texts: list[list[Position]] = []
    for case in phases.each("record", cases):
        positions: list[Position] = []
        run = llm.rounds(case.prompt, private_context=case.documents, draft_tokens=k)

        def watch(draft, verdict, accepted, positions=positions) -> None:
            n = accepted.verified
            rows = range(min(n + 1, len(draft.ids)))
            for i in rows:
                d = draft.ids[i]
                fused = verdict.log_p_G[i] + llm.alpha * (draft.q_ctx[i] - draft.q_gen[i])
                positions.append(
                    Position(
                        confidence=float(draft.q_ctx[i][d].exp()),
                        accepted=i < n,
                        guessed=int(fused.argmax()) == d,
                    )
                )

        run.watchers.append(watch)
        for _ in run:
            pass
        texts.append(positions)
    return texts


def measure_costs(llm: Any, case: Any, k: int, repeats: int = 5) -> Costs:
    """A specialist step, and the generalist's verification of 1 and `k` drafts, timed."""
    prompts = llm.render_prompts(case.prompt, case.documents)
    seq = llm.specialist.sequence(prompts.private)
    seq.forward()
    steps = []
    for token in prompts.public_specialist[:repeats]:
        seq.append([token])
        start = time.perf_counter()
        seq.forward()
        steps.append(time.perf_counter() - start)

    def verify(n: int) -> float:
        times = []
        for _ in range(repeats):
            session = llm.generalist.open_session(
                prompts.public_generalist, vocab_size=llm._engine.vocab_size
            )
            session.verify([], "none", llm.gamma)  # the prompt's prefill, not counted
            session.commit(0, prompts.public_generalist[-1])
            start = time.perf_counter()
            session.verify(prompts.public_generalist[:n], "none", llm.gamma)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    one, many = verify(1), verify(k)
    per_token = max(0.0, (many - one) / (k - 1))
    return Costs(
        step=statistics.median(steps),
        verify_fixed=max(0.0, one - 2 * per_token),
        verify_token=per_token,
        finish=statistics.median(steps),  # recovery reads rows it has: about a step
    )


# ---------------------------------------------------------------- replaying


def _draft_length(
    schedule: Schedule,
    text: list[Position],
    at: int,
    round_steps: float,
    calibration: Calibration,
) -> int:
    """How many tokens the schedule drafts from position `at` (at most to the text's end)."""
    left = len(text) - at
    if isinstance(schedule.draft, int):
        return max(0, min(schedule.draft, left))
    if schedule.draft == "cost":
        for k in range(1, min(16, left) + 1):
            if not alg.worth_drafting(k, calibration.acceptance, round_steps):
                return k - 1
        return min(16, left)
    confidences: list[float] = []
    for i in range(min(16, left)):
        confidences.append(text[at + i].confidence)
        threshold = float(schedule.draft.split("=")[1])
        if not alg.keep_drafting(confidences, calibration.rho, threshold):
            return i + 1
    return len(confidences)


@dataclass
class Outcome:
    """What a replay of one schedule at one round trip produced."""

    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    voided: int = 0
    round_trips_waited: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan


def replay(texts: list[list[Position]], schedule: Schedule, rtt: float, costs: Costs) -> Outcome:
    """Every text under `schedule` at round trip `rtt` (seconds)."""
    out = Outcome()
    round_steps = (rtt + costs.verify(6) + costs.finish) / costs.step
    # what a `specsteer/2` service reports; a batching server verifies side by side
    share = None if costs.parallel else costs.verify(6) / (rtt + costs.verify(6))
    for text in texts:
        _replay_one(text, schedule, rtt, costs, (round_steps, share), out)
    return out


def _replay_one(
    text: list[Position],
    schedule: Schedule,
    rtt: float,
    costs: Costs,
    wait: tuple[float, float | None],
    out: Outcome,
) -> None:
    """One text, event by event: the device drafts and sends rounds (each after the last one's
    drafts and a guess of its end) while the schedule wants more in flight, then takes the
    oldest verdict; a rejection or a wrong guess voids the rounds after it. The generalist
    side verifies one round at a time (`costs.parallel` false: one CPU) or all at once.
    `wait`: a round's fixed cost in steps and the generalist side's share of it."""
    round_steps = wait[0]
    committed, at, clock, server_free = 0, 0, 0.0, 0.0
    calibration = Calibration()  # as a run learns from its verdicts
    flights: deque[tuple[int, int, float]] = deque()  # (first drafted position, k, verdict due)
    while committed < len(text):
        while at < len(text) and _send_another(schedule, flights, wait, calibration):
            guess = 1 if flights else 0
            start = at + guess
            k = _draft_length(schedule, text, start, round_steps, calibration)
            clock += (k + guess) * costs.step
            arrives = clock + rtt / 2
            served = arrives if costs.parallel else max(arrives, server_free)
            server_free = served + costs.verify(k)
            flights.append((start, k, server_free + rtt / 2))
            out.requests += 1
            at = start + k
            if k == 0 or clock >= flights[0][2]:  # a verdict is in: take it first
                break
        first, k, due = flights.popleft()
        clock = max(clock, due) + costs.finish
        rejected = next((i for i in range(k) if not text[first + i].accepted), None)
        judged = text[first : first + (k if rejected is None else rejected + 1)]
        calibration.accepted += k if rejected is None else rejected
        calibration.confidence += sum(p.confidence for p in judged)
        calibration.judged += len(judged)
        end = first + (k if rejected is None else rejected) + 1
        out.tokens += end - committed
        committed = end
        if rejected is None and flights and end - 1 < len(text):  # the guess is judged
            calibration.guesses += 1
            calibration.guessed += text[end - 1].guessed
        kept = rejected is None and flights and end - 1 < len(text) and text[end - 1].guessed
        if not kept:
            out.voided += len(flights)
            flights.clear()
            at = committed
    out.seconds += clock


def _send_another(
    schedule: Schedule, flights: deque, wait: tuple[float, float | None], calibration: Calibration
) -> bool:
    """Whether the schedule sends one more round before taking a verdict."""
    if not flights:
        return True
    if len(flights) >= schedule.depth:
        return False
    if schedule.ahead != "send_ahead":
        return True
    last_start, last_k, _ = flights[-1]
    ahead = last_start + last_k + 1 - flights[0][0]  # the drafts and guesses in flight
    drafts = sum(k for _, k, _ in flights)
    return alg.send_ahead(calibration.chance(drafts, ahead - drafts), ahead, *wait)


# ---------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.replay", __doc__)
    parser.add_argument("--data", default="data/world", help="held-out data (the world)")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="held-out split")
    parser.add_argument("--examples", type=int, default=12, help="held-out users recorded")
    parser.add_argument("--k", type=int, default=3, help="BM25 profile entries retrieved")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--gamma", type=float, help="γ (the package's when not given)")
    parser.add_argument("--record-k", type=int, default=16, help="drafts a recorded round")
    parser.add_argument(
        "--rtts", type=counts_with_zero, default=[0, 20, 50, 100], help="round trips, in ms"
    )
    parser.add_argument("--pair", default=str(DEMO_PAIR), help="a pair folder")
    add_output_options(parser, "runs/replay")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Record, replay every schedule at every round trip, write and return the record."""
    args = build_parser().parse_args(argv)
    pair = Path(args.pair)
    fields = {"max_new_tokens": args.max_new_tokens}
    if args.gamma is not None:
        fields["gamma"] = args.gamma
    llm = load_llm(
        str(pair / "specialist"),
        str(pair / "generalist"),
        "product_review",
        device="cpu",
        dtype=None,
        **fields,
    )
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cases = load_cases(args.data, args.split, args.examples, args.k, write_world=True)
    phases = Phases("replay", quiet=args.quiet)
    texts = record(llm, cases, args.record_k, phases)
    costs = measure_costs(llm, cases[0], args.record_k)
    rtts = args.rtts
    rows: list[dict[str, Any]] = []
    for schedule in SCHEDULES:
        for rtt in rtts:
            outcome = replay(texts, schedule, rtt / 1e3, costs)
            rows.append(
                {
                    "schedule": schedule.name,
                    "rtt_ms": rtt,
                    "tokens_per_second": outcome.tokens_per_second,
                    "requests_per_token": outcome.requests / outcome.tokens,
                    "voided_per_token": outcome.voided / outcome.tokens,
                }
            )
    positions = [p for text in texts for p in text]
    record_ = {
        "machine": machine_info(),
        "settings": vars(args) | {"gamma": llm.gamma, "alpha": llm.alpha},
        "costs": asdict(costs),
        "positions": len(positions),
        "accepted": sum(p.accepted for p in positions) / len(positions),
        "guessed": sum(p.guessed for p in positions) / len(positions),
        "rows": rows,
    }
    write_outputs(Path(args.out), "replay", record_, report(record_, rtts))
    print(report(record_, rtts))
    return record_


def report(record_: dict[str, Any], rtts: Sequence[float]) -> str:
    """The replayed tokens/s per schedule and round trip, as Markdown."""
    by = {(r["schedule"], r["rtt_ms"]): r for r in record_["rows"]}
    names = list(dict.fromkeys(r["schedule"] for r in record_["rows"]))
    header = ["schedule", *[f"{rtt:g} ms" for rtt in rtts]]
    body = [
        [name, *[num(by[name, rtt]["tokens_per_second"], ".1f") for rtt in rtts]] for name in names
    ]
    c = record_["costs"]
    lines = [
        f"Replayed tokens/s ({record_['positions']} recorded positions: "
        f"{record_['accepted']:.1%} accepted, guesses right at {record_['guessed']:.1%}; "
        f"step {c['step'] * 1e3:.2f} ms, verification {c['verify_fixed'] * 1e3:.2f} ms + "
        f"{c['verify_token'] * 1e3:.2f} ms a position)",
        "",
        table(header, body),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
