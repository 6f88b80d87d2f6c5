"""The generation engine against the real google-genai client and the fake Gemini server, on real data dirs."""

import collections
import json
import re
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from core.db import loads
from core.generation.engine import AdaptiveGate, GenerationRun, RunConfig
from fakes.gemini import Fault, FakeGemini
from core.providers.gemini import GeminiProvider
from tests.conftest import ROOT

KEY = "AIzaSy-engine-test-key-000000000000000"


@pytest.fixture
def fake():
    with FakeGemini(latency=0.02) as server:
        yield server


def gemini_settings(wb, fake, **changes):
    return wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, gemini_max_retries=4,
                               request_timeout=3.0, **changes)


def make_run(wb, fake, config=None, run_id=None, **settings_changes):
    settings = gemini_settings(wb, fake, **settings_changes)
    factory = lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01, max_backoff=0.05,  # noqa: E731
                                          max_retry_wait=1.0)
    return GenerationRun(settings, wb.db, wb.corpus, factory, config=config, run_id=run_id)


def conversations(wb, run_id):
    return wb.db.rows("SELECT * FROM conversations WHERE run_id=?", [run_id])


def test_turn_counts_are_uniform_within_max_turns_and_seeded(indexed_wb, fake):
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=40, max_turns=4, max_concurrency=8, seed=11))
    progress = run.run()
    assert progress.status == "completed" and progress.saved == 40
    counts = collections.Counter(c["num_turns"] for c in conversations(indexed_wb, run.run_id))
    assert set(counts) <= {1, 2, 3, 4} and len(counts) >= 3  # spread across the range
    assert max(counts.values()) <= 20
    # Same seed → same turn counts per slot.
    again = make_run(indexed_wb, fake, RunConfig(num_dialogs=40, max_turns=4, max_concurrency=8, seed=11))
    again.run()
    by_slot = lambda rid: sorted((w["slot"], c["num_turns"]) for w, c in zip(  # noqa: E731
        indexed_wb.db.rows("SELECT slot, conversation_id FROM work_items WHERE run_id=? ORDER BY conversation_id",
                           [rid]),
        indexed_wb.db.rows("SELECT id, num_turns FROM conversations WHERE run_id=? ORDER BY id", [rid])))
    assert by_slot(run.run_id) == by_slot(again.run_id)


def test_every_assistant_turn_stores_its_retrieval_and_calls(indexed_wb, fake):
    out = indexed_wb.settings.data_path / "out.jsonl"
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=6, max_turns=3, max_concurrency=3, top_k=3,
                                               output=str(out)))
    run.run()
    for c in conversations(indexed_wb, run.run_id):
        turns = indexed_wb.db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [c["id"]])
        roles = [t["role"] for t in turns]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))  # alternating
        assert roles.count("assistant") == c["num_turns"]
        for t in turns:
            assert t["content"].strip()
            if t["role"] == "assistant":
                # This turn's own top-k first, then passages carried from earlier turns (#13).
                passages = [p for p in loads(t["retrieval"]) if not p["carried"]]
                assert len(passages) == 3 and all(p["id"] and p["text"] and p["document_id"] for p in passages)
                assert passages[0]["score"] >= passages[-1]["score"]
        calls = indexed_wb.db.rows("SELECT purpose, system_prompt FROM calls WHERE conversation_id=?", [c["id"]])
        respondent = [x for x in calls if x["purpose"] == "respondent"]
        assert len(respondent) == c["num_turns"]
        # The prompt modifier put the retrieved passages, with their ids, into the respondent's system prompt.
        first = loads(turns[1]["retrieval"])[0]
        assert f'id="{first["id"]}"' in respondent[0]["system_prompt"]
        assert c["briefing"] and loads(c["briefing_ids"]) and c["prompt_tokens"] > 0 and c["thinking_tokens"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    row = rows[0]
    assert row["messages"][0]["role"] == "user" and row["messages"][-1]["role"] == "assistant"
    assert row["context"] and row["context_ids"] and row["run_id"] == run.run_id
    assert set(row["retrieved_context"][0]["passages"][0]) >= {"id", "score", "text", "document_id"}
    assert set(row["prompt_versions"]) == {"respondent", "correspondent", "instruction"}
    recipe = loads(indexed_wb.db.scalar("SELECT recipe FROM runs WHERE id=?", [run.run_id]))
    assert recipe["config"]["top_k"] == 3 and recipe["corpus"]["chunks"] > 0
    assert recipe["settings"]["embedding_model"] and KEY not in json.dumps(recipe)


def test_exactly_n_saved_with_faults_every_seventh_call(indexed_wb, fake):
    kinds = itertools_cycle(["rate_minute", "internal", "unavailable"])
    fake.fault_for = lambda n, body: (Fault(next(kinds), retry_delay=0.05) if n % 7 == 0 else None)
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=15, max_turns=3, max_concurrency=6))
    progress = run.run()
    assert progress.status == "completed"
    assert len(conversations(indexed_wb, run.run_id)) == 15  # never more: no overshoot
    assert fake.by_status[429] >= 1 and fake.by_status[500] >= 1 and fake.by_status[503] >= 1
    assert run.monitor.rate_limited >= 1


def itertools_cycle(items):
    import itertools

    return itertools.cycle(items)


def test_a_failing_conversation_is_replaced_and_never_sinks_the_batch(indexed_wb, fake):
    # Every 4th call comes back blocked by safety: not retried at the call level, so conversations fail.
    fake.fault_for = lambda n, body: "safety" if n % 4 == 0 else None
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=8, max_turns=3, max_concurrency=4,
                                               replacement_budget=30, max_conversation_attempts=2))
    progress = run.run()
    assert progress.status == "completed" and progress.saved == 8
    assert len(conversations(indexed_wb, run.run_id)) == 8
    events = indexed_wb.db.rows("SELECT payload FROM events WHERE run_id=? AND kind='conversation_failed'",
                                [run.run_id])
    assert events and "safety" in events[0]["payload"].lower()


def test_replacement_budget_bounds_failures_and_run_ends_incomplete(indexed_wb, fake):
    fake.fault_for = lambda n, body: "recitation"  # every call fails
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=3, max_turns=1, max_concurrency=2,
                                               replacement_budget=2, max_conversation_attempts=2))
    progress = run.run()
    assert progress.status == "incomplete" and progress.saved == 0
    assert "replacement budget" in progress.reason
    items = indexed_wb.db.scalar("SELECT COUNT(*) FROM work_items WHERE run_id=?", [run.run_id])
    assert items == 3 + 2


def test_daily_quota_stops_the_run_with_a_clear_reason_and_resume_finishes(indexed_wb, fake):
    fake.fault_for = lambda n, body: "rate_day" if n > 6 else None
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=10, max_turns=1, max_concurrency=2))
    progress = run.run()
    assert progress.status == "incomplete"
    assert "day" in progress.reason.lower()
    saved = len(conversations(indexed_wb, run.run_id))
    assert 0 < saved < 10
    fake.fault_for = None
    resumed = make_run(indexed_wb, fake, run_id=run.run_id).run()
    assert resumed.status == "completed" and len(conversations(indexed_wb, run.run_id)) == 10


def test_sustained_429s_end_the_run_within_bounded_time(indexed_wb, fake):
    # The first calls of a run are mostly instruction calls (the question pool is primed for two waves):
    # let enough succeed that a few conversations finish before the quota goes.
    fake.fault_for = lambda n, body: Fault("rate_minute", retry_delay=0.05) if n > 8 else None
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=20, max_turns=1, max_concurrency=4, stall_timeout_s=2.0))
    started = time.monotonic()
    progress = run.run()
    assert time.monotonic() - started < 30
    assert progress.status == "incomplete"
    assert "429" in progress.reason or "quota" in progress.reason.lower()
    assert progress.saved >= 1


def test_cancel_keeps_completed_conversations(indexed_wb, fake):
    fake.latency = 0.15
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=200, max_turns=2, max_concurrency=4))
    t = threading.Thread(target=run.run)
    t.start()
    deadline = time.monotonic() + 60
    while run.monitor.saved < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    run.cancel()
    t.join(30)
    assert not t.is_alive() and time.monotonic() - cancelled_at < 5
    progress = run.progress()
    assert progress.status == "incomplete" and "cancelled" in progress.reason
    saved = conversations(indexed_wb, run.run_id)
    assert len(saved) == progress.saved >= 3
    states = collections.Counter(r["status"] for r in indexed_wb.db.rows(
        "SELECT status FROM work_items WHERE run_id=?", [run.run_id]))
    assert states["in_flight"] == 0 and states["done"] == len(saved)


def test_adaptive_gate_halves_on_429_and_grows_back():
    gate = AdaptiveGate(max_concurrency=32)
    gate.record_rate_limited(None)  # one 429 alone is no congestion (tests/test_gate.py)
    assert gate.limit == 32
    for _ in range(5):
        gate.record_rate_limited(None)
    assert gate.limit == 16
    for _ in range(6):
        gate.record_rate_limited(None)  # same round trip: one congestion signal, halved once
    assert gate.limit == 16
    for _ in range(200):
        gate.record_success()
    assert 20 < gate.limit <= 32
    in_flight = []
    gate.limit = 2

    def hold():
        with gate.attempt():
            in_flight.append(gate.in_flight)
            time.sleep(0.05)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(in_flight) <= 2


def test_sigkill_then_resume_gives_exactly_n(indexed_wb):
    with FakeGemini(latency=0.25) as fake:
        env = {**os.environ, "GROUNDWORK_DATA_DIR": str(indexed_wb.settings.data_path), "GEMINI_API_KEY": KEY,
               "GOOGLE_GEMINI_BASE_URL": fake.base_url, "HF_HUB_OFFLINE": "1"}
        indexed_wb.close()
        out = indexed_wb.settings.data_path / "kill.jsonl"
        cmd = [sys.executable, "-m", "core.cli", "generate", "--num-dialogs", "10", "--max-turns", "2",
               "--max-concurrency", "2", "--provider", "gemini", "--output", str(out), "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        from core.db import Database

        db = Database(indexed_wb.settings.db_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (db.scalar("SELECT COUNT(*) FROM conversations") or 0) >= 3:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        run_id = db.scalar("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")
        before = db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=?", [run_id])
        assert 3 <= before < 10
        # The killed run's row still says running; `runs` sees that nobody renews its lease.
        listed = subprocess.run([sys.executable, "-m", "core.cli", "runs"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
        line = next(row for row in listed.stdout.splitlines() if row.startswith(run_id))
        assert " interrupted " in line and f"resume with: groundwork generate --resume {run_id}" in line, line
        resumed = subprocess.run([sys.executable, "-m", "core.cli", "generate", "--resume", run_id, "--quiet"],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert "completed — 10/10" in resumed.stdout
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=?", [run_id]) == 10
        # Conversations are checked as they are saved (a background worker): what the killed process saved but
        # did not check, the resumed one checks, so every one of the ten ends checked.
        checked = re.search(r"grounding checks: (\d+) conversation\(s\) checked", resumed.stdout)
        assert checked and 1 <= int(checked.group(1)) <= 10, resumed.stdout
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=? AND grounded_at IS NULL", [run_id]) == 0
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert len(ids) == 10 and len(set(ids)) == 10
        db.close()


@pytest.mark.timed
def test_gate_learns_a_rate_quota_from_the_first_cluster_of_429s_and_paces_under_it():
    gate = AdaptiveGate(max_concurrency=8)
    for _ in range(20):
        with gate.attempt():
            pass
        gate.record_success()
    for _ in range(6):  # the window is full: every call in flight is answered 429, RetryInfo 0.5 s
        gate.record_rate_limited(retry_after=0.5, metric="requests")
    learned_at = time.monotonic()
    requests, window = gate.learned_quota
    assert requests == 19 and 1.0 <= window < 2.0  # 97% of the 20 that went through; windows of 1 s at least
    # Paced from now on: no more than 19 attempts start within any one window, spread evenly.
    # Each release lies between the moment we asked (before) and the moment we noticed (after): bounds that hold
    # however late a loaded machine schedules this thread, so a failure below is the gate's, never the clock's.
    before, after = [], []
    for _ in range(20):  # (a window later the pace is probed 10% higher: see tests/test_gate.py)
        before.append(time.monotonic())
        with gate.attempt():
            after.append(time.monotonic())
        gate.record_success()
    assert after[0] - learned_at >= 0.8 * window  # held back until the window frees
    assert after[19] - before[0] >= window * 0.9
    assert all(after[i + 1] - before[i] >= window / 20 for i in range(19))


def test_query_embeddings_from_many_threads_match_single_encodes(embedder):
    import numpy as np

    texts = [f"Was the deposit of ${100 + i} returned within 21 days?" for i in range(24)]
    expected = embedder.encode(texts)
    results = [None] * len(texts)

    def work(i):
        results[i] = embedder.encode_query(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.allclose(np.vstack(results), expected, atol=1e-5)


def test_token_budget_stops_cleanly_and_the_run_resumes(indexed_wb, fake):
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=12, max_turns=2, max_concurrency=2, token_budget=12000))
    progress = run.run()
    # (12,000: respondent prompts carry earlier turns' passages and the data notice since #13)
    assert progress.status == "incomplete" and "token budget of 12,000 reached" in progress.reason
    assert 0 < progress.saved < 12
    states = collections.Counter(r["status"] for r in indexed_wb.db.rows(
        "SELECT status FROM work_items WHERE run_id=?", [run.run_id]))
    assert states["in_flight"] == 0 and states["done"] == progress.saved == len(conversations(indexed_wb, run.run_id))
    # Each resume gets the budget again: the run finishes, with exactly 12 and no duplicates.
    for _ in range(12):
        progress = make_run(indexed_wb, fake, run_id=run.run_id).run()
        if progress.status == "completed":
            break
    assert progress.status == "completed" and len(conversations(indexed_wb, run.run_id)) == 12


def test_gate_gives_a_free_slot_to_the_highest_priority_waiter_first():
    gate = AdaptiveGate(max_concurrency=1)
    order = []
    holding, release = threading.Event(), threading.Event()

    def hold():
        with gate.attempt():
            holding.set()
            release.wait(5)

    def wait_for_slot(priority):
        with gate.attempt(priority):
            order.append(priority)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    waiters = []
    for priority in (1, 5, 3, 5):  # equal priorities: first come, first served
        waiters.append(threading.Thread(target=wait_for_slot, args=(priority,)))
        waiters[-1].start()
        time.sleep(0.05)
    release.set()
    for t in [holder, *waiters]:
        t.join(5)
    assert order == [5, 5, 3, 1]
    assert gate.in_flight == 0 and not gate._queue


def test_cancel_while_queued_at_the_gate_leaves_no_ticket_behind():
    from core.generation.engine import RunStopped

    gate = AdaptiveGate(max_concurrency=1)
    errors = []
    with gate.attempt():
        def queued():
            try:
                with gate.attempt(3):
                    pass
            except RunStopped as e:
                errors.append(str(e))

        t = threading.Thread(target=queued)
        t.start()
        time.sleep(0.1)
        gate.cancelled.set()
        t.join(5)
    assert errors == ["cancelled"] and not gate._queue


def test_longest_conversations_are_reserved_first(indexed_wb, fake):
    # One call slot means one worker and no prefetching: conversations are saved in reservation order.
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=12, max_turns=4, max_concurrency=1, seed=3))
    assert run.run().saved == 12
    turns = [r["num_turns"] for r in indexed_wb.db.rows(
        "SELECT num_turns FROM conversations WHERE run_id=? ORDER BY rowid", [run.run_id])]
    assert turns == sorted(turns, reverse=True) and len(set(turns)) > 1
    items = indexed_wb.db.rows("SELECT w.turns, c.num_turns FROM work_items w JOIN conversations c "
                               "ON c.id = w.conversation_id WHERE w.run_id=?", [run.run_id])
    assert all(i["turns"] == i["num_turns"] for i in items)


def test_more_workers_than_call_slots_never_exceed_max_concurrency(indexed_wb):
    with FakeGemini(latency=0.1) as fake:
        run = make_run(indexed_wb, fake, RunConfig(num_dialogs=20, max_turns=3, max_concurrency=4))
        assert run.run().saved == 20
        assert fake.max_concurrency == 4  # saturated, never above


def test_questions_written_but_not_taken_are_kept_for_the_resume(indexed_wb, fake):
    from core.generation.engine import Question, QuestionPool

    calls = []

    def make_batch(n):
        calls.append(n)
        return [Question(f"question {len(calls)}.{i}", {}, ["c1"], "briefing") for i in range(n)]

    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=6, max_turns=3, max_concurrency=2))
    pool = QuestionPool(make_batch, per_call=3, unasked=run._unasked_items)
    pool.prime(5)  # 5 questions wanted: a call of 3 and one of 2
    first = pool.take(lambda: 6, lambda: False)
    left = pool.close()
    written = {f"question {c}.{i}" for c, n in ((1, 3), (2, 2)) for i in range(n)}
    assert calls == [3, 2] and len(left) == 4 and {first.text, *(q.text for q in left)} == written
    run._park_questions(left)
    parked = indexed_wb.db.rows("SELECT turns, question FROM work_items WHERE run_id=? AND question IS NOT NULL "
                                "ORDER BY turns DESC, slot", [run.run_id])
    assert [p["question"] for p in parked] == [q.text for q in left]
    unparked = indexed_wb.db.rows("SELECT turns FROM work_items WHERE run_id=? AND question IS NULL", [run.run_id])
    assert min(p["turns"] for p in parked) >= max(u["turns"] for u in unparked)  # the longest items got them
    # The resumed run uses the parked questions before writing new ones.
    progress = make_run(indexed_wb, fake, run_id=run.run_id).run()
    assert progress.saved == 6
    asked = {c["question"] for c in conversations(indexed_wb, run.run_id)}
    assert {q.text for q in left} <= asked


def test_a_collection_that_fails_to_load_in_the_background_stops_the_run_with_its_message(indexed_wb, fake):
    from core.errors import ModelMismatchError

    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=4, max_turns=2, max_concurrency=4))
    def verify(store=None, probes=3):  # what Corpus.verify raises for a collection built with another model
        raise ModelMismatchError("vectors from another model")

    indexed_wb.corpus.verify = verify
    with pytest.raises(ModelMismatchError, match="another model"):
        run.run()
    row = indexed_wb.db.one("SELECT status, reason, saved FROM runs WHERE id=?", [run.run_id])
    assert row["status"] == "incomplete" and "another model" in row["reason"] and row["saved"] == 0


def test_a_large_edge_collection_is_searched_live_and_held_for_the_run(indexed_wb, fake, monkeypatch):
    from core.generation import engine
    from core.corpus.edge_store import EdgeStore

    monkeypatch.setattr(engine, "SNAPSHOT_MAX_POINTS", 10)  # the sample corpus (190 chunks) counts as large
    searches = []
    original = EdgeStore.search

    def counted(self, collection, vector, k, flt=None):
        searches.append(indexed_wb.corpus.stores._users)
        return original(self, collection, vector, k, flt)

    monkeypatch.setattr(EdgeStore, "search", counted)
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=6, max_turns=3, max_concurrency=3, seed=5))
    assert run.run().saved == 6
    turns = indexed_wb.db.rows("SELECT t.retrieval FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                               "WHERE c.run_id=? AND t.role='assistant'", [run.run_id])
    assert turns and all(loads(t["retrieval"]) for t in turns)
    # Every assistant turn was a store search (plus the model probe), made while the run held the store.
    assert len(searches) >= len(turns) and min(searches) >= 2
    assert indexed_wb.corpus.stores._users == 0


def test_briefing_mode_searches_nothing_so_it_needs_no_verified_collection(indexed_wb, fake):
    from core.errors import ModelMismatchError

    def verify(store=None, probes=3):
        raise ModelMismatchError("vectors from another model")

    indexed_wb.corpus.verify = verify
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=3, max_turns=2, max_concurrency=2, retrieval="briefing"))
    progress = run.run()
    assert progress.status == "completed" and progress.saved == 3


def test_a_failed_query_pass_reaches_every_waiting_caller(embedder, monkeypatch):
    from core.errors import EmbeddingError

    started = threading.Event()

    def broken_pass(texts):
        started.set()
        time.sleep(0.2)  # long enough for the second caller to queue behind this pass
        raise RuntimeError("out of memory")

    monkeypatch.setattr(embedder, "_encode_query_pass", broken_pass)
    errors = []

    def ask(text):
        try:
            embedder.encode_queries([text])
        except EmbeddingError as e:
            errors.append(str(e))

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    started.wait(5)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join(10)
    second.join(10)
    assert len(errors) == 2 and all("out of memory" in e for e in errors)


def test_daily_quota_advice_says_when_it_resets_and_never_suggests_pacing(indexed_wb, fake):
    import re

    from core.generation.monitor import RunMonitor

    fake.fault_for = lambda n, body: "rate_day" if n > 6 else None
    run = make_run(indexed_wb, fake, RunConfig(num_dialogs=10, max_turns=1, max_concurrency=4))
    progress = run.run()
    assert re.search(r"resets at midnight Pacific time \(in \d+ h \d+ min, at 0[78]:00 UTC\)", progress.reason), \
        progress.reason
    # However many 429s the daily quota caused, no advice about concurrency or per-minute pacing.
    monitor = RunMonitor("r", 10)
    for _ in range(10):
        monitor.record_call(0.1, 10, 10, 0)
        monitor.record_rate_limited("quota_day")
    texts = [a.message for a in monitor.check_alerts()] + [progress.reason] + [a.message for a in run.monitor.alerts]
    assert not any(re.search(r"(?i)concurrency|per-minute|per minute|RPM", t) for t in texts), texts


def test_per_minute_quota_advice_says_what_the_run_does_about_it():
    from core.generation.monitor import RunMonitor

    monitor = RunMonitor("r", 10)
    for _ in range(10):
        monitor.record_call(0.1, 10, 10, 0)
        monitor.record_rate_limited("rate_limited")
    (alert,) = [a for a in monitor.check_alerts() if a.name == "rate_limited"]
    assert "learns the quota (requests or tokens per window) from a cluster of them and paces its calls" in alert.message
    assert "GROUNDWORK_RPM_LIMIT" in alert.message
