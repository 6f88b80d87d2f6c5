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
import json
import os
import random
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.generation import prompts as prompt_lib
from core.generation.briefing import BriefingSampler
from core.corpus.documents import select_documents
from core.config import Settings
from core.generation.conversation_store import conversation_record, store_call, store_conversation
from core.corpus.collection import Corpus
from core.db import Database, DatabaseGoneError, dumps, loads, new_id, now
from core.errors import GroundworkError, NotFoundError, RunStopped, ValidationError
from core.generation.gate import AdaptiveGate
from core.quality.judge import Attempt, Judge, JudgeRecord, judge_available, with_feedback
from core.generation.monitor import Alert, AlertThresholds, RunMonitor
from core.providers.base import CallGate, LLMProvider, QuotaExhaustedError
from core.generation.question_pool import QuestionPool
from core.generation.retrieval import Retriever
from core.generation.run_config import QuestionMix, RunConfig
from core.generation.simulator import CallRecord, Question, Simulator, _messages, format_briefing, format_passages
from core.corpus.vectorstore import SNAPSHOT_MAX_POINTS, store_location

# Names other modules and tests import from here (the engine's public face before it was split up).
__all__ = ["AdaptiveGate", "BriefingSampler", "CallRecord", "GenerationRun", "Question", "QuestionMix",
           "QuestionPool", "Retriever", "RunConfig", "RunProgress", "RunStopped", "Simulator",
           "conversation_record", "format_passages", "item_rng", "list_runs", "run_errors", "store_call",
           "store_conversation", "turns_for", "worker_count"]


# A run's owner renews its lease with every heartbeat (every 2 s); a lease not renewed for this long means
# the owner is gone (killed, its machine asleep) and a resume may take the run over.
LEASE_S = 15.0
HEARTBEAT_S = 2.0


def owner_token() -> str:
    """A fresh owner token: host and pid (so a dead owner on this host is recognised at once) and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_lapsed(token: str | None, expires_at: str | None) -> bool:
    """Whether a run's lease is free to take: no owner, expired, or owned by a dead process on this host."""
    if not token:
        return True
    if not expires_at or _age_s(expires_at) >= 0:
        return True
    host, pid, _nonce = (token.rsplit(":", 2) + ["", ""])[:3]
    # Another host's process cannot be checked from here: only its lease's expiry frees the run.
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


class RunOwnedError(ValidationError):
    """Another process holds the run's lease."""


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


@dataclass
class RunScope:
    """What a run holds open while it works, closed in one place however the run ends."""

    holds: ExitStack  # the vector store kept open for live search
    heartbeat: threading.Thread  # renews the run's lease
    retriever: Retriever | None = None


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
                 thresholds: AlertThresholds | None = None, more_replacements: int | None = None):
        self.settings = settings
        self.db = db
        self.corpus = corpus
        self.cancel_event = threading.Event()
        self._stop_reason = ""
        self._lock = threading.Lock()
        self._jsonl_lock = threading.Lock()
        self.status = "pending"
        self.token = owner_token()
        self._storage_error: DatabaseGoneError | None = None
        # Replacements already used by earlier sessions of this run (set when the run is claimed): each
        # session, a resume included, gets a budget of its own, so a run stopped for its budget can finish.
        self._replacements_before = 0
        if more_replacements is not None and more_replacements < 0:
            raise ValidationError(f"--more-replacements {more_replacements}: give 0 or more replacements.")
        self._more_replacements = more_replacements
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
        if self.config.retrieval == "rag":
            # Before the run row and any LLM call: a model that cannot load, or that does not make the
            # collection's vectors, would otherwise fail (or retrieve nonsense) only after paid calls.
            self.corpus.verify()
        # Called with each conversation id right after it is saved (the background grounding checks).
        self.on_saved: list[Callable[[str], None]] = []
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
        """Refuse a run that is complete or leased to a live owner (checked again, atomically, by _claim)."""
        if row["status"] == "completed":
            raise ValidationError(f"Run {self.run_id} is already complete ({row['saved']} conversations).")
        token = row.get("owner_token")
        if token and token != self.token and not lease_lapsed(token, row.get("lease_expires_at")):
            host, pid, _nonce = (token.rsplit(":", 2) + ["", ""])[:3]
            raise RunOwnedError(f"Run {self.run_id} is being generated right now by process {pid} on {host}; "
                                f"wait for it or cancel it there (if that process is gone, its lease lapses "
                                f"{LEASE_S:.0f} s after its last heartbeat and the resume can go ahead).")

    def _claim(self) -> None:
        """Take the run's lease and reclaim the in-flight items of a lapsed owner, in one write transaction.

        The check and the claim are one transaction (BEGIN IMMEDIATE: no other writer in between), so of two
        resumes started at the same instant exactly one wins; the other gets RunOwnedError.
        """
        with self.db.write() as w:
            row = w.execute("SELECT * FROM runs WHERE id=?", [self.run_id]).fetchone()
            self._check_not_owned(dict(row))
            w.execute("UPDATE runs SET status='running', reason='', owner_token=?, lease_expires_at=?, owner_pid=?, "
                      "heartbeat_at=?, started_at=COALESCE(started_at, ?) WHERE id=?",
                      [self.token, _in_s(LEASE_S), os.getpid(), now(), now(), self.run_id])
            # There is one lease per run and it is ours now, so every other owner's lease has lapsed: items it
            # left in flight (killed mid-conversation) go back to the queue. Never items under a live lease.
            w.execute("UPDATE work_items SET status='pending', owner=NULL WHERE run_id=? AND status='in_flight'",
                      [self.run_id])

    # ---- helpers ------------------------------------------------------------------------------
    def _count(self, status: str) -> int:
        return int(self.db.scalar("SELECT COUNT(*) FROM work_items WHERE run_id=? AND status=?",
                                  [self.run_id, status]) or 0)

    def progress(self) -> RunProgress:
        try:
            row = self.db.one("SELECT status, saved, failed, reason FROM runs WHERE id=?", [self.run_id])
        except (DatabaseGoneError, sqlite3.Error):
            row = None
        if row is None:  # the database went away: report what this process knows
            snap = self.monitor.snapshot()
            return RunProgress(self.run_id, self.status, snap["saved"], self.config.num_dialogs,
                               self.monitor.failed_final, self._stop_reason, snap)
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
            self._stop(f"every call was answered 429 for {self.config.stall_timeout_s:.0f} s although the run had cut "
                       f"its calls in flight to one and paced them to the quota: the quota is not coming back "
                       f"soon; resume the run later")
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
        """Generate until num_dialogs are saved or the run stops; returns the final progress.

        Raises:
            RunOwnedError: another process holds the run's lease (nothing was changed).
            DatabaseGoneError: the SQLite file was deleted or made read-only; the workers were stopped.
        """
        self._claim()
        self.status = "running"
        self._heartbeat_stop = threading.Event()
        try:
            self._top_up_items()
            self._sync_jsonl()
            return self._run_claimed()
        except DatabaseGoneError as e:
            self._storage_error = self._storage_error or e
        finally:
            self._heartbeat_stop.set()
        return self._gone()

    def _gone(self) -> RunProgress:
        """The database went away mid-run: the workers are stopped; say so in one line, keep what was saved."""
        self.status = "incomplete"
        saved = self.monitor.saved
        where = f"; each one is in {self.config.output}" if self.config.output and saved else ""
        raise DatabaseGoneError(f"{self._storage_error} Run {self.run_id} stopped: {saved} conversation(s) "
                                f"were saved by this session before that{where}.")

    def _run_claimed(self) -> RunProgress:
        scope = RunScope(ExitStack(), threading.Thread(target=self._heartbeat, name=f"run-{self.run_id}-heartbeat",
                                                       daemon=True))
        try:
            self._generate(scope)
            if scope.retriever is not None:
                scope.retriever.check()
        except DatabaseGoneError as e:
            self._storage_error = self._storage_error or e
            self._stop(str(e))
        except RunStopped as e:
            self._stop(str(e))
        except GroundworkError as e:
            self._stop(str(e))
            self._finish()
            raise
        finally:
            self._heartbeat_stop.set()
            if scope.heartbeat.is_alive():
                scope.heartbeat.join()
            if self.provider is not None:
                self.provider.close()
            if scope.retriever is not None:
                scope.retriever.close()  # a background load may still be using the store: never past the hold below
            scope.holds.close()
        if self._storage_error:
            raise self._storage_error
        return self._finish()

    def _generate(self, scope: RunScope) -> None:
        """The run's work once it owns the run: questions and conversations until the target is saved."""
        prompt_texts = self._prompt_texts()
        # The retriever gets ready in the background while the provider's client is built and the first
        # instruction calls are in flight: those need only briefing passages, from SQLite.
        retriever = self._open_retriever(scope)
        sampler = BriefingSampler(self.db, self.corpus.collection, self.config.briefing_passages,
                                  random.Random(self.config.seed + self._count("done")), self.config.max_docs,
                                  select_documents(self.db, self.corpus.collection, self.config.documents, self.config.tags))
        self.provider = self._provider_factory(self.gate)
        simulator = Simulator(self.provider, retriever, self.config, prompt_texts, self.monitor,
                              context_tokens=self._context_tokens())
        self._seed_questions(simulator)
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
                # The opening turn is about the briefing's documents: searched within them too, anchored.
                for q, passages in zip(questions, retriever.search_many(
                        [q.text for q in questions], self.config.top_k, mode=self.config.retrieval_mode,
                        conversation_docs=[q.briefing_documents for q in questions], anchored=True)):
                    q.first_passages = passages
            for q in questions:
                q.meta["instruction_call_id"] = call_id
            return questions

        c = self.config.max_concurrency
        pool = QuestionPool(make_batch, self.config.instructions_per_sample, unasked=self._unasked_items,
                            low_water=max(2, c // 4), max_prefetch=max(1, c // 6) if c > 1 else 0)
        scope.heartbeat.start()
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
            left = pool.close()
            if not self._storage_error:
                self._park_questions(left)

    def _seed_questions(self, simulator: Simulator) -> None:
        """A resumed run keeps new opening questions apart from the ones it saved (or parked) before."""
        for row in self.db.rows("SELECT question FROM conversations WHERE run_id=? AND question IS NOT NULL "
                                "UNION SELECT question FROM work_items WHERE run_id=? AND question IS NOT NULL",
                                [self.run_id, self.run_id]):
            simulator.opening_questions.add(row["question"])

    def _open_retriever(self, scope: RunScope) -> Retriever:
        """The run's retriever; it gets ready in the background while the first calls are in flight."""
        # Servers and large Edge collections are searched live, the rest from a snapshot of the vectors.
        live = self._search_live()
        if live and not self.settings.qdrant_url:
            scope.holds.enter_context(self.corpus.stores.use())  # open for the whole run: searched every turn
        rag = self.config.retrieval == "rag"  # briefing mode injects the sampled passages: nothing to search
        scope.retriever = Retriever(self.corpus, snapshot=rag and not live, background=rag)
        return scope.retriever

    def _context_tokens(self) -> int:
        """The model's context window in tokens, where we know it (sizes the carried passages)."""
        if self.settings.resolved_provider == "local":
            return int(self.settings.local_n_ctx)
        return 0  # hosted models: the simulator's default

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
            w.execute("UPDATE work_items SET status='pending', owner=NULL WHERE run_id=? AND status='in_flight' "
                      "AND owner=?", [self.run_id, self.token])
        saved = self._count("done")
        failed = self._count("failed")
        if saved >= self.config.num_dialogs:
            status, reason = "completed", ""
        else:
            status = "incomplete"
            reason = self._stop_reason or (
                f"{failed} conversations failed and the replacement budget ({self.replacement_budget}) is "
                f"spent; a resume gets a new budget of {self.config.replacements} replacements")
        self.status = status
        self.monitor.check_alerts()
        self.monitor.write_log()
        with self.db.write() as w:
            # Only while the lease is ours: a process that lost it must not overwrite its successor's state.
            w.execute("UPDATE runs SET status=?, reason=?, saved=?, failed=?, finished_at=?, metrics=?, "
                      "owner_pid=NULL, owner_token=NULL, lease_expires_at=NULL WHERE id=? AND owner_token=?",
                      [status, reason, saved, failed, now(), dumps(self.monitor.snapshot()), self.run_id,
                       self.token])
        return self.progress()

    @property
    def replacement_budget(self) -> int:
        """Failed conversations this session may replace: the recipe's budget, or --more-replacements on resume."""
        return self.config.replacements if self._more_replacements is None else self._more_replacements

    def _top_up_items(self) -> None:
        """On resume: if failures left fewer open items than conversations still owed, add items (within budget)."""
        owed = self.config.num_dialogs - self._count("done") - self._count("pending")
        with self.db.write() as w:
            total = w.execute("SELECT COUNT(*) FROM work_items WHERE run_id=?", [self.run_id]).fetchone()[0]
            self._replacements_before = max(0, total - self.config.num_dialogs)
            for _ in range(max(0, owed)):
                if not self._add_replacement(w):
                    break

    def _add_replacement(self, w) -> bool:
        """Add one work item if the replacement budget allows; items beyond num_dialogs are replacements."""
        total, next_slot = w.execute("SELECT COUNT(*), COALESCE(MAX(slot), -1) + 1 FROM work_items WHERE run_id=?",
                                     [self.run_id]).fetchone()
        if total - self.config.num_dialogs - self._replacements_before >= self.replacement_budget:
            return False
        w["work_items"].insert(self._new_item(next_slot))
        return True

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except DatabaseGoneError as e:
                # Checked every beat even when no conversation is being saved: the workers stop now, not
                # after their next LLM call.
                self._storage_error = self._storage_error or e
                self._stop(str(e))
                return
            except OSError as e:  # the log file's folder went away with the data dir
                self._stop(f"cannot write the run's log ({e.strerror}: {e.filename})")
                return

    def _beat(self) -> None:
        self.db.check_writable()
        self.monitor.check_alerts()
        self.monitor.write_log()
        snap = self.monitor.snapshot()
        with self.db.write() as w:
            renewed = w.execute("UPDATE runs SET heartbeat_at=?, lease_expires_at=?, metrics=?, saved=?, failed=? "
                                "WHERE id=? AND owner_token=?",
                                [now(), _in_s(LEASE_S), dumps(snap), snap["saved"],
                                 w.execute("SELECT COUNT(*) FROM work_items WHERE run_id=? AND status='failed'",
                                           [self.run_id]).fetchone()[0], self.run_id, self.token]).rowcount
        if not renewed:
            self._stop(f"another process took over run {self.run_id} (this one missed its heartbeats for "
                       f"{LEASE_S:.0f} s); nothing more is saved here")

    def _reserve(self) -> dict[str, Any] | None:
        with self.db.write() as w:
            # Longest conversations first: the run's tail is then short ones filling the gaps.
            if w.execute("SELECT owner_token FROM runs WHERE id=?", [self.run_id]).fetchone()[0] != self.token:
                self._stop(f"another process took over run {self.run_id}; nothing more is saved here")
                return None
            row = w.execute("SELECT * FROM work_items WHERE run_id=? AND status='pending' "
                            "ORDER BY turns DESC, slot LIMIT 1", [self.run_id]).fetchone()
            if row is None:
                return None
            w.execute("UPDATE work_items SET status='in_flight', owner=?, attempts=attempts+1, reserved_at=?, "
                      "updated_at=? WHERE id=?", [self.token, now(), now(), row["id"]])
            item = dict(row)
            item["attempts"] += 1
            return item

    def _worker(self, simulator: Simulator, pool: QuestionPool) -> None:
        try:
            self._work(simulator, pool)
        except DatabaseGoneError as e:
            # Nothing can be saved any more: every worker stops (no more LLM calls paid for nothing).
            self._storage_error = self._storage_error or e
            self._stop(str(e))

    def _work(self, simulator: Simulator, pool: QuestionPool) -> None:
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
            except DatabaseGoneError:
                raise
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
            w.execute("UPDATE work_items SET status='pending', owner=NULL, attempts=MAX(attempts-1,0), updated_at=? "
                      "WHERE id=? AND owner=?", [now(), item["id"], self.token])

    def _fail(self, item: dict[str, Any], error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"[:1000]
        kind = getattr(error, "kind", "")
        fatal = kind in ("auth", "not_found", "bad_request", "no_key")
        final = fatal or item["attempts"] >= self.config.max_conversation_attempts
        self.monitor.record_failed(final)
        with self.db.write() as w:
            if not final:
                # The retry writes a new question: the same question and seeds would replay the failure.
                w.execute("UPDATE work_items SET status='pending', owner=NULL, error=?, question=NULL, "
                          "briefing_ids=NULL, updated_at=? WHERE id=? AND owner=?",
                          [message, now(), item["id"], self.token])
            else:
                w.execute("UPDATE work_items SET status='failed', error=?, updated_at=? WHERE id=? AND owner=?",
                          [message, now(), item["id"], self.token])
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
            briefing = simulator.retriever.passages_by_id(ids)
            question = Question(item["question"], meta.get("meta", {}), ids, format_briefing(briefing),
                                briefing_passages=briefing)
        else:
            question = pool.take(self._open_items, self._should_stop)
            with self.db.write() as w:
                w.execute("UPDATE work_items SET question=?, briefing_ids=? WHERE id=? AND owner=?",
                          [question.text, dumps({"ids": question.briefing_ids, "meta": question.meta}), item["id"],
                           self.token])
        rng, turns = item_rng(item["seed"], self.config.max_turns)
        if item["attempts"] > 1:
            # A retry is not a replay: new seeds for every call (and, see _fail, a new question).
            rng = random.Random(_seed_for(item["seed"], item["slot"], item["attempts"]))
        result = simulator.converse(question, turns, rng, should_stop=self._should_stop)
        judged = None
        if self.config.auto_improve:
            result, judged = self._improve(simulator, question, turns, item, result)
        verdicts = self._verify(simulator, result) if self.config.verify_grounding else None
        self._save(item, question, result, turns, judged, verdicts)

    def _verify(self, simulator: Simulator, result: dict[str, Any]) -> list[Any]:
        """LLM verdicts for every answer of a finished conversation (one call each, cached by content)."""
        from core.quality.grounding import conversation_inputs
        from core.quality.verify import DatabaseCache, LLMVerifier

        verifier = LLMVerifier(simulator.provider, DatabaseCache(self.db), priority=2 * self.config.max_turns)
        inputs = conversation_inputs((t["role"], t["content"], list(t["retrieval"] or []), None, idx)
                                     for idx, t in enumerate(result["turns"]))
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
            retry = Simulator(simulator.provider, simulator.retriever, self.config, texts, self.monitor,
                              context_tokens=simulator.context_tokens)
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
            current = w.execute("SELECT status, owner FROM work_items WHERE id=?", [item["id"]]).fetchone()
            if current is None or current["status"] != "in_flight" or current["owner"] != self.token:
                return  # released by a cancel, or reclaimed by a process that took the lease: never save twice
            if w.execute("SELECT owner_token FROM runs WHERE id=?", [self.run_id]).fetchone()[0] != self.token:
                return
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
        self._saved(conversation_id)

    def _saved(self, conversation_id: str) -> None:
        for callback in self.on_saved:
            try:
                callback(conversation_id)
            except Exception:  # advisory (grounding checks): never fails a saved conversation
                pass

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ProcessLookupError):
        return False
    return True


def _in_s(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _age_s(iso: str) -> float:
    from datetime import datetime, timezone

    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return 1e9


def list_runs(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Newest runs first, with their counts and stop reasons (no recipes: those are large).

    A run still marked ``running`` whose owner stopped renewing its lease (killed, its machine gone) is
    listed as ``interrupted``: nothing is generating it, and ``generate --resume`` takes it over.
    """
    rows = db.rows("SELECT id, kind, status, reason, num_dialogs, saved, failed, provider, model, created_at, "
                   "finished_at, owner_token, lease_expires_at, heartbeat_at FROM runs ORDER BY created_at DESC "
                   "LIMIT ?", [limit])
    for row in rows:
        token, expires, beat = row.pop("owner_token"), row.pop("lease_expires_at"), row.pop("heartbeat_at")
        # Runs from before leases have only a heartbeat: stale after LEASE_S like a lease.
        if row["status"] == "running" and (lease_lapsed(token, expires) if token
                                           else not beat or _age_s(beat) > LEASE_S):
            row["status"] = "interrupted"
    return rows


def run_errors(db: Database, run_id: str, limit: int = 20) -> list[dict[str, Any]]:
    return db.rows("SELECT id, slot, attempts, error, status FROM work_items WHERE run_id=? AND error IS NOT NULL "
                   "ORDER BY updated_at DESC LIMIT ?", [run_id, limit])
