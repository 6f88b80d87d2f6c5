"""SQLite access safe from worker threads: one write connection behind a lock, a read connection per thread.

WAL mode lets readers (the review page, the monitor) run while a batch writes, and lets the app and a
CLI batch share one data dir; a busy timeout absorbs the other process's short write transactions.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from core.errors import DataDirReadOnlyError, GroundworkError, NotFoundError
from core.schema import migrations

BUSY_TIMEOUT_S = 30.0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def loads(value: str | None, default: Any = None) -> Any:
    if value in (None, ""):
        return default
    return json.loads(value)


def fts_query(text: str) -> str:
    """User words → an FTS5 query that cannot be a syntax error (each word quoted, all required)."""
    words = [w.replace('"', "") for w in (text or "").split()]
    return " ".join(f'"{w}"' for w in words if w)


class DatabaseGoneError(GroundworkError):
    """The SQLite file was deleted, replaced or made read-only while open: nothing more can be saved to it."""


def _connect(path: Path, create: bool = True) -> sqlite3.Connection:
    # Without create, a missing file is an error instead of a new empty database (sqlite3.connect's default):
    # a reader on a deleted data dir, or a read-only command on a mistyped one, must not make one.
    target = str(path) if create else f"file:{quote(path.resolve().as_posix())}?mode=rw"
    conn = sqlite3.connect(target, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           uri=not create)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes: no journal-mode change, no migration, no -wal or -shm file created.

    A WAL database opened ``mode=ro`` still needs its -shm file; in a folder this user may not write, with no
    writer running (a writer keeps -wal and -shm in place), it cannot be created, and only ``immutable=1``
    reads the file: nothing can be changing it then.
    """
    base = f"file:{quote(path.resolve().as_posix())}?mode=ro"
    for uri in (base, base + "&immutable=1"):
        conn = sqlite3.connect(uri, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            if uri != base:
                raise
            continue
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return conn
    raise AssertionError("unreachable")


_STORAGE_ERRORS = ("readonly", "read-only", "disk i/o", "unable to open", "disk is full")


def _raise_if_storage(exc: sqlite3.OperationalError, path: Path) -> None:
    """SQLite errors that mean the file itself is gone or unwritable become one DatabaseGoneError."""
    if any(word in str(exc).lower() for word in _STORAGE_ERRORS):
        raise DatabaseGoneError(f"The database {path} cannot be written ({exc}): check that the file and its "
                                "folder still exist and are writable, then resume.") from None


class Database:
    """The workbench's SQLite file. Use :meth:`write` for every change and :meth:`rows`/:meth:`one` to read."""

    def __init__(self, path: str | Path, create: bool = True, read_only: str = ""):
        """Args:
            create: make the folder and the file if missing; False (read-only commands): raise NotFoundError.
            read_only: open without ever writing (a data dir this user may not write); the text is the
                one-line reason every write then fails with.
        """
        self.path = Path(path)
        self.read_only = read_only
        if (not create or read_only) and not self.path.is_file():
            raise NotFoundError(f"No workbench database at {self.path}: pass --data-dir (or set "
                                "GROUNDWORK_DATA_DIR) to the data dir you indexed or generated into.")
        if create and not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_conn = _connect_read_only(self.path) if read_only else _connect(self.path, create)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._writer = sqlite_utils.Database(self._write_conn)
        if read_only:
            self._local.conn = self._write_conn  # the opening thread reads on it; others open their own
            pending = [m.name for m in migrations.pending(self._writer)]
            if pending:
                self.close()
                raise DataDirReadOnlyError(f"{read_only} Also, the database {self.path} was made by an older "
                                           "version and must be upgraded first, which needs write access.")
        else:
            with self._write_lock:
                migrations.apply(self._writer)
        stat = self.path.stat()
        self._identity = (stat.st_dev, stat.st_ino)

    def check_writable(self) -> None:
        """Raise DatabaseGoneError if the file was deleted, replaced or made read-only since it was opened.

        SQLite does not notice by itself: an open connection goes on writing into a deleted file (or,
        as root, into a chmod 444 one), so a run would report saves that land nowhere anyone can read.
        """
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise DatabaseGoneError(f"The database {self.path} was deleted while open: nothing more can be "
                                    "saved; restore the file (or start over) and run again.") from None
        except OSError as exc:
            raise DatabaseGoneError(f"The database {self.path} cannot be reached ({exc.strerror}).") from None
        if (stat.st_dev, stat.st_ino) != self._identity:
            raise DatabaseGoneError(f"The database {self.path} was replaced by another file while open: "
                                    "stopped so nothing is written to the old one.")
        if self.read_only:
            raise DataDirReadOnlyError(self.read_only)
        # os.access alone says yes to root; the mode bits say what the owner meant.
        if not os.access(self.path, os.W_OK) or not stat.st_mode & 0o222:
            raise DatabaseGoneError(f"The database {self.path} became read-only while open: make it writable "
                                    "again (chmod u+w) and resume; what was saved is kept.")

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One serialized write transaction; commits on exit, rolls back on error.

        Raises:
            DatabaseGoneError: the file was deleted, replaced or made read-only (checked before each write).
        """
        with self._write_lock:
            db = self._writer
            if self._write_conn.in_transaction:  # nested: the outer block commits
                yield db
                return
            self.check_writable()
            try:
                self._write_conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                _raise_if_storage(exc, self.path)
                raise
            try:
                yield db
            except BaseException as exc:
                if self._write_conn.in_transaction:
                    self._write_conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    _raise_if_storage(exc, self.path)
                raise
            else:
                try:
                    self._write_conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    if self._write_conn.in_transaction:
                        self._write_conn.execute("ROLLBACK")
                    _raise_if_storage(exc, self.path)
                    raise

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = _connect_read_only(self.path) if self.read_only else _connect(self.path, create=False)
            except sqlite3.OperationalError:
                if not self.read_only:
                    self.check_writable()  # deleted: say so, rather than "unable to open database file"
                raise
            self._local.conn = conn
            self._read_conns.append(conn)
        return conn

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._reader().execute(sql, params).fetchall()]

    def iter_rows(self, sql: str, params: Any = (), batch: int = 500) -> Iterator[dict[str, Any]]:
        """Stream rows without holding them all in memory (large exports)."""
        cur = self._reader().execute(sql, params)
        while chunk := cur.fetchmany(batch):
            for r in chunk:
                yield dict(r)

    def one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        row = self._reader().execute(sql, params).fetchone()
        return dict(row) if row else None

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self._reader().execute(sql, params).fetchone()
        return row[0] if row else None

    @property
    def schema(self) -> str:
        return sqlite_utils.Database(self._reader()).schema

    def table_names(self) -> list[str]:
        return sqlite_utils.Database(self._reader()).table_names()

    def close(self) -> None:
        for conn in [self._write_conn, *self._read_conns]:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass
