"""The LLM verifier: one structured call per assistant turn checks every sentence against that turn's passages.

The model returns, per numbered sentence, a verdict, the id of the passage it relied on, and a quote from
that passage. The quote is then looked up in the passage text: a "supported" or "contradicted" verdict
whose quote is not really there (an invented or paraphrased "quote") becomes "unsupported", so a verdict
shown to a reviewer always points at text that exists. Results are cached by a hash of everything the
call depends on (prompt version, model, answer, passages), so grading a file twice, or a run and then
the review page, pays once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from core.db import Database, now
from core.errors import ValidationError
from core.providers.base import LLMError, LLMProvider, LLMRequest, Message
from core.quality.grounding import TurnInput
from core.quality.sentences import split_sentences
from core.quality.spans import locate
from core.quality.verdicts import VERDICTS, SentenceVerdict, TurnVerdict, turn_score

VERIFIER_VERSION = "llm-verifier-v1"
PASSAGE_CHARS = 4000  # per passage in the prompt; a longer chunk is cut (evidence past it cannot be quoted)

VERIFY_SCHEMA = {
    "type": "object",
    "properties": {
        "sentences": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "verdict": {"type": "string", "enum": list(VERDICTS)},
                    "passage_id": {"type": "string"},
                    "evidence": {"type": "string"},
                },
                "required": ["n", "verdict", "passage_id", "evidence"],
            },
        },
    },
    "required": ["sentences"],
}

VERIFY_SYSTEM = """You check whether an assistant's answer is supported by the passages it was shown.
For every numbered sentence of the answer, return one entry with:
- n: the sentence number;
- verdict: "supported" (the passages state it, possibly in other words, or it follows by simple arithmetic or
  logic from what they state), "contradicted" (the passages state something incompatible: a different
  number, name, date or outcome, or the opposite meaning), "unsupported" (the passages do not say it), or
  "neutral" (the sentence makes no factual claim: a greeting, an offer to help, a question back, or a statement
  that the passages do not cover something);
- passage_id: the id of the passage that supports or contradicts it ("" for unsupported or neutral);
- evidence: the exact words from that passage that support or contradict it, copied character for character
  (a single contiguous span, at most two sentences; "" for unsupported or neutral).
Judge only against the passages, not against what you know. Facts the user stated in the conversation may be
repeated without support: mark those "neutral". Reply as JSON."""


class VerifyCache(Protocol):
    def get(self, key: str) -> list[dict[str, Any]] | None: ...

    def put(self, key: str, method: str, value: list[dict[str, Any]]) -> None: ...


class MemoryCache:
    """A dict, for one process (tests, a one-off ``grade`` without a data dir)."""

    def __init__(self) -> None:
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, method: str, value: list[dict[str, Any]]) -> None:
        with self._lock:
            self._items[key] = value


class DatabaseCache:
    """The ``verifier_cache`` table of the workbench database: shared by runs, ``grade`` and the review page."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, key: str) -> list[dict[str, Any]] | None:
        value = self.db.scalar("SELECT value FROM verifier_cache WHERE key=?", [key])
        return json.loads(value) if value else None

    def put(self, key: str, method: str, value: list[dict[str, Any]]) -> None:
        with self.db.write() as w:
            w.execute("INSERT OR REPLACE INTO verifier_cache (key, method, value, created_at) VALUES (?, ?, ?, ?)",
                      [key, method, json.dumps(value, ensure_ascii=False), now()])


def cache_key(model: str, turn: TurnInput) -> str:
    payload = json.dumps([VERIFIER_VERSION, model, turn.answer, list(turn.context),
                          [[str(p.get("id")), p.get("text") or ""] for p in turn.passages]], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---- checking the model's quotes ------------------------------------------------------------------------

def check_evidence(verdict: str, passage_id: str, evidence: str, passages: Sequence[dict[str, Any]]
                   ) -> tuple[str, str | None, str | None, list[str]]:
    """(verdict, passage id, exact evidence span, reasons) once the model's quote is checked.

    The named passage is searched first, then the others (a model may cite the wrong id for a right quote).
    """
    if verdict not in ("supported", "contradicted"):
        return verdict, None, None, []
    ordered = sorted(passages, key=lambda p: str(p.get("id")) != passage_id)
    for p in ordered:
        span = locate(evidence or "", p.get("text") or "")
        if span:
            return verdict, str(p.get("id")), span, []
    reason = (f"the verifier called it {verdict}, but its quote is in no passage: {evidence[:120]!r}"
              if evidence else f"the verifier called it {verdict} without quoting a passage")
    return "unsupported", None, None, [reason]


# ---- the verifier -----------------------------------------------------------------------------------

def _prompt(turn: TurnInput, sentences: Sequence[str]) -> str:
    shown = "\n\n".join(f"[{p.get('id')}] {(p.get('text') or '')[:PASSAGE_CHARS]}" for p in turn.passages)
    asked = "\n".join(f"USER: {c}" for c in turn.context[-3:])
    numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    return (f"Passages shown to the assistant:\n{shown or '(none)'}\n\n"
            + (f"The conversation so far (latest last):\n{asked}\n\n" if asked else "")
            + f"The assistant's answer, one sentence per number:\n{numbered}")


class LLMVerifier:
    """Grades answers with any provider that does structured output (Gemini, OpenAI-compatible).

    Args:
        provider: the LLM to ask.
        cache: where results are kept by content hash; default: in memory for this object.
        priority: passed on to the provider's call gate (a run ranks these like judge calls).
    """

    def __init__(self, provider: LLMProvider, cache: VerifyCache | None = None, priority: float = 0.0):
        self.provider = provider
        self.cache = cache if cache is not None else MemoryCache()
        self.priority = priority
        self.calls = 0
        self.cached = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        return f"{VERIFIER_VERSION}:{self.provider.model}"

    def verify_turns(self, turns: Sequence[TurnInput]) -> list[TurnVerdict]:
        return [self.verify(t) for t in turns]

    def verify(self, turn: TurnInput) -> TurnVerdict:
        """The verdicts of one answer (one call, or none when the cache has it).

        Raises:
            LLMError: the provider failed, or replied without usable verdicts.
        """
        sentences = split_sentences(turn.answer)
        if not sentences:
            return TurnVerdict(None, self.method, [], turn.idx)
        key = cache_key(self.provider.model, turn)
        stored = self.cache.get(key)
        if stored is None:
            stored = self._ask(turn, [s.text for s in sentences])
            self.cache.put(key, self.method, stored)
        else:
            with self._lock:
                self.cached += 1
        out = []
        for s, row in zip(sentences, stored):
            verdict, pid, evidence, reasons = check_evidence(row["verdict"], row["passage_id"], row["evidence"],
                                                             turn.passages)
            reasons = list(row.get("reasons") or []) + reasons
            confidence = None if verdict == "neutral" else (1.0 if verdict == "supported" else 0.0)
            out.append(SentenceVerdict(s.text, verdict, pid, evidence, s.start, s.end, confidence, reasons,
                                       "llm" if verdict != "neutral" else ""))
        return TurnVerdict(turn_score(out), self.method, out, turn.idx)

    def _ask(self, turn: TurnInput, sentences: list[str]) -> list[dict[str, Any]]:
        request = LLMRequest(messages=[Message("user", _prompt(turn, sentences))], system=VERIFY_SYSTEM,
                             temperature=0.0, max_tokens=300 + 120 * len(sentences), json_schema=VERIFY_SCHEMA,
                             priority=self.priority)
        result = self.provider.generate(request)
        with self._lock:
            self.calls += 1
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens
        data = result.json()
        rows = data.get("sentences") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise LLMError("The verifier's reply has no list of sentence verdicts.", kind="malformed", retryable=True)
        by_n: dict[int, dict[str, Any]] = {}
        for row in rows:
            try:
                n = int(row["n"])
                verdict = str(row["verdict"]).strip().lower()
            except (KeyError, TypeError, ValueError):
                continue
            if verdict in VERDICTS and 1 <= n <= len(sentences):
                by_n.setdefault(n, {"verdict": verdict, "passage_id": str(row.get("passage_id") or ""),
                                    "evidence": str(row.get("evidence") or "")})
        if not by_n:
            raise LLMError("The verifier's reply has no verdict for any sentence.", kind="malformed", retryable=True)
        # A sentence the model skipped is not silently passed: it is flagged for a reviewer to look at.
        return [by_n.get(n, {"verdict": "unsupported", "passage_id": "", "evidence": "",
                             "reasons": ["the verifier gave no verdict for this sentence"]})
                for n in range(1, len(sentences) + 1)]


def verify_stored(db: Database, provider_name: str, provider_factory: Callable[[Any], LLMProvider],
                  conversation_id: str) -> str:
    """Grade a stored conversation with the LLM verifier and store the verdicts (the review page's button).

    Returns:
        A one-line summary for the reviewer.

    Raises:
        ValidationError: the provider is the offline demo model, which cannot verify.
        LLMError: the provider failed.
    """
    from core.quality.judge import judge_available
    from core.quality.grounding_store import verify_conversation

    available, reason = judge_available(provider_name)
    if not available:
        raise ValidationError(f"The LLM verifier needs a capable model. {reason}")
    provider = provider_factory(None)
    try:
        verifier = LLMVerifier(provider, cache=DatabaseCache(db))
        verdicts = verify_conversation(db, verifier, conversation_id)
    finally:
        provider.close()
    flagged = sum(v.flagged for v in verdicts)
    return (f"Verified {len(verdicts)} answer(s) with {verifier.method}: {flagged} with an unsupported or "
            f"contradicted sentence ({verifier.calls} call(s), {verifier.cached} from the cache).")
