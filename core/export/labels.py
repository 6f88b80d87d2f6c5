"""Which review decisions become KTO labels: one table from reason to label, and nothing else.

A KTO ``false`` says "this answer is bad". Only reasons about the answer say that; a conversation discarded
as a duplicate, as off topic or as unnatural may hold a perfectly good answer, so it gives no label at all.
DPO pairs come from explicit preferences only (an edit, an A/B pick, a regeneration preferred, the judge's
kept attempt), never from a discard reason.
"""

from __future__ import annotations

import re

# (reason as the Review page offers it, or a pattern a typed reason matches; label; why). The first match wins;
# a reason that matches nothing gives no label, so a new reason cannot silently become "bad answer".
REASON_LABELS: list[tuple[str, bool | None, str]] = [
    ("answer marked bad on the Review page", False, "the reviewer judged that answer"),
    ("ungrounded: not supported by the passages", False, "about the answer: claims the passages do not support"),
    ("wrong or misleading answer", False, "about the answer"),
    ("unnatural conversation", None, "about the conversation's flow, not the answer"),
    ("off topic", None, "about the question"),
    ("duplicate", None, "about the dataset, not the answer"),
    ("other", None, "says nothing about the answer"),
    ("regenerated from turn …", None, "replaced by a regeneration; the preference goes to DPO instead"),
    ("typed: wrong / incorrect / misleading / inaccurate / false", False, "about the answer"),
    ("typed: ungrounded / unsupported / hallucinated / invented / made up", False, "about the answer"),
    ("typed: unhelpful / incomplete / evasive / refuses", False, "about the answer"),
    ("anything else", None, "not known to be about the answer"),
]
_EXACT = {reason: label for reason, label, _ in REASON_LABELS if not reason.startswith(("typed:", "anything"))}
_TYPED_BAD = re.compile(r"\b(wrong|incorrect|misleading|inaccurate|false|ungrounded|unsupported|hallucinat\w*|"
                        r"invented|made[ -]up|unhelpful|incomplete|evasive|refus\w*)\b", re.IGNORECASE)
_NOT_ANSWER = re.compile(r"^\s*(duplicate|off[ -]topic|unnatural|regenerated from turn)", re.IGNORECASE)


def label_for_discard(reason: str | None) -> bool | None:
    """The KTO label a discarded conversation's last answer gets: False (a bad answer) or None (no row)."""
    text = (reason or "").strip()
    if not text:
        return None
    if text in _EXACT:
        return _EXACT[text]
    if _NOT_ANSWER.match(text):
        return None
    return False if _TYPED_BAD.search(text) else None


def reason_table() -> list[dict[str, str]]:
    """The table for the Export page and the dataset card."""
    shown = {False: "false (bad answer)", None: "no row", True: "true"}
    return [{"reason": r, "KTO label": shown[label], "why": why} for r, label, why in REASON_LABELS] + [
        {"reason": "approved conversation", "KTO label": "true", "why": "its answers up to the first bad one"}]
