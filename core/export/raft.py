"""The RAFT export profile (Zhang et al., 2024, "RAFT: Adapting Language Model to Domain Specific RAG").

Each answer is shown its oracle passages plus k distractors, shuffled, so the model learns to pick the
passage that answers and ignore the rest; in a share of rows (default 20%) the last answer is shown
distractors only and its target becomes "the passages do not cover this", so the model learns not to
answer from passages that do not hold the answer.

- Oracle: the passages of the turn (new and carried over) that the answer draws on, by word overlap: each
  passage's share of the answer's content words (words of four letters or more, and numbers); the best
  one, and every one reaching half its share. When no passage shares a word, the first passage shown.
- Distractors, hardest first: the passages the respondent's retriever returned for the same turn from other
  documents (the dense retriever's own hard negatives), then the best BM25 matches for the user's question
  in the corpus (SQLite full-text index) from other documents on the row's side of the split, so a
  distractor never carries a validation document's text into a training row.
"""

from __future__ import annotations

import random
import re
from typing import Any

from core.db import Database

_CONTENT_WORD = re.compile(r"[a-z]{4,}|\d[\d.,/$%-]*", re.IGNORECASE)
_FTS_WORD = re.compile(r"\w{3,}")
_STOP = frozenset("that this with from have been were what which when where their there they them would could "
                  "should about into your than then also only some such more most other these those does".split())


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _CONTENT_WORD.findall(text or "")} - _STOP


def oracle_ids(answer: str, passages: list[dict[str, Any]], floor: float = 0.0) -> set[str]:
    """Ids of the passages the answer draws on (see the module docstring).

    Args:
        floor: a passage must hold at least this share of the answer's content words. With the default 0
            there is always an oracle (the first passage when none shares a word), which RAFT needs; the
            split uses a floor, so passages that merely share common words do not tie two documents.
    """
    if not passages:
        return set()
    words = _content_words(answer)
    shares = [len(words & _content_words(p.get("text") or "")) / max(len(words), 1) for p in passages]
    best = max(shares)
    if best == 0:
        return {passages[0].get("id", "")} if floor == 0 else set()
    if best < floor:
        return set()
    return {p.get("id", "") for p, s in zip(passages, shares) if s >= max(best / 2, floor)}


class Raft:
    """Rewrites one conversation's turns for the RAFT profile; counts what it did for the manifest."""

    def __init__(self, db: Database, k: int, no_oracle_share: float, refusal: str, seed: int,
                 side_of_document=None):
        self.db = db
        self.k = k
        self.share = no_oracle_share
        self.refusal = refusal
        self.seed = seed
        self._side_of = side_of_document or (lambda doc: "train")
        self._decided: dict[str, bool] = {}  # conversation id -> distractor-only last answer or not
        self._has_fts = bool(db.one("SELECT name FROM sqlite_master WHERE name='chunks_fts'"))
        self.counts = {"answers": 0, "rows": 0, "no_oracle_rows": 0, "distractors_from_retrieval": 0,
                       "distractors_from_bm25": 0, "answers_short_of_k": 0}

    def no_oracle(self, conversation_id: str) -> bool:
        """Whether this conversation's row gets a distractor-only last answer.

        Decided in the order rows are first seen so that exactly ``share`` of them get one (every
        1/share-th row, the first after 1/share rows): a coin flip per row would give a small export
        none at all as often as not. The order is the export's, so the same export decides the same way.
        """
        if conversation_id not in self._decided:
            seen = len(self._decided)
            self._decided[conversation_id] = int((seen + 1) * self.share) > int(seen * self.share)
        return self._decided[conversation_id]

    def apply(self, conversation_id: str, turns: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
        """The turns with each answer's passages replaced by oracle + distractors (shuffled).

        ``turns`` must already end on a good answer; a distractor-only row's last answer becomes the refusal.
        """
        rng = random.Random(f"raft-shuffle:{self.seed}:{conversation_id}")
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
        refuse = last >= 0 and self.no_oracle(conversation_id)
        out = []
        for i, t in enumerate(turns):
            if t["role"] != "assistant":
                out.append(t)
                continue
            passages = t.get("retrieval") or []
            oracle = oracle_ids(t["content"], passages)
            gold = [p for p in passages if p.get("id", "") in oracle]
            gold_docs = {p.get("document_id") for p in gold}
            question = turns[i - 1]["content"] if i else ""
            want = self.k + (len(gold) if refuse and i == last else 0)  # same count: the row gives nothing away
            distractors = self._distractors(passages, gold_docs, question, side, want)
            if len(distractors) < want:
                self.counts["answers_short_of_k"] += 1
            shown = distractors if refuse and i == last else gold + distractors
            rng.shuffle(shown)
            new = {**t, "retrieval": shown}
            if refuse and i == last:
                new["content"] = self.refusal
            out.append(new)
            self.counts["answers"] += 1
        self.counts["rows"] += 1
        self.counts["no_oracle_rows"] += int(refuse)
        return out

    def _distractors(self, passages: list[dict[str, Any]], gold_docs: set[Any], question: str, side: str,
                     want: int) -> list[dict[str, Any]]:
        chosen: list[dict[str, Any]] = []
        seen_ids: set[str] = set()
        for p in sorted(passages, key=lambda p: -(p.get("score") or 0)):
            if len(chosen) == want:
                break
            if p.get("document_id") not in gold_docs and p.get("id") not in seen_ids:
                chosen.append({**p, "carried": False})
                seen_ids.add(p.get("id"))
        self.counts["distractors_from_retrieval"] += len(chosen)
        if len(chosen) < want and self._has_fts:
            for p in self._bm25(question, gold_docs, seen_ids, side, want - len(chosen)):
                chosen.append(p)
                self.counts["distractors_from_bm25"] += 1
        return chosen

    def _bm25(self, question: str, gold_docs: set[Any], seen_ids: set[str], side: str, n: int) -> list[dict]:
        words = list(dict.fromkeys(w.lower() for w in _FTS_WORD.findall(question)))[:32]
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)  # quoted: no FTS syntax from the user's text
        rows = self.db.rows(
            "SELECT c.id, c.document_id, c.text, c.position, d.title, d.source_path, chunks_fts.rank AS rank "
            "FROM chunks_fts JOIN chunks c ON c.rowid = chunks_fts.rowid LEFT JOIN documents d ON d.id = "
            "c.document_id WHERE chunks_fts MATCH ? ORDER BY chunks_fts.rank LIMIT ?", [match, 8 * n + 20])
        out = []
        for r in rows:
            if len(out) == n:
                break
            if r["document_id"] in gold_docs or r["id"] in seen_ids or self._side_of(r["document_id"]) != side:
                continue
            seen_ids.add(r["id"])
            out.append({"id": r["id"], "score": round(-float(r["rank"] or 0), 4), "text": r["text"],
                        "document_id": r["document_id"], "title": r["title"] or "",
                        "source_path": r["source_path"] or "", "position": r["position"] or 0, "carried": False})
        return out
