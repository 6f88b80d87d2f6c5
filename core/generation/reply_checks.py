"""Checks on every reply before it becomes training data: cut off, degenerate, echoed or off the briefing.

A reply is either accepted (possibly trimmed: a simulated user that runs on into a whole transcript
keeps its first message) or rejected with a reason. The simulator retries a rejected call with a new
seed (and, when the reply was cut at the token limit, a larger budget) and the run counts every
rejection by reason, so a weak model shows up in the run's report instead of in the dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.corpus.lexical import query_terms

# Reasons, as counted in a run's report.
TRUNCATED = "cut off at the token limit"
EMPTY = "empty"
NO_WORDS = "no words (punctuation or ellipsis only)"
LOOP = "a repeated sentence loop"
ECHO = "an echo of the prompt's instructions"
TRANSCRIPT = "ran on into a transcript"
NOT_A_QUESTION = "opening question is not a question"
OFF_BRIEFING = "opening question is not about the briefing"
FROM_PROMPT = "opening question is built from the prompt, not the briefing"
REPEATED = "opening question repeats one already in the run"
NOT_JSON = "not the JSON asked for"
BLOCKED = "blocked by the provider's safety filter"
REASONS = (TRUNCATED, EMPTY, NO_WORDS, LOOP, ECHO, TRANSCRIPT, NOT_A_QUESTION, OFF_BRIEFING, FROM_PROMPT, REPEATED,
           NOT_JSON, BLOCKED)

# A line that starts a new speaker's turn: the simulated user writing the assistant's reply too.
_SPEAKER = re.compile(r"(?im)^\s*(?:\*\*)?(assistant|ai|bot|agent|tutor|support|respondent|user|you|me|customer|"
                      r"student|client)(?:\*\*)?\s*:")
# Preambles that echo the prompt instead of answering it ("Here's the next message:").
_ECHO_PREFIX = re.compile(
    r"^\s*(?:sure[,!.]?\s*|okay[,!.]?\s*|certainly[,!.]?\s*)?(?:here(?:'s| is| are)\s+(?:my |the |your )?"
    r"(?:next |follow-?up |reply|response|message|question|answer)[^:\n]{0,60}:\s*)", re.I)
_ECHO_WHOLE = re.compile(r"^\s*(?:write (?:only )?your next message|reply with the message only|stay in role|"
                         r"you play the user|your briefing)\b", re.I)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_INTERROGATIVE = re.compile(
    r"^\s*(?:what|how|why|when|where|who|whom|whose|which|can|could|is|are|was|were|does|do|did|should|would|"
    r"will|may|might|must|has|have|had|explain|describe|tell|help|please|i need|i want|i'd like|is there|"
    r"are there|compare|summari[sz]e|walk me|give me|list)\b", re.I)


@dataclass
class Checked:
    text: str  # the reply to keep (trimmed), "" when rejected
    reason: str = ""  # why it was rejected ("" when accepted)
    trimmed: str = ""  # what was cut from an accepted reply, and why (e.g. TRANSCRIPT)

    @property
    def ok(self) -> bool:
        return not self.reason


def check_reply(text: str, finish_reason: str = "STOP", *, user_turn: bool = False,
                prompt: str = "") -> Checked:
    """Accept, trim or reject one reply.

    Args:
        text: the model's reply.
        finish_reason: the provider's finish reason (``MAX_TOKENS`` means the reply was cut off).
        user_turn: the reply is the simulated user's message (a transcript run-on is cut, speaker tags dropped).
        prompt: the system prompt the reply answers; a reply that repeats its lines is an echo.
    """
    if (finish_reason or "").upper() in ("MAX_TOKENS", "LENGTH"):
        return Checked("", TRUNCATED)
    text = (text or "").strip()
    if not text:
        return Checked("", EMPTY)
    trimmed = ""
    if user_turn:
        text, trimmed = _first_speaker_turn(text)
    text = _ECHO_PREFIX.sub("", text, count=1).strip()
    if not text:
        return Checked("", ECHO)
    if not re.search(r"\w", text):
        return Checked("", NO_WORDS)
    if _ECHO_WHOLE.match(text) or _echoes(text, prompt):
        return Checked("", ECHO)
    if _loops(text):
        return Checked("", LOOP)
    return Checked(text, "", trimmed)


def check_question(text: str, briefing: str, prompt: str = "", seen: "OpeningQuestions | None" = None) -> Checked:
    """An opening question: a sound reply, phrased as a question or request, about the briefing's own content
    (distinctive words shared with the passages, not with the prompt around them), new to the run.

    Args:
        text: the question.
        briefing: the briefing passages' text (only the passages: no markup, no notice).
        prompt: the instruction prompt's own text (without the passages); its words do not count as shared.
        seen: the run's opening questions so far; a question the same or nearly the same as one is rejected.
    """
    checked = check_reply(text, user_turn=True)
    if not checked.ok:
        return checked
    q = checked.text
    if "?" not in q and not _INTERROGATIVE.match(q):
        return Checked("", NOT_A_QUESTION)
    if briefing:
        reason = _about_briefing(q, briefing, prompt)
        if reason:
            return Checked("", reason)
    if seen is not None and not seen.add(q):
        return Checked("", REPEATED)
    return checked


class OpeningQuestions:
    """The opening questions of a run, to keep one from being asked twice (the same or nearly the same).

    Thread-safe: the question writers of a run check and add concurrently.
    """

    NEAR = 0.8  # word-set overlap (Jaccard) from which two questions are the same question

    def __init__(self, questions: "list[str] | tuple[str, ...]" = ()):
        import threading

        self._lock = threading.Lock()
        self._exact: set[str] = set()
        self._sets: list[frozenset[str]] = []
        for q in questions:
            self.add(q)

    @staticmethod
    def _words(text: str) -> frozenset[str]:
        return frozenset(re.findall(r"[^\W_]+", text.lower()))

    def add(self, question: str) -> bool:
        """Record ``question``; False (and nothing recorded) if it repeats one already there."""
        words = self._words(question)
        key = " ".join(sorted(words))
        with self._lock:
            if key in self._exact:
                return False
            for other in self._sets:
                union = len(words | other)
                if union and len(words & other) / union >= self.NEAR:
                    return False
            self._exact.add(key)
            self._sets.append(words)
            return True

    def __len__(self) -> int:
        return len(self._sets)


def _first_speaker_turn(text: str) -> tuple[str, str]:
    """The simulated user's own message when the reply continues as a transcript ("You: … Assistant: …")."""
    text = re.sub(r"^\s*(?:\*\*)?(?:you|user|me|customer|student|client)(?:\*\*)?\s*:\s*", "", text, flags=re.I)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    match = _SPEAKER.search(text)
    if match and match.start() > 0:
        return text[:match.start()].strip(), TRANSCRIPT
    if match:  # starts with another speaker's tag after the first: nothing of the user's own
        return "", TRANSCRIPT
    return text, ""


def _loops(text: str) -> bool:
    """One sentence (or line) making up most of a reply of several: a generation loop."""
    sentences = [" ".join(s.lower().split()) for s in _SENTENCE.findall(text)]
    sentences = [s for s in sentences if len(s) > 3]
    if len(sentences) < 3:
        return False
    counts: dict[str, int] = {}
    for s in sentences:
        counts[s] = counts.get(s, 0) + 1
    top = max(counts.values())
    return top >= 3 and top / len(sentences) >= 0.5


def _echoes(text: str, prompt: str) -> bool:
    """The reply is mostly lines of the prompt's own instructions (not the passages it quotes)."""
    if not prompt:
        return False
    prompt_lines = {" ".join(line.lower().split()) for line in prompt.splitlines() if len(line.split()) >= 5}
    lines = [" ".join(line.lower().split()) for line in text.splitlines() if line.strip()]
    if not lines or not prompt_lines:
        return False
    copied = sum(line in prompt_lines for line in lines)
    return copied / len(lines) >= 0.6


def _stems(text: str) -> set[str]:
    """Content words cut to five letters (inflections match), numbers and identifiers whole."""
    terms = query_terms(text)
    return {t[:5] for t in terms if len(t) >= 4 and not any(c.isdigit() for c in t)} | \
           {t for t in terms if any(c.isdigit() for c in t)}


_PROMPT_STEMS_CACHE: dict[str, set[str]] = {}
_MACHINERY = _stems("passage passages marked retrieved retrieval latest carried briefing corpus quoted excerpt "
                    "excerpts snippet chunk status delimiter notice persona answerable unanswerable json schema "
                    "instructions conversation assistant")


def _prompt_stems(prompt: str) -> set[str]:
    from core.generation.standalone_query import PROMPT_TEXT

    key = prompt or ""
    if key not in _PROMPT_STEMS_CACHE:
        if len(_PROMPT_STEMS_CACHE) > 64:
            _PROMPT_STEMS_CACHE.clear()
        _PROMPT_STEMS_CACHE[key] = _stems(PROMPT_TEXT) | _stems(prompt)
    return _PROMPT_STEMS_CACHE[key]


def _about_briefing(question: str, briefing: str, prompt: str = "") -> str:
    """"" when the question is about the briefing's own content, else the reason it is not.

    It must share distinctive words with the passages: words the prompt around them does not use (a
    question built from "passages marked new retrieved for the latest message" shares "passages" with
    nothing but the prompt). Two such words; or one that is a name or a figure (capitalised in the
    passages, or with digits); or one, when none of the question's other words come from the prompt.
    """
    q, b, p = _stems(question), _stems(briefing), _prompt_stems(prompt)
    shared = (q & b) - p
    # Words only the prompt's machinery uses (passages, retrieved, briefing…), not everyday words it happens
    # to contain ("role", "explain"): those make a question about the prompt.
    from_prompt = (q & _MACHINERY) - b
    if len(shared) >= 2:
        return ""
    if len(shared) == 1:
        (stem,) = shared
        named = any(c.isdigit() for c in stem) or re.search(r"\b" + re.escape(stem[:1].upper() + stem[1:]), briefing)
        if named or not from_prompt:  # one plain word is enough only when nothing else came from the prompt
            return ""
    return FROM_PROMPT if from_prompt else OFF_BRIEFING
