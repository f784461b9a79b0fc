"""What the eval command lines share: help that states each option's default once,
comma-separated numbers and counts, and the options every bench has."""

from __future__ import annotations

import argparse

from langchain_specsteer.params import DecodingParams, check_draft_tokens

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


PACKAGE = DecodingParams()
"""The package's decoding defaults (`DecodingParams`): every eval command takes its own from
here, so a bench measures what a user gets by default."""


def draft_stop(text: str) -> float | None:
    """--draft-stop: a number in [0, 1], or "none" (drafts sized by the round's cost)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        msg = f"expected a number in [0, 1] or none, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def draft_tokens(text: str) -> int | str:
    """--draft-tokens: K (an integer ≥ 1) or "auto"."""
    try:
        return check_draft_tokens(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    parser.add_argument(
        "--gamma", type=float, default=PACKAGE.gamma, help="specsteer's verification gate γ"
    )
    parser.add_argument(
        "--draft-tokens",
        type=draft_tokens,
        default=PACKAGE.draft_tokens,
        help="K, drafts per round, or auto",
    )


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
