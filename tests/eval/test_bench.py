"""The benchmark suite end to end on the tiny random pair: structure and oracles; its timings
are checked for what follows from them (pooled ratios, the bound's formula), not their size."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings

import pytest
import torch

from eval import bench as bench_module
from eval import hf_assisted
from eval.bench import METHODS, main, parse_args
from eval.bounds import expected_tokens, forward_seconds, speedup_bound
from eval.harness import PeakMemory
from eval.hf_assisted import HF_PEER
from eval.world import write_world


@pytest.fixture(scope="module")
def bench(tiny_dir, tmp_path_factory):
    """One small run: 2 held-out examples, 6 new tokens, tiny sweeps; (record, out folder)."""
    root = tmp_path_factory.mktemp("bench")
    write_world(root / "world", users=20)  # 10 % of 20 users: 2 test examples (12 gives 1)
    out = root / "out"
    printed: list[str] = []
    log = io.StringIO()  # stderr off a terminal: a line per phase instead of a bar
    with contextlib.redirect_stderr(log):
        record = main(
            [
                *("--specialist", str(tiny_dir / "specialist")),
                *("--generalist", str(tiny_dir / "generalist")),
                *("--data", str(root / "world"), "--split", "test", "--prompts", "2"),
                *("--max-new-tokens", "6", "--gammas", "0.5,0.1", "--k-sweep", "1,2"),
                *("--draft-tokens", "4"),
                *("--threads", "1", "--cost-repeats", "5", "--device", "cpu", "--out", str(out)),
            ],
            progress=printed.append,
        )
    return record, out, printed, log.getvalue()


def _all_rows(record):
    return [*record["methods"], *record["gamma_sweep"], *record["k_sweep"]]


def test_every_method_and_the_peer_have_a_row(bench):
    record = bench[0]
    assert [row["method"] for row in record["methods"]] == [*METHODS, HF_PEER]
    assert record["examples"] == 2
    generalist = record["methods"][0]
    for row in _all_rows(record):
        assert row["examples"] == 2
        assert row["new_tokens"] > 0
        # pooled, not averaged: Σtokens / Σseconds, and over the generalist's row
        assert row["tokens_per_second"] == pytest.approx(row["new_tokens"] / row["seconds"])
        speedup = row["tokens_per_second"] / generalist["tokens_per_second"]
        assert row["speedup"] == pytest.approx(speedup)
        assert 0 <= row["rouge1"] <= 100
        assert 0 <= row["rougeL"] <= 100
        assert row["peak_rss_mb"] >= 0  # measured (None off Linux)
    assert generalist["speedup"] == pytest.approx(1.0)
    assert generalist["generalist_calls_per_token"] == pytest.approx(1.0)
    specialist = record["methods"][1]
    assert specialist["generalist_calls_per_token"] == 0
    for row in record["methods"]:
        drafts = row["method"] in ("speculative", "specsteer", HF_PEER)
        assert (row["acceptance"] is not None) == drafts
        if drafts:
            assert 0 <= row["acceptance"] <= 1


def test_sweeps_cover_the_requested_values(bench):
    record = bench[0]
    assert [(r["method"], r["gamma"], r["k"]) for r in record["gamma_sweep"]] == [
        ("specsteer", 0.5, 4),
        ("specsteer", 0.1, 4),
    ]
    assert [(r["method"], r["k"]) for r in record["k_sweep"]] == [
        ("specsteer", 1),
        ("specsteer", 2),
        ("speculative", 1),
        ("speculative", 2),
    ]
    assert all(r["gamma"] == 0.5 for r in record["k_sweep"] if r["method"] == "specsteer")


def test_greedy_speculative_and_hf_assisted_equal_the_generalist(bench):
    """Ours at every K and HF's assisted generation decode the generalist's tokens exactly.

    This holds on the tiny random pair: its verify forwards (K+1 tokens) and single steps
    never land on a near-tie that float rounding could flip.
    """
    record = bench[0]
    checks = {(c["a"], c["b"]): c for c in record["equivalence"]}
    assert set(checks) == {
        ("speculative (K=4)", "generalist"),
        ("speculative (K=1)", "generalist"),
        ("speculative (K=2)", "generalist"),
        ("hf_assisted (K=4)", "generalist"),
        ("hf_assisted (K=4)", "speculative (K=4)"),
    }
    for check in checks.values():
        assert check["equal"] == check["total"] == 2
    samples = record["samples"]
    by_example = {s["example_id"]: s["tokens"] for s in samples["generalist"]}
    assert all(1 <= len(tokens) <= 6 for tokens in by_example.values())
    for label in ("speculative (K=4)", "hf_assisted (K=4)"):
        assert {s["example_id"]: s["tokens"] for s in samples[label]} == by_example


def test_bounds_follow_from_the_measured_costs_and_rounds(bench):
    record = bench[0]
    costs = record["forward_seconds"]
    assert set(costs["generalist"]) == {1, 2, 3, 5}  # steps and K+1 verify forwards
    bounded = [r for r in _all_rows(record) if r["method"] in ("speculative", "specsteer")]
    assert bounded
    for row in bounded:
        tokens = row["new_tokens"] / row["generalist_calls"]
        drafts = row["drafted"] / row["generalist_calls"]
        assert row["tokens_per_round"] == pytest.approx(tokens)
        bound = speedup_bound(row["method"], row["acceptance"], row["k"], costs, tokens, drafts)
        assert row["bound_speedup"] == pytest.approx(bound)
        assert row["measured_over_bound"] == pytest.approx(row["speedup"] / bound)
        assert math.isfinite(row["measured_over_bound"])
        assert row["expected_tokens_per_round"] == expected_tokens(row["acceptance"], row["k"])
    for row in record["methods"]:
        if row["method"] not in ("speculative", "specsteer"):
            assert row["bound_speedup"] is None


def test_smoke_every_forward_cost_is_measured(bench):
    """A smoke test: the costs exist and are times (their size is the machine's)."""
    costs = bench[0]["forward_seconds"]
    assert set(costs) == {"generalist", "specialist", "specialist_public"}  # no batching on CPU
    assert all(seconds > 0 for by_size in costs.values() for seconds in by_size.values())


def test_outputs_are_written_and_printed(bench):
    record, out, printed, _ = bench
    saved = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert saved["config"]["prompts"] == 2
    assert saved["machine"]["torch"] == torch.__version__
    assert [r["label"] for r in saved["methods"]] == [r["label"] for r in record["methods"]]
    report = (out / "bench.md").read_text(encoding="utf-8")
    for heading in ("## Methods", "## Same outputs?", "## Speed-up bound", "## γ sweep", "## K"):
        assert heading in report
    assert "| hf_assisted | — | 4 |" in report
    assert printed == [report.rstrip("\n")]
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(saved["machine"]["load_average"]) == 3


def test_each_phase_reports_its_end_off_a_terminal(bench):
    lines = [line for line in bench[3].splitlines() if line.startswith("[bench] ")]
    phases = [line.removeprefix("[bench] ").split(" done (")[0] for line in lines]
    assert phases == ["warm-up", "settings", "forward costs"]


def test_expected_tokens_and_bound():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    costs = {
        "generalist": {1: 10.0, 3: 12.0},
        "specialist": {1: 1.0},
        "specialist_public": {3: 2.0},
    }
    # speculative, α=0.5, K=2: E = 1.75 tokens for 2·1 + 12 = 14 → 1.75·10/14
    assert speedup_bound("speculative", 0.5, 2, costs) == pytest.approx(1.25)
    # specsteer adds q_gen (2) and α^K·c_S (0.25): 1.75·10 / 16.25
    assert speedup_bound("specsteer", 0.5, 2, costs) == pytest.approx(17.5 / 16.25)
    batched = {**costs, "specialist_batched": {1: 1.5}}
    assert speedup_bound("specsteer", 0.5, 2, batched) == pytest.approx(17.5 / (2.25 * 1.5 + 12))


def test_peak_memory_sees_a_64_mib_block():
    with PeakMemory(0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, every page written
    assert block.numel() and memory.rss_mb is not None
    assert memory.rss_mb > 32


@pytest.mark.parametrize("rows", [[[5, 6, 7, 8]], [[5, 6, 7, 8], [9, 10]]])
def test_timed_forwards_use_the_models_current_cache_keyword(generalist, rows):
    """The cost forwards go through `TokenSequence` (its cache keyword, its left padding of
    rows of unequal length): no deprecation warning from our calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        assert forward_seconds(generalist, rows, 2, 1, generalist.vocab_size) > 0


def test_the_pair_defaults_to_the_shipped_one(monkeypatch, capsys, tmp_path):
    from langchain_specsteer import demo_pair

    monkeypatch.setattr(bench_module, "demo_pair", lambda: demo_pair(tmp_path / "shipped"))
    (tmp_path / "shipped" / "specialist").mkdir(parents=True)
    (tmp_path / "shipped" / "generalist").mkdir()
    args = parse_args(["--data", "d", "--generalist", "G"])
    assert (args.specialist, args.generalist) == (str(tmp_path / "shipped" / "specialist"), "G")
    monkeypatch.setattr(bench_module, "demo_pair", lambda: demo_pair(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--specialist", "S"])
    error = capsys.readouterr().err
    assert "--generalist is required" in error and "eval.train_pair --export" in error


# ---------------------------------------------------------------- adaptive rounds (issue 17)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def adaptive_bench(tiny_dir, tmp_path_factory):
    """A small run with --adaptive and --quiet, stderr a terminal: (record, printed report,
    stderr, transformers' log records)."""
    root = tmp_path_factory.mktemp("bench_adaptive")
    write_world(root / "world", users=20)
    printed: list[str] = []
    terminal = Terminal()
    with contextlib.redirect_stderr(terminal), transformers_log() as records:
        record = main(
            [
                *("--specialist", str(tiny_dir / "specialist")),
                *("--generalist", str(tiny_dir / "generalist")),
                *("--data", str(root / "world"), "--split", "test", "--prompts", "2"),
                *("--max-new-tokens", "6", "--gammas", "0.5", "--k-sweep", "1"),
                *("--draft-tokens", "2", "--adaptive", "--adaptive-gammas", "0.5,0.1"),
                *("--adaptive-k", "1,2", "--hf-start", "4", "--hf-thresholds", "0.4"),
                *("--threads", "1", "--cost-repeats", "3", "--device", "cpu"),
                *("--out", str(root / "out"), "--quiet"),
            ],
            progress=printed.append,
        )
    return record, printed[0], terminal.getvalue(), records


@contextlib.contextmanager
def transformers_log():
    """Every record transformers logs while the block runs, its notices shown only once per
    process (`warning_once`) shown afresh."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logging.Logger.warning_once.cache_clear()
    logger, keep = logging.getLogger("transformers"), Keep()
    logger.addHandler(keep)
    try:
        yield records
    finally:
        logger.removeHandler(keep)


def test_quiet_draws_no_bars_on_a_terminal(adaptive_bench):
    stderr = adaptive_bench[2]
    for phase in ("warm-up", "settings", "forward costs", "[bench]"):
        assert phase not in stderr


def test_the_adaptive_hf_settings_print_no_deprecation_notice(adaptive_bench):
    records = adaptive_bench[3]
    assert [r.getMessage() for r in records if "generation_config" in r.getMessage()] == []


def test_the_hf_peer_prints_no_deprecation_notice(generalist, tiny_dir):
    """transformers' assisted generation prints "Passing `generation_config` together with
    generation-related arguments" from its own assistant call: not shown by the bench."""
    from langchain_specsteer import LocalSpecialist, SpecSteerLLM
    from langchain_specsteer.engine import Prompts

    specialist = LocalSpecialist.from_pretrained(str(tiny_dir / "specialist"), device="cpu")
    llm = SpecSteerLLM(specialist=specialist, generalist=generalist, max_new_tokens=4)
    prompts = Prompts(private=[5, 6, 7], public_specialist=[5, 6, 7], public_generalist=[5, 6, 7])
    with transformers_log() as records, warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        counts = hf_assisted.generate(llm, prompts, 2, PeakMemory(0))
    assert 1 <= counts["new_tokens"] <= 4 and counts["generalist_calls"] >= 1
    assert [r.getMessage() for r in records if "generation_config" in r.getMessage()] == []


def test_the_adaptive_table_sets_every_fixed_k_beside_auto_and_the_context_gate(adaptive_bench):
    record, report = adaptive_bench[:2]
    rows = [(r["method"], r["gamma"], r["k"], r["label"]) for r in record["adaptive"]]
    expected = []
    for g in (0.5, 0.1):
        expected += [
            ("specsteer", g, 1, f"specsteer (γ={g:g}, K=1)"),
            ("specsteer", g, 2, f"specsteer (γ={g:g}, K=2)"),
            ("specsteer", g, 2, f"specsteer (γ={g:g}, K=2, gate=context)"),
            ("specsteer", g, "auto", f"specsteer (γ={g:g}, K=auto)"),
            ("specsteer", g, "auto", f"specsteer (γ={g:g}, K=auto, gate=context)"),
        ]
    expected.append(("speculative", None, "auto", "speculative (K=auto)"))
    assert rows == expected
    for row in record["adaptive"]:
        assert row["new_tokens"] > 0 and row["bound_speedup"] > 0
        assert 1 <= row["tokens_per_round"] <= 7
    verdicts = record["adaptive_verdicts"]
    assert [v["setting"] for v in verdicts] == [
        label for _, g, k, label in expected if g is not None and (k == "auto" or "gate" in label)
    ]
    for v in verdicts:
        fixed = [r for r in record["adaptive"] if r["label"] == v["best_fixed"]]
        assert fixed and fixed[0]["k"] in (1, 2) and "gate" not in v["best_fixed"]
        at = [r for r in record["adaptive"] if r["gamma"] == v["gamma"] and r["k"] in (1, 2)]
        best = max(r["tokens_per_second"] for r in at if "gate" not in r["label"])
        assert fixed[0]["tokens_per_second"] == best
    assert (
        "## Adaptive rounds" in report and "## transformers assisted generation, adaptive" in report
    )


def test_transformers_adaptive_settings_run_and_equal_the_generalist(adaptive_bench):
    record = adaptive_bench[0]
    labels = [r["label"] for r in record["hf_adaptive"]]
    assert labels == [
        "hf_assisted (K=4, heuristic)",
        "hf_assisted (K=4, heuristic, conf=0.4)",
        "hf_assisted (K=4, conf=0.4)",
    ]
    assert [(r["schedule"], r["confidence"]) for r in record["hf_adaptive"]] == [
        ("heuristic", None),
        ("heuristic", 0.4),
        ("constant", 0.4),
    ]
    checks = {(c["a"], c["b"]): c for c in record["equivalence"]}
    for label in [*labels, "speculative (K=auto)"]:
        check = checks[label, "generalist"]
        assert check["equal"] == check["total"] == 2
    for row in record["hf_adaptive"]:
        # the tiny pair's drafts are always rejected: the heuristic shrinks K below its first
        # 4, and the assistant is never 40 % sure, so the threshold stops each draft at one
        assert row["drafted"] < 4 * row["generalist_calls"]
    threshold = record["hf_adaptive"][2]  # at most one draft a round (none at the budget)
    assert 0 < threshold["drafted"] <= threshold["generalist_calls"]


def test_assistant_config_sets_transformers_knobs_and_restores_them(generalist):
    config = generalist.model.generation_config
    before = {
        name: getattr(config, name, None)
        for name in (
            "num_assistant_tokens",
            "num_assistant_tokens_schedule",
            "assistant_confidence_threshold",
        )
    }
    with hf_assisted.assistant_config(generalist.model, 7, "heuristic", 0.3):
        assert config.num_assistant_tokens == 7
        assert config.num_assistant_tokens_schedule == "heuristic"
        assert config.assistant_confidence_threshold == 0.3
    assert {name: getattr(config, name, None) for name in before} == before
