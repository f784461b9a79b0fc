"""The LongLaMP loader: local JSON / JSON lines / Parquet files and folders, the hub, validation."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.data import (
    HUB_ID,
    PROFILE_FIELDS,
    PROFILE_TEXT_FIELD,
    SETTINGS,
    SPLITS,
    TASKS,
    USER_FIELD,
    Example,
    LongLaMPSchemaError,
    load_longlamp,
)

PRODUCTS = ["a stainless steel blender", "a camping tent for two", "over-ear headphones"]
TOPICS = ["moving to a new city", "learning to bake bread", "a rainy weekend hike"]
PAPERS = ["Sparse attention for long documents", "Federated ranking", "Robust speech tagging"]


def profile_entry(task: str, user: int, k: int) -> dict:
    """One realistic history entry of `user` for `task`."""
    if task == "product_review":
        return {
            "description": f"Product {k}: {PRODUCTS[k % 3]} with a two-year warranty.",
            "overall": [5.0, 4, "3.0"][k % 3],
            "reviewText": f"User {user} here. I used {PRODUCTS[k % 3]} for a month; sturdy, loud.",
            "summary": f"Solid buy #{k}",
        }
    if task == "abstract_generation":
        return {
            "abstract": f"We study {PAPERS[k % 3].lower()} and show gains of {k + 3} points.",
            "id": f"p{user}-{k}",
            "title": PAPERS[k % 3],
            "year": 2015 + k,
        }
    return {
        "author": f"u{user}",
        "content": f"Last year I wrote about {TOPICS[k % 3]}. It changed how I plan my days.",
        "id": f"post-{user}-{k}",
        "summary": f"Thoughts on {TOPICS[k % 3]}",
    }


def make_rows(task: str, n: int = 3) -> list[dict]:
    """`n` rows in the LongLaMP schema with 2–4 profile entries; the last row has no user id."""
    rows = []
    for i in range(n):
        row = {
            "input": f"Write a {task.replace('_', ' ')} piece about item {i}.",
            "output": f"Reference text {i}: long, personal and specific.",
            "profile": [profile_entry(task, i, k) for k in range(2 + i % 3)],
        }
        if i < n - 1:
            row[USER_FIELD[task]] = f"user-{i}"
        rows.append(row)
    return rows


def expected(rows: list[dict], task: str, split: str = "val") -> list[Example]:
    """The examples the loader should return for `rows`."""
    return [
        Example(
            id=f"{split}-{i:06d}",
            input=row["input"],
            output=row["output"],
            profile=row["profile"],
            user=row.get(USER_FIELD[task]),
        )
        for i, row in enumerate(rows)
    ]


def write_json(path: Path, rows: list) -> Path:
    """Write rows as one indented JSON list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Write rows as Parquet with pyarrow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {
    "json_list": lambda tmp, rows: write_json(tmp / "rows.json", rows),
    "json_lines_in_json": lambda tmp, rows: write_jsonl(tmp / "rows.json", rows),
    "jsonl": lambda tmp, rows: write_jsonl(tmp / "rows.jsonl", rows),
    "parquet": lambda tmp, rows: write_parquet(tmp / "rows.parquet", rows),
}


def parquet_safe(task: str) -> list[dict]:
    """Rows Parquet can hold: one type per profile field (`overall` all floats)."""
    rows = make_rows(task)
    for row in rows:
        for entry in row["profile"]:
            if "overall" in entry:
                entry["overall"] = float(entry["overall"])
    return rows


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_round_trip_local_file(tmp_path, task, fmt):
    rows = parquet_safe(task) if fmt == "parquet" else make_rows(task)
    path = WRITERS[fmt](tmp_path, rows)
    assert load_longlamp(task, source=path) == expected(rows, task)
    assert load_longlamp(task, source=str(path)) == expected(rows, task)


@pytest.mark.parametrize("task", TASKS)
def test_round_trip_pandas_parquet(tmp_path, task):
    rows = parquet_safe(task)
    path = tmp_path / "val.parquet"
    pd.DataFrame(rows).to_parquet(path)
    examples = load_longlamp(task, source=path)
    assert examples == expected(rows, task)
    assert examples[-1].user is None


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_round_trip_folder(tmp_path, task, ext):
    rows = parquet_safe(task)
    writer = {"jsonl": write_jsonl, "json": write_json, "parquet": write_parquet}[ext]
    writer(tmp_path / f"test.{ext}", rows)
    write_jsonl(tmp_path / "val.jsonl", make_rows(task, 1))
    assert load_longlamp(task, "user", "test", tmp_path) == expected(rows, task, "test")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_round_trip_config_subfolder(tmp_path, task, setting):
    rows = make_rows(task, 4)
    write_jsonl(tmp_path / f"{task}_{setting}" / "train.jsonl", rows)
    other = "temporal" if setting == "user" else "user"
    write_jsonl(tmp_path / f"{task}_{other}" / "train.jsonl", make_rows(task, 1))
    loaded = load_longlamp(task, setting, "train", str(tmp_path))
    assert loaded == expected(rows, task, "train")


def test_config_subfolder_wins_over_top_level(tmp_path):
    rows = make_rows("topic_writing", 2)
    write_jsonl(tmp_path / "topic_writing_user" / "val.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", make_rows("topic_writing", 3))
    assert load_longlamp("topic_writing", source=tmp_path) == expected(rows, "topic_writing")


def test_split_names_the_ids_of_a_file(tmp_path):
    path = write_jsonl(tmp_path / "anything.jsonl", make_rows("product_review", 2))
    ids = [e.id for e in load_longlamp("product_review", split="test", source=path)]
    assert ids == ["test-000000", "test-000001"]


def test_values_and_extra_keys_are_kept(tmp_path):
    rows = make_rows("product_review", 1)
    rows[0]["profile"][0].update(overall=4, asin="B00X", unixReviewTime=1400000000)
    rows[0]["profile"][1].update(overall="5.0", description=None)
    rows[0][USER_FIELD["product_review"]] = 12345
    path = write_jsonl(tmp_path / "val.jsonl", rows)
    (example,) = load_longlamp("product_review", source=path)
    assert example.profile == rows[0]["profile"]
    assert example.profile[0]["overall"] == 4 and isinstance(example.profile[0]["overall"], int)
    assert example.profile[1]["overall"] == "5.0"
    assert example.profile[1]["description"] is None
    assert example.user == "12345"


def test_blank_lines_are_skipped_and_rows_counted(tmp_path):
    rows = make_rows("abstract_generation", 2)
    path = tmp_path / "val.jsonl"
    path.write_text("\n" + json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n\n")
    assert load_longlamp("abstract_generation", source=path) == expected(
        rows, "abstract_generation"
    )


def test_example_is_frozen(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", make_rows("topic_writing", 1))
    (example,) = load_longlamp("topic_writing", source=path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.output = "changed"


# --- limit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_limit_keeps_the_first_rows(tmp_path, fmt):
    rows = parquet_safe("product_review")
    path = WRITERS[fmt](tmp_path, rows)
    assert load_longlamp("product_review", source=path, limit=2) == expected(
        rows[:2], "product_review"
    )
    assert len(load_longlamp("product_review", source=path, limit=100)) == len(rows)


def test_limit_stops_reading_json_lines(tmp_path):
    rows = make_rows("product_review", 2)
    path = write_jsonl(tmp_path / "val.jsonl", rows)
    with path.open("a") as file:
        file.write('{"input": "broken\n')
    assert load_longlamp("product_review", source=path, limit=2) == expected(rows, "product_review")
    with pytest.raises(LongLaMPSchemaError, match="line 3"):
        load_longlamp("product_review", source=path)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_bad_limit(tmp_path, limit):
    path = write_jsonl(tmp_path / "val.jsonl", make_rows("product_review", 1))
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_longlamp("product_review", source=path, limit=limit)


# --- the hub -----------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace `datasets.load_dataset` with one serving `fake_hub.rows` and recording calls;
    the hub answers the reachability check."""
    import datasets

    import eval.data

    monkeypatch.setattr(eval.data, "hub_unreachable", lambda endpoint, timeout: None)

    class Hub:
        def __init__(self) -> None:
            self.rows = parquet_safe("product_review")
            self.calls: list = []

        def __call__(self, *args, **kwargs):
            self.calls.append((args, kwargs))
            return datasets.Dataset.from_list(self.rows)

    hub = Hub()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    return hub


def test_hub_default(fake_hub):
    examples = load_longlamp("product_review")
    assert fake_hub.calls == [((HUB_ID, "product_review_user"), {"split": "val"})]
    assert HUB_ID == "LongLaMP/LongLaMP"
    assert examples == expected(fake_hub.rows, "product_review")


def test_hub_named_source_and_limit(fake_hub):
    fake_hub.rows = make_rows("abstract_generation", 4)  # no `overall`: any rows fit Arrow
    examples = load_longlamp("abstract_generation", "temporal", "test", "me/longlamp", limit=3)
    assert fake_hub.calls == [(("me/longlamp", "abstract_generation_temporal"), {"split": "test"})]
    assert examples == expected(fake_hub.rows[:3], "abstract_generation", "test")


def test_hub_id_string_is_not_a_path(fake_hub):
    load_longlamp("product_review", source=HUB_ID)
    assert fake_hub.calls == [((HUB_ID, "product_review_user"), {"split": "val"})]


def test_hub_schema_error_names_the_config(fake_hub):
    fake_hub.rows = parquet_safe("product_review")
    del fake_hub.rows[1]["profile"][0]["reviewText"]  # Arrow fills the gap with null
    where = "LongLaMP/LongLaMP (product_review_user, val) row 1"
    message = f"{where}: profile[0] field 'reviewText' must be a string, got null"
    with pytest.raises(LongLaMPSchemaError, match=re.escape(message)):
        load_longlamp("product_review")


@pytest.fixture
def no_network(monkeypatch):
    """Online mode, but no connection to anywhere gets through; `load_dataset` recorded."""
    import socket

    import datasets
    from huggingface_hub import constants

    calls = []

    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args))
    return calls


def test_an_unreachable_hub_fails_at_once_and_names_a_local_folder(no_network):
    """No retries for half a minute and no traceback from `datasets`: one connection attempt,
    then a message that says what works offline."""
    import time

    start = time.monotonic()
    with pytest.raises(ConnectionError) as error:
        load_longlamp("product_review", source=HUB_ID)
    assert time.monotonic() - start < 2
    assert no_network == []  # datasets was never asked
    message = str(error.value)
    assert "LongLaMP/LongLaMP (product_review_user, val)" in message
    from huggingface_hub import constants

    assert f"{constants.ENDPOINT} is unreachable" in message
    assert "Name or service not known" in message
    assert "python -m eval.world --out data/world" in message and "--data data/world" in message


def test_offline_mode_without_a_cached_copy_says_so(monkeypatch):
    """HF_HUB_OFFLINE set: no connection check (a cached copy may serve); `datasets`' own
    refusal becomes the same advice."""
    import socket

    import datasets
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise AssertionError("offline: no connection is attempted")

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'LongLaMP/LongLaMP' on the Hub (OfflineModeIsEnabled)"
        )

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError) as error:
        load_longlamp("product_review", source=HUB_ID)
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message and "not in the local cache" in message
    assert "--data data/world" in message


def test_offline_mode_serves_a_cached_copy(fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_longlamp("product_review") == expected(fake_hub.rows, "product_review")


def test_the_eval_command_reports_an_unreachable_hub_in_one_line(no_network, tmp_path, capsys):
    from eval.__main__ import main

    argv = ["run", "--task", "product_review", "--data", HUB_ID, "--specialist", "S"]
    assert main([*argv, "--generalist", "G", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "unreachable" in error and "--data data/world" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source", ["./missing", "/nowhere/val.jsonl", "data/val.parquet"])
def test_missing_local_path_never_goes_to_the_hub(fake_hub, tmp_path, source):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_longlamp("product_review", source=source)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_longlamp("product_review", source=tmp_path / "missing")
    assert fake_hub.calls == []


# --- schema errors ------------------------------------------------------------------------------


def broken(task: str, edit) -> list[dict]:
    """Rows of `task` with `edit(rows)` applied to them."""
    rows = make_rows(task, 3)
    edit(rows)
    return rows


SCHEMA_CASES = {
    "missing input": (
        lambda rows: rows[2].pop("input"),
        "row 2: lacks field 'input'",
    ),
    "blank input": (
        lambda rows: rows[1].update(input="   "),
        "row 1: field 'input' must be a non-empty string, got '   '",
    ),
    "input not a string": (
        lambda rows: rows[0].update(input=["a"]),
        "row 0: field 'input' must be a non-empty string, got list",
    ),
    "missing output": (
        lambda rows: rows[1].pop("output"),
        "row 1: lacks field 'output'",
    ),
    "output not a string": (
        lambda rows: rows[1].update(output=None),
        "row 1: field 'output' must be a string, got null",
    ),
    "missing profile": (
        lambda rows: rows[0].pop("profile"),
        "row 0: lacks field 'profile'",
    ),
    "empty profile": (
        lambda rows: rows[2].update(profile=[]),
        "row 2: field 'profile' is empty",
    ),
    "profile not a list": (
        lambda rows: rows[2].update(profile="my reviews"),
        "row 2: field 'profile' must be a list of entries, got str",
    ),
    "entry not an object": (
        lambda rows: rows[1]["profile"].append("just text"),
        "row 1: profile[3] must be an object, got str",
    ),
    "entry lacks a field": (
        lambda rows: rows[1]["profile"][2].pop("reviewText"),
        "row 1: profile[2] lacks field 'reviewText' "
        "(product_review entries need description, overall, reviewText, summary)",
    ),
    "entry main text not a string": (
        lambda rows: rows[0]["profile"][1].update(reviewText=None),
        "row 0: profile[1] field 'reviewText' must be a string, got null",
    ),
    "entry field not a scalar": (
        lambda rows: rows[0]["profile"][0].update(overall={"stars": 5}),
        "row 0: profile[0] field 'overall' must be a string or a number, got dict",
    ),
    "entry field a bool": (
        lambda rows: rows[0]["profile"][0].update(summary=True),
        "row 0: profile[0] field 'summary' must be a string or a number, got bool",
    ),
    "row not an object": (
        lambda rows: rows.insert(1, ["input", "output"]),
        "row 1: expected an object with input, output and profile, got list",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
@pytest.mark.parametrize("writer", [write_jsonl, write_json], ids=["jsonl", "json"])
def test_schema_errors(tmp_path, case, writer):
    edit, message = SCHEMA_CASES[case]
    path = writer(tmp_path / "data" / f"val.{writer.__name__[6:]}", broken("product_review", edit))
    with pytest.raises(LongLaMPSchemaError, match=re.escape(f"{path} {message}")):
        load_longlamp("product_review", source=path)
    with pytest.raises(ValueError):  # LongLaMPSchemaError is a ValueError
        load_longlamp("product_review", source=tmp_path / "data")


@pytest.mark.parametrize("task", TASKS)
def test_each_task_needs_its_fields(tmp_path, task):
    fields = PROFILE_FIELDS[task]
    assert PROFILE_TEXT_FIELD[task] in fields
    for field in fields:
        rows = make_rows(task, 2)
        del rows[1]["profile"][0][field]
        path = write_jsonl(tmp_path / f"{field}.jsonl", rows)
        message = (
            f"row 1: profile[0] lacks field {field!r} ({task} entries need {', '.join(fields)})"
        )
        with pytest.raises(LongLaMPSchemaError, match=re.escape(message)):
            load_longlamp(task, source=path)


def test_other_tasks_entries_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", make_rows("product_review", 1))
    with pytest.raises(LongLaMPSchemaError, match="lacks field 'abstract'"):
        load_longlamp("abstract_generation", source=path)


def test_parquet_schema_error(tmp_path):
    rows = make_rows("topic_writing", 2)
    rows[1]["profile"] = []
    path = write_parquet(tmp_path / "val.parquet", rows)
    with pytest.raises(LongLaMPSchemaError, match=re.escape(f"{path} row 1: field 'profile'")):
        load_longlamp("topic_writing", source=path)


# --- file and argument errors -------------------------------------------------------------------


def test_malformed_json_line_names_the_line(tmp_path):
    rows = make_rows("topic_writing", 3)
    lines = [json.dumps(rows[0]), "", json.dumps(rows[1]), json.dumps(rows[2])[:-5]]
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LongLaMPSchemaError, match=re.escape(f"{path} line 4: malformed JSON")):
        load_longlamp("topic_writing", source=path)


def test_malformed_json_list_names_the_line(tmp_path):
    path = tmp_path / "val.json"
    text = json.dumps(make_rows("topic_writing", 2), indent=2)
    lines = text.splitlines()
    assert lines[3].startswith('    "output"')
    lines[3] = lines[3].replace('"output"', "output")  # an unquoted key in the first row
    path.write_text("\n".join(lines))
    with pytest.raises(LongLaMPSchemaError, match=re.escape(f"{path} line 4: malformed JSON")):
        load_longlamp("topic_writing", source=path)


def test_malformed_json_lines_in_a_json_file(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps(make_rows("topic_writing", 1)[0]) + "\n{oops}\n")
    with pytest.raises(LongLaMPSchemaError, match=re.escape(f"{path} line 2: malformed JSON")):
        load_longlamp("topic_writing", source=path)


@pytest.mark.parametrize("name", ["val.csv", "val.jsonl.gz", "val"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("input,output\n")
    with pytest.raises(ValueError, match=r"unsupported file type .*\.jsonl, \.json, \.parquet"):
        load_longlamp("product_review", source=path)


def test_missing_split_file_in_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_rows("product_review", 1))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "abstract_generation_user").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_longlamp("product_review", "user", "val", tmp_path)
    message = str(info.value)
    assert f"no val file for product_review_user in {tmp_path}" in message
    for looked in ["val.jsonl", "val.json", "val.parquet", "product_review_user/val.jsonl"]:
        assert looked in message
    assert "the folder contains: abstract_generation_user/, notes.txt, train.jsonl" in message


def test_missing_split_file_in_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder contains: nothing"):
        load_longlamp("topic_writing", source=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "review_writing"}, "unknown task 'review_writing'; valid: " + ", ".join(TASKS)),
        ({"setting": "time"}, "unknown setting 'time'; valid: " + ", ".join(SETTINGS)),
        ({"split": "dev"}, "unknown split 'dev'; valid: " + ", ".join(SPLITS)),
    ],
)
def test_unknown_task_setting_split(tmp_path, kwargs, message):
    path = write_jsonl(tmp_path / "val.jsonl", make_rows("product_review", 1))
    arguments = {"task": "product_review", "source": path, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        load_longlamp(**arguments)
