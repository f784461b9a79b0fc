"""The `specsteer` command line (also `python -m langchain_specsteer`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specsteer",
        description="SpecSteer: a private on-device specialist drafts, a large generalist verifies",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="generalist, specialist and specsteer side by side on the shipped demo pair",
        description=(
            "Decode a held-out user's request with the generalist, the specialist and SpecSteer "
            "on the shipped demo pair (no downloads), the user's past reviews as the private "
            "memory, and mark which spans of the SpecSteer text are accepted specialist drafts "
            "and which are recoveries."
        ),
    )
    demo.add_argument(
        "--pair", help="a folder from `python -m eval.train_pair --export` (default: shipped)"
    )
    demo.add_argument("--prompt", help="the public request (default: the demo user's)")
    demo.add_argument(
        "--context",
        help="private context (only the specialist sees it; default: from the user's memory)",
    )
    demo.add_argument("--user", type=int, default=0, help="which held-out demo user (0-4)")
    demo.add_argument("--max-new-tokens", type=int, default=96, help="default: %(default)s")
    demo.add_argument(
        "--gamma", type=float, help="verification gate γ (default 0.5; inf accepts no draft)"
    )
    demo.add_argument("--alpha", type=float, help="steering strength α (default 1.0)")
    demo.add_argument("--draft-tokens", type=int, help="K, drafts per round (default 6)")
    demo.add_argument("--temperature", type=float, help="0 (default) decodes greedily")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights and of sampling"
    )
    demo.add_argument("--no-color", action="store_true", help="brackets instead of ANSI colours")
    demo.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    demo.set_defaults(handler=_demo)
    return parser


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pydantic import ValidationError

    from langchain_specsteer.demo import run_demo, use_color
    from langchain_specsteer.params import DecodingParams

    knobs = {
        "gamma": args.gamma,
        "alpha": args.alpha,
        "draft_tokens": args.draft_tokens,
        "temperature": args.temperature,
    }
    try:
        params = DecodingParams(
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            **{name: value for name, value in knobs.items() if value is not None},
        )
    except ValidationError as err:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
        parser.error(problems)
    try:
        run_demo(
            prompt=args.prompt,
            private_context=args.context,
            params=params,
            seed=args.seed,
            user=args.user,
            color=use_color(args.no_color, sys.stdout),
            pair_dir=args.pair,
            html_path=args.html,
        )
    except FileNotFoundError as err:
        parser.error(str(err))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args, parser)
