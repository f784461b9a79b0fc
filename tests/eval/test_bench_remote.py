"""The network benchmark end to end on the tiny random pair: structure, traffic and oracles;
its timings are checked for what follows from them, not their size."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from eval.bench_remote import CONCURRENCY_MODES, SWEEP_METHODS, TRANSPORTS, main
from eval.summary import TABLE_ORDER as METHODS
from eval.world import write_world


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


RTTS = (0.0, 20.0)


@pytest.fixture(scope="module")
def bench(tiny_dir, tmp_path_factory):
    """One small run: 1 held-out example, 3 new tokens, round trips of 0 and 20 ms."""
    root = tmp_path_factory.mktemp("bench_remote")
    write_world(root / "world", users=12)  # 10 % of 12 users: 1 test example
    out = root / "out"
    printed: list[str] = []
    terminal = Terminal()  # stderr a terminal: a bar per phase
    with contextlib.redirect_stderr(terminal):
        record = main(
            [
                *("--pair", str(tiny_dir), "--data", str(root / "world"), "--cases", "1"),
                *("--max-new-tokens", "3", "--latencies", "20", "--exact-cases", "1"),
                *("--users", "1,3", "--concurrency-rtt", "20", "--concurrency-repeats", "1"),
                *("--threads", "1", "--out", str(out)),
            ],
            progress=printed.append,
        )
    return record, out, printed, terminal.getvalue()


def _rows(record):
    return {(row["method"], row["transport"]): row for row in record["transports"]}


def test_every_method_through_every_transport(bench):
    record = bench[0]
    rows = _rows(record)
    assert list(rows) == [(m, t) for m in METHODS for t in TRANSPORTS]
    for (method, transport), row in rows.items():
        assert row["examples"] == 1
        assert 1 <= row["new_tokens"] <= 3
        assert row["tokens_per_second"] == pytest.approx(row["new_tokens"] / row["wall_seconds"])
        if transport == "in_process":
            assert row["requests"] == 0
            assert row["same_text"] is None
            continue
        assert 0 <= row["same_text"] <= 1
        if method == "specialist":  # the generalist is never needed: nothing is sent
            assert row["requests"] == row["generalist_calls"] == 0
            assert row["overhead_ms_per_round"] is None
            continue
        # every remote generation encodes its prompt over /tokenize, at least
        assert row["body_up_per_token"] > 0
        assert row["body_down_per_token"] > 0
        assert row["total_up_per_token"] > row["body_up_per_token"]
        assert row["total_down_per_token"] > row["body_down_per_token"]
        assert row["extra_requests_per_generation"] >= 1
        assert row["requests"] > row["generalist_calls"] >= 1
        local = rows[method, "in_process"]
        overhead = 1e3 * (row["wall_seconds"] - local["wall_seconds"]) / row["generalist_calls"]
        assert row["overhead_ms_per_round"] == pytest.approx(overhead)


def test_rounds_per_token(bench):
    rows = _rows(bench[0])
    for transport in TRANSPORTS:
        for method in ("light_costeer", "costeer"):
            assert rows[method, transport]["generalist_calls_per_token"] == 1
        # the generalist alone: one call a token in process, one streamed request a text
        generalist = rows["generalist", transport]
        if transport == "in_process":
            assert generalist["generalist_calls_per_token"] == 1
        else:
            assert generalist["generalist_calls_per_token"] < 1
        specsteer = rows["specsteer", transport]["generalist_calls_per_token"]
        assert 0 < specsteer <= 1


def test_outputs_that_must_match_in_process(bench):
    """`generalist`, `specialist` and `speculative` pick from p_G's top tokens (or q_ctx
    alone), which every hint holds; with full-vocabulary hints every method matches."""
    record = bench[0]
    rows = _rows(record)
    for method in ("generalist", "specialist", "speculative"):
        for transport in ("session", "openai"):
            assert rows[method, transport]["same_text"] == 1
    exact = {row["transport"]: row for row in record["exact"]}
    assert set(exact) == {"session", "openai"}
    for row in exact.values():
        assert row["hint"] == record["vocab_size"]
        assert row["generations"] == len(METHODS) - 1
        assert row["identical"] == row["generations"]
        assert row["different"] == []


def test_the_session_protocol_sends_fewer_bytes_than_the_openai_dialect(bench):
    """Stateless rounds resend every token and get prompt log-probs of every position back."""
    rows = _rows(bench[0])
    session, openai = rows["specsteer", "session"], rows["specsteer", "openai"]
    assert session["body_up_per_token"] < openai["body_up_per_token"]
    assert session["body_down_per_token"] < openai["body_down_per_token"]
    assert session["total_down_per_token"] < openai["total_down_per_token"]


def test_latency_rows_and_the_model(bench):
    record = bench[0]
    rows = {(row["rtt_ms"], row["method"]): row for row in record["latency"]}
    assert list(rows) == [(rtt, method) for rtt in RTTS for method in SWEEP_METHODS]
    for (rtt, method), row in rows.items():
        assert row["examples"] == 1
        assert row["requests"] >= 1
        assert row["tokens_per_second"] == pytest.approx(row["new_tokens"] / row["wall_seconds"])
        predicted = rows[0.0, method]["wall_seconds"] + row["requests"] * rtt / 1e3
        assert row["predicted_seconds"] == pytest.approx(predicted)  # time(0) + requests · d
        predicted_speed = row["new_tokens"] / row["predicted_seconds"]
        assert row["predicted_tokens_per_second"] == pytest.approx(predicted_speed)
        # every request sleeps the round trip first (but the session's close runs in the
        # background, after the text is complete)
        assert row["wall_seconds"] >= (row["requests"] - 1) * rtt / 1e3
        light = rows[rtt, "light_costeer"]["tokens_per_second"]
        ratio = row["tokens_per_second_vs_light_costeer"]
        assert ratio == pytest.approx(row["tokens_per_second"] / light)
    for rtt in RTTS:
        assert rows[rtt, "light_costeer"]["tokens_per_second_vs_light_costeer"] == 1
        spec, light = rows[rtt, "specsteer"], rows[rtt, "light_costeer"]
        assert spec["requests"] / spec["new_tokens"] <= light["requests"] / light["new_tokens"]


def test_concurrent_users_write_the_same_texts_in_every_mode(bench):
    """Greedy decoding: sequential, thread-pool and async bursts give the same texts."""
    record = bench[0]
    rows = record["concurrency"]
    assert [(row["users"], row["mode"]) for row in rows] == [
        (users, mode) for users in (1, 3) for mode in CONCURRENCY_MODES
    ]
    for row in rows:
        assert row["rtt_ms"] == 20 and row["bursts"] == 1
        assert row["same_texts"] is True
        sequential = next(r for r in rows if r["users"] == row["users"])
        assert row["new_tokens"] == sequential["new_tokens"]
        assert sequential["vs_sequential"] == 1
        # every generation opens with at least /tokenize and one round, each after the RTT
        at_once = 1 if row["mode"] != "sequential" else row["users"]
        assert row["wall_seconds"] >= at_once * 2 * 0.02
    bursts = record["bursts"]
    assert [len(b["texts"]) for b in bursts] == [1, 1, 1, 3, 3, 3]


def test_bad_user_counts_are_refused(capsys):
    from eval.bench_remote import parse_args

    assert parse_args(["--users", "4,1,0"]).users == [1, 4]
    assert parse_args(["--users", "0"]).users == []
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--users", bad])
        assert "non-negative integers such as 1,4" in capsys.readouterr().err


def test_outputs_are_written_and_printed(bench):
    record, out, printed, _ = bench
    saved = json.loads((out / "bench_remote.json").read_text(encoding="utf-8"))
    assert saved["config"]["cases"] == 1
    assert saved["config"]["latencies"] == list(RTTS)
    assert saved["transports"] == record["transports"]
    generations = saved["generations"]
    assert len(generations) == len(METHODS) * 3 + (len(METHODS) - 1) * 2 + 2 * 3
    # generate's wall time holds the decode loop's (and encoding the prompt)
    assert all(g["text"] is not None for g in generations)
    assert all(g["wall_seconds"] >= g["decode_seconds"] > 0 for g in generations)
    report = (out / "bench_remote.md").read_text(encoding="utf-8")
    for heading in (
        "## Transports",
        "## Exact hints",
        "## Injected round-trip latency",
        "## Concurrent users",
    ):
        assert heading in report
    assert "| specsteer | session |" in report
    assert printed == [report.rstrip("\n")]


def test_a_bar_per_phase_on_a_terminal(bench):
    shown = bench[3]
    for phase in ("warm-up", "transports", "exact hints", "latency sweep", "concurrent users"):
        assert f"{phase}: 100%" in shown
    assert "[bench_remote]" not in shown  # the bars say it
