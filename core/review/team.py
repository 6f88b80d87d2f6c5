"""Agreement between reviewers: Krippendorff's alpha over everyone, Cohen's kappa per pair, and the disagreements.

Reads ``reviewer_verdicts`` (one row per conversation and reviewer, written by core.review.store's actions).
Decisions (approved / discarded) are nominal; ratings (1–5) are compared as interval values. Alpha is
Krippendorff's (2011, "Computing Krippendorff's alpha-reliability"): it takes any number of reviewers and
conversations that only some of them saw, and is 1 for perfect agreement, 0 for agreement at chance level.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from itertools import combinations
from typing import Any

from core.db import Database


def krippendorff_alpha(units: Iterable[Iterable[Any]], metric: str = "nominal") -> float | None:
    """Alpha over ``units`` (each the values the reviewers gave one item; missing values left out).

    Units with fewer than two values carry no pairing information and are skipped. Returns None when no
    two values can be paired or every value is the same (expected disagreement 0: alpha is undefined).
    """
    if metric not in ("nominal", "interval"):
        raise ValueError(f"unknown metric {metric!r}: nominal or interval")

    def delta(a: Any, b: Any) -> float:
        return float(a != b) if metric == "nominal" else (float(a) - float(b)) ** 2

    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, a in enumerate(values):
            for j, b in enumerate(values):
                if i != j:
                    coincidence[(a, b)] += 1.0 / (m - 1)
    if not coincidence:
        return None
    totals: dict[Hashable, float] = defaultdict(float)
    for (a, _), weight in coincidence.items():
        totals[a] += weight
    n = sum(totals.values())
    observed = sum(weight * delta(a, b) for (a, b), weight in coincidence.items())
    expected = sum(totals[a] * totals[b] * delta(a, b) for a in totals for b in totals)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def cohen_kappa(pairs: Iterable[tuple[Any, Any]]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or both raters
    used one same label throughout)."""
    pairs = list(pairs)
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[label] * second[label] for label in first) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def _label(v: dict[str, Any]) -> str:
    parts = [v["decision"] or "undecided"]
    if v["rating"]:
        parts.append(f"{v['rating']}★")
    return " ".join(parts)


def agreement(db: Database, rating_gap: int = 2) -> dict[str, Any]:
    """Agreement between reviewers over the whole data dir.

    Returns:
        ``reviewers``: names with how many conversations each decided and rated; ``decision_alpha`` and
        ``rating_alpha`` (None when undefined) with the number of conversations seen by two or more;
        ``pairs``: per pair of reviewers, shared conversations, percent agreement and Cohen's kappa on
        decisions; ``disagreements``: conversations where decisions differ or ratings differ by
        ``rating_gap`` or more, each with every reviewer's verdict.
    """
    rows = db.rows("SELECT v.conversation_id, v.reviewer, v.rating, v.decision, "
                   "substr(c.question, 1, 120) AS question, c.status FROM reviewer_verdicts v JOIN conversations c ON c.id = v.conversation_id "
                   "ORDER BY v.conversation_id, v.reviewer")
    by_conv: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_conv[r["conversation_id"]].append(r)
    decided = {cid: {v["reviewer"]: v["decision"] for v in vs if v["decision"]} for cid, vs in by_conv.items()}
    rated = {cid: {v["reviewer"]: v["rating"] for v in vs if v["rating"]} for cid, vs in by_conv.items()}
    names = sorted({r["reviewer"] for r in rows})
    reviewers = [{"reviewer": name,
                  "decided": sum(name in d for d in decided.values()),
                  "rated": sum(name in d for d in rated.values())} for name in names]
    pairs = []
    for a, b in combinations(names, 2):
        shared = [(d[a], d[b]) for d in decided.values() if a in d and b in d]
        kappa = cohen_kappa(shared)
        pairs.append({"reviewers": f"{a} · {b}", "shared": len(shared),
                      "agreement": round(sum(x == y for x, y in shared) / len(shared), 3) if shared else None,
                      "kappa": round(kappa, 3) if kappa is not None else None})
    disagreements = []
    for cid, vs in by_conv.items():
        decisions = {v["decision"] for v in vs if v["decision"]}
        ratings = [v["rating"] for v in vs if v["rating"]]
        if len(decisions) > 1 or (len(ratings) > 1 and max(ratings) - min(ratings) >= rating_gap):
            disagreements.append({"conversation_id": cid, "status": vs[0]["status"], "question": vs[0]["question"],
                                  "verdicts": " · ".join(f"{v['reviewer']}: {_label(v)}" for v in vs)})
    decision_alpha = krippendorff_alpha(d.values() for d in decided.values())
    rating_alpha = krippendorff_alpha((r.values() for r in rated.values()), metric="interval")
    return {"reviewers": reviewers, "pairs": pairs, "disagreements": disagreements,
            "decision_alpha": decision_alpha, "rating_alpha": rating_alpha,
            "decision_units": sum(len(d) >= 2 for d in decided.values()),
            "rating_units": sum(len(r) >= 2 for r in rated.values())}
