"""An LLM judge with a rubric, and bounded auto-improve: regenerate with the judge's feedback, keep the best.

AfterImage's auto-improve regenerates a bad conversation unchanged and without a cap. Here the
judge's feedback is added to the respondent prompt for the next attempt, attempts are capped, every
attempt's score is kept, and the best attempt is what gets stored (the others feed preference pairs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.providers.base import LLMError, LLMProvider, LLMRequest, Message

CRITERIA = ("groundedness", "helpfulness", "coherence", "role_consistency")
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        **{c: {"type": "integer", "minimum": 1, "maximum": 5} for c in CRITERIA},
        "feedback": {"type": "string"},
    },
    "required": [*CRITERIA, "feedback"],
}

JUDGE_SYSTEM = """You grade synthetic training conversations between a user and an assistant that must answer
only from retrieved passages. Score each criterion from 1 (bad) to 5 (excellent):

- groundedness: every claim in the assistant's answers is supported by the passages shown for that
  turn; identifiers (names, numbers, dates, citations) are copied correctly; nothing is invented; when
  the passages lack the answer, the assistant says so.
- helpfulness: the answers address what the user asked, clearly and completely.
- coherence: the conversation flows; each turn follows from the previous ones.
- role_consistency: the user sounds like a real user and the assistant stays in its role.

Then write feedback: two or three concrete instructions the assistant should follow to do better on
this conversation (quote the unsupported claim if there is one). Reply as JSON."""

# A 135M-parameter model cannot grade other models' answers: its scores would be noise.
PROVIDERS_THAT_CANNOT_JUDGE = {"local": "The offline demo model (SmolLM2-135M) is far too small to judge "
                                        "conversations: its scores would be noise. Use Gemini or an "
                                        "OpenAI-compatible server with a capable model to enable the judge."}


def judge_available(provider_name: str) -> tuple[bool, str]:
    reason = PROVIDERS_THAT_CANNOT_JUDGE.get(provider_name, "")
    return (not reason, reason)


@dataclass
class Verdict:
    scores: dict[str, int]
    feedback: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def overall(self) -> float:
        return round(sum(self.scores.values()) / len(self.scores), 3)


@dataclass
class Attempt:
    """One generation attempt of a conversation and the judge's verdict on it."""

    verdict: Verdict
    messages: list[dict[str, str]]
    feedback_used: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"overall": self.verdict.overall, "scores": self.verdict.scores, "feedback": self.verdict.feedback,
                "feedback_used": self.feedback_used, "messages": self.messages}


@dataclass
class JudgeRecord:
    """What is stored on the conversation: every attempt, and which one was kept."""

    attempts: list[Attempt] = field(default_factory=list)
    best: int = 0
    threshold: float = 3.5

    def as_json(self) -> str:
        return json.dumps({"best": self.best, "threshold": self.threshold,
                           "overall": self.attempts[self.best].verdict.overall if self.attempts else None,
                           "attempts": [a.as_dict() for a in self.attempts]}, ensure_ascii=False)


def transcript(turns: list[dict[str, Any]]) -> str:
    """The conversation with each answer's passages, as the judge reads it."""
    parts = []
    for t in turns:
        if t["role"] == "assistant":
            passages = t.get("retrieval") or []
            shown = "\n".join(f"  [{i}] {p['text'][:1200]}" for i, p in enumerate(passages, 1)) or "  (none)"
            parts.append(f"Passages shown for the next answer:\n{shown}\nASSISTANT: {t['content']}")
        else:
            parts.append(f"USER: {t['content']}")
    return "\n\n".join(parts)


class Judge:
    """Scores conversations with a rubric through any provider that can do structured output."""

    def __init__(self, provider: LLMProvider, threshold: float = 3.5, max_attempts: int = 2, priority: float = 0.0):
        self.provider = provider
        self.threshold = threshold
        self.max_attempts = max(1, max_attempts)
        self.priority = priority  # at a run's call gate (see core.generation.engine.AdaptiveGate.attempt)

    def score(self, turns: list[dict[str, Any]]) -> Verdict:
        request = LLMRequest(messages=[Message("user", transcript(turns))], system=JUDGE_SYSTEM, temperature=0.0,
                             max_tokens=600, json_schema=JUDGE_SCHEMA, priority=self.priority)
        result = self.provider.generate(request)
        data = result.json()
        try:
            scores = {c: max(1, min(5, int(data[c]))) for c in CRITERIA}
        except (KeyError, TypeError, ValueError):
            raise LLMError(f"The judge's reply lacks scores for {', '.join(CRITERIA)}.", kind="malformed",
                           retryable=True) from None
        return Verdict(scores, str(data.get("feedback", "")).strip(), result.prompt_tokens, result.completion_tokens)

    def passes(self, verdict: Verdict) -> bool:
        return verdict.overall >= self.threshold


def with_feedback(respondent_prompt: str, feedback: str) -> str:
    """The respondent prompt for a retry: the judge's feedback appended as instructions."""
    if not feedback.strip():
        return respondent_prompt
    return (respondent_prompt + "\n\nA reviewer graded an earlier answer to this conversation. Follow this "
            "feedback:\n" + feedback.strip())


def asdict_verdict(v: Verdict) -> dict[str, Any]:
    return {**asdict(v), "overall": v.overall}
