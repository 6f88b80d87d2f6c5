"""Shared fixtures: fresh real SQLite + Qdrant local data dirs, one real embedding model per session."""

import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never talk to a real provider or pick up a developer's keys.
for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QDRANT_URL", "QDRANT_API_KEY", "GROUNDWORK_PROVIDER",
             "GOOGLE_GEMINI_BASE_URL", "GROUNDWORK_DATA_DIR"):
    os.environ.pop(name, None)

# One embedding cache for the whole run (core.corpus.embedding_cache), shared by both workers and every process they
# start, never the developer's ~/.cache: the sample corpus is indexed by many tests, and after the first its vectors
# are a lookup, as for a user who indexes it into a second data dir. Tests of a first-time user's time (the demo,
# the newcomer) point their servers at an empty cache of their own.
# A process a test starts inherits the run's file (GROUNDWORK_TESTS_EMBEDDING_CACHE) instead of naming its own.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") if os.environ.get("PYTEST_XDIST_WORKER") else None
EMBEDDING_CACHE = Path(os.environ.get("GROUNDWORK_TESTS_EMBEDDING_CACHE") or Path(tempfile.gettempdir()) /
                       f"groundwork-tests-{_RUN or f'pid{os.getpid()}'}-embeddings.sqlite")
os.environ["GROUNDWORK_TESTS_EMBEDDING_CACHE"] = os.environ["GROUNDWORK_EMBEDDING_CACHE"] = str(EMBEDDING_CACHE)

from core.config import Settings  # noqa: E402
from core.corpus.embedding_cache import EmbeddingCache  # noqa: E402
from core.corpus.embeddings import Embedder  # noqa: E402
from core.corpus.sparse_copy import copy_tree  # noqa: E402
from core.workbench import Workbench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample_data" / "corpus"


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings.from_env(env={}, data_dir=str(data_dir), **{"embedding_cache": str(EMBEDDING_CACHE), **overrides})


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    e = Embedder(cache=EmbeddingCache(EMBEDDING_CACHE))
    e.load()
    return e


@pytest.fixture(scope="session")
def cls_model(tmp_path_factory) -> Path:
    """The packaged all-MiniLM-L6-v2 with CLS pooling instead of mean: same name family, same 384 dimensions."""
    import json

    from core.corpus.embeddings import packaged_model_path

    dst = tmp_path_factory.mktemp("models") / "minilm-cls"
    copy_tree(packaged_model_path(), dst)
    config = dst / "1_Pooling" / "config.json"
    pooling = json.loads(config.read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    config.write_text(json.dumps(pooling))
    return dst


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def wb(settings, embedder):
    w = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    yield w
    w.close()


@pytest.fixture(scope="session")
def indexed_sample_dir(tmp_path_factory, embedder) -> Path:
    """A data dir with sample_data/corpus indexed once per session; copy it before writing to it.

    Under xdist the workers share one: the first to ask indexes it (holding a lock), the others wait and use it,
    so two cores do not spend their time indexing the same corpus three times."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") if os.environ.get("PYTEST_XDIST_WORKER") else None
    if run is None:
        data_dir = tmp_path_factory.mktemp("indexed") / "data"
        _index_sample(data_dir, embedder)
        return data_dir
    shared = Path(tempfile.gettempdir()) / f"groundwork-tests-{run}-indexed"
    with open(shared.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (shared / "done").exists():
                shutil.rmtree(shared, ignore_errors=True)
                _index_sample(shared / "data", embedder)
                (shared / "done").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return shared / "data"


def _index_sample(data_dir: Path, embedder: Embedder) -> None:
    w = Workbench(make_settings(data_dir), store_idle_close_s=0, embedder=embedder)
    w.corpus.ingest_path(SAMPLE_DIR)
    w.close()


@pytest.fixture
def indexed_wb(indexed_sample_dir, tmp_path, embedder):
    """A private copy of the indexed sample data dir, open as a workbench."""
    data_dir = tmp_path / "data"
    copy_tree(indexed_sample_dir, data_dir)
    w = Workbench(make_settings(data_dir), store_idle_close_s=0, embedder=embedder)
    yield w
    w.close()


@pytest.fixture
def app_env(monkeypatch, tmp_path):
    """A fresh data dir for the app under AppTest, with Streamlit's process-wide caches cleared around it."""
    import streamlit as st

    st.cache_resource.clear()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GROUNDWORK_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"
    st.cache_resource.clear()


@pytest.fixture
def indexed_app_env(app_env, indexed_sample_dir):
    """``app_env`` holding a copy of the indexed sample corpus."""
    copy_tree(indexed_sample_dir, app_env)
    return app_env


def new_app(page: str | None = None):
    """Run app.py under AppTest (optionally switching to ``page``) and check it raised nothing."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def rerun_until_success(at, text: str, timeout_s: float = 60.0):
    """Re-run ``at`` until a success message holds ``text`` (AppTest does not re-run a run_every fragment
    by itself, so a page watching a background job is re-run as the job advances)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at.run()
        if any(text in s.value for s in at.success):
            break
        time.sleep(0.3)
    return at


# ---- timed tests: with the other xdist worker at a lower priority, or paused -----------------------------------
# The suite runs on both cores (pytest-xdist). A test marked ``timed`` measures wall time against a budget (the demo
# within 3 minutes, a key answered within a second, a gate learning a quota from real windows) or runs the offline
# model (llama.cpp's threads spin-wait on each other and crawl when a core is taken). While it runs, its worker and
# everything the worker started (Streamlit servers, Chromium, fake servers: every thread of the process tree) run
# at nice -10, so the scheduler gives it a core whenever it asks, as on a user's quiet machine, and the other worker
# keeps the rest instead of idling. Browser tests get the same priority (their waits are a user's waits) and hold a
# lock: one Chromium and Streamlit server at a time (three at once on two cores timed out). Where the priority
# cannot be raised (not root, no CAP_SYS_NICE) a timed test runs alone: it holds an exclusive lock while every other
# test holds a shared one, and a turnstile keeps the other worker from starving it by taking the shared lock again
# between its tests. Whole items are wrapped (setup, call, teardown), so a module's fixtures are set up the same way.
PRIORITY = -10


def _lock_files():
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    base = Path(tempfile.gettempdir()) / f"groundwork-tests-{run}"
    return base.with_suffix(".turnstile"), base.with_suffix(".lock"), base.with_suffix(".browser")


def _process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (from /proc; processes that end meanwhile are skipped)."""
    children: dict[int, list[int]] = {}
    if not os.path.isdir("/proc"):  # not Linux: no priority (the timed test then runs alone)
        return []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name in parentheses may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _renice_tree(nice: int) -> bool:
    """Every thread of this process and its descendants to ``nice`` (niceness is per thread on Linux, and a
    thread inherits its creator's). False if the priority could not be raised."""
    tree = _process_tree(os.getpid())
    for pid in tree:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except ProcessLookupError:
                pass
            except PermissionError:
                return False
    return bool(tree)


_priority_refused = False  # once raising the priority failed, timed tests run alone for the rest of the session


class _Prioritised:
    """The worker's process tree at ``PRIORITY`` until ``end()``; renewed every second, because processes started
    by others keep their own niceness (Chromium sets its renderers' to 0 or 5 itself)."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="timed-test-priority", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(1.0):
            _renice_tree(PRIORITY)

    def end(self) -> None:
        self._stop.set()
        self._thread.join()
        _renice_tree(0)


def _prioritise() -> _Prioritised | None:
    global _priority_refused
    if _priority_refused or not _renice_tree(PRIORITY):
        _priority_refused = True
        return None
    return _Prioritised()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    files = _lock_files()
    if files is None:
        yield
        return
    browser = item.path.name.startswith("test_browser")
    timed = item.get_closest_marker("timed") is not None or browser
    with open(files[0], "a+") as turnstile, open(files[1], "a+") as lock, open(files[2], "a+") as ui:
        if browser:
            fcntl.flock(ui, fcntl.LOCK_EX)  # taken first, always: no two locks are ever waited for the other way round
        prioritised = _prioritise() if timed else None
        alone = timed and prioritised is None
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the other worker's current test to end
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            if prioritised:
                prioritised.end()
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            if browser:
                fcntl.flock(ui, fcntl.LOCK_UN)


# Scheduling (`--dist loadfile --no-loadscope-reorder`): a file runs on one worker, so its module fixtures are built
# once; files are handed out in this order, two to each worker at the start, so the longest go first and the short
# ones fill the end. The three browser files are spread out (the first and the fourth go to the same worker, one
# after the other), and a browser test also holds the browser lock: one Chromium and Streamlit server at a time
# (three at once on two cores timed out).
HEAVY_FIRST = ["test_browser.py", "test_newcomer.py", "test_hardening_round3.py", "test_browser_project.py",
               "test_engine.py", "test_grounded_turns.py", "test_browser_review.py", "test_shared_data_dir.py",
               "test_bad_inputs.py", "test_export.py", "test_gate.py", "test_hardening.py", "test_training.py"]


def pytest_configure(config):
    # Name the xdist run here (xdist would pick a random one we could not know) so the controller can remove the
    # workers' lock files and shared corpus at the end.
    if getattr(config.option, "numprocesses", None) and not getattr(config.option, "testrunuid", None) \
            and not hasattr(config, "workerinput"):
        import uuid
        config.option.testrunuid = uuid.uuid4().hex


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))


# ---- CI: the browser tests must have run -------------------------------------------------------------------
_browser_passed: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.nodeid.startswith("tests/test_browser.py"):
        _browser_passed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """With GROUNDWORK_REQUIRE_BROWSER=1 (set by .ci/run) a session in which no browser test passed fails:
    skipped, deselected or never collected, a green run would hide that no browser ran."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller sees every worker's reports and decides
    run = getattr(session.config.option, "testrunuid", None)
    # The workers' lock files, shared indexed corpus and embedding cache: this run's, all ended now.
    left_over = list(Path(tempfile.gettempdir()).glob(f"groundwork-tests-{run}*")) if run else []
    left_over += [EMBEDDING_CACHE.with_name(EMBEDDING_CACHE.name + end) for end in ("", "-wal", "-shm")]
    for left in left_over:
        shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)
    if os.environ.get("GROUNDWORK_REQUIRE_BROWSER") == "1" and not _browser_passed:
        session.config.get_terminal_writer().line(
            "error: GROUNDWORK_REQUIRE_BROWSER=1 but no browser test (tests/test_browser.py) passed in this run.",
            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
