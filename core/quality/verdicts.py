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
# Which kind of check spoke for a sentence. Offline, only checks that can show their evidence flag: a figure,
# date, name, identifier or citation the passages lack, or an outcome/polarity opposite to the passage
# sentence it matches. "similarity" supports; "none" means the offline checks could not decide (neutral,
# "not checked offline"); "llm" is the LLM verifier's verdict; "trained" the cross-encoder trained on the
# user's corpus (core.quality.trained), which shows the window it scored as its evidence.
CHECKS = ("figure", "date", "name", "identifier", "citation", "polarity", "similarity", "none", "llm", "trained")
CHECK_LABELS = {"figure": "figure check", "date": "date check", "name": "name check",
                "identifier": "identifier check", "citation": "citation check", "polarity": "polarity check",
                "similarity": "passage match", "none": "not checked offline", "llm": "LLM verifier",
                "trained": "verifier trained on this corpus"}
# A turn's score is on two bands (see :func:`band_score`): below this, a check flagged a sentence.
FLAG_BAND = 0.5


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
    check: str = ""  # which kind of check spoke (CHECKS); "" for a sentence that makes no claim

    def public(self) -> dict[str, Any]:
        """The shape ``groundwork grade`` writes."""
        return {"text": self.text, "verdict": self.verdict, "check": self.check, "passage_id": self.passage_id,
                "evidence": self.evidence}


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


def band_score(flagged: int, claims: int, weakest: float | None) -> float | None:
    """A turn's score on two bands, so one threshold both flags and ranks.

    Below :data:`FLAG_BAND`: a check flagged ``flagged`` of its ``claims`` sentences (0.5 x the share not
    flagged). At or above: nothing was flagged, and the score rises with the weakest claim's confidence
    (``weakest``, 0..1; None counts as 1), so a threshold fitted to reviewers can reach into the answers the
    offline checks could not decide. None: the turn makes no claim.
    """
    if claims <= 0:
        return None
    if flagged:
        return round(FLAG_BAND * (1 - flagged / claims), 4)
    return round(FLAG_BAND + (1 - FLAG_BAND) * max(0.0, min(1.0, 1.0 if weakest is None else weakest)), 4)


def turn_score(sentences: Sequence[SentenceVerdict]) -> float | None:
    """:func:`band_score` of these verdicts: flagged sentences against the claims (neutral ones make none,
    unless the offline checks left them undecided: those are claims that were not flagged)."""
    claims = [s for s in sentences if s.verdict != "neutral" or s.check == "none"]
    flagged = sum(s.verdict in FLAGGED for s in claims)
    confidences = [s.confidence for s in claims if s.confidence is not None]
    return band_score(flagged, len(claims), min(confidences) if confidences else None)


class Verifier(Protocol):
    """Anything that grades answers against their passages."""

    method: str

    def verify_turns(self, turns: Sequence[Any]) -> list[TurnVerdict]:
        """One :class:`TurnVerdict` per :class:`core.quality.grounding.TurnInput`, in order."""
        ...
