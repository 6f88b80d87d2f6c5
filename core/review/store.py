"""Review: a filtered, paged queue over the conversations and the reviewer's actions, each written at once.

Every action is one SQLite write transaction that changes the conversation (or turn) and appends an
``events`` row naming the reviewer and the time, so a browser refresh or a server restart loses nothing
and the history of a conversation can be read back. Queries page with LIMIT/OFFSET or seek by
``(created_at, id)``; nothing here loads the whole table, so 10,000+ conversations stay fast.

Preference picks are events too. An A/B pick is the prompt workshop's ``ab_pick`` event (the latest pick
of a pair wins); a regenerated version preferred over its parent (or the reverse) is ``review.prefer`` on
the chosen conversation with ``{"rejected_id", "source"}``, withdrawn by a later ``review.unprefer``.
The export folds both into DPO pairs, together with the judge's attempts stored on each conversation.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.db import Database, dumps, fts_query, loads, new_id, now
from core.errors import NotFoundError, ValidationError
from core.quality import WEAKLY_GROUNDED_BELOW
from core.turn_labels import turn_label, turn_number

STATUSES = ("new", "approved", "discarded")
STATUS_CHOICES = ("any", *STATUSES)
# Flags set by core.quality (Dashboard: "Score grounding and find near-duplicates").
QUALITY_CONDITIONS = {
    # Below the default cut, or below the cut fitted to reviewers for this prompt version (core.quality.reviewer_fit).
    "weakly grounded": ("c.grounding IS NOT NULL AND c.grounding < COALESCE((SELECT k.threshold FROM "
                        "grounding_calibrations k WHERE k.active = 1 AND k.prompt_version_id = "
                        "json_extract(c.prompt_versions, '$.respondent')), ?)"),
    "unverified identifiers": "c.citation_flags > 0",
    "near-duplicate": "c.dup_of IS NOT NULL",
}
QUALITY_CHOICES = ("any", *QUALITY_CONDITIONS)
# What approving or exporting asks about (core.quality.is_flagged); its one parameter is WEAKLY_GROUNDED_BELOW.
FLAGGED_CONDITION = (f"(({QUALITY_CONDITIONS['weakly grounded']}) OR "
                     f"({QUALITY_CONDITIONS['unverified identifiers']}))")
# Reviewers agree on a conversation: at least two of them (and at least its reviews_needed) approved or
# discarded it, and every decision is the same. Export's "require agreement" and the Dashboard use it.
_DECIDED = "FROM reviewer_verdicts v WHERE v.conversation_id = c.id AND v.decision IS NOT NULL"
AGREED_CONDITION = (f"((SELECT COUNT(*) {_DECIDED}) >= MAX(2, COALESCE(c.reviews_needed, 1)) "
                    f"AND (SELECT COUNT(DISTINCT v.decision) {_DECIDED}) = 1)")
MAX_REVIEWS_NEEDED = 10
DISCARD_REASONS = ("ungrounded: not supported by the passages", "wrong or misleading answer",
                   "unnatural conversation", "off topic", "duplicate", "other")
MAX_TAG_CHARS = 50
MAX_NOTE_CHARS = 5000
MAX_ACTOR_CHARS = 80
_SNIPPET_CHARS = 120


# ---- the filter ---------------------------------------------------------------------------------
@dataclass
class ReviewFilter:
    """Which conversations the queue (and an export) covers; empty values mean "no restriction".

    Args:
        run_id: one generation run.
        status: new, approved, discarded or any.
        min_rating, max_rating: rating bounds 1–5 (unrated conversations fail any rating bound).
        tag: conversations carrying this tag.
        prompt_version: a prompt version id (of any kind) the conversation was generated with.
        model: the generating model's name.
        comparison_id: the conversations of one prompt A/B comparison.
        search: words that must all occur in the conversation's text (full-text search).
        quality: "any", or only conversations the quality checks flagged (see :data:`QUALITY_CONDITIONS`).
        assigned_to: conversations a split queue gave this reviewer (:meth:`ReviewStore.split_queue`).
        not_decided_by: conversations this reviewer has not approved or discarded yet (with k reviews needed a
            conversation stays "new" after one reviewer's decision; this hides it from that reviewer).
        require_agreement: only conversations that at least two reviewers (and at least as many as it needs)
            decided, all the same way (:data:`AGREED_CONDITION`).
    """

    run_id: str = ""
    status: str = "any"
    min_rating: int | None = None
    max_rating: int | None = None
    tag: str = ""
    prompt_version: int | None = None
    model: str = ""
    comparison_id: str = ""
    search: str = ""
    quality: str = "any"
    assigned_to: str = ""
    not_decided_by: str = ""
    require_agreement: bool = False

    def validate(self) -> None:
        if self.quality not in QUALITY_CHOICES:
            raise ValidationError(f"Unknown quality filter {self.quality!r}: use one of {', '.join(QUALITY_CHOICES)}.")
        if self.status not in STATUS_CHOICES:
            raise ValidationError(f"Unknown status {self.status!r}: use one of {', '.join(STATUS_CHOICES)}.")
        for name in ("min_rating", "max_rating"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= 5):
                raise ValidationError(f"{name.replace('_', ' ').capitalize()} must be a whole number from 1 to 5 "
                                      f"(got {value!r}).")
        if self.min_rating is not None and self.max_rating is not None and self.min_rating > self.max_rating:
            raise ValidationError(f"The minimum rating ({self.min_rating}) is above the maximum "
                                  f"({self.max_rating}): nothing can match.")

    def where(self) -> tuple[str, list[Any]]:
        """A WHERE clause over ``conversations c`` and its parameters."""
        self.validate()
        parts: list[str] = []
        params: list[Any] = []
        if self.run_id:
            parts.append("c.run_id = ?")
            params.append(self.run_id)
        if self.status != "any":
            parts.append("c.status = ?")
            params.append(self.status)
        if self.min_rating is not None:
            parts.append("c.rating >= ?")
            params.append(self.min_rating)
        if self.max_rating is not None:
            parts.append("c.rating <= ?")
            params.append(self.max_rating)
        if self.tag:
            parts.append("EXISTS (SELECT 1 FROM tags t WHERE t.conversation_id = c.id AND t.tag = ?)")
            params.append(self.tag)
        if self.prompt_version is not None:
            parts.append("EXISTS (SELECT 1 FROM json_each(c.prompt_versions) j WHERE j.value = ?)")
            params.append(int(self.prompt_version))
        if self.model:
            parts.append("c.model = ?")
            params.append(self.model)
        if self.comparison_id:
            parts.append("c.comparison_id = ?")
            params.append(self.comparison_id)
        if self.quality != "any":
            parts.append(QUALITY_CONDITIONS[self.quality])
            if self.quality == "weakly grounded":
                params.append(WEAKLY_GROUNDED_BELOW)
        query = fts_query(self.search)
        if query:
            parts.append("c.rowid IN (SELECT rowid FROM conversations_fts WHERE conversations_fts MATCH ?)")
            params.append(query)
        if self.assigned_to.strip():
            parts.append("EXISTS (SELECT 1 FROM review_assignments a WHERE a.conversation_id = c.id "
                         "AND a.reviewer = ?)")
            params.append(self.assigned_to.strip())
        if self.not_decided_by.strip():
            parts.append("NOT EXISTS (SELECT 1 FROM reviewer_verdicts v WHERE v.conversation_id = c.id "
                         "AND v.reviewer = ? AND v.decision IS NOT NULL)")
            params.append(self.not_decided_by.strip())
        if self.require_agreement:
            parts.append(AGREED_CONDITION)
        return (" AND ".join(parts) or "1"), params

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ReviewFilter":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def describe(self) -> str:
        """One line for captions, messages and the export manifest."""
        parts = [f"status {self.status}"]
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.min_rating is not None or self.max_rating is not None:
            parts.append(f"rating {self.min_rating or 1}–{self.max_rating or 5}")
        if self.tag:
            parts.append(f"tag {self.tag!r}")
        if self.prompt_version is not None:
            parts.append(f"prompt version #{self.prompt_version}")
        if self.model:
            parts.append(f"model {self.model}")
        if self.comparison_id:
            parts.append(f"comparison {self.comparison_id}")
        if self.search.strip():
            parts.append(f"text {self.search.strip()!r}")
        if self.quality != "any":
            parts.append(self.quality)
        if self.assigned_to.strip():
            parts.append(f"assigned to {self.assigned_to.strip()}")
        if self.not_decided_by.strip():
            parts.append(f"not yet decided by {self.not_decided_by.strip()}")
        if self.require_agreement:
            parts.append("reviewers agree")
        return ", ".join(parts)


# ":" too: "https\://…" and "www\.…" are not auto-linked, so a bare URL in the text cannot navigate either.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


# Streamlit's markdown turns URLs, www. names and e-mail addresses into live links even when their
# characters are escaped (checked in chromium: "https\://…" still became <a href>). An invisible word joiner
# after each ":", "@" and "." (and before "." and "@": "www.") leaves the text looking the same but matches no
# link pattern.
_LINK_GLUE = re.compile(r"(?<=[:@.])(?=[^\s\\])|(?<=[^\s\\])(?=[.@])")
WORD_JOINER = "\u2060"


def escape_markdown(text: str) -> str:
    """Corpus or generated text made inert for ``st.markdown``: no links, images, HTML or LaTeX; line breaks kept."""
    glued = _LINK_GLUE.sub(WORD_JOINER, text or "")
    return _MD_SPECIAL.sub(r"\\\1", glued).replace("\n", "  \n")


# ---- the store ----------------------------------------------------------------------------------
class ReviewStore:
    """The review queue and actions over one workbench database."""

    def __init__(self, db: Database):
        self.db = db

    # ---- queue ----------------------------------------------------------------------------------
    def count(self, f: ReviewFilter) -> int:
        where, params = f.where()
        return int(self.db.scalar(f"SELECT COUNT(*) FROM conversations c WHERE {where}", params) or 0)

    def flagged_count(self, f: ReviewFilter) -> int:
        """How many conversations matching ``f`` the quality checks flagged (weakly grounded or identifiers
        absent from their passages): asked about before approving or exporting them."""
        where, params = f.where()
        return int(self.db.scalar(f"SELECT COUNT(*) FROM conversations c WHERE {where} AND {FLAGGED_CONDITION}",
                                  [*params, WEAKLY_GROUNDED_BELOW]) or 0)

    def unchecked_ids(self, f: ReviewFilter) -> list[str]:
        """Conversations matching ``f`` that the grounding checks never scored (a run killed before it graded,
        a database from before grading ran with every run): their flags are unknown, not absent."""
        where, params = f.where()
        return [r["id"] for r in self.db.rows(f"SELECT c.id FROM conversations c WHERE {where} "
                                              "AND c.grounded_at IS NULL ORDER BY c.created_at, c.id", params)]

    def status_counts(self, f: ReviewFilter) -> dict[str, int]:
        """Conversations per status under every other condition of ``f`` (so the counts add up to "any")."""
        where, params = ReviewFilter.from_dict({**f.as_dict(), "status": "any"}).where()
        rows = self.db.rows(f"SELECT c.status, COUNT(*) AS n FROM conversations c WHERE {where} GROUP BY c.status",
                            params)
        counts = {s: 0 for s in STATUSES}
        for r in rows:
            counts[r["status"]] = r["n"]
        counts["any"] = sum(counts.values())
        return counts

    def page(self, f: ReviewFilter, limit: int = 25, offset: int = 0) -> list[dict[str, Any]]:
        """One page of the queue, oldest first: the columns a list needs, never the turns."""
        where, params = f.where()
        return self.db.rows(
            f"SELECT c.id, c.created_at, c.status, c.rating, c.num_turns, c.model, c.run_id, c.arm, "
            f"substr(c.question, 1, {_SNIPPET_CHARS}) AS question, "
            f"(SELECT group_concat(tag, ', ') FROM tags t WHERE t.conversation_id = c.id) AS tags "
            f"FROM conversations c WHERE {where} ORDER BY c.created_at, c.id LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)])

    def first(self, f: ReviewFilter) -> str | None:
        rows = self.page(f, limit=1)
        return rows[0]["id"] if rows else None

    def _key(self, conversation_id: str) -> tuple[str, str] | None:
        row = self.db.one("SELECT created_at, id FROM conversations WHERE id=?", [conversation_id])
        return (row["created_at"], row["id"]) if row else None

    def next_id(self, f: ReviewFilter, current_id: str | None) -> str | None:
        """The conversation after ``current_id`` in queue order (works when the current one left the filter)."""
        return self._seek(f, current_id, ">", "ASC")

    def prev_id(self, f: ReviewFilter, current_id: str | None) -> str | None:
        return self._seek(f, current_id, "<", "DESC")

    def _seek(self, f: ReviewFilter, current_id: str | None, op: str, order: str) -> str | None:
        key = self._key(current_id) if current_id else None
        if key is None:
            return self.first(f)
        where, params = f.where()
        return self.db.scalar(
            f"SELECT c.id FROM conversations c WHERE {where} AND (c.created_at, c.id) {op} (?, ?) "
            f"ORDER BY c.created_at {order}, c.id {order} LIMIT 1", [*params, *key])

    def position(self, f: ReviewFilter, conversation_id: str) -> int | None:
        """1-based position of a conversation in the queue, or None when it does not match the filter."""
        key = self._key(conversation_id)
        if key is None or not self.matches(f, conversation_id):
            return None
        where, params = f.where()
        before = self.db.scalar(f"SELECT COUNT(*) FROM conversations c WHERE {where} AND (c.created_at, c.id) < (?, ?)",
                                [*params, *key])
        return int(before or 0) + 1

    def exists(self, conversation_id: str) -> bool:
        return self.db.scalar("SELECT 1 FROM conversations WHERE id=?", [conversation_id]) is not None

    def matches(self, f: ReviewFilter, conversation_id: str) -> bool:
        where, params = f.where()
        return self.db.scalar(f"SELECT 1 FROM conversations c WHERE c.id = ? AND {where}",
                              [conversation_id, *params]) is not None

    def filter_options(self) -> dict[str, list[Any]]:
        """Values the filter widgets offer: runs, tags, models, comparisons, prompt versions."""
        return {
            "runs": self.db.rows("SELECT id, kind, status, saved, created_at FROM runs ORDER BY created_at DESC "
                                 "LIMIT 200"),
            "tags": [r["tag"] for r in self.db.rows("SELECT DISTINCT tag FROM tags ORDER BY tag LIMIT 500")],
            # From runs, not conversations: every conversation is stored under a run that names its model,
            # and DISTINCT over the conversations table would read all of it on every rerun.
            "models": [r["model"] for r in self.db.rows(
                "SELECT DISTINCT model FROM runs WHERE model IS NOT NULL AND model <> '' ORDER BY model LIMIT 100")],
            "comparisons": self.db.rows("SELECT id, name, version_a, version_b FROM comparisons "
                                        "ORDER BY created_at DESC LIMIT 200"),
            "prompt_versions": self.db.rows("SELECT id, kind, version, name FROM prompt_versions "
                                            "ORDER BY kind, version DESC"),
        }

    # ---- one conversation -----------------------------------------------------------------------
    def get(self, conversation_id: str) -> dict[str, Any]:
        """A conversation with its turns (each with its retrieved passages), tags, calls summary and history."""
        c = self.db.one("SELECT * FROM conversations WHERE id=?", [conversation_id])
        if not c:
            raise NotFoundError(f"Conversation {conversation_id} does not exist (it may belong to another data dir).")
        for key, default in (("prompt_versions", {}), ("briefing_ids", []), ("question_meta", {})):
            c[key] = loads(c[key], default)
        turns = self.db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [conversation_id])
        for t in turns:
            t["retrieval"] = loads(t["retrieval"], None)
            t["edited"] = t["original_content"] is not None
        c["turns"] = turns
        c["tags"] = [r["tag"] for r in self.db.rows("SELECT tag FROM tags WHERE conversation_id=? ORDER BY tag",
                                                      [conversation_id])]
        c["calls"] = self.db.rows(
            "SELECT purpose, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens, "
            "SUM(completion_tokens) AS completion_tokens, SUM(thinking_tokens) AS thinking_tokens, "
            "SUM(latency_ms) AS latency_ms FROM calls WHERE conversation_id=? GROUP BY purpose ORDER BY purpose",
            [conversation_id])
        versions = [v for v in c["prompt_versions"].values() if isinstance(v, int)]
        c["prompt_version_rows"] = self.db.rows(
            f"SELECT id, kind, version, name FROM prompt_versions WHERE id IN ({','.join('?' * len(versions))})",
            versions) if versions else []
        c["twins"] = self.db.rows(
            "SELECT id, arm, status, rating FROM conversations WHERE comparison_id=? AND work_item_id=? AND id<>? "
            "ORDER BY arm", [c["comparison_id"], c["work_item_id"], c["id"]]) if c["comparison_id"] else []
        c["children"] = self.db.rows("SELECT id, status, created_at FROM conversations WHERE parent_id=? "
                                     "ORDER BY created_at", [c["id"]])
        c["preferred_over"] = [p["rejected_id"] for p in preferences_of(self.db, c["id"])]
        return c

    def history(self, conversation_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """Review events of a conversation, newest first."""
        rows = self.db.rows("SELECT ts, actor, kind, payload FROM events WHERE conversation_id=? "
                            "ORDER BY id DESC LIMIT ?", [conversation_id, limit])
        for r in rows:
            r["payload"] = loads(r["payload"], {})
        return rows

    # ---- actions --------------------------------------------------------------------------------
    def rate(self, conversation_id: str, rating: int | None, actor: str) -> None:
        """Set a 1–5 rating (None clears it)."""
        if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
            raise ValidationError(f"A rating is a whole number from 1 to 5 (got {rating!r}) for conversation "
                                  f"{conversation_id}.")
        self._update(conversation_id, actor, "review.rate", {"rating": rating}, {"rating": rating},
                     verdict={"rating": rating})

    def note(self, conversation_id: str, text: str, actor: str) -> None:
        text = (text or "").strip()
        if len(text) > MAX_NOTE_CHARS:
            raise ValidationError(f"The note on conversation {conversation_id} is {len(text):,} characters; keep it "
                                  f"under {MAX_NOTE_CHARS:,}.")
        self._update(conversation_id, actor, "review.note", {"note": text or None}, {"note": text})

    def approve(self, conversation_id: str, actor: str) -> None:
        self._update(conversation_id, actor, "review.approve", {"status": "approved", "discard_reason": None}, {},
                     verdict={"decision": "approved", "reason": None})

    def discard(self, conversation_id: str, reason: str, actor: str) -> None:
        """Soft: the conversation stays, marked discarded with the reason; :meth:`restore` undoes it."""
        reason = (reason or "").strip()
        if not reason:
            raise ValidationError(f"Say why conversation {conversation_id} is discarded: pick or type a reason.")
        self._update(conversation_id, actor, "review.discard", {"status": "discarded", "discard_reason": reason},
                     {"reason": reason}, verdict={"decision": "discarded", "reason": reason})

    def restore(self, conversation_id: str, actor: str) -> None:
        """Back to new: undoes an approve or a discard."""
        self._update(conversation_id, actor, "review.restore", {"status": "new", "discard_reason": None}, {},
                     verdict={"decision": None, "reason": None})

    def tag(self, conversation_id: str, tag: str, actor: str) -> None:
        tag = _clean_tag(tag)
        actor = _actor(actor)
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            w.execute("INSERT OR IGNORE INTO tags (conversation_id, tag, created_at, created_by) VALUES (?,?,?,?)",
                      [conversation_id, tag, now(), actor])
            self._touch(w, c, actor, "review.tag", {"tag": tag})

    def untag(self, conversation_id: str, tag: str, actor: str) -> None:
        actor = _actor(actor)
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            w.execute("DELETE FROM tags WHERE conversation_id=? AND tag=?", [conversation_id, tag])
            self._touch(w, c, actor, "review.untag", {"tag": tag})

    def edit_message(self, conversation_id: str, idx: int, content: str, actor: str) -> bool:
        """Replace the text of turn ``idx``; the first original is kept and the turn marked as edited.

        Editing a message back to its original text removes the edit mark. Returns False when nothing changed.

        Raises:
            ValidationError: the new text is empty (a training row can never hold an empty message).
        """
        actor = _actor(actor)
        content = (content or "").rstrip()
        if not content.strip():
            raise ValidationError(f"Conversation {conversation_id}, {self._turn_label(conversation_id, idx)}: "
                                  "a message cannot be empty. Write the corrected text, or mark the turn bad / "
                                  "discard the conversation instead.")
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            t = w.execute("SELECT * FROM turns WHERE conversation_id=? AND idx=?", [conversation_id, idx]).fetchone()
            if t is None:
                raise NotFoundError(f"Conversation {conversation_id} has no turn {idx}.")
            if content == t["content"]:
                return False
            original = t["original_content"] if t["original_content"] is not None else t["content"]
            if content == original:  # edited back: no longer an edit
                w.execute("UPDATE turns SET content=?, original_content=NULL, edited_by=NULL, edited_at=NULL "
                          "WHERE id=?", [content, t["id"]])
            else:
                w.execute("UPDATE turns SET content=?, original_content=?, edited_by=?, edited_at=? WHERE id=?",
                          [content, original, actor, now(), t["id"]])
            _sync_search_text(w, conversation_id)
            w.execute("INSERT INTO reviewer_verdicts (conversation_id, reviewer, edits, updated_at) VALUES (?,?,1,?) "
                      "ON CONFLICT (conversation_id, reviewer) DO UPDATE SET edits = COALESCE(edits, 0) + 1, "
                      "updated_at = excluded.updated_at", [conversation_id, actor, now()])
            self._touch(w, c, actor, "review.edit", {"idx": idx, "role": t["role"], "before": t["content"],
                                                     "after": content})
        return True

    def _turn_label(self, conversation_id: str, idx: int) -> str:
        roles = [r["role"] for r in self.db.rows("SELECT role FROM turns WHERE conversation_id=? ORDER BY idx",
                                                 [conversation_id])]
        return turn_label(roles, idx) if 0 <= idx < len(roles) else f"message {idx}"

    def revert_message(self, conversation_id: str, idx: int, actor: str) -> bool:
        """Put back the original text of an edited turn."""
        t = self.db.one("SELECT original_content FROM turns WHERE conversation_id=? AND idx=?", [conversation_id, idx])
        if t is None:
            raise NotFoundError(f"Conversation {conversation_id} has no turn {idx}.")
        if t["original_content"] is None:
            return False
        return self.edit_message(conversation_id, idx, t["original_content"], actor)

    def mark_turn(self, conversation_id: str, idx: int, bad: bool, actor: str) -> None:
        """Mark one assistant turn bad (exported with OpenAI's ``weight: 0``) or good again."""
        actor = _actor(actor)
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            t = w.execute("SELECT id, role FROM turns WHERE conversation_id=? AND idx=?",
                          [conversation_id, idx]).fetchone()
            if t is None:
                raise NotFoundError(f"Conversation {conversation_id} has no turn {idx}.")
            if t["role"] != "assistant":
                raise ValidationError(f"Conversation {conversation_id}, turn {idx} is a {t['role']} message: only "
                                      "assistant turns can be marked bad (edit a user message instead).")
            w.execute("UPDATE turns SET weight=? WHERE id=?", [0 if bad else 1, t["id"]])
            self._touch(w, c, actor, "review.mark_turn", {"idx": idx, "bad": bool(bad)})

    def prefer(self, chosen_id: str, rejected_id: str, actor: str) -> str:
        """Record that ``chosen_id`` is better than ``rejected_id``; the DPO export turns it into a pair.

        Two arms of one A/B pair are recorded as the prompt workshop records them (an ``ab_pick`` event, the
        latest pick of a pair wins); a regenerated version and its parent as a ``review.prefer`` event.
        Returns the source: ``ab`` or ``regenerate``.
        """
        actor = _actor(actor)
        if chosen_id == rejected_id:
            raise ValidationError("Pick between two different conversations.")
        with self.db.write() as w:
            a = self._conversation(w, chosen_id)
            b = self._conversation(w, rejected_id)
            if a["comparison_id"] and a["comparison_id"] == b["comparison_id"] and \
                    a["work_item_id"] == b["work_item_id"]:
                _event(w, actor, "ab_pick", a, {"comparison_id": a["comparison_id"], "pair": a["work_item_id"],
                                                "winner": a["arm"], "chosen": chosen_id, "rejected": rejected_id})
                return "ab"
            if a["parent_id"] == b["id"] or b["parent_id"] == a["id"]:
                # Changing one's mind: the opposite pick is withdrawn in the same transaction.
                opposite = _fold_preferences(w.execute(_PREFERENCE_EVENTS_SQL, [rejected_id]).fetchall())
                if any(p["rejected_id"] == chosen_id for p in opposite):
                    _event(w, actor, "review.unprefer", b, {"rejected_id": chosen_id})
                _event(w, actor, "review.prefer", a, {"rejected_id": rejected_id, "source": "regenerate"})
                return "regenerate"
        raise ValidationError(f"Conversations {chosen_id} and {rejected_id} are neither the two arms of one A/B pair "
                              "nor a regenerated version and its parent: there is nothing to compare them on.")

    def unprefer(self, chosen_id: str, rejected_id: str, actor: str) -> None:
        """Withdraw a regenerated-version preference."""
        actor = _actor(actor)
        with self.db.write() as w:
            a = self._conversation(w, chosen_id)
            _event(w, actor, "review.unprefer", a, {"rejected_id": rejected_id})

    # ---- bulk -----------------------------------------------------------------------------------
    def bulk_status(self, f: ReviewFilter, status: str, actor: str, reason: str = "",
                    expected: int | None = None) -> int:
        """Approve, discard or restore every conversation the filter matches; returns how many.

        Args:
            expected: the count the reviewer confirmed; if the filter now matches a different number
                (new conversations arrived), nothing is changed and the reviewer is asked again.
        """
        actor = _actor(actor)
        if status not in STATUSES:
            raise ValidationError(f"Unknown status {status!r}: use one of {', '.join(STATUSES)}.")
        reason = (reason or "").strip()
        if status == "discarded" and not reason:
            raise ValidationError("Say why these conversations are discarded: pick or type a reason.")
        kind = {"approved": "review.approve", "discarded": "review.discard", "new": "review.restore"}[status]
        payload = dumps({"reason": reason, "bulk": True} if reason else {"bulk": True})
        where, params = f.where()
        with self.db.write() as w:
            n = self._check_expected(w, f, expected)
            ts = now()
            w.execute(f"INSERT INTO events (ts, actor, kind, run_id, conversation_id, payload) "
                      f"SELECT ?, ?, ?, c.run_id, c.id, ? FROM conversations c WHERE {where}",
                      [ts, actor, kind, payload, *params])
            ids = [r[0] for r in w.execute(f"SELECT c.id FROM conversations c WHERE {where}", params).fetchall()]
            w.execute(f"UPDATE conversations SET status=?, discard_reason=?, reviewed_by=?, reviewed_at=? "
                      f"WHERE id IN (SELECT c.id FROM conversations c WHERE {where})",
                      [status, reason if status == "discarded" else None, actor, ts, *params])
            decision = None if status == "new" else status
            for cid in ids:
                _record_verdict(w, cid, actor, {"decision": decision, "reason": reason or None}, ts)
                _settle_status(w, cid)
        return n

    def bulk_tag(self, f: ReviewFilter, tag: str, actor: str, expected: int | None = None) -> int:
        actor = _actor(actor)
        tag = _clean_tag(tag)
        where, params = f.where()
        with self.db.write() as w:
            n = self._check_expected(w, f, expected)
            ts = now()
            w.execute(f"INSERT INTO events (ts, actor, kind, run_id, conversation_id, payload) "
                      f"SELECT ?, ?, 'review.tag', c.run_id, c.id, ? FROM conversations c WHERE {where}",
                      [ts, actor, dumps({"tag": tag, "bulk": True}), *params])
            w.execute(f"INSERT OR IGNORE INTO tags (conversation_id, tag, created_at, created_by) "
                      f"SELECT c.id, ?, ?, ? FROM conversations c WHERE {where}", [tag, ts, actor, *params])
        return n

    # ---- team review ----------------------------------------------------------------------------
    def split_queue(self, f: ReviewFilter, reviewers: list[str], actor: str, reviews_needed: int = 1,
                    expected: int | None = None) -> dict[str, int]:
        """Share the conversations matching ``f`` between ``reviewers`` in queue order, round robin; each
        conversation goes to ``reviews_needed`` different reviewers and needs that many decisions.

        Earlier assignments of these conversations are replaced. Returns conversations per reviewer.
        """
        actor = _actor(actor)
        names = list(dict.fromkeys(_actor(r) for r in reviewers if (r or "").strip()))
        if not names:
            raise ValidationError("Name at least one reviewer to split the queue between (comma-separated).")
        k = _reviews_needed(reviews_needed)
        if k > len(names):
            raise ValidationError(f"Each conversation needs {k} reviews but only {len(names)} reviewer(s) were named: "
                                  f"name at least {k}, or lower the reviews needed.")
        where, params = f.where()
        counts = dict.fromkeys(names, 0)
        with self.db.write() as w:
            self._check_expected(w, f, expected)
            ids = [r[0] for r in w.execute(f"SELECT c.id FROM conversations c WHERE {where} "
                                           "ORDER BY c.created_at, c.id", params).fetchall()]
            ts = now()
            for i, cid in enumerate(ids):
                w.execute("DELETE FROM review_assignments WHERE conversation_id=?", [cid])
                for j in range(k):
                    who = names[(i * k + j) % len(names)]
                    w.execute("INSERT OR IGNORE INTO review_assignments (conversation_id, reviewer, assigned_at, "
                              "assigned_by) VALUES (?,?,?,?)", [cid, who, ts, actor])
                    counts[who] += 1
                w.execute("UPDATE conversations SET reviews_needed=? WHERE id=?", [k, cid])
                # A conversation someone already approved or discarded keeps that status until a reviewer decides
                # it again (a split for re-review must not silently un-approve what was approved).
                if w.execute("SELECT status FROM conversations WHERE id=?", [cid]).fetchone()[0] == "new":
                    _settle_status(w, cid)
            w.execute("INSERT INTO events (ts, actor, kind, payload) VALUES (?,?,?,?)",
                      [ts, actor, "review.split", dumps({"filter": f.describe(), "reviewers": names,
                                                         "reviews_needed": k, "conversations": len(ids)})])
        return counts

    def set_reviews_needed(self, conversation_id: str, k: int, actor: str) -> None:
        """How many reviewers must decide this conversation (all the same way) before its status is set."""
        k = _reviews_needed(k)
        actor = _actor(actor)
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            w.execute("UPDATE conversations SET reviews_needed=? WHERE id=?", [k, conversation_id])
            _settle_status(w, conversation_id)
            self._touch(w, c, actor, "review.reviews_needed", {"reviews_needed": k})

    def verdicts(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every reviewer's own rating, decision and edit count on one conversation."""
        return self.db.rows("SELECT reviewer, rating, decision, reason, edits, updated_at FROM reviewer_verdicts "
                            "WHERE conversation_id=? ORDER BY reviewer", [conversation_id])

    def assignees(self, conversation_id: str) -> list[str]:
        return [r["reviewer"] for r in self.db.rows("SELECT reviewer FROM review_assignments WHERE conversation_id=? "
                                                    "ORDER BY reviewer", [conversation_id])]

    def _check_expected(self, w, f: ReviewFilter, expected: int | None) -> int:
        where, params = f.where()
        n = w.execute(f"SELECT COUNT(*) FROM conversations c WHERE {where}", params).fetchone()[0]
        if n == 0:
            raise ValidationError(f"No conversations match the filter ({f.describe()}): nothing was changed.")
        if expected is not None and n != expected:
            raise ValidationError(f"The filter now matches {n} conversations, not the {expected} you confirmed "
                                  "(conversations were added or changed meanwhile): nothing was changed; "
                                  "check the count and confirm again.")
        return n

    # ---- regenerate -----------------------------------------------------------------------------
    def regenerate(self, conversation_id: str, keep_through: int, actor: str, *, settings, corpus,
                   provider_factory: Callable, seed: int | None = None) -> str:
        """Keep turns 0..``keep_through`` (with their edits) and simulate the rest again.

        Later turns were written against the old text of the turns before them, so they are written anew
        with the same prompt versions and run settings, to the same number of assistant turns. The result
        is a new conversation whose ``parent_id`` is the old one; the old one is discarded (undoably) with
        a reason naming its successor, so both stay available (e.g. for a preference pick).

        Args:
            settings: provider and store settings (the provider is built from ``provider_factory``).
            corpus: the workbench corpus, for retrieving passages for the new answers.
            provider_factory: ``gate -> LLMProvider``, as the Generate page and the engine use.
            seed: sampling seed; default: derived from the conversation, the turn and the time.

        Returns:
            The new conversation's id.
        """
        from core.generation import prompts as prompt_lib
        from core.generation.conversation_store import store_conversation
        from core.generation.retrieval import Retriever
        from core.generation.run_config import RunConfig
        from core.generation.simulator import Question, Simulator
        from core.providers.base import CallGate

        actor = _actor(actor)
        c = self.get(conversation_id)
        turns = c["turns"]
        if not 0 <= keep_through < len(turns):
            raise ValidationError(f"Conversation {conversation_id} has turns 0–{len(turns) - 1}; "
                                  f"turn {keep_through} does not exist.")
        kept = turns[:keep_through + 1]
        target = sum(1 for t in turns if t["role"] == "assistant")
        have = sum(1 for t in kept if t["role"] == "assistant")
        if have >= target:
            raise ValidationError(f"Turn {keep_through} of conversation {conversation_id} is its last answer: there "
                                  "is nothing after it to regenerate. Choose the user turn before an answer to "
                                  "rewrite that answer.")
        run = self.db.one("SELECT recipe FROM runs WHERE id=?", [c["run_id"]]) if c["run_id"] else None
        recipe = loads(run["recipe"], {}) if run else {}
        config = RunConfig.from_json(recipe["config"]) if recipe.get("config") else RunConfig()
        library = prompt_lib.PromptLibrary(self.db)
        texts: dict[str, str] = {}
        versions = dict(c["prompt_versions"])
        for kind in ("respondent", "correspondent"):
            try:
                row = library.get(versions[kind]) if versions.get(kind) else library.current(kind)
            except NotFoundError:
                row = library.current(kind)
            versions[kind] = row["id"]
            texts[kind] = row["text"]
        config.prompt_versions = versions
        rng = random.Random(seed if seed is not None else int(hashlib.sha256(
            f"{conversation_id}:{keep_through}:{now()}".encode()).hexdigest()[:12], 16))
        corpus.verify()  # the configured embedding model must be the collection's, before any LLM call
        provider = provider_factory(CallGate(getattr(settings, "rpm_limit", 0)))
        try:
            retriever = Retriever(corpus, snapshot=False)
            question = Question(text=kept[0]["content"], meta=c["question_meta"], briefing_ids=c["briefing_ids"],
                                briefing=c["briefing"] or "",
                                briefing_passages=retriever.passages_by_id(c["briefing_ids"]))
            sim = Simulator(provider, retriever, config, texts)
            state = sim.resume(question, kept)
            while state.answers < target:
                if state.history[-1].role == "user":
                    sim.answer(state, seed=rng.randrange(2**31))
                else:
                    sim.ask(state, seed=rng.randrange(2**31))
            out, calls = state.turns, state.calls
        finally:
            provider.close()
        provider_name = getattr(provider, "name", "") or settings.resolved_provider
        model = getattr(provider, "model", "") or c["model"]
        run_id = new_id()[:12]
        with self.db.write() as w:
            w["runs"].insert({"id": run_id, "kind": "regenerate", "status": "completed", "reason": "",
                              "num_dialogs": 1, "saved": 1, "failed": 0, "provider": provider_name, "model": model,
                              "recipe": dumps({"config": config.to_json(), "parent_id": conversation_id,
                                               "keep_through": keep_through, "provider": provider_name,
                                               "model": model}),
                              "created_at": now(), "started_at": now(), "finished_at": now()})
            new = store_conversation(w, run_id=run_id, work_item_id=None, provider=provider_name, model=model,
                                     prompt_versions=versions, question=question,
                                     result={"turns": out, "calls": calls}, turns=target, parent_id=conversation_id)
            # Kept turns keep what review and generation knew about them: passages, edits, bad marks, tokens.
            for t in kept:
                w.execute("UPDATE turns SET retrieval=?, original_content=?, edited_by=?, edited_at=?, weight=?, "
                          "prompt_tokens=?, completion_tokens=?, thinking_tokens=?, latency_ms=? "
                          "WHERE conversation_id=? AND idx=?",
                          [dumps(t["retrieval"]) if t["retrieval"] is not None else None, t["original_content"],
                           t["edited_by"], t["edited_at"], t["weight"], t["prompt_tokens"], t["completion_tokens"],
                           t["thinking_tokens"], t["latency_ms"], new, t["idx"]])
            w.execute("UPDATE conversations SET (prompt_tokens, completion_tokens, thinking_tokens, latency_ms) = "
                      "(SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(thinking_tokens), SUM(latency_ms) "
                      "FROM turns WHERE conversation_id=?) WHERE id=?", [new, new])
            new_row = self._conversation(w, new)
            _event(w, actor, "review.regenerated", new_row, {"parent_id": conversation_id,
                                                             "keep_through": keep_through})
            old = self._conversation(w, conversation_id)
            if old["status"] != "discarded":
                # Turn numbers as people read them (core.turn_labels), not the message index.
                reason = f"regenerated from turn {turn_number([t['role'] for t in turns], keep_through)} as {new}"
                w.execute("UPDATE conversations SET status='discarded', discard_reason=?, reviewed_by=?, "
                          "reviewed_at=? WHERE id=?", [reason, actor, now(), conversation_id])
                _event(w, actor, "review.discard", old, {"reason": reason})
        return new

    # ---- helpers --------------------------------------------------------------------------------
    def _conversation(self, w, conversation_id: str) -> dict[str, Any]:
        row = w.execute("SELECT id, run_id, status, comparison_id, work_item_id, arm, parent_id FROM conversations "
                        "WHERE id=?",
                        [conversation_id]).fetchone()
        if row is None:
            raise NotFoundError(f"Conversation {conversation_id} does not exist (it may belong to another data dir).")
        return dict(row)

    def _touch(self, w, c: dict[str, Any], actor: str, kind: str, payload: dict[str, Any]) -> None:
        ts = now()
        w.execute("UPDATE conversations SET reviewed_by=?, reviewed_at=? WHERE id=?", [actor, ts, c["id"]])
        _event(w, actor, kind, c, payload, ts)

    def _update(self, conversation_id: str, actor: str, kind: str, changes: dict[str, Any],
                payload: dict[str, Any], verdict: dict[str, Any] | None = None) -> None:
        actor = _actor(actor)
        with self.db.write() as w:
            c = self._conversation(w, conversation_id)
            if changes:
                sets = ", ".join(f"{k}=?" for k in changes)
                w.execute(f"UPDATE conversations SET {sets} WHERE id=?", [*changes.values(), conversation_id])
            if verdict is not None:  # this reviewer's own record, beside the conversation's shared state
                _record_verdict(w, conversation_id, actor, verdict)
                if "decision" in verdict:
                    _settle_status(w, conversation_id)
            self._touch(w, c, actor, kind, {"previous_status": c["status"], **payload})


def _record_verdict(w, conversation_id: str, actor: str, values: dict[str, Any], ts: str | None = None) -> None:
    """Upsert this reviewer's verdict on a conversation with ``values`` (rating, decision, reason)."""
    cols = list(values)
    w.execute(f"INSERT INTO reviewer_verdicts (conversation_id, reviewer, {', '.join(cols)}, updated_at) "
              f"VALUES (?, ?, {', '.join('?' * len(cols))}, ?) ON CONFLICT (conversation_id, reviewer) DO UPDATE SET "
              + ", ".join(f"{k} = excluded.{k}" for k in [*cols, "updated_at"]),
              [conversation_id, actor, *values.values(), ts or now()])


def _settle_status(w, conversation_id: str) -> None:
    """A conversation that needs k ≥ 2 reviews is approved or discarded only once k reviewers decided, all the
    same way; until then (or while they disagree) it stays new. With one review needed the last decision
    stands, as before team review."""
    row = w.execute("SELECT reviews_needed FROM conversations WHERE id=?", [conversation_id]).fetchone()
    needed = (row[0] if row else None) or 1
    if needed <= 1:
        return
    decided = w.execute("SELECT decision, reason FROM reviewer_verdicts WHERE conversation_id=? AND decision IS NOT "
                        "NULL ORDER BY updated_at DESC", [conversation_id]).fetchall()
    if len(decided) >= needed and len({d[0] for d in decided}) == 1:
        status, reason = decided[0][0], (decided[0][1] if decided[0][0] == "discarded" else None)
    else:
        status, reason = "new", None
    w.execute("UPDATE conversations SET status=?, discard_reason=? WHERE id=?", [status, reason, conversation_id])


def _event(w, actor: str, kind: str, c: dict[str, Any], payload: dict[str, Any], ts: str | None = None) -> None:
    w.execute("INSERT INTO events (ts, actor, kind, run_id, conversation_id, payload) VALUES (?,?,?,?,?,?)",
              [ts or now(), actor, kind, c.get("run_id"), c["id"], dumps(payload)])


def _sync_search_text(w, conversation_id: str) -> None:
    """Keep the full-text index in step with edited turns (the FTS triggers follow ``search_text``)."""
    contents = [r[0] for r in w.execute("SELECT content FROM turns WHERE conversation_id=? ORDER BY idx",
                                        [conversation_id]).fetchall()]
    w.execute("UPDATE conversations SET search_text=? WHERE id=?", ["\n".join(contents), conversation_id])


def _actor(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise ValidationError("Set your reviewer name first (sidebar): every review action records who did it.")
    if len(actor) > MAX_ACTOR_CHARS:
        raise ValidationError(f"The reviewer name is {len(actor)} characters; use at most {MAX_ACTOR_CHARS}.")
    return actor


def _reviews_needed(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_REVIEWS_NEEDED:
        raise ValidationError(f"Reviews needed is a whole number from 1 to {MAX_REVIEWS_NEEDED} (got {k!r}).")
    return k


def _clean_tag(tag: str) -> str:
    tag = " ".join((tag or "").split())
    if not tag:
        raise ValidationError("A tag cannot be empty: type a word such as 'citation-error'.")
    if len(tag) > MAX_TAG_CHARS:
        raise ValidationError(f"The tag {tag[:20]!r}… is {len(tag)} characters; keep tags under {MAX_TAG_CHARS}.")
    return tag


_PREFERENCE_EVENTS_SQL = ("SELECT kind, payload FROM events WHERE conversation_id=? "
                          "AND kind IN ('review.prefer', 'review.unprefer') ORDER BY id")


def _fold_preferences(events: list[Any]) -> list[dict[str, Any]]:
    """Current preferences from a conversation's prefer/unprefer events, oldest first: the last word wins."""
    current: dict[str, dict[str, Any]] = {}
    for kind, payload in ((e["kind"], e["payload"]) for e in events):
        p = loads(payload, {})
        rid = p.get("rejected_id")
        if not rid:
            continue
        if kind == "review.prefer":
            current[rid] = {"rejected_id": rid, "source": p.get("source", "regenerate")}
        else:
            current.pop(rid, None)
    return list(current.values())


def preferences_of(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    """Conversations ``conversation_id`` is currently preferred over: ``[{"rejected_id", "source"}]``.

    Sources: ``ab`` (the latest ``ab_pick`` of its A/B pair chose it) and ``regenerate`` (preferred over its
    parent or a regenerated child). Judge attempts are not conversations; the export reads them from
    ``conversations.judge``.
    """
    found = _fold_preferences(db.rows(_PREFERENCE_EVENTS_SQL, [conversation_id]))
    c = db.one("SELECT comparison_id, work_item_id FROM conversations WHERE id=?", [conversation_id])
    if c and c["comparison_id"] and c["work_item_id"]:
        arms = [r["id"] for r in db.rows("SELECT id FROM conversations WHERE comparison_id=? AND work_item_id=?",
                                         [c["comparison_id"], c["work_item_id"]])]
        pick = db.one(f"SELECT payload FROM events WHERE kind='ab_pick' AND conversation_id IN "
                      f"({','.join('?' * len(arms))}) ORDER BY id DESC LIMIT 1", arms)
        payload = loads(pick["payload"], {}) if pick else {}
        if payload.get("chosen") == conversation_id and payload.get("rejected"):
            found.append({"rejected_id": payload["rejected"], "source": "ab"})
    return found
