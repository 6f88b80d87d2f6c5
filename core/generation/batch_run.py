"""Batch runs: the same grounded conversations, generated round by round through Gemini's Batch API.

Each round sends every open conversation's next call in one batch job: the opening questions first, then every
conversation's next answer, then every next follow-up, and so on (a conversation whose call failed or was
rejected simply asks again in the next round). Between rounds nothing waits on a thread: a round is a row in
``batch_jobs`` and one row per request in ``batch_requests``, written before the job is created at Google; the
job's name is stored the moment it exists. A process stopped at any point resumes by polling the same job (or
finding it by its display name, when the stop fell between creating it and storing its name), so no request
key is ever submitted twice, and results map back to conversations by key.

Everything else is the live run's: the same work items, lease and heartbeat (``GenerationRun``), the same
prompts, retrieval, carried passages and reply checks (``Simulator``), and the same rows (``store_conversation``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from core.generation.briefing import BriefingSampler
from core.corpus.documents import select_documents
from core.config import Settings
from core.generation.conversation_store import store_call, store_conversation
from core.corpus.collection import Corpus, Passage
from core.db import Database, dumps, loads, now
from core.generation.engine import GenerationRun, RunScope, _seed_for
from core.errors import RunStopped, ValidationError
from core.providers.base import CallGate, LLMError, LLMProvider, LLMRequest, LLMResult, Message
from core.generation.reply_checks import TRUNCATED
from core.generation.run_config import RunConfig
from core.generation.anchoring import used_passages
from core.generation.reply_checks import BLOCKED, NOT_JSON
from core.generation.simulator import asked_again
from core.generation.simulator import (MAX_TOKENS_CAP, CallRecord, ConversationState, PreparedCall, Question, Simulator,
                            TurnPassages, format_briefing, format_passages, questions_from)

NEEDS_GEMINI = ("Batch mode needs Gemini: the Batch API is Gemini's. Set GEMINI_API_KEY and choose the gemini "
                "provider, or run without batch mode on the offline or OpenAI-compatible provider.")
ENTRY_RETRIES = 3  # a conversation whose call failed in this many batches in a row (not rejected: failed) fails
FAILED_JOBS_IN_A_ROW = 3  # whole jobs failing or expiring this often in a row stop the run
JOB_LIFETIME_S = 48 * 3600.0  # Google expires a batch job pending or running longer than this


def generation_run(settings: Settings, db: Database, corpus: Corpus,
                   provider_factory: Callable[[CallGate], LLMProvider], config: RunConfig | None = None,
                   run_id: str | None = None, **options: Any) -> GenerationRun:
    """A new run for ``config``, or the run ``run_id`` resumed: a batch run when its recipe says so."""
    batch = config.batch if config is not None else False
    if run_id:
        row = db.one("SELECT recipe FROM runs WHERE id=?", [run_id])
        batch = bool(row and loads(row["recipe"], {}).get("config", {}).get("batch"))
    cls = BatchGenerationRun if batch else GenerationRun
    return cls(settings, db, corpus, provider_factory, config=config, run_id=run_id, **options)


class BatchGenerationRun(GenerationRun):
    """A generation run whose calls go to Gemini's Batch API, one job per round (see the module docstring).

    Takes :class:`GenerationRun`'s arguments; the provider factory must build a Gemini provider (its client,
    key and reply conversion are reused). ``on_note`` hears one line per round (the CLI prints it).
    """

    def __init__(self, *args: Any, on_note: Callable[[str], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # No conversation is saved while a round's job runs at Google (minutes to hours): that is not a stall.
        self.monitor.thresholds = dataclasses.replace(self.monitor.thresholds, stall_seconds=JOB_LIFETIME_S)
        self.on_note = on_note
        self.jobs: Any = None  # GeminiBatchJobs, built in the run (it needs the provider)

    # ---- the run --------------------------------------------------------------------------------------------
    def _generate(self, scope: RunScope) -> None:
        from core.providers.gemini_batch import GeminiBatchJobs  # google-genai is imported only for batch runs

        self.provider = self._provider_factory(self.gate)
        if getattr(self.provider, "name", "") != "gemini":
            raise ValidationError(NEEDS_GEMINI)
        self.jobs = GeminiBatchJobs(self.provider, inline_limit=self.settings.batch_inline_bytes)
        prompt_texts = self._prompt_texts()
        retriever = self._open_retriever(scope)
        self.sampler = BriefingSampler(self.db, self.corpus.collection, self.config.briefing_passages,
                                       random.Random(self.config.seed + self._count("done")), self.config.max_docs,
                                       select_documents(self.db, self.corpus.collection, self.config.documents,
                                                        self.config.tags))
        self.simulator = Simulator(self.provider, retriever, self.config, prompt_texts, self.monitor,
                                   context_tokens=self._context_tokens())
        self._seed_questions(self.simulator)
        scope.heartbeat.start()
        self._rounds()

    def _rounds(self) -> None:
        failed_jobs = 0
        while not self._should_stop():
            job = self.db.one("SELECT * FROM batch_jobs WHERE run_id=? AND state!='applied' ORDER BY round LIMIT 1",
                              [self.run_id])
            if job is None:
                job = self._prepare_round()
                if job is None:
                    return  # no open conversation left
            if not job["name"]:
                job = self._submit(job)
            status = self._poll(job)
            if status is None:
                return  # stopped while the job runs: a resume polls it again
            if status.state in ("SUCCEEDED", "PARTIALLY_SUCCEEDED"):
                failed_jobs = 0
                self._apply(job, status.results)
            else:
                failed_jobs += 1
                self._job_failed(job, status)
                if failed_jobs >= FAILED_JOBS_IN_A_ROW:
                    self._stop(f"Gemini ended {failed_jobs} batch jobs in a row without results (last: "
                               f"{status.state.lower()}{': ' + status.error if status.error else ''}); resume the "
                               f"run later")
                    return

    def _note(self, line: str) -> None:
        if self.on_note:
            self.on_note(line)

    # ---- one round: build, store, submit --------------------------------------------------------------------
    def _prepare_round(self) -> dict[str, Any] | None:
        """Store the next round: a job row and one request row per call; None when no conversation is open."""
        items = self.db.rows("SELECT * FROM work_items WHERE run_id=? AND status='pending' ORDER BY slot",
                             [self.run_id])
        if not items:
            return None
        rounds = int(self.db.scalar("SELECT COUNT(*) FROM batch_jobs WHERE run_id=?", [self.run_id]) or 0)
        job_id = f"groundwork-{self.run_id}-r{rounds + 1}"
        requests: list[dict[str, Any]] = []

        def add(purpose: str, payload: dict[str, Any], item_id: str | None) -> None:
            requests.append({"key": f"{job_id}-{len(requests)}", "run_id": self.run_id, "job_id": job_id,
                             "work_item_id": item_id, "purpose": purpose, "payload": dumps(payload),
                             "status": "queued", "error": None, "created_at": now()})

        unasked = [i for i in items if not i["question"]]
        n = self.config.instructions_per_sample
        for start in range(0, len(unasked), n):
            group = unasked[start:start + n]
            passages = self.simulator.retriever.passages_by_id(self.sampler.sample())
            plan_seed = random.Random(f"{job_id}-{start}").randrange(2**62)
            prepared, _plan = self.simulator.questions_call(passages, n, random.Random(plan_seed))
            add("instruction", {"briefing_ids": [p.id for p in passages], "plan_seed": plan_seed, "n": n,
                                "items": [i["id"] for i in group],
                                **self._request_fields(prepared, plan_seed % 2**31, self.config.max_tokens)}, None)
        for item in items:
            if not item["question"]:
                continue
            state, extra = self._state(item)
            seed = _seed_for(item["seed"], len(state.turns), extra.get("tries", 0) + 10 * item["attempts"]) % 2**31
            max_tokens = extra.get("max_tokens") or self.config.max_tokens
            if state.turns[-1]["role"] == "user":
                passages = self.simulator.passages_for(state)
                prepared = self.simulator.respondent_call(state.history, passages.new, passages.carried)
                add("respondent", {"query": passages.query, "new": [p.as_dict() for p in passages.new],
                                   "carried": [p.as_dict() for p in passages.carried],
                                   **self._request_fields(prepared, seed, max_tokens)}, item["id"])
            else:
                prepared = self.simulator.follow_up_call(state.history, state.question)
                add("correspondent", self._request_fields(prepared, seed, max_tokens), item["id"])
        job = {"id": job_id, "run_id": self.run_id, "round": rounds + 1, "name": None, "state": "preparing",
               "source": None, "requests": len(requests), "error": None, "created_at": now(), "updated_at": now()}
        with self.db.write() as w:
            self._check_lease(w)
            w["batch_jobs"].insert(job)
            w["batch_requests"].insert_all(requests)
        return job

    def _request_fields(self, prepared: PreparedCall, seed: int, max_tokens: int) -> dict[str, Any]:
        return {"system": prepared.system, "messages": [asdict(m) for m in prepared.messages],
                "json_schema": prepared.json_schema, "seed": seed, "max_tokens": max_tokens}

    def _llm_request(self, payload: dict[str, Any]) -> LLMRequest:
        return LLMRequest(messages=[Message(**m) for m in payload["messages"]], system=payload["system"],
                          temperature=self.config.temperature, max_tokens=payload["max_tokens"],
                          json_schema=payload["json_schema"], seed=payload["seed"])

    def _submit(self, job: dict[str, Any]) -> dict[str, Any]:
        """Create the round's job at Google, unless an earlier process did and stopped before storing its name."""
        name = self._with_retries(lambda: self.jobs.find(job["id"])) if job["state"] == "preparing" and \
            job.get("source") == "submitting" else None
        source = "found by its display name after a stop"
        if name is None:
            rows = self.db.rows("SELECT key, payload FROM batch_requests WHERE job_id=? ORDER BY rowid", [job["id"]])
            entries = [(r["key"], self._llm_request(loads(r["payload"]))) for r in rows]
            with self.db.write() as w:  # from here a stop may leave a job at Google we do not know the name of
                self._check_lease(w)
                w.execute("UPDATE batch_jobs SET source='submitting', updated_at=? WHERE id=?", [now(), job["id"]])
            tried = []

            def create() -> tuple[str, str]:
                # A create whose answer was lost (a timeout, a dropped connection) may have made the job all the
                # same: look for it before sending the same keys again.
                found = self.jobs.find(job["id"]) if tried else None
                tried.append(1)
                return (found, "found by its display name after a lost answer") if found else \
                    self.jobs.submit(entries, job["id"])

            name, source = self._with_retries(create)
        with self.db.write() as w:
            w.execute("UPDATE batch_jobs SET name=?, source=?, state='PENDING', updated_at=? WHERE id=?",
                      [name, source, now(), job["id"]])
        self._note(f"round {job['round']}: batch job {name} with {job['requests']} requests ({source})")
        return {**job, "name": name, "source": source, "state": "PENDING"}

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        """A Batch API call, retried with backoff while the error is transient (429, 5xx, network)."""
        delay = self.settings.batch_poll_s
        while True:
            try:
                return call()
            except LLMError as e:
                if not e.retryable:
                    raise
                if self.cancel_event.wait(max(delay, e.retry_after or 0)):
                    raise RunStopped("cancelled") from None
                delay = min(delay * 2, self.settings.batch_poll_max_s)

    def _poll(self, job: dict[str, Any]) -> Any:
        """Poll the job with backoff until it ends; None if the run stopped first (the job keeps running)."""
        from core.providers.gemini_batch import BatchStatus

        delay = self.settings.batch_poll_s
        state = job["state"]
        while True:
            if self.cancel_event.wait(delay):
                return None
            try:
                status = self._with_retries(lambda: self.jobs.status(job["name"]))
            except LLMError as e:
                if e.kind != "not_found":
                    raise
                # Deleted at Google, or past its retention while no process polled it: like a job that failed,
                # its requests go into the next round (the SDK's 404 message would blame the model name).
                status = BatchStatus(job["name"], "NOT_FOUND", error="the job no longer exists at Google")
            if status.state != state:
                state = status.state
                with self.db.write() as w:
                    w.execute("UPDATE batch_jobs SET state=?, error=?, updated_at=? WHERE id=?",
                              [state, status.error or None, now(), job["id"]])
            if status.done:
                return status
            delay = min(delay * 1.5, self.settings.batch_poll_max_s)

    # ---- results --------------------------------------------------------------------------------------------
    def _job_failed(self, job: dict[str, Any], status: Any) -> None:
        """A job that ended without results: its requests are asked again in the next round, under new keys."""
        self._note(f"round {job['round']}: batch job {job['name']} ended {status.state.lower()}; its "
                   f"{job['requests']} requests go into the next round")
        with self.db.write() as w:
            w.execute("UPDATE batch_requests SET status='failed', error=? WHERE job_id=? AND status='queued'",
                      [f"the batch job ended {status.state}: {status.error}"[:500], job["id"]])
            w.execute("UPDATE batch_jobs SET state='applied', error=?, updated_at=? WHERE id=?",
                      [f"{status.state}: {status.error}"[:500], now(), job["id"]])

    def _apply(self, job: dict[str, Any], results: dict[str, LLMResult | LLMError]) -> None:
        """Every request's result, each applied in its own transaction (a stop mid-way re-applies only the rest)."""
        rows = self.db.rows("SELECT * FROM batch_requests WHERE job_id=? AND status='queued' ORDER BY rowid",
                            [job["id"]])
        accepted = 0
        for row in rows:
            result = results.get(row["key"]) or LLMError("Gemini's batch results have no entry for this request.",
                                                         kind="server", retryable=True)
            if isinstance(result, LLMResult):
                self.monitor.record_call(0.0, result.prompt_tokens, result.completion_tokens, result.thinking_tokens)
            else:
                self.monitor.record_call_error(result.kind)
            payload = loads(row["payload"])
            if row["purpose"] == "instruction":
                accepted += self._apply_questions(row, payload, result)
            else:
                accepted += self._apply_turn(row, payload, result)
        with self.db.write() as w:
            w.execute("UPDATE batch_jobs SET state='applied', updated_at=? WHERE id=?", [now(), job["id"]])
        self._note(f"round {job['round']}: {accepted}/{len(rows)} replies accepted; "
                   f"{self._count('done')}/{self.config.num_dialogs} conversations saved")

    def _check_reply(self, prepared: PreparedCall, result: LLMResult | LLMError) -> tuple[Any, str]:
        """(checked reply or None, why not): an entry error, a reply the checks reject, or a reply with no text."""
        if isinstance(result, LLMError):
            if result.kind in asked_again(prepared.purpose):
                return None, {"max_tokens": TRUNCATED, "empty": "empty", "malformed": NOT_JSON}.get(result.kind, BLOCKED)
            return None, f"error: {result}"
        try:
            checked = prepared.check(result)
        except LLMError as e:  # a structured reply that is not JSON
            return None, f"rejected: {e}"
        return (checked, "") if checked.ok else (None, checked.reason)

    def _apply_questions(self, row: dict[str, Any], payload: dict[str, Any], result: LLMResult | LLMError) -> int:
        passages = self.simulator.retriever.passages_by_id(payload["briefing_ids"])
        prepared, plan = self.simulator.questions_call(passages, payload["n"], random.Random(payload["plan_seed"]))
        checked, why = self._check_reply(prepared, result)
        questions: list[Question] = []
        if checked is not None:
            record = CallRecord("instruction", prepared.system, [asdict(m) for m in prepared.messages], result,
                                text=checked.text)
            questions = questions_from(checked.questions[:payload["n"]], plan, record, passages)
            if self.config.retrieval == "rag":
                for q, found in zip(questions, self.simulator.retriever.search_many(
                        [q.text for q in questions], self.config.top_k, mode=self.config.retrieval_mode,
                        conversation_docs=[q.briefing_documents for q in questions], anchored=True)):
                    q.first_passages = found
        elif not why.startswith("error"):
            self.simulator._reject("instruction", why)
        with self.db.write() as w:
            if not self._take(w, row, "accepted" if questions else "failed" if why.startswith("error") else
                              "rejected", why):
                return 0
            call_id = store_call(w, self.run_id, None, record) if questions else None
            for item_id in payload["items"]:
                item = w.execute("SELECT * FROM work_items WHERE id=?", [item_id]).fetchone()
                if item is None or item["status"] != "pending" or item["question"]:
                    continue
                if not questions:
                    self._step_failed(w, dict(item), {}, why)
                    continue
                q = questions.pop(0)
                q.meta["instruction_call_id"] = call_id
                state = {"turns": [{"role": "user", "content": q.text, "retrieval": None, "query": None, "call": None}],
                         "first_passages": [p.as_dict() for p in q.first_passages] if q.first_passages is not None
                         else None}
                w.execute("UPDATE work_items SET question=?, briefing_ids=?, batch_state=?, updated_at=? WHERE id=?",
                          [q.text, dumps({"ids": q.briefing_ids, "meta": q.meta}), dumps(state), now(), item_id])
        return 1 if checked is not None else 0

    def _apply_turn(self, row: dict[str, Any], payload: dict[str, Any], result: LLMResult | LLMError) -> int:
        item = self.db.one("SELECT * FROM work_items WHERE id=?", [row["work_item_id"]])
        if item is None or item["status"] != "pending" or not item["question"]:
            with self.db.write() as w:
                self._take(w, row, "failed", "the conversation ended before its reply came")
            return 0
        state, extra = self._state(item)
        if row["purpose"] == "respondent":
            passages = TurnPassages(payload["query"], [Passage.from_dict(p) for p in payload["new"]],
                                    [Passage.from_dict(p) for p in payload["carried"]])
            prepared = self.simulator.respondent_call(state.history, passages.new, passages.carried)
        else:
            prepared = self.simulator.follow_up_call(state.history, state.question)
        checked, why = self._check_reply(prepared, result)
        if checked is None and not why.startswith("error"):
            self.simulator._reject(row["purpose"], why)
        conversation_id = None
        with self.db.write() as w:
            if not self._take(w, row, "accepted" if checked is not None else
                              "failed" if why.startswith("error") else "rejected", why):
                return 0
            if checked is None:
                if why == TRUNCATED:
                    extra["max_tokens"] = min(2 * payload["max_tokens"], MAX_TOKENS_CAP)
                self._step_failed(w, item, extra, why)
                return 0
            record = CallRecord(row["purpose"], prepared.system, [asdict(m) for m in prepared.messages], result,
                                text=checked.text, query=getattr(checked, "query", ""), trimmed=checked.trimmed)
            if row["purpose"] == "respondent":
                shown = [*passages.new, *passages.carried]
                used_ids = {p.id for p in used_passages(record.text, shown)}
                turn = {"role": "assistant", "content": record.text, "query": passages.query, "call": record,
                        "retrieval": [{**p.as_dict(), "used": p.id in used_ids} for p in shown]}
            else:
                turn = {"role": "user", "content": record.text, "retrieval": None, "query": None, "call": record}
                extra["proposed_query"] = record.query
            state.turns.append(turn)
            extra.update(tries=0, errors=0, max_tokens=0)
            answers = sum(1 for t in state.turns if t["role"] == "assistant")
            if answers >= item["turns"]:
                conversation_id = self._save_batch(w, item, state)
            else:
                w.execute("UPDATE work_items SET batch_state=?, updated_at=? WHERE id=?",
                          [dumps(self._dump_state(state, extra)), now(), item["id"]])
        if conversation_id:
            self.monitor.record_saved(item["turns"])
            if self.config.output:
                self._append_jsonl(conversation_id)
            self._saved(conversation_id)
        return 1

    def _take(self, w, row: dict[str, Any], status: str, why: str) -> bool:
        """Mark a request applied, inside the transaction that applies it; False if it was applied already."""
        self._check_lease(w)
        return w.execute("UPDATE batch_requests SET status=?, error=? WHERE key=? AND status='queued'",
                         [status, why or None, row["key"]]).rowcount == 1

    def _check_lease(self, w) -> None:
        if w.execute("SELECT owner_token FROM runs WHERE id=?", [self.run_id]).fetchone()[0] != self.token:
            raise RunStopped(f"another process took over run {self.run_id}; nothing more is saved here")

    def _step_failed(self, w, item: dict[str, Any], extra: dict[str, Any], why: str) -> None:
        """A call that failed or was rejected is asked again next round, until its conversation runs out of tries."""
        error = why.startswith("error")
        counter = "errors" if error else "tries"
        extra[counter] = extra.get(counter, 0) + 1
        limit = ENTRY_RETRIES if error else self.config.reply_retries + 1
        if extra[counter] < limit:
            w.execute("UPDATE work_items SET batch_state=?, updated_at=? WHERE id=?",
                      [dumps({**loads(item["batch_state"], {}), **extra}) if item["batch_state"] else
                       dumps(extra), now(), item["id"]])
            return
        # Like a live conversation that fails: a new attempt with a new question, or failed and replaced.
        attempts = item["attempts"] + 1
        final = attempts >= self.config.max_conversation_attempts
        message = f"the {'call failed' if error else 'reply was rejected'} {extra[counter]} times; last: {why}"[:1000]
        self.monitor.record_failed(final)
        if final:
            w.execute("UPDATE work_items SET status='failed', attempts=?, error=?, updated_at=? WHERE id=?",
                      [attempts, message, now(), item["id"]])
            self._add_replacement(w)
        else:
            w.execute("UPDATE work_items SET attempts=?, error=?, question=NULL, briefing_ids=NULL, batch_state=NULL, "
                      "updated_at=? WHERE id=?", [attempts, message, now(), item["id"]])
        w["events"].insert({"ts": now(), "actor": "engine", "kind": "conversation_failed", "run_id": self.run_id,
                            "payload": dumps({"item": item["id"], "attempt": attempts, "error": message,
                                              "final": final})})

    # ---- a conversation between rounds ---------------------------------------------------------------------
    def _state(self, item: dict[str, Any]) -> tuple[ConversationState, dict[str, Any]]:
        """The conversation so far (as the simulator holds it) and its retry counters, from the work item."""
        meta = loads(item["briefing_ids"], {})
        ids = meta.get("ids", [])
        briefing = self.simulator.retriever.passages_by_id(ids)
        question = Question(item["question"], meta.get("meta", {}), ids, format_briefing(briefing),
                            briefing_passages=briefing)
        stored = loads(item["batch_state"], {}) or {}
        turns = stored.get("turns") or [{"role": "user", "content": item["question"], "retrieval": None,
                                         "query": None, "call": None}]
        if stored.get("first_passages") is not None:
            question.first_passages = [Passage.from_dict(p) for p in stored["first_passages"]]
        state = self.simulator.resume(question, turns)
        for turn, saved in zip(state.turns, turns):
            turn["call"] = _call_from(saved.get("call"))
        state.calls = [t["call"] for t in state.turns if t["call"] is not None]
        state.proposed_query = stored.get("proposed_query", "")
        extra = {k: stored.get(k, 0) for k in ("tries", "errors", "max_tokens")}
        extra["proposed_query"] = state.proposed_query
        return state, extra

    @staticmethod
    def _dump_state(state: ConversationState, extra: dict[str, Any]) -> dict[str, Any]:
        first = state.question.first_passages
        return {"turns": [{**t, "call": _call_dict(t["call"])} for t in state.turns],
                "first_passages": [p.as_dict() for p in first] if first is not None else None, **extra}

    def _save_batch(self, w, item: dict[str, Any], state: ConversationState) -> str:
        provider, model = self._provider_identity()
        conversation_id = store_conversation(
            w, run_id=self.run_id, work_item_id=item["id"], provider=provider, model=model,
            prompt_versions=self.config.prompt_versions, question=state.question,
            result={"turns": state.turns, "calls": [t["call"] for t in state.turns if t["call"] is not None]},
            turns=item["turns"])
        w.execute("UPDATE work_items SET status='done', conversation_id=?, error=NULL, batch_state=NULL, updated_at=? "
                  "WHERE id=?", [conversation_id, now(), item["id"]])
        w.execute("UPDATE runs SET saved = saved + 1 WHERE id=?", [self.run_id])
        return conversation_id


def _call_dict(record: CallRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"purpose": record.purpose, "system_prompt": record.system_prompt, "messages": record.messages,
            "result": asdict(record.result), "text": record.text, "query": record.query, "trimmed": record.trimmed}


def _call_from(data: dict[str, Any] | None) -> CallRecord | None:
    if not data:
        return None
    return CallRecord(data["purpose"], data["system_prompt"], data["messages"], LLMResult(**data["result"]),
                      text=data["text"], query=data["query"], trimmed=data["trimmed"])
