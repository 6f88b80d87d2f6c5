"""How well the automatic scores agree with reviewers: the LLM judge and grounding against approve/discard and ratings.

For each respondent prompt version and each score (``judge``: the judge's overall 1-5 score of the kept
attempt; ``grounding``: the conversation's grounding score), over the conversations a reviewer decided:

- Spearman rank correlation of the score with the decision (approved = 1, discarded = 0) and with the rating;
- a confusion table at the current threshold (the score passes at or above it);
- the threshold that best matches reviewers: the cut with the highest balanced accuracy (the mean of the
  share of approved conversations that pass and the share of discarded ones that fail).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from core.db import Database, loads
from core.quality.grounding import WEAKLY_GROUNDED_BELOW

DEFAULT_JUDGE_THRESHOLD = 3.5
MIN_FOR_CORRELATION = 3


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or when either side is constant."""
    if len(x) != len(y) or len(x) < MIN_FOR_CORRELATION:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return round(sxy / (sxx * syy) ** 0.5, 4)


def confusion(scores: Sequence[float], approved: Sequence[bool], threshold: float) -> dict[str, int]:
    out = {"pass_approved": 0, "pass_discarded": 0, "fail_approved": 0, "fail_discarded": 0}
    for s, a in zip(scores, approved):
        out[f"{'pass' if s >= threshold else 'fail'}_{'approved' if a else 'discarded'}"] += 1
    return out


def balanced_accuracy(table: dict[str, int]) -> float | None:
    approved = table["pass_approved"] + table["fail_approved"]
    discarded = table["pass_discarded"] + table["fail_discarded"]
    if not approved or not discarded:
        return None
    return round((table["pass_approved"] / approved + table["fail_discarded"] / discarded) / 2, 4)


def best_threshold(scores: Sequence[float], approved: Sequence[bool]) -> tuple[float | None, float | None]:
    """(threshold, balanced accuracy) of the cut that best separates approved from discarded."""
    best: tuple[float | None, float | None] = (None, None)
    for t in sorted(set(scores)):
        acc = balanced_accuracy(confusion(scores, approved, t))
        if acc is not None and (best[1] is None or acc > best[1]):
            best = (t, acc)
    return best


def _judge_overall(raw: str | None) -> tuple[float | None, float | None]:
    record = loads(raw, None) if raw else None
    if not isinstance(record, dict) or record.get("overall") is None:
        return None, None
    return float(record["overall"]), record.get("threshold")


def reviewer_agreement(db: Database, *, run_id: str | None = None,
                       grounding_threshold: float = WEAKLY_GROUNDED_BELOW) -> list[dict[str, Any]]:
    """One row per (respondent prompt version, score): see the module docstring.

    Row keys: ``prompt_version`` (label), ``score`` (judge | grounding), ``reviewed`` (approved + discarded
    with a score), ``rated``, ``spearman_decision``, ``spearman_rating``, ``threshold`` (current), the four
    confusion counts, ``agreement`` (balanced accuracy at the current threshold), ``best_threshold``,
    ``best_agreement``.
    """
    where = "WHERE (c.status IN ('approved', 'discarded') OR c.rating IS NOT NULL)"
    params: list[Any] = []
    if run_id:
        where += " AND c.run_id=?"
        params.append(run_id)
    rows = db.rows("SELECT c.status, c.rating, c.judge, c.grounding, "
                   "json_extract(c.prompt_versions, '$.respondent') AS version_id FROM conversations c "
                   f"{where}", params)
    versions = {r["id"]: r for r in db.rows("SELECT id, version, name FROM prompt_versions WHERE kind='respondent'")}
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["version_id"]].append(r)
    out = []
    for version_id, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        v = versions.get(version_id)
        label = f"v{v['version']}" + (f" {v['name']}" if v and v.get("name") else "") if v else "unknown"
        for score_name in ("judge", "grounding"):
            scored, current = [], None
            for m in members:
                if score_name == "judge":
                    value, threshold = _judge_overall(m["judge"])
                    current = current if current is not None else threshold
                else:
                    value = m["grounding"]
                if value is not None:
                    scored.append((float(value), m))
            if not scored:
                continue
            threshold = (current or DEFAULT_JUDGE_THRESHOLD) if score_name == "judge" else grounding_threshold
            decided = [(s, m["status"] == "approved") for s, m in scored if m["status"] in ("approved", "discarded")]
            rated = [(s, m["rating"]) for s, m in scored if m["rating"] is not None]
            table = confusion([s for s, _ in decided], [a for _, a in decided], threshold)
            best_t, best_acc = best_threshold([s for s, _ in decided], [a for _, a in decided])
            out.append({"prompt_version": label, "score": score_name, "reviewed": len(decided), "rated": len(rated),
                        "spearman_decision": spearman([s for s, _ in decided], [float(a) for _, a in decided]),
                        "spearman_rating": spearman([s for s, _ in rated], [float(r) for _, r in rated]),
                        "threshold": threshold, **table, "agreement": balanced_accuracy(table),
                        "best_threshold": best_t, "best_agreement": best_acc})
    return out
