"""What every grounding verifier returns: a verdict per answer sentence, with the passage span behind it.

The offline verifier (:mod:`core.quality.grounding`) and the LLM verifier (:mod:`core.quality.verify`)
both return :class:`TurnVerdict` objects, so ``groundwork grade``, the review page and the bench treat
them alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

VERDICTS = ("supported", "unsupported", "contradicted", "neutral")
FLAGGED = frozenset({"unsupported", "contradicted"})


@dataclass
class SentenceVerdict:
    """One sentence of an answer and what the passages say about it.

    ``evidence`` is a span of the passage ``passage_id`` (the supporting or contradicting text);
    ``confidence`` is how well supported the sentence is, 0..1 (None for neutral sentences).
    """

    text: str
    verdict: str  # one of VERDICTS
    passage_id: str | None = None
    evidence: str | None = None
    start: int = 0  # span of the sentence in the answer, for highlighting
    end: int = 0
    confidence: float | None = None
    reasons: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """The shape ``groundwork grade`` writes."""
        return {"text": self.text, "verdict": self.verdict, "passage_id": self.passage_id, "evidence": self.evidence}


@dataclass
class TurnVerdict:
    """The verdicts of one assistant turn. ``score`` is 0..1, higher = better supported; None when the
    turn makes no checkable claim (only abstentions and boilerplate)."""

    score: float | None
    method: str
    sentences: list[SentenceVerdict]
    turn: int | None = None  # index of the assistant message in the conversation

    @property
    def flagged(self) -> bool:
        return any(s.verdict in FLAGGED for s in self.sentences)

    def public(self) -> dict[str, Any]:
        return {"turn": self.turn, "score": self.score, "method": self.method,
                "sentences": [s.public() for s in self.sentences]}

    def as_stored(self) -> dict[str, Any]:
        """The JSON kept in ``turns.grounding`` (spans and reasons included, for the review page)."""
        return {"method": self.method, "score": self.score, "sentences": [asdict(s) for s in self.sentences]}


def turn_score(sentences: Sequence[SentenceVerdict]) -> float | None:
    """Share of the checkable sentences that are supported (None when there is none)."""
    checked = [s for s in sentences if s.verdict != "neutral"]
    if not checked:
        return None
    return round(sum(s.verdict == "supported" for s in checked) / len(checked), 4)


class Verifier(Protocol):
    """Anything that grades answers against their passages."""

    method: str

    def verify_turns(self, turns: Sequence[Any]) -> list[TurnVerdict]:
        """One :class:`TurnVerdict` per :class:`core.quality.grounding.TurnInput`, in order."""
        ...
