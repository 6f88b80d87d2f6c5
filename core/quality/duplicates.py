"""Near-duplicate conversations: question and conversation embeddings, compared blockwise, clustered."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.db import Database
from core.corpus.embeddings import Embedder
from core.errors import NotFoundError
from core.quality.common import LIST_COLUMNS, ProgressFn, chunks, text_hash


QUESTION_DUP_THRESHOLD = 0.88  # cosine of first questions at or above which two conversations are twins
CONVERSATION_DUP_THRESHOLD = 0.9  # cosine of question + first answer at or above which they are twins
CONVERSATION_TEXT_CHARS = 1500  # MiniLM reads ~256 wordpieces; more text would only cost time
_MAX_BLOCK_CELLS = 4_000_000  # similarity cells per block: 16 MB of float32, whatever the corpus size


def similar_pairs(vectors: np.ndarray, threshold: float, *, other: np.ndarray | None = None,
                  other_threshold: float | None = None, block_rows: int = 1024) -> list[tuple[int, int, float]]:
    """Pairs ``i < j`` whose cosine is at or above ``threshold`` (unit vectors), computed blockwise.

    With ``other`` (a second embedding of the same rows), a pair also counts when its similarity in
    ``other`` reaches ``other_threshold``; the reported similarity is the larger of the two.
    Memory stays bounded: each block multiplies at most ``_MAX_BLOCK_CELLS`` cells.
    """
    n = len(vectors)
    pairs: list[tuple[int, int, float]] = []
    if n < 2:
        return pairs
    rows = max(1, min(block_rows, _MAX_BLOCK_CELLS // n))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        # Only columns from ``start`` on: the lower triangle was covered by earlier blocks.
        sims = vectors[start:stop] @ vectors[start:].T
        hit = sims >= threshold
        if other is not None:
            other_sims = other[start:stop] @ other[start:].T
            hit |= other_sims >= (other_threshold if other_threshold is not None else threshold)
            sims = np.maximum(sims, other_sims)
        local_i, local_j = np.nonzero(hit)
        keep = local_j > local_i  # columns are offset by ``start``: j > i means a different, later row
        for i, j in zip(local_i[keep], local_j[keep]):
            pairs.append((start + int(i), start + int(j), float(sims[i, j])))
    return pairs


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _preference(row: dict[str, Any]) -> tuple:
    """Sort key of the conversation to keep: not discarded, best rated, then earliest."""
    rating = row.get("rating")
    return (row.get("status") == "discarded", -(rating if rating is not None else -1), row.get("created_at") or "",
            row["id"])


@dataclass
class DuplicateCluster:
    representative: str
    members: list[str]  # every conversation in the cluster, the representative first
    similarity: dict[str, float]  # member → cosine to the representative (max of question and conversation)


def _conversation_texts(db: Database, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """conversation id → (first question, question + first answer truncated)."""
    out: dict[str, tuple[str, str]] = {}
    for chunk in chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        firsts: dict[str, dict[str, str]] = defaultdict(dict)
        for r in db.rows(f"SELECT conversation_id, role, content FROM turns WHERE conversation_id IN ({marks}) "
                         "AND idx <= 1 ORDER BY conversation_id, idx", chunk):
            firsts[r["conversation_id"]].setdefault(r["role"], r["content"] or "")
        for r in db.rows(f"SELECT id, question FROM conversations WHERE id IN ({marks})", chunk):
            question = (r["question"] or firsts[r["id"]].get("user", "")).strip()
            answer = firsts[r["id"]].get("assistant", "").strip()
            out[r["id"]] = (question, (question + "\n\n" + answer)[:CONVERSATION_TEXT_CHARS])
    return out



def conversation_vectors(db: Database, embedder: Embedder, ids: Sequence[str],
                         progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of each conversation's first question and of its question + first answer.

    Vectors are cached in ``quality_vectors`` (keyed by model and text hash), so re-running
    near-duplicate detection after a new batch embeds only the new conversations.
    """
    texts = _conversation_texts(db, ids)
    model = embedder.model_name
    cached: dict[tuple[str, str], tuple[str, bytes]] = {}
    for chunk in chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        for r in db.rows(f"SELECT conversation_id, kind, text_hash, vector FROM quality_vectors "
                         f"WHERE model=? AND conversation_id IN ({marks})", [model, *chunk]):
            cached[(r["conversation_id"], r["kind"])] = (r["text_hash"], r["vector"])
    wanted: dict[tuple[str, str], str] = {}
    for cid in ids:
        q, c = texts.get(cid, ("", ""))
        wanted[(cid, "question")] = q
        wanted[(cid, "conversation")] = c
    vectors: dict[tuple[str, str], np.ndarray] = {}
    missing = []
    for key, text in wanted.items():
        hit = cached.get(key)
        if hit and hit[0] == text_hash(text):
            vectors[key] = np.frombuffer(hit[1], dtype=np.float32)
        else:
            missing.append(key)
    if missing:
        encoded = embedder.encode([wanted[k] for k in missing], progress=progress)
        with db.write() as w:
            w.conn.executemany(
                "INSERT OR REPLACE INTO quality_vectors (conversation_id, kind, model, text_hash, vector) "
                "VALUES (?, ?, ?, ?, ?)",
                [(k[0], k[1], model, text_hash(wanted[k]), encoded[i].astype(np.float32).tobytes())
                 for i, k in enumerate(missing)])
        for i, k in enumerate(missing):
            vectors[k] = encoded[i]
    elif progress:
        progress(len(ids), len(ids))
    dim = embedder.dim
    q = np.array([vectors[(cid, "question")] for cid in ids], dtype=np.float32).reshape(len(ids), dim)
    c = np.array([vectors[(cid, "conversation")] for cid in ids], dtype=np.float32).reshape(len(ids), dim)
    return q, c


def find_near_duplicates(db: Database, embedder: Embedder, *, run_id: str | None = None,
                         question_threshold: float = QUESTION_DUP_THRESHOLD,
                         conversation_threshold: float = CONVERSATION_DUP_THRESHOLD,
                         progress: ProgressFn | None = None) -> list[DuplicateCluster]:
    """Clusters of near-duplicate conversations (nothing is stored; see :func:`mark_near_duplicates`).

    Two conversations are twins when their first questions are at least ``question_threshold``
    similar (a paraphrased question) or their question + first answer at least
    ``conversation_threshold``; clusters are the connected components of the twin pairs.
    """
    sql = "SELECT id, status, rating, created_at FROM conversations" + (" WHERE run_id=?" if run_id else "")
    rows = db.rows(sql + " ORDER BY created_at, id", [run_id] if run_id else [])
    if len(rows) < 2:
        return []
    ids = [r["id"] for r in rows]
    q, c = conversation_vectors(db, embedder, ids, progress)
    pairs = similar_pairs(q, question_threshold, other=c, other_threshold=conversation_threshold)
    uf = _UnionFind(len(ids))
    for i, j, _ in pairs:
        uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)):
        groups[uf.find(i)].append(i)
    clusters = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda i: _preference(rows[i]))
        rep = ordered[0]
        sims = np.maximum(q[ordered] @ q[rep], c[ordered] @ c[rep])
        clusters.append(DuplicateCluster(ids[rep], [ids[i] for i in ordered],
                                         {ids[i]: round(float(s), 4) for i, s in zip(ordered, sims)}))
    clusters.sort(key=lambda cl: -len(cl.members))
    return clusters


def mark_near_duplicates(db: Database, embedder: Embedder, *, run_id: str | None = None,
                         question_threshold: float = QUESTION_DUP_THRESHOLD,
                         conversation_threshold: float = CONVERSATION_DUP_THRESHOLD,
                         progress: ProgressFn | None = None) -> list[DuplicateCluster]:
    """Find near-duplicate clusters and store them: ``dup_of`` points each twin at its cluster's
    representative (best rated, then earliest); ``dup_similarity`` is set on every member,
    the representative included (its closest twin), so "has a twin" is ``dup_similarity IS NOT NULL``.

    Earlier marks within the scope (one run, or everything) are cleared first.
    """
    clusters = find_near_duplicates(db, embedder, run_id=run_id, question_threshold=question_threshold,
                                    conversation_threshold=conversation_threshold, progress=progress)
    with db.write() as w:
        if run_id:
            w.execute("UPDATE conversations SET dup_of=NULL, dup_similarity=NULL WHERE run_id=?", [run_id])
        else:
            w.execute("UPDATE conversations SET dup_of=NULL, dup_similarity=NULL "
                      "WHERE dup_of IS NOT NULL OR dup_similarity IS NOT NULL")
        for cl in clusters:
            twins = [m for m in cl.members if m != cl.representative]
            w.execute("UPDATE conversations SET dup_similarity=? WHERE id=?",
                      [max(cl.similarity[m] for m in twins), cl.representative])
            w.conn.executemany("UPDATE conversations SET dup_of=?, dup_similarity=? WHERE id=?",
                               [(cl.representative, cl.similarity[m], m) for m in twins])
    return clusters


def near_duplicates_of(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    """The other members of a conversation's cluster (for the review page's link to the twin)."""
    row = db.one("SELECT id, dup_of FROM conversations WHERE id=?", [conversation_id])
    if not row:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    root = row["dup_of"] or row["id"]
    return db.rows(f"SELECT {LIST_COLUMNS} FROM conversations WHERE (id=? OR dup_of=?) AND id<>? "
                   "ORDER BY dup_of IS NOT NULL, created_at", [root, root, conversation_id])


def keep_best_of_clusters(db: Database, conversation_ids: Sequence[str]) -> list[str]:
    """Drop stored near-duplicates from ``conversation_ids``, keeping the best of each cluster.

    Only conversations in ``conversation_ids`` compete (the cluster's representative may have been
    filtered out of an export); the kept one is the best rated now, then the earliest. Order of
    the input is preserved; ids without a stored cluster are all kept.
    """
    ids = list(dict.fromkeys(conversation_ids))
    rows: dict[str, dict[str, Any]] = {}
    for chunk in chunks(ids, 500):
        marks = ",".join("?" * len(chunk))
        for r in db.rows(f"SELECT id, dup_of, status, rating, created_at FROM conversations WHERE id IN ({marks})",
                         chunk):
            rows[r["id"]] = r
    best: dict[str, dict[str, Any]] = {}
    for cid in ids:
        r = rows.get(cid)
        if r is None:
            continue
        key = r["dup_of"] or r["id"]
        if key not in best or _preference(r) < _preference(best[key]):
            best[key] = r
    keep = {r["id"] for r in best.values()}
    return [cid for cid in ids if cid in keep or cid not in rows]
