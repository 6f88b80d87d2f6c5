"""Retrieval for a run: top-k passages per query, from a snapshot of the vectors or live from the store."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.corpus.collection import Corpus, Passage
from core.errors import GroundworkError, RunStopped
from core.corpus.lexical import search as lexical_search
from core.corpus.vectorstore import PointFilter


class Retriever:
    """Top-k passages for a query, from a snapshot of an embedded store or live from the store.

    A snapshot reads the vectors once at run start and searches them in memory (exact cosine, as
    local mode itself does), then the store is released: a long batch does not hold the folder lock,
    so the app stays usable on the same data dir while a CLI batch runs. Runs on a large Edge collection
    search it live instead and hold it (``SNAPSHOT_MAX_POINTS``).
    With ``background=True`` the snapshot loads (or, searching live, the collection is verified) on
    its own thread while the run's first instruction calls are in flight; the first search waits for
    it, and a failure (empty collection, another model's vectors) stops the run with its message
    instead of failing conversation after conversation.
    """

    def __init__(self, corpus: Corpus, snapshot: bool, background: bool = False):
        self.corpus = corpus
        self._ids: list[str] = []
        self._matrix: np.ndarray | None = None
        self._payloads: list[dict[str, Any]] = []
        self._index: dict[str, int] = {}  # chunk id -> row of the snapshot
        self._by_document: dict[str, list[int]] = {}  # document id -> rows of the snapshot
        # Chunk rows by id: each lexical search reads ~20 (one SQLite query each), mostly the same ones turn
        # after turn; a chunk's id is its content, so a row read once stays right for the run.
        self._chunks: dict[str, dict[str, Any] | None] = {}
        self.snapshot = snapshot
        self._ready = threading.Event()
        self._error: GroundworkError | None = None
        self._loader: threading.Thread | None = None
        if background:
            self._loader = threading.Thread(target=self._load_in_background, name="retriever-snapshot", daemon=True)
            self._loader.start()
        else:
            if snapshot:
                self._load_snapshot()
            self._ready.set()

    def _load_in_background(self) -> None:
        try:
            if self.snapshot:
                self._load_snapshot()
            else:
                self.corpus.verify()
        except GroundworkError as e:
            self._error = e
        except Exception as e:  # the store's own errors: keep the message, never a bare traceback
            self._error = GroundworkError(f"Could not load the collection for retrieval: {type(e).__name__}: {e}")
        finally:
            self._ready.set()

    def wait_ready(self) -> None:
        """Block until the snapshot is loaded; a failed load stops the run (``check`` re-raises it)."""
        self._ready.wait()
        if self._error is not None:
            raise RunStopped(str(self._error))

    def close(self) -> None:
        """Wait for the background load or verification to end."""
        if self._loader is not None:
            self._loader.join()

    def check(self) -> None:
        """Wait for the background load or verification; raise its error, if any."""
        self.close()
        if self._error is not None:
            raise self._error

    def _load_snapshot(self) -> None:
        with self.corpus.stores.use() as store:
            self.corpus.verify(store)
            offset = None
            vectors = []
            while True:
                rows, offset = store.scroll(self.corpus.collection, limit=1024, offset=offset, with_vectors=True)
                for r in rows:
                    self._ids.append(r["id"])
                    self._payloads.append(r["payload"])
                    vectors.append(r["vector"])
                if offset is None:
                    break
        if not vectors:
            raise GroundworkError(f"Collection {self.corpus.collection!r} is empty: index a corpus first.")
        self._index = {pid: i for i, pid in enumerate(self._ids)}
        for i, payload in enumerate(self._payloads):
            self._by_document.setdefault(str(payload.get("document_id", "")), []).append(i)
        m = np.asarray(vectors, dtype=np.float32)
        self._matrix = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    def __len__(self) -> int:
        return len(self._ids)

    # ---- one side each ---------------------------------------------------------------------------
    def dense(self, vector: np.ndarray, n: int, document_ids: Sequence[str] | None = None,
              exclude_ids: Sequence[str] = ()) -> list[Passage]:
        """Top-n by cosine similarity, optionally within some documents."""
        self.wait_ready()
        if document_ids is not None and not document_ids:
            return []
        if not self.snapshot:
            flt = PointFilter(document_ids=list(document_ids) if document_ids is not None else None,
                              exclude_ids=tuple(exclude_ids))
            return self.corpus.search_vector(vector, n, flt)
        scores = self._matrix @ vector
        if document_ids is not None:
            allowed = np.zeros(len(self._ids), dtype=bool)
            for d in document_ids:
                allowed[self._by_document.get(d, [])] = True
            scores = np.where(allowed, scores, -np.inf)
        for pid in exclude_ids:
            if pid in self._index:
                scores[self._index[pid]] = -np.inf
        n = min(n, len(self._ids))
        if n <= 0:
            return []
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top])]
        return [self.corpus._passage(_HitView(self._ids[i], float(scores[i]), self._payloads[i]))
                for i in top if np.isfinite(scores[i])]

    def lexical(self, query: str, n: int, document_ids: Sequence[str] | None = None,
                exclude_ids: Sequence[str] = ()) -> list[Passage]:
        """Top-n by BM25 over the chunks' full-text index (identifiers, names, rare terms)."""
        hits = lexical_search(self.corpus.db, self.corpus.collection, query, n, document_ids, exclude_ids)
        return [p for p in (self._passage_by_id(h.id, h.score) for h in hits) if p is not None]

    # ---- fused ----------------------------------------------------------------------------------
    def search(self, query: str, k: int, conversation_docs: Sequence[str] | None = None,
               exclude_ids: Sequence[str] = (), mode: str = "hybrid", anchored: bool = False) -> list[Passage]:
        """Top-k passages for ``query``: dense and lexical fused by reciprocal rank (``mode="hybrid"``).

        ``conversation_docs`` adds a third ranking, dense search within the documents the conversation is
        already about, so a follow-up that leans on the conversation ("why did the court decide that
        way?") still finds its passages when the words alone would point elsewhere. ``anchored``: the
        turn is about those documents, so no other document is pushed in for variety and the
        conversation's ranking counts double.
        """
        if not query.strip():
            return []
        vector = self.corpus.embedder.encode_query(query)
        return self.search_vector(vector, query, k, conversation_docs, exclude_ids, mode, anchored)

    def search_many(self, queries: list[str], k: int, mode: str = "hybrid",
                    conversation_docs: Sequence[Sequence[str] | None] | None = None,
                    anchored: bool = False) -> list[list[Passage]]:
        """Top-k for several queries, their vectors encoded in one pass (each with its own documents, if given)."""
        vectors = self.corpus.embedder.encode_queries(queries)
        docs = list(conversation_docs) if conversation_docs is not None else [None] * len(queries)
        return [self.search_vector(v, q, k, mode=mode, conversation_docs=d, anchored=anchored and bool(d))
                for v, q, d in zip(vectors, queries, docs)]

    def search_vector(self, vector: np.ndarray, query: str, k: int, conversation_docs: Sequence[str] | None = None,
                      exclude_ids: Sequence[str] = (), mode: str = "hybrid", anchored: bool = False) -> list[Passage]:
        depth = max(CANDIDATES, 4 * k)
        sides: dict[str, list[Passage]] = {"dense": self.dense(vector, depth, exclude_ids=exclude_ids)}
        if mode == "dense":
            return [_ranked(p, {"dense": i}) for i, p in enumerate(sides["dense"][:k], 1)]
        sides["lexical"] = self.lexical(query, depth, exclude_ids=exclude_ids)
        if conversation_docs:
            sides["conversation"] = self.dense(vector, depth, document_ids=list(conversation_docs),
                                               exclude_ids=exclude_ids)
        if anchored and conversation_docs:
            return fuse(sides, k, per_document=k, weights={"conversation": ANCHOR_WEIGHT})
        return fuse(sides, k)

    def passages_by_id(self, ids: list[str]) -> list[Passage]:
        return [p for p in (self._passage_by_id(cid, 1.0) for cid in ids) if p is not None]

    def _passage_by_id(self, chunk_id: str, score: float) -> Passage | None:
        c = self._chunks.get(chunk_id)
        if c is None:
            c = self.corpus.chunk(chunk_id)
            if c is not None and len(self._chunks) < CHUNK_CACHE:
                self._chunks[chunk_id] = c
        if not c:
            return None
        return Passage(id=c["id"], score=score, text=c["text"], document_id=c["document_id"], title=c["title"],
                       source_path=c["source_path"], position=c["position"])


def search(corpus: Corpus, query: str, k: int = 3, mode: str = "hybrid") -> list[Passage]:
    """One search as the CLI, the Corpus page and the Workshop preview run it: the engine's own retrieval."""
    return Retriever(corpus, snapshot=False).search(query, k, mode=mode)


def found_by_label(ranks: dict[str, int]) -> str:
    """Which side found a hit, and at what rank: "dense #1 · lexical #4"."""
    return " · ".join(f"{side} #{rank}" for side, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


CHUNK_CACHE = 50_000  # chunk rows a retriever keeps (the text of ~50k chunks: tens of MB at most)
RRF_K = 60  # the usual reciprocal-rank-fusion constant: ranks past ~60 add almost nothing
CANDIDATES = 20  # how deep each side is read before fusing
# In a turn anchored on the conversation's documents, their ranking outvotes a passage that only the
# words of the query favour (the sibling document that happens to use the same words).
ANCHOR_WEIGHT = 2.0


def fuse(sides: dict[str, list[Passage]], k: int, per_document: int | None = None,
         weights: dict[str, float] | None = None) -> list[Passage]:
    """Reciprocal rank fusion of ranked lists; each hit keeps its rank on every side that found it.

    Two corrections to plain RRF, both about what a top-3 must not lose:
    - each side's best hit is kept: a passage that is first for BM25 alone (an exact docket number,
      an error code) otherwise loses to passages that are middling on both sides;
    - with k >= 3, one document fills at most k - 1 places, so a question that moves to another
      document (a case the first one cited) still sees it, and an answer sees an alternative.
    Scores are scaled so that a passage ranked first on every side scores 1.0; they compare hits of
    one query, not queries. ``per_document`` overrides the cap (a turn about one document is not given
    another for variety); ``weights`` scale a side's votes.
    """
    weights = weights or {}
    fused: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    first: dict[str, Passage] = {}
    for side, hits in sides.items():
        weight = weights.get(side, 1.0)
        for rank, p in enumerate(hits, 1):
            fused[p.id] = fused.get(p.id, 0.0) + weight / (RRF_K + rank)
            ranks.setdefault(p.id, {})[side] = rank
            first.setdefault(p.id, p)
    order = sorted(fused, key=lambda pid: (-fused[pid], min(ranks[pid].values()), pid))
    champions = [pid for pid in order if 1 in ranks[pid].values()]
    if per_document is None:
        per_document = k - 1 if k >= 3 else k
    chosen: list[str] = champions[:k]
    for pid in order:
        if len(chosen) >= k:
            break
        doc = first[pid].document_id
        if pid not in chosen and sum(first[c].document_id == doc for c in chosen) < per_document:
            chosen.append(pid)
    best = sum(weights.get(side, 1.0) for side in sides) / (RRF_K + 1)
    chosen.sort(key=order.index)
    return [_ranked(first[pid], ranks[pid], fused[pid] / best) for pid in chosen]


def _ranked(p: Passage, ranks: dict[str, int], score: float | None = None) -> Passage:
    return replace(p, ranks=dict(ranks), score=p.score if score is None else score)


@dataclass
class _HitView:
    id: str
    score: float
    payload: dict[str, Any]

