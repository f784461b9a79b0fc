"""`specsteer demo`: runs offline, marks provenance consistently with the LLM, fails clearly."""

from __future__ import annotations

import pytest

from langchain_specsteer.cli import main
from langchain_specsteer.demo import (
    TINY_LABEL,
    TRAINED_LABEL,
    demo_pair,
    quiet_loading,
    run_demo,
    trace,
)
from tests.conftest import CONTEXT, PROMPTS


def test_demo_runs_the_trained_pair_with_a_held_out_users_memory(capfd, micro_pair_dir):
    import json

    pair = micro_pair_dir / "export"
    [first, *_] = [json.loads(line) for line in (pair / "users.jsonl").read_text().splitlines()]
    status = main(["demo", "--pair", str(pair), "--no-color", "--max-new-tokens", "6"])
    out, err = capfd.readouterr()
    assert status == 0
    assert "Loading weights" not in out + err  # no loading bars unless --verbose
    assert "deprecated" not in out + err
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
    from langchain_specsteer.methods import METHOD_SPECS

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
        assert f"── {method}: {METHOD_SPECS[method].description}" in out
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
        (["demo", "--draft-tokens", "some"], "or 'auto'"),
        (["demo", "--gate", "loose"], "invalid choice: 'loose'"),
        (["demo", "--max-draft-tokens", "0"], "max_draft_tokens"),
        (["demo", "--max-new-tokens", "zero"], "invalid int value"),
        (["demo", "--user", "5"], "--user=5 is out of range of the demo pair's held-out users"),
        (["demo", "--user", "-1"], "pick one from 0 to 4"),
        (["serve", "--generalist", "g", "--max-top-m", "0"], "max_top_m must be positive"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(capsys, argv, message):
    """With the subcommand's usage, not the top level's: that is where the option is."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    command = argv[0]
    assert err.startswith(f"usage: specsteer {command} [-h]")
    assert err.splitlines()[-1].startswith(f"specsteer {command}: error: ")


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


def test_a_user_outside_an_exported_pair_is_refused_before_loading(capsys, micro_pair_dir):
    pair = micro_pair_dir / "export"  # one held-out user
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--pair", str(pair), "--user", "1"])
    assert exit_.value.code == 2
    assert "--user=1 is out of range" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pick one from 0 to 0"):
        run_demo(pair_dir=pair, user=7)


def test_the_demo_runs_adaptive_rounds_and_says_so(capsys, micro_pair_dir):
    argv = ["demo", "--pair", str(micro_pair_dir / "export"), "--no-color"]
    argv += ["--max-new-tokens", "6", "--draft-tokens", "auto", "--max-draft-tokens", "3"]
    assert main([*argv, "--gate", "context"]) == 0
    out = capsys.readouterr().out
    assert "draft_tokens=auto (at most 3, stop below 0.1) gate=context" in out
    assert "── specsteer:" in out


def test_verbose_demo_shows_the_loading_bars(capfd, micro_pair_dir):
    argv = ["demo", "--pair", str(micro_pair_dir / "export"), "--no-color"]
    assert main([*argv, "--max-new-tokens", "2", "--verbose"]) == 0
    assert "Loading weights" in capfd.readouterr().err


def test_quiet_loading_hides_the_bars_and_restores_them(capfd, tiny_dir):
    from transformers.utils import logging as hf_logging

    from langchain_specsteer import LocalSpecialist

    with quiet_loading():
        LocalSpecialist.from_pretrained(str(tiny_dir / "specialist"), device="cpu")
    assert "Loading weights" not in "".join(capfd.readouterr())
    assert hf_logging.is_progress_bar_enabled()
    with quiet_loading(False):
        LocalSpecialist.from_pretrained(str(tiny_dir / "specialist"), device="cpu")
    assert "Loading weights" in capfd.readouterr().err


def test_the_demo_pair_loads_from_python():
    from pathlib import Path

    import langchain_specsteer
    from langchain_specsteer import SpecSteerLLM, demo_pair

    assert "demo_pair" in langchain_specsteer.__all__
    specialist, generalist = demo_pair()
    assert Path(specialist, "config.json").is_file() and Path(generalist, "config.json").is_file()
    llm = SpecSteerLLM.from_pretrained(*demo_pair(), device="cpu", max_new_tokens=4)
    assert llm.invoke("Write a short review of a kettle.", private_context="I love tea.")


def test_a_missing_demo_pair_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no demo pair.*eval\.train_pair --export"):
        demo_pair(tmp_path)


def test_demo_help_describes_each_option_once(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "random weights" not in text
    assert "--user USER which held-out user of the pair, from 0 (default: the typical one" in text
    assert "--verbose" in text


def test_the_html_report_wraps_at_word_boundaries_and_its_note_is_neutral():
    import re

    from langchain_specsteer.demo import MethodRun, Span, render_html
    from langchain_specsteer.params import DecodingParams

    stats = dict(new_tokens=3, tokens_per_second=9.0, acceptance_rate=0.5, generalist_calls=2)
    run = MethodRun("specsteer", [Span("accepted", "Solid "), Span("recovered", "kettle")])
    run.stats = {**stats, "drafted": 2, "accepted": 1, "rounds": 2}
    page = render_html([run], prompt="p", private_context="c", params=DecodingParams(), pair="pair")
    assert "break-all" not in page  # that splits words mid-word
    assert "overflow-wrap:anywhere" in page  # only unbreakable runs are split
    [note] = re.findall(r"\.note\{([^}]*)\}", page)
    [color] = re.findall(r"(?:^|;)color:#([0-9a-f]{3}|[0-9a-f]{6})\b", note)
    digits = color if len(color) == 6 else "".join(c * 2 for c in color)
    red, green, blue = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    assert max(red, green, blue) - min(red, green, blue) < 40  # grey text, not an alarm red


def test_serve_builds_the_service_its_flags_describe(tiny_dir, monkeypatch):
    """`specsteer serve` (uvicorn not started): the served name (default: the folder's, not
    its path), the docs behind the key unless --public-docs, lengths lowered to the model's
    4096 positions, and the HTTP protocol bounding chunks."""
    import uvicorn
    from starlette.testclient import TestClient

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append((app, options)))
    serve = ["serve", "--generalist", str(tiny_dir / "generalist"), "--device", "cpu"]
    assert main([*serve, "--api-key", "sesame"]) == 0
    assert (
        main([*serve, "--api-key", "sesame", "--served-model-name", "gen-x", "--public-docs"]) == 0
    )
    assert main([*serve, "--max-prompt-tokens", "100", "--max-body-chunks", "7"]) == 0
    (closed, options), (public, _), (lower, lower_options) = runs
    assert closed.state.service.model_name == "generalist"
    assert public.state.service.model_name == "gen-x"
    assert TestClient(closed).get("/openapi.json").status_code == 401
    assert TestClient(public).get("/openapi.json").status_code == 200
    assert TestClient(public).get("/v1/models").status_code == 401
    limits = closed.state.service.limits
    assert (limits.max_prompt_tokens, limits.max_session_tokens) == (4096, 4096)
    assert lower.state.service.limits.max_prompt_tokens == 100
    assert options["http"].max_chunks == 1024 and lower_options["http"].max_chunks == 7


@pytest.mark.parametrize(
    ("margins", "typical"),
    [([3.0, -1.0, 2.0], 2), ([1.0, 4.0, 2.0, 3.0], 2), ([0.0, 0.0, 0.0], 1), ([5.0], 0)],
)
def test_the_typical_user_is_the_median_margin(margins, typical):
    from langchain_specsteer.demo import typical_user

    assert typical_user(margins) == typical


def test_the_typical_user_needs_a_margin():
    from langchain_specsteer.demo import typical_user

    with pytest.raises(ValueError, match="at least one user"):
        typical_user([])


def test_the_demos_rouge_l_is_eval_metrics_rouge_l(world_dir):
    import itertools

    from eval.data import load_longlamp
    from eval.metrics import rouge
    from langchain_specsteer.demo import rouge_l

    rows = load_longlamp("product_review", "user", "val", world_dir, limit=6)
    pairs = [(a.output, b.output) for a, b in itertools.pairwise(rows)]
    pairs += [(rows[0].output, rows[0].output), ("", rows[0].output), ("Four stars!", "4 stars")]
    for prediction, reference in pairs:
        expected = 100 * rouge(prediction, reference)["rougeL"]
        assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-9)


def test_the_shipped_scores_are_the_shipped_users_at_the_demos_settings():
    """`python -m eval.demo_scores` must be run again when the pair, its users or the package's
    decoding defaults change: the demo's typical user and means come from this file."""
    from langchain_specsteer.demo import (
        DEMO_MAX_NEW_TOKENS,
        DEMO_PAIR,
        demo_scores,
        demo_users,
        typical_user,
    )
    from langchain_specsteer.params import DecodingParams

    scores = demo_scores(DEMO_PAIR)
    assert scores is not None, "run: python -m eval.demo_scores"
    assert [u["user"] for u in scores["users"]] == [u["user"] for u in demo_users(DEMO_PAIR)]
    assert scores["settings"] == DecodingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS).model_dump(
        mode="json"
    )
    margins = [u["rouge_l"]["specsteer"] - u["rouge_l"]["specialist"] for u in scores["users"]]
    assert scores["typical_user"] == typical_user(margins)
    for method, mean in scores["mean"]["rouge_l"].items():
        values = [u["rouge_l"][method] for u in scores["users"]]
        assert mean == pytest.approx(sum(values) / len(values), abs=0.01)


def test_the_demo_defaults_to_the_typical_user_and_closes_with_r_l(
    capsys, micro_pair_dir, tmp_path
):
    import json
    import shutil

    from eval.demo_scores import main as score

    pair = tmp_path / "pair"
    shutil.copytree(micro_pair_dir / "export", pair)
    path = score(["--pair", str(pair), "--threads", "1"])
    scores = json.loads(path.read_text())
    assert scores["command"] == f"python -m eval.demo_scores --pair {pair}"
    [user] = scores["users"]  # the micro pair ships one user
    assert set(user["rouge_l"]) == {"generalist", "specialist", "specsteer"}
    capsys.readouterr()
    assert main(["demo", "--pair", str(pair), "--no-color", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert f"({user['user']})" in out
    header = next(line for line in out.splitlines() if line.startswith("method "))
    assert header.endswith("R-L  R-L, 1 users  tokens/s, 1 users")
    assert f"(means over the pair's users: {scores['command']})" in out
