"""What every bench shares, so that a bench declares only its settings, its phases and its report.

    cases = load_cases("data/world", "test", 6, k=3)      # held-out users, retrieved once
    phases = Phases("bench_x", quiet=args.quiet)           # a progress bar per phase
    for setting in phases.each("warm-up", settings):       # one uncounted run of each
        run(cases[0], setting)
    for rep, case, setting in phases.each("settings", interleaved(cases, settings)):
        samples[setting].append(run(case, setting))
    write_outputs(Path(args.out), "bench_x", record, markdown_report(record), plot)

- cases: `Case`, `load_cases` (the first n examples of a held-out split, with the BM25 top-k
  profile entries as private context; `Case.rendered` tokenises them for engine-level benches);
- rotation: `rotated`, `interleaved` (every setting on every case, the settings' order rotating
  by one from case to case and repetition to repetition, so machine noise hits them alike);
- timing: `timed`, `median_seconds`, `PeakMemory`, `percentile`, `ratio`;
- concurrency: `burst` (calls one after another, from a thread pool, or as coroutines on one
  event loop, timed as a whole and one by one);
- progress: `Phases` (a tqdm bar per phase on stderr; off under --quiet and off a terminal);
- the record: `machine_info` (versions, processor, threads, load average), `write_outputs`
  (NAME.json, NAME.md, NAME.png), `figure` (an off-screen matplotlib figure), `checked_output`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from eval.data import Example, load_longlamp
from eval.prompts import retrieve_profile
from eval.summary import ratio

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from matplotlib.figure import Figure

    from langchain_specsteer import SpecSteerEngine, SpecSteerLLM
    from langchain_specsteer.engine import Prompts

__all__ = [
    "BURST_MODES",
    "TASK",
    "Burst",
    "Case",
    "PeakMemory",
    "Phases",
    "burst",
    "checked_output",
    "figure",
    "interleaved",
    "load_cases",
    "machine_info",
    "median_seconds",
    "percentile",
    "ratio",
    "rotated",
    "timed",
    "write_json",
    "write_outputs",
]

TASK = "product_review"
"""The task of every bench: the synthetic world's (and LongLaMP's) product reviews."""
BURST_MODES = ("sequential", "threads", "async")
MIB = 2**20
T = TypeVar("T")


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One held-out example with its private context, retrieved once for every setting."""

    example: Example
    documents: list[Document]  # the BM25 top-k profile entries
    prompts: Prompts | None = None  # token ids, where a bench drives the engine (`rendered`)

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def prompt(self) -> str:
        """The public request (the generalist's whole prompt)."""
        return self.example.input

    def rendered(self, llm: SpecSteerLLM) -> Case:
        """This case with its three prompts tokenised by `llm`."""
        return replace(self, prompts=llm.render_prompts(self.prompt, self.documents))


def load_cases(
    data: str | os.PathLike[str], split: str, limit: int, k: int, *, write_world: bool = False
) -> list[Case]:
    """The first `limit` examples of `split` with their BM25 top-k profile entries.

    With `write_world`, a missing folder is filled with the synthetic world first (what
    `python -m eval.world --out DATA` writes). A data error (no such folder, an unreachable
    hub, a malformed row) ends the command with its message rather than a traceback.
    """
    folder = Path(data)
    if write_world and not folder.exists():
        from eval.world import write_world as write

        print(f"[eval] writing the synthetic world into {folder}", file=sys.stderr)
        write(folder)
    try:
        examples = load_longlamp(TASK, split=split, source=str(data), limit=limit)
    except (OSError, ValueError) as error:  # FileNotFoundError, ConnectionError, schema errors
        raise SystemExit(f"error: {error}") from None
    return [Case(e, retrieve_profile(e, TASK, "bm25", k)) for e in examples]


# ---------------------------------------------------------------- rotation


def rotated(items: Sequence[T], shift: int) -> list[T]:
    """`items` rotated left by `shift` (modulo their number)."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def interleaved(
    cases: Sequence[Any], settings: Sequence[T], reps: int = 1
) -> Iterator[tuple[int, Any, T]]:
    """(rep, case, setting): every setting on every case, `reps` times, the settings' order
    rotating by one from case to case and from repetition to repetition."""
    for rep in range(reps):
        for index, case in enumerate(cases):
            for setting in rotated(settings, rep * len(cases) + index):
                yield rep, case, setting


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()`'s result and the seconds it took (`time.perf_counter`)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median seconds of `fn()` over `repeats` calls, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[1] for _ in range(repeats))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between order statistics; None for
    no values."""
    if not 0 <= q <= 100:
        msg = f"q must be within 0..100, got {q}"
        raise ValueError(msg)
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class PeakMemory:
    """Peak memory growth while the `with` block runs, in MiB (None where not measurable).

    CPU (`rss_mb`): a background thread reads the resident set size from /proc/self/statm
    every `interval` seconds (plus once on entry and on exit); the growth is the largest
    sample minus the entry value. It covers everything the process allocates (torch tensors,
    KV caches, Python objects) but is approximate: it misses spikes shorter than the
    interval, and memory the allocator kept from earlier generations is reused without
    showing as growth. The thread runs for every setting alike, so it slows all equally.
    CUDA (`cuda_mb`): `torch.cuda.max_memory_allocated` minus the allocation on entry.
    """

    def __init__(self, interval: float = 0.001, cuda: bool = False):
        import torch

        self.interval = interval
        self.cuda = cuda and torch.cuda.is_available()
        self.rss_mb: float | None = None
        self.cuda_mb: float | None = None
        self._fd: int | None = None
        self._start = self._peak = 0  # bytes resident on entry, and the most seen since
        self._cuda_start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_start = torch.cuda.memory_allocated()
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:  # not Linux: no RSS samples
            return self
        self._start = self._peak = self._rss()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_mb = (torch.cuda.max_memory_allocated() - self._cuda_start) / MIB
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self._rss())
        os.close(self._fd)
        self.rss_mb = (self._peak - self._start) / MIB


# ---------------------------------------------------------------- concurrency


@dataclass
class Burst:
    """Calls started together (`threads`, `async`) or one after another (`sequential`)."""

    mode: str
    wall_seconds: float  # from the first start to the last result
    seconds: list[float]  # each call's, from its start to its result
    results: list[Any]


def burst(
    items: Sequence[T],
    mode: str,
    call: Callable[[T], Any] | None = None,
    acall: Callable[[T], Awaitable[Any]] | None = None,
    close: Callable[[], Awaitable[object]] | None = None,
) -> Burst:
    """`call(item)` for every item one after another (`sequential`) or at once from a thread
    pool (`threads`), or `acall(item)` at once as coroutines on one event loop (`async`).

    `close` (async) runs on that loop after the clock stops, as the other modes' background
    closes do: clients that hold sessions release them before the loop ends.
    """
    if mode == "async":

        async def one(item: T) -> tuple[Any, float]:
            start = time.perf_counter()
            result = await acall(item)
            return result, time.perf_counter() - start

        async def together() -> tuple[list[tuple[Any, float]], float]:
            start = time.perf_counter()
            done = await asyncio.gather(*(one(item) for item in items))
            wall = time.perf_counter() - start
            if close is not None:
                await close()
            return done, wall

        done, wall = asyncio.run(together())
    elif mode in BURST_MODES:
        start = time.perf_counter()
        if mode == "sequential":
            done = [timed(lambda item=item: call(item)) for item in items]
        else:
            with ThreadPoolExecutor(len(items)) as pool:
                done = list(pool.map(lambda item: timed(lambda: call(item)), items))
        wall = time.perf_counter() - start
    else:
        msg = f"mode must be one of {', '.join(BURST_MODES)}, got {mode!r}"
        raise ValueError(msg)
    return Burst(mode, wall, [seconds for _, seconds in done], [result for result, _ in done])


def checked_output(result: Any, what: str) -> Any:
    """The one generation of a `generate` result; RuntimeError when it degraded (a bench
    measures the method, not its fallback)."""
    output = result.generations[0][0]
    info = output.generation_info or {}
    if info.get("degraded"):
        msg = f"{what} degraded: {info.get('degraded_reason')}"
        raise RuntimeError(msg)
    return output


# ---------------------------------------------------------------- progress


class Phases:
    """A bench's progress on stderr: a tqdm bar per phase, off under `quiet` and off where
    stderr is not a terminal (a log then gets one line as each phase ends, unless quiet)."""

    def __init__(self, name: str, *, quiet: bool = False, file: TextIO | None = None):
        self.name, self.quiet, self._file = name, quiet, file
        self.start = time.perf_counter()

    @property
    def file(self) -> TextIO:
        return self._file or sys.stderr  # looked up at use: pytest swaps sys.stderr

    def note(self, text: str) -> None:
        """One line of news (`[name] text`), unless quiet."""
        if not self.quiet:
            print(f"[{self.name}] {text}", file=self.file, flush=True)

    def each(self, phase: str, items: Iterable[T], total: int | None = None) -> Iterator[T]:
        """`items`, counted on a bar named `phase`."""
        from tqdm.auto import tqdm

        bar = tqdm(
            items,
            desc=phase,
            total=total,
            file=self.file,
            disable=True if self.quiet else None,  # None: off where the file is no terminal
            dynamic_ncols=True,
        )
        shown = not bar.disable  # (closing a bar disables it)
        yield from bar
        if not shown:
            self.note(f"{phase} done ({time.perf_counter() - self.start:.0f} s)")


# ---------------------------------------------------------------- the record


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine_info(engine: SpecSteerEngine | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, processor, threads and the load average (1, 5 and 15 minutes: what else ran
    on a shared machine); with `engine`, its device, batching and both models' sizes."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if engine is not None:
        device = engine.generalist.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu"]
        info["device"] = f"{device.type} ({name})"
        info["batch_specialist"] = engine.batch_specialist
        info["parameters"] = {
            role: sum(p.numel() for p in lm.model.parameters())
            for role, lm in (("specialist", engine.specialist), ("generalist", engine.generalist))
        }
    return info | extra


def write_json(path: Path, record: dict[str, Any]) -> None:
    """`record` as indented JSON (UTF-8; what JSON cannot hold is written as text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
    path.write_text(text + "\n", encoding="utf-8")


def write_outputs(
    out: Path,
    name: str,
    record: dict[str, Any],
    report: str,
    plot: Callable[[dict[str, Any], Path], None] | None = None,
) -> None:
    """NAME.json (the record), NAME.md (the report) and, with `plot`, NAME.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", record)
    (out / f"{name}.md").write_text(report + "\n", encoding="utf-8")
    if plot is not None:
        plot(record, out / f"{name}.png")


def figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn off-screen (Agg), without touching pyplot's global backend."""
    from langchain_specsteer.extras import optional_import

    optional_import("matplotlib", extra="eval", purpose="Plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawing = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(drawing)
    return drawing
