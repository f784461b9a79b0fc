"""An on-device SQLite store of a user's private history; nothing in it ever leaves the machine.

One file per user (`PrivateMemory.for_user`), readable by its owner only (0o600, folders 0o700).
Entries keep stable, never-reused ids; a persisted `revision` lets retrievers cache their
index per revision, also across processes; dense retrievers cache each entry's embedding per
model next to the entry, and the cached embeddings go when their entry goes.
"""

from __future__ import annotations

import json
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MemoryEntry", "PrivateMemory", "PrivateMemoryError"]

SCHEMA_VERSION = 1
APPLICATION_ID = 0x53505354  # "SPST" in the SQLite header marks our files
BUSY_TIMEOUT_S = 5.0
DEFAULT_ROOT = "~/.local/share/specsteer"
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CHUNK = 500  # ids per `IN (...)` query, below every SQLite variable limit

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        text TEXT NOT NULL,
        metadata TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE embeddings (
        entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (entry_id, model)
    ) WITHOUT ROWID""",
)
_TABLES = {"meta", "entries", "embeddings"}


class PrivateMemoryError(ValueError):
    """A corrupt or foreign database file, a closed store, or bad input."""


@dataclass(frozen=True)
class MemoryEntry:
    """One remembered text with its JSON metadata."""

    id: int
    text: str
    metadata: dict
    created_at: float


def _entry(row: tuple) -> MemoryEntry:
    """Build an entry from an `(id, text, metadata, created_at)` row."""
    return MemoryEntry(row[0], row[1], json.loads(row[2]), row[3])


def _as_ids(ids: int | Sequence[int]) -> list[int]:
    """Normalise one id or a sequence of ids to a list of ints."""
    try:
        return [operator.index(ids)]  # one id
    except TypeError:
        pass
    try:
        return [operator.index(i) for i in ids]
    except TypeError as exc:
        msg = f"ids must be integers, got {ids!r}"
        raise PrivateMemoryError(msg) from exc


def _chunks(items: Sequence[int]) -> Iterator[Sequence[int]]:
    """Yield slices short enough for one `IN (...)` query."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _check_schema(conn: sqlite3.Connection, where: str) -> bool:
    """Return True for one of our databases, False for an empty one; raise for anything else."""
    tables = {
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not name.startswith("sqlite_")
    }
    if not tables:
        return False
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    version = None
    if app_id == APPLICATION_ID and tables >= _TABLES:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None
    if version == SCHEMA_VERSION:
        return True
    if isinstance(version, int) and version > SCHEMA_VERSION:
        msg = f"{where} is a memory database of a newer schema ({version}); upgrade specsteer"
        raise PrivateMemoryError(msg)
    msg = f"{where} is not a valid memory database (it holds tables {sorted(tables)})"
    raise PrivateMemoryError(msg)


def _make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents, each owner-only (0o700) whatever the umask."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first
            continue
        os.chmod(path, 0o700)


class PrivateMemory:
    """A user's private history on this device: texts, metadata and cached embeddings."""

    def __init__(self, path: str | os.PathLike = ":memory:"):
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        if isinstance(path, str) and path == ":memory:":
            self.path: Path | None = None
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self.path = Path(path).expanduser().absolute()
            conn = self._open_file(self.path)
        self._conn = conn
        try:
            with self._read() as c:
                c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                c.execute("PRAGMA foreign_keys = ON")
                if self.path is not None:
                    c.execute("PRAGMA journal_mode = WAL")
            with self._write() as c:
                if not _check_schema(c, self._where):
                    for statement in _SCHEMA:
                        c.execute(statement)
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("schema_version", SCHEMA_VERSION), ("revision", 0)],
                    )
        except BaseException:
            self._conn = None
            conn.close()
            raise
        if self.path is not None:
            for sidecar in ("-wal", "-shm"):  # SQLite copies the file's mode; older ones may not
                side = self.path.with_name(self.path.name + sidecar)
                if side.exists():
                    os.chmod(side, 0o600)

    @staticmethod
    def _open_file(path: Path) -> sqlite3.Connection:
        """Create the file owner-only, check it read-only, then connect read-write."""
        try:
            _make_dirs(path.parent)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            msg = f"cannot open memory database {path}: {exc}"
            raise PrivateMemoryError(msg) from exc
        try:
            probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            try:
                _check_schema(probe, str(path))
            finally:
                probe.close()
        except sqlite3.OperationalError as exc:  # locked, unreadable, ...
            msg = f"cannot open memory database {path}: {exc}"
            raise PrivateMemoryError(msg) from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed
            msg = f"{path} is not a valid memory database ({exc})"
            raise PrivateMemoryError(msg) from exc
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            msg = f"cannot make memory database {path} owner-only: {exc}"
            raise PrivateMemoryError(msg) from exc
        return sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )

    @classmethod
    def for_user(cls, user: str, root: str | os.PathLike | None = None) -> PrivateMemory:
        """Open `<root>/<user>.db`; root defaults to $SPECSTEER_HOME or ~/.local/share/specsteer."""
        if not isinstance(user, str) or not _USER_RE.fullmatch(user):
            msg = (
                f"invalid user name {user!r}: use 1-128 characters from A-Z a-z 0-9 _ . - "
                "not starting with '.'"
            )
            raise PrivateMemoryError(msg)
        if root is None:
            root = os.environ.get("SPECSTEER_HOME") or DEFAULT_ROOT
        return cls(Path(root).expanduser() / f"{user}.db")

    @property
    def _where(self) -> str:
        return ":memory:" if self.path is None else str(self.path)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and turn SQLite failures into `PrivateMemoryError`."""
        with self._lock:
            if self._conn is None:
                msg = f"memory database {self._where} is closed"
                raise PrivateMemoryError(msg)
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                msg = f"memory database {self._where}: {exc}"
                raise PrivateMemoryError(msg) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Like `_read`, inside one immediate transaction, rolled back on any error."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    def add(
        self, texts: str | Sequence[str], metadata: dict | Sequence[dict] | None = None
    ) -> list[int]:
        """Store texts (with optional per-text metadata) in one transaction; return new ids."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if metadata is None:
            metadata = [{}] * len(texts)
        elif isinstance(metadata, Mapping):
            metadata = [metadata]
        else:
            metadata = list(metadata)
        if len(metadata) != len(texts):
            msg = f"metadata has {len(metadata)} item(s) but texts has {len(texts)}"
            raise PrivateMemoryError(msg)
        rows = []
        for i, (text, meta) in enumerate(zip(texts, metadata, strict=True)):
            if not isinstance(text, str):
                msg = f"texts[{i}] must be a str, got {type(text).__name__}"
                raise PrivateMemoryError(msg)
            if not text.strip():
                msg = f"texts[{i}] is empty or whitespace-only"
                raise PrivateMemoryError(msg)
            if meta is not None and not isinstance(meta, Mapping):
                msg = f"metadata[{i}] must be a dict, got {type(meta).__name__}"
                raise PrivateMemoryError(msg)
            try:
                blob = json.dumps(dict(meta or {}), allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                msg = f"metadata[{i}] is not JSON-serialisable: {exc}"
                raise PrivateMemoryError(msg) from exc
            rows.append((text, blob))
        if not rows:
            return []
        now = time.time()
        with self._write() as conn:
            ids = [
                conn.execute(
                    "INSERT INTO entries (text, metadata, created_at) VALUES (?, ?, ?)",
                    (text, blob, now),
                ).lastrowid
                for text, blob in rows
            ]
            self._bump(conn)
        return ids

    def get(self, ids: Sequence[int]) -> list[MemoryEntry]:
        """Entries for `ids`, in that order; missing ids are skipped."""
        ids = _as_ids(ids)
        found: dict[int, MemoryEntry] = {}
        with self._read() as conn:
            for chunk in _chunks(sorted(set(ids))):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, text, metadata, created_at FROM entries WHERE id IN ({marks})"
                found.update((row[0], _entry(row)) for row in conn.execute(sql, chunk))
        return [found[i] for i in ids if i in found]

    def delete(self, ids: int | Sequence[int]) -> int:
        """Delete entries (and their cached embeddings); return how many were deleted."""
        ids = sorted(set(_as_ids(ids)))
        deleted = 0
        with self._write() as conn:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM entries WHERE id IN ({marks})", chunk
                ).rowcount
            if deleted:
                self._bump(conn)
        return deleted

    def clear(self) -> int:
        """Delete every entry; ids still never come back. Return how many were deleted."""
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM entries").rowcount
            if deleted:
                self._bump(conn)
        return deleted

    def list(self, limit: int | None = None, offset: int = 0) -> list[MemoryEntry]:
        """Entries by id ascending, one consistent snapshot."""
        if (limit is not None and limit < 0) or offset < 0:
            msg = f"limit and offset must be >= 0, got limit={limit}, offset={offset}"
            raise PrivateMemoryError(msg)
        sql = "SELECT id, text, metadata, created_at FROM entries ORDER BY id LIMIT ? OFFSET ?"
        with self._read() as conn:
            rows = conn.execute(sql, (-1 if limit is None else limit, offset)).fetchall()
        return [_entry(row) for row in rows]

    def __len__(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def __iter__(self) -> Iterator[MemoryEntry]:
        return iter(self.list())

    @property
    def revision(self) -> int:
        """Increases with every change to the entries, as seen by any process on this file."""
        with self._read() as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]

    def cached_embeddings(self, model: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Cached float32 vectors of `model` for those of `ids` that have one."""
        ids = sorted(set(_as_ids(ids)))
        out: dict[int, np.ndarray] = {}
        with self._read() as conn:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                sql = (
                    "SELECT entry_id, vector FROM embeddings "
                    f"WHERE model = ? AND entry_id IN ({marks})"
                )
                for entry_id, blob in conn.execute(sql, [model, *chunk]):
                    out[entry_id] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return out

    def cache_embeddings(self, model: str, vectors: Mapping[int, np.ndarray]) -> None:
        """Store 1-D vectors of `model` as float32; ids no longer in the store are skipped."""
        if not isinstance(model, str) or not model:
            msg = f"model must be a non-empty str, got {model!r}"
            raise PrivateMemoryError(msg)
        rows = []
        for key, vector in vectors.items():
            (entry_id,) = _as_ids([key])
            arr = np.asarray(vector, dtype="<f4")
            if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
                msg = f"embedding for id {entry_id} must be a finite, non-empty 1-D vector"
                raise PrivateMemoryError(msg)
            rows.append((entry_id, model, arr.tobytes(), entry_id))
        sql = (
            "INSERT OR REPLACE INTO embeddings (entry_id, model, vector) "
            "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM entries WHERE id = ?)"
        )
        with self._write() as conn:
            conn.executemany(sql, rows)

    def close(self) -> None:
        """Close the database; later calls raise `PrivateMemoryError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PrivateMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            if self._conn is None:
                return f"PrivateMemory({self._where!r}, closed)"
            return f"PrivateMemory({self._where!r}, entries={len(self)})"
