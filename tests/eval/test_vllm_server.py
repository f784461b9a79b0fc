"""eval.vllm_server without a vLLM: what is missing, the command line, and startup failures
(a server that exits, one that never answers) reported with its log."""

from __future__ import annotations

import itertools
import re
import subprocess

import pytest

from eval import vllm_server
from eval.vllm_server import INSTALL, SCRIPT, VLLM_VERSION, VLLMServer, VLLMStartError, missing


def test_missing_names_the_install_command_until_the_venv_is_marked(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSTEER_VLLM_VENV", str(tmp_path))
    reason = missing()
    assert reason is not None
    assert INSTALL in reason and str(tmp_path) in reason
    (tmp_path / f".specsteer-vllm-{VLLM_VERSION}").touch()
    assert missing() is None


def test_the_command_runs_the_script_with_a_served_name():
    server = VLLMServer("/models/gen", port=8123, extra_args=["--max-model-len", "512"])
    assert server.url == "http://127.0.0.1:8123"
    assert server.command() == [
        "bash", str(SCRIPT), "/models/gen", "8123",
        "--served-model-name", "gen", "--max-model-len", "512",
    ]  # fmt: skip
    assert VLLMServer("/models/gen", served_name="g").command()[4:6] == ["--served-model-name", "g"]


def test_a_non_positive_startup_timeout_is_refused():
    with pytest.raises(ValueError, match="startup_timeout must be positive"):
        VLLMServer("/models/gen", startup_timeout=0)


def test_start_without_the_venv_raises_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSTEER_VLLM_VENV", str(tmp_path))
    with pytest.raises(VLLMStartError, match=re.escape(INSTALL)):
        VLLMServer("/models/gen").start()


def fake(server: VLLMServer, script: str, tmp_path) -> VLLMServer:
    """`server` with `script` running in place of vLLM, its output in a log."""
    server.log_path = tmp_path / "vllm.log"
    server._log = open(server.log_path, "a", encoding="utf-8")  # noqa: SIM115 (stop closes it)
    server.process = subprocess.Popen(
        ["bash", "-c", script], stdout=server._log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return server


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    server = VLLMServer("/models/gen", port=vllm_server.free_port())
    fake(server, "echo boom; exit 3", tmp_path)
    server.process.wait()
    with pytest.raises(VLLMStartError, match=r"exited with status 3[\s\S]*boom"):
        server._wait_healthy()
    server.stop()
    assert server.process is None


def test_a_server_that_never_answers_times_out_on_the_injected_clock(tmp_path):
    ticks = itertools.count(0.0, 100.0)  # each reading 100 s after the last
    server = VLLMServer(
        "/models/gen", port=vllm_server.free_port(), startup_timeout=50, clock=lambda: next(ticks)
    )
    fake(server, "echo loading; sleep 60", tmp_path)
    try:
        with pytest.raises(VLLMStartError, match=r"did not answer /health within 50 s"):
            server._wait_healthy()
    finally:
        server.stop(grace=5)
    assert not server.running()
