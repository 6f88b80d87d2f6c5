"""What the browser tests share: Debian's chromium via Playwright, `streamlit run` on a free loopback port, and the
few moves a person makes on a page (open, move with the sidebar, wait for text, let a rerun settle, screenshot)."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = os.environ.get("GROUNDWORK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "artifacts" / "browser"
NO_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason="Debian chromium is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log_path: Path, timeout_s: float, every_s: float = 0.5) -> None:
    """Wait until the Streamlit server at ``base`` answers its health check; fail with its log's tail if the
    process ends first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited: " + log_path.read_text()[-3000:]
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
            return
        except OSError:
            time.sleep(every_s)
    pytest.fail("the app never answered: " + log_path.read_text()[-3000:])


@contextmanager
def serve_app(data: Path, env: dict[str, str], clean: bool = False):
    """`streamlit run app.py` on a free port with ``data`` as its data dir, until the block ends.

    ``env`` is added to this process's environment; with ``clean`` the provider and Groundwork variables of this
    process are left out first (a server that must see no key). Yields {"base", "data", "log"}.
    """
    base_env = {k: v for k, v in os.environ.items()
                if not (clean and k.startswith(("GEMINI", "GOOGLE_", "GROUNDWORK_")) and k != "GROUNDWORK_EMBEDDING_CACHE")}
    full_env = {**base_env, "GROUNDWORK_DATA_DIR": str(data), "GROUNDWORK_AUTO_INDEX_SAMPLE": "0",
                "HF_HUB_OFFLINE": "1", **env}
    data.parent.mkdir(parents=True, exist_ok=True)
    log_path = data.parent / "streamlit.log"
    log = open(log_path, "w")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log_path, timeout_s=90)
        yield {"base": base, "data": data, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a background run's thread still finishing its call: stop it hard
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def new_page(browser, width: int = 1400):
    """A fresh browser context (its own Streamlit session and cookies) and a page in it."""
    context = browser.new_context(viewport={"width": width, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    return context, pg


@pytest.fixture
def page(browser):
    context, pg = new_page(browser)
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


def reason_ready(page, reason: str) -> None:
    """Wait until the discard dialog's ``reason`` button answers its letter key. Streamlit binds a button's shortcut
    in an effect, which runs after the button is painted: a key pressed as soon as the button shows can go nowhere
    (a loaded machine widens that gap to the whole timeout), so two frames are waited for after it shows."""
    page.get_by_role("dialog").get_by_role("button", name=re.compile("^" + re.escape(reason))).wait_for()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r))))")


def settle(page) -> None:
    """Wait until the app has run with what was just typed (its running indicator is gone), as a person would
    before moving on: a page switch sent mid-run replaces the pending rerun that carried the new values."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=60_000)
    page.wait_for_timeout(300)


def set_numbers(page, **values: str) -> None:
    """Type into number fields by label (``Max_turns="1"`` for "Max turns"), one at a time, each committed and the
    app run with it before the next, retyped if a rerun redrew it with its old value meanwhile.

    On a loaded machine a rerun started by one field can redraw the next one while it is typed into; then, say, 40
    conversations ran 8 at a time and were done before the test could watch them run."""
    for label, value in values.items():
        field = page.get_by_role("spinbutton", name=label.replace("_", " "))
        for _ in range(5):
            field.fill(value)
            field.press("Tab")
            settle(page)
            if field.input_value() == value:
                break
        assert field.input_value() == value, f"the {label} field would not keep {value}"


def nav_to(page, title: str, heading: str | None = None) -> None:
    """Move with the sidebar: the same browser session (page.goto would start a new one). ``heading``: the page's
    title when it is not the link's text (Home's is the app's name).

    Clicked again, as a person would, when the page has not drawn after 20 s: a live panel's timed rerun that
    reaches the server just after the switch can leave the new page blank (Streamlit; seen on a loaded machine
    right after a run stopped, while its grounding checks were polled)."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True)
    drawn = page.locator('[data-testid="stMainBlockContainer"] h1', has_text=heading or title).first
    link.click()
    try:
        drawn.wait_for(timeout=20_000)
    except Exception:
        link.click()
        drawn.wait_for()


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(f"^{label}")))
    return metric.locator('[data-testid="stMetricValue"]').first.inner_text().strip()


def select_box(page, label, within: str = ""):
    """The select box or multiselect labelled ``label`` (text or regex), optionally only within the element
    ``within`` selects (say the sidebar)."""
    scope = page.locator(within) if within else page
    return scope.locator('[data-testid="stSelectbox"], [data-testid="stMultiSelect"]').filter(
        has=page.locator("label", has_text=label)).first


def pick(page, label, option: str, within: str = "") -> None:
    """Choose ``option`` in the select box or multiselect labelled ``label`` (see ``select_box``)."""
    select_box(page, label, within).locator('[role="combobox"], input').first.click()
    page.get_by_role("option", name=option, exact=True).first.click()
    page.keyboard.press("Escape")  # a multiselect keeps its menu open, hiding the form from the page's roles
    settle(page)
