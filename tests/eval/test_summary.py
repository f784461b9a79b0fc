"""`eval.summary` and `eval.tables`: the one row type of reports and benches, and its cells."""

from __future__ import annotations

import json
import math

import pytest

from eval.summary import TABLE_ORDER, Summary, add_speedups, ratio, summarise
from eval.tables import DASH, num, percent, table
from langchain_specsteer.methods import METHODS


def generation(new_tokens, seconds, drafted=0, accepted=0, generalist_calls=0):
    return {
        "new_tokens": new_tokens,
        "seconds": seconds,
        "drafted": drafted,
        "accepted": accepted,
        "generalist_calls": generalist_calls,
    }


def test_a_row_pools_its_generations_rather_than_averaging_them():
    # 90 tokens in 1 s and 10 in 9 s: 100/10 = 10 tok/s, not the mean of 90 and 1.1;
    # 3 of 4 drafts and 1 of 16: 4/20 accepted, not the mean of 75 % and 6 %.
    row = summarise(
        [generation(90, 1.0, 4, 3, 30), generation(10, 9.0, 16, 1, 10)],
        method="specsteer",
        gamma=0.5,
        examples=2,
        rouge1=40.0,
        rougeL=30.0,
    )
    assert (row.new_tokens, row.seconds, row.drafted, row.accepted) == (100, 10.0, 20, 4)
    assert row.generalist_calls == 40
    assert row.tokens_per_second == pytest.approx(10.0)
    assert row.acceptance == pytest.approx(0.2)  # a fraction, in reports and benches alike
    assert row.generalist_calls_per_token == pytest.approx(0.4)
    assert (row.method, row.gamma, row.examples, row.rouge1) == ("specsteer", 0.5, 2, 40.0)
    assert row.speedup is None  # until add_speedups


def test_nothing_drafted_is_no_acceptance_and_nothing_timed_is_no_speed():
    row = summarise([generation(0, 0.0)], method="generalist", examples=1, rouge1=0, rougeL=0)
    assert row.acceptance is None
    assert row.tokens_per_second is None  # null in JSON, a dash in tables
    assert row.generalist_calls_per_token is None


def test_one_ratio_for_every_table_none_where_undefined():
    assert ratio(3, 2) == 1.5
    assert ratio(3, 0) is None and ratio(3, -1.0) is None
    assert ratio(None, 2) is None and ratio(3, None) is None
    assert json.dumps([ratio(1, 0)]) == "[null]"  # NaN would write invalid JSON


def test_speedups_are_over_the_pooled_generalist_rows():
    rows = [
        Summary(method="generalist", new_tokens=30, seconds=2.0, tokens_per_second=15.0),
        Summary(method="generalist", new_tokens=10, seconds=2.0, tokens_per_second=5.0),
        Summary(method="specsteer", tokens_per_second=30.0),
        Summary(method="specialist", tokens_per_second=math.nan),
        Summary(method="costeer", tokens_per_second=None),
    ]
    add_speedups(rows)  # the generalist's 40 tokens in 4 s: 10 tok/s
    assert [r.speedup for r in rows[:3]] == [pytest.approx(1.5), pytest.approx(0.5), 3.0]
    assert rows[3].speedup is None and rows[4].speedup is None
    alone = [Summary(method="specsteer", tokens_per_second=30.0)]
    add_speedups(alone)
    assert alone[0].speedup is None  # no generalist row: no speed-up


def test_tables_list_every_method_baselines_first_then_specsteer():
    assert sorted(TABLE_ORDER) == sorted(METHODS)
    assert TABLE_ORDER[-1] == "specsteer"
    assert list(TABLE_ORDER[:-1]) == [m for m in METHODS if m != "specsteer"]


def test_cells_show_a_dash_for_missing_figures_and_fractions_as_percentages():
    assert num(None) == num(math.nan) == percent(None) == percent(math.nan) == DASH
    assert num(2.13333, ".2f", "×") == "2.13×"
    assert num(4, "d") == "4"
    assert percent(0.82857) == "82.9"
    assert percent(2 / 3, ".2f") == "66.67"
    assert percent(0.5, ".0f", "%") == "50%"


def test_table_aligns_text_columns_left_and_figures_right():
    lines = table(["Run", "Method", "n"], [["a", "specsteer", "3"]], text_columns=2).splitlines()
    assert lines == ["| Run | Method | n |", "| --- | --- | ---: |", "| a | specsteer | 3 |"]
    assert table(["n"], [], text_columns=0).splitlines()[1] == "| ---: |"
