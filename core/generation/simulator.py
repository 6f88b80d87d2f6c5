"""The simulator: prompts for the instruction, respondent and correspondent calls, and one conversation.

No threads and no storage: the engine runs many of these at once, the Workshop's dry run steps one.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from core.generation import prompts as prompt_lib
from core.corpus.collection import Passage
from core.errors import RunStopped
from core.generation.monitor import RunMonitor
from core.providers.base import LLMError, LLMProvider, LLMRequest, LLMResult, Message
from core.generation.anchoring import TitleIndex, anchor_documents, evidence_to_carry, turn_focus, used_passages
from core.generation.reply_checks import (BLOCKED, EMPTY, NOT_JSON, TRUNCATED, Checked, OpeningQuestions, check_question,
                               check_reply)
from core.generation.retrieval import Retriever
from core.generation.standalone_query import standalone_query, usable_query
from core.generation.turn_context import DEFAULT_CONTEXT_TOKENS, carry_budget, format_briefing, format_passages
from core.generation.run_config import QuestionMix, RunConfig, PERSONAS, QUESTION_TYPES, DIFFICULTIES


def questions_schema(n: int) -> dict[str, Any]:
    """Structured output for n questions: exactly n, so the question pool gets what it counted on."""
    return {"type": "object",
            "properties": {"questions": {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}},
            "required": ["questions"]}




def question_plan(n: int, mix: QuestionMix, rng: random.Random) -> list[dict[str, Any]]:
    plan = []
    for _ in range(n):
        plan.append({"persona": rng.choice(mix.personas or PERSONAS),
                     "type": rng.choice(mix.question_types or QUESTION_TYPES),
                     "difficulty": rng.choice(mix.difficulties or DIFFICULTIES),
                     "answerable": rng.random() >= mix.unanswerable_share})
    return plan


def plan_lines(plan: list[dict[str, Any]]) -> str:
    return "\n".join(f"{i}. persona: {p['persona']}; type: {p['type']}; difficulty: {p['difficulty']}; "
                     f"{'answerable' if p['answerable'] else 'unanswerable'}" for i, p in enumerate(plan, 1))


@dataclass
class Question:
    text: str
    meta: dict[str, Any]
    briefing_ids: list[str]
    briefing: str
    first_passages: list[Passage] | None = None  # retrieval for the first turn, done when the question was written
    briefing_passages: list[Passage] = field(default_factory=list)

    @property
    def subject(self) -> list[str]:
        """Titles of the briefing's documents: what a follow-up's standalone query must keep naming."""
        return list(dict.fromkeys(p.title for p in self.briefing_passages if p.title))

    @property
    def briefing_documents(self) -> list[str]:
        return list(dict.fromkeys(p.document_id for p in self.briefing_passages))

    @property
    def briefing_text(self) -> str:
        return "\n\n".join(p.text for p in self.briefing_passages) or self.briefing


@dataclass
class CallRecord:
    purpose: str
    system_prompt: str
    messages: list[dict[str, str]]
    result: LLMResult
    text: str = ""  # the accepted reply (checked, trimmed); a question batch's raw JSON
    query: str = ""  # a follow-up's standalone search query, when the simulated user wrote one
    trimmed: str = ""  # what the checks cut from an accepted reply, if anything


@dataclass
class ConversationState:
    """A conversation being simulated: the engine runs it to the end, the dry run one step at a time."""

    question: Question
    history: list[Message]
    turns: list[dict[str, Any]]  # as stored: role, content, retrieval, query, call
    calls: list[CallRecord] = field(default_factory=list)
    earlier: list[list[Passage]] = field(default_factory=list)  # each assistant turn's new passages
    used: list[list[Passage]] = field(default_factory=list)  # each assistant turn's passages its answer used
    proposed_query: str = ""  # the simulated user's own search query for its latest message
    focus: str = ""  # how the latest turn was searched: anchor | named | elsewhere | open | opening

    @property
    def user_messages(self) -> list[str]:
        return [m.content for m in self.history if m.role == "user"]

    @property
    def answers(self) -> int:
        return sum(1 for m in self.history if m.role == "assistant")


@dataclass
class TurnPassages:
    query: str | None  # None: briefing mode, nothing was searched
    new: list[Passage]
    carried: list[Passage]
    focus: str = ""  # anchor | named | elsewhere | open | opening (how the documents to search were chosen)


@dataclass
class PreparedCall:
    """One call built but not sent: what the live run sends at once and the batch run sends in a batch job."""

    purpose: str  # instruction | respondent | correspondent
    system: str
    messages: list[Message]
    json_schema: dict[str, Any] | None
    check: Callable[[LLMResult], Checked]  # accepts, trims or rejects the reply


def questions_from(kept: list[str], plan: list[dict[str, Any]], record: CallRecord,
                   briefing_passages: list[Passage]) -> list[Question]:
    """The questions an instruction call wrote, each with its plan entry and briefing."""
    ids = [p.id for p in briefing_passages]
    briefing = format_briefing(briefing_passages)
    return [Question(text=t, meta={**plan[i % len(plan)], "instruction_tokens": record.result.total_tokens},
                     briefing_ids=ids, briefing=briefing, briefing_passages=list(briefing_passages))
            for i, t in enumerate(kept)]


FOLLOW_UP_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "search_query": {"type": "string"}},
    "required": ["message", "search_query"],
}
MAX_TOKENS_CAP = 8192  # a reply cut off at the token limit is retried with twice the budget, up to this
PROSE_BEFORE_PLAIN = 3  # prose replies to a structured follow-up (and no JSON one) before prose is accepted


class Simulator:
    """Builds prompts and runs one conversation; no threads, no storage (the dry run uses it step by step).

    Every reply is checked before it is used (``core.generation.reply_checks``): a rejected one is asked again
    with a new seed, a cut-off one with twice the token budget, and each rejection is counted by reason
    in ``rejections`` (and the run's monitor). Follow-up turns search with a standalone query that
    carries the conversation's subject, and the respondent also sees the passages of earlier turns.
    """

    def __init__(self, provider: LLMProvider, retriever: Retriever | None, config: RunConfig,
                 prompt_texts: dict[str, str], monitor: RunMonitor | None = None, context_tokens: int = 0):
        self.provider = provider
        self.retriever = retriever
        self.config = config
        self.prompt_texts = prompt_texts
        self.monitor = monitor
        self.context_tokens = context_tokens or DEFAULT_CONTEXT_TOKENS
        self.rejections: Counter[str] = Counter()
        self._lock = threading.Lock()
        # The offline model writes JSON poorly and slowly: its follow-ups stay plain text, and their search
        # query is built without it. Every other provider returns the message and a query in one reply.
        self.structured_follow_ups = config.follow_up_queries == "model" or (
            config.follow_up_queries == "auto" and getattr(provider, "name", "") != "local")
        # The run's opening questions: one asked twice (the same or nearly) is rejected. The engine seeds it
        # with the questions of conversations a resumed run already saved.
        self.opening_questions = OpeningQuestions()
        self._prose_replies = 0  # structured follow-ups that came back as plain prose
        self._json_follow_ups = 0  # ... and as the JSON asked for
        self._titles: tuple[dict[str, str], TitleIndex] | None = None

    # ---- one call, checked ------------------------------------------------------------------------
    def call(self, purpose: str, system: str, messages: list[Message], json_schema: dict | None = None,
             seed: int | None = None, calls_left: int = 0,
             check: Callable[[LLMResult], Checked] | None = None) -> CallRecord:
        """One LLM call whose reply passes ``check``; ``calls_left`` (this one included) ranks it at the run's
        gate: more goes first. A rejected reply is asked again (new seed; a cut-off one with twice the
        tokens) up to ``config.reply_retries`` times, then the call fails with the last reason."""
        check = check or (lambda r: check_reply(r.text, r.finish_reason, prompt=system))
        max_tokens = self.config.max_tokens
        reason = ""
        for attempt in range(1 + self.config.reply_retries):
            request = LLMRequest(messages=messages, system=system, temperature=self.config.temperature,
                                 max_tokens=max_tokens, json_schema=json_schema, priority=calls_left,
                                 seed=None if seed is None else (seed + 7919 * attempt) % 2**31)
            blocked = ""
            try:
                result = self.provider.generate(request)
            except LLMError as e:
                if self.monitor:
                    self.monitor.record_call_error(e.kind)
                if e.kind not in asked_again(purpose):
                    raise
                # No usable text (cut off, empty, blocked by a safety filter, malformed): a rejection like any
                # other, asked again with a new seed before the conversation fails.
                blocked = BLOCKED if e.kind in ("safety", "recitation") else NOT_JSON if e.kind == "malformed" else ""
                result = LLMResult(text="", model=getattr(self.provider, "model", ""),
                                   finish_reason="MAX_TOKENS" if e.kind == "max_tokens" else "STOP")
            else:
                if self.monitor:
                    self.monitor.record_call(result.latency_ms / 1000, result.prompt_tokens,
                                             result.completion_tokens, result.thinking_tokens)
            checked = Checked("", blocked) if blocked else check(result)
            if checked.ok:
                return CallRecord(purpose, system, [asdict(m) for m in messages], result, text=checked.text,
                                  query=getattr(checked, "query", ""), trimmed=checked.trimmed)
            reason = checked.reason
            self._reject(purpose, reason)
            if reason == TRUNCATED:
                max_tokens = min(max_tokens * 2, MAX_TOKENS_CAP)
        raise LLMError(f"The {purpose} reply was rejected {1 + self.config.reply_retries} times; last: {reason}.",
                       kind="rejected", retryable=False)

    def _prose_follow_up(self) -> bool:
        """Called for a structured follow-up that came back as plain prose: True once the provider has shown
        it ignores the schema (``PROSE_BEFORE_PLAIN`` prose replies and no JSON one yet), from when on prose
        is taken as the message. Until then prose is asked again like any other reply that is not JSON."""
        with self._lock:
            self._prose_replies += 1
            return self._prose_replies >= PROSE_BEFORE_PLAIN and not self._json_follow_ups

    def _json_follow_up(self) -> None:
        with self._lock:
            self._json_follow_ups += 1

    def _reject(self, purpose: str, reason: str) -> None:
        key = f"{purpose}: {reason}"
        with self._lock:
            self.rejections[key] += 1
        if self.monitor:
            self.monitor.record_rejection(key)

    # ---- questions ----------------------------------------------------------------------------------
    def questions_call(self, briefing_passages: list[Passage], n: int, rng: random.Random
                       ) -> tuple[PreparedCall, list[dict[str, Any]]]:
        """The instruction call for ``n`` questions on a briefing (not sent), and the plan it follows.

        Its check keeps the questions that pass :func:`check_question` (``Checked.questions``).
        """
        plan = question_plan(n, self.config.question_mix, rng)
        # The question writer's material is the passages alone: no retrieval status, no words about turns.
        briefing = format_briefing(briefing_passages)
        briefing_text = "\n\n".join(p.text for p in briefing_passages)
        system = prompt_lib.render(self.prompt_texts["instruction"], briefing=briefing, n=n,
                                   question_plan=plan_lines(plan))
        prompt_only = prompt_lib.render(self.prompt_texts["instruction"], briefing="", n=n,
                                        question_plan=plan_lines(plan))
        user = Message("user", f"Write the {n} questions now, following the plan, as JSON: "
                               '{"questions": ["...", "..."]}.')

        def check(result: LLMResult) -> Checked:
            if (result.finish_reason or "").upper() == "MAX_TOKENS":
                return Checked("", TRUNCATED)
            try:
                data = json.loads(result.text)
            except (json.JSONDecodeError, TypeError):
                return Checked("", NOT_JSON)  # asked again, never taken as a question
            items = data.get("questions") if isinstance(data, dict) else data
            texts = [q.strip() if isinstance(q, str) else str((q or {}).get("question", "")).strip()
                     for q in (items if isinstance(items, list) else [])]
            kept: list[str] = []
            last = EMPTY
            for t in texts:
                checked = check_question(t, briefing_text, prompt_only, seen=self.opening_questions)
                if checked.ok:
                    kept.append(checked.text)
                else:
                    last = checked.reason
                    self._reject("question", checked.reason)
            return _Questions(result.text, questions=kept) if kept else Checked("", last)

        return PreparedCall("instruction", system, [user], questions_schema(n), check), plan

    def write_questions(self, briefing_passages: list[Passage], n: int, rng: random.Random
                        ) -> tuple[list[Question], CallRecord]:
        prepared, plan = self.questions_call(briefing_passages, n, rng)
        kept: list[str] = []

        def check(result: LLMResult) -> Checked:
            checked = prepared.check(result)
            kept[:] = getattr(checked, "questions", [])
            return checked

        # Questions unblock whole conversations: they rank above any conversation's next call.
        record = self.call(prepared.purpose, prepared.system, prepared.messages, json_schema=prepared.json_schema,
                           seed=rng.randrange(2**31), calls_left=2 * self.config.max_turns, check=check)
        return questions_from(kept[:n], plan, record, briefing_passages), record

    # ---- a conversation, step by step --------------------------------------------------------------
    def start(self, question: Question) -> ConversationState:
        return ConversationState(question, [Message("user", question.text)],
                                 [{"role": "user", "content": question.text, "retrieval": None, "query": None,
                                   "call": None}])

    def resume(self, question: Question, turns: list[dict[str, Any]]) -> ConversationState:
        """A state holding stored turns (role, content, retrieval), to continue from (regenerate from a turn)."""
        state = ConversationState(question, [Message(t["role"], t["content"]) for t in turns],
                                  [{"role": t["role"], "content": t["content"], "retrieval": t.get("retrieval"),
                                    "query": t.get("query"), "call": None} for t in turns])
        for t in turns:
            if t["role"] == "assistant":
                shown = [Passage.from_dict(r) for r in t.get("retrieval") or []]
                state.earlier.append([p for p in shown if not p.carried])
                stored = [r.get("used") for r in t.get("retrieval") or []]
                if stored and all(u is not None for u in stored):
                    used = [p for p, u in zip(shown, stored) if u]
                else:  # saved before answers' evidence was recorded: work it out from the answer
                    used = used_passages(t["content"], shown)
                state.used.append(used)
        return state

    def title_index(self) -> tuple[dict[str, str], TitleIndex]:
        """The corpus's titles and which documents a text names (built once per simulator)."""
        if self._titles is None:
            corpus = getattr(self.retriever, "corpus", None)
            titles = corpus.titles() if corpus is not None else {}
            self._titles = (titles, TitleIndex.build(titles, corpus.text_frequency if corpus is not None else None))
        return self._titles

    def next_query(self, state: ConversationState) -> str | None:
        """The search query for the next assistant turn (None in briefing mode: nothing is searched)."""
        return self._plan_search(state)[0]

    def _plan_search(self, state: ConversationState) -> tuple[str | None, list[str] | None, bool, str]:
        """The next turn's query, the documents to search within (None: all), whether the turn is anchored on
        them, and why (opening | anchor | named | elsewhere | open | plain)."""
        question = state.question
        if self.config.retrieval == "briefing" or self.retriever is None:
            return None, None, False, ""
        if not state.answers:
            return state.history[-1].content, question.briefing_documents or None, True, "opening"
        if not self.config.conversation_aware:
            return state.history[-1].content, None, False, "plain"
        titles, index = self.title_index()
        anchor = anchor_documents(question.briefing_documents, state.used)
        focus = turn_focus(state.history[-1].content, state.proposed_query, anchor, titles, index)
        # Pointing away without a name ("a later case cited it"): the opening question's words still say what
        # the conversation is about (the other document is usually found through the one it cites).
        subject = focus.subject or ([] if focus.reason in ("named", "elsewhere") else question.subject)
        query = standalone_query(state.user_messages, subject, state.proposed_query,
                                 opening_subject=focus.reason in ("anchor", "elsewhere"))
        return query, focus.documents, focus.anchored, focus.reason

    def retrieve(self, state: ConversationState, query: str | None) -> list[Passage]:
        """This turn's new passages."""
        return self._retrieve(state, query, *self._plan_search(state)[1:3])

    def _retrieve(self, state: ConversationState, query: str | None, docs: list[str] | None,
                  anchored: bool) -> list[Passage]:
        question = state.question
        if query is None:
            return self.retriever.passages_by_id(question.briefing_ids) if self.retriever else []
        if state.answers == 0 and question.first_passages is not None:
            return question.first_passages
        return self.retriever.search(query, self.config.top_k, conversation_docs=docs,
                                     mode=self.config.retrieval_mode, anchored=anchored)

    def passages_for(self, state: ConversationState) -> TurnPassages:
        """The next assistant turn's search query, new passages and carried ones (what earlier answers used)."""
        query, docs, anchored, reason = self._plan_search(state)
        new = self._retrieve(state, query, docs, anchored)
        carried = evidence_to_carry(state.used, new, carry_budget(self.context_tokens, self.config.max_tokens,
                                                                  self.config.carry_tokens))
        return TurnPassages(query, new, carried, reason)

    def answer(self, state: ConversationState, seed: int | None = None, calls_left: int = 0,
               passages: TurnPassages | None = None) -> dict[str, Any]:
        """Retrieve, carry, respond: the next assistant turn, appended to ``state`` and returned."""
        passages = passages or self.passages_for(state)
        record = self.respond(state.history, passages.new, passages.carried, seed=seed, calls_left=calls_left)
        return self.record_answer(state, passages, record)

    def record_answer(self, state: ConversationState, passages: TurnPassages, record: CallRecord) -> dict[str, Any]:
        """Append an answer (sent here or in a batch job) to ``state``, with which of its passages it used."""
        shown = [*passages.new, *passages.carried]
        used = used_passages(record.text, shown)
        used_ids = {p.id for p in used}
        retrieval = [{**p.as_dict(), "used": p.id in used_ids} for p in shown]
        turn = {"role": "assistant", "content": record.text, "query": passages.query, "call": record,
                "retrieval": retrieval, "focus": passages.focus}
        state.history.append(Message("assistant", record.text))
        state.turns.append(turn)
        state.calls.append(record)
        state.earlier.append(list(passages.new))
        state.used.append(used)
        state.focus = passages.focus
        return turn

    def ask(self, state: ConversationState, seed: int | None = None, calls_left: int = 0) -> dict[str, Any]:
        """The simulated user's next message, appended to ``state`` and returned."""
        record = self.follow_up(state.history, state.question, seed=seed, calls_left=calls_left)
        turn = {"role": "user", "content": record.text, "retrieval": None, "query": None, "call": record}
        state.history.append(Message("user", record.text))
        state.turns.append(turn)
        state.calls.append(record)
        state.proposed_query = record.query
        return turn

    def respondent_call(self, history: list[Message], passages: list[Passage],
                        carried: list[Passage] | None = None) -> PreparedCall:
        """The respondent's call for the next answer (not sent): its passages in the system prompt."""
        system = prompt_lib.render(self.prompt_texts["respondent"], context=format_passages(passages, carried or []))
        return PreparedCall("respondent", system, list(history), None,
                            lambda r: check_reply(r.text, r.finish_reason, prompt=system))

    def respond(self, history: list[Message], passages: list[Passage], carried: list[Passage] | None = None,
                seed: int | None = None, calls_left: int = 0) -> CallRecord:
        return self.send(self.respondent_call(history, passages, carried), seed=seed, calls_left=calls_left)

    def follow_up_call(self, history: list[Message], question: Question) -> PreparedCall:
        """The simulated user's call for its next message (not sent)."""
        system = prompt_lib.render(self.prompt_texts["correspondent"], briefing=question.briefing,
                                   first_question=question.text)
        transcript = "\n\n".join(f"{'You' if m.role == 'user' else 'Assistant'}: {m.content}" for m in history)
        if not self.structured_follow_ups:
            user = Message("user", f"The conversation so far:\n\n{transcript}\n\nWrite your next message to the "
                                   "assistant. Reply with the message only.")
            return PreparedCall("correspondent", system, [user], None,
                                lambda r: check_reply(r.text, r.finish_reason, user_turn=True, prompt=system))
        user = Message("user", f"The conversation so far:\n\n{transcript}\n\nWrite your next message to the "
                               "assistant, as JSON: {\"message\": your message, written as you would (it may lean "
                               "on the conversation), \"search_query\": the same request as a standalone search "
                               "query that names what it is about (case, parties, product, topic) without the "
                               "conversation}.")
        return PreparedCall("correspondent", system, [user], FOLLOW_UP_SCHEMA,
                            lambda r: _check_follow_up(r, system, self._prose_follow_up, self._json_follow_up))

    def follow_up(self, history: list[Message], question: Question, seed: int | None = None,
                  calls_left: int = 0) -> CallRecord:
        return self.send(self.follow_up_call(history, question), seed=seed, calls_left=calls_left)

    def send(self, prepared: PreparedCall, seed: int | None = None, calls_left: int = 0) -> CallRecord:
        return self.call(prepared.purpose, prepared.system, prepared.messages, json_schema=prepared.json_schema,
                         seed=seed, calls_left=calls_left, check=prepared.check)

    def converse(self, question: Question, turns: int, rng: random.Random,
                 should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Simulate one conversation of ``turns`` assistant replies; returns turns and calls."""
        state = self.start(question)
        for t in range(turns):
            if should_stop():
                raise RunStopped("cancelled")
            self.answer(state, seed=rng.randrange(2**31), calls_left=2 * (turns - t) - 1)
            if t + 1 < turns:
                if should_stop():
                    raise RunStopped("cancelled")
                self.ask(state, seed=rng.randrange(2**31), calls_left=2 * (turns - t - 1))
        return {"turns": state.turns, "calls": state.calls}


@dataclass
class _FollowUp(Checked):
    query: str = ""


@dataclass
class _Questions(Checked):
    questions: list[str] = field(default_factory=list)


def asked_again(purpose: str) -> tuple[str, ...]:
    """Provider errors that are rejections of one reply, asked again with a new seed: no text, a cut-off reply,
    and for the simulated user and the question writer a reply blocked by a safety filter or not the JSON
    asked for (a new seed usually gets a usable one; the respondent's blocked answer fails its conversation)."""
    if purpose in ("correspondent", "instruction"):
        return ("max_tokens", "empty", "safety", "recitation", "malformed")
    return ("max_tokens", "empty")


def _looks_like_json(text: str) -> bool:
    return text.lstrip().startswith(("{", "[", "```", '"message"'))


def _check_follow_up(result: LLMResult, system: str, prose_ok: Callable[[], bool] = lambda: False,
                     json_ok: Callable[[], None] = lambda: None) -> Checked:
    """A structured follow-up: its message checked as a user turn, its search query kept if usable.

    A reply that is not the JSON asked for (cut off mid-string, an object without a message) is rejected
    and asked again: its text is never saved as the user's message. Plain prose is rejected the same way
    unless ``prose_ok`` says the provider has shown it ignores the schema (then prose is the message and
    the search query is built from the conversation).
    """
    if (result.finish_reason or "").upper() in ("MAX_TOKENS", "LENGTH"):
        return Checked("", TRUNCATED)
    if not (result.text or "").strip():
        return Checked("", EMPTY)
    try:
        data = json.loads(result.text)
    except (json.JSONDecodeError, TypeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        if data is None and not _looks_like_json(result.text) and prose_ok():
            checked = check_reply(result.text, result.finish_reason, user_turn=True, prompt=system)
            return _FollowUp(checked.text, checked.reason, checked.trimmed, query="")
        return Checked("", NOT_JSON)
    json_ok()
    message = data["message"]
    query = data.get("search_query") if isinstance(data.get("search_query"), str) else ""
    checked = check_reply(message, result.finish_reason, user_turn=True, prompt=system)
    return _FollowUp(checked.text, checked.reason, checked.trimmed, query=usable_query(query))


def _messages(result: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": t["role"], "content": t["content"]} for t in result["turns"]]
