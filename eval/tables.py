"""Markdown tables of the eval reports and benchmarks: one cell format, one table layout.

Figures are formatted by `num` (a dash where one is missing), fractions such as acceptance by
`percent` (×100: 0.8286 → "82.9"), and rows laid out by `table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DASH", "num", "percent", "table"]

DASH = "—"
"""The cell of a figure that is missing or undefined (None or NaN)."""


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """`value` formatted by `spec`, then `suffix` ("×"); a dash when it is None or NaN."""
    return DASH if _missing(value) else f"{format(value, spec)}{suffix}"


def percent(fraction: float | None, spec: str = ".1f", suffix: str = "") -> str:
    """A fraction (acceptance, a share) as a percentage: 0.8286 → "82.9"; a dash for None."""
    return DASH if _missing(fraction) else f"{format(100 * fraction, spec)}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A GitHub Markdown table: the first `text_columns` columns left-aligned, the rest right."""
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, align, *rows))
