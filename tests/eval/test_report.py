"""`eval.report`: aggregation of results.jsonl files into the paper's table, CSV and plot."""

from __future__ import annotations

import csv
import json
import math
import random
import re

import pytest

from eval.report import (
    load_results,
    main,
    markdown_table,
    plot_quality_vs_speed,
    summarize,
    write_csv,
)
from eval.summary import Summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def result(example_id, method, gamma=None, alpha=None, **fields):
    """One results.jsonl record; counters default to zero."""
    record = {
        "example_id": example_id,
        "method": method,
        "gamma": gamma,
        "alpha": alpha,
        "prediction": f"prediction of {example_id}",
        "reference": f"reference of {example_id}",
        "rouge1": 0.0,
        "rougeL": 0.0,
        "new_tokens": 10,
        "seconds": 1.0,
        "drafted": 0,
        "accepted": 0,
        "generalist_calls": 0,
        "rounds": 0,
        "finish_reason": "length",
        "retrieved": 2,
    }
    record.update(fields)
    return record


def write_run(folder, records, config=None, tail=""):
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (folder / "results.jsonl").write_text(text, encoding="utf-8")
    return folder


# Run A, by hand:
#   generalist: R-1 (30+50)/2 = 40, R-L (20+40)/2 = 30, 150 tokens in 6 s = 25 tok/s,
#       150 calls / 150 tokens = 1 per token, nothing drafted → acceptance None, speed-up 1.
#   specsteer γ=0.5 α=1: R-1 (40+20)/2 = 30, R-L (30+10)/2 = 20, accepted 80 of 120 drafted
#       = 2/3 (66.67 %), 160 tokens in 3 s = 53.33 tok/s → speed-up 53.33/25 = 2.1333,
#       50 calls / 160 tokens = 0.3125.
#   specsteer γ=∞ α=1 ("inf" in JSON): 40 tokens in 2 s = 20 tok/s → speed-up 0.8, 0 of 30 → 0 %.
RUN_A = [
    result("e1", "generalist", rouge1=0.3, rougeL=0.2, new_tokens=100, seconds=4.0,
           generalist_calls=100),
    result("e2", "generalist", rouge1=0.5, rougeL=0.4, new_tokens=50, seconds=2.0,
           generalist_calls=50),
    result("e1", "specsteer", 0.5, 1.0, rouge1=0.4, rougeL=0.3, new_tokens=100, seconds=2.0,
           drafted=80, accepted=60, generalist_calls=30),
    result("e2", "specsteer", 0.5, 1.0, rouge1=0.2, rougeL=0.1, new_tokens=60, seconds=1.0,
           drafted=40, accepted=20, generalist_calls=20),
    result("e1", "specsteer", "inf", 1.0, rouge1=0.25, rougeL=0.15, new_tokens=40, seconds=2.0,
           drafted=30, accepted=0, generalist_calls=40),
]  # fmt: skip


@pytest.fixture
def run_a(tmp_path):
    return write_run(tmp_path / "a", RUN_A, config={"name": "review-A", "task": "product_review"})


def by_key(rows):
    return {(row.method, row.gamma, row.alpha): row for row in rows}


def test_aggregates_match_hand_computation(run_a):
    rows = by_key(summarize([run_a]))
    assert set(rows) == {("generalist", None, None), ("specsteer", 0.5, 1.0),
                         ("specsteer", math.inf, 1.0)}  # fmt: skip

    generalist = rows["generalist", None, None]
    assert generalist.run == "review-A"
    assert generalist.examples == 2
    assert generalist.rouge1 == pytest.approx(40.0)
    assert generalist.rougeL == pytest.approx(30.0)
    assert generalist.acceptance is None
    assert generalist.tokens_per_second == pytest.approx(25.0)
    assert generalist.speedup == pytest.approx(1.0)
    assert generalist.generalist_calls_per_token == pytest.approx(1.0)

    steer = rows["specsteer", 0.5, 1.0]
    assert steer.examples == 2
    assert steer.rouge1 == pytest.approx(30.0)
    assert steer.rougeL == pytest.approx(20.0)
    assert steer.acceptance == pytest.approx(2 / 3)  # a fraction; the table prints 66.67
    assert steer.tokens_per_second == pytest.approx(160 / 3)
    assert steer.speedup == pytest.approx((160 / 3) / 25)
    assert steer.generalist_calls_per_token == pytest.approx(50 / 160)

    strict = rows["specsteer", math.inf, 1.0]
    assert strict.examples == 1
    assert strict.rouge1 == pytest.approx(25.0)
    assert strict.acceptance == 0.0  # drafted but nothing accepted: 0, not None
    assert strict.speedup == pytest.approx(0.8)


def test_tokens_per_second_pools_tokens_and_seconds(tmp_path):
    # 90 tokens in 1 s and 10 tokens in 9 s: Σtokens/Σseconds = 10, not the mean of 90 and 1.1
    folder = write_run(tmp_path / "r", [
        result("e1", "specialist", new_tokens=90, seconds=1.0),
        result("e2", "specialist", new_tokens=10, seconds=9.0),
    ])  # fmt: skip
    (row,) = summarize([folder])
    assert row.tokens_per_second == pytest.approx(10.0)
    assert row.speedup is None  # no generalist rows in this run


def test_load_results_reads_inf_and_nulls(run_a):
    records = load_results(run_a)
    assert len(records) == len(RUN_A)
    assert records[4]["gamma"] == math.inf
    assert records[0]["gamma"] is None and records[0]["alpha"] is None
    assert records[2]["gamma"] == 0.5 and records[2]["alpha"] == 1.0


def test_python_infinity_literal_is_read_too(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    line = json.dumps(result("e1", "specsteer", math.inf, 1.0))  # writes Infinity
    (folder / "results.jsonl").write_text(line + "\n", encoding="utf-8")
    (row,) = summarize([folder])
    assert row.gamma == math.inf


ORDER = [
    ("generalist", None, None),
    ("specialist", None, None),
    ("speculative", None, None),
    ("light_costeer", None, 0.5),
    ("light_costeer", None, 1.0),
    ("costeer", None, 1.0),
    ("specsteer", math.inf, 1.0),
    ("specsteer", 1.0, 0.5),
    ("specsteer", 1.0, 1.0),
    ("specsteer", 0.5, 1.0),
    ("specsteer", 0.1, 1.0),
    ("specsteer", 0.01, 1.0),
    ("a_new_method", None, None),
    ("zz_method", None, None),
]


def test_rows_are_ordered_by_method_then_gamma_down_then_alpha_up(tmp_path):
    shuffled = ORDER[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != ORDER
    records = [result("e1", m, "inf" if g == math.inf else g, a) for m, g, a in shuffled]
    rows = summarize([write_run(tmp_path / "r", records)])
    assert [(r.method, r.gamma, r.alpha) for r in rows] == ORDER


def test_two_runs_side_by_side(tmp_path, run_a):
    run_b = write_run(tmp_path / "b-folder", [
        result("e1", "specsteer", 0.5, 1.0, rouge1=0.6, rougeL=0.5, drafted=4, accepted=1),
        result("e1", "specialist"),
    ])  # fmt: skip
    rows = summarize([run_b, run_a])
    assert [r.run for r in rows] == ["b-folder"] * 2 + ["review-A"] * 3  # given order kept
    b = by_key(rows[:2])
    assert b["specsteer", 0.5, 1.0].rouge1 == pytest.approx(60.0)
    assert b["specsteer", 0.5, 1.0].acceptance == pytest.approx(0.25)
    assert b["specsteer", 0.5, 1.0].speedup is None  # run B has no generalist: A's isn't used
    assert by_key(rows[2:])["specsteer", 0.5, 1.0].speedup == pytest.approx((160 / 3) / 25)

    table = markdown_table(rows)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Run | Method | γ | α | n |")
    assert lines[2].startswith("| b-folder | specialist |")
    assert lines[4].startswith("| review-A | generalist |")


def test_runs_with_the_same_name_stay_apart(tmp_path):
    first = write_run(tmp_path / "x" / "run", [result("e1", "specialist", rouge1=0.1)])
    second = write_run(tmp_path / "y" / "run", [result("e1", "specialist", rouge1=0.2)])
    rows = summarize([first, second])
    assert [(r.run, r.rouge1) for r in rows] == [("run", pytest.approx(10)), ("run (2)", 20)]


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    folder = write_run(tmp_path / "r", RUN_A, tail='{"example_id": "e3", "meth')
    with pytest.warns(RuntimeWarning, match=r"results\.jsonl:6: skipping a truncated last line"):
        records = load_results(folder)
    assert len(records) == len(RUN_A)
    with pytest.warns(RuntimeWarning, match="truncated"):
        rows = summarize([folder])
    assert by_key(rows)["generalist", None, None].examples == 2


def test_blank_lines_are_ignored(tmp_path):
    folder = write_run(tmp_path / "r", RUN_A[:1], tail="\n   \n")
    assert len(load_results(folder)) == 1


def test_a_malformed_middle_line_is_an_error_naming_file_and_line(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    lines = [json.dumps(RUN_A[0]), '{"example_id": "e2", "meth', json.dumps(RUN_A[1])]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = re.escape(str(folder / "results.jsonl"))
    with pytest.raises(ValueError, match=rf"{path}:2: malformed"):
        load_results(folder)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"example_id": "e1", "method": "generalist"}), "missing field.*rouge1"),
        (json.dumps(result("e1", "specsteer", "fast", 1.0)), "gamma must be"),
    ],
)
def test_complete_but_invalid_lines_are_errors_even_when_last(tmp_path, line, reason):
    folder = write_run(tmp_path / "r", RUN_A[:2], tail=line + "\n")
    with pytest.raises(ValueError, match=rf"results\.jsonl:3: malformed result line: {reason}"):
        load_results(folder)


def test_a_repeated_result_keeps_the_last_with_a_warning(tmp_path):
    folder = write_run(tmp_path / "r", [
        result("e1", "specialist", rouge1=0.1),
        result("e2", "specialist", rouge1=0.3),
        result("e1", "specialist", rouge1=0.5),
    ])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="1 repeated result"):
        (row,) = summarize([folder])
    assert row.examples == 2
    assert row.rouge1 == pytest.approx(40.0)


def table_row(**fields):
    values = {
        "run": "r", "method": "specsteer", "gamma": 0.5, "alpha": 1.0, "examples": 3,
        "rouge1": 33.333, "rougeL": 20.0, "acceptance": 0.87456, "tokens_per_second": 41.2349,
        "speedup": 1.7399, "generalist_calls_per_token": 0.25,
    }  # fmt: skip
    values.update(fields)
    return Summary(**values)


def cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_markdown_table_formats_numbers_like_the_paper():
    rows = [
        table_row(method="generalist", gamma=None, alpha=None, acceptance=None, speedup=1.0),
        table_row(),
        table_row(gamma=math.inf, speedup=None),
        table_row(gamma=0.01, alpha=0.5),
    ]
    lines = markdown_table(rows).strip().splitlines()
    assert cells(lines[0]) == ["Method", "γ", "α", "n", "R-1", "R-L", "Accept. %", "tokens/s",
                               "Speed-up"]  # fmt: skip
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert cells(lines[2]) == ["generalist", "—", "—", "3", "33.33", "20.00", "—", "41.23",
                               "1.00×"]  # fmt: skip
    assert cells(lines[3]) == ["specsteer", "0.5", "1", "3", "33.33", "20.00", "87.46", "41.23",
                               "1.74×"]  # fmt: skip
    assert cells(lines[4])[1] == "∞"
    assert cells(lines[4])[-1] == "—"
    assert cells(lines[5])[1:3] == ["0.01", "0.5"]
    assert len(lines) == 2 + len(rows)


def test_markdown_table_from_runs_shows_inf_as_infinity(run_a):
    table = markdown_table(summarize([run_a]))
    assert "| specsteer | ∞ | 1 | 1 | 25.00 | 15.00 | 0.00 | 20.00 | 0.80× |" in table
    assert "| specsteer | 0.5 | 1 | 2 | 30.00 | 20.00 | 66.67 | 53.33 | 2.13× |" in table
    assert "| generalist | — | — | 2 | 40.00 | 30.00 | — | 25.00 | 1.00× |" in table
    assert "inf" not in table


def test_csv_round_trip(tmp_path, run_a):
    rows = summarize([run_a])
    path = tmp_path / "table.csv"
    write_csv(rows, path)
    with path.open(newline="", encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert len(back) == len(rows)
    assert list(back[0]) == [
        "run", "method", "gamma", "alpha", "examples", "rouge1", "rougeL", "acceptance",
        "tokens_per_second", "speedup", "generalist_calls_per_token",
    ]  # fmt: skip

    def number(text):
        return None if text == "" else float(text)

    for row, line in zip(rows, back, strict=True):
        assert line["run"] == row.run
        assert line["method"] == row.method
        assert int(line["examples"]) == row.examples
        for name in ("gamma", "alpha", "acceptance", "speedup"):
            assert number(line[name]) == getattr(row, name)  # exact: full precision
        for name in ("rouge1", "rougeL", "tokens_per_second", "generalist_calls_per_token"):
            assert float(line[name]) == getattr(row, name)
    assert [line["gamma"] for line in back] == ["", "inf", "0.5"]


def test_plot_writes_a_png(tmp_path, run_a):
    records = [
        *RUN_A,
        result("e1", "specsteer", 0.1, 1.0, rougeL=0.12, new_tokens=120, seconds=2.0),
        result("e1", "specsteer", 0.5, 0.5, rougeL=0.22, new_tokens=90, seconds=2.0),
        result("e1", "specsteer", 0.1, 0.5, rougeL=0.18, new_tokens=130, seconds=2.0),
        result("e1", "specialist", rougeL=0.05, new_tokens=200, seconds=2.0),
        result("e1", "light_costeer", None, 1.0, rougeL=0.25, new_tokens=30, seconds=2.0),
    ]
    rows = summarize([write_run(tmp_path / "sweep", records, config={"name": "sweep"})])
    path = tmp_path / "plot.png"
    plot_quality_vs_speed(rows, path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


def test_plot_without_a_generalist_uses_tokens_per_second(tmp_path):
    folder = write_run(tmp_path / "r", [
        result("e1", "specsteer", 0.5, 1.0, rougeL=0.3),
        result("e1", "specsteer", "inf", 1.0, rougeL=0.35),
        result("e1", "specialist", rougeL=0.1),
    ])  # fmt: skip
    rows = summarize([folder])
    assert all(row.speedup is None for row in rows)
    path = tmp_path / "plot.png"
    plot_quality_vs_speed(rows, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_command_line_prints_the_table_and_writes_files(tmp_path, run_a, capsys):
    main([str(run_a), "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert out == markdown_table(summarize([run_a])) + "\n"
    assert err.splitlines() == [f"wrote {tmp_path / 't.csv'}", f"wrote {tmp_path / 'p.png'}"]
    assert (tmp_path / "t.csv").read_text(encoding="utf-8").startswith("run,method,gamma")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
