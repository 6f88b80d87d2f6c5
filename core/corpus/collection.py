"""The corpus: ingest (load → chunk → embed → Qdrant, recorded in SQLite), search, browse and stats.

Ingest is resumable. A document is written to SQLite as *pending* with its chunks before anything
reaches the vector store and marked *complete* only after its points are stored, so an interrupted
ingest re-run finishes the pending documents with the same ids (upserts are idempotent) and never
leaves duplicates or orphans behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import ids
from core.corpus.chunking import CHUNKER_VERSION, chunk_to_fit
from core.config import Settings
from core.db import Database, dumps, fts_query, loads, now
from core.corpus.edge_store import EDGE_COMFORT_POINTS, EXACT_MAX_POINTS
from core.corpus.embeddings import Embedder
from core.errors import IngestError, ModelMismatchError, VectorStoreError
from core.corpus.loaders import LoadedDocument, load_path
from core.corpus.model_identity import check_model
from core.corpus.storehub import StoreHub
from core.corpus.vectorstore import LOCAL_MODE_COMFORT_POINTS, Hit, PointFilter, VectorStore, store_location

# stage, done, total
ProgressFn = Callable[[str, int, int], None]

EMBED_GROUP_CHUNKS = 256  # chunks embedded and upserted together: big enough to keep the model busy
TITLES_TTL_S = 5.0  # how long a read of the documents' titles is reused


@dataclass
class IngestReport:
    added_documents: int = 0
    added_chunks: int = 0
    already_indexed: int = 0
    retitled: int = 0  # already indexed documents whose title changed (no re-embedding)
    resumed: int = 0
    truncated_chunks: int = 0
    rechunked: list[str] = field(default_factory=list)  # documents chunked before, re-chunked to fit the model
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        from core.corpus.documents import plural

        parts = [f"{plural(self.added_documents, 'document')} ({plural(self.added_chunks, 'chunk')}) indexed"]
        if self.already_indexed:
            parts.append(f"{self.already_indexed} already indexed")
        if self.retitled:
            parts.append(f"{self.retitled} retitled without re-embedding")
        if self.resumed:
            parts.append(f"{self.resumed} finished from an interrupted ingest")
        if self.rechunked:
            parts.append(f"{len(self.rechunked)} re-chunked to fit the embedding model's window (their old chunks "
                         "replaced; conversations keep the passages they quoted)")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicates skipped")
        if self.problems:
            parts.append(f"{len(self.problems)} problems")
        if self.truncated_chunks:
            parts.append(f"{self.truncated_chunks} chunks longer than the embedding model reads (their ends "
                         "are ignored by search: lower the chunk size)")
        return "; ".join(parts) + f" in {self.seconds:.1f} s."


@dataclass
class Passage:
    """A search result as the UI, the engine and exports use it."""

    id: str
    score: float
    text: str
    document_id: str
    title: str
    source_path: str
    position: int
    ranks: dict[str, int] = field(default_factory=dict)  # side (dense, lexical, conversation) -> rank there, 1-based
    carried: bool = False  # shown again from an earlier turn, not retrieved for this one
    from_turn: int | None = None  # for a carried passage: the assistant turn (1-based) it was retrieved for

    @property
    def found_by(self) -> list[str]:
        return sorted(self.ranks, key=self.ranks.get)

    def as_dict(self) -> dict[str, Any]:
        row = {"id": self.id, "score": round(self.score, 4), "text": self.text, "document_id": self.document_id,
               "title": self.title, "source_path": self.source_path, "position": self.position}
        if self.ranks:
            row["found_by"] = self.found_by
            row["ranks"] = dict(self.ranks)
        row["carried"] = self.carried
        if self.from_turn is not None:
            row["from_turn"] = self.from_turn
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Passage":
        """A stored passage (a turn's ``retrieval`` entry) back as a Passage."""
        return cls(id=row["id"], score=float(row.get("score") or 0.0), text=row.get("text") or "",
                   document_id=row.get("document_id") or "", title=row.get("title") or "",
                   source_path=row.get("source_path") or "", position=int(row.get("position") or 0),
                   ranks=dict(row.get("ranks") or {}), carried=bool(row.get("carried")),
                   from_turn=row.get("from_turn"))


class Corpus:
    """One collection of the corpus: its SQLite records and its vectors.

    Args:
        settings: collection, content key, chunking and model settings.
        db: the workbench database.
        embedder: the embedding model (must be the one the collection was built with).
        stores: the hub that opens the vector store on demand.
    """

    def __init__(self, settings: Settings, db: Database, embedder: Embedder, stores: StoreHub):
        self.settings = settings
        self.db = db
        self.embedder = embedder
        self.stores = stores
        self.collection = settings.collection
        self.content_key = settings.content_key
        self.embed_group_chunks = EMBED_GROUP_CHUNKS
        self._verified = False
        self._titles: tuple[float, dict[str, str]] | None = None
        # Told the texts of the chunks an ingest added, once it has finished (the workbench embeds their
        # sentences for the grounding checks in the background: core.quality.passage_windows).
        self.on_indexed: Callable[[list[str]], None] | None = None

    # ---- ingest -------------------------------------------------------------------------------
    def ingest_path(self, path: str | Path, text_field: str | None = None,
                    progress: ProgressFn | None = None, title_key: str | None = None) -> IngestReport:
        """Index a file or a folder (recursively). Files that fail are reported, the rest indexed."""
        path = Path(path)
        if not path.exists():
            raise IngestError(f"{path} does not exist: give a file or folder to index.")
        started = time.monotonic()
        if progress:
            progress("reading files", 0, 1)
        loaded = load_path(path, text_field=text_field or self.content_key,
                           title_key=title_key or self.settings.title_key or None)
        report = IngestReport(problems=list(loaded.problems), skipped=list(loaded.skipped),
                              duplicates=[f"{dup} repeats {kept}" for kept, dup in loaded.duplicates])
        if not loaded.documents and not loaded.problems:
            raise IngestError(f"No supported files found in {path} (supported: .txt .md .html .pdf .docx "
                              ".jsonl .csv).")
        self.ingest_documents(loaded.documents, report, progress, base=path if path.is_dir() else path.parent)
        report.seconds = time.monotonic() - started
        return report

    def ingest_documents(self, documents: Iterable[LoadedDocument], report: IngestReport | None = None,
                         progress: ProgressFn | None = None, base: Path | None = None) -> IngestReport:
        report = report or IngestReport()
        started = time.monotonic()
        documents = list(documents)
        if progress:
            progress("loading the embedding model", 0, 1)
        with self.stores.use() as store:
            dim = self.embedder.dim
            self._ensure_collection(store, dim)
            plan = self._plan(documents, report, base)
            total_chunks = sum(len(chunks) for _, chunks in plan)
            done_chunks = 0
            added: list[str] = []
            if progress:
                progress("embedding", 0, max(total_chunks, 1))
            for group in _groups(plan, self.embed_group_chunks):
                self._write_pending(group, store)
                texts = [c["text"] for _, chunks in group for c in chunks]
                added.extend(texts)
                # Progress every few model batches too: one long document is one group. The group's own end
                # is reported below, once its documents are complete.
                vectors = self.embedder.encode(texts, progress=None if not progress else (
                    lambda done, n, base=done_chunks: done < n and progress("embedding", base + done,
                                                                            max(total_chunks, 1))))
                chunk_rows = [c for _, chunks in group for c in chunks]
                report.truncated_chunks += sum(c["truncated"] for c in chunk_rows)
                store.upsert(self.collection, [c["id"] for c in chunk_rows], vectors,
                             [self._payload(doc, c) for doc, chunks in group for c in chunks])
                with self.db.write() as w:
                    for doc, chunks in group:
                        w.execute("UPDATE documents SET status='complete' WHERE id=?", [doc["id"]])
                done_chunks += len(chunk_rows)
                report.added_documents += len(group)
                report.added_chunks += len(chunk_rows)
                if progress:
                    progress("embedding", done_chunks, max(total_chunks, 1))
        report.seconds = report.seconds or (time.monotonic() - started)
        if added and self.on_indexed is not None:
            self.on_indexed(added)
        return report

    def _plan(self, documents: list[LoadedDocument], report: IngestReport,
              base: Path | None) -> list[tuple[dict, list[dict]]]:
        plan = []
        seen_hashes: dict[str, str] = {}
        for d in documents:
            source = _relative(d.source_path, base)
            doc_id = ids.document_id(self.collection, source, d.text)
            existing = self.db.one("SELECT status, chunker, n_chunks, title FROM documents WHERE id=?", [doc_id])
            if existing and existing["status"] == "complete" and existing["chunker"] == CHUNKER_VERSION:
                report.already_indexed += 1
                if d.title and d.title != existing["title"]:
                    # A better title (a new --title-key, a loader that now reads case_name) needs no new
                    # vectors: passages take their title from this row, not from the vector payload.
                    with self.db.write() as w:
                        w.execute("UPDATE documents SET title=? WHERE id=?", [d.title, doc_id])
                    report.retitled += 1
                    self._titles = None
                continue
            content_hash = ids.content_hash(d.text)
            twin = seen_hashes.get(content_hash) or self.db.one(
                "SELECT source_path FROM documents WHERE collection=? AND content_hash=? AND id<>?",
                [self.collection, content_hash, doc_id])
            if twin:
                twin_path = twin if isinstance(twin, str) else twin["source_path"]
                report.duplicates.append(f"{source} has the same text as {twin_path} (skipped)")
                continue
            seen_hashes[content_hash] = source
            limit = self.embedder.max_seq_length
            pieces = chunk_to_fit(d.text, self.settings.chunk_size, self.settings.chunk_overlap,
                                  self.embedder.count_wordpieces, limit)
            if existing and existing["status"] == "complete":
                too_long = self.db.scalar("SELECT COUNT(*) FROM chunks WHERE document_id=? AND truncated=1", [doc_id])
                report.rechunked.append(f"{source}: {existing['n_chunks']} chunks ({too_long} longer than the model "
                                        f"reads) -> {len(pieces)} chunks, none too long")
            elif existing:
                report.resumed += 1
            doc = {"id": doc_id, "collection": self.collection, "source_path": source, "title": d.title,
                   "content_hash": content_hash, "text": d.text, "metadata": dumps(d.metadata),
                   "n_chars": len(d.text), "n_chunks": len(pieces), "status": "pending", "chunker": CHUNKER_VERSION,
                   "created_at": now()}
            chunks = [{"id": ids.chunk_id(doc_id, p.position, p.text), "document_id": doc_id,
                       "collection": self.collection, "position": p.position, "start_char": p.start,
                       "end_char": p.end, "text": p.text, "est_tokens": p.tokens,
                       "truncated": int(p.tokens > limit)} for p in pieces]
            plan.append((doc, chunks))
        return plan

    def _write_pending(self, group: list[tuple[dict, list[dict]]], store: VectorStore) -> None:
        """Record documents and chunks before their vectors exist, replacing any half-written earlier try.

        A document chunked before (re-chunked now) loses its old points first: its row is pending from here
        on, so an interruption leaves it to be finished by the next ingest, never with stale chunks.
        """
        with self.db.write() as w:
            stale = []
            for doc, chunks in group:
                new_ids = {c["id"] for c in chunks}
                stale += [r[0] for r in w.execute("SELECT id FROM chunks WHERE document_id=?", [doc["id"]])
                          if r[0] not in new_ids]
                w.execute("DELETE FROM chunks WHERE document_id=?", [doc["id"]])
                w["documents"].insert(doc, replace=True)
                w["chunks"].insert_all(chunks)
        if stale:
            store.delete(self.collection, stale)

    def _payload(self, doc: dict, chunk: dict) -> dict[str, Any]:
        return {self.content_key: chunk["text"], "document_id": doc["id"], "title": doc["title"],
                "source_path": doc["source_path"], "position": chunk["position"]}

    # ---- collection and model checks ------------------------------------------------------------
    def _ensure_collection(self, store: VectorStore, dim: int) -> None:
        record = self.db.one("SELECT * FROM collections WHERE name=?", [self.collection])
        if record and record["embedding_model"] != self.embedder.model_name:
            raise ModelMismatchError(
                f"Collection {self.collection!r} was built with embedding model {record['embedding_model']!r} "
                f"({record['dim']} dims) but the configured model is {self.embedder.model_name!r}. Set "
                f"GROUNDWORK_EMBEDDING_MODEL={record['embedding_model']} or index into a new collection.")
        if store.exists(self.collection):
            self.verify(store)
        else:
            store.create(self.collection, dim)
        if not record:
            with self.db.write() as w:
                w["collections"].insert({"name": self.collection, "embedding_model": self.embedder.model_name,
                                         "dim": dim, "distance": "Cosine", "content_key": self.content_key,
                                         "engine": store.engine, "created_at": now(),
                                         "embedding_identity": dumps(self.embedder.identity())}, replace=True)

    def verify(self, store: VectorStore | None = None, probes: int = 3) -> None:
        """Check before any search that the collection's vectors come from the configured model.

        Qdrant records only vector size and distance, and two models of one size pass that check: a collection
        indexed here is checked against its recorded model identity (core.corpus.model_identity); one from elsewhere
        by embedding a few stored passages again, which must each find themselves at the top.
        """
        if self._verified:
            return
        if store is None:
            # Load the model first: another process may be waiting for the embedded store meanwhile.
            self.embedder.identity()
            with self.stores.use() as s:
                return self.verify(s, probes)
        if not store.exists(self.collection):
            raise VectorStoreError(f"Collection {self.collection!r} does not exist yet: index a corpus first "
                                   "(Corpus page, or `groundwork index sample_data/corpus`).")
        info = store.info(self.collection)
        dim = self.embedder.dim
        if info.dim != dim:
            record = self.db.one("SELECT embedding_model FROM collections WHERE name=?", [self.collection])
            built = record["embedding_model"] if record else "an unknown model"
            raise ModelMismatchError(
                f"Collection {self.collection!r} holds {info.dim}-dim vectors (built with {built}) but the "
                f"embedding model {self.embedder.model_name!r} makes {dim}-dim vectors. Configure the model "
                "the collection was built with, or index into a new collection.")
        rows, _ = store.scroll(self.collection, limit=probes)
        rows = [r for r in rows if isinstance(r["payload"].get(self.content_key), str)]
        if info.points and not rows:
            raise VectorStoreError(f"No point in {self.collection!r} has a text field {self.content_key!r}: "
                                   "set the content key the collection was indexed with (--content-key).")
        record = self.db.one("SELECT * FROM collections WHERE name=?", [self.collection])
        if record is not None:  # indexed here: the model's identity is on record (or is recorded now)
            check_model(self.db, self.embedder, store, self.collection, self.content_key, record)
            self._verified = True
            return
        if rows:  # a collection from elsewhere (a server, a snapshot): its passages must find themselves
            # From the model itself, never the embedding cache: the question is what this model makes now.
            vectors = self.embedder.encode([r["payload"][self.content_key] for r in rows], use_cache=False)
            misses = 0
            for r, v in zip(rows, vectors):
                hits = store.search(self.collection, v, 3)
                top_score = hits[0].score if hits else 0.0
                found = any(h.id == r["id"] and h.score >= top_score - 1e-4 for h in hits)
                misses += not found
            if misses > len(rows) // 2:
                raise ModelMismatchError(
                    f"The vectors in {self.collection!r} do not match embedding model "
                    f"{self.embedder.model_name!r}: stored passages re-embedded with it do not find themselves. "
                    "The collection was probably built with another model of the same size; configure that one.")
        self._verified = True

    # ---- search and browse ----------------------------------------------------------------------
    def search(self, query: str, k: int = 3, flt: PointFilter | None = None,
               store: VectorStore | None = None) -> list[Passage]:
        if not query.strip():
            return []
        # A query is typed once and is short: not worth a write to the cache, nor keeping there.
        vector = self.embedder.encode([query], use_cache=False)[0]
        return self.search_vector(vector, k, flt, store)

    def search_vector(self, vector, k: int = 3, flt: PointFilter | None = None,
                      store: VectorStore | None = None) -> list[Passage]:
        if store is None:
            with self.stores.use() as s:
                return self.search_vector(vector, k, flt, s)
        self.verify(store)
        return [self._passage(h) for h in store.search(self.collection, vector, k, flt)]

    def _passage(self, hit: Hit) -> Passage:
        p = hit.payload
        document_id = str(p.get("document_id", ""))
        return Passage(id=hit.id, score=hit.score, text=str(p.get(self.content_key, "")),
                       document_id=document_id, title=self.title_of(document_id, str(p.get("title", ""))),
                       source_path=str(p.get("source_path", "")), position=int(p.get("position", 0) or 0))

    def title_of(self, document_id: str, fallback: str = "") -> str:
        """A document's title as SQLite has it now (re-indexing may have improved it since its vectors were
        written, and the payload keeps the old one)."""
        titles = self.titles()
        return titles.get(document_id) or fallback

    def text_frequency(self, word: str) -> int:
        """How many of this collection's documents use ``word`` (title or text): a name, or vocabulary."""
        term = word.replace('"', "")
        if not term:
            return 0
        try:
            return int(self.db.scalar(
                "SELECT COUNT(*) FROM documents_fts f JOIN documents d ON d.rowid = f.rowid "
                "WHERE documents_fts MATCH ? AND d.collection = ?", [f'"{term}"', self.collection]) or 0)
        except Exception:  # noqa: BLE001 - an FTS syntax corner case: count the word as a name, not vocabulary
            return 0

    def titles(self) -> dict[str, str]:
        """Document id -> title for this collection, re-read at most every few seconds (another process may
        re-index)."""
        cached = self._titles
        if cached is not None and time.monotonic() - cached[0] < TITLES_TTL_S:
            return cached[1]
        rows = self.db.rows("SELECT id, title FROM documents WHERE collection=?", [self.collection])
        titles = {r["id"]: r["title"] or "" for r in rows}
        self._titles = (time.monotonic(), titles)
        return titles

    def index_status(self) -> dict[str, Any] | None:
        """The embedded Edge store's search index for this collection (mode, building or not); None elsewhere."""
        with self.stores.use() as store:
            if not hasattr(store, "index_status") or not store.exists(self.collection):
                return None
            return store.index_status(self.collection)

    def stats(self) -> dict[str, Any]:
        row = self.db.one(
            # A pending document's chunks are not searchable yet: they count once it is indexed.
            "SELECT COUNT(*) AS documents, COALESCE(SUM(CASE WHEN status='complete' THEN n_chunks END),0) AS chunks, "
            "COALESCE(SUM(n_chars),0) AS chars, "
            "SUM(status='pending') AS pending FROM documents WHERE collection=?", [self.collection])
        record = self.db.one("SELECT * FROM collections WHERE name=?", [self.collection]) or {}
        engine, location = store_location(self.settings)
        stats = {**row, "pending": row["pending"] or 0, "collection": self.collection,
                 "embedding_model": record.get("embedding_model", self.embedder.model_name),
                 "engine": engine, "location": location, "warning": ""}
        stats["store_mb"] = _folder_mb(location) if engine != "server" else None
        stats["engine_note"] = {
            "edge": f"Qdrant Edge (embedded, on disk): full-scan search up to {EXACT_MAX_POINTS:,} chunks, HNSW "
                    f"beyond. A Qdrant server serves better past ~{EDGE_COMFORT_POINTS:,} chunks, or when several "
                    "machines must share the corpus.",
            "local": f"Qdrant local mode (embedded, in memory): meant for up to ~{LOCAL_MODE_COMFORT_POINTS:,} "
                     "chunks; Qdrant Edge holds far more on one laptop (`groundwork migrate --to edge`).",
            "server": "Qdrant server: shared by every process and machine that can reach it.",
        }[engine]
        built_with = record.get("engine")
        if built_with and built_with != engine and engine != "server" and built_with != "server":
            stats["warning"] = (f"Collection {self.collection!r} was indexed with the {built_with} engine but "
                                f"{engine} is configured: move it without re-embedding with `groundwork migrate "
                                f"--to {engine}`, or set GROUNDWORK_EMBEDDED_ENGINE={built_with}.")
        elif engine == "local" and stats["chunks"] > LOCAL_MODE_COMFORT_POINTS:
            stats["warning"] = (f"{stats['chunks']:,} chunks is past what Qdrant's embedded local mode is meant "
                                f"for (~{LOCAL_MODE_COMFORT_POINTS:,}): searches and start-up slow down. Switch to "
                                "Qdrant Edge (`groundwork migrate --to edge`, then GROUNDWORK_EMBEDDED_ENGINE=edge) "
                                "or run a Qdrant server and set QDRANT_URL.")
        elif engine == "edge" and stats["chunks"] > EDGE_COMFORT_POINTS:
            stats["warning"] = (f"{stats['chunks']:,} chunks: Qdrant Edge still works, but past "
                                f"~{EDGE_COMFORT_POINTS:,} a Qdrant server (more cores and memory, shared by "
                                "several processes) serves searches faster. Set QDRANT_URL to use one.")
        return stats

    def documents(self, limit: int = 50, offset: int = 0, search: str = "") -> list[dict[str, Any]]:
        if search.strip():
            return self.db.rows(
                "SELECT d.id, d.title, d.source_path, d.n_chars, d.n_chunks, d.status FROM documents d "
                "JOIN documents_fts f ON f.rowid = d.rowid WHERE documents_fts MATCH ? AND d.collection=? "
                "ORDER BY rank LIMIT ? OFFSET ?", [fts_query(search), self.collection, limit, offset])
        return self.db.rows(
            "SELECT id, title, source_path, n_chars, n_chunks, status FROM documents WHERE collection=? "
            "ORDER BY source_path LIMIT ? OFFSET ?", [self.collection, limit, offset])

    def document(self, document_id: str) -> dict[str, Any] | None:
        doc = self.db.one("SELECT * FROM documents WHERE id=?", [document_id])
        if doc:
            doc["metadata"] = loads(doc["metadata"], {})
        return doc

    def chunks(self, document_id: str) -> list[dict[str, Any]]:
        return self.db.rows("SELECT id, position, start_char, end_char, text, truncated FROM chunks "
                            "WHERE document_id=? ORDER BY position", [document_id])

    def chunk(self, chunk_id: str) -> dict[str, Any] | None:
        return self.db.one("SELECT c.*, d.title, d.source_path FROM chunks c JOIN documents d "
                           "ON d.id=c.document_id WHERE c.id=?", [chunk_id])

    def consistency(self) -> dict[str, int]:
        """SQLite and the vector store agree on which chunks exist (used by tests and the Corpus page)."""
        sqlite_chunks = self.db.scalar("SELECT COUNT(*) FROM chunks c JOIN documents d ON d.id=c.document_id "
                                       "WHERE d.collection=? AND d.status='complete'", [self.collection])
        with self.stores.use() as store:
            points = store.count(self.collection) if store.exists(self.collection) else 0
        return {"sqlite_chunks": sqlite_chunks, "points": points}


def _folder_mb(location: str) -> float:
    total = 0
    for root, _, files in os.walk(location):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # a file replaced while we walk (a build being swapped in)
    return round(total / 2**20, 1)


def _groups(plan: list[tuple[dict, list[dict]]], target: int) -> Iterable[list[tuple[dict, list[dict]]]]:
    group: list[tuple[dict, list[dict]]] = []
    size = 0
    for item in plan:
        group.append(item)
        size += len(item[1])
        if size >= target:
            yield group
            group, size = [], 0
    if group:
        yield group


def _relative(source_path: str, base: Path | None) -> str:
    p = Path(source_path)
    if base is not None:
        try:
            return p.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return p.as_posix()
