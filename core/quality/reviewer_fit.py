"""Learning the grounding flag threshold from reviewers, per respondent prompt version and corpus.

Labels: an approved conversation is grounded (1); a conversation discarded as "ungrounded", or with an
answer marked bad, is not (0). With at least :data:`MIN_LABELS` of them for a prompt version, the cut on
the conversation's grounding score that agrees best with them (balanced accuracy) is fitted; it is adopted
(``active``) only when it agrees better than the default cut (:data:`~core.quality.grounding.WEAKLY_GROUNDED_BELOW`,
"a check flagged something"). Review, Export and the badges then flag below the fitted cut for that prompt
version. A fit belongs to the corpus it was made on: after a re-index (a different document hash) it is
ignored until fitted again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from core.db import Database, now
from core.quality.calibration import balanced_accuracy, best_threshold, confusion
from core.quality.common import GROUNDING_METHOD
from core.quality.grounding import WEAKLY_GROUNDED_BELOW

MIN_LABELS = 30


def corpus_fingerprint(db: Database) -> str:
    """A hash of the indexed documents' content (changes when the corpus is re-indexed differently)."""
    row = db.one("SELECT COALESCE(GROUP_CONCAT(content_hash, ''), '') AS hashes FROM "
                 "(SELECT content_hash FROM documents WHERE status='complete' ORDER BY id)")
    return hashlib.sha256((row["hashes"] if row else "").encode()).hexdigest()[:16]


def reviewer_labels(db: Database) -> dict[int | None, list[tuple[float, bool]]]:
    """(grounding score, grounded?) per respondent prompt version, from reviewers' decisions."""
    rows = db.rows(
        "SELECT c.grounding, c.status, c.discard_reason, json_extract(c.prompt_versions, '$.respondent') AS version, "
        "EXISTS (SELECT 1 FROM turns t WHERE t.conversation_id = c.id AND t.role = 'assistant' AND t.weight = 0) "
        "AS marked_bad FROM conversations c WHERE c.grounding IS NOT NULL")
    out: dict[int | None, list[tuple[float, bool]]] = {}
    for r in rows:
        if r["marked_bad"] or (r["status"] == "discarded" and (r["discard_reason"] or "").startswith("ungrounded")):
            good = False
        elif r["status"] == "approved":
            good = True
        else:
            continue  # new, or discarded for another reason: says nothing about grounding
        out.setdefault(r["version"], []).append((float(r["grounding"]), good))
    return out


def fit_thresholds(db: Database, min_labels: int = MIN_LABELS) -> list[dict[str, Any]]:
    """Fit (and store) each prompt version's threshold; one row per version with its labels and agreement.

    Row keys: ``prompt_version_id``, ``labels``, ``agreement_before`` (balanced accuracy at the default),
    ``threshold`` and ``agreement_after`` (the fitted cut; None below ``min_labels``), ``active``.
    """
    corpus = corpus_fingerprint(db)
    out = []
    for version, labels in sorted(reviewer_labels(db).items(), key=lambda kv: str(kv[0])):
        scores, good = [s for s, _ in labels], [g for _, g in labels]
        before = balanced_accuracy(confusion(scores, good, WEAKLY_GROUNDED_BELOW))
        row: dict[str, Any] = {"prompt_version_id": version, "labels": len(labels), "agreement_before": before,
                               "threshold": None, "agreement_after": None, "active": False}
        if len(labels) >= min_labels and version is not None:
            threshold, after = best_threshold(scores, good)
            active = after is not None and (before is None or after > before)
            row.update(threshold=threshold, agreement_after=after, active=active)
            with db.write() as w:
                w.execute("INSERT OR REPLACE INTO grounding_calibrations (prompt_version_id, corpus, threshold, labels, "
                          "agreement_before, agreement_after, active, method, fitted_at) VALUES (?,?,?,?,?,?,?,?,?)",
                          [version, corpus, threshold, len(labels), before, after, int(active), GROUNDING_METHOD,
                           now()])
        out.append(row)
    set_aside_stale(db)
    return out


def set_aside_stale(db: Database) -> int:
    """Deactivate fits made on another corpus (Review's SQL reads ``active``); how many were set aside."""
    with db.write() as w:
        return w.execute("UPDATE grounding_calibrations SET active = 0 WHERE active = 1 AND corpus != ?",
                         [corpus_fingerprint(db)]).rowcount


def calibrations(db: Database) -> list[dict[str, Any]]:
    """The stored fits (the Dashboard shows them), newest first."""
    return db.rows("SELECT * FROM grounding_calibrations ORDER BY fitted_at DESC")


def flag_threshold(db: Database, prompt_version_id: int | None) -> float:
    """The cut under which this prompt version's conversations are flagged: the fitted one, when adopted."""
    if prompt_version_id is None:
        return WEAKLY_GROUNDED_BELOW
    value = db.scalar("SELECT threshold FROM grounding_calibrations WHERE prompt_version_id=? AND active=1 "
                      "AND corpus=?", [prompt_version_id, corpus_fingerprint(db)])
    return float(value) if value is not None else WEAKLY_GROUNDED_BELOW
