"""The byte-level path's cost and quality: `python -m eval.bench_bytes`.

On held-out users of the synthetic world, every method runs three ways, interleaved per case
so machine noise hits all alike (`eval.harness`):

- `token`: the shipped demo pair on the token path;
- `byte`: the same pair forced onto the byte-level path (`alignment="byte"`): what the byte
  machinery costs when it is not needed, and whether it decides the same;
- `own tokenizer` (with `--cross-generalist`): the demo specialist with a generalist that
  has its own tokenizer (`python -m eval.train_pair --only generalist --vocab-size 1024`),
  the case the byte path exists for; its steered methods also with
  `byte_recovery="token"` (token candidates instead of byte-by-byte fusion).

Prints a Markdown table and writes bench_bytes.json / bench_bytes.md into --out.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from eval.cli import add_output_options, command_parser
from eval.harness import (
    TASK,
    Phases,
    interleaved,
    load_cases,
    machine_info,
    ratio,
    timed,
    write_outputs,
)
from eval.metrics import mean_rouge
from eval.pair import DEMO_PAIR, load_pair
from eval.summary import TABLE_ORDER
from eval.tables import num, percent, table
from langchain_specsteer import LocalGeneralist, SpecSteerLLM
from langchain_specsteer.methods import METHOD_SPECS
from retrievers import task_templates

__all__ = ["main"]

SLOW = ("costeer",)  # CoSteer iterates per token: the slowest, left out unless asked for
METHODS = tuple(m for m in TABLE_ORDER if METHOD_SPECS[m].uses_generalist and m not in SLOW)
"""The default --methods: every method that consults the generalist (the byte path is its)."""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.bench_bytes", __doc__)
    parser.add_argument("--data", default="data/world", help="`python -m eval.world` output")
    parser.add_argument("--split", default="test", help="split of --data (val or test)")
    parser.add_argument("--cases", type=int, default=12, help="held-out users")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--k", type=int, default=3, help="BM25 profile entries as context")
    parser.add_argument(
        "--pair",
        default=str(DEMO_PAIR),
        help="folder with specialist/, generalist/ (default: the shipped demo pair)",
    )
    parser.add_argument("--cross-generalist", help="a generalist folder with its own tokenizer")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    add_output_options(parser, "runs/bench_bytes")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cases < 1 or args.max_new_tokens < 1:
        parser.error("--cases and --max-new-tokens must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write bench_bytes.json and bench_bytes.md; return the record."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    specialist, demo = load_pair(args.pair)
    generalists = {"token": ("token", demo, "byte"), "byte": ("byte", demo, "byte")}
    if args.cross_generalist:
        cross = LocalGeneralist.from_pretrained(args.cross_generalist, device="cpu")
        generalists["own tokenizer"] = ("auto", cross, "byte")
        generalists["own tokenizer, token candidates"] = ("auto", cross, "token")
    methods = args.methods.split(",")
    llms = {
        (name, method): SpecSteerLLM(
            specialist=specialist,
            generalist=generalist,
            alignment=alignment,
            byte_recovery=recovery,
            method=method,
            max_new_tokens=args.max_new_tokens,
            **task_templates(TASK),
        )
        for name, (alignment, generalist, recovery) in generalists.items()
        for method in methods
        if recovery == "byte" or METHOD_SPECS[method].fuses  # byte_recovery: fused methods
    }
    cases = load_cases(args.data, args.split, args.cases, args.k)
    phases = Phases("bench_bytes", quiet=args.quiet)
    settings = list(llms)  # (generalist, method)
    for key in phases.each("warm-up", settings):  # first calls pay for lazy setup
        llms[key].invoke(cases[0].prompt, private_context=cases[0].documents, max_new_tokens=4)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in settings}
    trials = interleaved(cases, settings)
    for _, case, key in phases.each("settings", trials, len(cases) * len(settings)):
        generate = partial(llms[key].generate, [case.prompt], private_context=case.documents)
        result, wall = timed(generate)
        generation = result.generations[0][0]
        info = dict(generation.generation_info)
        info.update(text=generation.text, wall=wall)
        runs[key].append(info)
    references = [case.example.output for case in cases]
    rows = []
    for (name, method), infos in runs.items():
        tokens = sum(i["new_tokens"] for i in infos)
        token_texts = [i["text"] for i in runs.get(("token", method), infos)]
        same = sum(i["text"] == t for i, t in zip(infos, token_texts, strict=True))
        quality = mean_rouge([i["text"] for i in infos], references)
        rows.append(
            {
                "generalist": name,
                "method": method,
                "tokens_per_second": ratio(tokens, sum(i["wall"] for i in infos)),
                "acceptance": ratio(
                    sum(i["accepted"] for i in infos), sum(i["drafted"] for i in infos)
                ),
                "rounds_per_token": ratio(sum(i["rounds"] for i in infos), tokens),
                "rouge_l": quality["rougeL"],
                "same_text_as_token_path": same / len(infos),
            }
        )
    record = {
        "config": {k: v for k, v in vars(args).items()},
        "machine": machine_info(),
        "rows": rows,
    }
    report = markdown(record)
    print(report)
    write_outputs(Path(args.out), "bench_bytes", record, report)
    return record


def markdown(record: dict[str, Any]) -> str:
    config = record["config"]
    lines = [
        "# The byte-level path on the demo pair",
        "",
        f"{config['cases']} held-out {TASK} users ({config['split']} of `{config['data']}`), "
        f"BM25 top-{config['k']} context, greedy, {config['max_new_tokens']} tokens, "
        f"{config['threads']} threads. Rounds per token and acceptance count the generalist's "
        "tokens.",
        "",
    ]
    header = [
        "generalist", "method", "tokens/s", "acceptance", "rounds/token", "R-L",
        "same text as token",
    ]  # fmt: skip
    body = [
        [
            row["generalist"],
            row["method"],
            num(row["tokens_per_second"], ".1f"),
            percent(row["acceptance"], ".1f", "%"),
            num(row["rounds_per_token"]),
            num(row["rouge_l"]),
            percent(row["same_text_as_token_path"], ".0f", "%"),
        ]
        for row in record["rows"]
    ]
    return "\n".join([*lines, table(header, body, text_columns=2)])


if __name__ == "__main__":
    main()
