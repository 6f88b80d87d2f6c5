"""The vector store behind one small interface: Qdrant Edge or Qdrant local mode embedded, a Qdrant server by URL.

:func:`open_store` is the one place that picks the backend: a URL means a server, otherwise
``embedded_engine`` chooses Qdrant Edge (``core.corpus.edge_store``, the default) or qdrant-client's local mode.
Local mode and the server are the same qdrant-client code. Local mode locks its folder to one client per
process and is not safe for concurrent writes, so every call goes through one lock there; it is meant
for up to ~20k points (``LOCAL_MODE_COMFORT_POINTS``). Edge and local mode keep their files in different
folders of the data dir, so switching engines never mixes them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.config import Settings
from core.errors import StoreLockedError, VectorStoreError

LOCAL_MODE_COMFORT_POINTS = 20_000


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass
class PointFilter:
    """Which points a search, scroll or count may see. Empty means all."""

    document_ids: Sequence[str] | None = None
    exclude_ids: Sequence[str] = field(default_factory=tuple)


@dataclass
class CollectionInfo:
    name: str
    points: int
    dim: int
    distance: str
    engine: str  # "edge" | "local" | "server"
    location: str


class VectorStore(Protocol):
    engine: str

    def create(self, collection: str, dim: int) -> None: ...
    def exists(self, collection: str) -> bool: ...
    def upsert(self, collection: str, ids: Sequence[str], vectors: Sequence[Sequence[float]],
               payloads: Sequence[dict[str, Any]]) -> None: ...
    def search(self, collection: str, vector: Sequence[float], k: int,
               flt: PointFilter | None = None) -> list[Hit]: ...
    def scroll(self, collection: str, limit: int, offset: Any = None, flt: PointFilter | None = None,
               with_vectors: bool = False) -> tuple[list[dict[str, Any]], Any]: ...
    def count(self, collection: str, flt: PointFilter | None = None) -> int: ...
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...
    def info(self, collection: str) -> CollectionInfo: ...
    def close(self) -> None: ...


class QdrantStore:
    """Qdrant through qdrant-client: ``path`` for embedded local mode, ``url`` for a server."""

    def __init__(self, path: str | None = None, url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0):
        from qdrant_client import QdrantClient

        self.engine = "server" if url else "local"
        self.location = url or str(path)
        # Local mode is numpy over a dict: concurrent writes corrupt it, so serialize every call.
        self._lock = threading.RLock() if self.engine == "local" else _NoLock()
        try:
            if url:
                self._client = QdrantClient(url=url, api_key=api_key or None, timeout=int(timeout),
                                            check_compatibility=False)
                self._client.get_collections()  # fail now, with a clear message, if unreachable
            else:
                self._client = QdrantClient(path=str(path))
        except VectorStoreError:
            raise
        except Exception as e:
            raise _translate(e, self.location, self.engine) from None

    def _call(self, fn, *args, **kwargs):
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except VectorStoreError:
                raise
            except Exception as e:
                raise _translate(e, self.location, self.engine) from None

    def create(self, collection: str, dim: int) -> None:
        from qdrant_client import models

        if self.exists(collection):
            return
        self._call(self._client.create_collection, collection,
                   vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
        # Payload indexes make filtered search and per-document deletes fast on a server (local mode has none).
        for key in ("document_id",) if self.engine == "server" else ():
            self._call(self._client.create_payload_index, collection, key,
                       field_schema=models.PayloadSchemaType.KEYWORD)

    def exists(self, collection: str) -> bool:
        return bool(self._call(self._client.collection_exists, collection))

    def upsert(self, collection, ids, vectors, payloads) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=i, vector=list(map(float, v)), payload=p)
                  for i, v, p in zip(ids, vectors, payloads)]
        self._call(self._client.upsert, collection, points=points, wait=True)

    def search(self, collection, vector, k, flt=None) -> list[Hit]:
        res = self._call(self._client.query_points, collection, query=list(map(float, vector)), limit=k,
                         query_filter=_to_filter(flt), with_payload=True)
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in res.points]

    def scroll(self, collection, limit, offset=None, flt=None, with_vectors=False):
        points, next_offset = self._call(self._client.scroll, collection, scroll_filter=_to_filter(flt),
                                         limit=limit, offset=offset, with_payload=True,
                                         with_vectors=with_vectors)
        rows = [{"id": str(p.id), "payload": dict(p.payload or {}),
                 **({"vector": p.vector} if with_vectors else {})} for p in points]
        return rows, next_offset

    def count(self, collection, flt=None) -> int:
        return int(self._call(self._client.count, collection, count_filter=_to_filter(flt), exact=True).count)

    def delete(self, collection, ids) -> None:
        from qdrant_client import models

        if ids:
            self._call(self._client.delete, collection,
                       points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def info(self, collection) -> CollectionInfo:
        ci = self._call(self._client.get_collection, collection)
        params = ci.config.params.vectors
        if isinstance(params, dict):  # named vectors: take the first
            params = next(iter(params.values()))
        return CollectionInfo(name=collection, points=self.count(collection), dim=int(params.size),
                              distance=str(params.distance.value if hasattr(params.distance, "value")
                                           else params.distance),
                              engine=self.engine, location=self.location)

    def list_collections(self) -> list[str]:
        return [c.name for c in self._call(self._client.get_collections).collections]

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass


def store_location(settings: Settings) -> tuple[str, str]:
    """(engine, location) the settings point at, without opening anything."""
    if settings.qdrant_url:
        return "server", settings.qdrant_url
    if settings.embedded_engine == "local":
        return "local", str(settings.qdrant_path)
    return "edge", str(settings.edge_path)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _to_filter(flt: PointFilter | None):
    if flt is None or (not flt.document_ids and not flt.exclude_ids):
        return None
    from qdrant_client import models

    must = []
    must_not = []
    if flt.document_ids:
        must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(flt.document_ids))))
    if flt.exclude_ids:
        must_not.append(models.HasIdCondition(has_id=list(flt.exclude_ids)))
    return models.Filter(must=must or None, must_not=must_not or None)


# Above this many chunks a generation run searches an Edge collection live instead of from a snapshot of its
# vectors (core.generation.engine): reading 100k vectors out of the shard takes ~5-7 s at run start and a second float32
# copy in memory, while the shard's own search is as fast (bench/vectorstore.py end to end at 100k, c=32:
# 373 conversations/min from the snapshot, 787 live). Such a run holds the shard until it ends.
SNAPSHOT_MAX_POINTS = 20_000


def _translate(e: Exception, location: str, engine: str) -> VectorStoreError:
    text = str(e)
    if engine != "server" and (isinstance(e, PermissionError) or "Permission denied" in text
                               or "os error 13" in text or "Read-only file system" in text):
        from core.readonly import owner_name, user_name

        return VectorStoreError(f"The vector store folder {location} is not writable by user {user_name()} (it "
                                f"belongs to {owner_name(Path(location))}): run as its owner, give {user_name()} "
                                "write access, or copy the data dir to a folder of your own and use that.")
    if ("already accessed by another instance" in text or "Resource temporarily unavailable" in text
            or "WouldBlock" in text):  # the last: Qdrant Edge's "Can't init WAL: Kind(WouldBlock)"
        return StoreLockedError(
            f"The local Qdrant folder {location} is in use by another process (probably the app, or a CLI "
            f"batch on the same data dir; a generation run over more than {SNAPSHOT_MAX_POINTS:,} chunks keeps it "
            "until the run ends). Wait for it or close that process, or use a separate GROUNDWORK_DATA_DIR, or run a Qdrant "
            "server and set QDRANT_URL so several processes can share the corpus.")
    name = type(e).__name__
    if engine == "server" and any(s in name + text for s in (
            "ConnectError", "ConnectionRefused", "Connection refused", "ResponseHandlingException",
            "Timeout", "Name or service not known", "nodename nor servname")):
        return VectorStoreError(f"Cannot reach the Qdrant server at {location} ({name}). Check that it is "
                                "running and the URL is right, or unset QDRANT_URL to use the embedded store.")
    if "Not found: Collection" in text or "doesn't exist" in text:
        return VectorStoreError(f"Collection not found in Qdrant at {location}: index a corpus first "
                                "(Corpus page, or `groundwork index sample_data/corpus`).")
    if engine == "server" and ("Unauthorized" in text or "403" in text or "401" in text):
        return VectorStoreError(f"The Qdrant server at {location} refused the API key: check QDRANT_API_KEY.")
    return VectorStoreError(f"Qdrant ({engine}, {location}) failed: {name}: {text[:300]}")
