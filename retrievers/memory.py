"""An on-device SQLite store of a user's private history; nothing in it ever leaves the machine.

One file per user (`PrivateMemory.for_user`), readable by its owner only (0o600, folders 0o700);
a path that is a symbolic link is refused, and `read_only=True` opens a store for reading alone.
Entries keep stable, never-reused ids; a persisted `revision` lets retrievers cache their
index per revision, also across processes; dense retrievers cache each entry's embedding per
model next to the entry, and the cached embeddings go when their entry goes.
"""

from __future__ import annotations

import errno
import json
import operator
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
_INT64 = 2**63  # SQLite integers are signed 64-bit: ids, limits and offsets lie below this
MAX_METADATA_DEPTH = 100  # levels of nested dicts and lists in one entry's metadata
_SIDECARS = ("-wal", "-shm", "-journal")  # files SQLite keeps next to the database

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
    """Normalise one id or a sequence of ids to a list of ints SQLite can hold."""
    try:
        out = [operator.index(ids)]  # one id
    except TypeError:
        try:
            out = [operator.index(i) for i in ids]
        except TypeError as exc:
            msg = f"ids must be integers, got {ids!r}"
            raise PrivateMemoryError(msg) from exc
    for i in out:
        if not -_INT64 <= i < _INT64:
            msg = f"id {i} is out of range: ids are 64-bit integers, below 2**63"
            raise PrivateMemoryError(msg)
    return out


def _as_texts(texts: object) -> list:
    """One str, or an iterable of them (checked one by one later), as a list."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes | bytearray | Mapping) or not isinstance(texts, Iterable):
        msg = f"texts must be a str or a list of str, got {type(texts).__name__}"
        raise PrivateMemoryError(msg)
    return list(texts)


def _as_metadata(metadata: object, count: int) -> list:
    """None, one dict, or an iterable of per-text dicts, as a list of `count` items."""
    if metadata is None:
        return [{}] * count
    if isinstance(metadata, Mapping):
        out = [metadata]
    elif isinstance(metadata, str | bytes | bytearray) or not isinstance(metadata, Iterable):
        msg = (
            "metadata must be a dict or a list of dicts (one per text), "
            f"got {type(metadata).__name__}"
        )
        raise PrivateMemoryError(msg)
    else:
        out = list(metadata)
    if len(out) != count:
        msg = f"metadata has {len(out)} item(s) but texts has {count}"
        raise PrivateMemoryError(msg)
    return out


def _nested_deeper_than(value: object, limit: int) -> bool:
    """Whether dicts and lists nest deeper than `limit` levels in `value` (no recursion)."""
    stack = [(value, 0)]
    while stack:  # depth-first, so a self-referencing value stops at the limit
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _metadata_blob(meta: object, i: int) -> str:
    """One entry's metadata as the JSON text stored, or `PrivateMemoryError` saying why not."""
    if meta is not None and not isinstance(meta, Mapping):
        msg = f"metadata[{i}] must be a dict, got {type(meta).__name__}"
        raise PrivateMemoryError(msg)
    if _nested_deeper_than(meta, MAX_METADATA_DEPTH):
        msg = (
            f"metadata[{i}] nests dicts or lists deeper than {MAX_METADATA_DEPTH} levels "
            "(or contains itself)"
        )
        raise PrivateMemoryError(msg)
    try:
        blob = json.dumps(dict(meta or {}), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        msg = f"metadata[{i}] is not JSON-serialisable: {exc}"
        raise PrivateMemoryError(msg) from exc
    _check_unicode(blob, f"metadata[{i}]")
    return blob


def _check_unicode(text: str, name: str) -> None:
    """Refuse a str SQLite cannot store as UTF-8 (one holding a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"{name} is not valid Unicode text: it holds a lone surrogate ({exc.reason})"
        raise PrivateMemoryError(msg) from exc


def _check_model(model: object) -> str:
    """An embedding model's cache key: a non-empty, valid str."""
    if not isinstance(model, str) or not model:
        msg = f"model must be a non-empty str, got {model!r}"
        raise PrivateMemoryError(msg)
    _check_unicode(model, "model")
    return model


def _check_count(name: str, value: object) -> int:
    """A limit or offset: an integer from 0 to 2**63 - 1."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or not 0 <= number < _INT64:
        msg = f"{name} must be an integer from 0 to 2**63 - 1, got {value!r}"
        raise PrivateMemoryError(msg)
    return number


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


def _refuse_symlinks(path: Path) -> None:
    """Refuse a database path, or a sidecar SQLite would open, that is a symbolic link."""
    for name in ("", *_SIDECARS):
        candidate = path.with_name(path.name + name)
        if candidate.is_symlink():
            msg = (
                f"memory database {path}: {candidate} is a symbolic link (to "
                f"{os.readlink(candidate)}); refusing to follow it, as it could make another "
                "file a database; open the real path instead"
            )
            raise PrivateMemoryError(msg)


def _refuse_read_only_file(path: Path) -> None:
    """Refuse to open for writing a file its owner made read-only (root could write it)."""
    st = os.lstat(path) if os.path.lexists(path) else None
    if st is not None and stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWUSR:
        msg = (
            f"memory database {path} is read-only (mode {st.st_mode & 0o777:o}): "
            "open it with read_only=True, or make it writable (chmod u+w)"
        )
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


def _make_owner_only(path: Path, *, missing_ok: bool = False) -> None:
    """chmod 0o600 through a descriptor opened without following a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return
        msg = f"cannot make memory database file {path} owner-only: {exc}"
        raise PrivateMemoryError(msg) from exc


class PrivateMemory:
    """A user's private history on this device: texts, metadata and cached embeddings."""

    def __init__(self, path: str | os.PathLike = ":memory:", *, read_only: bool = False):
        """Open (creating it unless `read_only`) the store at `path`, or one in this process."""
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        if not isinstance(read_only, bool):
            msg = f"read_only must be True or False, got {read_only!r}"
            raise PrivateMemoryError(msg)
        self.read_only = read_only  # reads only; SQLite itself refuses writes (mode=ro)
        if isinstance(path, str) and path == ":memory:":
            if read_only:
                msg = "read_only=True needs the path of an existing memory database, not :memory:"
                raise PrivateMemoryError(msg)
            self.path: Path | None = None
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self.path = Path(path).expanduser().absolute()
            conn = self._open_file(self.path, read_only)
        self._conn = conn
        try:
            with self._read() as c:
                c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                c.execute("PRAGMA foreign_keys = ON")
                if self.path is not None and not read_only:
                    c.execute("PRAGMA journal_mode = WAL")
            if read_only:
                with self._read() as c:
                    if not _check_schema(c, self._where):
                        msg = (
                            f"{self._where} is empty, not yet a memory database: "
                            "open it once without read_only=True to create one"
                        )
                        raise PrivateMemoryError(msg)
            else:
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
        if self.path is not None and not read_only:
            for sidecar in _SIDECARS:  # SQLite copies the file's mode; older ones may not
                _make_owner_only(self.path.with_name(self.path.name + sidecar), missing_ok=True)

    @staticmethod
    def _open_file(path: Path, read_only: bool) -> sqlite3.Connection:
        """Refuse links; create the file owner-only (unless read-only), check it, connect."""
        try:
            _refuse_symlinks(path)
            if read_only:
                os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
            else:
                _refuse_read_only_file(path)
                _make_dirs(path.parent)
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                os.close(os.open(path, flags, 0o600))  # a link made since the check: ELOOP
        except PrivateMemoryError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a path that cannot be encoded
            if read_only and isinstance(exc, FileNotFoundError):
                msg = f"memory database {path} does not exist (read_only=True never creates one)"
            elif getattr(exc, "errno", None) == errno.ELOOP:
                msg = f"memory database {path} is a symbolic link; refusing to follow it"
            else:
                msg = f"cannot open memory database {path}: {exc}"
            raise PrivateMemoryError(msg) from exc
        uri = f"{path.as_uri()}?mode=ro"
        try:
            probe = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
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
        if read_only:
            return sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
        _make_owner_only(path)
        return sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )

    @classmethod
    def for_user(
        cls, user: str, root: str | os.PathLike | None = None, *, read_only: bool = False
    ) -> PrivateMemory:
        """Open `<root>/<user>.db`; root defaults to $SPECSTEER_HOME or ~/.local/share/specsteer."""
        if not isinstance(user, str) or not _USER_RE.fullmatch(user):
            msg = (
                f"invalid user name {user!r}: use 1-128 characters from A-Z a-z 0-9 _ . - "
                "not starting with '.'"
            )
            raise PrivateMemoryError(msg)
        if root is None:
            root = os.environ.get("SPECSTEER_HOME") or DEFAULT_ROOT
        return cls(Path(root).expanduser() / f"{user}.db", read_only=read_only)

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
        if self.read_only:
            msg = f"memory database {self._where} is open read-only (read_only=True)"
            raise PrivateMemoryError(msg)
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
        texts = _as_texts(texts)
        metadata = _as_metadata(metadata, len(texts))
        rows = []
        for i, (text, meta) in enumerate(zip(texts, metadata, strict=True)):
            if not isinstance(text, str):
                msg = f"texts[{i}] must be a str, got {type(text).__name__}"
                raise PrivateMemoryError(msg)
            if not text.strip():
                msg = f"texts[{i}] is empty or whitespace-only"
                raise PrivateMemoryError(msg)
            _check_unicode(text, f"texts[{i}]")
            rows.append((text, _metadata_blob(meta, i)))
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
        limit = None if limit is None else _check_count("limit", limit)
        offset = _check_count("offset", offset)
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
        model = _check_model(model)
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
        """Store 1-D vectors of `model` as float32; ids no longer in the store are skipped.

        A read-only store keeps nothing: the cache only saves work, so searches still run.
        """
        model = _check_model(model)
        rows = []
        for key, vector in vectors.items():
            (entry_id,) = _as_ids([key])
            arr = np.asarray(vector, dtype="<f4")
            if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
                msg = f"embedding for id {entry_id} must be a finite, non-empty 1-D vector"
                raise PrivateMemoryError(msg)
            rows.append((entry_id, model, arr.tobytes(), entry_id))
        if self.read_only:
            return
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
