"""Moving a corpus between the embedded engines, and loading a Qdrant server's snapshot into Qdrant Edge.

A migration copies the stored vectors and payloads (no re-embedding) from qdrant-client's local mode to
a Qdrant Edge shard or back, checks that every point arrived, and records the new engine with the
collection in SQLite. The source is left as it was: delete its folder once the new engine serves well.

A snapshot of one shard of a server collection (``/collections/NAME/shards/0/snapshot``, e.g. of a
collection built by the seed's ``index_corpus.py``) unpacks into an Edge shard that is then searched
with no server running.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.db import Database
from core.corpus.edge_store import EdgeStore
from core.errors import GroundworkError, VectorStoreError
from core.corpus.vectorstore import QdrantStore, VectorStore

ProgressFn = Callable[[str, int, int], None]
BATCH = 1024


@dataclass
class MigrationReport:
    collection: str
    source: str
    target: str
    points: int
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.points:,} points of {self.collection!r} copied from {self.source} to {self.target} in "
                f"{self.seconds:.1f} s (no re-embedding). The source is untouched; delete it when you no longer "
                "need it.")


def _open(settings: Settings, engine: str) -> VectorStore:
    if engine == "local":
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return QdrantStore(path=str(settings.qdrant_path))
    return EdgeStore(settings.edge_path, auto_build=False)


def migrate(settings: Settings, to: str, collection: str | None = None, replace: bool = False,
            progress: ProgressFn | None = None) -> MigrationReport:
    """Copy a collection from the other embedded engine into ``to`` ("edge" or "local").

    Args:
        settings: the data dir and collection (``collection`` overrides the latter).
        to: the engine that will hold the collection.
        replace: drop a non-empty collection of that name in the target first (otherwise refuse).
        progress: called with (stage, done, total).

    Returns:
        What was copied, where from and where to.
    """
    import time

    if to not in ("edge", "local"):
        raise GroundworkError(f"Migrate to 'edge' or 'local', not {to!r}.")
    if settings.qdrant_url:
        raise GroundworkError("QDRANT_URL is set: migration is between the embedded engines only. Unset it, "
                              "or use a snapshot of the server's collection (`groundwork migrate --from-snapshot`).")
    name = collection or settings.collection
    source_engine = "local" if to == "edge" else "edge"
    started = time.monotonic()
    source = _open(settings, source_engine)
    try:
        if not source.exists(name):
            raise VectorStoreError(f"Collection {name!r} does not exist in the {source_engine} store at "
                                   f"{source.location}: nothing to migrate.")
        info = source.info(name)
        target = _open(settings, to)
        try:
            if target.exists(name):
                if target.count(name) and not replace:
                    raise VectorStoreError(
                        f"Collection {name!r} already holds {target.count(name):,} points in the {to} store at "
                        f"{target.location}. Pass --replace to overwrite it with the {source_engine} copy.")
                _drop(target, name)
            target.create(name, info.dim)
            done, offset = 0, None
            if progress:
                progress("copying vectors", 0, max(info.points, 1))
            while True:
                rows, offset = source.scroll(name, limit=BATCH, offset=offset, with_vectors=True)
                if rows:
                    target.upsert(name, [r["id"] for r in rows], [r["vector"] for r in rows],
                                  [r["payload"] for r in rows])
                    done += len(rows)
                    if progress:
                        progress("copying vectors", done, max(info.points, 1))
                if offset is None:
                    break
            copied = target.count(name)
            if copied != info.points:
                raise VectorStoreError(f"Migration of {name!r} copied {copied:,} of {info.points:,} points: run it "
                                       "again with --replace.")
            if isinstance(target, EdgeStore):
                target.build_index(name, progress=progress)
            report = MigrationReport(collection=name, source=source.location, target=target.location, points=copied)
        finally:
            target.close()
    finally:
        source.close()
    _record_engine(settings, name, to)
    report.seconds = time.monotonic() - started
    return report


def _drop(store: VectorStore, name: str) -> None:
    if isinstance(store, EdgeStore):
        store.drop(name)
    else:
        store._call(store._client.delete_collection, name)


def _record_engine(settings: Settings, collection: str, engine: str) -> None:
    if not settings.db_path.exists():
        return
    db = Database(settings.db_path)
    try:
        with db.write() as w:
            w.execute("UPDATE collections SET engine=? WHERE name=?", [engine, collection])
    finally:
        db.close()


def load_snapshot(settings: Settings, snapshot: str | Path, collection: str | None = None,
                  progress: ProgressFn | None = None) -> dict:
    """Load a server shard snapshot into the Edge shard of ``collection`` for offline search.

    A new collection is unpacked from the snapshot (it keeps the server's configuration and indexes);
    an existing one is brought up to the snapshot with Edge's ``update_from_snapshot``.

    Returns:
        The collection's name, points, dimension and where its shard is.
    """
    snapshot = Path(snapshot)
    if not snapshot.is_file():
        raise GroundworkError(f"{snapshot} is not a file: download the shard snapshot first "
                              "(GET /collections/NAME/shards/0/snapshot on the server).")
    name = collection or settings.collection
    store = EdgeStore(settings.edge_path, auto_build=False)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=settings.edge_path))
        try:
            if progress:
                progress("loading the snapshot", 0, 1)
            if store.exists(name):
                store.update_from_snapshot(name, snapshot, staging)
            else:
                from core.corpus.edge_store import _edge

                try:
                    _edge().EdgeShard.unpack_snapshot(str(snapshot), str(staging / "shard"))
                except Exception as e:
                    raise VectorStoreError(f"{snapshot} is not a Qdrant shard snapshot Edge can read "
                                           f"({type(e).__name__}: {str(e)[:200]}).") from None
                store.adopt_shard(name, staging / "shard")
            if progress:
                progress("loading the snapshot", 1, 1)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        info = store.info(name)
        return {"collection": name, "points": info.points, "dim": info.dim, "location": info.location}
    finally:
        store.close()
