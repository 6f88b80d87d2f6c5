"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run` on 127.0.0.1.

The whole path a user takes, with a fresh data dir: ingest, search, edit a prompt, preview retrieval,
generate (fake Gemini with realistic latency, and once with the offline model), review, export.
A screenshot of every page lands in artifacts/ (gitignored).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.fake_gemini import FakeGemini
from tests.conftest import ROOT

CHROMIUM = os.environ.get("GROUNDWORK_CHROMIUM", "/usr/bin/chromium")
# .ci/run sets this: there a missing browser is a failure, not a skip (see also conftest's session check).
REQUIRED = os.environ.get("GROUNDWORK_REQUIRE_BROWSER") == "1"
ARTIFACTS = ROOT / "artifacts" / "browser"
FAKE_KEY = "AIzaSy-browser-secret-key-00000000042"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
HOSTILE = ("# Hostile markup\n\nThis opinion text tries <script>window.__pwned = 1</script> and "
           "<img src=x onerror=\"window.__pwned = 2\"> and [a link](javascript:window.__pwned=3) inside "
           "a zoning variance dispute about a bakery sign.\n")

if REQUIRED and not Path(CHROMIUM).exists():
    pytest.fail(f"GROUNDWORK_REQUIRE_BROWSER=1 but there is no chromium at {CHROMIUM}: install Debian's chromium "
                "(apt-get install chromium); CI must not pass without its browser tests.", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                   reason="Debian chromium is not installed (.ci/run installs it)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake():
    with FakeGemini(latency=0.4) as server:  # realistic latency: the live progress bar must move on its own
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory, fake):
    data = tmp_path_factory.mktemp("browser") / "data"
    docs = data.parent / "hostile"
    docs.mkdir()
    (docs / "hostile.md").write_text(HOSTILE, encoding="utf-8")
    port = free_port()
    env = {**os.environ, "GROUNDWORK_DATA_DIR": str(data), "GEMINI_API_KEY": FAKE_KEY,
           "GOOGLE_GEMINI_BASE_URL": fake.base_url, "GROUNDWORK_AUTO_INDEX_SAMPLE": "0", "HF_HUB_OFFLINE": "1",
           # Folders outside the data dir that the browser may name: the hostile docs and the export target.
           "GROUNDWORK_ALLOWED_ROOTS": os.pathsep.join([str(docs), str(data.parent / "export-out")])}
    log = open(data.parent / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    import urllib.request

    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (data.parent / "streamlit.log").read_text()[-2000:])
    yield {"base": base, "data": data, "docs": docs, "log": data.parent / "streamlit.log"}
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def open_page(page, app, path: str = ""):
    page.goto(f"{app['base']}/{path}")
    # Widgets exist only after the websocket connects: wait on a real element, not on page load.
    page.locator('[data-testid="stSidebarNav"]').wait_for()
    page.locator('[data-testid="stMainBlockContainer"] h1').first.wait_for()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def main_text(page) -> str:
    return page.locator('[data-testid="stMainBlockContainer"]').inner_text()


def wait_for_text(page, pattern: str, timeout_s: float = 120) -> None:
    try:
        page.get_by_text(re.compile(pattern)).first.wait_for(timeout=timeout_s * 1000)
    except Exception:
        shot(page, "failed-" + re.sub(r"\W+", "-", pattern)[:40])
        raise


def test_the_whole_path_in_a_browser(app, page, fake):
    # Corpus: ingest the sample corpus and a hostile document through the Ingest tab.
    open_page(page, app, "corpus")
    page.get_by_role("tab", name="Ingest").click()
    folder = page.get_by_label("Folder or file on the server")
    folder.fill(str(ROOT / "sample_data" / "corpus"))
    page.get_by_role("button", name="Ingest folder").click()
    wait_for_text(page, r"40 documents \(\d+ chunks\) indexed")
    folder.fill(str(app["docs"]))
    page.get_by_role("button", name="Ingest folder").click()
    wait_for_text(page, r"1 documents \(\d+ chunks\) indexed")
    shot(page, "01-corpus-ingest")

    # Search: results show, hostile markup is shown as text and never runs.
    open_page(page, app, "corpus")
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Question or keywords").fill("zoning variance bakery sign")
    page.keyboard.press("Enter")
    wait_for_text(page, r"Hostile markup")
    page.get_by_text("<script>window.__pwned = 1</script>", exact=False).first.wait_for()
    assert page.evaluate("window.__pwned") is None
    shot(page, "02-corpus-search")

    # Prompts: edit and save a new respondent version.
    open_page(page, app, "prompts")
    editor = page.get_by_label(re.compile("Respondent prompt"))
    from playwright.sync_api import expect

    expect(editor).to_have_value(re.compile(r"\{context\}"))  # the saved version has loaded into the editor
    editor.fill(editor.input_value() + "\nKeep every answer under 150 words.")
    page.get_by_label("Note (what changed and why)").fill("shorter answers")
    page.get_by_role("button", name="Save as new version").click()
    wait_for_text(page, "Saved respondent v2")
    shot(page, "03-prompts")

    # Workshop: retrieval preview with the exact system prompt.
    open_page(page, app, "workshop")
    page.get_by_label("Question", exact=True).fill("When must a landlord return a security deposit?")
    page.keyboard.press("Enter")
    wait_for_text(page, "The exact respondent system prompt")
    page.locator("mark").first.wait_for()  # question terms highlighted
    shot(page, "04-workshop-preview")

    # Settings: the key field is masked and the key is nowhere in the page.
    open_page(page, app, "settings")
    page.locator('input[type="password"]').wait_for()
    assert page.locator('input[type="password"]').count() == 1
    assert FAKE_KEY not in page.content()
    shot(page, "05-settings")

    # Generate: 3 conversations against the fake Gemini; the progress bar advances on its own.
    open_page(page, app, "generate")
    page.get_by_label("Conversations").fill("3")
    page.get_by_role("spinbutton", name="Concurrency").fill("1")
    page.keyboard.press("Tab")
    page.get_by_role("button", name="Start").click()
    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = main_text(page)
        match = re.search(r"(\d)/3 conversations", text)
        if match:
            seen.add(int(match.group(1)))
        if "Completed: 3 conversations" in text:
            break
        time.sleep(0.3)
    assert "Completed: 3 conversations" in main_text(page)
    assert len(seen) >= 2, f"progress never moved on its own: saw {seen}"
    shot(page, "06-generate")
    assert FAKE_KEY not in page.content()

    # Review: rate one, approve it, discard the next, approve the third; each action is saved at once.
    open_page(page, app, "review")
    page.get_by_role("textbox", name="Reviewer name").fill("Ana Reviewer")
    page.keyboard.press("Enter")
    wait_for_text(page, r"Conversation 1 of 3")
    page.get_by_role("button", name=re.compile(r"^4★")).click()
    wait_for_text(page, r"rating 4")
    page.get_by_role("button", name=re.compile(r"^Approve")).click()
    wait_for_text(page, r"Conversation 1 of 2")  # approved ones leave the "new" queue
    page.get_by_role("button", name=re.compile(r"^Discard")).click()
    wait_for_text(page, r"Conversation 1 of 1")
    page.get_by_role("button", name=re.compile(r"^Approve")).click()
    shot(page, "07-review")
    from core.db import Database

    db = Database(app["data"] / "groundwork.db")
    deadline = time.monotonic() + 30
    while db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'") < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'") == 2
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE status='discarded'") == 1
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE rating=4 AND reviewed_by='Ana Reviewer'") == 1

    # Export the approved conversations and check the file.
    open_page(page, app, "export")
    out = app["data"].parent / "export-out"
    page.get_by_role("textbox", name="Output folder").fill(str(out))
    page.keyboard.press("Tab")
    page.get_by_role("button", name="Export", exact=True).click()
    wait_for_text(page, r"manifest")
    shot(page, "08-export")
    rows = [json.loads(line) for f in sorted(out.glob("openai*.jsonl")) for line in f.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and all(m["content"].strip() for m in row["messages"])
    assert (out / "manifest.json").exists()

    # Home and Dashboard render with the new data.
    open_page(page, app, "")
    wait_for_text(page, "Pipeline")
    shot(page, "09-home")
    open_page(page, app, "dashboard")
    page.locator(".js-plotly-plot").first.wait_for()
    shot(page, "10-dashboard")

    # Nothing under the data dir holds the key.
    for path in app["data"].rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_generate_with_the_offline_model_in_the_browser(app, page):
    # The provider choice lives in the browser session: switch it, then move with the sidebar (same session).
    open_page(page, app, "settings")
    page.get_by_text("local", exact=True).click()
    wait_for_text(page, r"tiny demo model")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Generate").click()
    wait_for_text(page, r"Provider local")
    page.get_by_role("spinbutton", name="Conversations").fill("1")
    page.get_by_role("spinbutton", name="Max turns").fill("1")
    page.get_by_role("spinbutton", name="Max tokens per reply").fill("120")
    page.keyboard.press("Tab")
    page.get_by_role("button", name="Start").click()
    # The tiny model's replies are checked now: one cut off at 120 tokens is asked again at 240 and 480.
    wait_for_text(page, r"Completed: 1 conversations", timeout_s=600)
    shot(page, "11-generate-offline")
    from core.db import Database

    db = Database(app["data"] / "groundwork.db")
    row = db.one("SELECT provider, model FROM conversations ORDER BY created_at DESC LIMIT 1")
    assert row["provider"] == "local" and row["model"].endswith(".gguf")
    answer = db.scalar("SELECT content FROM turns WHERE role='assistant' ORDER BY id DESC LIMIT 1")
    assert len(answer.split()) >= 3  # the offline model really wrote text

