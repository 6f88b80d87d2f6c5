"""The generation engine: grounded multi-turn conversations, the AfterImage pattern done durably and fast.

Instruction side: a briefing sampled from the least-used passages → the LLM writes questions.
Response side, every turn: retrieve top-k for the latest user message → inject into the respondent's
system prompt → answer; the correspondent writes the next user message from its briefing.

Durability: work items are reserved in SQLite before they start and each finished conversation is
committed at once, so a cancel, a crash or a SIGKILL keeps everything done and ``resume`` finishes
exactly ``num_dialogs``. Throughput: one pooled client per provider shared by all workers, and an
adaptive gate (AIMD) that shrinks calls in flight on 429s and grows them back on success.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import prompts as prompt_lib
from core.config import Settings
from core.corpus import Corpus, Passage
from core.db import Database, dumps, loads, new_id, now
from core.errors import GroundworkError, NotFoundError, ValidationError
from core.judge import Attempt, Judge, JudgeRecord, judge_available, with_feedback
from core.monitor import Alert, AlertThresholds, RunMonitor
from core.providers.base import (CallGate, LLMError, LLMProvider, LLMRequest, LLMResult, Message,
                                 QuotaExhaustedError)
from core.vectorstore import SNAPSHOT_MAX_POINTS, PointFilter, store_location

PERSONAS = ["practising lawyer", "paralegal", "law student", "small-business owner", "tenant or consumer"]
QUESTION_TYPES = ["fact lookup", "comparison", "application to new facts", "procedural"]
DIFFICULTIES = ["easy", "medium", "hard"]

def questions_schema(n: int) -> dict[str, Any]:
    """Structured output for n questions: exactly n, so the question pool gets what it counted on."""
    return {"type": "object",
            "properties": {"questions": {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}},
            "required": ["questions"]}


@dataclass
class QuestionMix:
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    difficulties: list[str] = field(default_factory=lambda: list(DIFFICULTIES))
    unanswerable_share: float = 0.1  # questions the corpus cannot answer: teaches "say what is missing"


@dataclass
class RunConfig:
    """Everything that shapes a run; stored whole as the run's recipe snapshot."""

    num_dialogs: int = 10
    max_turns: int = 3
    max_concurrency: int = 4  # LLM calls in flight at most (the run's workers share these slots)
    temperature: float = 0.7
    max_tokens: int = 1024
    top_k: int = 3
    instructions_per_sample: int = 3
    briefing_passages: int = 2
    retrieval: str = "rag"  # rag: retrieve per turn | briefing: inject the sampled briefing instead
    retrieval_with_history: bool = False
    question_mix: QuestionMix = field(default_factory=QuestionMix)
    seed: int = 0
    max_conversation_attempts: int = 2
    replacement_budget: int = -1  # failed conversations replaced at most this often; -1: num_dialogs // 2 + 2
    stall_timeout_s: float = 120.0  # sustained 429s with no success this long ends the run
    token_budget: int = 0  # 0: none; otherwise stop cleanly once this many tokens were used
    output: str = ""  # JSONL path, written as conversations complete
    max_docs: int = 0  # 0: briefings may come from any document; N: from N documents chosen by the seed
    log_dir: str = ""  # monitor log folder; empty: the data dir's logs/
    auto_improve: bool = False  # judge each conversation; regenerate with the judge's feedback when below threshold
    judge_threshold: float = 3.5  # mean rubric score (1-5) a conversation must reach
    max_improve_attempts: int = 2  # attempts per conversation in all, the first included
    verify_grounding: bool = False  # LLM verifier: one call per answer, verdicts stored with the conversation
    prompt_versions: dict[str, int] = field(default_factory=dict)
    kind: str = "generate"

    def validate(self) -> None:
        problems = []
        if not 1 <= self.num_dialogs <= 1_000_000:
            problems.append(f"num_dialogs must be at least 1 (got {self.num_dialogs})")
        if not 1 <= self.max_turns <= 50:
            problems.append(f"max_turns must be between 1 and 50 (got {self.max_turns})")
        if not 1 <= self.max_concurrency <= 256:
            problems.append(f"max_concurrency must be between 1 and 256 (got {self.max_concurrency})")
        if not 0 <= self.temperature <= 2:
            problems.append(f"temperature must be between 0 and 2 (got {self.temperature})")
        if not 1 <= self.top_k <= 50:
            problems.append(f"top_k must be between 1 and 50 (got {self.top_k})")
        if not 1 <= self.instructions_per_sample <= 20:
            problems.append(f"instructions per sample must be between 1 and 20 (got {self.instructions_per_sample})")
        if self.retrieval not in ("rag", "briefing"):
            problems.append(f"retrieval must be 'rag' or 'briefing' (got {self.retrieval!r})")
        if not 1 <= self.max_improve_attempts <= 5:
            problems.append(f"auto-improve attempts must be between 1 and 5 (got {self.max_improve_attempts})")
        if not 1 <= self.judge_threshold <= 5:
            problems.append(f"the judge threshold must be between 1 and 5 (got {self.judge_threshold})")
        if not 0 <= self.question_mix.unanswerable_share <= 1:
            problems.append("the unanswerable share must be between 0 and 1")
        if problems:
            raise ValidationError("Run settings: " + "; ".join(problems) + ".")

    @property
    def replacements(self) -> int:
        return self.replacement_budget if self.replacement_budget >= 0 else self.num_dialogs // 2 + 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        data["question_mix"] = QuestionMix(**data.get("question_mix", {}))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class RunStopped(GroundworkError):
    """The run must stop now (quota gone, budget spent, cancelled); ``reason`` is stored on the run."""


class AdaptiveGate(CallGate):
    """Bounds LLM calls in flight; halves the bound on 429s, grows it by ~1 per round trip on success.

    Shared by every worker of a run, so the whole run backs off together instead of each worker
    hammering the quota on its own. After a 429 that says when to come back (RetryInfo), every
    worker waits until then. ``stalled`` turns true when 429s continue and nothing has succeeded for
    ``stall_timeout_s``: the quota is really gone and the run should stop rather than spin.
    """

    def __init__(self, max_concurrency: int, rpm_limit: int = 0, stall_timeout_s: float = 120.0,
                 monitor: RunMonitor | None = None):
        super().__init__(rpm_limit)
        self.max_concurrency = max_concurrency
        self.limit = float(max_concurrency)
        self.in_flight = 0
        self.stall_timeout_s = stall_timeout_s
        self.monitor = monitor
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int]] = []  # calls waiting for a slot: (-priority, arrival)
        self._arrivals = itertools.count()
        self._paused_until = 0.0
        self._last_decrease = 0.0
        self._latency_ewma = 1.0
        self._last_success = time.monotonic()
        self._last_429 = 0.0
        self._streak: deque[float] = deque()  # success times since the last pause
        self.learned_quota: tuple[int, float] | None = None  # (requests, window seconds)
        self.cancelled = threading.Event()

    @contextmanager
    def attempt(self, priority: float = 0.0) -> Iterator[None]:
        """Hold one call slot for the block. Waiting calls get free slots highest ``priority`` first, then
        in arrival order: the engine ranks a conversation's calls by the calls it still has to make, so
        long conversations are not starved into the run's tail by short ones."""
        self._wait_for_rpm()
        with self._cond:
            ticket = (-priority, next(self._arrivals))
            heapq.heappush(self._queue, ticket)
            try:
                while True:
                    if self.cancelled.is_set():
                        raise RunStopped("cancelled")
                    wait = self._paused_until - time.monotonic()
                    if wait <= 0 and self.in_flight < max(1, int(self.limit)) and self._queue[0] == ticket:
                        break
                    self._cond.wait(timeout=min(max(wait, 0.05), 0.5))
            finally:
                if self._queue[0] == ticket:
                    heapq.heappop(self._queue)
                else:  # cancelled while queued behind others
                    self._queue.remove(ticket)
                    heapq.heapify(self._queue)
            self.in_flight += 1
            if self._queue and self.in_flight < max(1, int(self.limit)):
                self._cond.notify_all()  # the next in line fits too
            self._publish()
        started = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._latency_ewma = 0.8 * self._latency_ewma + 0.2 * (time.monotonic() - started)
                self._publish()
                self._cond.notify_all()

    def record_rate_limited(self, retry_after: float | None) -> None:
        super().record_rate_limited(retry_after)
        if self.monitor:
            self.monitor.record_rate_limited()
        with self._cond:
            t = time.monotonic()
            self._last_429 = t
            # One burst of 429s is one congestion signal: decrease at most once per round trip.
            if t - self._last_decrease >= max(self._latency_ewma, 0.2):
                self.limit = max(1.0, self.limit / 2)
                self._last_decrease = t
            if retry_after:
                resume_at = t + min(retry_after, 60.0)
                self._learn_quota(resume_at)
                self._paused_until = max(self._paused_until, resume_at)
            self._publish()

    def _learn_quota(self, resume_at: float) -> None:
        """A rate quota (N requests per window) is what a 429 with RetryInfo usually means.

        Halving calls in flight cannot prevent it: whatever is in flight when the window fills gets a
        429. So the first such 429 after a run of successes teaches the gate the quota (the successes
        since the last pause, over the time until the server said to come back) and from then on
        attempts are paced just under it, through the base gate's requests-per-window limiter.
        """
        if self.learned_quota is not None or len(self._streak) < 5 or resume_at <= self._streak[0]:
            return
        requests, window = len(self._streak), resume_at - self._streak[0]
        self.learned_quota = (requests, window)
        with self._lock:  # the base gate's limiter state
            self.window = window
            self.rpm_limit = max(1, int(requests * 0.95))
            self._sent = deque(list(self._streak)[-self.rpm_limit:])

    def record_success(self) -> None:
        super().record_success()
        with self._cond:
            self._last_success = time.monotonic()
            if self._paused_until and self._last_success >= self._paused_until:
                self._streak.clear()  # a new window of successes starts after a pause
                self._paused_until = 0.0
            self._streak.append(self._last_success)
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / max(self.limit, 1.0))
            self._publish()
            self._cond.notify_all()

    @property
    def stalled(self) -> bool:
        return (self._last_429 > self._last_success
                and time.monotonic() - self._last_success > self.stall_timeout_s)

    def _publish(self) -> None:
        if self.monitor:
            self.monitor.concurrency_limit = self.limit
            self.monitor.in_flight = self.in_flight


class Retriever:
    """Top-k passages for a query, from a snapshot of an embedded store or live from the store.

    A snapshot reads the vectors once at run start and searches them in memory (exact cosine, as
    local mode itself does), then the store is released: a long batch does not hold the folder lock,
    so the app stays usable on the same data dir while a CLI batch runs. Runs on a large Edge collection
    search it live instead and hold it (``SNAPSHOT_MAX_POINTS``).
    With ``background=True`` the snapshot loads (or, searching live, the collection is verified) on
    its own thread while the run's first instruction calls are in flight; the first search waits for
    it, and a failure (empty collection, another model's vectors) stops the run with its message
    instead of failing conversation after conversation.
    """

    def __init__(self, corpus: Corpus, snapshot: bool, background: bool = False):
        self.corpus = corpus
        self._ids: list[str] = []
        self._matrix: np.ndarray | None = None
        self._payloads: list[dict[str, Any]] = []
        self.snapshot = snapshot
        self._ready = threading.Event()
        self._error: GroundworkError | None = None
        self._loader: threading.Thread | None = None
        if background:
            self._loader = threading.Thread(target=self._load_in_background, name="retriever-snapshot", daemon=True)
            self._loader.start()
        else:
            if snapshot:
                self._load_snapshot()
            self._ready.set()

    def _load_in_background(self) -> None:
        try:
            if self.snapshot:
                self._load_snapshot()
            else:
                self.corpus.verify()
        except GroundworkError as e:
            self._error = e
        except Exception as e:  # the store's own errors: keep the message, never a bare traceback
            self._error = GroundworkError(f"Could not load the collection for retrieval: {type(e).__name__}: {e}")
        finally:
            self._ready.set()

    def wait_ready(self) -> None:
        """Block until the snapshot is loaded; a failed load stops the run (``check`` re-raises it)."""
        self._ready.wait()
        if self._error is not None:
            raise RunStopped(str(self._error))

    def close(self) -> None:
        """Wait for the background load or verification to end."""
        if self._loader is not None:
            self._loader.join()

    def check(self) -> None:
        """Wait for the background load or verification; raise its error, if any."""
        self.close()
        if self._error is not None:
            raise self._error

    def _load_snapshot(self) -> None:
        with self.corpus.stores.use() as store:
            self.corpus.verify(store)
            offset = None
            vectors = []
            while True:
                rows, offset = store.scroll(self.corpus.collection, limit=1024, offset=offset, with_vectors=True)
                for r in rows:
                    self._ids.append(r["id"])
                    self._payloads.append(r["payload"])
                    vectors.append(r["vector"])
                if offset is None:
                    break
        if not vectors:
            raise GroundworkError(f"Collection {self.corpus.collection!r} is empty: index a corpus first.")
        m = np.asarray(vectors, dtype=np.float32)
        self._matrix = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: str, k: int, exclude_ids: list[str] | None = None) -> list[Passage]:
        return self.search_vector(self.corpus.embedder.encode_query(query), k, exclude_ids)

    def search_many(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Top-k for several queries, encoded in one pass."""
        return [self.search_vector(v, k) for v in self.corpus.embedder.encode_queries(queries)]

    def search_vector(self, vector: np.ndarray, k: int, exclude_ids: list[str] | None = None) -> list[Passage]:
        self.wait_ready()
        if not self.snapshot:
            return self.corpus.search_vector(vector, k, PointFilter(exclude_ids=exclude_ids or ()))
        scores = self._matrix @ vector
        if exclude_ids:
            excluded = set(exclude_ids)
            for i, pid in enumerate(self._ids):
                if pid in excluded:
                    scores[i] = -np.inf
        k = min(k, len(self._ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [self.corpus._passage(_HitView(self._ids[i], float(scores[i]), self._payloads[i]))
                for i in top if np.isfinite(scores[i])]

    def passages_by_id(self, ids: list[str]) -> list[Passage]:
        rows = []
        for cid in ids:
            c = self.corpus.chunk(cid)
            if c:
                rows.append(Passage(id=c["id"], score=1.0, text=c["text"], document_id=c["document_id"],
                                    title=c["title"], source_path=c["source_path"], position=c["position"]))
        return rows


@dataclass
class _HitView:
    id: str
    score: float
    payload: dict[str, Any]


class BriefingSampler:
    """Samples briefings from the least-used passages, so a run covers the corpus before repeating it."""

    def __init__(self, db: Database, collection: str, passages: int, rng: random.Random, max_docs: int = 0):
        self.db = db
        self.passages = passages
        self.rng = rng
        self._lock = threading.Lock()
        rows = db.rows("SELECT c.id, c.document_id, c.position, c.briefing_uses FROM chunks c JOIN documents d "
                       "ON d.id=c.document_id WHERE c.collection=? AND d.status='complete' "
                       "ORDER BY c.document_id, c.position", [collection])
        if max_docs > 0:
            doc_ids = sorted({r["document_id"] for r in rows})
            keep = set(random.Random(max_docs).sample(doc_ids, min(max_docs, len(doc_ids))))
            rows = [r for r in rows if r["document_id"] in keep]
        if not rows:
            raise GroundworkError(f"No indexed passages in collection {collection!r}: index a corpus first "
                                  "(Corpus page, or `groundwork index sample_data/corpus`).")
        self._uses = {r["id"]: r["briefing_uses"] for r in rows}
        self._next_in_doc: dict[str, str] = {}
        for a, b in zip(rows, rows[1:]):
            if a["document_id"] == b["document_id"]:
                self._next_in_doc[a["id"]] = b["id"]

    def sample(self) -> list[str]:
        with self._lock:
            least = min(self._uses.values())
            candidates = sorted(cid for cid, u in self._uses.items() if u == least)
            first = self.rng.choice(candidates)
            chosen = [first]
            while len(chosen) < self.passages and chosen[-1] in self._next_in_doc:
                chosen.append(self._next_in_doc[chosen[-1]])
            for cid in chosen:
                self._uses[cid] += 1
        with self.db.write() as w:
            w.conn.executemany("UPDATE chunks SET briefing_uses = briefing_uses + 1 WHERE id=?", [[c] for c in chosen])
        return chosen


def format_passages(passages: list[Passage]) -> str:
    """Passages as the respondent sees them: each with its id and source, so answers can cite them."""
    if not passages:
        return "(no passages were retrieved)"
    return "\n\n".join(f"[{i}] id={p.id} | {p.title} | {p.source_path} (chunk {p.position})\n{p.text.strip()}"
                       for i, p in enumerate(passages, 1))


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


@dataclass
class CallRecord:
    purpose: str
    system_prompt: str
    messages: list[dict[str, str]]
    result: LLMResult


class Simulator:
    """Builds prompts and runs one conversation; no threads, no storage (the dry run uses it step by step)."""

    def __init__(self, provider: LLMProvider, retriever: Retriever | None, config: RunConfig,
                 prompt_texts: dict[str, str], monitor: RunMonitor | None = None):
        self.provider = provider
        self.retriever = retriever
        self.config = config
        self.prompt_texts = prompt_texts
        self.monitor = monitor

    def call(self, purpose: str, system: str, messages: list[Message], json_schema: dict | None = None,
             seed: int | None = None, calls_left: int = 0) -> CallRecord:
        """One LLM call; ``calls_left`` (this one included) ranks it at the run's gate: more goes first."""
        request = LLMRequest(messages=messages, system=system, temperature=self.config.temperature,
                             max_tokens=self.config.max_tokens, json_schema=json_schema, seed=seed,
                             priority=calls_left)
        try:
            result = self.provider.generate(request)
        except LLMError as e:
            if self.monitor:
                self.monitor.record_call_error(e.kind)
            raise
        if self.monitor:
            self.monitor.record_call(result.latency_ms / 1000, result.prompt_tokens, result.completion_tokens,
                                     result.thinking_tokens)
        if not result.text.strip():
            raise LLMError(f"The {purpose} reply was empty (finish reason {result.finish_reason}).", kind="empty",
                           retryable=True)
        return CallRecord(purpose, system, [asdict(m) for m in messages], result)

    def write_questions(self, briefing_passages: list[Passage], n: int, rng: random.Random
                        ) -> tuple[list[Question], CallRecord]:
        plan = question_plan(n, self.config.question_mix, rng)
        briefing = format_passages(briefing_passages)
        system = prompt_lib.render(self.prompt_texts["instruction"], briefing=briefing, n=n,
                                   question_plan=plan_lines(plan))
        user = Message("user", f"Write the {n} questions now, following the plan, as JSON: "
                               '{"questions": ["...", "..."]}.')
        # Questions unblock whole conversations: they rank above any conversation's next call.
        record = self.call("instruction", system, [user], json_schema=questions_schema(n), seed=rng.randrange(2**31),
                           calls_left=2 * self.config.max_turns)
        data = record.result.json()
        items = data.get("questions") if isinstance(data, dict) else data
        texts = [q.strip() if isinstance(q, str) else str((q or {}).get("question", "")).strip()
                 for q in (items or [])]
        texts = [t for t in texts if t]
        if not texts:
            raise LLMError("The instruction reply held no questions.", kind="malformed", retryable=True)
        ids = [p.id for p in briefing_passages]
        return [Question(text=t, meta={**plan[i % len(plan)], "instruction_tokens": record.result.total_tokens},
                         briefing_ids=ids, briefing=briefing) for i, t in enumerate(texts[:n])], record

    def retrieve(self, history: list[Message], question: Question) -> list[Passage]:
        if self.config.retrieval == "briefing" or self.retriever is None:
            return self.retriever.passages_by_id(question.briefing_ids) if self.retriever else []
        if len(history) == 1 and question.first_passages is not None:
            return question.first_passages
        query = history[-1].content
        if self.config.retrieval_with_history and len(history) > 1:
            query = "\n".join(m.content for m in history[-3:])
        return self.retriever.search(query, self.config.top_k)

    def respond(self, history: list[Message], passages: list[Passage], seed: int | None = None,
                calls_left: int = 0) -> CallRecord:
        system = prompt_lib.render(self.prompt_texts["respondent"], context=format_passages(passages))
        return self.call("respondent", system, history, seed=seed, calls_left=calls_left)

    def follow_up(self, history: list[Message], question: Question, seed: int | None = None,
                  calls_left: int = 0) -> CallRecord:
        system = prompt_lib.render(self.prompt_texts["correspondent"], briefing=question.briefing,
                                   first_question=question.text)
        transcript = "\n\n".join(f"{'You' if m.role == 'user' else 'Assistant'}: {m.content}" for m in history)
        user = Message("user", f"The conversation so far:\n\n{transcript}\n\nWrite your next message to the "
                               "assistant. Reply with the message only.")
        return self.call("correspondent", system, [user], seed=seed, calls_left=calls_left)

    def converse(self, question: Question, turns: int, rng: random.Random,
                 should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Simulate one conversation of ``turns`` assistant replies; returns turns and calls."""
        history = [Message("user", question.text)]
        out_turns: list[dict[str, Any]] = [{"role": "user", "content": question.text, "retrieval": None,
                                            "call": None}]
        calls: list[CallRecord] = []
        for t in range(turns):
            if should_stop():
                raise RunStopped("cancelled")
            passages = self.retrieve(history, question)
            answer = self.respond(history, passages, seed=rng.randrange(2**31), calls_left=2 * (turns - t) - 1)
            calls.append(answer)
            text = _clean_reply(answer.result.text)
            history.append(Message("assistant", text))
            out_turns.append({"role": "assistant", "content": text,
                              "retrieval": [p.as_dict() for p in passages], "call": answer})
            if t + 1 < turns:
                if should_stop():
                    raise RunStopped("cancelled")
                follow = self.follow_up(history, question, seed=rng.randrange(2**31), calls_left=2 * (turns - t - 1))
                calls.append(follow)
                text = _clean_reply(follow.result.text, strip_speaker=True)
                history.append(Message("user", text))
                out_turns.append({"role": "user", "content": text, "retrieval": None, "call": follow})
        return {"turns": out_turns, "calls": calls}


def _messages(result: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": t["role"], "content": t["content"]} for t in result["turns"]]


def _clean_reply(text: str, strip_speaker: bool = False) -> str:
    text = text.strip()
    if strip_speaker:
        for prefix in ("You:", "User:", "Me:"):
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
        if len(text) > 1 and text[0] == text[-1] == '"':
            text = text[1:-1].strip()
    return text


def item_rng(seed: int, max_turns: int) -> tuple[random.Random, int]:
    """A work item's random stream and its turn count (uniform in 1..max_turns, the stream's first draw)."""
    rng = random.Random(seed)
    return rng, rng.randint(1, max_turns)


def turns_for(seed: int, max_turns: int) -> int:
    """A work item's turn count, as its conversation will draw it (stored so runs can go longest first)."""
    return item_rng(seed, max_turns)[1]


def worker_count(max_concurrency: int) -> int:
    """Threads for a run whose LLM calls in flight are bounded by ``max_concurrency`` (the gate enforces it).

    Between its calls a worker retrieves, builds prompts, waits for a question and saves; with exactly
    one worker per allowed call, that time is a call slot left empty. Half again as many workers keep
    the slots full while the gate still caps calls in flight (and so the provider's load) at the limit.
    """
    return max_concurrency + max_concurrency // 2


def _seed_for(run_seed: int, slot: int, attempt: int = 0) -> int:
    digest = hashlib.sha256(f"{run_seed}:{slot}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class QuestionPool:
    """Questions shared by workers: one instruction call feeds several conversations.

    A worker that finds the pool empty writes a new batch only if no batch already in progress
    will cover it, so 32 workers starting together do not make 32 instruction calls. Once the run
    is going, the pool stays a few questions ahead (``low_water``) with background instruction calls
    (at most ``max_prefetch`` at once), so a worker rarely waits for someone else's instruction call.
    Background calls never ask for more questions than the open work items still lack (``unasked``);
    what a stopped run did not use is handed back by ``close`` for the run to keep.
    """

    def __init__(self, make_batch: Callable[[int], list[Question]], per_call: int,
                 unasked: Callable[[], int] = lambda: 0, low_water: int = 0, max_prefetch: int = 0):
        self._make_batch = make_batch
        self.per_call = per_call
        self._unasked = unasked
        self.low_water = low_water
        self.max_prefetch = max_prefetch
        self._queue: deque[Question] = deque()
        self._cond = threading.Condition()
        self._coming = 0
        self._waiting = 0
        self._prefetching = 0
        self._prefetchers: list[threading.Thread] = []
        self._closed = False
        self.prefetched_batches = 0

    def take(self, still_needed: Callable[[], int], should_stop: Callable[[], bool]) -> Question:
        with self._cond:
            while True:
                if self._queue:
                    question = self._queue.popleft()
                    self._prefetch_locked()
                    return question
                if should_stop():
                    raise RunStopped("cancelled")
                if self._coming > self._waiting:
                    self._waiting += 1
                    self._cond.wait(timeout=0.5)
                    self._waiting -= 1
                    continue
                n = max(1, min(self.per_call, still_needed()))
                self._coming += n
                break
        try:
            batch = self._make_batch(n)
        finally:
            with self._cond:
                self._coming -= n
                self._cond.notify_all()
        with self._cond:
            mine, rest = batch[0], batch[1:]
            self._queue.extend(rest)
            self._prefetch_locked()
            self._cond.notify_all()
        return mine

    def prime(self, questions: int) -> None:
        """At run start, ask for enough questions for the first two waves of conversations at once.

        Until the first questions come back, no conversation can start and most call slots would sit
        empty; instruction calls for the second wave fill them instead of taking slots later.
        """
        with self._cond:
            lacking = min(questions, self._unasked()) - self._coming
            while lacking > 0 and self._start_fill_locked(min(self.per_call, lacking)):
                lacking -= min(self.per_call, lacking)

    def _prefetch_locked(self) -> None:
        """Start background instruction calls while the pool runs low (called with ``_cond`` held)."""
        if self._prefetching >= self.max_prefetch or len(self._queue) + self._coming - self._waiting >= self.low_water:
            return
        lacking = self._unasked() - len(self._queue) - self._coming  # one count per take, not per batch
        while (lacking > 0 and self._prefetching < self.max_prefetch
               and len(self._queue) + self._coming - self._waiting < self.low_water
               and self._start_fill_locked(min(self.per_call, lacking))):
            lacking -= min(self.per_call, lacking)

    def _start_fill_locked(self, n: int) -> bool:
        """Start one background batch of ``n``; False once the pool is closed."""
        if self._closed:
            return False
        thread = threading.Thread(target=self._fill, args=(n,), name="question-prefetch", daemon=True)
        thread.start()  # _fill takes _cond, held here, before it touches the counters
        self._prefetchers.append(thread)
        self._coming += n
        self._prefetching += 1
        self.prefetched_batches += 1
        return True

    def _fill(self, n: int) -> None:
        batch: list[Question] = []
        try:
            batch = self._make_batch(n)
        except Exception:
            pass  # the pool runs dry, a worker writes its own batch and any lasting error surfaces there
        finally:
            with self._cond:
                self._coming -= n
                self._prefetching -= 1
                self._queue.extend(batch)
                self._cond.notify_all()

    def close(self) -> list[Question]:
        """No more prefetching; waits for background batches to end (on cancel, calls still waiting for a
        slot end at once; calls in flight finish or fail as they would).

        Returns the questions nobody took, so a run that stops early can keep what it paid for.
        """
        with self._cond:
            self._closed = True
            threads, self._prefetchers = self._prefetchers, []
        for thread in threads:
            thread.join()
        with self._cond:
            left, self._queue = list(self._queue), deque()
        return left


@dataclass
class RunProgress:
    run_id: str
    status: str
    saved: int
    target: int
    failed: int
    reason: str
    metrics: dict[str, Any]

    @property
    def fraction(self) -> float:
        return min(self.saved / max(self.target, 1), 1.0)


class GenerationRun:
    """One run: reserve work items, simulate with a thread pool, commit each conversation as it completes.

    Args:
        settings: provider and store settings (secrets are never stored).
        db, corpus: the workbench's database and corpus.
        provider_factory: builds the provider with the run's gate (so every 429 reaches the gate).
        config: the recipe; ignored on resume (the stored recipe is used).
        run_id: resume this run instead of creating one.
        on_alert: callbacks for monitor alerts (the CLI prints them).
    """

    def __init__(self, settings: Settings, db: Database, corpus: Corpus,
                 provider_factory: Callable[[CallGate], LLMProvider], config: RunConfig | None = None,
                 run_id: str | None = None, on_alert: list[Callable[[Alert], None]] | None = None,
                 thresholds: AlertThresholds | None = None):
        self.settings = settings
        self.db = db
        self.corpus = corpus
        self.cancel_event = threading.Event()
        self._stop_reason = ""
        self._lock = threading.Lock()
        self._jsonl_lock = threading.Lock()
        self.status = "pending"
        if run_id:
            row = db.one("SELECT * FROM runs WHERE id=?", [run_id])
            if not row:
                raise NotFoundError(f"Run {run_id} does not exist: `groundwork runs` lists the runs.")
            self.run_id = run_id
            self.config = RunConfig.from_json(loads(row["recipe"])["config"])
            self._check_not_owned(row)
        else:
            config = config or RunConfig()
            config.validate()
            self.config = config
            self.run_id = new_id()[:12]
        self.monitor = RunMonitor(self.run_id, self.config.num_dialogs, thresholds,
                                  log_dir=Path(self.config.log_dir) if self.config.log_dir else settings.logs_path, on_alert=(on_alert or []) + [self._store_alert])
        self.gate = AdaptiveGate(self.config.max_concurrency, settings.rpm_limit, self.config.stall_timeout_s,
                                 self.monitor)
        self.gate.cancelled = self.cancel_event
        self._provider_factory = provider_factory
        self.provider: LLMProvider | None = None
        if self.config.auto_improve:
            available, reason = judge_available(settings.resolved_provider)
            if not available:
                raise ValidationError(f"Auto-improve needs a judge. {reason}")
        if self.config.verify_grounding:
            available, reason = judge_available(settings.resolved_provider)
            if not available:
                raise ValidationError(f"The LLM verifier needs a capable model. {reason}")
        if not run_id:
            self._create()
        self.monitor.saved_before = self._count("done")

    # ---- setup --------------------------------------------------------------------------------
    def _prompt_texts(self) -> dict[str, str]:
        library = prompt_lib.PromptLibrary(self.db)
        texts = {}
        versions = dict(self.config.prompt_versions)
        for kind in prompt_lib.KINDS:
            row = library.get(versions[kind]) if versions.get(kind) else library.current(kind)
            versions[kind] = row["id"]
            texts[kind] = row["text"]
        self.config.prompt_versions = versions
        return texts

    def _create(self) -> None:
        self._prompt_texts()  # pins the prompt versions into the recipe
        fingerprint = self.db.one(
            "SELECT COUNT(*) AS documents, COALESCE(SUM(n_chunks),0) AS chunks, "
            "COALESCE(GROUP_CONCAT(content_hash, ''), '') AS hashes FROM "
            "(SELECT n_chunks, content_hash FROM documents WHERE collection=? AND status='complete' ORDER BY id)",
            [self.corpus.collection])
        corpus_fp = {"documents": fingerprint["documents"], "chunks": fingerprint["chunks"],
                     "sha256": hashlib.sha256(fingerprint["hashes"].encode()).hexdigest()[:16]}
        provider, model = self._provider_identity()
        recipe = {"config": self.config.to_json(), "settings": self.settings.public_dict(),
                  "corpus": corpus_fp, "provider": provider, "model": model}
        with self.db.write() as w:
            w["runs"].insert({"id": self.run_id, "kind": self.config.kind, "status": "pending", "reason": "",
                              "num_dialogs": self.config.num_dialogs, "saved": 0, "failed": 0,
                              "provider": provider, "model": model, "recipe": dumps(recipe),
                              "created_at": now()})
            w["work_items"].insert_all([self._new_item(slot) for slot in range(self.config.num_dialogs)])

    def _provider_identity(self) -> tuple[str, str]:
        name = self.settings.resolved_provider
        model = {"gemini": self.settings.gemini_model, "openai": self.settings.openai_model}.get(
            name, Path(self.settings.local_model_path).name if self.settings.local_model_path
            else "SmolLM2-135M-Instruct.Q4_1.gguf")
        return name, model

    def _new_item(self, slot: int) -> dict[str, Any]:
        seed = _seed_for(self.config.seed, slot) % (2**62)
        return {"id": f"{self.run_id}-{slot}", "run_id": self.run_id, "slot": slot, "status": "pending",
                "attempts": 0, "seed": seed, "turns": turns_for(seed, self.config.max_turns), "updated_at": now()}

    def _check_not_owned(self, row: dict[str, Any]) -> None:
        pid, beat = row.get("owner_pid"), row.get("heartbeat_at")
        if row["status"] == "completed":
            raise ValidationError(f"Run {self.run_id} is already complete ({row['saved']} conversations).")
        if pid and pid != os.getpid() and _pid_alive(pid) and beat and _age_s(beat) < 15:
            raise ValidationError(f"Run {self.run_id} is being generated right now by process {pid}; "
                                  "wait for it or cancel it there.")

    # ---- helpers ------------------------------------------------------------------------------
    def _count(self, status: str) -> int:
        return int(self.db.scalar("SELECT COUNT(*) FROM work_items WHERE run_id=? AND status=?",
                                  [self.run_id, status]) or 0)

    def progress(self) -> RunProgress:
        row = self.db.one("SELECT status, saved, failed, reason FROM runs WHERE id=?", [self.run_id])
        return RunProgress(self.run_id, row["status"], row["saved"], self.config.num_dialogs, row["failed"],
                           row["reason"] or "", self.monitor.snapshot())

    def cancel(self) -> None:
        self._stop("cancelled by the user")

    def _stop(self, reason: str) -> None:
        with self._lock:
            if not self._stop_reason:
                self._stop_reason = reason
        self.cancel_event.set()

    def _should_stop(self) -> bool:
        if self.gate.stalled:
            self._stop(f"the provider kept answering 429 (quota exhausted) and no call succeeded for "
                       f"{self.config.stall_timeout_s:.0f} s; resume the run when the quota is back")
        if self.config.token_budget:
            snap = self.monitor
            used = snap.prompt_tokens + snap.completion_tokens + snap.thinking_tokens
            if used >= self.config.token_budget:
                self._stop(f"token budget of {self.config.token_budget:,} reached ({used:,} used)")
        return self.cancel_event.is_set()

    def _store_alert(self, alert: Alert) -> None:
        with self.db.write() as w:
            w["events"].insert({"ts": now(), "actor": "monitor", "kind": "alert", "run_id": self.run_id,
                                "payload": dumps({"name": alert.name, "message": alert.message})})

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> RunProgress:
        """Generate until num_dialogs are saved or the run stops; returns the final progress."""
        with self.db.write() as w:
            # Items a crashed or killed process left in flight go back to the queue.
            w.execute("UPDATE work_items SET status='pending' WHERE run_id=? AND status='in_flight'", [self.run_id])
            w.execute("UPDATE runs SET status='running', reason='', owner_pid=?, heartbeat_at=?, "
                      "started_at=COALESCE(started_at, ?) WHERE id=?", [os.getpid(), now(), now(), self.run_id])
        self.status = "running"
        self._top_up_items()
        self._sync_jsonl()
        self._heartbeat_stop = threading.Event()
        holds = ExitStack()
        retriever: Retriever | None = None
        heartbeat = threading.Thread(target=self._heartbeat, name=f"run-{self.run_id}-heartbeat", daemon=True)
        try:
            prompt_texts = self._prompt_texts()
            # Servers and large Edge collections are searched live, the rest from a snapshot of the vectors.
            # Either way the retriever gets ready in the background while the provider's client is built and
            # the first instruction calls are in flight: those need only briefing passages, from SQLite.
            live = self._search_live()
            if live and not self.settings.qdrant_url:
                holds.enter_context(self.corpus.stores.use())  # open for the whole run: searched every turn
            rag = self.config.retrieval == "rag"  # briefing mode injects the sampled passages: nothing to search
            retriever = Retriever(self.corpus, snapshot=rag and not live, background=rag)
            sampler = BriefingSampler(self.db, self.corpus.collection, self.config.briefing_passages,
                                      random.Random(self.config.seed + self._count("done")), self.config.max_docs)
            self.provider = self._provider_factory(self.gate)
            simulator = Simulator(self.provider, retriever, self.config, prompt_texts, self.monitor)
            batch_rng = random.Random(self.config.seed * 7919 + self._count("done"))
            rng_lock = threading.Lock()

            def make_batch(n: int) -> list[Question]:
                ids = sampler.sample()
                with rng_lock:
                    rng = random.Random(batch_rng.randrange(2**62))
                questions, record = simulator.write_questions(retriever.passages_by_id(ids), n, rng)
                call_id = self._save_call(None, record)
                if self.config.retrieval == "rag":
                    # The first turn's retrieval depends only on the question: do it now, for the batch in
                    # one encode, so a worker taking a question can call the model straight away.
                    for q, passages in zip(questions, retriever.search_many([q.text for q in questions],
                                                                            self.config.top_k)):
                        q.first_passages = passages
                for q in questions:
                    q.meta["instruction_call_id"] = call_id
                return questions

            c = self.config.max_concurrency
            pool = QuestionPool(make_batch, self.config.instructions_per_sample, unasked=self._unasked_items,
                                low_water=max(2, c // 4), max_prefetch=max(1, c // 6) if c > 1 else 0)
            heartbeat.start()
            workers = [threading.Thread(target=self._worker, args=(simulator, pool), name=f"gen-{i}", daemon=True)
                       for i in range(worker_count(c))]
            try:
                if c > 1:
                    pool.prime(len(workers) + c)
                for t in workers:
                    t.start()
                for t in workers:
                    t.join()
            finally:
                self._park_questions(pool.close())
            retriever.check()
        except RunStopped as e:
            self._stop(str(e))
        except GroundworkError as e:
            self._stop(str(e))
            self._finish()
            raise
        finally:
            self._heartbeat_stop.set()
            if heartbeat.is_alive():
                heartbeat.join()
            if self.provider is not None:
                self.provider.close()
            if retriever is not None:
                retriever.close()  # a background load may still be using the store: never past the hold below
            holds.close()
        return self._finish()

    def _search_live(self) -> bool:
        """Retrieve from the store itself (a server; a large Edge collection) rather than a snapshot."""
        engine, _ = store_location(self.settings)
        if engine == "server":
            return True
        if engine != "edge" or self.config.retrieval != "rag":
            return False
        chunks = self.db.scalar("SELECT COUNT(*) FROM chunks WHERE collection=?", [self.corpus.collection]) or 0
        return chunks > SNAPSHOT_MAX_POINTS

    def _finish(self) -> RunProgress:
        with self.db.write() as w:
            w.execute("UPDATE work_items SET status='pending' WHERE run_id=? AND status='in_flight'", [self.run_id])
        saved = self._count("done")
        failed = self._count("failed")
        if saved >= self.config.num_dialogs:
            status, reason = "completed", ""
        else:
            status = "incomplete"
            reason = self._stop_reason or (f"{failed} conversations failed and the replacement budget "
                                           f"({self.config.replacements}) is spent")
        self.status = status
        self.monitor.check_alerts()
        self.monitor.write_log()
        with self.db.write() as w:
            w.execute("UPDATE runs SET status=?, reason=?, saved=?, failed=?, finished_at=?, metrics=?, "
                      "owner_pid=NULL WHERE id=?",
                      [status, reason, saved, failed, now(), dumps(self.monitor.snapshot()), self.run_id])
        return self.progress()

    def _top_up_items(self) -> None:
        """On resume: if failures left fewer open items than conversations still owed, add items (within budget)."""
        owed = self.config.num_dialogs - self._count("done") - self._count("pending")
        with self.db.write() as w:
            for _ in range(max(0, owed)):
                if not self._add_replacement(w):
                    break

    def _add_replacement(self, w) -> bool:
        """Add one work item if the replacement budget allows; items beyond num_dialogs are replacements."""
        total, next_slot = w.execute("SELECT COUNT(*), COALESCE(MAX(slot), -1) + 1 FROM work_items WHERE run_id=?",
                                     [self.run_id]).fetchone()
        if total - self.config.num_dialogs >= self.config.replacements:
            return False
        w["work_items"].insert(self._new_item(next_slot))
        return True

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(2.0):
            self._beat()

    def _beat(self) -> None:
        self.monitor.check_alerts()
        self.monitor.write_log()
        snap = self.monitor.snapshot()
        with self.db.write() as w:
            w.execute("UPDATE runs SET heartbeat_at=?, metrics=?, saved=?, failed=? WHERE id=?",
                      [now(), dumps(snap), snap["saved"],
                       w.execute("SELECT COUNT(*) FROM work_items WHERE run_id=? AND status='failed'",
                                 [self.run_id]).fetchone()[0], self.run_id])

    def _reserve(self) -> dict[str, Any] | None:
        with self.db.write() as w:
            # Longest conversations first: the run's tail is then short ones filling the gaps.
            row = w.execute("SELECT * FROM work_items WHERE run_id=? AND status='pending' "
                            "ORDER BY turns DESC, slot LIMIT 1", [self.run_id]).fetchone()
            if row is None:
                return None
            w.execute("UPDATE work_items SET status='in_flight', attempts=attempts+1, reserved_at=?, updated_at=? "
                      "WHERE id=?", [now(), now(), row["id"]])
            item = dict(row)
            item["attempts"] += 1
            return item

    def _worker(self, simulator: Simulator, pool: QuestionPool) -> None:
        while not self._should_stop():
            item = self._reserve()
            if item is None:
                return
            try:
                self._process(item, simulator, pool)
            except RunStopped as e:
                self._release(item)
                if str(e) != "cancelled":
                    self._stop(str(e))
                return
            except QuotaExhaustedError as e:
                self._release(item)
                if e.kind == "quota_day" or not self.gate.success_count:
                    self._stop(str(e))
                    return
                # 429s outlasted one call's retries: the item goes back; the gate decides when to give up.
            except GroundworkError as e:
                self._fail(item, e)
            except Exception as e:  # a bug must not sink the batch: record it against this item
                self._fail(item, e)

    def _release(self, item: dict[str, Any]) -> None:
        with self.db.write() as w:
            w.execute("UPDATE work_items SET status='pending', attempts=MAX(attempts-1,0), updated_at=? WHERE id=?",
                      [now(), item["id"]])

    def _fail(self, item: dict[str, Any], error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"[:1000]
        kind = getattr(error, "kind", "")
        fatal = kind in ("auth", "not_found", "bad_request", "no_key")
        final = fatal or item["attempts"] >= self.config.max_conversation_attempts
        self.monitor.record_failed(final)
        with self.db.write() as w:
            if not final:
                w.execute("UPDATE work_items SET status='pending', error=?, updated_at=? WHERE id=?",
                          [message, now(), item["id"]])
            else:
                w.execute("UPDATE work_items SET status='failed', error=?, updated_at=? WHERE id=?",
                          [message, now(), item["id"]])
                if not fatal:
                    self._add_replacement(w)
            w["events"].insert({"ts": now(), "actor": "engine", "kind": "conversation_failed", "run_id": self.run_id,
                                "payload": dumps({"item": item["id"], "attempt": item["attempts"],
                                                  "error": message, "final": final})})
        if fatal:
            self._stop(str(error))

    def _open_items(self) -> int:
        return self._count("pending") + self._count("in_flight")

    def _park_questions(self, questions: list[Question]) -> None:
        """Questions written but not taken (the run stopped early) go onto pending items, for the resume."""
        with self.db.write() as w:
            for q in questions:
                w.execute("UPDATE work_items SET question=?, briefing_ids=? WHERE id=(SELECT id FROM work_items "
                          "WHERE run_id=? AND status='pending' AND question IS NULL ORDER BY turns DESC, slot LIMIT 1)",
                          [q.text, dumps({"ids": q.briefing_ids, "meta": q.meta}), self.run_id])

    def _unasked_items(self) -> int:
        """Open work items that have no question yet (what the question pool may still write for)."""
        return int(self.db.scalar("SELECT COUNT(*) FROM work_items WHERE run_id=? AND status IN ('pending', "
                                  "'in_flight') AND question IS NULL", [self.run_id]) or 0)

    def _process(self, item: dict[str, Any], simulator: Simulator, pool: QuestionPool) -> None:
        if item.get("question"):
            meta = loads(item["briefing_ids"], {})
            ids = meta.get("ids", [])
            question = Question(item["question"], meta.get("meta", {}), ids,
                                format_passages(simulator.retriever.passages_by_id(ids)))
        else:
            question = pool.take(self._open_items, self._should_stop)
            with self.db.write() as w:
                w.execute("UPDATE work_items SET question=?, briefing_ids=? WHERE id=?",
                          [question.text, dumps({"ids": question.briefing_ids, "meta": question.meta}), item["id"]])
        rng, turns = item_rng(item["seed"], self.config.max_turns)
        result = simulator.converse(question, turns, rng, should_stop=self._should_stop)
        judged = None
        if self.config.auto_improve:
            result, judged = self._improve(simulator, question, turns, item, result)
        verdicts = self._verify(simulator, result) if self.config.verify_grounding else None
        self._save(item, question, result, turns, judged, verdicts)

    def _verify(self, simulator: Simulator, result: dict[str, Any]) -> list[Any]:
        """LLM verdicts for every answer of a finished conversation (one call each, cached by content)."""
        from core.quality.grounding import TurnInput
        from core.quality.verify import DatabaseCache, LLMVerifier

        verifier = LLMVerifier(simulator.provider, DatabaseCache(self.db), priority=2 * self.config.max_turns)
        inputs, said = [], []
        for idx, t in enumerate(result["turns"]):
            if t["role"] == "user":
                said.append(t["content"])
            elif t["role"] == "assistant":
                inputs.append(TurnInput(t["content"], list(t["retrieval"] or []), list(said), idx=idx))
        verdicts = verifier.verify_turns(inputs)
        self.monitor.record_call(0.0, verifier.prompt_tokens, verifier.completion_tokens, 0)
        return list(zip(inputs, verdicts))

    def _improve(self, simulator: Simulator, question: Question, turns: int, item: dict[str, Any],
                 result: dict[str, Any]) -> tuple[dict[str, Any], JudgeRecord]:
        """Judge; while below threshold and attempts remain, regenerate with the feedback. Keep the best."""
        # A finished conversation waits only on its verdict: rank it with the instruction calls, above any
        # conversation's next call, or auto-improve runs would leave judged conversations for the tail.
        judge = Judge(simulator.provider, self.config.judge_threshold, self.config.max_improve_attempts,
                      priority=2 * self.config.max_turns)
        record = JudgeRecord(threshold=self.config.judge_threshold)
        results = [result]
        feedback_used = ""
        while True:
            verdict = judge.score(results[-1]["turns"])
            self.monitor.record_call(0.0, verdict.prompt_tokens, verdict.completion_tokens, 0)
            record.attempts.append(Attempt(verdict, _messages(results[-1]), feedback_used))
            if judge.passes(verdict) or len(results) >= judge.max_attempts or self._should_stop():
                break
            feedback_used = verdict.feedback
            texts = dict(simulator.prompt_texts)
            texts["respondent"] = with_feedback(texts["respondent"], feedback_used)
            retry = Simulator(simulator.provider, simulator.retriever, self.config, texts, self.monitor)
            results.append(retry.converse(question, turns, random.Random(item["seed"] + len(results)),
                                          should_stop=self._should_stop))
        record.best = max(range(len(record.attempts)), key=lambda i: record.attempts[i].verdict.overall)
        return results[record.best], record

    def _save_call(self, conversation_id: str | None, record: CallRecord) -> int:
        with self.db.write() as w:
            return store_call(w, self.run_id, conversation_id, record)

    def _save(self, item: dict[str, Any], question: Question, result: dict[str, Any], turns: int,
              judged: JudgeRecord | None = None, verdicts: list[Any] | None = None) -> None:
        provider, model = self._provider_identity()
        with self.db.write() as w:
            current = w.execute("SELECT status FROM work_items WHERE id=?", [item["id"]]).fetchone()
            if current is None or current["status"] != "in_flight":
                return  # released by a cancel in the meantime: never save twice
            conversation_id = store_conversation(
                w, run_id=self.run_id, work_item_id=item["id"], provider=provider, model=model,
                prompt_versions=self.config.prompt_versions, question=question, result=result, turns=turns,
                judge=judged.as_json() if judged else None)
            w.execute("UPDATE work_items SET status='done', conversation_id=?, error=NULL, updated_at=? WHERE id=?",
                      [conversation_id, now(), item["id"]])
            w.execute("UPDATE runs SET saved = saved + 1 WHERE id=?", [self.run_id])
        if verdicts:
            from core.quality.grounding_store import store_verdicts

            ids = {r["idx"]: r["id"] for r in self.db.rows("SELECT id, idx FROM turns WHERE conversation_id=?",
                                                           [conversation_id])}
            for turn, _ in verdicts:
                turn.turn_id = ids.get(turn.idx)
            store_verdicts(self.db, conversation_id, verdicts)
        self.monitor.record_saved(turns)
        if self.config.output:
            self._append_jsonl(conversation_id)

    # ---- JSONL output -------------------------------------------------------------------------
    def _append_jsonl(self, conversation_id: str) -> None:
        row = conversation_record(self.db, conversation_id)
        with self._jsonl_lock:
            path = Path(self.config.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()

    def _sync_jsonl(self) -> None:
        """After a crash the file may lack conversations that SQLite has: append the missing ones."""
        if not self.config.output:
            return
        path = Path(self.config.output)
        written: set[str] = set()
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            good = []
            for line in lines:
                try:
                    written.add(json.loads(line)["id"])
                    good.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by the crash
            if len(good) != len(lines):
                path.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        for row in self.db.rows("SELECT id FROM conversations WHERE run_id=? ORDER BY created_at", [self.run_id]):
            if row["id"] not in written:
                self._append_jsonl(row["id"])


def store_call(w, run_id: str, conversation_id: str | None, record: CallRecord) -> int:
    """Insert one LLM call (rendered prompt, reply, tokens, latency) inside a write transaction ``w``."""
    r = record.result
    w["calls"].insert({"conversation_id": conversation_id, "run_id": run_id, "purpose": record.purpose,
                       "system_prompt": record.system_prompt, "messages": dumps(record.messages), "response": r.text,
                       "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                       "thinking_tokens": r.thinking_tokens, "latency_ms": r.latency_ms,
                       "finish_reason": r.finish_reason, "created_at": now()})
    return w.execute("SELECT last_insert_rowid()").fetchone()[0]


def store_conversation(w, *, run_id: str, work_item_id: str | None, provider: str, model: str,
                       prompt_versions: dict[str, int], question: Question, result: dict[str, Any], turns: int,
                       comparison_id: str | None = None, arm: str | None = None,
                       parent_id: str | None = None, judge: str | None = None) -> str:
    """Insert a simulated conversation (turns with per-turn retrieval, and its calls) inside ``w``.

    The engine, the dry run and prompt A/B all store conversations through this one function, so
    every conversation looks the same to review and export wherever it came from.
    """
    conversation_id = new_id()
    calls: list[CallRecord] = result["calls"]
    totals = {k: sum(getattr(c.result, k) for c in calls)
              for k in ("prompt_tokens", "completion_tokens", "thinking_tokens", "latency_ms")}
    created = now()
    w["conversations"].insert({
        "id": conversation_id, "run_id": run_id, "work_item_id": work_item_id, "status": "new",
        "provider": provider, "model": model, "prompt_versions": dumps(prompt_versions),
        "briefing": question.briefing, "briefing_ids": dumps(question.briefing_ids),
        "question": question.text, "question_meta": dumps(question.meta), "num_turns": turns,
        **totals, "created_at": created, "comparison_id": comparison_id, "arm": arm, "parent_id": parent_id,
        "judge": judge,
        "search_text": "\n".join(t["content"] for t in result["turns"]),
    })
    for idx, t in enumerate(result["turns"]):
        call = t["call"]
        w["turns"].insert({
            "conversation_id": conversation_id, "idx": idx, "role": t["role"], "content": t["content"],
            "weight": 1, "retrieval": dumps(t["retrieval"]) if t["retrieval"] is not None else None,
            "prompt_tokens": call.result.prompt_tokens if call else 0,
            "completion_tokens": call.result.completion_tokens if call else 0,
            "thinking_tokens": call.result.thinking_tokens if call else 0,
            "latency_ms": call.result.latency_ms if call else 0, "created_at": created})
    for c in calls:
        store_call(w, run_id, conversation_id, c)
    for t in result["turns"]:
        for p in t["retrieval"] or []:
            w.execute("UPDATE chunks SET retrieved_uses = retrieved_uses + 1 WHERE id=?", [p["id"]])
    return conversation_id


def conversation_record(db: Database, conversation_id: str) -> dict[str, Any]:
    """A conversation as one self-explaining JSONL row: messages plus where every answer came from."""
    c = db.one("SELECT * FROM conversations WHERE id=?", [conversation_id])
    if not c:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    turns = db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [conversation_id])
    briefing_ids = loads(c["briefing_ids"], [])
    return {
        "id": c["id"], "run_id": c["run_id"], "provider": c["provider"], "model": c["model"],
        "prompt_versions": loads(c["prompt_versions"], {}),
        "messages": [{"role": t["role"], "content": t["content"]} for t in turns],
        "context": c["briefing"], "context_id": briefing_ids[0] if briefing_ids else None,
        "context_ids": briefing_ids, "question_meta": loads(c["question_meta"], {}),
        "retrieved_context": [
            {"turn": t["idx"], "passages": [
                {"id": p["id"], "score": p["score"], "text": p["text"], "document_id": p.get("document_id"),
                 "title": p.get("title"), "source_path": p.get("source_path")} for p in loads(t["retrieval"], [])]}
            for t in turns if t["role"] == "assistant"],
        "tokens": {"prompt": c["prompt_tokens"], "completion": c["completion_tokens"],
                   "thinking": c["thinking_tokens"]},
        "latency_ms": c["latency_ms"], "num_turns": c["num_turns"], "created_at": c["created_at"],
        "status": c["status"],
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ProcessLookupError):
        return False
    return True


def _age_s(iso: str) -> float:
    from datetime import datetime, timezone

    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 1e9


def list_runs(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Newest runs first, with their counts and stop reasons (no recipes: those are large)."""
    return db.rows("SELECT id, kind, status, reason, num_dialogs, saved, failed, provider, model, created_at, "
                   "finished_at FROM runs ORDER BY created_at DESC LIMIT ?", [limit])


def run_errors(db: Database, run_id: str, limit: int = 20) -> list[dict[str, Any]]:
    return db.rows("SELECT id, slot, attempts, error, status FROM work_items WHERE run_id=? AND error IS NOT NULL "
                   "ORDER BY updated_at DESC LIMIT ?", [run_id, limit])
