"""Review at keyboard speed and team review, in a real browser (Debian chromium via Playwright) on a data dir
holding 500 conversations; plus inert links on every page that shows corpus or model text.

The conversations are real: a small batch generated against the fake Gemini server through the real client,
graded offline by the real MiniLM verifier, then copied row for row up to 500 (as a long review queue is).
Timings are printed (pytest -s) and written to artifacts/browser/review-timings.json.
"""

import json
import re
import statistics
import time
import warnings

import pytest

from core import quality
from core.corpus.sparse_copy import copy_tree
from core.db import Database, dumps, loads
from fakes.gemini import FakeGemini
from core.review.store import ReviewFilter, ReviewStore
from core.workbench import Workbench
from tests.browser_support import (ARTIFACTS, NO_CHROMIUM, browser, main_text, nav_to, new_page,  # noqa: F401
                                   open_page, pick, reason_ready, select_box, serve_app, settle, shot,
                                   wait_for_text)
from tests.conftest import make_settings
from tests.test_review import generate

pytestmark = [pytest.mark.slow, NO_CHROMIUM]
QUEUE = 500
FAKE_KEY = "AIzaSy-browser-review-key-000000000042"
# Corpus and model text with every kind of link markdown or a browser could make live.
LINKS = ("See https://evil.example/steal?x=1 and www.evil.example/path, mail help@evil.example, "
         "<https://evil.example/angle> or [click here](https://evil.example/md) and ![img](https://evil.example/i.png).")
LINK_DOC = ("# Deposit notice links\n\nThe landlord posted the deposit return notice online. " + LINKS
            + " The tenant read the deposit notice and asked for the deposit back within thirty days.\n")
NO_LIVE_LINK_JS = """() => [...document.querySelectorAll('a, img')]
  .filter(e => /evil\\.example/.test((e.getAttribute('href') || '') + (e.getAttribute('src') || '') + e.innerText))
  .map(e => e.outerHTML.slice(0, 120))"""


def clone_to(db: Database, total: int) -> None:
    """Copy the conversations (with their turns, passages and grounding) until there are ``total``."""
    conv_cols = [r["name"] for r in db.rows("PRAGMA table_info(conversations)")]
    turn_cols = [r["name"] for r in db.rows("PRAGMA table_info(turns)") if r["name"] not in ("id", "conversation_id")]
    base = [r["id"] for r in db.rows("SELECT id FROM conversations ORDER BY created_at, id")]
    with db.write() as w:
        for i in range(total - len(base)):
            src = base[i % len(base)]
            new = f"{src[:20]}c{i:04d}"
            w.execute(f"INSERT INTO conversations ({', '.join(conv_cols)}) SELECT "
                      + ", ".join("?" if c == "id" else c for c in conv_cols) + " FROM conversations WHERE id=?",
                      [new, src])
            w.execute(f"INSERT INTO turns (conversation_id, {', '.join(turn_cols)}) SELECT ?, {', '.join(turn_cols)} "
                      "FROM turns WHERE conversation_id=?", [new, src])


@pytest.fixture(scope="module")
def review_data(tmp_path_factory, indexed_sample_dir, embedder):
    data = tmp_path_factory.mktemp("review500") / "data"
    copy_tree(indexed_sample_dir, data)
    docs = data.parent / "links"
    docs.mkdir()
    (docs / "deposit-links.md").write_text(LINK_DOC, encoding="utf-8")
    wb = Workbench(make_settings(data), store_idle_close_s=0, embedder=embedder)
    wb.corpus.ingest_path(docs)
    with FakeGemini(latency=0.0) as fake:
        ids = generate(wb, fake, n=12, max_turns=2, seed=5)
    # One conversation carries links in its passages, briefing and answer (as corpus and model text can).
    linked = ids[0]
    with wb.db.write() as w:
        for t in w.execute("SELECT id, retrieval FROM turns WHERE conversation_id=? AND retrieval IS NOT NULL",
                           [linked]).fetchall():
            passages = loads(t["retrieval"], [])
            if passages:
                passages[0]["text"] = passages[0]["text"] + "\n" + LINKS
                passages[0]["title"] = "Links https://evil.example/title"
            w.execute("UPDATE turns SET retrieval=? WHERE id=?", [dumps(passages), t["id"]])
        w.execute("UPDATE conversations SET briefing=? WHERE id=?", [LINKS, linked])
    ReviewStore(wb.db).edit_message(linked, 1, "The notice is at https://evil.example/answer and www.evil.example. "
                                               "[more](https://evil.example/more)", "setup")
    quality.score_conversations(wb.db, embedder)
    clone_to(wb.db, QUEUE)
    assert wb.db.scalar("SELECT COUNT(*) FROM conversations") == QUEUE
    assert wb.db.scalar("SELECT COUNT(*) FROM conversations WHERE grounded_at IS NULL") == 0
    wb.close()
    return {"data": data, "linked": linked, "ids": ids}


@pytest.fixture(scope="module")
def app(review_data):
    with FakeGemini(latency=0.05) as fake, serve_app(review_data["data"], {
            "GEMINI_API_KEY": FAKE_KEY, "GOOGLE_GEMINI_BASE_URL": fake.base_url}) as a:
        yield {**a, **review_data}


def set_reviewer(page, name: str) -> None:
    box = page.get_by_role("textbox", name="Reviewer name")
    box.fill(name)
    box.press("Enter")
    settle(page)
    page.locator('[data-testid="stMainBlockContainer"] h1').first.click()  # keys go to the page, not a field


def heading_number(page) -> int:
    text = page.locator("h3", has_text=re.compile(r"^Conversation \d")).first.inner_text()
    return int(re.search(r"Conversation ([\d,]+) of", text).group(1).replace(",", ""))


def heading_numbers(page) -> tuple[int, int]:
    """(n, N) of the heading "Conversation n of N"."""
    text = page.locator("h3", has_text=re.compile(r"^Conversation \d")).first.inner_text().replace(",", "")
    m = re.search(r"Conversation (\d+) of (\d+)", text)
    return int(m.group(1)), int(m.group(2))


def timed_key(page, key: str, expect_number: int) -> tuple[float, float]:
    """Seconds from the key press until the heading shows conversation ``expect_number`` (shown), and until
    the panel's run has finished (settled)."""
    started = time.perf_counter()
    page.keyboard.press(key)
    page.wait_for_function(
        "n => [...document.querySelectorAll('h3')].some(h => new RegExp('^Conversation ' + n + ' of').test("
        "h.innerText.replace(/,/g, '')))", arg=expect_number, polling="raf", timeout=30_000)
    shown = time.perf_counter() - started
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30_000)
    return shown, time.perf_counter() - started


@pytest.mark.timed
def test_review_key_to_next_at_500_conversations(app, browser):
    context, page = new_page(browser)
    try:
        open_page(page, app, "review")
        set_reviewer(page, "Timer")
        wait_for_text(page, rf"Conversation 1 of {QUEUE}")
        assert "Matching the filter" in main_text(page)
        for _ in range(2):  # warm: the first opens read the server's caches (the measurement is steady state)
            n = heading_number(page)
            timed_key(page, "j", n + 1)
        nexts, settled = [], []
        for _ in range(12):
            n = heading_number(page)
            shown, done = timed_key(page, "j", n + 1)
            nexts.append(shown)
            settled.append(done)
        backs = []
        for _ in range(4):
            n = heading_number(page)
            backs.append(timed_key(page, "k", n - 1)[0])
        # Rate and approve: the rating stays on this conversation, approve opens the next of the "new" queue
        # (which then holds one fewer, so the next is shown at the same position).
        approves, flagged_approves, asks = [], [], []
        for _ in range(4):
            n = heading_number(page)
            page.keyboard.press("4")
            wait_for_text(page, r"rating 4")
            settle(page)
            page.locator('[data-testid="stMainBlockContainer"] h1').first.click()
            started = time.perf_counter()
            page.keyboard.press("a")
            page.wait_for_function(
                "() => /rating –/.test(document.body.innerText) || [...document.querySelectorAll('button')]"
                ".some(b => b.innerText.includes('Approve anyway'))", polling="raf", timeout=30_000)
            asked = page.get_by_role("button", name=re.compile("Approve anyway")).count() > 0
            if asked:  # flagged: asked in the panel; A again approves (timed from that press: it opens the next)
                assert "flagged" in main_text(page)
                asked_after = time.perf_counter() - started
                started = time.perf_counter()
                page.keyboard.press("a")
            page.wait_for_function("() => /rating –/.test(document.body.innerText)", polling="raf", timeout=30_000)
            (flagged_approves if asked else approves).append(time.perf_counter() - started)
            if asked:
                asks.append(asked_after)
            settle(page)
            assert heading_number(page) == n  # the approved one left the "new" queue: the next is at n
        # Discard: D asks for the reason in a dialog, a letter picks it (O: off topic), the next opens.
        # Timed from D to the next conversation shown (the queue then holds one fewer: "n of N-1").
        discards = []
        for _ in range(2):
            # The queue's size from the database, not the heading: on a loaded machine the heading read here can
            # still be the one drawn before the last approve, and the awaited "of N-1" would then never come.
            queue_db = Database(app["data"] / "groundwork.db")
            total = queue_db.scalar("SELECT COUNT(*) FROM conversations WHERE status='new'")
            queue_db.close()
            page.locator('[data-testid="stMainBlockContainer"] h1').first.click()
            started = time.perf_counter()
            page.keyboard.press("d")
            page.get_by_role("dialog").get_by_text("Why discard this conversation?").wait_for()
            reason_ready(page, "off topic")  # its letter key pressed before it is bound goes nowhere
            page.keyboard.press("o")
            try:
                page.wait_for_function(
                    "t => [...document.querySelectorAll('h3')].some(h => /^Conversation \\d+ of \\d+/.test(h.innerText) && "
                    "h.innerText.replace(/,/g, '').match(/ of (\\d+)/)[1] === String(t))", arg=total - 1, polling="raf",
                    timeout=30_000)
            except Exception as e:  # say what the page and the database show, not only that time ran out
                shot(page, "review-discard-timeout")
                now = Database(app["data"] / "groundwork.db")
                state = {"expected_total": total - 1,
                         "new_in_db": now.scalar("SELECT COUNT(*) FROM conversations WHERE status='new'"),
                         "discarded_in_db": now.scalar("SELECT COUNT(*) FROM conversations WHERE status='discarded'"),
                         "dialog_open": page.get_by_role("dialog").count(),
                         "focus": page.evaluate("() => document.activeElement && document.activeElement.outerHTML"
                                                ".slice(0, 200)"),
                         "details": page.get_by_role("dialog").get_by_role("textbox").input_value()
                         if page.get_by_role("dialog").count() else None,
                         "headings": page.locator("h3").all_inner_texts()[:3]}
                now.close()
                pytest.fail(f"the next conversation never showed after a discard: {state} ({e})")
            discards.append(time.perf_counter() - started)
            page.get_by_role("dialog").wait_for(state="hidden")
            settle(page)
        db = Database(app["data"] / "groundwork.db")
        assert db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'") == 4
        assert db.scalar("SELECT COUNT(*) FROM reviewer_verdicts WHERE reviewer='Timer' AND rating=4 "
                         "AND decision='approved'") == 4
        assert db.scalar("SELECT COUNT(*) FROM reviewer_verdicts WHERE reviewer='Timer' AND decision='discarded'") == 2
        db.close()
        timings = {"queue": QUEUE, "next_shown_s": nexts, "next_settled_s": settled, "prev_shown_s": backs,
                   "approve_to_next_s": approves, "flagged_ask_shown_s": asks,
                   "flagged_approve_again_to_next_s": flagged_approves,
                   "discard_with_reason_to_next_s": discards,
                   "median_next_shown_s": statistics.median(nexts), "max_next_shown_s": max(nexts),
                   "median_next_settled_s": statistics.median(settled),
                   "median_approve_s": statistics.median(approves + flagged_approves)}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "review-timings.json").write_text(json.dumps(timings, indent=2))
        print("\nreview timings:", json.dumps({k: v for k, v in timings.items() if not isinstance(v, list)}))
        print("next shown:", [round(x, 3) for x in nexts])
        assert statistics.median(nexts) <= 1.0, timings
        assert statistics.median(settled) <= 1.5, timings
        assert statistics.median(backs) <= 1.0, timings
        assert statistics.median(approves + flagged_approves) <= 1.0, timings
        assert statistics.median(discards) <= 1.0, timings  # the reason asked in a dialog included
    finally:
        context.close()


def test_reviewer_name_survives_a_reload_and_stays_in_its_browser(app, browser):
    context, page = new_page(browser)
    other, other_page = new_page(browser)
    try:
        open_page(page, app, "review")
        set_reviewer(page, "Ana Lopes")
        page.reload()
        page.locator('[data-testid="stSidebarNav"]').wait_for()
        box = page.get_by_role("textbox", name="Reviewer name")
        box.wait_for()
        settle(page)
        assert box.input_value() == "Ana Lopes"
        assert "Type your name to review" not in page.locator('[data-testid="stSidebar"]').inner_text()
        open_page(other_page, app, "review")  # another browser: its own reviewer
        assert other_page.get_by_role("textbox", name="Reviewer name").input_value() == ""
    finally:
        context.close()
        other.close()


def test_evidence_table_is_readable_at_1024_px(app, browser):
    context, page = new_page(browser, width=1024)
    try:
        open_page(page, app, "review")
        wait_for_text(page, r"Conversation 1 of")
        evidence = page.locator('[data-testid="stExpander"]').filter(
            has_text=re.compile(r"(Evidence for each sentence|Unsupported sentences) of the turn")).first
        evidence.wait_for()
        summary = evidence.locator("summary").first
        if not evidence.locator("table").first.is_visible():
            summary.click()
        table = evidence.locator("table").first
        table.wait_for()
        page.wait_for_timeout(500)
        shot(page, "review-evidence-1024")
        cells = table.evaluate("""t => [...t.querySelectorAll('tr')].slice(1).map(tr => [...tr.cells].map(c => {
            const r = c.getBoundingClientRect();
            const words = c.innerText.trim().split(/\\s+/).length;
            const range = document.createRange();
            range.selectNodeContents(c);
            const tops = new Set([...range.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top)));
            return {width: r.width, words, lines: tops.size, right: r.right};
        }))""")
        assert cells, "no evidence rows"
        viewport = 1024
        for row in cells:
            sentence, passage = row[1], row[2]
            assert sentence["width"] >= 150 and passage["width"] >= 150, cells
            if sentence["words"] >= 6:  # never one word per line
                assert sentence["lines"] < sentence["words"] / 2, cells
        # Not clipped: what does not fit scrolls inside its box; nothing reaches past the window.
        clipped = table.evaluate("""t => { const box = t.closest('.gw-evidence');
            return box ? (box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== 'auto') : true; }""")
        assert not clipped
        assert max(c["right"] for row in cells for c in row) <= viewport + 1 or not clipped
    finally:
        context.close()


def test_no_live_link_from_corpus_or_model_text_on_any_page(app, browser):
    context, page = new_page(browser)
    try:
        open_page(page, app, "review")
        page.locator('[data-testid="stExpander"] summary', has_text="Queue").first.click()
        page.get_by_role("textbox", name="Go to conversation id").fill(app["linked"])
        page.get_by_role("textbox", name="Go to conversation id").press("Enter")
        page.get_by_role("button", name="Go").click()
        # The id also sits in the queue table's hidden grid cells: wait for a visible place that shows it.
        page.get_by_text(re.compile(app["linked"])).locator("visible=true").first.wait_for(timeout=120_000)
        for expander in page.locator('[data-testid="stExpander"] summary').all():
            if "Links" in expander.inner_text() or "Briefing" in expander.inner_text():
                expander.click()
        settle(page)
        assert "evil" in main_text(page)  # the text is there, shown as text
        assert page.evaluate(NO_LIVE_LINK_JS) == [], "Review"
        nav_to(page, "Corpus")
        settle(page)
        search = page.get_by_role("textbox").filter(has_not=page.locator("[aria-label='Reviewer name']"))
        box = page.get_by_role("textbox", name=re.compile("Search", re.I)).first
        if box.count():
            box.fill("deposit notice links")
            box.press("Enter")
            settle(page)
        for expander in page.locator('[data-testid="stExpander"] summary').all()[:12]:
            expander.click()
        settle(page)
        assert page.evaluate(NO_LIVE_LINK_JS) == [], "Corpus"
        nav_to(page, "Workshop")
        page.get_by_role("textbox", name="Question").fill("deposit return notice posted online links")
        page.get_by_role("textbox", name="Question").press("Enter")
        wait_for_text(page, "Deposit notice links", 90)
        settle(page)
        assert page.evaluate(NO_LIVE_LINK_JS) == [], "Workshop"
        for title in ("Dashboard", "Export", "Prompts"):
            nav_to(page, title)
            settle(page)
            assert page.evaluate(NO_LIVE_LINK_JS) == [], title
        open_page(page, app, "")  # Home
        settle(page)
        assert page.evaluate(NO_LIVE_LINK_JS) == [], "Home"
        del search
    finally:
        context.close()


def approve_key(page) -> None:
    """A; a conversation the checks flagged asks in the panel, and A again approves it."""
    page.locator('[data-testid="stMainBlockContainer"] h1').first.click()
    page.keyboard.press("a")
    page.wait_for_timeout(300)
    settle(page)
    if page.get_by_role("button", name=re.compile("Approve anyway")).count():
        page.keyboard.press("a")
        settle(page)


def my_queue(page, name: str) -> None:
    open_page(page, page.app, "review")
    set_reviewer(page, name)
    sidebar = page.locator('[data-testid="stSidebar"]')
    for label in ("Only conversations assigned to me", "Hide conversations I decided"):
        sidebar.get_by_text(label).click()
        settle(page)
    page.locator('[data-testid="stMainBlockContainer"] h1').first.click()


STATUS_FILTER = (re.compile(r"^Status$"), '[data-testid="stSidebar"]')  # the sidebar's Status select box


def status_shown(page) -> str:
    """The value the sidebar's Status filter shows."""
    return select_box(page, *STATUS_FILTER).locator('input[role="combobox"]').input_value()


def test_team_review_in_two_browsers(app, browser):
    """ana splits the queue between ana and ben, two reviews each; both review in their own browser; the
    Dashboard shows the conversation they disagree on, and export can keep only what they agree on."""
    db = Database(app["data"] / "groundwork.db")
    store = ReviewStore(db)
    ana_ctx, ana = new_page(browser)
    ben_ctx, ben = new_page(browser)
    ana.app = ben.app = app
    # One approved before the team starts (the test does not lean on an earlier test's approvals).
    earlier = db.scalar("SELECT id FROM conversations WHERE status='new' ORDER BY created_at DESC, id DESC LIMIT 1")
    store.approve(earlier, "lead")
    approved_before = db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'")
    try:
        open_page(ana, app, "review")
        set_reviewer(ana, "ana")
        ana.locator('[data-testid="stExpander"] summary', has_text="Team review").first.click()
        settle(ana)
        names = ana.get_by_role("textbox", name="Reviewers (comma-separated)")
        names.fill("ana, ben")
        names.press("Enter")
        settle(ana)
        # Typed into the field itself (fill focuses it): keys sent to wherever the focus was after a rerun once
        # landed in the sidebar's Status filter and split every conversation ("status any").
        needed = ana.get_by_role("spinbutton", name="Reviews needed per conversation")
        needed.fill("2")
        needed.press("Enter")
        settle(ana)
        assert db.scalar("SELECT COUNT(*) FROM review_assignments") == 0  # nothing split before the button
        # The split follows the queue filter, which should still be the default "new". In one CI run it showed
        # "any" by now (no step here touches it; not seen in local runs): say so in the warnings summary and
        # set it back as the lead would on seeing it, so the split below is the one this test is about.
        if status_shown(ana) != "new":
            warnings.warn(f"the Review page's Status filter showed {status_shown(ana)!r} before the split")
            pick(ana, STATUS_FILTER[0], "new", within=STATUS_FILTER[1])
        assert status_shown(ana) == "new"
        ana.get_by_role("button", name="Split the queue").click()
        wait_for_text(ana, r"Queue split: ana [\d,]+, ben [\d,]+ conversation\(s\); 2 review\(s\) needed each")
        new = db.scalar("SELECT COUNT(*) FROM conversations WHERE status='new'")
        split = db.rows("SELECT ts, actor, payload FROM events WHERE kind='review.split'")
        assert db.scalar("SELECT COUNT(*) FROM review_assignments WHERE reviewer='ben'") == new, split
        first, second = [r["id"] for r in store.page(ReviewFilter(status="new", assigned_to="ana"), limit=2)]

        my_queue(ana, "ana")
        wait_for_text(ana, first)
        approve_key(ana)  # ana approves the first: one of two decisions, so it stays new (and leaves her queue)
        wait_for_text(ana, second)
        assert db.scalar("SELECT status FROM conversations WHERE id=?", [first]) == "new"
        approve_key(ana)

        my_queue(ben, "ben")  # ben's own browser: the same conversations, not yet decided by him
        wait_for_text(ben, first)
        assert "1 of 2 decision(s)" in main_text(ben) and "ana: approved" in main_text(ben)
        ben.locator('[data-testid="stMainBlockContainer"] h1').first.click()  # keys go to the page, not a field
        ben.keyboard.press("d")
        ben.get_by_role("dialog").get_by_text("Why discard this conversation?").wait_for()
        reason_ready(ben, "off topic")  # its letter key pressed before it is bound goes nowhere
        ben.keyboard.press("o")  # off topic: ben disagrees with ana
        ben.get_by_role("dialog").wait_for(state="hidden")
        wait_for_text(ben, second)
        approve_key(ben)  # ben agrees with ana on the second: approved
        settle(ben)

        verdicts = {(r["conversation_id"], r["reviewer"]): r["decision"]
                    for r in db.rows("SELECT * FROM reviewer_verdicts WHERE reviewer IN ('ana', 'ben')")}
        assert verdicts == {(first, "ana"): "approved", (second, "ana"): "approved",
                            (first, "ben"): "discarded", (second, "ben"): "approved"}
        assert db.scalar("SELECT status FROM conversations WHERE id=?", [first]) == "new"
        assert db.scalar("SELECT status FROM conversations WHERE id=?", [second]) == "approved"

        nav_to(ana, "Dashboard")
        wait_for_text(ana, "Agreement between reviewers")
        settle(ana)
        shot(ana, "team-dashboard")
        dashboard = main_text(ana)
        assert "Alpha on decisions" in dashboard and "reviewers disagree on" in dashboard
        assert first in dashboard and second not in dashboard  # the disagreement, not the agreed one

        nav_to(ana, "Export")
        ana.get_by_text("Only conversations the reviewers agree on").click()
        settle(ana)
        # Splitting the new queue leaves what was approved before alone: the agreed filter has something to drop.
        approved = db.rows("SELECT id, reviews_needed, reviewed_by FROM conversations WHERE status='approved'")
        assert len(approved) == approved_before + 1, (approved_before, approved, db.rows(
            "SELECT kind, actor, conversation_id, payload FROM events WHERE kind LIKE 'review.%' ORDER BY id"))
        assert len(approved) > 1
        summary = main_text(ana)
        assert "reviewers agree" in summary
        approved_agreed = store.count(ReviewFilter(status="approved", require_agreement=True))
        assert approved_agreed == 1
    finally:
        ana_ctx.close()
        ben_ctx.close()
        db.close()


def test_workshop_keeps_its_tab_and_shows_no_raw_step(app, browser):
    context, page = new_page(browser)
    try:
        open_page(page, app, "workshop")
        page.get_by_role("tab", name="Dry run").click()
        settle(page)
        page.get_by_role("button", name="Start a dry run").click()
        settle(page)
        for _ in range(3):  # briefing, question, retrieval: each click a whole-page run
            page.get_by_role("button", name="Next step").click()
            settle(page)
            assert page.get_by_role("tab", name="Dry run").get_attribute("aria-selected") == "true"
        text = main_text(page)
        assert "Sampled briefing" in text and "Turn 1: question written by the instruction prompt" in text
        assert "Step(" not in text  # Streamlit's magic wrote each step's repr above the title
        assert text.lstrip().startswith("Workshop"), text[:80]  # nothing ("None") above the title
    finally:
        context.close()
