"""What the eval command lines share: help that states each option's default once, and
comma-separated counts."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "counts", "counts_with_zero"]


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
