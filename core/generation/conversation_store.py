"""Conversations in SQLite: one insert path for the engine, the dry run and A/B, and one JSONL record shape."""

from __future__ import annotations

from typing import Any

from core.db import Database, dumps, loads, new_id, now
from core.errors import NotFoundError
from core.generation.simulator import CallRecord, Question


def _insert(w, table: str, row: dict[str, Any]) -> int:
    """INSERT one row of plain values; returns its rowid.

    sqlite-utils' ``insert`` rebuilds the statement and checks every value's type per row (~0.16 ms, ten
    times the insert itself); a run stores about ten rows per conversation, all of known shape.
    """
    sql = f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
    return w.execute(sql, list(row.values())).lastrowid


def store_call(w, run_id: str, conversation_id: str | None, record: CallRecord) -> int:
    """Insert one LLM call (rendered prompt, reply, tokens, latency) inside a write transaction ``w``."""
    r = record.result
    return _insert(w, "calls", {"conversation_id": conversation_id, "run_id": run_id, "purpose": record.purpose,
                       "system_prompt": record.system_prompt, "messages": dumps(record.messages), "response": r.text,
                       "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                       "thinking_tokens": r.thinking_tokens, "latency_ms": r.latency_ms,
                       "finish_reason": r.finish_reason, "created_at": now()})


def store_conversation(w, *, run_id: str, work_item_id: str | None, provider: str, model: str,
                       prompt_versions: dict[str, int], question: Question, result: dict[str, Any], turns: int,
                       comparison_id: str | None = None, arm: str | None = None,
                       parent_id: str | None = None, judge: str | None = None) -> str:
    """Insert a simulated conversation (turns with per-turn retrieval, and its calls) inside ``w``.

    The engine, the dry run and prompt A/B all store conversations through this one function, so
    every conversation looks the same to review and export wherever it came from.
    """
    conversation_id = new_id()
    calls: list[CallRecord] = result["calls"]
    totals = {k: sum(getattr(c.result, k) for c in calls)
              for k in ("prompt_tokens", "completion_tokens", "thinking_tokens", "latency_ms")}
    created = now()
    _insert(w, "conversations", {
        "id": conversation_id, "run_id": run_id, "work_item_id": work_item_id, "status": "new",
        "provider": provider, "model": model, "prompt_versions": dumps(prompt_versions),
        "briefing": question.briefing, "briefing_ids": dumps(question.briefing_ids),
        "question": question.text, "question_meta": dumps(question.meta), "num_turns": turns,
        **totals, "created_at": created, "comparison_id": comparison_id, "arm": arm, "parent_id": parent_id,
        "judge": judge,
        "search_text": "\n".join(t["content"] for t in result["turns"]),
    })
    for idx, t in enumerate(result["turns"]):
        call = t["call"]
        _insert(w, "turns", {
            "conversation_id": conversation_id, "idx": idx, "role": t["role"], "content": t["content"],
            "weight": 1, "retrieval": dumps(t["retrieval"]) if t["retrieval"] is not None else None,
            "query": t.get("query"),
            "prompt_tokens": call.result.prompt_tokens if call else 0,
            "completion_tokens": call.result.completion_tokens if call else 0,
            "thinking_tokens": call.result.thinking_tokens if call else 0,
            "latency_ms": call.result.latency_ms if call else 0, "created_at": created})
    for c in calls:
        store_call(w, run_id, conversation_id, c)
    for t in result["turns"]:
        for p in t["retrieval"] or []:
            if p.get("carried"):
                continue  # counted once, for the turn that retrieved it
            w.execute("UPDATE chunks SET retrieved_uses = retrieved_uses + 1 WHERE id=?", [p["id"]])
    return conversation_id


def conversation_record(db: Database, conversation_id: str) -> dict[str, Any]:
    """A conversation as one self-explaining JSONL row: messages plus where every answer came from."""
    c = db.one("SELECT * FROM conversations WHERE id=?", [conversation_id])
    if not c:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    turns = db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [conversation_id])
    briefing_ids = loads(c["briefing_ids"], [])
    return {
        "id": c["id"], "run_id": c["run_id"], "provider": c["provider"], "model": c["model"],
        "prompt_versions": loads(c["prompt_versions"], {}),
        "messages": [{"role": t["role"], "content": t["content"]} for t in turns],
        "context": c["briefing"], "context_id": briefing_ids[0] if briefing_ids else None,
        "context_ids": briefing_ids, "question_meta": loads(c["question_meta"], {}),
        "retrieved_context": [
            {"turn": t["idx"], "query": t.get("query"), "passages": [
                {"id": p["id"], "score": p["score"], "text": p["text"], "document_id": p.get("document_id"),
                 "title": p.get("title"), "source_path": p.get("source_path"), "carried": bool(p.get("carried")),
                 "found_by": p.get("found_by", []), "used": p.get("used")} for p in loads(t["retrieval"], [])]}
            for t in turns if t["role"] == "assistant"],
        "tokens": {"prompt": c["prompt_tokens"], "completion": c["completion_tokens"],
                   "thinking": c["thinking_tokens"]},
        "latency_ms": c["latency_ms"], "num_turns": c["num_turns"], "created_at": c["created_at"],
        "status": c["status"],
    }


