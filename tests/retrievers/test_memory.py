"""PrivateMemory: round trips, stable ids, persistence, owner-only files, concurrency, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pytest

from retrievers import PersonalBM25Retriever, PersonalDenseRetriever
from retrievers import memory as memory_module
from retrievers.memory import MAX_METADATA_DEPTH, MemoryEntry, PrivateMemory, PrivateMemoryError

# Child processes load memory.py by path: no package imports, so they start fast.
LOAD = r"""
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("specsteer_memory", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
"""


def run_child(code: str, *args: str, **popen) -> subprocess.Popen:
    """Start a Python child running LOAD + code with argv [memory.py, *args]."""
    return subprocess.Popen(
        [sys.executable, "-c", LOAD + code, memory_module.__file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def mem(tmp_path):
    with PrivateMemory(tmp_path / "alice.db") as store:
        yield store


# ---------------------------------------------------------------- round trips


def test_add_get_list_round_trip_with_metadata(mem):
    ids = mem.add(["first", "second", "third"], [{"a": 1}, None, {"tags": ["x", "é"], "n": 2.5}])
    assert ids == [1, 2, 3]
    assert mem.add("fourth", {"single": True}) == [4]
    entries = mem.list()
    assert [e.id for e in entries] == [1, 2, 3, 4]
    assert [e.text for e in entries] == ["first", "second", "third", "fourth"]
    assert [e.metadata for e in entries] == [
        {"a": 1},
        {},
        {"tags": ["x", "é"], "n": 2.5},
        {"single": True},
    ]
    assert all(isinstance(e, MemoryEntry) and e.created_at > 1e9 for e in entries)
    assert list(mem) == entries
    assert len(mem) == 4


def test_get_keeps_order_and_skips_missing(mem):
    mem.add(["a", "b", "c"])
    assert [e.text for e in mem.get([3, 99, 1, 3])] == ["c", "a", "c"]
    assert [e.text for e in mem.get(np.array([2]))] == ["b"]
    assert mem.get([]) == []


def test_list_limit_offset(mem):
    mem.add([f"t{i}" for i in range(5)])
    assert [e.text for e in mem.list(limit=2)] == ["t0", "t1"]
    assert [e.text for e in mem.list(limit=2, offset=3)] == ["t3", "t4"]
    assert [e.text for e in mem.list(offset=4)] == ["t4"]
    assert mem.list(limit=0) == []
    with pytest.raises(PrivateMemoryError, match=r"limit must be an integer from 0 .*got -1"):
        mem.list(limit=-1)


def test_delete_and_clear(mem):
    mem.add(["a", "b", "c", "d"])
    assert mem.delete(2) == 1
    assert mem.delete([1, 3, 42]) == 2
    assert mem.delete([2]) == 0
    assert [e.text for e in mem.list()] == ["d"]
    mem.add(["e", "f"])
    assert mem.clear() == 3
    assert len(mem) == 0 and mem.list() == []
    assert mem.clear() == 0


def test_ids_never_reused(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        assert mem.add(["a", "b", "c"]) == [1, 2, 3]
        mem.delete(3)
        assert mem.add("d") == [4]
        mem.clear()
        assert mem.add("e") == [5]
        mem.delete(5)
    with PrivateMemory(path) as mem:
        assert mem.add("f") == [6]


def test_in_memory_store():
    with PrivateMemory() as mem:
        assert mem.path is None
        assert mem.add(["x", "y"]) == [1, 2]
        assert mem.revision == 1
        assert repr(mem) == "PrivateMemory(':memory:', entries=2)"


# ---------------------------------------------------------------- persistence and revision


def test_restart_keeps_entries_ids_and_revision(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        mem.add(["a", "b", "c"], [{"i": 0}, {"i": 1}, {"i": 2}])
        mem.delete(2)
        before, revision = mem.list(), mem.revision
    assert revision == 2
    with PrivateMemory(str(path)) as mem:
        assert mem.list() == before
        assert mem.revision == revision
        assert mem.add("d") == [4]


def test_file_store_uses_wal_and_foreign_keys(mem):
    conn = sqlite3.connect(mem.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert mem._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert mem._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_survives_a_killed_writer(tmp_path):
    path = tmp_path / "m.db"
    code = "m = mod.PrivateMemory(sys.argv[2]); m.add(['x', 'y'], [{'k': 1}, {}]); os._exit(0)"
    child = run_child(code, str(path))
    assert child.wait(timeout=30) == 0, child.stderr.read()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3  # the database and the WAL files left by the killed process
    for file in files:
        os.chmod(file, 0o644)
    with PrivateMemory(path) as mem:
        assert [(e.id, e.text, e.metadata) for e in mem] == [(1, "x", {"k": 1}), (2, "y", {})]
        assert mem.revision == 1
        assert {mode(file) for file in files} == {0o600}


def test_revision_increases_on_each_change_and_is_shared(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem, PrivateMemory(path) as other:
        seen = [other.revision]
        mem.add("a")
        seen.append(other.revision)
        mem.add(["b", "c"])
        seen.append(other.revision)
        mem.delete(1)
        seen.append(other.revision)
        mem.clear()
        seen.append(other.revision)
        assert seen == [0, 1, 2, 3, 4]
        assert len(other) == 0
        # No-ops and the embedding cache leave the revision alone.
        mem.delete([1, 2])
        mem.clear()
        assert mem.add([]) == []
        mem.add("d")
        mem.cache_embeddings("m", {4: np.ones(2)})
        assert other.revision == mem.revision == 5


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
def test_file_and_new_folders_are_owner_only_whatever_the_umask(tmp_path, monkeypatch, umask):
    modes_at_connect = []
    real_connect = sqlite3.connect

    def spy(database, *args, **kwargs):
        target = urllib.parse.unquote(str(database).removeprefix("file://").split("?")[0])
        modes_at_connect.append(mode(target) if os.path.exists(target) else None)
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    path = tmp_path / "a" / "b" / "m.db"
    old = os.umask(umask)
    try:
        with PrivateMemory(path) as mem:
            mem.add(["private"] * 3)
            sidecars = [p for p in path.parent.iterdir() if p != path]
            assert sorted(p.name for p in sidecars) == ["m.db-shm", "m.db-wal"]
            assert all(mode(p) == 0o600 for p in sidecars), [(p, oct(mode(p))) for p in sidecars]
    finally:
        os.umask(old)
    # The file exists, owner-only, before SQLite first opens it.
    assert modes_at_connect and all(m is not None and m & 0o077 == 0 for m in modes_at_connect)
    assert mode(path) == 0o600
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700


def test_reopening_tightens_a_loose_file_mode(tmp_path):
    path = tmp_path / "m.db"
    PrivateMemory(path).close()
    os.chmod(path, 0o644)
    with PrivateMemory(path):
        assert mode(path) == 0o600


# ---------------------------------------------------------------- symbolic links


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_symlink_to_an_existing_file_is_refused_and_the_file_untouched(tmp_path, read_only):
    victim = tmp_path / "bob" / "notes"  # someone else's empty, world-writable file
    victim.parent.mkdir()
    victim.write_bytes(b"")
    os.chmod(victim, 0o666)
    link = tmp_path / "alice" / "alice.db"
    link.parent.mkdir()
    link.symlink_to(victim)
    with pytest.raises(PrivateMemoryError, match="is a symbolic link") as info:
        PrivateMemory(link, read_only=read_only)
    assert str(link) in str(info.value) and "refusing to follow it" in str(info.value)
    assert victim.read_bytes() == b"" and mode(victim) == 0o666
    assert os.listdir(victim.parent) == ["notes"]
    assert os.listdir(link.parent) == ["alice.db"] and link.is_symlink()


def test_dangling_symlink_is_refused_and_its_target_not_created(tmp_path):
    target = tmp_path / "bob" / "made-by-alice.db"
    target.parent.mkdir()
    link = tmp_path / "alice.db"
    link.symlink_to(target)
    with pytest.raises(PrivateMemoryError, match="is a symbolic link") as info:
        PrivateMemory.for_user("alice", root=tmp_path)
    assert str(link) in str(info.value)
    assert os.listdir(target.parent) == []


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
@pytest.mark.parametrize("sidecar", ["-wal", "-shm", "-journal"])
def test_symlinked_sidecar_is_refused_and_its_target_untouched(tmp_path, sidecar, read_only):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        mem.add("private")
    digest = sha256(path)
    victim, dangling = tmp_path / "victim", tmp_path / "dangling"
    victim.write_bytes(b"keep me")
    os.chmod(victim, 0o666)
    link = tmp_path / f"m.db{sidecar}"
    for target in (victim, dangling):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        with pytest.raises(PrivateMemoryError, match="is a symbolic link") as info:
            PrivateMemory(path, read_only=read_only)
        assert str(link) in str(info.value)
    assert victim.read_bytes() == b"keep me" and mode(victim) == 0o666
    assert not dangling.exists() and sha256(path) == digest
    assert sorted(os.listdir(tmp_path)) == sorted(["m.db", "victim", link.name])


# ---------------------------------------------------------------- read-only mode


TEXTS = ["fresh coffee beans", "a tent in the rain", "a loud blender"]
VOCABULARY = sorted({word for text in TEXTS for word in text.split()})


class WordEncoder:
    """A stand-in sentence encoder: bag of the words of TEXTS, unit-norm."""

    def encode(self, texts, **kwargs):
        out = np.zeros((len(texts), len(VOCABULARY)), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                out[row, VOCABULARY.index(word)] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_store(path) -> None:
    with PrivateMemory(path) as mem:
        mem.add(TEXTS, [{"i": i} for i in range(3)])


def test_read_only_store_reads_and_searches_but_refuses_writes(tmp_path):
    path = tmp_path / "m.db"
    make_store(path)
    os.chmod(path, 0o444)
    digest = sha256(path)
    with PrivateMemory(path, read_only=True) as mem:
        assert mem.read_only
        assert [e.text for e in mem] == TEXTS and len(mem) == 3 and mem.revision == 1
        assert [e.metadata for e in mem.get([3, 1])] == [{"i": 2}, {"i": 0}]
        bm25 = PersonalBM25Retriever.from_memory(mem, k=1)
        assert [d.page_content for d in bm25.invoke("blender")] == ["a loud blender"]
        dense = PersonalDenseRetriever.from_memory(mem, model=WordEncoder(), model_name="w", k=1)
        assert [d.page_content for d in dense.invoke("tent")] == ["a tent in the rain"]
        assert mem.cached_embeddings("w", [1, 2, 3]) == {}  # the cache keeps nothing
        writes = [lambda: mem.add("x"), lambda: mem.delete(1), mem.clear, lambda: mem.delete([])]
        for write in writes:
            with pytest.raises(PrivateMemoryError, match=r"is open read-only \(read_only=True\)"):
                write()
        # SQLite refuses too (mode=ro): what protects the file from root, whom 0444 does not stop.
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            mem._conn.execute("INSERT INTO meta VALUES ('x', 1)")
        assert len(mem) == 3 and mem.revision == 1
    assert sha256(path) == digest and mode(path) == 0o444


def test_read_only_file_is_refused_for_writing_and_untouched(tmp_path):
    path = tmp_path / "m.db"
    make_store(path)
    os.chmod(path, 0o444)
    digest = sha256(path)
    # Running as root, a read-write open would succeed (and chmod the file to 0600), so the
    # refusal must come from the file's mode bits, not from a failed write.
    with pytest.raises(
        PrivateMemoryError, match=r"read-only \(mode 444\): open it with read_only"
    ) as info:
        PrivateMemory(path)
    assert str(path) in str(info.value)
    assert sha256(path) == digest and mode(path) == 0o444


def test_read_only_store_sees_a_writer_and_leaves_the_mode_alone(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as writer, PrivateMemory.for_user("m", tmp_path, read_only=True) as ro:
        writer.add("a")
        assert ro.revision == 1 and [e.text for e in ro] == ["a"]
        writer.delete(1)
        assert ro.revision == 2 and len(ro) == 0
        with pytest.raises(PrivateMemoryError, match="open read-only"):
            ro.add("b")
    assert mode(path) == 0o600


def test_read_only_never_creates_a_store(tmp_path):
    path = tmp_path / "new" / "m.db"
    with pytest.raises(PrivateMemoryError, match=r"does not exist \(read_only=True never creates"):
        PrivateMemory(path, read_only=True)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    os.chmod(empty, 0o644)
    with pytest.raises(PrivateMemoryError, match="is empty, not yet a memory database") as info:
        PrivateMemory(empty, read_only=True)
    assert str(empty) in str(info.value)
    assert empty.read_bytes() == b"" and mode(empty) == 0o644
    with pytest.raises(PrivateMemoryError, match="read_only=True needs the path"):
        PrivateMemory(":memory:", read_only=True)
    with pytest.raises(PrivateMemoryError, match="read_only must be True or False"):
        PrivateMemory(tmp_path / "x.db", read_only="yes")
    assert sorted(os.listdir(tmp_path)) == ["empty.db"]


def test_read_only_refuses_a_foreign_file_untouched(tmp_path):
    path = tmp_path / "other.db"
    make_db(path, "CREATE TABLE notes (body TEXT)")
    digest = sha256(path)
    with pytest.raises(PrivateMemoryError, match="not a valid memory database"):
        PrivateMemory(path, read_only=True)
    assert sha256(path) == digest


# ---------------------------------------------------------------- concurrency

READER = r"""
mem = mod.PrivateMemory(sys.argv[2])
total, batch = int(sys.argv[3]), int(sys.argv[4])
print("ready", flush=True)
reads = last = 0
deadline = time.monotonic() + 20
while last < total and time.monotonic() < deadline:
    entries = mem.list()
    count = len(mem)
    texts = [e.text for e in entries]
    assert texts == [f"entry {i}" for i in range(len(texts))], texts
    assert len(texts) % batch == 0 and last <= len(texts) <= count, (last, len(texts), count)
    last, reads = len(texts), reads + 1
print(json.dumps({"reads": reads, "last": last, "revision": mem.revision}))
"""


def test_concurrent_readers_see_consistent_prefixes(tmp_path):
    path = tmp_path / "m.db"
    total, batch = 120, 3
    writer_mem, other_mem = PrivateMemory(path), PrivateMemory(path)
    child = run_child(READER, str(path), str(total), str(batch))
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        done, errors, counts = threading.Event(), [], []

        def write():
            for start in range(0, total, batch):
                texts = [f"entry {i}" for i in range(start, start + batch)]
                writer_mem.add(texts, [{"i": i} for i in range(start, start + batch)])
            done.set()

        def read(store):
            last, reads = 0, 0
            try:
                while True:
                    finished = done.is_set()
                    entries, count = store.list(), len(store)
                    assert [e.text for e in entries] == [f"entry {i}" for i in range(len(entries))]
                    assert all(e.metadata == {"i": e.id - 1} for e in entries)
                    assert len(entries) % batch == 0
                    assert last <= len(entries) <= count
                    last, reads = len(entries), reads + 1
                    if finished:
                        break
                counts.append((reads, last))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        readers = [
            threading.Thread(target=read, args=(s,)) for s in (writer_mem, writer_mem, other_mem)
        ]
        writer = threading.Thread(target=write)
        for t in [*readers, writer]:
            t.start()
        for t in [writer, *readers]:
            t.join(timeout=30)
        assert not errors, errors
        assert len(counts) == 3 and all(last == total for _, last in counts)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        writer_mem.close()
        other_mem.close()
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result["last"] == total and result["reads"] >= 1
    assert result["revision"] == total // batch


# ---------------------------------------------------------------- refusals of foreign files


@pytest.mark.parametrize(
    "content",
    [os.urandom(8192), b"hello, this is a text file\n" * 50, b"short text\n"],
    ids=["random", "text", "short-text"],
)
def test_corrupt_file_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    os.chmod(path, 0o644)
    digest = sha256(path)
    with pytest.raises(PrivateMemoryError, match="not a valid memory database") as info:
        PrivateMemory(path)
    assert str(path) in str(info.value)
    assert sha256(path) == digest and mode(path) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["bad.db"]


def make_db(path, *statements):
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "statements",
    [
        ["CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('someone else''s')"],
        [  # our table names, but not our application id
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)",
            "INSERT INTO meta VALUES ('schema_version', 1)",
            "CREATE TABLE entries (id INTEGER PRIMARY KEY, text TEXT)",
            "CREATE TABLE embeddings (x)",
        ],
    ],
    ids=["other-app", "lookalike"],
)
def test_other_schema_database_is_refused_and_untouched(tmp_path, statements):
    path = tmp_path / "other.db"
    make_db(path, *statements)
    digest = sha256(path)
    with pytest.raises(PrivateMemoryError, match="not a valid memory database") as info:
        PrivateMemory(path)
    assert str(path) in str(info.value)
    assert sha256(path) == digest
    assert sorted(os.listdir(tmp_path)) == ["other.db"]


def test_newer_schema_is_refused_and_untouched(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        mem.add("keep me")
    make_db(path, "UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    digest = sha256(path)
    with pytest.raises(PrivateMemoryError, match="newer schema") as info:
        PrivateMemory(path)
    assert str(path) in str(info.value)
    assert sha256(path) == digest


# ---------------------------------------------------------------- bad input


def test_mismatched_metadata_length(mem):
    with pytest.raises(PrivateMemoryError, match=r"metadata has 1 item\(s\) but texts has 2"):
        mem.add(["a", "b"], [{}])
    with pytest.raises(PrivateMemoryError, match=r"metadata has 1 item\(s\) but texts has 2"):
        mem.add(["a", "b"], {"k": 1})


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_empty_text_is_rejected_with_its_index_and_nothing_is_stored(mem, blank):
    with pytest.raises(PrivateMemoryError, match=r"texts\[1\] is empty"):
        mem.add(["fine", blank, "also fine"])
    assert len(mem) == 0 and mem.revision == 0


def test_non_text_is_rejected(mem):
    with pytest.raises(PrivateMemoryError, match=r"texts\[0\] must be a str"):
        mem.add([b"bytes"])


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}, {"s": {1, 2}}])
def test_non_serialisable_metadata_is_rejected(mem, bad):
    with pytest.raises(PrivateMemoryError, match=r"metadata\[1\] is not JSON-serialisable"):
        mem.add(["a", "b"], [{}, bad])
    assert len(mem) == 0


def test_bad_ids_are_rejected(mem):
    with pytest.raises(PrivateMemoryError, match="ids must be integers"):
        mem.get(["1"])
    with pytest.raises(PrivateMemoryError, match="ids must be integers"):
        mem.delete(1.5)


def nested(depth: int) -> dict:
    """A dict holding dicts `depth` levels below it."""
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def self_referencing() -> dict:
    value: dict = {"x": 1}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("texts", "metadata", "match"),
    [
        (None, None, r"texts must be a str or a list of str, got NoneType"),
        (5, None, r"texts must be a str or a list of str, got int"),
        (b"bytes", None, r"texts must be a str or a list of str, got bytes"),
        (["t"], "meta", r"metadata must be a dict or a list of dicts \(one per text\), got str"),
        (["t"], b"m", r"metadata must be a dict or a list of dicts \(one per text\), got bytes"),
        (["t"], 5, r"metadata must be a dict or a list of dicts \(one per text\), got int"),
        (["fine", "bad \ud800"], None, r"texts\[1\] is not valid Unicode text: .*surrogate"),
        (["a", "b"], [{}, {"k": "x\ud800"}], r"metadata\[1\] is not valid Unicode text"),
        (["a"], [{"\udfff": 1}], r"metadata\[0\] is not valid Unicode text"),
        (["a", "b"], [{}, nested(2000)], rf"metadata\[1\] nests .* {MAX_METADATA_DEPTH} levels"),
        (["a"], [{"k": [nested(MAX_METADATA_DEPTH)]}], r"metadata\[0\] nests"),
        (["a"], [self_referencing()], r"metadata\[0\] nests .*contains itself"),
    ],
    ids=[
        "texts-none",
        "texts-int",
        "texts-bytes",
        "metadata-str",
        "metadata-bytes",
        "metadata-int",
        "surrogate-text",
        "surrogate-value",
        "surrogate-key",
        "nested-2000",
        "nested-in-list",
        "self-reference",
    ],
)
def test_bad_add_input_is_a_clear_error_and_nothing_is_stored(mem, texts, metadata, match):
    with pytest.raises(PrivateMemoryError, match=match):
        mem.add(texts, metadata)
    assert len(mem) == 0 and mem.revision == 0


def test_metadata_up_to_the_depth_limit_round_trips(mem):
    deep = nested(MAX_METADATA_DEPTH - 1)  # MAX_METADATA_DEPTH levels of dicts in all
    (entry_id,) = mem.add("deep", deep)
    assert mem.get([entry_id])[0].metadata == deep


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get([2**63]),
        lambda m: m.get([1, -(2**63) - 1]),
        lambda m: m.delete(2**63),
        lambda m: m.delete([2**70]),
        lambda m: m.cached_embeddings("m", [2**63]),
        lambda m: m.cache_embeddings("m", {2**63: np.ones(2)}),
    ],
    ids=["get", "get-negative", "delete-one", "delete-list", "cached", "cache"],
)
def test_ids_beyond_64_bits_are_a_clear_error(mem, call):
    mem.add("a")
    with pytest.raises(PrivateMemoryError, match=r"id -?\d+ is out of range: .*below 2\*\*63"):
        call(mem)
    assert mem.get([2**63 - 1, 1])[0].text == "a"  # the largest id SQLite holds is fine
    assert mem.delete([-(2**63)]) == 0 and len(mem) == 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"limit": 2**63}, "limit"),
        ({"offset": 2**63}, "offset"),
        ({"limit": 1.5}, "limit"),
        ({"limit": "3"}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
def test_limits_beyond_64_bits_or_not_integers_are_a_clear_error(mem, kwargs, name):
    mem.add(["a", "b"])
    with pytest.raises(PrivateMemoryError, match=rf"{name} must be an integer from 0 to 2\*\*63"):
        mem.list(**kwargs)
    assert [e.text for e in mem.list(limit=2**63 - 1, offset=1)] == ["b"]


def test_model_name_with_a_lone_surrogate_is_a_clear_error(mem):
    mem.add("a")
    with pytest.raises(PrivateMemoryError, match="model is not valid Unicode text"):
        mem.cache_embeddings("m\ud800", {1: np.ones(2)})
    with pytest.raises(PrivateMemoryError, match="model is not valid Unicode text"):
        mem.cached_embeddings("m\ud800", [1])


def test_closed_store_raises(tmp_path):
    mem = PrivateMemory(tmp_path / "m.db")
    mem.close()
    mem.close()
    with pytest.raises(PrivateMemoryError, match="closed"):
        mem.add("x")
    with pytest.raises(PrivateMemoryError, match="closed"):
        len(mem)
    assert "closed" in repr(mem)


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(PrivateMemoryError, match="cannot open memory database"):
        PrivateMemory(tmp_path)


# ---------------------------------------------------------------- embedding cache


def test_embedding_cache_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.db"
    vectors = {i: rng.standard_normal(384).astype(np.float32) for i in (1, 2, 3)}
    with PrivateMemory(path) as mem:
        mem.add(["a", "b", "c"])
        mem.cache_embeddings("bge-small", vectors)
        got = mem.cached_embeddings("bge-small", [3, 1, 2, 7])
        assert sorted(got) == [1, 2, 3]
        for i, vector in vectors.items():
            assert got[i].dtype == np.float32 and np.array_equal(got[i], vector)
        got[1][0] = 123.0  # returned arrays are writable copies
    with PrivateMemory(path) as mem:  # and persist
        again = mem.cached_embeddings("bge-small", [1])
        assert np.array_equal(again[1], vectors[1])


def test_embedding_cache_casts_to_float32_and_replaces(mem):
    mem.add("a")
    mem.cache_embeddings("m", {1: np.array([0.1, 0.2], dtype=np.float64)})
    assert np.array_equal(mem.cached_embeddings("m", [1])[1], np.array([0.1, 0.2], np.float32))
    mem.cache_embeddings("m", {1: [3.0, 4.0]})
    assert mem.cached_embeddings("m", [1])[1].tolist() == [3.0, 4.0]


def test_embedding_cache_is_per_model(mem):
    mem.add(["a", "b"])
    mem.cache_embeddings("model-a", {1: np.ones(4), 2: np.zeros(4)})
    mem.cache_embeddings("model-b", {1: np.full(2, 7.0)})
    assert mem.cached_embeddings("model-b", [1, 2]).keys() == {1}
    assert mem.cached_embeddings("model-b", [1])[1].tolist() == [7.0, 7.0]
    assert mem.cached_embeddings("model-a", [1])[1].tolist() == [1.0] * 4
    assert mem.cached_embeddings("model-c", [1, 2]) == {}


def count_embeddings(path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    finally:
        conn.close()


def test_embeddings_go_with_their_entries(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        mem.add(["a", "b", "c"])
        for model in ("m1", "m2"):
            mem.cache_embeddings(model, {i: np.ones(3) * i for i in (1, 2, 3)})
        assert count_embeddings(path) == 6
        mem.delete(2)
        assert mem.cached_embeddings("m1", [1, 2, 3]).keys() == {1, 3}
        assert count_embeddings(path) == 4
        mem.clear()
        assert count_embeddings(path) == 0
        mem.cache_embeddings("m1", {1: np.ones(3)})  # entry gone: skipped
        assert count_embeddings(path) == 0


@pytest.mark.parametrize("bad", [np.ones((2, 2)), np.array([]), np.array([1.0, np.nan])])
def test_bad_embeddings_are_rejected(mem, bad):
    mem.add("a")
    with pytest.raises(PrivateMemoryError, match="id 1 must be a finite, non-empty 1-D vector"):
        mem.cache_embeddings("m", {1: bad})
    with pytest.raises(PrivateMemoryError, match="model must be a non-empty str"):
        mem.cache_embeddings("", {1: np.ones(2)})


# ---------------------------------------------------------------- privacy of repr, for_user


def test_repr_has_no_entry_text(tmp_path):
    path = tmp_path / "m.db"
    with PrivateMemory(path) as mem:
        mem.add("my secret diagnosis", {"note": "hidden detail"})
        text = repr(mem) + str(mem)
    assert text == f"PrivateMemory({str(path)!r}, entries=1)" * 2
    assert "secret" not in text and "hidden" not in text


def test_for_user_with_root(tmp_path):
    with PrivateMemory.for_user("alice_01.x-y", root=tmp_path / "root") as mem:
        assert mem.path == tmp_path / "root" / "alice_01.x-y.db"
        mem.add("hi")
    assert (tmp_path / "root" / "alice_01.x-y.db").is_file()
    assert mode(tmp_path / "root") == 0o700


def test_for_user_with_specsteer_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSTEER_HOME", str(tmp_path / "home"))
    with PrivateMemory.for_user("bob") as mem:
        assert mem.path == tmp_path / "home" / "bob.db"


def test_for_user_default_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECSTEER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with PrivateMemory.for_user("carol") as mem:
        assert mem.path == tmp_path / ".local" / "share" / "specsteer" / "carol.db"
        assert mem.path.is_file()


@pytest.mark.parametrize(
    "user", ["", "../x", "a/b", ".", "..", ".hidden", "x y", "a\\b", "é", "x" * 129]
)
def test_for_user_rejects_bad_names(tmp_path, user):
    with pytest.raises(PrivateMemoryError, match="invalid user name") as info:
        PrivateMemory.for_user(user, root=tmp_path / "root")
    assert repr(user) in str(info.value)
    assert not (tmp_path / "root").exists()
