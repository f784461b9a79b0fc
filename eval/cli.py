"""What the eval command lines share: help that states each option's default once, and
comma-separated counts."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "add_heldout_options", "counts", "counts_with_zero"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help names it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        if isinstance(default, list | tuple):
            shown = ",".join(str(value) for value in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def counts(text: str) -> list[int]:
    """An option's comma-separated counts such as "1,4,16": sorted, repeats and 0 dropped
    ("0" alone skips what the option sizes)."""
    return [v for v in counts_with_zero(text) if v]


def counts_with_zero(text: str) -> list[int]:
    """Comma-separated non-negative integers such as "0,20,50", sorted, repeats dropped."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = [-1]
    if any(v < 0 for v in values):
        msg = f"expected non-negative integers such as 1,4,16, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def add_heldout_options(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    """The options of a bench over held-out users of the synthetic world: where the data is,
    which split, retrieval depth, and the decoding fields every bench varies."""
    parser.add_argument(
        "--data",
        default="data/world",
        help="LongLaMP-schema folder, as eval.bench's (eval.world writes it here if missing)",
    )
    parser.add_argument("--split", default="test", choices=("val", "test"), help="held-out split")
    parser.add_argument("--k", type=int, default=3, help="BM25 profile entries retrieved")
    parser.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens, help="tokens per generation"
    )
    parser.add_argument("--gamma", type=float, default=0.5, help="specsteer's verification gate γ")
    parser.add_argument("--draft-tokens", type=int, default=6, help="K, drafts per round")
