"""Score every held-out user of a demo pair as `specsteer demo` decodes them, and store the
figures in the pair folder, where the demo reads its typical user and its means.

    python -m eval.demo_scores                      # the shipped pair
    python -m eval.demo_scores --pair build/pair    # a folder from eval.train_pair --export

Each user's request is decoded with the generalist, the specialist and SpecSteer at the
demo's settings (the package's decoding defaults, `DEMO_MAX_NEW_TOKENS` new tokens); each
text is scored by ROUGE-L against the user's real review. The typical user is the median
of the users by SpecSteer's R-L margin over the specialist (`demo.TYPICAL_RULE`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from eval.cli import command_parser
from langchain_specsteer.demo import DEMO_PAIR, score_users, write_scores

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("eval.demo_scores", __doc__)
    parser.add_argument("--pair", default=str(DEMO_PAIR), help="the pair folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser


def main(argv: list[str] | None = None) -> Path:
    import torch

    args = build_parser().parse_args(argv)
    pair = Path(args.pair)
    if not (pair / "specialist").is_dir() or not (pair / "users.jsonl").is_file():
        msg = f"{pair} holds no demo pair (expected specialist/, generalist/, users.jsonl)"
        raise SystemExit(msg)
    torch.set_num_threads(args.threads)
    scores = score_users(pair)
    shown = "" if pair.resolve() == DEMO_PAIR.resolve() else f" --pair {shlex.quote(args.pair)}"
    path = write_scores(pair, scores, f"python -m eval.demo_scores{shown}")
    users, mean = scores["users"], scores["mean"]
    index = scores["typical_user"]
    print(f"wrote {path} ({len(users)} users; the typical one: {index}, {users[index]['user']})")
    for method, value in mean["rouge_l"].items():
        print(f"  {method:<11} R-L {value:6.2f}  {mean['tokens_per_second'][method]:6.1f} tokens/s")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
