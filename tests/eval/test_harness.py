"""eval.harness: the pieces every bench is built from, each on its own (no models)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from types import SimpleNamespace

import pytest

from eval.harness import (
    BURST_MODES,
    Phases,
    burst,
    checked_output,
    interleaved,
    load_cases,
    machine_info,
    percentile,
    rotated,
    write_outputs,
)


def test_rotated_shifts_left_modulo_the_length():
    assert rotated([1, 2, 3], 0) == [1, 2, 3]
    assert rotated([1, 2, 3], 1) == [2, 3, 1]
    assert rotated([1, 2, 3], 4) == [2, 3, 1]


def test_interleaved_runs_every_setting_on_every_case_in_rotating_order():
    trials = list(interleaved(["c0", "c1"], ["a", "b", "c"], reps=2))
    assert trials == [
        (0, "c0", "a"), (0, "c0", "b"), (0, "c0", "c"),
        (0, "c1", "b"), (0, "c1", "c"), (0, "c1", "a"),
        (1, "c0", "c"), (1, "c0", "a"), (1, "c0", "b"),  # the rotation goes on across reps
        (1, "c1", "a"), (1, "c1", "b"), (1, "c1", "c"),
    ]  # fmt: skip
    assert [setting for _, _, setting in trials[::3]] == ["a", "b", "c", "a"]  # leaders in turn


def test_percentile_interpolates_between_order_statistics():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 95) == pytest.approx(3.85)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"q must be within 0\.\.100"):
        percentile([1.0], 101)


# ---------------------------------------------------------------- bursts


def test_sequential_and_thread_bursts_keep_the_order_and_time_each_call():
    def call(seconds: float) -> float:
        time.sleep(seconds)
        return seconds * 10

    delays = [0.05, 0.1, 0.05]
    one_by_one = burst(delays, "sequential", call)
    assert one_by_one.results == [0.5, 1.0, 0.5]
    assert one_by_one.wall_seconds >= sum(delays)
    assert [s >= d for s, d in zip(one_by_one.seconds, delays, strict=True)] == [True] * 3
    started = threading.Barrier(3, timeout=5)  # all three calls run at once, or this times out

    def together(seconds: float) -> float:
        started.wait()
        return call(seconds)

    at_once = burst(delays, "threads", together)
    assert at_once.results == [0.5, 1.0, 0.5]
    assert at_once.wall_seconds >= max(delays)


def test_an_async_burst_runs_on_one_loop_and_closes_after_the_clock_stops():
    loops, events = set(), []

    async def acall(seconds: float) -> float:
        loops.add(asyncio.get_running_loop())
        await asyncio.sleep(seconds)
        events.append("call")
        return seconds

    async def close() -> None:
        loops.add(asyncio.get_running_loop())
        await asyncio.sleep(0.2)  # not counted
        events.append("close")

    timing = burst([0.1, 0.1, 0.1], "async", acall=acall, close=close)
    assert timing.mode == "async" and timing.results == [0.1, 0.1, 0.1]
    assert len(loops) == 1 and events == ["call"] * 3 + ["close"]
    assert 0.1 <= timing.wall_seconds < 0.2  # concurrent, and without the close
    assert all(0.1 <= s < 0.2 for s in timing.seconds)


def test_an_unknown_burst_mode_is_refused():
    assert BURST_MODES == ("sequential", "threads", "async")
    with pytest.raises(ValueError, match="mode must be one of sequential, threads, async"):
        burst([1], "processes", lambda x: x)


def test_a_degraded_generation_fails_the_bench():
    def result(info):
        return SimpleNamespace(generations=[[SimpleNamespace(text="t", generation_info=info)]])

    assert checked_output(result({"new_tokens": 3}), "x").text == "t"
    with pytest.raises(RuntimeError, match="specsteer over openai degraded: timeout"):
        checked_output(
            result({"degraded": True, "degraded_reason": "timeout"}), "specsteer over openai"
        )


# ---------------------------------------------------------------- progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_phase_shows_a_bar_on_a_terminal():
    terminal = Terminal()
    phases = Phases("bench_x", file=terminal)
    assert list(phases.each("transports", range(3))) == [0, 1, 2]
    shown = terminal.getvalue()
    assert "transports" in shown and "3/3" in shown
    assert "[bench_x]" not in shown  # the bar says it: no extra line


def test_off_a_terminal_a_phase_is_one_line_when_it_ends():
    log = io.StringIO()
    phases = Phases("bench_x", file=log)
    assert list(phases.each("warm-up", "ab")) == ["a", "b"]
    assert log.getvalue().splitlines() == ["[bench_x] warm-up done (0 s)"]


def test_quiet_shows_nothing():
    terminal = Terminal()
    phases = Phases("bench_x", quiet=True, file=terminal)
    assert list(phases.each("settings", range(3), total=3)) == [0, 1, 2]
    phases.note("starting vLLM")
    assert terminal.getvalue() == ""


# ---------------------------------------------------------------- the record


def test_machine_info_records_the_load_average_and_versions():
    import torch

    info = machine_info(cpu_extra="x")
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert len(info["load_average"]) == 3 and all(v >= 0 for v in info["load_average"])
    assert info["cpu_extra"] == "x"
    assert "device" not in info  # only with an engine


def test_write_outputs_writes_json_markdown_and_the_plot(tmp_path):
    drawn = []
    record = {"rows": [{"γ": 0.5, "path": tmp_path}]}  # non-JSON values are written as text
    write_outputs(tmp_path / "out", "bench_x", record, "# Report", lambda r, p: drawn.append(p))
    saved = json.loads((tmp_path / "out" / "bench_x.json").read_text(encoding="utf-8"))
    assert saved == {"rows": [{"γ": 0.5, "path": str(tmp_path)}]}
    assert "γ" in (tmp_path / "out" / "bench_x.json").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "bench_x.md").read_text(encoding="utf-8") == "# Report\n"
    assert drawn == [tmp_path / "out" / "bench_x.png"]


def test_cases_come_with_their_private_context(world_dir):
    cases = load_cases(world_dir, "test", 1, k=2)
    assert len(cases) == 1
    case = cases[0]
    assert case.id == "test-000000" and case.prompt == case.example.input
    assert 1 <= len(case.documents) <= 2 and case.prompts is None


def test_missing_data_ends_the_command_with_its_message(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        load_cases(tmp_path / "nowhere", "test", 1, k=2)
    message = str(exit_.value)
    assert message.startswith("error: LongLaMP source") and "does not exist" in message


def test_write_world_fills_a_missing_folder(tmp_path, monkeypatch):
    import eval.world

    real, written = eval.world.write_world, []

    def write(folder, **kwargs):
        written.append(folder)
        real(folder, users=12)  # a small world: 1 test example

    monkeypatch.setattr(eval.world, "write_world", write)
    cases = load_cases(tmp_path / "world", "test", 1, k=2, write_world=True)
    assert written == [tmp_path / "world"] and len(cases) == 1
