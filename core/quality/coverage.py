"""Corpus coverage: which documents and chunks were sampled for briefings and which were retrieved."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any


from core.db import Database
from core.errors import NotFoundError


# json_each raises on malformed JSON even where a WHERE clause would have skipped the row.
def _json_or_empty(column: str) -> str:
    return f"CASE WHEN json_valid({column}) THEN {column} ELSE '[]' END"


@dataclass
class CoverageReport:
    """Plain data for tables and plotly charts.

    ``documents``: one dict per document (``title``, ``chunks``, ``briefing_uses``, ``retrieved_uses``,
    ``chunks_briefed``, ``chunks_retrieved``, ``briefed``, ``retrieved`` …), most used first.
    ``uncovered``: the documents neither sampled for a briefing nor retrieved.
    ``summary``: totals and shares (``share_briefed``, ``share_retrieved`` …).
    """

    documents: list[dict[str, Any]]
    uncovered: list[dict[str, Any]]
    summary: dict[str, Any]


def coverage(db: Database, *, collection: str | None = None, run_id: str | None = None) -> CoverageReport:
    """Which documents and chunks were sampled for briefings and which were retrieved for answers.

    Args:
        collection: only this collection's documents; None: all.
        run_id: count only this run's saved conversations: ``briefing_uses`` is then how many of its
            conversations were built on the chunk (one sampled briefing feeds several questions) and
            ``retrieved_uses`` how often its turns retrieved it. None: the corpus-wide counters
            (``chunks.briefing_uses`` = times sampled, failed conversations included;
            ``chunks.retrieved_uses``) and every stored turn's retrieval.
    """
    doc_sql = "SELECT id, title, source_path, collection, status FROM documents"
    chunk_sql = "SELECT id, document_id, briefing_uses, retrieved_uses FROM chunks"
    params: list[Any] = []
    if collection:
        doc_sql += " WHERE collection=?"
        chunk_sql += " WHERE collection=?"
        params = [collection]
    documents = db.rows(doc_sql + " ORDER BY title, id", params)
    chunks = db.rows(chunk_sql, params)
    chunk_doc = {c["id"]: c["document_id"] for c in chunks}

    run_filter = " AND c.run_id=?" if run_id else ""
    run_params = [run_id] if run_id else []
    retrieved = db.rows(
        "SELECT json_extract(j.value, '$.id') AS chunk_id, json_extract(j.value, '$.document_id') AS document_id, "
        "COUNT(*) AS n FROM turns t JOIN conversations c ON c.id = t.conversation_id, "
        f"json_each({_json_or_empty('t.retrieval')}) j WHERE t.role='assistant'{run_filter} GROUP BY 1, 2",
        run_params)
    turn_uses: dict[str, int] = defaultdict(int)  # chunk id → retrievals stored with turns
    doc_turn_uses: dict[str, int] = defaultdict(int)
    for r in retrieved:
        doc = chunk_doc.get(r["chunk_id"]) or r["document_id"]  # a re-indexed document has new chunk ids
        turn_uses[r["chunk_id"]] += r["n"]
        if doc:
            doc_turn_uses[doc] += r["n"]
    if run_id:
        briefed = db.rows("SELECT j.value AS chunk_id, COUNT(*) AS n FROM conversations c, json_each("
                          + _json_or_empty("c.briefing_ids") + ") j WHERE c.run_id=? GROUP BY 1", [run_id])
        briefing_uses = {r["chunk_id"]: r["n"] for r in briefed}
        retrieved_uses = dict(turn_uses)
    else:
        briefing_uses = {c["id"]: c["briefing_uses"] or 0 for c in chunks}
        retrieved_uses = {c["id"]: max(c["retrieved_uses"] or 0, turn_uses.get(c["id"], 0)) for c in chunks}

    per_doc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in chunks:
        d = per_doc[c["document_id"]]
        b, r = briefing_uses.get(c["id"], 0), retrieved_uses.get(c["id"], 0)
        d["chunks"] += 1
        d["briefing_uses"] += b
        d["retrieved_uses"] += r
        d["chunks_briefed"] += b > 0
        d["chunks_retrieved"] += r > 0
    rows = []
    for doc in documents:
        d = per_doc.get(doc["id"], {})
        row = {"document_id": doc["id"], "title": doc["title"], "source_path": doc["source_path"],
               "collection": doc["collection"], "status": doc["status"], "chunks": d.get("chunks", 0),
               "briefing_uses": d.get("briefing_uses", 0), "retrieved_uses": d.get("retrieved_uses", 0),
               "turn_retrievals": doc_turn_uses.get(doc["id"], 0), "chunks_briefed": d.get("chunks_briefed", 0),
               "chunks_retrieved": d.get("chunks_retrieved", 0)}
        row["briefed"] = row["briefing_uses"] > 0
        row["retrieved"] = row["retrieved_uses"] > 0 or row["turn_retrievals"] > 0
        row["share_chunks_briefed"] = _share(row["chunks_briefed"], row["chunks"])
        row["share_chunks_retrieved"] = _share(row["chunks_retrieved"], row["chunks"])
        rows.append(row)
    rows.sort(key=lambda r: (-(r["briefing_uses"] + r["retrieved_uses"]), r["title"] or ""))
    uncovered = [r for r in rows if not r["briefed"] and not r["retrieved"]]
    n_docs, n_chunks = len(rows), sum(r["chunks"] for r in rows)
    summary = {
        "run_id": run_id, "collection": collection, "documents": n_docs,
        "documents_briefed": sum(r["briefed"] for r in rows),
        "documents_retrieved": sum(r["retrieved"] for r in rows),
        "documents_uncovered": len(uncovered),
        "chunks": n_chunks,
        "chunks_briefed": sum(r["chunks_briefed"] for r in rows),
        "chunks_retrieved": sum(r["chunks_retrieved"] for r in rows),
        "briefing_uses": sum(r["briefing_uses"] for r in rows),
        "retrievals": sum(r["retrieved_uses"] for r in rows),
    }
    summary["share_briefed"] = _share(summary["documents_briefed"], n_docs)
    summary["share_retrieved"] = _share(summary["documents_retrieved"], n_docs)
    summary["share_chunks_briefed"] = _share(summary["chunks_briefed"], n_chunks)
    summary["share_chunks_retrieved"] = _share(summary["chunks_retrieved"], n_chunks)
    return CoverageReport(rows, uncovered, summary)


def coverage_by_chunk(db: Database, document_id: str, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """Per-chunk briefing and retrieval counts of one document, in document order (drill-down)."""
    chunks = db.rows("SELECT id, position, briefing_uses, retrieved_uses, substr(text, 1, 160) AS preview "
                     "FROM chunks WHERE document_id=? ORDER BY position", [document_id])
    if not chunks:
        if db.scalar("SELECT 1 FROM documents WHERE id=?", [document_id]) is None:
            raise NotFoundError(f"Document {document_id} does not exist.")
        return []
    if run_id:
        ids = [c["id"] for c in chunks]
        marks = ",".join("?" * len(ids))
        retrieved = {r["chunk_id"]: r["n"] for r in db.rows(
            "SELECT json_extract(j.value, '$.id') AS chunk_id, COUNT(*) AS n FROM turns t JOIN conversations c "
            "ON c.id=t.conversation_id, json_each(" + _json_or_empty("t.retrieval") + ") j WHERE "
            f"t.role='assistant' AND c.run_id=? AND json_extract(j.value, '$.id') IN ({marks}) GROUP BY 1",
            [run_id, *ids])}
        briefed = {r["chunk_id"]: r["n"] for r in db.rows(
            "SELECT j.value AS chunk_id, COUNT(*) AS n FROM conversations c, json_each("
            + _json_or_empty("c.briefing_ids") + f") j WHERE c.run_id=? AND j.value IN ({marks}) GROUP BY 1",
            [run_id, *ids])}
        for c in chunks:
            c["briefing_uses"] = briefed.get(c["id"], 0)
            c["retrieved_uses"] = retrieved.get(c["id"], 0)
    return [{"chunk_id": c["id"], "position": c["position"], "briefing_uses": c["briefing_uses"] or 0,
             "retrieved_uses": c["retrieved_uses"] or 0, "preview": c["preview"]} for c in chunks]


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
