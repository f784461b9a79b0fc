"""The experiment runner: every method (and γ/α sweep) on LongLaMP examples, resumable.

A run folder holds `config.json` and `results.jsonl`. Each finished (example, method, γ, α)
is appended to `results.jsonl` and flushed to disk at once, so an interrupted run loses at
most the generation in flight, and running the same command again continues where it
stopped. Methods are interleaved per example, so machine noise hits them alike.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from eval.cli import PACKAGE
from eval.data import SETTINGS, SPLITS, TASKS, Example, load_longlamp
from eval.metrics import rouge
from eval.prompts import RETRIEVERS, retrieve_profile
from langchain_specsteer.params import MethodName, check_draft_tokens

__all__ = ["RunConfig", "Setting", "grid", "run"]

# Fields that define what a run measures: a folder cannot be resumed under other values.
IDENTITY = (
    "task",
    "setting",
    "split",
    "data",
    "specialist",
    "generalist",
    "retriever",
    "k",
    "dense_model",
    "max_new_tokens",
    "draft_tokens",
    "max_draft_tokens",
    "draft_stop",
    "gate",
    "stem",
)
Setting = tuple[str, float | None, float | None]  # (method, γ, α); None where unused


class RunConfig(BaseModel):
    """One experiment: data, models, methods and the γ/α grid."""

    model_config = ConfigDict(extra="forbid")

    task: Literal[TASKS]
    setting: Literal[SETTINGS] = "user"
    split: Literal[SPLITS] = "val"
    data: str | None = None
    """A local file/folder, or a hub id (default: LongLaMP/LongLaMP)."""
    specialist: str
    generalist: str
    methods: list[MethodName] = Field(default=["generalist", "specialist", "specsteer"])
    gammas: list[float] = Field(default=[PACKAGE.gamma], min_length=1)
    alphas: list[float] = Field(default=[PACKAGE.alpha], min_length=1)
    retriever: Literal[RETRIEVERS] = "bm25"
    k: int = Field(default=5, ge=1)
    dense_model: str | None = None
    limit: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    draft_tokens: int | Literal["auto"] = PACKAGE.draft_tokens
    """K, or "auto": the device chooses each round's length (DecodingParams.draft_tokens)."""
    max_draft_tokens: int = Field(default=PACKAGE.max_draft_tokens, ge=1)
    draft_stop: float | None = Field(default=PACKAGE.draft_stop, ge=0, le=1)
    gate: Literal["fixed", "context"] = PACKAGE.gate
    device: str | None = None
    dtype: str | None = None
    stem: bool = False
    name: str | None = None

    @field_validator("draft_tokens", mode="before")
    @classmethod
    def _draft_tokens(cls, value: object) -> object:
        return check_draft_tokens(value)

    @field_validator("gammas", "alphas")
    @classmethod
    def _non_negative(cls, values: list[float]) -> list[float]:
        if any(not v >= 0 for v in values):
            msg = f"every value must be a number ≥ 0, got {values}"
            raise ValueError(msg)
        return values


def grid(methods: list[str], gammas: list[float], alphas: list[float]) -> list[Setting]:
    """Every (method, γ, α) to run: γ varies SpecSteer only, α SpecSteer and LightCoSteer."""
    settings: list[Setting] = []
    for method in dict.fromkeys(methods):
        if method == "specsteer":
            settings += [(method, g, a) for g in gammas for a in alphas]
        elif method == "light_costeer":
            settings += [(method, None, a) for a in alphas]
        else:
            settings.append((method, None, None))
    return settings


def _key(example_id: str, method: str, gamma: Any, alpha: Any) -> tuple:
    return (example_id, method, _number(gamma), _number(alpha))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)  # float("inf") reads the JSON "inf"


def _json_number(value: float | None) -> float | str | None:
    return "inf" if value is not None and math.isinf(value) else value


def prepare(out: Path, config: RunConfig) -> set[tuple]:
    """Create or reopen the run folder; the keys of the results it already has.

    A folder with results of a run that measured something else is refused; one without
    results (a run that failed to start) simply takes the new config.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(out / "results.jsonl")
    config_path = out / "config.json"
    if done and config_path.exists():
        previous = json.loads(config_path.read_text(encoding="utf-8"))
        defaults = RunConfig.model_fields  # a run from before a field existed had its default
        changed = [
            f for f in IDENTITY if previous.get(f, defaults[f].default) != getattr(config, f)
        ]
        if changed:
            msg = (
                f"{out} holds results of a run with other {', '.join(changed)}; resume it with "
                "the same values or choose a new --out"
            )
            raise ValueError(msg)
    config_path.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return done


def _finished(results: Path) -> set[tuple]:
    """Keys of the finished results; a line cut short by an interruption is dropped."""
    if not results.exists():
        return set()
    data = results.read_bytes()
    if data and not data.endswith(b"\n"):  # killed mid-write: drop the unfinished line
        with results.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    done = set()
    for line in results.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            done.add(_key(r["example_id"], r["method"], r["gamma"], r["alpha"]))
    return done


def _load_llm(config: RunConfig) -> Any:
    from eval.pair import load_llm

    return load_llm(
        config.specialist,
        config.generalist,
        config.task,
        device=config.device,
        dtype=config.dtype,
        max_new_tokens=config.max_new_tokens,
        draft_tokens=config.draft_tokens,
        max_draft_tokens=config.max_draft_tokens,
        draft_stop=config.draft_stop,
        gate=config.gate,
    )


def _record(
    example: Example, setting: Setting, text: str, info: dict, retrieved: int, stem: bool
) -> dict:
    method, gamma, alpha = setting
    return {
        "example_id": example.id,
        "user": example.user,
        "method": method,
        "gamma": _json_number(gamma),
        "alpha": alpha,
        "prediction": text,
        "reference": example.output,
        **rouge(text, example.output, stem=stem),
        **{
            key: info[key]
            for key in (
                "new_tokens",
                "seconds",
                "drafted",
                "accepted",
                "generalist_calls",
                "rounds",
                "finish_reason",
            )
        },
        "retrieved": retrieved,
    }


def _todo(examples: list[Example], settings: list[Setting], done: set) -> Iterator:
    for example in examples:
        pending = [s for s in settings if _key(example.id, *s) not in done]
        if pending:
            yield example, pending


def resume_note(out: Path, examples: int, settings: int, pending: int) -> str:
    """What a resumed run finds in its folder: nothing left to do, or how much is left."""
    planned = examples * settings
    done = f"{planned - pending}/{planned} generations ({examples} examples × {settings} settings)"
    if pending == 0:
        return f"nothing to do: {done} already in {out}"
    return f"resuming {out}: {done} done, {pending} to go"


def run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    llm: Any = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) an experiment into the folder `out`; returns the results file.

    Args:
        config: what to run.
        out: the run folder.
        progress: show a progress bar with ETA, acceptance and tokens/s so far.
        llm: a ready `SpecSteerLLM` (default: load `config.specialist` / `config.generalist`).
        log: told what a resumed run finds (e.g. `print`): how much is done, or nothing to do.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    examples = load_longlamp(
        config.task, config.setting, config.split, config.data, limit=config.limit
    )
    done = prepare(out, config)  # after the data loaded: a bad --data leaves no folder behind
    settings = grid(config.methods, config.gammas, config.alphas)
    work = list(_todo(examples, settings, done))
    total = sum(len(pending) for _, pending in work)
    results = out / "results.jsonl"
    if log is not None and total < len(examples) * len(settings):
        log(resume_note(out, len(examples), len(settings), total))
    if total == 0:
        return results
    llm = llm or _load_llm(config)
    totals = dict.fromkeys(("new_tokens", "seconds", "drafted", "accepted"), 0.0)
    bar = tqdm(total=total, disable=not progress, unit="gen", desc=out.name)
    with results.open("a", encoding="utf-8") as sink, bar:
        for example, pending in work:
            documents = retrieve_profile(
                example, config.task, config.retriever, config.k, dense_model=config.dense_model
            )
            for setting in pending:
                method, gamma, alpha = setting
                overrides = {"method": method}
                if gamma is not None:
                    overrides["gamma"] = gamma
                if alpha is not None:
                    overrides["alpha"] = alpha
                generation = llm.generate(
                    [example.input], private_context=documents, **overrides
                ).generations[0][0]
                record = _record(
                    example,
                    setting,
                    generation.text,
                    generation.generation_info,
                    len(documents),
                    config.stem,
                )
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                for key in totals:
                    totals[key] += record[key]
                bar.set_postfix(
                    accept=f"{totals['accepted'] / totals['drafted']:.0%}"
                    if totals["drafted"]
                    else "—",
                    tok_s=f"{totals['new_tokens'] / max(totals['seconds'], 1e-9):.1f}",
                )
                bar.update()
    return results
