"""The experiment runner end to end on the tiny pair: every method, sweeps, resume, CLI."""

from __future__ import annotations

import json

import pytest

from eval.__main__ import main
from eval.report import summarize
from eval.runner import RunConfig, grid, run
from langchain_specsteer import METHODS

PRODUCTS = ["blender", "kettle", "tent", "lamp"]


def review_rows(n: int = 3) -> list[dict]:
    """LongLaMP product_review rows: a request, a reference, and the user's past reviews."""
    return [
        {
            "input": f"Write a review of the {PRODUCTS[i % 4]} (rating {i % 5 + 1}).",
            "output": f"The {PRODUCTS[i % 4]} is fine, honestly. Crunchy words everywhere.",
            "reviewerId": f"user-{i}",
            "profile": [
                {
                    "description": f"{p} model {j}",
                    "overall": j + 1,
                    "reviewText": f"My {p} is loud but crunchy, honestly.",
                    "summary": f"{p} thoughts",
                }
                for j, p in enumerate(PRODUCTS[:3])
            ],
        }
        for i in range(n)
    ]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in review_rows()), encoding="utf-8")
    return str(path)


@pytest.fixture
def config(tiny_dir, data_file):
    return RunConfig(
        task="product_review",
        data=data_file,
        specialist=str(tiny_dir / "specialist"),
        generalist=str(tiny_dir / "generalist"),
        methods=list(METHODS),
        gammas=[0.5, 0.1],
        alphas=[1.0],
        k=2,
        max_new_tokens=6,
        device="cpu",
    )


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_grid_varies_gamma_for_specsteer_and_alpha_for_the_steering_methods():
    assert grid(["generalist", "specsteer", "light_costeer"], [1.0, 0.1], [1.0, 2.0]) == [
        ("generalist", None, None),
        ("specsteer", 1.0, 1.0),
        ("specsteer", 1.0, 2.0),
        ("specsteer", 0.1, 1.0),
        ("specsteer", 0.1, 2.0),
        ("light_costeer", None, 1.0),
        ("light_costeer", None, 2.0),
    ]


def test_every_method_produces_a_row(config, tmp_path):
    results = run(config, tmp_path / "run", progress=False)
    records = lines(results)
    assert len(records) == 3 * 7  # 3 examples × (5 methods + specsteer at two γ)
    assert all(r["retrieved"] == 2 for r in records)
    rows = summarize([tmp_path / "run"])
    assert {(r.method, r.gamma) for r in rows} == {
        ("generalist", None),
        ("specialist", None),
        ("speculative", None),
        ("light_costeer", None),
        ("costeer", None),
        ("specsteer", 0.5),
        ("specsteer", 0.1),
    }
    by_method = {r["method"]: r for r in records if r["example_id"] == records[0]["example_id"]}
    assert by_method["speculative"]["prediction"] == by_method["generalist"]["prediction"]


def test_an_interrupted_run_resumes_without_loss_or_duplicates(config, tmp_path, monkeypatch):
    from langchain_specsteer import SpecSteerLLM

    reference = lines(run(config, tmp_path / "whole", progress=False))

    calls = {"n": 0}
    generate = SpecSteerLLM.generate

    def dies_after_eight(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(SpecSteerLLM, "generate", dies_after_eight)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "resumed", progress=False)
    partial = tmp_path / "resumed" / "results.jsonl"
    assert len(lines(partial)) == 8
    with partial.open("a", encoding="utf-8") as f:
        f.write('{"example_id": "val-000002", "meth')  # and it died mid-write
    monkeypatch.setattr(SpecSteerLLM, "generate", generate)
    resumed = lines(run(config, tmp_path / "resumed", progress=False))

    def key(r):
        return (r["example_id"], r["method"], r["gamma"], r["alpha"])

    assert len(resumed) == len(reference) == len({key(r) for r in resumed})
    deterministic = ("prediction", "rouge1", "rougeL", "drafted", "accepted", "new_tokens")
    expected = {key(r): [r[f] for f in deterministic] for r in reference}
    assert {key(r): [r[f] for f in deterministic] for r in resumed} == expected
    quality = [
        (r.method, r.gamma, r.rouge1, r.rougeL, r.acceptance)
        for r in summarize([tmp_path / "whole"])
    ]
    assert [
        (r.method, r.gamma, r.rouge1, r.rougeL, r.acceptance)
        for r in summarize([tmp_path / "resumed"])
    ] == quality
    assert run(config, tmp_path / "resumed", progress=False)  # nothing left: no model loaded


def test_a_resumed_run_says_what_it_found(config, tmp_path):
    folder, said = tmp_path / "run", []
    one = config.model_copy(update={"methods": ["generalist"], "limit": 2})
    run(one, folder, progress=False, log=said.append)
    assert said == []  # a fresh run has nothing to report before its progress bar
    two = one.model_copy(update={"methods": ["generalist", "specialist"]})
    run(two, folder, progress=False, log=said.append)
    assert said == [f"resuming {folder}: 2/4 generations (2 examples × 2 settings) done, 2 to go"]
    said.clear()
    run(two, folder, progress=False, log=said.append)
    assert said == [f"nothing to do: 4/4 generations (2 examples × 2 settings) already in {folder}"]


def test_a_folder_of_another_run_is_refused(config, tmp_path):
    run(config.model_copy(update={"methods": ["generalist"]}), tmp_path / "run", progress=False)
    other = config.model_copy(update={"k": 3})
    with pytest.raises(ValueError, match="results of a run with other k"):
        run(other, tmp_path / "run", progress=False)
    bad = config.model_copy(update={"specialist": str(tmp_path / "no-such-model")})
    with pytest.raises(OSError, match="no-such-model"):
        run(bad, tmp_path / "failed", progress=False)
    run(config.model_copy(update={"methods": ["generalist"]}), tmp_path / "failed", progress=False)


def test_cli_run_report_and_show_prompt(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "cli-run"
    argv = ["run", "--task", "product_review", "--data", data_file, "--limit", "2", "--k", "1"]
    assert main([*argv, "--show-prompt"]) == 0
    shown = capsys.readouterr().out
    assert "Here are past reviews written by this user:\n- " in shown
    assert "Following their style, Write a review of the blender" in shown
    models = [
        "--specialist",
        str(tiny_dir / "specialist"),
        "--generalist",
        str(tiny_dir / "generalist"),
    ]
    command = [
        *argv,
        *models,
        "--methods",
        "generalist,specsteer",
        "--gamma",
        "1.0,0.1",
        "--max-new-tokens",
        "5",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(command) == 0
    assert len(lines(out / "results.jsonl")) == 2 * 3
    assert "nothing to do" not in capsys.readouterr().out
    assert main(command) == 0  # again: everything is there already
    said = capsys.readouterr().out
    assert f"nothing to do: 6/6 generations (2 examples × 3 settings) already in {out}" in said
    assert (
        main(
            [
                "report",
                str(out),
                "--csv",
                str(tmp_path / "t.csv"),
                "--plot",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    table, err = capsys.readouterr()
    assert "| generalist |" in table and "| specsteer |" in table
    assert err.splitlines() == [f"wrote {tmp_path / 't.csv'}", f"wrote {tmp_path / 'p.png'}"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, *models, "--gamma", "-1", "--out", str(out)]) == 2
    assert "gammas" in capsys.readouterr().err
    fresh = str(tmp_path / "fresh")
    assert main([*argv, *models, "--data", "missing/val.jsonl", "--out", fresh]) == 2
    assert "missing/val.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()  # nothing written for a run that could not start
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_adaptive_rounds_run_and_define_the_run(config, data_file, tiny_dir, tmp_path, capsys):
    """--draft-tokens auto (and its knobs, and the gate) reach the LLM and a run's identity;
    a folder written before those fields existed resumes as the defaults it ran with."""
    folder = tmp_path / "auto"
    argv = ["run", "--task", "product_review", "--data", data_file, "--limit", "1", "--k", "1"]
    argv += [
        "--specialist",
        str(tiny_dir / "specialist"),
        "--generalist",
        str(tiny_dir / "generalist"),
    ]
    argv += ["--methods", "specsteer", "--max-new-tokens", "5", "--device", "cpu", "--no-progress"]
    auto = [*argv, "--draft-tokens", "auto", "--max-draft-tokens", "3", "--gate", "context"]
    assert main([*auto, "--out", str(folder)]) == 0
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["draft_tokens"], saved["max_draft_tokens"], saved["gate"]) == (
        "auto",
        3,
        "context",
    )
    [result] = lines(folder / "results.jsonl")
    assert result["method"] == "specsteer"
    capsys.readouterr()
    assert main([*argv, "--draft-tokens", "auto", "--out", str(folder)]) == 2
    assert "other max_draft_tokens, gate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # the option's own type refuses it
        main([*argv, "--draft-tokens", "many", "--out", str(tmp_path / "bad")])
    assert refused.value.code == 2
    assert "draft_tokens must be an integer greater than or equal to 1" in capsys.readouterr().err

    old = tmp_path / "old"  # a run from before max_draft_tokens, draft_stop and gate
    assert main([*argv, "--out", str(old)]) == 0
    saved = json.loads((old / "config.json").read_text())
    for field in ("max_draft_tokens", "draft_stop", "gate"):
        del saved[field]
    (old / "config.json").write_text(json.dumps(saved))
    assert main([*argv, "--out", str(old)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(ValueError, match="draft_tokens must be"):
        RunConfig(**{**saved, "draft_tokens": 0})
