"""Train/validation split without leaks: no validation document's text reaches a training row.

Documents that one conversation needs are one group (union-find); the group, not the row, gets a side, a hash
of (seed, the group's smallest document id): stable as rows are added, unless a new row links two groups.

Which documents a conversation "needs" (``split_group``): ``passages`` takes every document whose text reaches
the row, briefing and every passage shown. Measured on the sample corpus, ten generated conversations with
top-k 3 touch 15 documents and join them all into one group: retrieval's low-scoring passages link
everything, so nothing is left for validation, and more conversations only link more. ``answers`` (the
default) groups by the briefing's documents and each answer's oracle passages, and withholds from a row the
other passages whose document sits on the other side; the invariant holds either way.

Near-duplicate questions on both sides are found separately (word-set Jaccard with a prefix filter) and
reported in the manifest; they are not moved, because moving them would break the document grouping.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any


SPLIT_GROUPS = ("answers", "passages")
GROUP_BY = {
    "answers": "the documents a row cannot do without: its briefing's documents and each answer's oracle passages "
               "(the passages it draws on, by word overlap); a passage from a document on the other side is "
               "withheld from the row, so every document whose text reaches a row is on that row's side",
    "passages": "every document whose text reaches the row: the briefing's documents and every passage shown in "
                "any turn (new and carried over); nothing is withheld, but on a small corpus one group can hold "
                "every document and leave validation empty",
}
METHOD = ("union-find over documents: documents grouped by one conversation are one group; each group's side is "
          "sha256(f'{seed}:{smallest document id in the group}') < ratio: train, else validation; RAFT distractors "
          "are drawn from the row's own side")
NEAR_DUPLICATE_THRESHOLD = 0.8


def split_of(group: str, ratio: float, seed: int = 0) -> str:
    """train or validation for a group, from a hash of (seed, group): stable however many rows come later."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return "train" if int.from_bytes(digest[:8], "big") / 2**64 < ratio else "validation"


class DocumentGroups:
    """Union-find over document ids; memory grows with documents, not with conversations."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._smallest: dict[str, str] = {}
        self._sides: dict[str, str] = {}
        self._ratio, self._seed = 0.9, 0

    def _find(self, doc: str) -> str:
        parent = self._parent.setdefault(doc, doc)
        if parent == doc:
            return doc
        root = doc
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[doc] != root:  # path compression keeps later finds short
            self._parent[doc], doc = root, self._parent[doc]
        return root

    def join(self, docs: set[str]) -> None:
        roots = {self._find(d) for d in docs}
        if len(roots) < 2:
            return
        first, *rest = roots
        for r in rest:
            self._parent[r] = first

    def assign(self, ratio: float, seed: int) -> None:
        """Fix each group's side (call once all conversations are joined)."""
        self._ratio, self._seed = ratio, seed
        for doc in self._parent:
            root = self._find(doc)
            if root not in self._smallest or doc < self._smallest[root]:
                self._smallest[root] = doc
        self._sides = {root: split_of(small, ratio, seed) for root, small in self._smallest.items()}

    def side(self, docs: set[str]) -> str:
        """The side of a conversation's documents (all in one group after :meth:`join`)."""
        known = sorted(d for d in docs if d in self._parent)
        if not known:  # written after the grouping pass: a group of its own
            return split_of(min(docs), self._ratio, self._seed)
        return self._sides[self._find(known[0])]

    def side_of_document(self, doc: str, ratio: float, seed: int) -> str:
        """A document's side; one no selected conversation touches gets its own hash (RAFT distractor pools)."""
        if doc in self._parent:
            return self._sides[self._find(doc)]
        return split_of(doc, ratio, seed)

    def stats(self) -> dict[str, Any]:
        sizes: dict[str, int] = {}
        for doc in self._parent:
            root = self._find(doc)
            sizes[root] = sizes.get(root, 0) + 1
        by_side = {"train": {"groups": 0, "documents": 0}, "validation": {"groups": 0, "documents": 0}}
        for root, n in sizes.items():
            by_side[self._sides[root]]["groups"] += 1
            by_side[self._sides[root]]["documents"] += n
        total = sum(sizes.values())
        largest = max(sizes.values(), default=0)
        return {"groups": {s: v["groups"] for s, v in by_side.items()},
                "documents": {s: v["documents"] for s, v in by_side.items()},
                "largest_group": {"documents": largest, "share_of_documents": round(largest / total, 3) if total
                                  else 0.0}}


# ---- near-duplicate questions across the split ----------------------------------------------------
_WORD = re.compile(r"\w+")


def _words(text: str) -> tuple[int, ...]:
    """The question's distinct words as small ints, in one fixed global order (what the prefix filter needs)."""
    return tuple(sorted({zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())}))


class QuestionOverlap:
    """Pairs of a validation question and a training question with word-set Jaccard >= the threshold.

    Validation questions are indexed by the prefix of their word set (for Jaccard >= t, two sets must share
    a word among the first ``n - ceil(t * n) + 1`` of each in one global order), then every training
    question probes the index. Memory grows with the validation side only.
    """

    def __init__(self, threshold: float = NEAR_DUPLICATE_THRESHOLD, keep_examples: int = 10):
        self.t = threshold
        self._index: dict[int, list[int]] = {}
        self._questions: list[tuple[tuple[int, ...], str, str]] = []
        self._keep = keep_examples
        self.pairs = 0
        self.train_questions: set[str] = set()
        self.examples: list[dict[str, Any]] = []

    def _prefix(self, words: tuple[int, ...]) -> tuple[int, ...]:
        n = len(words)
        return words[:n - int(-(-self.t * n // 1)) + 1]

    def add_validation(self, conversation_id: str, question: str) -> None:
        words = _words(question)
        if len(words) < 3:  # "ok", "and then?" repeat everywhere and say nothing about leaks
            return
        k = len(self._questions)
        self._questions.append((words, conversation_id, question[:200]))
        for w in self._prefix(words):
            self._index.setdefault(w, []).append(k)

    def probe(self, conversation_id: str, question: str) -> None:
        if not self._questions:
            return
        words = _words(question)
        if len(words) < 3:
            return
        seen: set[int] = set()
        mine = set(words)
        for w in self._prefix(words):
            for k in self._index.get(w, ()):
                if k in seen:
                    continue
                seen.add(k)
                other, vid, vtext = self._questions[k]
                inter = len(mine.intersection(other))
                jaccard = inter / (len(mine) + len(other) - inter)
                if jaccard >= self.t:
                    self.pairs += 1
                    self.train_questions.add(conversation_id)
                    if len(self.examples) < self._keep:
                        self.examples.append({"train": conversation_id, "validation": vid,
                                              "similarity": round(jaccard, 3), "train_question": question[:200],
                                              "validation_question": vtext})

    def report(self) -> dict[str, Any]:
        return {"method": f"word-set Jaccard >= {self.t} between user messages on opposite sides",
                "pairs": self.pairs, "train_conversations": len(self.train_questions), "examples": self.examples}
