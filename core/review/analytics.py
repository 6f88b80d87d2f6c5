"""Numbers for the Home page and the Dashboard: pipeline counts and chart data, as plain rows.

Every function is one or two aggregate queries, so pages stay fast however many conversations exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.db import Database, loads
from core.corpus.documents import plural

NO_PROMPT_VERSION = "written, no prompt (example set)"  # conversations not generated with any prompt version
STAGES = ("corpus", "briefings", "questions", "retrieval", "conversations", "review", "export")


def pipeline_counts(db: Database, collection: str, exports_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Live counts at each stage, corpus → briefings → questions → retrieval → conversations → review → export."""
    corpus = db.one("SELECT COUNT(*) AS documents, COALESCE(SUM(n_chunks),0) AS chunks FROM documents "
                    "WHERE collection=? AND status='complete'", [collection])
    chunks = db.one("SELECT COALESCE(SUM(briefing_uses),0) AS briefings, SUM(briefing_uses>0) AS briefed, "
                    "COALESCE(SUM(retrieved_uses),0) AS retrieved, SUM(retrieved_uses>0) AS retrieved_distinct "
                    "FROM chunks WHERE collection=?", [collection])
    conv = db.one("SELECT COUNT(*) AS total, COUNT(DISTINCT question) AS questions, SUM(status='approved') AS approved, "
                  "SUM(status='discarded') AS discarded, SUM(status='new') AS new, SUM(rating IS NOT NULL) AS rated "
                  "FROM conversations")
    exports = len(list(exports_dir.rglob("manifest.json"))) if exports_dir and exports_dir.exists() else 0
    return {
        "corpus": {"value": corpus["documents"], "detail": plural(corpus["chunks"], "chunk")},
        "briefings": {"value": chunks["briefings"] or 0, "detail": plural(chunks["briefed"] or 0, "passage") + " sampled"},
        "questions": {"value": conv["questions"] or 0, "detail": "distinct opening questions"},
        "retrieval": {"value": chunks["retrieved"] or 0,
                      "detail": plural(chunks["retrieved_distinct"] or 0, "distinct passage") + " retrieved"},
        "conversations": {"value": conv["total"] or 0, "detail": f"{conv['rated'] or 0:,} rated"},
        "review": {"value": (conv["approved"] or 0) + (conv["discarded"] or 0),
                   "detail": f"{conv['approved'] or 0:,} approved · {conv['discarded'] or 0:,} discarded"},
        "export": {"value": exports, "detail": "exports written"},
    }


def conversations_by_status(db: Database) -> list[dict[str, Any]]:
    return db.rows("SELECT status, COUNT(*) AS conversations FROM conversations GROUP BY status ORDER BY status")


def latest_run(db: Database) -> dict[str, Any] | None:
    return db.one("SELECT id, kind, status, reason, num_dialogs, saved, failed, provider, model, created_at "
                  "FROM runs WHERE kind='generate' ORDER BY created_at DESC LIMIT 1")


def run_choices(db: Database) -> list[dict[str, Any]]:
    # Every run, also one cancelled or failed before it saved anything: the Dashboard must show it.
    return db.rows("SELECT id, kind, status, saved, num_dialogs, created_at FROM runs "
                   "ORDER BY created_at DESC LIMIT 100")


def _run_filter(run_id: str | None) -> tuple[str, list[Any]]:
    return ("WHERE run_id=?", [run_id]) if run_id else ("", [])


def conversations_per_minute(db: Database, run_id: str | None) -> list[dict[str, Any]]:
    where, params = _run_filter(run_id)
    return db.rows(f"SELECT substr(created_at, 1, 16) AS minute, COUNT(*) AS conversations FROM conversations "
                   f"{where} GROUP BY minute ORDER BY minute", params)


def run_outcomes(db: Database) -> list[dict[str, Any]]:
    """Every generation run with its outcome: saved, failed and never done, and the success rate.

    Cancelled, failed and interrupted runs are listed too (with their reason), even when nothing was saved.
    """
    rows = db.rows("SELECT r.id AS run_id, r.created_at, r.status, r.reason, r.num_dialogs, r.saved, "
                   "(SELECT COUNT(*) FROM work_items w WHERE w.run_id=r.id AND w.status='failed') AS failed, "
                   "(SELECT COALESCE(SUM(attempts),0) FROM work_items w WHERE w.run_id=r.id) AS attempts "
                   "FROM runs r WHERE r.kind='generate' ORDER BY r.created_at")
    for r in rows:
        r["not_done"] = max((r["num_dialogs"] or 0) - r["saved"] - r["failed"], 0)
        r["run"] = f"{r['run_id']} · {r['status']}"
        r["success_rate"] = round(r["saved"] / r["attempts"], 3) if r["attempts"] else None
        r["error_rate"] = round(1 - r["success_rate"], 3) if r["success_rate"] is not None else None
    return rows


def tokens_per_conversation(db: Database, run_id: str | None) -> list[dict[str, Any]]:
    """Token counts of generated conversations; written ones (the example set: no LLM calls) have none to count."""
    where, params = _run_filter(run_id)
    where = (where + " AND" if where else "WHERE") + " prompt_tokens + completion_tokens + thinking_tokens > 0"
    return db.rows(f"SELECT id, prompt_tokens, completion_tokens, thinking_tokens, "
                   f"prompt_tokens + completion_tokens + thinking_tokens AS total_tokens FROM conversations {where}",
                   params)


def turn_counts(db: Database, run_id: str | None) -> list[dict[str, Any]]:
    where, params = _run_filter(run_id)
    return db.rows(f"SELECT num_turns AS turns, COUNT(*) AS conversations FROM conversations {where} "
                   f"GROUP BY num_turns ORDER BY num_turns", params)


def ratings_by_prompt_version(db: Database) -> list[dict[str, Any]]:
    rows = db.rows("SELECT json_extract(c.prompt_versions, '$.respondent') AS version_id, c.rating, COUNT(*) AS n "
                   "FROM conversations c WHERE c.rating IS NOT NULL GROUP BY version_id, c.rating")
    versions = {r["id"]: r for r in db.rows("SELECT id, version, name FROM prompt_versions WHERE kind='respondent'")}
    for r in rows:
        v = versions.get(r["version_id"])
        r["respondent_version"] = (f"v{v['version']} · {v['name']}" if v else f"#{r['version_id']}"
                                   if r["version_id"] is not None else NO_PROMPT_VERSION)
    return rows


def judge_scores(db: Database, run_id: str | None) -> list[dict[str, Any]]:
    where, params = _run_filter(run_id)
    where = (where + " AND" if where else "WHERE") + " judge IS NOT NULL"
    out = []
    for r in db.rows(f"SELECT id, judge FROM conversations {where}", params):
        record = loads(r["judge"], {})
        for i, attempt in enumerate(record.get("attempts", [])):
            out.append({"conversation_id": r["id"], "attempt": i + 1, "overall": attempt["overall"],
                        "kept": i == record.get("best"), **attempt["scores"]})
    return out
