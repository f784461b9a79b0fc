"""LongLaMP loader: the hub (`LongLaMP/LongLaMP`) or local JSON / JSON lines / Parquet files.

    load_longlamp("product_review")                          # hub, config product_review_user, val
    load_longlamp("abstract_generation", "temporal", "test", "data/longlamp")    # a local folder
    load_longlamp("topic_writing", source="rows.jsonl", limit=50)                # a local file

Every row is validated (`input`, `output`, `profile` and the task's profile entry fields);
a bad row raises `LongLaMPSchemaError` naming the file (or hub config), the row and the field.
A hub that cannot be reached raises `HubUnreachableError` at once (one connection attempt
instead of `datasets`' retries), saying that a local folder works without it.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

TASKS = ("abstract_generation", "product_review", "topic_writing")
SETTINGS = ("user", "temporal")
SPLITS = ("train", "val", "test")
HUB_ID = "LongLaMP/LongLaMP"
HUB_TIMEOUT = 3.0
"""Seconds the hub's reachability check waits for a connection."""
OFFLINE_REMEDY = (
    "a local folder in the LongLaMP schema needs no hub: `python -m eval.world --out "
    "data/world` writes the synthetic world, then pass --data data/world (or a folder or file "
    "of LongLaMP rows copied from a machine with network access)"
)

PROFILE_FIELDS: dict[str, tuple[str, ...]] = {
    "product_review": ("description", "overall", "reviewText", "summary"),
    "abstract_generation": ("abstract", "id", "title", "year"),
    "topic_writing": ("author", "content", "id", "summary"),
}
PROFILE_TEXT_FIELD = {
    "product_review": "reviewText",
    "abstract_generation": "abstract",
    "topic_writing": "content",
}
USER_FIELD = {
    "product_review": "reviewerId",
    "abstract_generation": "name",
    "topic_writing": "author",
}

EXTENSIONS = (".jsonl", ".json", ".parquet")


class LongLaMPSchemaError(ValueError):
    """A LongLaMP file or row that does not match the schema (names file, row and field)."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set) and the dataset is
    not in the local cache; the message says what works instead."""


@dataclass(frozen=True)
class Example:
    """One LongLaMP example: the public prompt, the reference and the user's history."""

    id: str
    input: str
    output: str
    profile: list[dict]
    user: str | None


def load_longlamp(
    task: str,
    setting: str = "user",
    split: str = "val",
    source: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
) -> list[Example]:
    """Load and validate one LongLaMP split from the hub, a local file or a local folder.

    `source`: None or a hub id → `datasets.load_dataset(source, f"{task}_{setting}", split=split)`;
    a `.json` / `.jsonl` / `.parquet` file → its rows (`split` only names the ids); a folder →
    its `{task}_{setting}/{split}.*` or `{split}.*` file. `limit` keeps the first n rows, and
    rows past it are neither read (where the format allows) nor validated.
    """
    _check_choice("task", task, TASKS)
    _check_choice("setting", setting, SETTINGS)
    _check_choice("split", split, SPLITS)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        msg = f"limit must be a positive integer or None, got {limit!r}"
        raise ValueError(msg)
    where, rows = _open_rows(task, setting, split, source)
    return [
        _to_example(where, task, split, index, row) for index, row in islice(enumerate(rows), limit)
    ]


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise a ValueError listing the valid values when `value` is not one of them."""
    if value not in valid:
        msg = f"unknown {name} {value!r}; valid: {', '.join(valid)}"
        raise ValueError(msg)


def _open_rows(
    task: str, setting: str, split: str, source: str | os.PathLike | None
) -> tuple[str, Iterable[Any]]:
    """Where the rows come from (for messages) and an iterable over them."""
    local = _local_path(source)
    if local is None:
        hub_id = str(source) if source is not None else HUB_ID
        return _hub_rows(hub_id, f"{task}_{setting}", split)
    if local.is_dir():
        local = _split_file(local, task, setting, split)
    return str(local), _file_rows(local)


def _local_path(source: str | os.PathLike | None) -> Path | None:
    """The local path `source` names, or None when it names a hub dataset."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, os.PathLike) or _looks_like_path(str(source)):
        msg = f"LongLaMP source {str(source)!r} does not exist"
        raise FileNotFoundError(msg)
    return None


def _looks_like_path(text: str) -> bool:
    """True for strings that can only be meant as a local path (never a hub id)."""
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or text.lower().endswith(EXTENSIONS)
    )


def _hub_rows(hub_id: str, config: str, split: str) -> tuple[str, Iterable[Any]]:
    """The rows of one hub config and split, loaded with `datasets.load_dataset`.

    Online, one connection to the hub's endpoint comes first: where it fails, so would every
    retry of `datasets` (half a minute of them). Offline (HF_HUB_OFFLINE), the local cache
    serves; `datasets`' refusal without a cached copy becomes the same advice.
    """
    from huggingface_hub import constants

    from langchain_specsteer.extras import optional_import

    datasets = optional_import("datasets", extra="eval", purpose="Loading a hub dataset")
    where = f"{hub_id} ({config}, {split})"
    offline = constants.HF_HUB_OFFLINE
    reason = None if offline else hub_unreachable(constants.ENDPOINT, HUB_TIMEOUT)
    if reason is not None:
        msg = (
            f"cannot load {where}: {constants.ENDPOINT} is unreachable ({reason}); {OFFLINE_REMEDY}"
        )
        raise HubUnreachableError(msg)
    try:
        dataset = datasets.load_dataset(hub_id, config, split=split)
    except ConnectionError as error:  # datasets: "Couldn't reach ... on the Hub"
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(error)
        msg = f"cannot load {where}: {why}; {OFFLINE_REMEDY}"
        raise HubUnreachableError(msg) from None
    return where, dataset


def hub_unreachable(endpoint: str, timeout: float) -> str | None:
    """Why a TCP connection to the hub's `endpoint` (a URL) fails within `timeout` seconds, or
    None when it opens. Behind a proxy the check is left to `datasets` (None)."""
    parts = urlsplit(endpoint)
    if parts.scheme in urllib.request.getproxies():
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None


def _split_file(folder: Path, task: str, setting: str, split: str) -> Path:
    """The file for `split` in `folder`, preferring the `{task}_{setting}/` subfolder."""
    candidates = [
        Path(sub) / f"{split}{ext}" for sub in (f"{task}_{setting}", ".") for ext in EXTENSIONS
    ]
    for candidate in candidates:
        if (folder / candidate).is_file():
            return folder / candidate
    looked = ", ".join(c.as_posix() for c in candidates)
    contents = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(contents[:30])
    if len(contents) > 30:
        shown += f", … ({len(contents)} in all)"
    msg = (
        f"no {split} file for {task}_{setting} in {folder}: looked for {looked}; "
        f"the folder contains: {shown or 'nothing'}"
    )
    raise FileNotFoundError(msg)


def _file_rows(path: Path) -> Iterable[Any]:
    """The rows of a local `.json`, `.jsonl` or `.parquet` file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".jsonl":
        return _json_lines(path)
    if suffix == ".json":
        return _json_rows(path)
    msg = f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(EXTENSIONS)}"
    raise ValueError(msg)


def _parquet_rows(path: Path) -> list[dict]:
    """The rows of a Parquet file as plain Python dicts."""
    from langchain_specsteer.extras import optional_import

    pq = optional_import("pyarrow.parquet", extra="eval", purpose="Reading Parquet")

    return pq.read_table(path).to_pylist()


def _json_rows(path: Path) -> Iterable[Any]:
    """A `.json` file's rows: a JSON list when it starts with `[`, JSON lines otherwise."""
    with path.open(encoding="utf-8-sig") as file:
        head = file.read(4096).lstrip()
    if not head.startswith("["):
        return _json_lines(path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        msg = f"{path} line {error.lineno}: malformed JSON ({error.msg}, column {error.colno})"
        raise LongLaMPSchemaError(msg) from None
    return rows


def _json_lines(path: Path) -> Iterator[Any]:
    """The rows of a JSON lines file, read lazily; blank lines are skipped."""
    with path.open(encoding="utf-8-sig") as file:
        for lineno, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                msg = f"{path} line {lineno}: malformed JSON ({error.msg}, column {error.colno})"
                raise LongLaMPSchemaError(msg) from None


def _to_example(where: str, task: str, split: str, index: int, row: Any) -> Example:
    """Validate one row and turn it into an `Example`."""
    at = f"{where} row {index}"
    if not isinstance(row, Mapping):
        _fail(at, f"expected an object with input, output and profile, got {_kind(row)}")
    text = _required(at, row, "input")
    if not isinstance(text, str) or not text.strip():
        _fail(at, f"field 'input' must be a non-empty string, got {_shown(text)}")
    output = _required(at, row, "output")
    if not isinstance(output, str):
        _fail(at, f"field 'output' must be a string, got {_kind(output)}")
    profile = [dict(entry) for entry in _checked_profile(at, task, _required(at, row, "profile"))]
    user = row.get(USER_FIELD[task])
    return Example(
        id=f"{split}-{index:06d}",
        input=text,
        output=output,
        profile=profile,
        user=None if user is None else str(user),
    )


def _required(at: str, row: Mapping, field: str) -> Any:
    """The value of a required row field."""
    if field not in row:
        _fail(at, f"lacks field {field!r}")
    return row[field]


def _checked_profile(at: str, task: str, profile: Any) -> list[Mapping]:
    """The profile after checking it is a non-empty list of complete entries."""
    if not isinstance(profile, list):
        _fail(at, f"field 'profile' must be a list of entries, got {_kind(profile)}")
    if not profile:
        _fail(at, "field 'profile' is empty (every example needs the user's history)")
    for position, entry in enumerate(profile):
        _check_entry(f"{at}: profile[{position}]", task, entry)
    return profile


def _check_entry(at: str, task: str, entry: Any) -> None:
    """Check one profile entry has the task's fields with scalar values."""
    if not isinstance(entry, Mapping):
        msg = f"{at} must be an object, got {_kind(entry)}"
        raise LongLaMPSchemaError(msg)
    fields = PROFILE_FIELDS[task]
    for field in fields:
        if field not in entry:
            need = ", ".join(fields)
            msg = f"{at} lacks field {field!r} ({task} entries need {need})"
            raise LongLaMPSchemaError(msg)
        value = entry[field]
        if field == PROFILE_TEXT_FIELD[task]:
            if not isinstance(value, str):
                msg = f"{at} field {field!r} must be a string, got {_kind(value)}"
                raise LongLaMPSchemaError(msg)
        elif not _is_scalar(value):
            msg = f"{at} field {field!r} must be a string or a number, got {_kind(value)}"
            raise LongLaMPSchemaError(msg)


def _is_scalar(value: Any) -> bool:
    """True for values a profile field may hold besides the main text: str, number or null."""
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _fail(at: str, problem: str) -> NoReturn:
    """Raise a `LongLaMPSchemaError` for a row."""
    msg = f"{at}: {problem}"
    raise LongLaMPSchemaError(msg)


def _kind(value: Any) -> str:
    """A short name for a value's type in messages."""
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A value's type, or the value itself when it is a (blank) string."""
    return repr(value) if isinstance(value, str) else _kind(value)
