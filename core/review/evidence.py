"""What the Review page shows first about each answer: a verdict badge, and whether it needs a second look.

Built on the offline grounding checks (core.quality); the page draws these, this module decides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.db import Database
from core.corpus.embeddings import Embedder
from core.quality import FLAGGED, WEAKLY_GROUNDED_BELOW, regrade_stale, score_conversation
from core.quality.verdicts import CHECK_LABELS


@dataclass(frozen=True)
class Badge:
    label: str
    colour: str  # a st.badge colour: green, orange, red, gray
    icon: str  # a Material icon name, ":material/...:"
    flagged: bool  # worth a confirmation before it is approved or exported


def ensure_grounded(db: Database, embedder: Embedder, conversation_id: str) -> bool:
    """Score a conversation that was never scored, re-grade turns edited since; True if anything was computed.

    The Review page calls it on open, so evidence is there even for conversations saved before grounding ran
    at the end of every run (or by a run that was killed before it got there).
    """
    if db.scalar("SELECT grounded_at FROM conversations WHERE id=?", [conversation_id]) is None:
        score_conversation(db, embedder, conversation_id)
        return True
    return regrade_stale(db, embedder, conversation_id) > 0


def unsupported_sentences(detail: dict[str, Any]) -> int:
    return sum(1 for s in detail.get("sentences") or [] if (s.get("kind") or s.get("verdict")) in FLAGGED)


def _checks_that_flagged(detail: dict[str, Any]) -> str:
    """Which kinds of check flagged sentences ("figure check, polarity check"), so a reviewer knows what spoke."""
    kinds = []
    for s in detail.get("sentences") or []:
        if (s.get("kind") or s.get("verdict")) in FLAGGED and s.get("check"):
            label = CHECK_LABELS.get(s["check"], s["check"])
            if label not in kinds:
                kinds.append(label)
    return ", ".join(kinds)


# Shown where offline flags are (Review, Export): what they can and cannot tell.
OFFLINE_NOTE = ("Offline checks flag only what they can show: a figure, date, name, identifier or citation the "
                "passages lack, or an outcome opposite to the passage sentence it matches. Everything else is "
                "\"not checked offline\". For verdicts that matter, use the LLM verifier (Review: \"Verify "
                "grounding with the LLM\"; `generate --verify-grounding`; `grade --provider`).")


def turn_badge(detail: dict[str, Any] | None, threshold: float = WEAKLY_GROUNDED_BELOW) -> Badge:
    """The verdict on one answer from its stored grounding detail (see core.quality.grounding_details).

    Args:
        threshold: the score under which an answer is flagged (the default, or one fitted to reviewers).
    """
    if not detail or (detail.get("score") is None and not detail.get("sentences") and not detail.get("citations")):
        return Badge("not checked", "gray", ":material/help:", False)
    if detail.get("stale"):
        return Badge("grounding stale: edited after the check", "gray", ":material/history:", False)
    unsupported = unsupported_sentences(detail)
    citations = len(detail.get("citations") or [])
    score = detail.get("score")
    if unsupported or citations:
        parts = []
        if unsupported:
            by = _checks_that_flagged(detail)
            parts.append(f"{unsupported} unsupported sentence{'s' if unsupported != 1 else ''}"
                         + (f" ({by})" if by else ""))
        if citations:
            parts.append(f"{citations} identifier{'s' if citations != 1 else ''} not in the passages")
        return Badge(" · ".join(parts), "red", ":material/error:", True)
    if score is not None and score < threshold:
        fitted = " (threshold fitted to reviewers)" if threshold != WEAKLY_GROUNDED_BELOW else ""
        return Badge(f"weakly grounded · {score:.2f}{fitted}", "orange", ":material/warning:", True)
    if score is None:
        return Badge("no checkable claim", "gray", ":material/remove:", False)
    if detail.get("method") and ":" in str(detail.get("method")):  # "llm-verify-…:model": the LLM verifier spoke
        return Badge(f"grounded · LLM verifier · {score:.2f}", "green", ":material/check_circle:", False)
    open_claims = sum(1 for s in detail.get("sentences") or [] if s.get("check") == "none")
    if open_claims:
        # Offline, nothing could be shown wrong, but not everything could be matched: say so, not "grounded".
        # Short: a badge must fit beside the passages at 1024 px; the sentences themselves say which (grey).
        return Badge(f"no flag · {open_claims} unchecked offline", "gray", ":material/fact_check:", False)
    return Badge(f"grounded · passage match · {score:.2f}", "green", ":material/check_circle:", False)


def flagged_answers(details: list[dict[str, Any]], threshold: float = WEAKLY_GROUNDED_BELOW) -> int:
    """How many answers of a conversation carry a red or orange badge."""
    return sum(1 for d in details if turn_badge(d, threshold).flagged)


def conversation_threshold(db: Database, conversation: dict[str, Any]) -> float:
    """The flag threshold of a conversation's respondent prompt version (fitted to reviewers, or the default)."""
    from core.db import loads
    from core.quality.reviewer_fit import flag_threshold

    raw = conversation.get("prompt_versions")
    versions = raw if isinstance(raw, dict) else (loads(raw, {}) or {})
    return flag_threshold(db, versions.get("respondent") if isinstance(versions, dict) else None)
