"""`python -m eval run ...` runs an experiment; `python -m eval report RUN...` tabulates runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.cli import PACKAGE, HelpFormatter, draft_stop, draft_tokens, floats

__all__ = ["build_parser", "main"]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The `python -m eval` parser: its `run` and `report` commands."""
    parser = argparse.ArgumentParser(
        prog="python -m eval", description=__doc__, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", help="run (or resume) an experiment into --out", formatter_class=HelpFormatter
    )
    run.add_argument("--task", required=True, help="product_review, abstract_generation, ...")
    run.add_argument("--setting", default="user", help="user or temporal")
    run.add_argument("--split", default="val", help="train, val or test")
    run.add_argument(
        "--data",
        help="local file/folder (e.g. `python -m eval.world --out data/world`), or a hub id "
        "(default: LongLaMP/LongLaMP)",
    )
    run.add_argument("--specialist", help="hub id or folder of the specialist")
    run.add_argument("--generalist", help="hub id or folder of the generalist")
    run.add_argument(
        "--methods",
        type=_names,
        help="comma-separated methods (default: generalist,specialist,specsteer)",
    )
    run.add_argument(
        "--gamma", type=floats, help=f"γ values, e.g. 1.0,0.5,0.1 (default: {PACKAGE.gamma:g})"
    )
    run.add_argument(
        "--alpha", type=floats, help=f"α values, e.g. 0.5,1.0 (default: {PACKAGE.alpha:g})"
    )
    run.add_argument("--retriever", default="bm25", help="bm25, dense or none")
    run.add_argument("--k", type=int, default=5, help="profile entries in the private prompt")
    run.add_argument("--dense-model", help="sentence-transformers model for --retriever dense")
    run.add_argument("--limit", type=int, help="first N examples only")
    run.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per generation")
    run.add_argument(
        "--draft-tokens",
        type=draft_tokens,
        default=PACKAGE.draft_tokens,
        help="K, drafts per round, or auto: the device chooses each round's length",
    )
    run.add_argument(
        "--max-draft-tokens",
        type=int,
        default=PACKAGE.max_draft_tokens,
        help="with --draft-tokens auto: the longest",
    )
    run.add_argument(
        "--draft-stop",
        type=draft_stop,
        default=PACKAGE.draft_stop,
        help="with --draft-tokens auto: stop drafting below this estimated acceptance; none: "
        "when one more draft no longer pays for the round's measured cost",
    )
    run.add_argument(
        "--gate",
        choices=["fixed", "context"],
        default=PACKAGE.gate,
        help="fixed: γ at every draft position; context: γ·exp(−JSD(q_ctx, q_gen))",
    )
    run.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    run.add_argument("--dtype", help="e.g. bfloat16 (default: float32 on CPU, auto on CUDA)")
    run.add_argument("--stem", action="store_true", help="ROUGE with the Porter stemmer")
    run.add_argument("--name", help="the run's name in reports (default: the folder name)")
    run.add_argument("--out", help="the run folder (required unless --show-prompt)")
    run.add_argument(
        "--show-prompt", action="store_true", help="print the first example's prompts and exit"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    report = commands.add_parser(
        "report", help="tables (Markdown, CSV) and a plot of runs", formatter_class=HelpFormatter
    )
    report.add_argument("runs", nargs="+", help="run folders, compared side by side")
    report.add_argument("--csv", help="write the table as CSV here")
    report.add_argument("--markdown", help="write the Markdown table here")
    report.add_argument("--plot", help="write a PNG of quality (R-L) against speed here")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pydantic import ValidationError

    from eval.runner import RunConfig, run

    if args.show_prompt:
        return _show_prompt(args)
    for flag in ("specialist", "generalist", "out"):
        if getattr(args, flag) is None:
            parser.error(f"run: --{flag.replace('_', '-')} is required")
    fields = {
        "task": args.task,
        "setting": args.setting,
        "split": args.split,
        "data": args.data,
        "specialist": args.specialist,
        "generalist": args.generalist,
        "methods": args.methods,
        "gammas": args.gamma,
        "alphas": args.alpha,
        "retriever": args.retriever,
        "k": args.k,
        "dense_model": args.dense_model,
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "draft_tokens": args.draft_tokens,
        "max_draft_tokens": args.max_draft_tokens,
        "draft_stop": args.draft_stop,
        "gate": args.gate,
        "device": args.device,
        "dtype": args.dtype,
        "stem": args.stem,
        "name": args.name,
    }
    try:
        config = RunConfig(**{k: v for k, v in fields.items() if v is not None})
        results = run(config, args.out, progress=not args.no_progress, log=print)
    except (ValidationError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results: {results}")
    return 0


def _show_prompt(args: argparse.Namespace) -> int:
    from eval.data import load_longlamp
    from eval.prompts import rendered_prompts, retrieve_profile

    [example] = load_longlamp(args.task, args.setting, args.split, args.data, limit=1)
    documents = retrieve_profile(
        example, args.task, args.retriever, args.k, dense_model=args.dense_model
    )
    private, public = rendered_prompts(example, args.task, documents)
    print(f"== specialist (private: device only), example {example.id} ==\n{private}\n")
    print(f"== generalist (public) ==\n{public}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from eval.report import markdown_table, plot_quality_vs_speed, summarize, write_csv

    missing = [r for r in args.runs if not (Path(r) / "results.jsonl").is_file()]
    if missing:
        print(f"error: no results.jsonl in {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        rows = summarize([Path(r) for r in args.runs])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}", file=sys.stderr)  # stdout stays the table
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.plot:
        plot_quality_vs_speed(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args, parser)
    return _report(args)


if __name__ == "__main__":
    sys.exit(main())
