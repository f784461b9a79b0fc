"""The byte-level path's cost and quality: `python -m eval.bench_bytes`.

On held-out users of the synthetic world, every method runs three ways, interleaved per case
so machine noise hits all alike:

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
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eval.cli import HelpFormatter
from eval.data import load_longlamp
from eval.metrics import mean_rouge
from eval.prompts import retrieve_profile
from langchain_specsteer import LocalGeneralist, LocalSpecialist, SpecSteerLLM
from retrievers import task_templates

__all__ = ["main"]

TASK = "product_review"
METHODS = ("generalist", "speculative", "specsteer", "light_costeer")
PAIR = Path(__file__).resolve().parents[1] / "langchain_specsteer" / "demo_pair"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.bench_bytes",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--data", default="data/world", help="`python -m eval.world` output")
    parser.add_argument("--split", default="test", help="split of --data (val or test)")
    parser.add_argument("--cases", type=int, default=12, help="held-out users")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--k", type=int, default=3, help="BM25 profile entries as context")
    parser.add_argument(
        "--pair",
        default=str(PAIR),
        help="folder with specialist/, generalist/ (default: the shipped demo pair)",
    )
    parser.add_argument("--cross-generalist", help="a generalist folder with its own tokenizer")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", default="runs/bench_bytes", help="output folder")
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
    pair = Path(args.pair)
    specialist = LocalSpecialist.from_pretrained(str(pair / "specialist"), device="cpu")
    demo = LocalGeneralist.from_pretrained(str(pair / "generalist"), device="cpu")
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
        if recovery == "byte" or method in ("specsteer", "light_costeer", "costeer")
    }
    examples = load_longlamp(TASK, split=args.split, source=args.data, limit=args.cases)
    contexts = [retrieve_profile(e, TASK, "bm25", args.k) for e in examples]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in llms}
    keys = list(llms)
    for llm in llms.values():  # warm-up: first calls pay for lazy setup
        llm.invoke(examples[0].input, private_context=contexts[0], max_new_tokens=4)
    for c, (example, context) in enumerate(zip(examples, contexts, strict=True)):
        shift = c % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            result = llms[key].generate([example.input], private_context=context)
            generation = result.generations[0][0]
            info = dict(generation.generation_info)
            info.update(text=generation.text, wall=time.perf_counter() - start)
            runs[key].append(info)
        print(f"[bench_bytes] case {c + 1}/{len(examples)}", flush=True)
    references = [e.output for e in examples]
    rows = []
    for (name, method), infos in runs.items():
        tokens = sum(i["new_tokens"] for i in infos)
        drafted = sum(i["drafted"] for i in infos)
        token_texts = [i["text"] for i in runs.get(("token", method), infos)]
        same = sum(i["text"] == t for i, t in zip(infos, token_texts, strict=True))
        quality = mean_rouge([i["text"] for i in infos], references)
        rows.append(
            {
                "generalist": name,
                "method": method,
                "tokens_per_second": tokens / sum(i["wall"] for i in infos),
                "acceptance": sum(i["accepted"] for i in infos) / drafted if drafted else None,
                "rounds_per_token": sum(i["rounds"] for i in infos) / tokens,
                "rouge_l": quality["rougeL"],
                "same_text_as_token_path": same / len(infos),
            }
        )
    record = {
        "config": {k: v for k, v in vars(args).items()},
        "machine": {"torch": torch.__version__, "cpu": platform.processor() or "cpu"},
        "rows": rows,
    }
    report = markdown(record)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_bytes.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "bench_bytes.md").write_text(report + "\n", encoding="utf-8")
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
        "| generalist | method | tokens/s | acceptance | rounds/token | R-L | same text as token |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in record["rows"]:
        acceptance = "—" if row["acceptance"] is None else f"{100 * row['acceptance']:.1f}%"
        lines.append(
            f"| {row['generalist']} | {row['method']} | {row['tokens_per_second']:.1f} | "
            f"{acceptance} | {row['rounds_per_token']:.2f} | {row['rouge_l']:.2f} | "
            f"{100 * row['same_text_as_token_path']:.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
