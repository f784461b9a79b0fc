"""Tables and plots from finished runs: one row per (run, method, γ, α), like the paper's tables.

    python -m eval.report runs/review-A runs/review-B --csv table.csv --plot sweep.png

A run folder holds `config.json` (its "name" labels the run; otherwise the folder name does)
and `results.jsonl`, one JSON object per finished (example, method, γ, α). Each row is an
`eval.summary.Summary`: ROUGE ×100, acceptance Σaccepted/Σdrafted (a fraction in the CSV,
×100 in the table), speed as Σnew_tokens/Σseconds, and speed-up relative to the same run's
`generalist` rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from eval.cli import HelpFormatter
from eval.summary import TABLE_ORDER, Summary, add_speedups, summarise
from eval.tables import DASH, num, percent, table

REQUIRED = (
    "example_id",
    "method",
    "rouge1",
    "rougeL",
    "new_tokens",
    "seconds",
    "drafted",
    "accepted",
    "generalist_calls",
)
LINE_STYLES = ("-", "--", ":", "-.")
COLUMNS = ("Method", "γ", "α", "n", "R-1", "R-L", "Accept. %", "tokens/s", "Speed-up")
CSV_COLUMNS = (
    "run",
    "method",
    "gamma",
    "alpha",
    "examples",
    "rouge1",
    "rougeL",
    "acceptance",
    "tokens_per_second",
    "speedup",
    "generalist_calls_per_token",
)


# ---------------------------------------------------------------- loading


def _parameter(value: Any, name: str) -> float | None:
    """γ or α as a float (JSON may spell infinity "inf"); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        msg = f"{name} must be a number or null, got {value!r}"
        raise ValueError(msg)
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a number, null or 'inf', got {value!r}"
        raise ValueError(msg) from None


def _record(line: str) -> dict[str, Any]:
    """One results line as a dict with γ and α normalised; ValueError when malformed."""
    record = json.loads(line)
    if not isinstance(record, dict):
        msg = f"expected a JSON object, got {type(record).__name__}"
        raise ValueError(msg)
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        msg = f"missing field(s) {', '.join(missing)}"
        raise ValueError(msg)
    record["gamma"] = _parameter(record.get("gamma"), "gamma")
    record["alpha"] = _parameter(record.get("alpha"), "alpha")
    return record


def load_results(run_dir: str | PathLike[str]) -> list[dict[str, Any]]:
    """The records of `run_dir/results.jsonl`; a truncated last line is skipped with a warning."""
    path = Path(run_dir) / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(numbered):
        try:
            records.append(_record(line))
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            if index == len(numbered) - 1 and isinstance(error, json.JSONDecodeError):
                warning = f"{path}:{number}: skipping a truncated last line"
                warnings.warn(warning, RuntimeWarning, stacklevel=2)
                continue
            msg = f"{path}:{number}: malformed result line: {error}"
            raise ValueError(msg) from error
    return records


def load_config(run_dir: str | PathLike[str]) -> dict[str, Any]:
    """`run_dir/config.json` as a dict, or {} when the run has none."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        msg = f"{path}: expected a JSON object"
        raise ValueError(msg)
    return config


# ---------------------------------------------------------------- aggregation


def _key(record: dict[str, Any]) -> tuple[str, float | None, float | None]:
    return record["method"], record["gamma"], record["alpha"]


def _deduplicate(records: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    """Keep the last record per (example, method, γ, α): a resumed run may repeat one."""
    latest = {}
    for record in records:
        latest[(str(record["example_id"]), *_key(record))] = record
    if len(latest) < len(records):
        dropped = len(records) - len(latest)
        warning = f"{run}: {dropped} repeated result(s); keeping the last"
        warnings.warn(warning, RuntimeWarning, stacklevel=4)
    return list(latest.values())


def _row(run: str, records: list[dict[str, Any]]) -> Summary:
    """Aggregate one (method, γ, α) group of a run (its speed-up is set with the run's)."""
    method, gamma, alpha = _key(records[0])
    n = len(records)
    return summarise(
        records,
        run=run,
        method=method,
        gamma=gamma,
        alpha=alpha,
        examples=n,
        rouge1=100.0 * sum(r["rouge1"] for r in records) / n,
        rougeL=100.0 * sum(r["rougeL"] for r in records) / n,
    )


def _order(row: Summary) -> tuple:
    """Methods in the paper's order (unknown ones last), then γ descending, α ascending."""
    known = row.method in TABLE_ORDER
    rank = TABLE_ORDER.index(row.method) if known else len(TABLE_ORDER)
    gamma = (row.gamma is not None, -row.gamma if row.gamma is not None else 0.0)
    alpha = (row.alpha is not None, row.alpha if row.alpha is not None else 0.0)
    return rank, "" if known else row.method, gamma, alpha


def summarize_run(run: str, records: list[dict[str, Any]]) -> list[Summary]:
    """The rows of one run, in table order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in _deduplicate(records, run):
        groups.setdefault(_key(record), []).append(record)
    rows = [_row(run, group) for group in groups.values()]
    add_speedups(rows)
    return sorted(rows, key=_order)


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Config "name" or folder name for each run, made unique with " (2)", " (3)"…"""
    names: list[str] = []
    for run_dir in run_dirs:
        base = str(load_config(run_dir).get("name") or run_dir.resolve().name)
        name, copy = base, 1
        while name in names:
            copy += 1
            name = f"{base} ({copy})"
        names.append(name)
    return names


def summarize(run_dirs: Sequence[str | PathLike[str]]) -> list[Summary]:
    """Rows of several runs side by side: runs in the given order, each in table order."""
    dirs = [Path(d) for d in run_dirs]
    rows: list[Summary] = []
    for run, run_dir in zip(_run_names(dirs), dirs, strict=True):
        rows.extend(summarize_run(run, load_results(run_dir)))
    return rows


# ---------------------------------------------------------------- rendering


def _parameter_text(value: float | None) -> str:
    """γ or α as written in the paper: 0.5, 0.01, ∞; a dash when the method has none."""
    if value is None:
        return DASH
    return "∞" if value == math.inf else f"{value:g}"


def _cells(row: Summary, with_run: bool) -> list[str]:
    cells = [
        row.method,
        _parameter_text(row.gamma),
        _parameter_text(row.alpha),
        str(row.examples),
        num(row.rouge1),
        num(row.rougeL),
        percent(row.acceptance, ".2f"),
        num(row.tokens_per_second),
        num(row.speedup, ".2f", "×"),
    ]
    return [str(row.run), *cells] if with_run else cells


def markdown_table(rows: Sequence[Summary]) -> str:
    """A GitHub markdown table like the paper's Tables 2 and 4 (a Run column for several runs)."""
    with_run = len({row.run for row in rows}) > 1
    header = ["Run", *COLUMNS] if with_run else list(COLUMNS)
    body = [_cells(row, with_run) for row in rows]
    return table(header, body, text_columns=2 if with_run else 1)


def write_csv(rows: Sequence[Summary], path: str | PathLike[str]) -> None:
    """`CSV_COLUMNS` of each row at full precision (acceptance a fraction); empty cells for
    None, "inf" for γ = ∞."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, name) for name in CSV_COLUMNS])  # None is written ""


# ---------------------------------------------------------------- plotting


def _series(rows: Sequence[Summary]) -> dict[tuple[str, str, float | None], list[Summary]]:
    """Rows grouped per (run, method, α), each group ordered by γ (descending: strict first)."""
    series: dict[tuple[str, str, float | None], list[Summary]] = {}
    for row in rows:
        series.setdefault((row.run, row.method, row.alpha), []).append(row)
    for group in series.values():
        group.sort(key=lambda r: -r.gamma if r.gamma is not None else -math.inf)
    return series


def _label(run: str, method: str, alpha: float | None, with_run: bool) -> str:
    label = method if alpha is None else f"{method} α={_parameter_text(alpha)}"
    return f"{run} · {label}" if with_run else label


def plot_quality_vs_speed(rows: Sequence[Summary], path: str | PathLike[str]) -> None:
    """PNG of R-L against speed-up (tokens/s without generalist rows); one line per γ sweep."""
    from langchain_specsteer.extras import optional_import

    optional_import("matplotlib", extra="eval", purpose="Plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    use_speedup = bool(rows) and all(row.speedup is not None for row in rows)
    with_run = len({row.run for row in rows}) > 1
    figure = Figure(figsize=(9.0, 5.0), layout="constrained")
    FigureCanvasAgg(figure)  # Agg without touching pyplot's global backend
    axes = figure.add_subplot()
    runs = list(dict.fromkeys(row.run for row in rows))
    for (run, method, alpha), group in _series(rows).items():
        xs = [row.speedup if use_speedup else row.tokens_per_second for row in group]
        ys = [row.rougeL for row in group]
        label = _label(run, method, alpha, with_run)
        style = LINE_STYLES[runs.index(run) % len(LINE_STYLES)]  # one dash pattern per run
        if all(row.gamma is None for row in group):
            axes.plot(xs, ys, marker="s", linestyle="none", markersize=8, label=label)
            continue
        axes.plot(xs, ys, marker="o", linestyle=style, label=label)
        for row, x, y in zip(group, xs, ys, strict=True):
            if row.gamma is not None:
                text = f"γ={_parameter_text(row.gamma)}"
                axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if use_speedup:
        axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("speed-up over generalist (×)" if use_speedup else "tokens/s")
    axes.set_ylabel("ROUGE-L (×100)")
    axes.set_title("Quality vs speed")
    axes.grid(True, alpha=0.3)
    if rows:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.savefig(Path(path), format="png", dpi=120)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.report", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders holding results.jsonl")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--plot", help="also write the quality-vs-speed PNG here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Print the markdown table of the given runs; optionally write a CSV and a plot."""
    args = build_parser().parse_args(argv)
    rows = summarize(args.runs)
    print(markdown_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)  # stdout stays the table
    if args.plot:
        plot_quality_vs_speed(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
