"""Standalone search queries for follow-up turns: the latest message plus the conversation's subject.

"Why did the court decide it that way?" embeds as a generic question about courts and finds passages
from whichever opinion talks most about deciding. A turn after the first therefore searches with a
query that carries the conversation's subject: the simulated user's own standalone query when its
structured reply gave one, otherwise the message itself; either way the subject terms the query lacks
(names, identifiers and topic words of the opening question and the briefing's titles) are added. No
LLM call is needed for this, so it works with every provider, the offline model included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.lexical import query_terms

MAX_QUERY_CHARS = 600  # a query longer than this is noise to both sides (and past MiniLM's window)
MAX_SUBJECT_TERMS = 16

_DEGENERATE = re.compile(r"^[\W_]*$")


def usable_query(text: str | None) -> str:
    """A model-written search query if it is usable (some words, not too long), else ""."""
    text = " ".join((text or "").split())
    if not text or _DEGENERATE.match(text) or len(query_terms(text)) < 2 or len(text) > MAX_QUERY_CHARS:
        return ""
    return text


def subject_terms(opening: str, subject: Sequence[str] = ()) -> list[str]:
    """What the conversation is about: the searchable terms of the briefing's titles and the opening question."""
    terms: dict[str, None] = {}
    for text in (*subject, opening):
        for t in query_terms(text):
            terms.setdefault(t, None)
    return list(terms)[:MAX_SUBJECT_TERMS]


def standalone_query(user_messages: Sequence[str], subject: Sequence[str] = (), proposed: str = "") -> str:
    """The search query for the latest user message of a conversation.

    Args:
        user_messages: the user's messages so far, the opening question first and the latest last.
        subject: titles (or other short descriptions) of what the conversation is grounded in, if known.
        proposed: a standalone query the simulated user wrote with its message (may be empty or weak).

    Returns:
        The opening question as it stands for the first turn; for later turns the proposed query (or the
        latest message) followed by the subject terms it does not already contain.
    """
    if not user_messages:
        return ""
    latest = user_messages[-1].strip()
    base = usable_query(proposed) or latest
    if len(user_messages) == 1:
        return base  # the opening question is written to stand alone
    have = set(query_terms(base))
    missing = [t for t in subject_terms(user_messages[0], subject) if t not in have]
    query = " ".join([base, *missing]).strip()
    return query[:MAX_QUERY_CHARS]
