#!/usr/bin/env python
"""Speed of every decoding method on the tiny random pair, and the specialist's forward costs.

    python -m eval.bench_methods                              # default tiny pair
    python -m eval.bench_methods --generalist-size 256,6      # a costlier generalist

All numbers come from the tiny randomly initialised pair: they show the engine's overheads
and how cost scales with the generalist's size, not what real models achieve. Methods are
run interleaved (round-robin over methods in every repetition, starting one method later
each time) so machine noise hits all of them alike; tokens/s is the median over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.cli import HelpFormatter
from langchain_specsteer import SpecSteerLLM
from langchain_specsteer.models import cache_keyword
from langchain_specsteer.tiny import tiny_pair

LABEL = "tiny random pair"
ORDER = (
    "generalist",
    "specialist",
    "speculative",
    "light_costeer",
    "costeer",
    "specsteer",
    "specsteer+batched",  # q_ctx and q_gen in one left-padded batch-of-2 specialist forward
)
PROMPTS = [
    "Write a short review of the blender I bought last month.",
    "Write a review of these headphones: sound, comfort and battery.",
    "Review this tent for a family camping trip.",
]
CONTEXT = (
    "Past reviews by this user:\n"
    "- Coffee grinder, 4/5: Loud, honestly. Still, the grind is even and fast.\n"
    "- Headphones, 3/5: Warm sound and deep bass, but the case feels cheap.\n"
    "- Tent, 5/5: Survived a storm at the lake without a leak. The kids love it."
)


def parse_size(text: str) -> tuple[int, int]:
    """'256,6' → (hidden size 256, 6 layers)."""
    try:
        hidden, layers = (int(part) for part in text.split(","))
    except ValueError as err:
        msg = f"expected HIDDEN,LAYERS such as 256,6, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err
    return hidden, layers


def run_methods(llm: SpecSteerLLM, methods: list[str], reps: int) -> dict[str, list[dict]]:
    """Each repetition runs every method on every prompt; the method order rotates.

    A name "METHOD+batched" runs METHOD with `batch_specialist=True`; others run with False.
    """
    fields = ("specialist", "generalist", "max_new_tokens", "gamma", "alpha", "draft_tokens")
    llms = {
        name: SpecSteerLLM(
            **{f: getattr(llm, f) for f in fields}, batch_specialist=name.endswith("+batched")
        )
        for name in methods
    }
    for name in methods:  # warm-up, not counted
        llms[name].generate(
            PROMPTS[:1], method=name.split("+")[0], private_context=CONTEXT, max_new_tokens=8
        )
    samples: dict[str, list[dict]] = {method: [] for method in methods}
    for rep in range(reps):
        shift = rep % len(methods)
        for name in methods[shift:] + methods[:shift]:
            total = dict.fromkeys(
                ("new_tokens", "seconds", "drafted", "accepted", "generalist_calls"), 0
            )
            for prompt in PROMPTS:
                result = llms[name].generate(
                    [prompt], method=name.split("+")[0], private_context=CONTEXT
                )
                info = result.generations[0][0].generation_info
                for key in total:
                    total[key] += info[key]
            samples[name].append(total)
    return samples


def summarise(samples: dict[str, list[dict]]) -> list[dict[str, Any]]:
    rows = []
    for method, reps in samples.items():
        speeds = [r["new_tokens"] / r["seconds"] for r in reps]
        drafted = sum(r["drafted"] for r in reps)
        tokens = sum(r["new_tokens"] for r in reps)
        rows.append(
            {
                "method": method,
                "tokens_per_second": statistics.median(speeds),
                "tokens_per_second_min": min(speeds),
                "tokens_per_second_max": max(speeds),
                "acceptance_rate": sum(r["accepted"] for r in reps) / drafted if drafted else None,
                "generalist_calls_per_token": sum(r["generalist_calls"] for r in reps) / tokens,
                "new_tokens_per_rep": tokens / len(reps),
            }
        )
    base = next((r["tokens_per_second"] for r in rows if r["method"] == "generalist"), None)
    for row in rows:
        row["speedup_vs_generalist"] = row["tokens_per_second"] / base if base else None
    return rows


def _time(fn: Any, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after a few warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_seconds(
    model: Any, *, batch: int, new: int, prefix: int, repeats: int, pad: int = 0
) -> float:
    """Median time of one cached forward of `new` tokens after a `prefix`-token prompt.

    With `pad` > 0 the last row's prompt is `pad` tokens shorter and left-padded, masked with
    an attention mask and shifted position ids, as the engine batches q_ctx with q_gen.
    """
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (batch, prefix), generator=generator)
    step = torch.randint(3, vocab, (batch, new), generator=generator)
    pads = torch.zeros(batch, 1, dtype=torch.long)
    pads[-1] = pad
    positions = torch.arange(prefix + new)

    def masked(start: int, end: int) -> dict[str, torch.Tensor]:
        if not pad:
            return {}
        return {
            "attention_mask": (positions[:end] >= pads).long(),  # (B, end)
            "position_ids": (positions[start:end] - pads).clamp_min(0),  # (B, end - start)
        }

    cache = DynamicCache()
    keyword = cache_keyword(model)  # "cache", or "past_key_values" on older transformers
    with torch.inference_mode():
        model(input_ids=prompt, logits_to_keep=1, **{keyword: cache}, **masked(0, prefix))

    def forward() -> None:
        with torch.inference_mode():
            out = model(
                input_ids=step,
                logits_to_keep=new,
                **{keyword: cache},
                **masked(prefix, prefix + new),
            )
            torch.log_softmax(out.logits.float(), dim=-1)  # as the engine does
        cache.crop(-new)  # back to the prompt

    return _time(forward, repeats)


def forward_costs(
    llm: SpecSteerLLM, k: int, prefix: int, pad: int, repeats: int
) -> dict[str, float]:
    spec, gen = llm.specialist.model, llm.generalist.model
    common = {"prefix": prefix, "repeats": repeats}
    costs = {
        "specialist_step_b1": forward_seconds(spec, batch=1, new=1, **common),
        "specialist_step_b2": forward_seconds(spec, batch=2, new=1, **common),
        "specialist_step_b2_padded": forward_seconds(spec, batch=2, new=1, pad=pad, **common),
        "specialist_k1_b1": forward_seconds(spec, batch=1, new=k + 1, **common),
        "generalist_step_b1": forward_seconds(gen, batch=1, new=1, **common),
        "generalist_k1_b1": forward_seconds(gen, batch=1, new=k + 1, **common),
    }
    # Specialist work in a round of K drafts (bonus step left out): separately, K single
    # steps for q_ctx and one (K+1)-token forward for q_gen; batched, K steps of both rows.
    costs["round_specialist_separate"] = k * costs["specialist_step_b1"] + costs["specialist_k1_b1"]
    costs["round_specialist_batched"] = k * costs["specialist_step_b2_padded"]
    return costs


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    lines = [
        "| method | tokens/s (median) | min–max | speed-up vs generalist | acceptance "
        "| generalist calls / token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['tokens_per_second']:.0f} "
            f"| {r['tokens_per_second_min']:.0f}–{r['tokens_per_second_max']:.0f} "
            f"| {fmt(r['speedup_vs_generalist'], '.2f')}× "
            f"| {fmt(r['acceptance_rate'], '.0%')} "
            f"| {r['generalist_calls_per_token']:.2f} |"
        )
    return "\n".join(lines)


def costs_table(costs: dict[str, float], k: int, pad: int) -> str:
    us = {name: seconds * 1e6 for name, seconds in costs.items()}
    rows = [
        ("specialist, cached 1-token step, batch 1", us["specialist_step_b1"]),
        ("specialist, cached 1-token step, batch 2 (equal prompts)", us["specialist_step_b2"]),
        (
            f"specialist, cached 1-token step, batch 2 (one row left-padded by {pad}, masked)",
            us["specialist_step_b2_padded"],
        ),
        (f"specialist, cached {k + 1}-token forward (K+1), batch 1", us["specialist_k1_b1"]),
        ("generalist, cached 1-token step, batch 1", us["generalist_step_b1"]),
        (f"generalist, cached {k + 1}-token forward (K+1), batch 1", us["generalist_k1_b1"]),
        (
            f"round, q_ctx and q_gen separate: {k}·(step b1) + (K+1 forward b1)",
            us["round_specialist_separate"],
        ),
        (f"round, q_ctx and q_gen batched: {k}·(step b2, padded)", us["round_specialist_batched"]),
    ]
    lines = ["| forward | µs (median) |", "|---|---:|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in rows]
    b1 = costs["specialist_step_b1"]
    batched, separate = costs["round_specialist_batched"], costs["round_specialist_separate"]
    lines += [
        "",
        f"batch-2 step / two batch-1 steps: {costs['specialist_step_b2'] / (2 * b1):.2f} "
        f"(padded and masked: {costs['specialist_step_b2_padded'] / (2 * b1):.2f})",
        f"specialist time per round, batched / separate: {batched / separate:.2f} "
        "(< 1: batching q_ctx with q_gen is faster)",
        f"one generalist step costs {costs['generalist_step_b1'] / b1:.1f} specialist steps",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench_methods",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    size = "hidden size and layers of the tiny random "
    parser.add_argument(
        "--specialist-size",
        type=parse_size,
        default=(64, 2),
        metavar="H,L",
        help=size + "specialist",
    )
    parser.add_argument(
        "--generalist-size",
        type=parse_size,
        default=(128, 4),
        metavar="H,L",
        help=size + "generalist",
    )
    parser.add_argument("--methods", default=",".join(ORDER), help="comma-separated methods")
    parser.add_argument("--reps", type=int, default=5, help="repetitions")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--gamma", type=float, default=0.5, help="specsteer's verification gate γ")
    parser.add_argument("--alpha", type=float, default=1.0, help="steering strength α")
    parser.add_argument("--draft-tokens", type=int, default=4, help="K, drafts per round")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--forward-repeats", type=int, default=300, help="timed forwards per forward cost"
    )
    parser.add_argument(
        "--prefix-tokens", type=int, help="cached prompt length (default: the private prompt's)"
    )
    parser.add_argument(
        "--pad-tokens", type=int, help="how much shorter the public prompt is (default: measured)"
    )
    parser.add_argument("--out", default="runs/bench_methods.json", help="output JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    specialist, generalist = tiny_pair(
        args.seed, specialist_size=args.specialist_size, generalist_size=args.generalist_size
    )
    llm = SpecSteerLLM(
        specialist=specialist,
        generalist=generalist,
        max_new_tokens=args.max_new_tokens,
        gamma=args.gamma,
        alpha=args.alpha,
        draft_tokens=args.draft_tokens,
        temperature=0.0,
    )
    title = (
        f"{LABEL}: specialist Qwen3 {args.specialist_size[0]}×{args.specialist_size[1]}, "
        f"generalist Llama {args.generalist_size[0]}×{args.generalist_size[1]} (hidden×layers); "
        f"greedy, max_new_tokens {args.max_new_tokens}, γ={args.gamma}, α={args.alpha}, "
        f"K={args.draft_tokens}; {len(PROMPTS)} prompts × {args.reps} reps, interleaved; "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    print(f"# Methods on the {title}\n", flush=True)
    samples = run_methods(llm, methods, args.reps)
    rows = summarise(samples)
    print(markdown_table(rows), flush=True)

    prompts = llm.render_prompts(PROMPTS[0], CONTEXT)
    if args.prefix_tokens is None:
        args.prefix_tokens = len(prompts.private)
    if args.pad_tokens is None:
        args.pad_tokens = len(prompts.private) - len(prompts.public_specialist)
    print(f"\n# Forward costs ({LABEL}, prompt of {args.prefix_tokens} cached tokens)\n")
    costs = forward_costs(
        llm, args.draft_tokens, args.prefix_tokens, args.pad_tokens, args.forward_repeats
    )
    print(costs_table(costs, args.draft_tokens, args.pad_tokens))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "label": LABEL,
        "title": title,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "prompts": PROMPTS,
        "private_context": CONTEXT,
        "summary": rows,
        "samples": samples,
        "forward_seconds": costs,
    }
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
