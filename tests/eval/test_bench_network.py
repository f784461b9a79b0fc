"""eval.bench_network on the tiny pair: every setting at a round trip, and what each costs.

Speed is the bench's to measure, not the test's; what cannot vary here is checked: every
setting ran on every case, "today" (`specsteer/1`) asks `/tokenize` and opens its session
before its first round (two requests more a generation than `specsteer/2`), the streamed
generalist is one request a generation and the baseline of the ratios.
"""

from __future__ import annotations

import json

import pytest

from eval import bench_network


@pytest.fixture(scope="module")
def record(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_network")
    args = ["--pair", "tiny", "--data", str(world_dir), "--cases", "2", "--rtts", "0,10"]
    args += ["--cores", "shared"]
    args += ["--max-new-tokens", "8", "--out", str(out), "--quiet"]
    record = bench_network.main(args)
    assert json.loads((out / "bench_network.json").read_text())["rows"] == record["rows"]
    assert (out / "bench_network.md").read_text().startswith("Tokens/s")
    assert (out / "bench_network.png").read_bytes()[:4] == b"\x89PNG"
    return record


def test_every_setting_runs_on_every_case_at_every_round_trip(record):
    names = [s.name for s in bench_network.SETTINGS]
    assert [(r["setting"], r["rtt_ms"]) for r in record["rows"]] == [
        (name, rtt) for name in names for rtt in (0, 10)
    ]
    cases = len({r["case"] for r in record["runs"]})  # the tiny world's test split may be short
    assert cases >= 1 and all(r["cases"] == cases for r in record["rows"])
    assert len(record["runs"]) == len(names) * 2 * cases


def test_today_pays_two_requests_before_its_first_round(record):
    runs = record["runs"]

    def requests(setting):
        return sorted(
            (r["case"], r["rtt_ms"], r["requests"], r["rounds"])
            for r in runs
            if r["setting"] == setting
        )

    for case, rtt, sent, rounds in requests("today, K"):
        assert sent == rounds + 2, (case, rtt)  # /tokenize, the opening, then the rounds
    for case, rtt, sent, rounds in requests("no request before the first round"):
        assert sent == rounds, (case, rtt)
    for _, _, sent, _ in requests("generalist streamed"):
        assert sent == 1


def test_the_streamed_generalist_is_the_baseline(record):
    for row in record["rows"]:
        if row["setting"] == bench_network.BASELINE:
            assert row["vs_streamed"] == pytest.approx(1.0)
        assert row["vs_streamed"] == pytest.approx(
            row["tokens_per_second"]
            / next(
                r["tokens_per_second"]
                for r in record["rows"]
                if r["setting"] == bench_network.BASELINE and r["rtt_ms"] == row["rtt_ms"]
            )
        )


def test_split_cores_serve_from_a_process_of_their_own_and_give_the_cores_back(
    world_dir, tiny_dir, tmp_path, capsys
):
    """`--cores split`: `specsteer serve` on half the cores, the device on the other half for
    the run, and this process on all of them again after; a pair without folders is refused."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("--cores split needs 2 cores")
    before = os.sched_getaffinity(0)
    args = ["--data", str(world_dir), "--cases", "1", "--rtts", "0", "--max-new-tokens", "4"]
    args += ["--out", str(tmp_path), "--quiet"]
    record = bench_network.main([*args, "--pair", str(tiny_dir)])
    settings = record["settings"]
    assert settings["cores"] == "split"
    assert set(settings["device_cores"]) | set(settings["service_cores"]) == before
    assert not set(settings["device_cores"]) & set(settings["service_cores"])
    assert os.sched_getaffinity(0) == before
    assert "service on cores" in (tmp_path / "bench_network.md").read_text()
    with pytest.raises(SystemExit):
        bench_network.main([*args, "--pair", "tiny"])
    assert "--cores split needs 2 cores or more and a pair folder" in capsys.readouterr().err
