"""Issue 25, hardening round three: read-only data dirs, runs that can always be finished, the embedding model the
vectors were made with, embedding progress for one huge document, and library noise kept out of messages.

Everything through the real CLI (a subprocess), the real app (AppTest), the real embedding model, the real
vector store and the real google-genai client against the fake Gemini server.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core.corpus.sparse_copy import copy_tree
from core.db import Database
from fakes.gemini import FakeGemini
from tests.conftest import ROOT, SAMPLE_DIR, make_settings, new_app

KEY = "AIzaSy-round3-test-key-0000000000000000"
NOBODY = 65534


def cli(*args: str, data_dir: Path | None = None, fake: FakeGemini | None = None, user: list[str] | None = None,
        env_extra: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROUNDWORK_", "GEMINI_", "GOOGLE_"))}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                "GROUNDWORK_EMBEDDING_CACHE": os.environ["GROUNDWORK_EMBEDDING_CACHE"]})
    if data_dir is not None:
        env["GROUNDWORK_DATA_DIR"] = str(data_dir)
    if fake is not None:
        env.update({"GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": fake.base_url})
    env.update(env_extra or {})
    cmd = [*(user or [sys.executable]), "-m", "core.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The run ended with exit 2 and exactly one line on stderr, never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---- 1. a read-only data dir, used by another user ------------------------------------------------------------

def _nobody_python(tmp_home: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix that runs Python as the unprivileged user ``nobody`` on this venv's packages.

    The venv's interpreter may sit under /root (pyenv), which nobody cannot enter; the system Python of the same
    minor version runs the same wheels (same ABI) with the venv's site-packages on PYTHONPATH.
    """
    prefix, why_not = _nobody_interpreter()
    if prefix is None:
        pytest.skip(why_not)
    return prefix, _nobody_env(tmp_home)


def _nobody_env(home: Path) -> dict[str, str]:
    """What nobody's Python needs: a home of its own, this checkout and the venv's packages on its path."""
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    return {"HOME": str(home), "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "HF_HOME": str(home / "hf")}


@functools.cache
def _nobody_interpreter() -> tuple[list[str] | None, str]:
    """The first interpreter nobody can import Groundwork with, found once per session (each probe loads torch)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return None, "needs root to switch to the unprivileged user nobody (setpriv)"
    if not setpriv:
        return None, "no setpriv on this machine to run a command as the unprivileged user nobody"
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable).resolve(), Path("/usr/bin") / minor, Path("/usr/local/bin") / minor]
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    home = Path(tempfile.mkdtemp(prefix="groundwork-nobody-probe-", dir="/tmp"))
    try:
        home.chmod(0o777)
        env = {**_nobody_env(home), "HF_HUB_OFFLINE": "1"}
        for python in candidates:
            if not python.exists():
                continue
            probe = subprocess.run([*prefix, str(python), "-c", "import core.cli, sentence_transformers, qdrant_edge"],
                                   cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
            if probe.returncode == 0:
                return [*prefix, str(python)], ""
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return None, f"no Python {minor} that the user nobody can run with this venv's packages"


@pytest.fixture
def shared_dirs():
    """A folder everyone can enter (pytest's own tmp folder is private to root), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="groundwork-round3-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir()
    out = base / "out"
    out.mkdir()
    for d in (home, out):
        os.chown(d, NOBODY, NOBODY)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _a_finished_run(wb, fake) -> str:
    from core.generation.engine import GenerationRun, RunConfig
    from core.providers.gemini import GeminiProvider

    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, request_timeout=5.0)
    run = GenerationRun(settings, wb.db, wb.corpus, lambda gate: GeminiProvider(settings, gate=gate),
                        config=RunConfig(num_dialogs=2, max_turns=1, max_concurrency=2))
    assert run.run().status == "completed"
    return run.run_id


def _tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_root_owned_data_dir_reads_for_another_user_and_writing_commands_say_why_not(indexed_wb, shared_dirs):
    with FakeGemini(latency=0.01) as fake:
        run_id = _a_finished_run(indexed_wb, fake)
        source = indexed_wb.settings.data_path
        indexed_wb.close()
        data = shared_dirs / "data"
        copy_tree(source, data)  # owned by root, 755/644: readable, not writable, by anyone else
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        before = _tree_state(data)
        user, env = _nobody_python(shared_dirs / "home")
        fake.reset_stats()
        requests_before = len(fake.requests)

        runs = cli("runs", data_dir=data, user=user, env_extra=env)
        assert runs.returncode == 0 and "Traceback" not in runs.stderr, runs.stderr
        assert run_id in runs.stdout and "completed" in runs.stdout

        found = cli("search", "when must a landlord return a security deposit", "-k", "2", data_dir=data, user=user,
                    env_extra=env)
        assert found.returncode == 0 and "Traceback" not in found.stderr, found.stderr
        assert found.stdout.startswith("1. score ") and "\n2. score " in found.stdout

        out = shared_dirs / "out" / "export"
        exported = cli("export", "--status", "any", "--out", str(out), data_dir=data, user=user, env_extra=env)
        assert exported.returncode == 0 and "Traceback" not in exported.stderr, exported.stderr
        assert "the data dir is read-only" in exported.stderr
        assert sum(len(f.read_text().splitlines()) for f in out.glob("openai*.jsonl")) == 2

        # Writing commands: one line naming the user and the owner, before any work (no LLM call).
        for args in (("export", "--status", "any"), ("index", str(next(SAMPLE_DIR.rglob("*.md")))),
                     ("generate", "--num-dialogs", "1", "--provider", "gemini", "--no-grade")):
            line = one_line_error(cli(*args, data_dir=data, user=user, fake=fake, env_extra=env))
            assert f"The data dir {data} is not writable by user nobody (it belongs to root)" in line, line
            assert "Qdrant" not in line and "API key" not in line and "resume" not in line, line
        assert len(fake.requests) == requests_before
    assert _tree_state(data) == before  # not a byte changed: no -wal, -shm, lock or migration written
    assert not list(data.glob("*-wal")) and not list(data.glob("*-shm"))


def test_the_app_on_another_users_data_dir_says_so_in_one_line(indexed_sample_dir, shared_dirs):
    data = shared_dirs / "data"
    copy_tree(indexed_sample_dir, data)
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    user, env = _nobody_python(shared_dirs / "home")
    script = ("import json\nfrom streamlit.testing.v1 import AppTest\n"
              "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
              "print(json.dumps({'exception': [str(e.value) for e in at.exception],"
              " 'error': [e.value for e in at.error]}))\n")
    proc = subprocess.run([*user, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("GROUNDWORK_")}, **env,
                               "HF_HUB_OFFLINE": "1", "GROUNDWORK_DATA_DIR": str(data)})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shown["exception"] == []
    assert len(shown["error"]) == 1, shown
    assert f"The data dir {data} is not writable by user nobody (it belongs to root)" in shown["error"][0]
    assert not list(data.glob("*-wal"))


def test_a_read_only_database_file_is_read_without_a_write(indexed_sample_dir, tmp_path):
    """In-process: Database(read_only=...) on a WAL database whose folder may not be written (simulated for root
    by a read-only connection's own guarantee: every write is refused with the one-line reason)."""
    data = tmp_path / "data"
    copy_tree(indexed_sample_dir, data)
    db = Database(data / "groundwork.db", read_only="The data dir is not writable by user x.")
    try:
        assert db.scalar("SELECT COUNT(*) FROM documents") > 0
        from core.errors import DataDirReadOnlyError

        with pytest.raises(DataDirReadOnlyError, match="not writable by user x"):
            with db.write() as w:
                w.execute("DELETE FROM documents")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db._reader().execute("DELETE FROM documents")  # the connection itself cannot write either
    finally:
        db.close()


# ---- 2. a run stopped for its replacement budget can be finished ------------------------------------------------

def test_a_run_stopped_for_its_replacement_budget_resumes_to_exactly_n(indexed_wb):
    data = indexed_wb.settings.data_path
    indexed_wb.close()
    with FakeGemini(latency=0.01) as fake:
        fake.fault_for = lambda n, body: "recitation"  # every call fails: conversations fail, replacements too
        first = cli("generate", "--num-dialogs", "3", "--max-turns", "1", "--max-concurrency", "2", "--provider",
                    "gemini", "--no-grade", "--quiet", data_dir=data, fake=fake)
        assert first.returncode == 3, first.stderr
        assert "is spent; a resume gets a new budget of 3 replacements" in first.stdout, first.stdout
        run_id = first.stderr.split("resume with: groundwork generate --resume ")[1].split()[0]
        fake.fault_for = None  # the provider is healthy again
        calls_before = len(fake.requests)
        again = cli("generate", "--resume", run_id, "--no-grade", "--quiet", "--provider", "gemini", data_dir=data,
                    fake=fake)
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert f"run {run_id}: completed — 3/3 saved" in again.stdout
        assert len(fake.requests) > calls_before
    db = Database(data / "groundwork.db")
    try:
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=?", [run_id]) == 3
        assert db.one("SELECT status, saved FROM runs WHERE id=?", [run_id]) == {"status": "completed", "saved": 3}
    finally:
        db.close()


def test_more_replacements_sets_the_resumed_sessions_budget(indexed_wb):
    from core.generation.engine import GenerationRun, RunConfig
    from core.errors import ValidationError
    from core.providers.gemini import GeminiProvider

    with FakeGemini(latency=0.01) as fake:
        settings = indexed_wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, request_timeout=5.0)
        factory = lambda gate: GeminiProvider(settings, gate=gate)  # noqa: E731
        fake.fault_for = lambda n, body: "recitation"
        run = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, factory,
                            config=RunConfig(num_dialogs=2, max_turns=1, max_concurrency=1, replacement_budget=1))
        assert run.run().status == "incomplete"
        items = lambda: indexed_wb.db.scalar("SELECT COUNT(*) FROM work_items WHERE run_id=?", [run.run_id])  # noqa
        assert items() == 3
        resumed = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, factory, run_id=run.run_id,
                                more_replacements=4)
        progress = resumed.run()  # still failing: this session may replace 4 more, then stops again
        assert progress.status == "incomplete" and "budget (4) is spent" in progress.reason
        assert items() == 3 + 4
        with pytest.raises(ValidationError, match="0 or more"):
            GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, factory, run_id=run.run_id, more_replacements=-1)


# ---- 3. the embedding model the vectors were made with ---------------------------------------------------------

def test_search_and_generate_refuse_another_model_before_any_llm_call(indexed_wb, cls_model):
    data = indexed_wb.settings.data_path
    indexed_wb.close()
    line = one_line_error(cli("search", "security deposit", "--embedding-model", str(cls_model), data_dir=data))
    assert "was indexed with embedding model 'all-MiniLM-L6-v2'" in line and "pooling mean vs cls" in line, line
    assert "re-index into a new collection" in line and "GROUNDWORK_EMBEDDING_MODEL" in line
    with FakeGemini(latency=0.01) as fake:
        for model in (str(cls_model), "nonexistent"):
            line = one_line_error(cli("generate", "--num-dialogs", "2", "--provider", "gemini", "--no-grade",
                                      "--embedding-model", model, data_dir=data, fake=fake))
            assert ("pooling mean vs cls" in line) if model != "nonexistent" else ("'nonexistent'" in line), line
        assert len(fake.requests) == 0  # not one LLM call
    db = Database(data / "groundwork.db")
    try:
        assert db.scalar("SELECT COUNT(*) FROM runs") == 0  # and no run row left behind
        identity = json.loads(db.scalar("SELECT embedding_identity FROM collections"))
        assert identity["dim"] == 384 and identity["pooling"] == "mean" and len(identity["probe_sha256"]) == 16
    finally:
        db.close()
    ok = cli("search", "security deposit", data_dir=data)  # the model it was indexed with still works
    assert ok.returncode == 0 and ok.stdout.startswith("1. score "), ok.stderr


def test_a_collection_indexed_before_identities_gets_one_if_the_model_reproduces_its_vectors(indexed_wb, cls_model,
                                                                                            tmp_path):
    with indexed_wb.db.write() as w:  # as indexed by the previous version: no identity on record
        if "embedding_identity" in w["collections"].columns_dict:
            w.execute("UPDATE collections SET embedding_identity=NULL")
    data = indexed_wb.settings.data_path
    indexed_wb.close()
    twin = tmp_path / "twin"
    copy_tree(data, twin)
    line = one_line_error(cli("search", "security deposit", "--embedding-model", str(cls_model), data_dir=twin))
    assert "were not made by embedding model" in line and "cls pooling" in line, line
    ok = cli("search", "security deposit", data_dir=data)
    assert ok.returncode == 0 and ok.stdout.startswith("1. score "), ok.stderr
    db = Database(data / "groundwork.db")
    try:
        recorded = json.loads(db.scalar("SELECT embedding_identity FROM collections"))
        assert recorded["pooling"] == "mean" and recorded["name"] == "all-MiniLM-L6-v2"
    finally:
        db.close()


def test_the_app_refuses_another_model_in_search_and_the_workshop(indexed_app_env, monkeypatch, cls_model):
    with FakeGemini(latency=0.01) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", KEY)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("GROUNDWORK_EMBEDDING_MODEL", str(cls_model))
        at = new_app("pages/workshop.py")
        at.text_input(key="workshop.question").set_value("Was the non-compete enforceable?").run()
        assert not at.exception
        assert any("pooling mean vs cls" in e.value for e in at.error), [e.value for e in at.error]
        at.button(key="workshop.dry_start").click().run()
        assert not at.exception
        assert sum("pooling mean vs cls" in e.value for e in at.error) >= 2, [e.value for e in at.error]
        assert len(fake.requests) == 0
        at.switch_page("pages/corpus.py").run()
        assert not at.exception
        at.text_input(key="corpus.query").set_value("security deposit").run()
        assert not at.exception
        assert any("pooling mean vs cls" in e.value for e in at.error), [e.value for e in at.error]
        assert len(fake.requests) == 0


# ---- 4. embedding progress for one huge document; its chunks count once it is indexed ---------------------------

def _one_line_document(path: Path, chars: int) -> Path:
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(SAMPLE_DIR.rglob("*.md"))).split()
    text, i = [], 0
    while sum(map(len, text)) + len(text) < chars:
        text.append(words[i % len(words)])
        i += 1
    path.write_text(" ".join(text), encoding="utf-8")  # a single line, no paragraph breaks anywhere
    return path


def test_one_huge_single_line_document_reports_embedding_progress_per_batch(tmp_path):
    # Small chunks keep the test quick: what matters is that one document needs several model batches.
    doc = _one_line_document(tmp_path / "huge.txt", 60_000)
    # The model embeds every chunk (no cache): the progress under test is the model's, batch by batch.
    proc = cli("index", str(doc), "--chunk-size", "200", "--chunk-overlap", "20", data_dir=tmp_path / "data",
               env_extra={"GROUNDWORK_EMBEDDING_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr
    steps = [line.split(": ", 1)[1] for line in proc.stderr.splitlines() if line.startswith("embedding: ")]
    done = [int(s.split("/")[0]) for s in steps]
    total = int(steps[-1].split("/")[1])
    assert total > 260 and done[0] == 0 and done[-1] == total
    assert len([d for d in done if 0 < d < total]) >= 2, steps  # progress while the one document embeds
    assert done == sorted(done)


def test_a_pending_documents_chunks_are_not_counted_until_it_is_indexed(tmp_path, embedder):
    from core.workbench import Workbench

    # Without the cache: this document's chunks are the previous test's, and the point is progress between batches.
    wb = Workbench(make_settings(tmp_path / "data", chunk_size=200, chunk_overlap=20), store_idle_close_s=0,
                   embedder=embedder.with_cache(None))
    doc = _one_line_document(tmp_path / "big.txt", 40_000)
    # An ingest interrupted after its chunks were recorded and before its vectors were stored:
    from core.corpus.collection import IngestReport
    from core.corpus.loaders import load_path

    with wb.stores.use() as store:
        wb.corpus._ensure_collection(store, wb.embedder.dim)
        plan = wb.corpus._plan(load_path(doc).documents, IngestReport(), doc.parent)
        wb.corpus._write_pending(plan, store)
    interrupted = wb.corpus.stats()
    assert interrupted["pending"] == 1 and interrupted["chunks"] == 0, interrupted
    seen = []

    def progress(stage, done, total):
        if stage == "embedding" and 0 < done < total:
            seen.append(wb.corpus.stats())

    wb.corpus.ingest_path(doc, progress=progress)
    assert seen, "no progress while the document was embedding"
    assert all(s["chunks"] == 0 and s["pending"] == 1 for s in seen), seen
    after = wb.corpus.stats()
    try:
        assert after["pending"] == 0 and after["chunks"] == wb.corpus.consistency()["points"] > 128
    finally:
        wb.close()


# ---- 5. library noise and the export hint ----------------------------------------------------------------------

def test_a_garbage_pdf_gets_only_the_clear_warning(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(3000) + b"\nstartxref\n999999\n%%EOF\n")
    shutil.copy(next(SAMPLE_DIR.rglob("*.md")), folder / "ok.md")
    proc = cli("index", str(folder), data_dir=tmp_path / "data")
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    noise = [line for line in lines if not line.startswith(("warning: ", "reading files", "loading the embedding",
                                                            "embedding:", "embedding the passages' sentences", "building", "copying",
                                                            "note: "))]
    assert noise == [], proc.stderr
    assert any(line.startswith("warning: ") and "broken.pdf" in line for line in lines), proc.stderr


def test_an_empty_export_never_suggests_the_status_it_already_has(wb):
    data = wb.settings.data_path
    wb.close()
    line = one_line_error(cli("export", "--status", "any", "--out", str(data / "x"), data_dir=data))
    assert "--status any" not in line.split("(status any)")[1], line
    assert "no conversations yet" in line
    line = one_line_error(cli("export", "--out", str(data / "x"), data_dir=data))
    assert "(e.g. --status any)" in line
