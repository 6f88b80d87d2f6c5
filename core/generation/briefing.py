"""Briefings: the passages a simulated user's opening questions are written from."""

from __future__ import annotations

import random
import threading

from core.db import Database
from core.errors import GroundworkError


class BriefingSampler:
    """Samples briefings from the least-used passages, so a run covers the corpus before repeating it."""

    def __init__(self, db: Database, collection: str, passages: int, rng: random.Random, max_docs: int = 0,
                 documents: list[str] | None = None):
        """``documents``: the ids a run's selection allows (core.corpus.documents.select_documents); None: all."""
        self.db = db
        self.passages = passages
        self.rng = rng
        self._lock = threading.Lock()
        rows = db.rows("SELECT c.id, c.document_id, c.position, c.briefing_uses FROM chunks c JOIN documents d "
                       "ON d.id=c.document_id WHERE c.collection=? AND d.status='complete' "
                       "ORDER BY c.document_id, c.position", [collection])
        if documents is not None:
            allowed = set(documents)
            rows = [r for r in rows if r["document_id"] in allowed]
            if not rows:
                raise GroundworkError("The run's document selection holds no indexed passages: choose other "
                                      "documents or tags (Corpus page), or clear the selection.")
        if max_docs > 0:
            doc_ids = sorted({r["document_id"] for r in rows})
            keep = set(random.Random(max_docs).sample(doc_ids, min(max_docs, len(doc_ids))))
            rows = [r for r in rows if r["document_id"] in keep]
        if not rows:
            raise GroundworkError(f"No indexed passages in collection {collection!r}: index a corpus first "
                                  "(Corpus page, or `groundwork index sample_data/corpus`).")
        self._uses = {r["id"]: r["briefing_uses"] for r in rows}
        self._next_in_doc: dict[str, str] = {}
        for a, b in zip(rows, rows[1:]):
            if a["document_id"] == b["document_id"]:
                self._next_in_doc[a["id"]] = b["id"]

    def sample(self) -> list[str]:
        with self._lock:
            least = min(self._uses.values())
            candidates = sorted(cid for cid, u in self._uses.items() if u == least)
            first = self.rng.choice(candidates)
            chosen = [first]
            while len(chosen) < self.passages and chosen[-1] in self._next_in_doc:
                chosen.append(self._next_in_doc[chosen[-1]])
            for cid in chosen:
                self._uses[cid] += 1
        with self.db.write() as w:
            w.conn.executemany("UPDATE chunks SET briefing_uses = briefing_uses + 1 WHERE id=?", [[c] for c in chosen])
        return chosen

