"""SQLite access safe from worker threads: one write connection behind a lock, a read connection per thread.

WAL mode lets readers (the review page, the monitor) run while a batch writes, and lets the app and a
CLI batch share one data dir; a busy timeout absorbs the other process's short write transactions.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    return conn


class Database:
    """The workbench's SQLite file. Use :meth:`write` for every change and :meth:`rows`/:meth:`one` to read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_conn = _connect(self.path)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._writer = sqlite_utils.Database(self._write_conn)
        with self._write_lock:
            migrations.apply(self._writer)

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One serialized write transaction; commits on exit, rolls back on error."""
        with self._write_lock:
            db = self._writer
            if self._write_conn.in_transaction:  # nested: the outer block commits
                yield db
                return
            self._write_conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                self._write_conn.execute("ROLLBACK")
                raise
            else:
                self._write_conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
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
