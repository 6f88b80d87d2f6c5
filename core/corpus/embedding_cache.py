"""Vectors already computed, kept on this machine by model and text so the same text is never embedded twice.

The same texts get embedded again and again: the sample corpus in the demo data dir and in your own, a corpus
re-indexed into a new collection (the grounding checks' sentences do not change with the chunk size), answers
graded again, a team's data dirs holding the same documents. One SQLite file outside every data dir
(``~/.cache/groundwork/embeddings.sqlite`` by default) keeps each vector under a fingerprint of the model that
made it and a hash of the text, so those repeats cost a lookup instead of model time.

What it holds: SHA-256 prefixes of texts and float32 vectors, never the text itself. Vectors are exactly what the
model returned, so a passage indexed from the cache is the passage indexed without it. The key is the model's
behaviour (dimension, pooling, normalisation, sequence length and its probe vector, see ``Embedder.cache_key``),
not its name: two names for one model share vectors, two models under one name never do. The file is bounded
(oldest vectors go first) and is only a cache: when it cannot be opened or written (a read-only home, a full
disk, another user's file) embedding goes on without it, and deleting it loses nothing but time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OFF = "off"
PRUNE_TO = 0.9  # a full cache drops its oldest vectors down to 90% of its bound, not one insert's worth at a time


def default_path() -> Path:
    """~/.cache/groundwork/embeddings.sqlite, under XDG_CACHE_HOME when that is set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "groundwork" / "embeddings.sqlite"


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class EmbeddingCache:
    """One SQLite file of vectors by (model fingerprint, text hash); thread-safe, shared by processes.

    Args:
        path: the file (created with its folder, readable by this user only).
        max_mb: the most it may hold; beyond it the oldest vectors are dropped as new ones arrive.
    """

    def __init__(self, path: Path | str, max_mb: int = 512):
        self.path = Path(path).expanduser()
        self.max_bytes = max(1, int(max_mb)) * 1024 * 1024
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._timeout_s = 10.0  # how long a call waits for another process's write before going on without
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_setting(cls, value: str, max_mb: int = 512) -> EmbeddingCache | None:
        """The cache a setting names: "" the default file, "off" none, anything else a file path."""
        value = (value or "").strip()
        if value.lower() == OFF:
            return None
        return cls(Path(value) if value else default_path(), max_mb=max_mb)

    @property
    def usable(self) -> bool:
        return self._broken is None

    def _failed(self, error: BaseException) -> None:
        """A busy file (another process writing for longer than the timeout) costs this call only; anything else
        (no folder, another user's file, a corrupt or full disk) turns the cache off for this process."""
        if isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error)):
            return
        if self._broken is None:
            self._broken = f"{type(error).__name__}: {error}"
            log.info("Embedding cache %s is not usable (%s); embedding without it.", self.path, self._broken)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created for this user alone before SQLite opens it: vectors of private documents stay private.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        # Vectors from a file someone else could write would be trusted as this model's: only our own, private file.
        info = os.stat(self.path, follow_symlinks=False)
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isfile(self.path):
            raise PermissionError(f"{self.path} is not a private file of this user (owner {info.st_uid}, "
                                  f"mode {info.st_mode & 0o777:o})")
        conn = sqlite3.connect(str(self.path), timeout=self._timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a cache: a power cut may lose the last vectors, never corrupt
        conn.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, key BLOB NOT NULL, "
                     "vec BLOB NOT NULL, PRIMARY KEY (model, key))")
        return conn

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors on record for ``texts`` under ``model`` (texts not found are simply absent)."""
        if self._broken or not texts:
            return {}
        keys = {text_key(t): t for t in texts}
        items = list(keys)
        out: dict[str, np.ndarray] = {}
        try:
            with self._lock:
                conn = self._connect()
                try:
                    for i in range(0, len(items), 500):
                        part = items[i:i + 500]
                        rows = conn.execute(f"SELECT key, vec FROM vectors WHERE model=? AND key IN "
                                            f"({','.join('?' * len(part))})", [model, *part]).fetchall()
                        for key, blob in rows:
                            out[keys[key]] = np.frombuffer(blob, dtype=np.float32).copy()
                finally:
                    conn.close()
                self.hits += len(out)
                self.misses += len(keys) - len(out)
        except (sqlite3.Error, OSError) as e:
            self._failed(e)
            return {}
        return out

    def put_many(self, model: str, vectors: Iterable[tuple[str, np.ndarray]]) -> None:
        """Keep ``vectors`` (text, vector) under ``model``, dropping the oldest beyond the size bound."""
        if self._broken:
            return
        rows = [(model, text_key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in vectors]
        if not rows:
            return
        try:
            with self._lock:
                conn = self._connect()
                try:
                    with conn:
                        conn.executemany("INSERT OR IGNORE INTO vectors (model, key, vec) VALUES (?, ?, ?)", rows)
                        self._prune(conn)
                finally:
                    conn.close()
        except (sqlite3.Error, OSError) as e:
            self._failed(e)

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Past the bound, drop the oldest vectors. The bytes in use are read from SQLite (pages not free), not
        estimated: a 1.5 KB vector takes half a 4 KB page plus its key's index entry. Rowids grow with every
        insert, so the lowest are the oldest: a range delete, no scan; freed pages are reused by later inserts."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (conn.execute("PRAGMA page_count").fetchone()[0]
                - conn.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
        if used <= self.max_bytes:
            return
        low, high = conn.execute("SELECT MIN(rowid), MAX(rowid) FROM vectors").fetchone()
        if low is None:
            return
        keep = int((high - low + 1) * PRUNE_TO * self.max_bytes / used)
        conn.execute("DELETE FROM vectors WHERE rowid <= ?", [high - keep])
