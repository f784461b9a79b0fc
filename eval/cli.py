"""What the eval command lines share: help that states each option's default once,
comma-separated numbers and counts, and the options every bench has."""

from __future__ import annotations

import argparse

__all__ = [
    "HelpFormatter",
    "add_heldout_options",
    "add_output_options",
    "command_parser",
    "counts",
    "counts_with_zero",
    "floats",
]


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


def floats(text: str) -> list[float]:
    """Comma-separated numbers such as "1.0,0.5,0.1", in their order."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        msg = f"expected comma-separated numbers such as 1.0,0.5,0.1, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


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


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m <prog>`: described by the first paragraph of its module's
    docstring `doc`, each option's default stated once (`HelpFormatter`)."""
    return argparse.ArgumentParser(
        prog=f"python -m {prog}", description=doc.split("\n\n")[0], formatter_class=HelpFormatter
    )


def add_output_options(
    parser: argparse.ArgumentParser, out: str, help: str = "output folder"
) -> None:
    """A bench's last options: --out (default `out`) and --quiet (no progress bars; they show
    only where stderr is a terminal anyway)."""
    parser.add_argument("--out", default=out, help=help)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or phase lines on stderr"
    )
