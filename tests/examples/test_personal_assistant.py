"""The personal-assistant example: memories are stored, and they steer the answer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    path = ROOT / "examples" / "personal_assistant.py"
    spec = importlib.util.spec_from_file_location("personal_assistant", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scripted_conversation(tmp_path, demo_pair, capfd):
    example = load_example()
    memory = tmp_path / "memory.db"
    results = example.main(["--script", "--memory", str(memory), "--max-tokens", "24"])
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err  # no progress bars unless --verbose
    assert "deprecated" not in out + err
    assert "Without the memories:" in out
    stored = [r for r in results if r["answer"] is None]
    assert [r["stored"] for r in stored] == [1, 2, 3, 4]
    steered, plain = results[-2], results[-1]
    assert steered["metadata"]["retrieved"] == 3 and plain["without_memory"]
    assert steered["answer"] and plain["answer"]
    assert steered["answer"] != plain["answer"]  # the memories changed the text
    assert memory.exists() and (memory.stat().st_mode & 0o777) == 0o600


def test_plain_notes_are_remembered_too(tmp_path, demo_pair, monkeypatch):
    import io

    example = load_example()
    turns = "remember: I always start with Full review:\nWrite a review of a red kettle.\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(turns))
    results = example.main(["--memory", str(tmp_path / "m.db"), "--max-tokens", "8"])
    assert results[0]["stored"] == 1
    assert results[1]["answer"] and results[1]["metadata"]["retrieved"] == 1


def test_verbose_shows_the_loading_bars_and_quiet_restores_them(demo_pair, capfd):
    from transformers.utils import logging as hf_logging

    example = load_example()
    example.load_models(verbose=False)
    assert "Loading weights" not in "".join(capfd.readouterr())
    assert hf_logging.is_progress_bar_enabled()  # switched back on after loading
    example.load_models(verbose=True)
    assert "Loading weights" in capfd.readouterr().err
