"""Qdrant Edge as the embedded vector store: the Qdrant engine itself in-process, one shard folder per collection.

Edge keeps vectors and payloads on disk (memory-mapped), writes every update to a WAL, filters with payload
indexes and builds HNSW, so one laptop holds corpora far past local mode's ~20k points. Facts this module
is built on, measured with qdrant-edge-py 0.9.0 on this project's 2-core machine:

- A full scan is fast and always right: exact float32 search over 100k 384-dim vectors takes ~15 ms on
  a quiet machine (memory-bound). Once the index is built, a scan of int8 copies (scalar quantization,
  kept in RAM) rescored in float32 on the best ``k * SCAN_OVERSAMPLING`` takes ~2.5 ms with recall@3 1.0
  against numpy (on random vectors at 100k and on real MiniLM embeddings at 10k and 18.6k; 0.90 with no
  oversampling, 0.993 at 2). Below :data:`SCAN_MIN_POINTS`, or before the build, search is plain exact.
  Beyond :data:`EXACT_MAX_POINTS` search is HNSW (m=16) with ``hnsw_ef`` :data:`HNSW_EF`: recall@3 0.998
  against exact on 300k real-derived MiniLM vectors (0.988 at the default ef, 0.993 at 128, 1.0 at 512).
  HNSW on random vectors stays inexact at any ef, so it is kept for sizes where a scan gets slow.
- ``query`` releases the GIL, ``optimize`` does not: an in-process index build would freeze every thread
  of the app for its whole duration (70 s for HNSW at 100k). The build therefore runs in a child process
  on a copy of the shard and is swapped in when done, if nothing was written meanwhile; searches go on
  against the live shard throughout and pause only for the swap (one reopen, ~0.1 s).
- Below the HNSW threshold shards are created with ``m=0`` (no graph): ``optimize`` then only turns the
  appendable segment into immutable, multi-segment storage (seconds at 100k), which is what makes exact
  search parallel and reopening cheap.
- Reopening is bounded by what Edge reads into RAM, not by this module (our own work at open is ~1 ms):
  Edge drops the page cache of every file it loads into RAM when a shard closes, so each start reads those
  files from disk again. At 100k points the float32 vectors (150 MB, populated at load by default) took
  ~90 ms of a ~290 ms open and the in-RAM keyword index on ``document_id`` ~35 ms. The scan build therefore
  keeps the float32 vectors memory-mapped (``Memory.Cold``: they are only read to rescore ``k *
  SCAN_OVERSAMPLING`` candidates, a few page faults) and the document index on disk; reopen + first search
  at 100k is then ~0.11-0.15 s. What remains is fixed by Edge: the int8 copies (39 MB, read at load,
  ~50-80 ms at 100k), the id tracker (~15 ms), the last closed WAL segment (~10 ms) and a flush on load.
  HNSW builds keep their vectors in RAM: graph search reads them on every hop.
- Two processes cannot open one shard with its WAL on (``Can't init WAL: Kind(WouldBlock)``); this is
  reported with the same message as a locked local-mode folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import VectorStoreError
from core.corpus.vectorstore import CollectionInfo, Hit, PointFilter, _translate
from core.corpus.sparse_copy import copy_tree

SCAN_MIN_POINTS = 10_000  # from here, once built: a full scan of int8 copies, rescored in float32
SCAN_OVERSAMPLING = 4.0  # candidates rescored per result: recall@3 1.0 from 3.0 on, measured (see below)
EXACT_MAX_POINTS = 200_000  # full scans up to this many points; HNSW beyond (see bench/vectorstore.py)
HNSW_EF = 256  # ef at query time beyond EXACT_MAX_POINTS
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
OPTIMIZE_MIN_POINTS = 5_000  # un-optimized points that make a background index build worth it
EDGE_COMFORT_POINTS = 5_000_000  # past this a Qdrant server (more cores, replicas) serves better
BUILD_DEBOUNCE_S = 3.0  # the background build starts this long after the last write
# Rough build rates on this machine (points/s), only for the progress estimate.
_RATE_PLAIN = 30_000
_RATE_HNSW = 1_400

GEN_FILE = "groundwork.json"  # write generation: a build of an older copy is never swapped in
BUILT_FILE = "groundwork-built.json"
PID_FILE = "groundwork-build.pid"
DOCUMENT_KEY = "document_id"

ProgressFn = Callable[[str, int, int], None]

# Build processes this process started, by build folder: a store reopened later in the same process must
# reap them (a finished but unreaped child still looks alive to os.kill(pid, 0)).
_CHILDREN: dict[str, subprocess.Popen] = {}
_CHILDREN_LOCK = threading.Lock()


class _RWLock:
    """Many readers or one writer; searches share it, a shard swap or close takes it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._local = threading.local()

    def read(self) -> "_Guard":
        return _Guard(self, False)

    def write(self) -> "_Guard":
        return _Guard(self, True)

    def acquire(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                # A waiting writer holds new readers back: a tight search loop must not starve a swap.
                self._writers_waiting += 1
                try:
                    while self._writer or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = True
            else:
                # A thread already reading may read again (info() counts) without queueing behind a writer.
                depth = getattr(self._local, "depth", 0)
                while self._writer or (self._writers_waiting and not depth):
                    self._cond.wait()
                self._readers += 1
                self._local.depth = depth + 1

    def release(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                self._writer = False
            else:
                self._readers -= 1
                self._local.depth -= 1
            self._cond.notify_all()


class _Guard:
    def __init__(self, lock: _RWLock, exclusive: bool):
        self.lock, self.exclusive = lock, exclusive

    def __enter__(self):
        self.lock.acquire(self.exclusive)
        return self

    def __exit__(self, *exc):
        self.lock.release(self.exclusive)
        return False


def _edge():
    try:
        import qdrant_edge
    except ImportError:
        raise VectorStoreError("Qdrant Edge is not installed: run `bash scripts/setup.sh` (it installs "
                               "qdrant-edge-py), or set GROUNDWORK_EMBEDDED_ENGINE=local.") from None
    return qdrant_edge


def vector_params(shard_dir: Path) -> tuple[str, int, str]:
    """(vector name, dimension, distance) of a shard, from its config or, for a shard unpacked from a
    server snapshot that has none yet, from its first segment."""
    config = shard_dir / "edge_config.json"
    if config.exists():
        vectors = json.loads(config.read_text()).get("vectors") or {}
        if vectors:
            name, params = next(iter(vectors.items()))
            return name, int(params["size"]), str(params["distance"])
    for seg in sorted((shard_dir / "segments").glob("*/segment.json")):
        vectors = json.loads(seg.read_text()).get("config", {}).get("vector_data") or {}
        if vectors:
            name, params = next(iter(vectors.items()))
            return name, int(params["size"]), str(params["distance"])
    raise VectorStoreError(f"{shard_dir} holds no dense vectors Groundwork can search.")


def is_shard(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / "segments").is_dir()


def _read_gen(shard_dir: Path) -> int:
    try:
        return int(json.loads((shard_dir / GEN_FILE).read_text())["generation"])
    except (OSError, ValueError, KeyError):
        return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (finished, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


class EdgeStore:
    """Qdrant Edge shards under one folder (``root/<collection>/``), behind the VectorStore interface.

    Args:
        root: the folder holding one shard per collection (the data dir's ``qdrant-edge/``).
        legacy_local_path: the local-mode folder of the same data dir. A collection that exists there but
            not here is reported with how to migrate it, instead of silently looking empty.
        auto_build: build the index in the background after writes settle (off for one-shot tools).
    """

    engine = "edge"

    def __init__(self, root: str | Path, legacy_local_path: str | Path | None = None, auto_build: bool = True):
        self.root = Path(root)
        self.location = str(self.root)
        self.legacy_local_path = Path(legacy_local_path) if legacy_local_path else None
        self.auto_build = auto_build
        self._lock = _RWLock()
        self._write_lock = threading.RLock()  # one writer at a time, and no write while a build copies
        self._shards: dict[str, Any] = {}
        self._vec: dict[str, tuple[str, int, str]] = {}
        self._points: dict[str, int] = {}
        self._indexed: dict[str, int] = {}
        self._gen: dict[str, int] = {}
        self._stale: dict[str, bool] = {}  # built with an older layout that opens slower: rebuild once
        self._timers: dict[str, threading.Timer] = {}
        self._builds: dict[str, dict[str, Any]] = {}
        self._closed = threading.Event()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for path in sorted(self.root.iterdir()):
                if path.name.startswith(".old-"):
                    self._recover_swap(path.name[len(".old-"):])
            for path in sorted(self.root.iterdir()):
                if is_shard(path):
                    self._open(path.name)
                    self._adopt_or_clean(path.name)
        except BaseException:
            self.close()
            raise
        for collection in list(self._shards):  # e.g. indexed by a CLI run that exited before its build
            self._schedule_build(collection)

    # ---- opening, paths -----------------------------------------------------------------------
    def _path(self, collection: str) -> Path:
        if not collection or "/" in collection or collection.startswith("."):
            raise VectorStoreError(f"{collection!r} is not a usable collection name.")
        return self.root / collection

    def _build_dir(self, collection: str) -> Path:
        return self.root / f".build-{collection}"

    def _open(self, collection: str) -> None:
        path = self._path(collection)
        try:
            shard = _edge().EdgeShard.load(str(path))
        except VectorStoreError:
            raise
        except Exception as e:
            raise _translate(e, self.location, "edge") from None
        self._shards[collection] = shard
        self._vec[collection] = vector_params(path)
        self._gen[collection] = _read_gen(path)
        info = self._refresh_counts(collection)
        self._stale[collection] = self._stale_layout(collection, info)

    def _refresh_counts(self, collection: str):
        info = self._shards[collection].info()
        self._points[collection] = int(info.points_count)
        self._indexed[collection] = int(info.indexed_vectors_count)
        return info

    def _stale_layout(self, collection: str, info) -> bool:
        """True for a shard this module built before the scan layout kept vectors and the document index on
        disk (see the module notes): it works, but every open reads ~125 MB more at 100k points."""
        config = self._config(collection)
        if not config.get("quantization_config"):  # never built here (new, or a server snapshot): nothing to redo
            return False
        if self._points.get(collection, 0) <= EXACT_MAX_POINTS and not self._hnsw_built(config):
            vectors = next(iter((config.get("vectors") or {}).values()), {})
            if str(vectors.get("memory", "")).lower() != "cold":
                return True
        index = (info.payload_schema or {}).get(DOCUMENT_KEY)
        return index is not None and not _on_disk(_edge(), index.params)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VectorStoreError:
            raise
        except Exception as e:
            raise _translate(e, self.location, "edge") from None

    def _shard(self, collection: str):
        shard = self._shards.get(collection)
        if shard is None:
            if self._closed.is_set():
                raise VectorStoreError(f"The Qdrant Edge store at {self.location} is closed.")
            self._check_legacy(collection)
            raise VectorStoreError(f"Collection not found in Qdrant at {self.location}: index a corpus first "
                                   "(Corpus page, or `groundwork index sample_data/`).")
        return shard

    def _check_legacy(self, collection: str) -> None:
        if self.legacy_local_path and (self.legacy_local_path / "collection" / collection).is_dir():
            raise VectorStoreError(
                f"Collection {collection!r} is in Qdrant local mode ({self.legacy_local_path}), not in Qdrant "
                f"Edge ({self.location}). Move it without re-embedding: `groundwork migrate --to edge "
                f"--collection {collection}`; or keep using local mode: GROUNDWORK_EMBEDDED_ENGINE=local.")

    # ---- the VectorStore interface --------------------------------------------------------------
    def create(self, collection: str, dim: int) -> None:
        if self.exists(collection):
            return
        edge = _edge()
        path = self._path(collection)
        with self._write_lock, self._lock.write():
            if collection in self._shards:
                return
            config = edge.EdgeConfig(
                vectors={"": edge.EdgeVectorParams(size=int(dim), distance=edge.Distance.Cosine)},
                hnsw_config=_hnsw(edge, 0))
            shard = self._call(edge.EdgeShard.create, str(path), config)
            # Filters by document are the common case: a keyword index makes them cheap at any size.
            self._call(shard.update, edge.UpdateOperation.create_field_index(DOCUMENT_KEY, _document_index(edge)))
            _write_json(path / GEN_FILE, {"generation": 0})
            self._shards[collection] = shard
            self._vec[collection] = ("", int(dim), "Cosine")
            self._gen[collection] = 0
            self._refresh_counts(collection)

    def exists(self, collection: str) -> bool:
        if collection in self._shards:
            return True
        self._check_legacy(collection)
        return False

    def upsert(self, collection, ids, vectors, payloads) -> None:
        edge = _edge()
        name, dim, _ = self._vec.get(collection, ("", 0, ""))
        points = []
        for i, v, p in zip(ids, vectors, payloads):
            values = v.tolist() if hasattr(v, "tolist") else [float(x) for x in v]
            if dim and len(values) != dim:
                raise VectorStoreError(f"Vector of {len(values)} dims for collection {collection!r}, which holds "
                                       f"{dim}-dim vectors: the embedding model does not match the collection.")
            points.append(edge.Point(id=str(i), vector={name: values} if name else values, payload=p))
        if points:
            self._write(collection, edge.UpdateOperation.upsert_points(points))

    def delete(self, collection, ids) -> None:
        if ids:
            self._write(collection, _edge().UpdateOperation.delete_points([str(i) for i in ids]))

    def _write(self, collection: str, operation) -> None:
        with self._write_lock, self._lock.read():
            shard = self._shard(collection)
            # Bump the generation durably *before* the write: a build copied before it can then never be
            # swapped in over it, even if this process dies right after the write.
            self._gen[collection] = self._gen.get(collection, 0) + 1
            _write_json(self._path(collection) / GEN_FILE, {"generation": self._gen[collection]})
            self._call(shard.update, operation)
            self._refresh_counts(collection)
        self._schedule_build(collection)

    def search(self, collection, vector, k, flt=None) -> list[Hit]:
        edge = _edge()
        with self._lock.read():
            shard = self._shard(collection)
            name = self._vec[collection][0]
            values = vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]
            request = edge.QueryRequest(limit=int(k), query=edge.Query.Nearest(values, using=name or None),
                                        filter=_to_filter(edge, flt), params=self._params(edge, collection),
                                        with_payload=True)
            points = self._call(shard.query, request)
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in points]

    def search_params(self, collection: str) -> dict[str, Any]:
        """How a search of this collection runs now (for the UI and the benchmark).

        Returns:
            ``mode``: "exact" (float32 full scan), "scan" (int8 full scan rescored in float32) or "hnsw";
            with ``hnsw_ef`` and ``oversampling`` where they apply.
        """
        points, indexed = self._points.get(collection, 0), self._indexed.get(collection, 0)
        built = indexed >= 0.9 * points
        config = self._config(collection)
        if points > EXACT_MAX_POINTS and built and self._hnsw_built(config):
            return {"mode": "hnsw", "hnsw_ef": HNSW_EF}
        if points >= SCAN_MIN_POINTS and built and config.get("quantization_config"):
            return {"mode": "scan", "oversampling": SCAN_OVERSAMPLING}
        return {"mode": "exact"}

    def _params(self, edge, collection: str):
        p = self.search_params(collection)
        if p["mode"] == "hnsw":  # measured without the int8 copies: leave them out
            return edge.SearchParams(hnsw_ef=p["hnsw_ef"], quantization=edge.QuantizationSearchParams(ignore=True))
        if p["mode"] == "scan":
            return edge.SearchParams(quantization=edge.QuantizationSearchParams(
                rescore=True, oversampling=p["oversampling"]))
        return edge.SearchParams(exact=True)

    def _config(self, collection: str) -> dict[str, Any]:
        try:
            return json.loads((self._path(collection) / "edge_config.json").read_text())
        except (OSError, ValueError):
            return {}  # a shard unpacked from a server snapshot, before Edge first saves its config

    @staticmethod
    def _hnsw_built(config: dict[str, Any]) -> bool:
        # A shard from a server snapshot has no Edge config and keeps the server's HNSW.
        return int((config.get("hnsw_config") or {}).get("m", HNSW_M)) > 0 if config else True

    def scroll(self, collection, limit, offset=None, flt=None, with_vectors=False):
        edge = _edge()
        with self._lock.read():
            shard = self._shard(collection)
            name = self._vec[collection][0]
            request = edge.ScrollRequest(offset=offset, limit=int(limit), filter=_to_filter(edge, flt),
                                         with_payload=True, with_vector=bool(with_vectors))
            records, next_offset = self._call(shard.scroll, request)
        rows = []
        for r in records:
            row = {"id": str(r.id), "payload": dict(r.payload or {})}
            if with_vectors:
                v = r.vector
                row["vector"] = v.get(name) if isinstance(v, dict) else v
            rows.append(row)
        return rows, (str(next_offset) if next_offset is not None and not isinstance(next_offset, int)
                      else next_offset)

    def count(self, collection, flt=None) -> int:
        edge = _edge()
        with self._lock.read():
            shard = self._shard(collection)
            return int(self._call(shard.count, edge.CountRequest(exact=True, filter=_to_filter(edge, flt))))

    def info(self, collection) -> CollectionInfo:
        with self._lock.read():
            self._shard(collection)
            _, dim, distance = self._vec[collection]
            points = self.count(collection)
        return CollectionInfo(name=collection, points=points, dim=dim, distance=distance, engine=self.engine,
                              location=str(self._path(collection)))

    def list_collections(self) -> list[str]:
        return sorted(self._shards)

    def drop(self, collection: str) -> None:
        """Delete a collection's shard for good (migration with --replace)."""
        with self._write_lock, self._lock.write():
            shard = self._shards.pop(collection, None)
            if shard is not None:
                shard.close()
            for d in (self._path(collection), self._build_dir(collection)):
                shutil.rmtree(d, ignore_errors=True)
            for table in (self._vec, self._points, self._indexed, self._gen, self._stale):
                table.pop(collection, None)

    def adopt_shard(self, collection: str, shard_dir: Path) -> None:
        """Take a prepared shard folder (an unpacked server snapshot) as ``collection``."""
        with self._write_lock, self._lock.write():
            if collection in self._shards:
                raise VectorStoreError(f"Collection {collection!r} already exists in {self.location}.")
            os.replace(shard_dir, self._path(collection))
            self._open(collection)
        self._ensure_document_index(collection)

    def update_from_snapshot(self, collection: str, snapshot_path: str | Path, tmp_dir: str | Path) -> None:
        """Bring an existing shard up to a newer snapshot of the same server collection."""
        with self._write_lock, self._lock.write():
            shard = self._shard(collection)
            self._gen[collection] = self._gen.get(collection, 0) + 1
            _write_json(self._path(collection) / GEN_FILE, {"generation": self._gen[collection]})
            self._call(shard.update_from_snapshot, str(snapshot_path), str(tmp_dir))
            self._vec[collection] = vector_params(self._path(collection))
            self._refresh_counts(collection)
        self._ensure_document_index(collection)

    def _ensure_document_index(self, collection: str) -> None:
        edge = _edge()
        schema = self._shard(collection).info().payload_schema
        if DOCUMENT_KEY not in schema:
            self._write(collection, edge.UpdateOperation.create_field_index(DOCUMENT_KEY, _document_index(edge)))

    def close(self) -> None:
        self._closed.set()
        for timer in list(self._timers.values()):
            timer.cancel()
        with self._write_lock, self._lock.write():
            # A build in progress is left to finish: the next open swaps it in if nothing was written since.
            for collection, shard in list(self._shards.items()):
                try:
                    shard.flush()
                    shard.close()
                except Exception:
                    pass
            self._shards.clear()

    # ---- index build ----------------------------------------------------------------------------
    def needs_build(self, collection: str) -> bool:
        """True when enough points sit in un-optimized segments, HNSW is due and not built yet, or the shard
        was built with an older layout that is slower to open."""
        points, indexed = self._points.get(collection, 0), self._indexed.get(collection, 0)
        if points > EXACT_MAX_POINTS and not self._hnsw_built(self._config(collection)):
            return True
        return points - indexed >= OPTIMIZE_MIN_POINTS or self._stale.get(collection, False)

    def index_status(self, collection: str) -> dict[str, Any]:
        """What the index of a collection is doing, for the UI: idle, or building with an estimate."""
        build = self._builds.get(collection)
        points = self._points.get(collection, 0)
        status = {"state": "idle", "points": points, "indexed": self._indexed.get(collection, 0),
                  "search": self.search_params(collection)["mode"]}
        if build and build.get("state") == "building":
            elapsed = time.monotonic() - build["started"]
            status.update(state="building", elapsed_s=round(elapsed, 1), estimate_s=round(build["estimate"], 1))
        elif self.needs_build(collection):
            status["state"] = "pending"
        return status

    def _schedule_build(self, collection: str) -> None:
        if not self.auto_build or self._closed.is_set() or not self.needs_build(collection):
            return
        old = self._timers.pop(collection, None)
        if old:
            old.cancel()
        timer = threading.Timer(BUILD_DEBOUNCE_S, self._start_build_quietly, args=(collection,))
        timer.daemon = True
        self._timers[collection] = timer
        timer.start()

    def _start_build_quietly(self, collection: str) -> None:
        try:
            self.build_index(collection, wait=False)
        except Exception:
            pass  # a failed background build leaves the live shard as it was; exact search still works

    def build_index(self, collection: str, progress: ProgressFn | None = None, wait: bool = True) -> bool:
        """Optimize a collection in a child process on a copy of its shard, then swap the copy in.

        Searches keep running on the live shard meanwhile. If anything is written to the collection
        during the build, the copy is out of date and is thrown away (the next build starts after the
        writes settle).

        Args:
            progress: called with (stage, done, total); the build stage's numbers are an estimate.
            wait: block until the build is swapped in (the CLI and the benchmark) or return at once.

        Returns:
            True if an optimized shard is live when this returns (always False with ``wait=False``).
        """
        with self._write_lock:
            build = self._builds.get(collection)
            if not build or build.get("state") != "building":
                if not self.needs_build(collection):
                    return True
                build = self._launch(collection, progress)
        if not wait:
            return False
        while build.get("state") == "building":
            if progress:
                elapsed = time.monotonic() - build["started"]
                total = max(self._points.get(collection, 1), 1)
                progress("building the search index (estimate)",
                         min(int(total * elapsed / max(build["estimate"], 0.1)), total - 1), total)
            build["done"].wait(0.5)
        if progress:
            total = max(self._points.get(collection, 1), 1)
            progress("building the search index (estimate)", total, total)
        return build.get("state") == "swapped"

    def _launch(self, collection: str, progress: ProgressFn | None) -> dict[str, Any]:
        """Copy the shard (no write may run meanwhile) and start the build process; caller holds the write lock."""
        shard = self._shard(collection)
        src, dst = self._path(collection), self._build_dir(collection)
        if progress:
            progress("copying the shard", 0, 1)
        self._call(shard.flush)
        shutil.rmtree(dst, ignore_errors=True)
        copy_tree(src, dst)  # holes kept: a plain copy writes the preallocated files out in full
        if progress:
            progress("copying the shard", 1, 1)
        points = self._points.get(collection, 0)
        hnsw = points > EXACT_MAX_POINTS
        cmd = [sys.executable, "-m", "core.corpus.edge_store", "build", str(dst), "--hnsw" if hnsw else "--plain"]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
        (dst / PID_FILE).write_text(str(child.pid))
        with _CHILDREN_LOCK:
            _CHILDREN[str(dst)] = child
        build = {"state": "building", "started": time.monotonic(), "done": threading.Event(),
                 "estimate": points / (_RATE_HNSW if hnsw else _RATE_PLAIN) + 1.0}
        self._builds[collection] = build
        threading.Thread(target=self._watch, args=(collection, build), daemon=True,
                         name=f"edge-build-{collection}").start()
        return build

    def _watch(self, collection: str, build: dict[str, Any]) -> None:
        dst = self._build_dir(collection)
        try:
            while not self._closed.is_set():
                if (dst / BUILT_FILE).exists():
                    build["state"] = "swapped" if self._swap_in(collection) else "discarded"
                    return
                if not self._build_running(dst):
                    shutil.rmtree(dst, ignore_errors=True)
                    build["state"] = "failed"
                    return
                time.sleep(0.2)
            build["state"] = "detached"  # closed: the next open adopts the result
        finally:
            build["done"].set()

    @staticmethod
    def _build_running(dst: Path) -> bool:
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(str(dst))
        if child is not None:
            if child.poll() is None:
                return True
            with _CHILDREN_LOCK:
                _CHILDREN.pop(str(dst), None)
            return (dst / BUILT_FILE).exists()
        try:
            return _pid_alive(int((dst / PID_FILE).read_text()))
        except (OSError, ValueError):
            return False

    def _swap_in(self, collection: str) -> bool:
        """Replace the live shard by the built copy if no write happened since the copy was taken."""
        live, built, old = self._path(collection), self._build_dir(collection), self.root / f".old-{collection}"
        with self._write_lock, self._lock.write():
            if self._closed.is_set() or collection not in self._shards:
                return False
            if _read_gen(built) != self._gen.get(collection, 0):
                shutil.rmtree(built, ignore_errors=True)
                return False
            for name in (BUILT_FILE, PID_FILE):
                (built / name).unlink(missing_ok=True)
            self._shards.pop(collection).close()
            os.replace(live, old)
            os.replace(built, live)
            self._open(collection)
            shutil.rmtree(old, ignore_errors=True)
        return True

    def _adopt_or_clean(self, collection: str) -> None:
        """At open: swap in a build a previous process finished, keep watching one still running."""
        built = self._build_dir(collection)
        if not built.exists():
            return
        if (built / BUILT_FILE).exists():
            self._swap_in(collection)
        elif self._build_running(built):
            # Started by an earlier opener (the app reopens the store per page use; a CLI run): the PID
            # file's age says how long it has been at work, so the UI's progress does not start over.
            age = max(time.time() - (built / PID_FILE).stat().st_mtime, 0.0) if (built / PID_FILE).exists() else 0.0
            points = self._points.get(collection, 0)
            build = {"state": "building", "started": time.monotonic() - age, "done": threading.Event(),
                     "estimate": points / (_RATE_HNSW if points > EXACT_MAX_POINTS else _RATE_PLAIN) + 1.0}
            self._builds[collection] = build
            threading.Thread(target=self._watch, args=(collection, build), daemon=True).start()
        else:
            shutil.rmtree(built, ignore_errors=True)

    def _recover_swap(self, collection: str) -> None:
        """A crash in the middle of a swap: keep whichever complete shard is there."""
        live, old = self._path(collection), self.root / f".old-{collection}"
        if live.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, live)


def _hnsw(edge, m: int):
    return edge.HnswIndexConfig(m=m, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000)


def _document_index(edge):
    """The keyword index on ``document_id``, kept on disk: opening a shard maps it instead of reading every
    document id into RAM (~35 ms at 100k points); a filter's first use pays a few page faults (~7 ms)."""
    return edge.KeywordIndexParams(memory=edge.Memory.Cold)


def _on_disk(edge, params) -> bool:
    """Whether a payload index's params keep it on disk (``None``: a plain schema type, in RAM)."""
    memory = getattr(params, "memory", None)
    return memory == edge.Memory.Cold if memory is not None else bool(getattr(params, "on_disk", None))


def _to_filter(edge, flt: PointFilter | None):
    if flt is None or (not flt.document_ids and not flt.exclude_ids):
        return None
    must = [edge.FieldCondition(key=DOCUMENT_KEY, match=edge.MatchAny(list(map(str, flt.document_ids))))] \
        if flt.document_ids else None
    must_not = [edge.HasIdCondition(set(map(str, flt.exclude_ids)))] if flt.exclude_ids else None
    return edge.Filter(must=must, must_not=must_not)


def optimize_shard(shard_dir: str | Path, hnsw: bool) -> None:
    """Open a shard folder, optimize it (HNSW graph or plain immutable segments), close it."""
    edge = _edge()
    shard_dir = Path(shard_dir)
    name, dim, distance = vector_params(shard_dir)
    # indexing_threshold=1 KB: every segment is converted, whatever its size (the caller decided it is worth it).
    # The int8 copies (always in RAM, ~dim bytes a point) make the full scan ~6x faster; results are rescored.
    # For the scan the float32 vectors stay memory-mapped (only rescoring reads them): opening the shard then
    # skips reading them all into RAM. HNSW reads them on every hop, so there they stay in RAM.
    memory = edge.Memory.Cached if hnsw else edge.Memory.Cold
    config = edge.EdgeConfig(vectors={name: edge.EdgeVectorParams(size=dim, distance=getattr(edge.Distance, distance),
                                                                  memory=memory)},
                             hnsw_config=_hnsw(edge, HNSW_M if hnsw else 0),
                             quantization_config=edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8,
                                                                               always_ram=True),
                             optimizers=edge.EdgeOptimizersConfig(indexing_threshold=1))
    shard = edge.EdgeShard.load(str(shard_dir), config)
    try:
        # A document index built in RAM by an older version is recreated on disk (on this copy only).
        index = (shard.info().payload_schema or {}).get(DOCUMENT_KEY)
        if index is not None and not _on_disk(edge, index.params):
            shard.update(edge.UpdateOperation.create_field_index(DOCUMENT_KEY, _document_index(edge)))
        shard.optimize()
        shard.flush()
    finally:
        shard.close()


def _main(argv: Sequence[str]) -> int:
    """``python -m core.corpus.edge_store build DIR --hnsw|--plain``: the child process of a background build."""
    if len(argv) != 3 or argv[0] != "build" or argv[2] not in ("--hnsw", "--plain"):
        print("usage: python -m core.corpus.edge_store build SHARD_DIR --hnsw|--plain", file=sys.stderr)
        return 2
    shard_dir = Path(argv[1])
    optimize_shard(shard_dir, argv[2] == "--hnsw")
    _write_json(shard_dir / BUILT_FILE, {"finished_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
