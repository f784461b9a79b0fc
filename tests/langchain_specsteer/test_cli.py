"""`specsteer demo`: runs offline, marks provenance consistently with the LLM, fails clearly."""

from __future__ import annotations

import pytest

from langchain_specsteer.cli import main
from langchain_specsteer.demo import TINY_LABEL, TRAINED_LABEL, trace
from tests.conftest import CONTEXT, PROMPTS


def test_demo_runs_the_trained_pair_with_a_held_out_users_memory(capsys, micro_pair_dir):
    import json

    pair = micro_pair_dir / "export"
    [first, *_] = [json.loads(line) for line in (pair / "users.jsonl").read_text().splitlines()]
    status = main(["demo", "--pair", str(pair), "--no-color", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert status == 0
    assert TRAINED_LABEL in out and first["user"] in out
    assert first["input"] in out  # the user's held-out request
    assert first["profile"][0]["reviewText"][:40] in out or "- " in out  # retrieved memory
    assert "the user's real review (held out)" in out
    assert (pair / "generalist" / "model.safetensors").stat().st_size > 0


def test_a_missing_pair_folder_is_an_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--pair", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "holds no demo pair" in capsys.readouterr().err


def test_demo_runs_offline_and_labels_the_random_pair(capsys, tmp_path, monkeypatch):
    import langchain_specsteer.demo as demo

    monkeypatch.setattr(demo, "DEMO_PAIR", tmp_path / "not-shipped")
    page = tmp_path / "demo.html"
    context = "I wrote <script>alert(1)</script> & more"
    status = main(
        ["demo", "--no-color", "--max-new-tokens", "12", "--context", context, "--html", str(page)]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert TINY_LABEL in out
    for method in ("generalist", "specialist", "specsteer"):
        assert f"── {method}:" in out
    assert "\x1b[" not in out  # --no-color
    html = page.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "<script>" not in html


@pytest.mark.parametrize("gamma", [0.5, 0.0])
def test_trace_spans_match_the_llm_output_and_rounds(make_llm, gamma):
    llm = make_llm(max_new_tokens=30, gamma=gamma)
    traced = trace(llm, PROMPTS[0], CONTEXT, llm.decoding_params())
    assert traced.text == llm.invoke(PROMPTS[0], private_context=CONTEXT)
    kinds = {span.kind for span in traced.spans}
    assert kinds <= {"accepted", "recovered"}
    recovered = [span for span in traced.spans if span.kind == "recovered"]
    assert len(recovered) <= traced.stats["rounds"]  # one recovered token a round
    if gamma == 0.0:
        assert "accepted" in kinds


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--gamma", "-1"], "gamma"),
        (["demo", "--draft-tokens", "0"], "draft_tokens"),
        (["demo", "--max-new-tokens", "zero"], "invalid int value"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_the_readme_demo_runs_the_shipped_pair(capsys):
    from langchain_specsteer.demo import DEMO_PAIR

    assert (DEMO_PAIR / "generalist" / "model.safetensors").stat().st_size < 40 * 2**20
    assert main(["demo", "--no-color", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert TRAINED_LABEL in out
    for method in ("generalist", "specialist", "specsteer"):
        assert f"── {method}:" in out
    assert "«" in out and "⟦" in out  # accepted drafts and recoveries are marked
