"""What an export will write, said before it is written: a one-line summary of the selection, and the split's sides.

The Export page keeps a selection of its own (approved conversations unless the user says otherwise), never the
Review page's queue filter: what a reviewer happens to be looking at is not what they approved for training.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from core.db import Database
from core.corpus.documents import plural
from core.export.options import ExportOptions
from core.export.run import _iter_conversations
from core.export.split import DocumentGroups
from core.quality import WEAKLY_GROUNDED_BELOW
from core.review.store import FLAGGED_CONDITION, ReviewFilter

DEFAULT_STATUS = "approved"


def selection_summary(db: Database, f: ReviewFilter) -> dict[str, Any]:
    """Counts of what ``f`` selects: by status, flagged, runs; and one line saying it.

    Returns:
        ``{"selected", "by_status", "flagged", "runs", "line"}``.
    """
    where, params = f.where()
    rows = db.rows(f"SELECT c.status, COUNT(*) AS n, SUM(CASE WHEN {FLAGGED_CONDITION} THEN 1 ELSE 0 END) AS flagged, "
                   f"COUNT(DISTINCT c.run_id) AS runs FROM conversations c WHERE {where} GROUP BY c.status",
                   [WEAKLY_GROUNDED_BELOW, *params])
    by_status = {r["status"]: r["n"] for r in rows}
    selected = sum(by_status.values())
    flagged = sum(r["flagged"] or 0 for r in rows)
    runs = db.scalar(f"SELECT COUNT(DISTINCT c.run_id) FROM conversations c WHERE {where}", params) or 0
    if not selected:
        line = f"Nothing selected ({f.describe()}): approve conversations on the Review page, or widen the selection."
    else:
        statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(by_status.items()))
        line = (f"Will write {plural(selected, 'conversation')} ({statuses}; {flagged:,} flagged) from "
                f"{plural(runs, 'run')} — {f.describe()}.")
    return {"selected": selected, "by_status": by_status, "flagged": flagged, "runs": runs, "line": line}


def split_sides(db: Database, options: ExportOptions) -> Counter:
    """How many selected conversations each side of the train/validation split gets, as the export assigns them.

    The same grouping as :func:`core.export.run.export` (documents joined by the conversations that link them),
    without building a row: cheap enough to ask before writing whether validation would be empty.
    """
    sides: Counter = Counter()
    if options.split is None:
        return sides
    groups = DocumentGroups()
    convs = list(_iter_conversations(db, options.filter, {}))
    key = (lambda c: c.core) if options.split_group == "answers" else (lambda c: c.documents)
    for conv in convs:
        groups.join(key(conv))
    groups.assign(options.split, options.seed)
    for conv in convs:
        sides[groups.side(key(conv))] += 1
    return sides
