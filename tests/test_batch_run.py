"""Batch mode (`generate --batch`): rounds of Gemini Batch API jobs, through the real google-genai client and
the fake server's batch endpoints; resumable, never sending a request key twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.generation.batch_run import BatchGenerationRun, generation_run
from core.generation.cost import estimate_run
from core.generation.engine import RunOwnedError
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.generation.run_config import RunConfig
from core.workbench import Workbench

from tests.conftest import ROOT

KEY = "AIzaSy-batch-test-key-0000000000000000"
FAST = {"batch_poll_s": 0.02, "batch_poll_max_s": 0.1}


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY) as server:
        server.batch_pending_s, server.batch_running_s = 0.05, 0.1
        yield server


def batch_run(wb, fake, config=None, run_id=None, **settings_changes):
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url,
                                   **{"request_timeout": 5.0, **FAST, **settings_changes})
    factory = lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01, max_backoff=0.05)  # noqa: E731
    return generation_run(settings, wb.db, wb.corpus, factory, config=config, run_id=run_id)


def keys_unique(fake):
    return len(fake.batch_keys_submitted) == len(set(fake.batch_keys_submitted))


def run_until_a_job_is_named(wb, fake, config):
    """Start a batch run in a thread and return once its first job's name is stored (the job is at "Google")."""
    import threading

    run = batch_run(wb, fake, config)
    worker = threading.Thread(target=run.run)
    worker.start()
    deadline = time.monotonic() + 60
    while not wb.db.scalar("SELECT name FROM batch_jobs WHERE run_id=?", [run.run_id]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return run, worker


def test_batch_rounds_save_exactly_n_grounded_conversations_and_failed_entries_go_into_the_next_round(indexed_wb, fake):
    failed = []

    def fault(key, request):  # the second round (the first answers) loses two entries, as a real batch can
        if "-r2-" in key and len(failed) < 2:
            failed.append(key)
            return 503
        return None

    fake.batch_entry_fault = fault
    fake.batch_create_faults.extend([429, 503])  # the first creation is refused twice (no details): back off, retry
    run = batch_run(indexed_wb, fake, RunConfig(num_dialogs=5, max_turns=2, seed=3, batch=True))
    assert isinstance(run, BatchGenerationRun)
    progress = run.run()
    assert progress.status == "completed" and progress.saved == 5
    db = indexed_wb.db
    conversations = db.rows("SELECT * FROM conversations WHERE run_id=?", [run.run_id])
    assert len(conversations) == 5
    for c in conversations:  # stored exactly like a live run's conversation
        turns = db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [c["id"]])
        assert [t["role"] for t in turns] == ["user", "assistant"] * c["num_turns"]
        for t in turns:
            if t["role"] == "assistant":
                passages = json.loads(t["retrieval"])
                assert passages and all(p["text"] and p["document_id"] for p in passages)
                assert t["query"]
        purposes = [r["purpose"] for r in db.rows("SELECT purpose FROM calls WHERE conversation_id=? ORDER BY id",
                                                  [c["id"]])]
        assert purposes == (["respondent", "correspondent"] * c["num_turns"])[:2 * c["num_turns"] - 1]
        assert json.loads(c["question_meta"])["instruction_call_id"]
    # The two failed entries were asked again in a later round, under new keys, and nothing was sent twice.
    assert len(failed) == 2 and keys_unique(fake)
    # A failed entry is a turn of one conversation or (when round 1 left a question unwritten) the questions of
    # several: either way each conversation it served was asked again and answered in a later round.
    accepted = db.rows("SELECT key, work_item_id, purpose, payload FROM batch_requests WHERE run_id=? AND "
                       "status='accepted'", [run.run_id])
    for r in db.rows("SELECT key, work_item_id, purpose, payload FROM batch_requests WHERE key IN (?, ?)", failed):
        items = json.loads(r["payload"])["items"] if r["purpose"] == "instruction" else [r["work_item_id"]]
        for item in items:
            assert any(a["key"] not in failed and a["purpose"] == r["purpose"] and
                       (item in json.loads(a["payload"]).get("items", []) if r["purpose"] == "instruction"
                        else a["work_item_id"] == item) for a in accepted), (r["key"], r["purpose"], item)
    assert db.scalar("SELECT COUNT(*) FROM batch_requests WHERE status='failed'") == 2
    # Every round was one job at Google, polled to its end and applied.
    jobs = db.rows("SELECT * FROM batch_jobs WHERE run_id=? ORDER BY round", [run.run_id])
    assert len(jobs) == len(fake.batch_jobs) >= 4 and {j["state"] for j in jobs} == {"applied"}
    assert fake.by_status[429] == 1 and fake.by_status[503] == 1 and not fake.batch_create_faults
    assert all(j["source"] == "inline" for j in jobs)


def test_above_the_inline_limit_a_round_goes_as_an_uploaded_file_and_a_failed_job_is_sent_again(indexed_wb, fake):
    fake.batch_outcomes.extend(["SUCCEEDED", "EXPIRED"])  # the second job expires: its requests go again
    # The first creation's answer is lost (the client times out) although the job was made: found, not resent.
    fake.batch_create_faults.append("timeout")
    # The client gives up after 4 s, the fake answers that creation after 6 s: roomy enough that no other call of
    # the run times out on a loaded machine (a timed-out upload or poll would make this test count rounds wrongly).
    fake.batch_timeout_s = 6.0
    run = batch_run(indexed_wb, fake, RunConfig(num_dialogs=3, max_turns=1, seed=5, batch=True),
                    batch_inline_bytes=2000, request_timeout=4.0)
    progress = run.run()
    assert progress.status == "completed" and progress.saved == 3
    jobs = indexed_wb.db.rows("SELECT * FROM batch_jobs WHERE run_id=? ORDER BY round", [run.run_id])
    assert all(j["source"].startswith("files/") for j in jobs[1:])
    assert len(fake.files) == 2 * len(jobs) - 1  # every round uploaded its requests; all but the expired one got results
    assert "EXPIRED" in jobs[1]["error"] and len(jobs) == len(fake.batch_jobs) >= 3
    # Every request of the expired round was asked again later. A third round is the least that takes; a later
    # one only re-asks what an earlier round did not answer well (a loaded machine can make a reply arrive
    # rejected or a poll fail once): each conversation has exactly one accepted answer, and nothing after it.
    requests = indexed_wb.db.rows("SELECT r.*, j.round FROM batch_requests r JOIN batch_jobs j ON j.id = r.job_id "
                                  "WHERE r.run_id=? ORDER BY j.round, r.rowid", [run.run_id])
    table = [(r["round"], r["purpose"], r["work_item_id"], r["status"], (r["error"] or "")[:60]) for r in requests]
    expired = [r for r in requests if r["round"] == 2]
    assert expired and all(r["status"] == "failed" and "EXPIRED" in r["error"] for r in expired), table
    for item in {r["work_item_id"] for r in requests if r["purpose"] == "respondent"}:
        mine = [r for r in requests if r["work_item_id"] == item]
        assert [r["status"] for r in mine].count("accepted") == 1 and mine[-1]["status"] == "accepted", table
    assert jobs[0]["source"].startswith("found by its display name") and keys_unique(fake)
    uploads = sum(n for path, n in fake.by_path.items() if path.startswith("/upload/") and path.endswith("/files"))
    assert uploads == 2 * len(jobs)  # the resumable protocol: a start, then the bytes with "upload, finalize"


def test_batch_mode_needs_gemini_and_says_so_in_one_line(tmp_path):
    env = {**os.environ, "GROUNDWORK_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    for provider in ("local", "openai"):
        out = subprocess.run([sys.executable, "-m", "core.cli", "generate", "--batch", "--provider", provider],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert out.stderr.strip().startswith("error: Batch mode needs Gemini") and len(out.stderr.splitlines()) == 1


def test_the_estimate_uses_batch_prices(wb):
    texts = {"respondent": "r" * 400, "correspondent": "c" * 400, "instruction": "i" * 400}
    live = estimate_run(wb.db, RunConfig(num_dialogs=1000), "gemini-2.5-flash", texts)
    batch = estimate_run(wb.db, RunConfig(num_dialogs=1000, batch=True), "gemini-2.5-flash", texts)
    assert batch.calls == live.calls and batch.cost_usd == pytest.approx(live.cost_usd / 2)
    assert "Batch API prices" in batch.basis and "Batch" not in live.basis


def test_sigkill_while_a_job_runs_then_resume_polls_it_and_saves_exactly_n(indexed_wb, embedder):
    with FakeGemini(api_key=KEY) as fake:
        fake.batch_pending_s, fake.batch_running_s = 0.05, 0.1
        env = {**os.environ, "GROUNDWORK_DATA_DIR": str(indexed_wb.settings.data_path), "GEMINI_API_KEY": KEY,
               "GOOGLE_GEMINI_BASE_URL": fake.base_url, "HF_HUB_OFFLINE": "1", "GROUNDWORK_BATCH_POLL_S": "0.05",
               "GROUNDWORK_BATCH_POLL_MAX_S": "0.2"}
        indexed_wb.close()
        out = indexed_wb.settings.data_path / "batch.jsonl"
        cmd = [sys.executable, "-m", "core.cli", "generate", "--batch", "--num-dialogs", "6", "--max-turns", "2",
               "--provider", "gemini", "--output", str(out), "--quiet"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        from core.db import Database

        db = Database(indexed_wb.settings.db_path)
        deadline = time.monotonic() + 120
        held = None
        while time.monotonic() < deadline and held is None:
            # Once the first answers' round is submitted, hold it RUNNING at "Google" and kill the process.
            if len(fake.batch_jobs) >= 2:
                fake.batch_running_s = 3600
                job = list(fake.batch_jobs.values())[1]
                if db.scalar("SELECT COUNT(*) FROM batch_jobs WHERE name=?", [f"batches/{job['id']}"]):
                    held = job
            time.sleep(0.02)
        assert held is not None, proc.communicate(timeout=5)
        while fake._state(held) != "RUNNING":
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        run_id = db.scalar("SELECT id FROM runs ORDER BY created_at DESC LIMIT 1")
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=?", [run_id]) < 6
        jobs_before = len(fake.batch_jobs)
        fake.batch_running_s = 0.1
        # The resume runs here, in the test's process (a second CLI start-up would only add time): it takes the
        # dead process's lease like any resume.
        wb = Workbench(indexed_wb.settings, store_idle_close_s=0, embedder=embedder)
        try:
            run = batch_run(wb, fake, run_id=run_id)
            assert isinstance(run, BatchGenerationRun) and run.config.batch
            progress = run.run()
        finally:
            wb.close()
        assert progress.status == "completed" and progress.saved == 6
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=?", [run_id]) == 6
        # The resume polled the job that was running when the process died instead of sending it again.
        assert db.scalar("SELECT state FROM batch_jobs WHERE name=?", [f"batches/{held['id']}"]) == "applied"
        assert len(fake.batch_jobs) > jobs_before and keys_unique(fake)
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert len(ids) == 6 and len(set(ids)) == 6
        db.close()


def test_a_stop_between_creating_a_job_and_storing_its_name_finds_the_job_instead_of_sending_it_again(indexed_wb,
                                                                                                     fake):
    fake.batch_running_s = 3600  # the first round stays RUNNING at "Google"
    run, worker = run_until_a_job_is_named(indexed_wb, fake, RunConfig(num_dialogs=3, max_turns=1, seed=7, batch=True))
    with pytest.raises(RunOwnedError):  # polling holds the run's lease: a second resume is refused
        batch_run(indexed_wb, fake, run_id=run.run_id)
    run.cancel()
    worker.join(30)
    assert run.progress().status == "incomplete"
    first = list(fake.batch_jobs)[0]
    # What the database holds when the process dies after Google created the job but before its name was stored.
    with indexed_wb.db.write() as w:
        w.execute("UPDATE batch_jobs SET name=NULL, state='preparing', source='submitting' WHERE run_id=?",
                  [run.run_id])
    fake.batch_running_s = 0.1
    progress = batch_run(indexed_wb, fake, run_id=run.run_id).run()
    assert progress.status == "completed" and progress.saved == 3
    jobs = indexed_wb.db.rows("SELECT name FROM batch_jobs WHERE run_id=? ORDER BY round", [run.run_id])
    assert jobs[0]["name"] == f"batches/{first}" and len(fake.batch_jobs) == len(jobs)
    assert keys_unique(fake)


def test_a_job_deleted_at_google_while_no_process_polled_it_is_sent_again_on_resume(indexed_wb, fake):
    fake.batch_running_s = 3600
    run, worker = run_until_a_job_is_named(indexed_wb, fake, RunConfig(num_dialogs=2, max_turns=1, seed=11, batch=True))
    run.cancel()
    worker.join(30)
    name = indexed_wb.db.scalar("SELECT name FROM batch_jobs WHERE run_id=?", [run.run_id])
    provider = GeminiProvider(run.settings)
    provider._client.batches.delete(name=name)  # through the real client: a DELETE
    provider.close()
    fake.batch_running_s = 0.1
    progress = batch_run(indexed_wb, fake, run_id=run.run_id).run()
    assert progress.status == "completed" and progress.saved == 2
    first = indexed_wb.db.one("SELECT * FROM batch_jobs WHERE name=?", [name])
    assert first["state"] == "applied" and "no longer exists" in first["error"] and keys_unique(fake)


def test_the_generate_page_starts_a_large_run_through_the_batch_api(indexed_app_env, monkeypatch):
    from tests.conftest import new_app, rerun_until_success

    with FakeGemini() as fake:
        fake.batch_pending_s, fake.batch_running_s = 0.05, 0.1
        for name, value in {"GEMINI_API_KEY": "AIza-page-batch-key", "GOOGLE_GEMINI_BASE_URL": fake.base_url,
                            "GROUNDWORK_BATCH_POLL_S": "0.05", "GROUNDWORK_BATCH_POLL_MAX_S": "0.2"}.items():
            monkeypatch.setenv(name, value)
        at = new_app("pages/generate.py")
        at.number_input(key="generate.num_dialogs").set_value(3)
        at.checkbox(key="generate.batch").check().run()
        assert not at.exception
        assert "Batch API prices (half)" in " ".join(c.value for c in at.caption)
        at.button(key="generate.start").click().run()
        assert not at.exception
        rerun_until_success(at, "Completed")
        assert any("Completed: 3 conversations" in s.value for s in at.success)
        # Every call went through batch jobs: not one interactive generateContent.
        assert len(fake.batch_jobs) >= 2 and not any(p.endswith(":generateContent") for p in fake.by_path)


def test_batch_jobs_through_the_real_client_list_cancel_delete_and_map_results_by_key(settings, fake):
    from core.providers.base import LLMError, LLMRequest, LLMResult, Message
    from core.providers.gemini_batch import GeminiBatchJobs

    provider = GeminiProvider(settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url))
    jobs = GeminiBatchJobs(provider)
    ask = [(f"k{i}", LLMRequest(messages=[Message("user", f"What is a security deposit {i}?")])) for i in range(3)]
    # A batch entry carries exactly what the live call sends for the same request.
    structured = LLMRequest([Message("user", "And the deadline?")], system="Answer from <passages>.", seed=7,
                            max_tokens=300, json_schema={"type": "object", "properties": {"a": {"type": "string"}}})
    provider.generate(structured)
    live = fake.requests[-1].body
    assert {k: v for k, v in jobs.encode("q", structured)["request"].items() if k != "model"} == live
    fake.batch_running_s = 3600
    name, source = jobs.submit(ask, "held")
    assert source == "inline" and jobs.find("held") == name and jobs.find("nothing") is None
    assert jobs.status(name).state in ("PENDING", "RUNNING")
    jobs.cancel(name)
    assert jobs.status(name).state == "CANCELLED" and jobs.status(name).results == {}
    provider._client.batches.delete(name=name)
    assert jobs.find("held") is None
    fake.batch_running_s = 0.05
    fake.batch_entry_fault = lambda key, request: 500 if key == "k1" else None
    name, _ = jobs.submit(ask, "mixed")
    deadline = time.monotonic() + 10
    while not (status := jobs.status(name)).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status.state == "SUCCEEDED" and set(status.results) == {"k0", "k1", "k2"}
    assert isinstance(status.results["k0"], LLMResult) and status.results["k0"].text
    assert isinstance(status.results["k1"], LLMError) and status.results["k1"].retryable
    with pytest.raises(LLMError) as refused:  # a wrong key: the provider's one-line message, the key not in it
        GeminiBatchJobs(GeminiProvider(settings.replace(gemini_api_key="AIza-wrong", gemini_base_url=fake.base_url))
                        ).submit(ask, "x")
    assert refused.value.kind == "auth" and "AIza-wrong" not in str(refused.value)
    provider.close()
