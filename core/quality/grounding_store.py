"""Grounding stored with conversations: score, re-score, read back, list the weakly grounded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from core.db import Database, dumps, loads, now
from core.corpus.embeddings import Embedder
from core.errors import NotFoundError
from core.quality.common import LIST_COLUMNS, ProgressFn, text_hash
from core.quality.grounding import (GroundingChecker, TurnGrounding, TurnInput, WEAKLY_GROUNDED_BELOW,
                                    conversation_inputs)
from core.quality.verdicts import TurnVerdict, Verifier


@dataclass
class ConversationGrounding:
    conversation_id: str
    score: float | None  # the worst turn's score (conversation_score); None when no turn makes a claim
    turns: list[TurnGrounding]

    @property
    def citation_flags(self) -> int:
        return sum(len(t.citations) for t in self.turns)


def _checker(db: Database, embedder: Embedder) -> GroundingChecker:
    """A checker whose sentence vectors are kept beside this database (what a run embedded, Review reuses)."""
    path = getattr(db, "path", None)
    return GroundingChecker(embedder, data_dir=Path(path).parent if path and Path(path).is_file() else None)


def conversation_score(turn_scores: list[float]) -> float | None:
    """The worst answer's score: a flag in any answer flags the conversation (a mean would let two good
    answers hide a changed figure in the third)."""
    return round(min(turn_scores), 4) if turn_scores else None


def _turn_inputs(db: Database, conversation_id: str) -> list[TurnInput]:
    rows = db.rows("SELECT id, idx, role, content, retrieval FROM turns WHERE conversation_id=? ORDER BY idx",
                   [conversation_id])
    return conversation_inputs((r["role"], r["content"], loads(r["retrieval"], []) or [], r["id"], r["idx"])
                               for r in rows)


def score_conversation(db: Database, embedder: Embedder, conversation_id: str,
                       checker: GroundingChecker | None = None) -> ConversationGrounding:
    """Compute and store grounding and citation flags for every assistant turn of one conversation.

    Writes ``turns.grounding`` (JSON per sentence), ``turns.grounding_score``, ``turns.citation_flags``
    and ``conversations.grounding`` / ``citation_flags`` / ``grounded_at``. Call it again after a
    turn is edited: the stored result describes the text it was computed from.

    Raises:
        NotFoundError: the conversation does not exist.
    """
    if db.scalar("SELECT 1 FROM conversations WHERE id=?", [conversation_id]) is None:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    checker = checker or _checker(db, embedder)
    turns = checker.score_turns(list(_turn_inputs(db, conversation_id)))
    scores = [t.score for t in turns if t.score is not None]
    result = ConversationGrounding(conversation_id, conversation_score(scores), turns)
    inputs = {t.turn_id: t for t in _turn_inputs(db, conversation_id)}
    with db.write() as w:
        for t in turns:
            stored = t.to_json() | {"content_hash": text_hash(inputs[t.turn_id].answer)}
            w.execute("UPDATE turns SET grounding=?, grounding_score=?, citation_flags=? WHERE id=?",
                      [dumps(stored), t.score, len(t.citations), t.turn_id])
        w.execute("UPDATE conversations SET grounding=?, citation_flags=?, grounded_at=? WHERE id=?",
                  [result.score, result.citation_flags, now(), conversation_id])
    return result


def score_conversations(db: Database, embedder: Embedder, *, run_id: str | None = None, rescore: bool = False,
                        progress: ProgressFn | None = None, checker: GroundingChecker | None = None) -> int:
    """Score every conversation of a run (or of all runs) that is not scored yet or was edited since.

    Args:
        run_id: only this run's conversations; None: all.
        rescore: also recompute conversations that already have a score.
        progress: called as ``progress(done, total)`` after each conversation.

    Returns:
        How many conversations were scored.
    """
    where, params = [], []
    if run_id:
        where.append("run_id=?")
        params.append(run_id)
    if not rescore:
        # Never scored, or a turn edited since (an edit outside the review page leaves the score stale).
        where.append("(grounded_at IS NULL OR EXISTS (SELECT 1 FROM turns t WHERE t.conversation_id = conversations.id "
                     "AND t.edited_at >= conversations.grounded_at))")  # same millisecond: re-grade
    sql = "SELECT id FROM conversations" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at"
    return score_ids(db, embedder, [r["id"] for r in db.rows(sql, params)], progress=progress, checker=checker)


def score_ids(db: Database, embedder: Embedder, ids: list[str], *, progress: ProgressFn | None = None,
              checker: GroundingChecker | None = None) -> int:
    """Score these conversations (one checker, so passage windows are encoded once); how many were scored."""
    checker = checker or _checker(db, embedder)
    if progress and ids:
        progress(0, len(ids))  # the total at once: the first conversation can take a while
    for n, cid in enumerate(ids, 1):
        score_conversation(db, embedder, cid, checker)
        if progress:
            progress(n, len(ids))
    return len(ids)


def is_flagged(grounding: float | None, citation_flags: int | None) -> bool:
    """The conversation-level flag Review and Export ask about: weakly grounded, or an identifier that none of
    its passages contains (in SQL: core.review.store's "weakly grounded" or "unverified identifiers" condition)."""
    return (grounding is not None and grounding < WEAKLY_GROUNDED_BELOW) or (citation_flags or 0) > 0


def verify_conversation(db: Database, verifier: Verifier, conversation_id: str) -> list[TurnVerdict]:
    """Grade every assistant turn of one conversation with ``verifier`` (e.g. the LLM verifier) and store it.

    The result replaces the stored grounding of each turn (``method`` says which verifier wrote it);
    citation flags from the offline check are kept.

    Raises:
        NotFoundError: the conversation does not exist.
        LLMError: the verifier's provider failed.
    """
    if db.scalar("SELECT 1 FROM conversations WHERE id=?", [conversation_id]) is None:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    inputs = _turn_inputs(db, conversation_id)
    verdicts = verifier.verify_turns(inputs)
    store_verdicts(db, conversation_id, list(zip(inputs, verdicts)))
    return verdicts


def store_verdicts(db: Database, conversation_id: str, graded: list[tuple[TurnInput, TurnVerdict]]) -> None:
    """Write verifier results into ``turns.grounding`` in the shape the review page reads."""
    with db.write() as w:
        for turn, v in graded:
            stored = v.as_stored() | {"content_hash": text_hash(turn.answer)}
            for s in stored["sentences"]:
                s["kind"] = s["verdict"]  # what the highlighting colours by
            old = loads(w.execute("SELECT grounding FROM turns WHERE id=?", [turn.turn_id]).fetchone()[0], {}) or {}
            stored["citations"] = old.get("citations", [])
            w.execute("UPDATE turns SET grounding=?, grounding_score=? WHERE id=?",
                      [dumps(stored), v.score, turn.turn_id])
        scores = [r[0] for r in w.execute("SELECT grounding_score FROM turns WHERE conversation_id=? AND "
                                          "role='assistant' AND grounding_score IS NOT NULL", [conversation_id])]
        w.execute("UPDATE conversations SET grounding=?, grounded_at=? WHERE id=?",
                  [conversation_score(scores), now(), conversation_id])


def regrade_stale(db: Database, embedder: Embedder, conversation_id: str,
                  checker: GroundingChecker | None = None) -> int:
    """Re-grade, with the offline verifier, the turns whose text changed since they were graded.

    The review page calls this right after an edit, so a score never describes text that is gone. Turns
    that did not change keep what graded them (an LLM verdict stays). Returns how many turns were re-graded.
    """
    stale = {d["turn_id"] for d in grounding_details(db, conversation_id) if d["stale"]}
    if not stale:
        return 0
    checker = checker or _checker(db, embedder)
    inputs = [t for t in _turn_inputs(db, conversation_id) if t.turn_id in stale]
    results = checker.score_turns(inputs)
    with db.write() as w:
        for turn, t in zip(inputs, results):
            stored = t.to_json() | {"content_hash": text_hash(turn.answer)}
            w.execute("UPDATE turns SET grounding=?, grounding_score=?, citation_flags=? WHERE id=?",
                      [dumps(stored), t.score, len(t.citations), t.turn_id])
        scores = [r[0] for r in w.execute("SELECT grounding_score FROM turns WHERE conversation_id=? AND "
                                          "role='assistant' AND grounding_score IS NOT NULL", [conversation_id])]
        flags = w.execute("SELECT COALESCE(SUM(citation_flags), 0) FROM turns WHERE conversation_id=?",
                          [conversation_id]).fetchone()[0]
        w.execute("UPDATE conversations SET grounding=?, citation_flags=?, grounded_at=? WHERE id=?",
                  [conversation_score(scores), flags, now(), conversation_id])
    return len(inputs)


def grounding_details(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    """The stored per-turn results of one conversation, for highlighting in the review page.

    Returns:
        One dict per assistant turn: ``turn_id``, ``idx``, ``score``, ``citation_flags``, ``method`` and the
        stored JSON (``sentences`` with ``start``/``end`` spans into the turn's content, a ``kind`` and
        ``verdict`` each, ``passage_id`` and ``evidence``; ``citations``). ``stale`` is True when the turn's
        text changed after it was graded (its spans and score describe the old text). Empty ``sentences``
        when the turn was never graded.
    """
    out = []
    for r in db.rows("SELECT id, idx, content, original_content, grounding, grounding_score, citation_flags FROM turns "
                     "WHERE conversation_id=? AND role='assistant' ORDER BY idx", [conversation_id]):
        data = loads(r["grounding"], {}) or {}
        graded_hash = data.get("content_hash")
        out.append({"turn_id": r["id"], "idx": r["idx"], "score": r["grounding_score"],
                    "citation_flags": r["citation_flags"], "sentences": data.get("sentences", []),
                    "citations": data.get("citations", []), "counts": data.get("counts", {}),
                    "method": data.get("method"),
                    # Results stored before the hash was kept: stale when the turn carries an edit.
                    "stale": bool(data) and (graded_hash != text_hash(r["content"] or "") if graded_hash
                                             else r["original_content"] is not None)})
    return out


def weakly_grounded(db: Database, threshold: float = WEAKLY_GROUNDED_BELOW, *, run_id: str | None = None,
                    limit: int = 500) -> list[dict[str, Any]]:
    """Scored conversations whose grounding is below ``threshold``, worst first."""
    sql = f"SELECT {LIST_COLUMNS} FROM conversations WHERE grounding IS NOT NULL AND grounding < ?"
    params: list[Any] = [threshold]
    if run_id:
        sql += " AND run_id=?"
        params.append(run_id)
    return db.rows(sql + " ORDER BY grounding, created_at LIMIT ?", [*params, limit])


def with_citation_flags(db: Database, *, run_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Conversations with at least one identifier that none of its passages contain, most flags first."""
    sql = f"SELECT {LIST_COLUMNS} FROM conversations WHERE citation_flags > 0"
    params: list[Any] = []
    if run_id:
        sql += " AND run_id=?"
        params.append(run_id)
    return db.rows(sql + " ORDER BY citation_flags DESC, created_at LIMIT ?", [*params, limit])


def grounding_scores(db: Database, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """One row per scored conversation (``conversation_id``, ``run_id``, ``grounding``,
    ``citation_flags``, ``is_duplicate``): the data of the dashboard's grounding histogram."""
    sql = ("SELECT id AS conversation_id, run_id, grounding, citation_flags, dup_of IS NOT NULL AS is_duplicate "
           "FROM conversations WHERE grounded_at IS NOT NULL")
    rows = db.rows(sql + (" AND run_id=?" if run_id else "") + " ORDER BY created_at", [run_id] if run_id else [])
    for r in rows:
        r["is_duplicate"] = bool(r["is_duplicate"])
    return rows


def quality_summary(db: Database, *, run_id: str | None = None,
                    threshold: float = WEAKLY_GROUNDED_BELOW) -> dict[str, Any]:
    """Headline numbers for the dashboard and the home page: how many conversations are scored,
    weakly grounded, carry unsupported citations, or are near-duplicates of another."""
    where, params = (" WHERE run_id=?", [run_id]) if run_id else ("", [])
    row = db.one(
        "SELECT COUNT(*) AS conversations, COUNT(grounded_at) AS scored, AVG(grounding) AS mean_grounding, "
        "SUM(grounding < ?) AS weakly_grounded, SUM(citation_flags > 0) AS with_citation_flags, "
        "COALESCE(SUM(citation_flags), 0) AS citation_flags, SUM(dup_of IS NOT NULL) AS near_duplicates, "
        f"COUNT(DISTINCT dup_of) AS duplicate_clusters FROM conversations{where}", [threshold, *params])
    out = {k: (v or 0) for k, v in row.items()}
    out["mean_grounding"] = round(row["mean_grounding"], 4) if row["mean_grounding"] is not None else None
    out["weakly_grounded_below"] = threshold
    return out
