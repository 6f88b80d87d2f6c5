"""Opens the vector store only while someone in this process needs it, so the app and a CLI batch can
take turns on one embedded store folder.

Qdrant local mode locks its folder to one client per process. If the app held it for its whole life,
a scheduled CLI batch on the same data dir could never run. The hub opens the store on first use,
shares it between threads while any user holds it, and closes it after a short idle time.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.config import Settings
from core.corpus.edge_store import EdgeStore
from core.corpus.sparse_copy import copy_tree
from core.errors import StoreLockedError
from core.corpus.vectorstore import QdrantStore, VectorStore


class StoreHub:
    """Reference-counted, lazily opened store.

    Args:
        opener: builds a store (raises StoreLockedError when another process holds the folder).
        idle_close_s: how long the store stays open after its last user; 0 closes at once.
        wait_for_lock_s: how long to keep retrying when another process holds the folder.
    """

    def __init__(self, opener: Callable[[], VectorStore], idle_close_s: float = 5.0,
                 wait_for_lock_s: float = 0.0):
        self._opener = opener
        self.idle_close_s = idle_close_s
        self.wait_for_lock_s = wait_for_lock_s
        self._lock = threading.Condition()
        self._store: VectorStore | None = None
        self._users = 0
        self._last_release = 0.0
        self._closer: threading.Timer | None = None

    @contextmanager
    def use(self) -> Iterator[VectorStore]:
        with self._lock:
            if self._closer is not None:
                self._closer.cancel()
                self._closer = None
            if self._store is None:
                self._store = self._open_with_wait()
            self._users += 1
            store = self._store
        try:
            yield store
        finally:
            with self._lock:
                self._users -= 1
                self._last_release = time.monotonic()
                if self._users == 0:
                    if self.idle_close_s <= 0:
                        self._close_locked()
                    else:
                        self._closer = threading.Timer(self.idle_close_s, self._close_if_idle)
                        self._closer.daemon = True
                        self._closer.start()

    def _open_with_wait(self) -> VectorStore:
        deadline = time.monotonic() + self.wait_for_lock_s
        while True:
            try:
                return self._opener()
            except StoreLockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._users == 0 and time.monotonic() - self._last_release >= self.idle_close_s * 0.9:
                self._close_locked()

    def _close_locked(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def is_open(self) -> bool:
        return self._store is not None

    def close(self) -> None:
        with self._lock:
            if self._closer is not None:
                self._closer.cancel()
                self._closer = None
            self._close_locked()


def open_store(settings: Settings, read_only: bool = False) -> VectorStore:
    """The configured vector store: a server for a URL, else the embedded engine (Edge or local mode).

    Here rather than in ``core.corpus.vectorstore``: the Edge store builds on that module's types, so the choice
    between them sits above both. read_only: the data dir may not be written; an embedded store is opened on a private copy (see
    :class:`ReadOnlyCopy`).
    """
    if settings.qdrant_url:
        return QdrantStore(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
    if read_only:
        return ReadOnlyCopy.open(settings)
    if settings.embedded_engine == "local":
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return QdrantStore(path=str(settings.qdrant_path))
    return EdgeStore(settings.edge_path, legacy_local_path=settings.qdrant_path)


class ReadOnlyCopy:
    """An embedded store opened on a private copy of its folder, removed again on close.

    Neither Qdrant Edge (its WAL) nor local mode (its lock file) opens a folder it may not write, so a data dir
    of another user is searched from a copy in the temp folder: a reading command never changes the original.
    The copy costs a read of the store's files (milliseconds for the sample corpus; about a second per few
    hundred MB).
    """

    def __init__(self, store: VectorStore, folder: Path):
        self._store = store
        self._folder = folder
        self.engine = store.engine

    @classmethod
    def open(cls, settings: Settings) -> "ReadOnlyCopy":
        local = settings.embedded_engine == "local"
        source = settings.qdrant_path if local else settings.edge_path
        folder = Path(tempfile.mkdtemp(prefix="groundwork-readonly-store-"))
        try:
            target = folder / source.name
            if source.is_dir():
                # In-progress builds and swaps are the writer's business: only live shards are copied.
                copy_tree(source, target, ignore=shutil.ignore_patterns(".build-*", ".old-*", "*.lock", ".lock"))
            else:
                target.mkdir()
            if local:
                return cls(QdrantStore(path=str(target)), folder)
            return cls(EdgeStore(target, legacy_local_path=settings.qdrant_path, auto_build=False), folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def close(self) -> None:
        try:
            self._store.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
