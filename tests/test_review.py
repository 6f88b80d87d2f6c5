"""Review queue and actions on real SQLite, with conversations generated through the fake Gemini server."""

import time

import pytest

from core.db import dumps, loads, new_id, now
from core.generation.engine import GenerationRun, RunConfig
from core.errors import NotFoundError, ValidationError
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.review.store import ReviewFilter, ReviewStore, escape_markdown, preferences_of

KEY = "AIzaSy-review-test-key-00000000000000"


@pytest.fixture
def fake():
    with FakeGemini(latency=0.0) as server:
        yield server


def gemini(wb, fake):
    """Settings and a provider factory that reach the fake Gemini server through the real client."""
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, gemini_max_retries=2,
                                   request_timeout=5.0)
    return settings, lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01, max_backoff=0.05,
                                                 max_retry_wait=1.0)


def generate(wb, fake, n=6, max_turns=3, seed=0) -> list[str]:
    """Run a real (small) generation batch; returns the new conversation ids in queue order."""
    settings, factory = gemini(wb, fake)
    run = GenerationRun(settings, wb.db, wb.corpus, factory,
                        config=RunConfig(num_dialogs=n, max_turns=max_turns, max_concurrency=4, seed=seed))
    assert run.run().status == "completed"
    return [r["id"] for r in wb.db.rows("SELECT id FROM conversations WHERE run_id=? ORDER BY created_at, id",
                                        [run.run_id])]


def multi_turn(wb, ids, answers=2) -> str:
    """A conversation with at least ``answers`` assistant turns."""
    for cid in ids:
        if wb.db.scalar("SELECT COUNT(*) FROM turns WHERE conversation_id=? AND role='assistant'", [cid]) >= answers:
            return cid
    raise AssertionError(f"no conversation with {answers} answers was generated")


@pytest.fixture
def generated(indexed_wb, fake):
    return indexed_wb, generate(indexed_wb, fake, n=8)


def test_queue_counts_paging_and_navigation(generated):
    wb, ids = generated
    store = ReviewStore(wb.db)
    everything = ReviewFilter()
    assert store.count(everything) == 8
    assert [r["id"] for r in store.page(everything, limit=3, offset=0)] == ids[:3]
    assert [r["id"] for r in store.page(everything, limit=3, offset=6)] == ids[6:]
    for cid in ids[:3]:
        store.approve(cid, "ana")
    store.discard(ids[3], "off topic", "ana")
    counts = store.status_counts(ReviewFilter(status="new"))
    assert counts == {"new": 4, "approved": 3, "discarded": 1, "any": 8}
    new = ReviewFilter(status="new")
    assert store.count(new) == 4 and store.first(new) == ids[4]
    # Walk the queue both ways.
    walked, cur = [], store.first(everything)
    while cur:
        walked.append(cur)
        cur = store.next_id(everything, cur)
    assert walked == ids
    assert store.prev_id(everything, ids[0]) is None and store.prev_id(everything, ids[5]) == ids[4]
    assert store.position(everything, ids[5]) == 6
    # The current one leaves the filter (approved while filtering "new"): next still finds its successor.
    store.approve(ids[4], "ana")
    assert not store.matches(new, ids[4]) and store.position(new, ids[4]) is None
    assert store.next_id(new, ids[4]) == ids[5]


def test_filters_by_rating_tag_run_model_version_and_text(generated, fake):
    wb, ids = generated
    store = ReviewStore(wb.db)
    store.rate(ids[0], 5, "ana")
    store.rate(ids[1], 2, "ana")
    store.tag(ids[1], "citation-error", "ana")
    store.tag(ids[2], "citation-error", "ben")
    assert store.count(ReviewFilter(min_rating=4)) == 1
    assert store.count(ReviewFilter(max_rating=3)) == 1
    assert store.count(ReviewFilter(min_rating=1, max_rating=5)) == 2  # unrated conversations fail rating bounds
    assert {r["id"] for r in store.page(ReviewFilter(tag="citation-error"))} == {ids[1], ids[2]}
    run_id = wb.db.scalar("SELECT run_id FROM conversations WHERE id=?", [ids[0]])
    other = generate(wb, fake, n=2, max_turns=1, seed=9)
    assert store.count(ReviewFilter()) == 10 and store.count(ReviewFilter(run_id=run_id)) == 8
    assert store.count(ReviewFilter(model="gemini-2.5-flash")) == 10 and store.count(ReviewFilter(model="x")) == 0
    version = loads(wb.db.scalar("SELECT prompt_versions FROM conversations WHERE id=?", [other[0]]))["respondent"]
    assert store.count(ReviewFilter(prompt_version=version)) == 10
    assert store.count(ReviewFilter(prompt_version=99999)) == 0
    word = "zyxwvutsrq"
    assert store.count(ReviewFilter(search=word)) == 0
    store.edit_message(ids[3], 1, f"A corrected answer mentioning {word}.", "ana")
    assert [r["id"] for r in store.page(ReviewFilter(search=word))] == [ids[3]]
    assert store.count(ReviewFilter(search='" OR "')) == 0  # FTS syntax in user input is not an error
    options = store.filter_options()
    assert options["tags"] == ["citation-error"] and run_id in [r["id"] for r in options["runs"]]
    with pytest.raises(ValidationError, match="minimum rating"):
        store.count(ReviewFilter(min_rating=4, max_rating=2))
    with pytest.raises(ValidationError, match="Unknown status"):
        store.count(ReviewFilter(status="pending"))


def test_actions_are_saved_with_who_and_when(generated):
    wb, ids = generated
    store = ReviewStore(wb.db)
    cid = ids[0]
    store.rate(cid, 4, "ana")
    store.note(cid, "Cites the right case.", "ana")
    store.discard(cid, "ungrounded", "ben")
    row = wb.db.one("SELECT * FROM conversations WHERE id=?", [cid])
    assert (row["rating"], row["note"], row["status"], row["discard_reason"]) == (4, "Cites the right case.",
                                                                                  "discarded", "ungrounded")
    assert row["reviewed_by"] == "ben" and row["reviewed_at"]
    store.restore(cid, "ben")  # discard is soft: undo brings it back to new
    assert wb.db.one("SELECT status, discard_reason FROM conversations WHERE id=?", [cid]) == {
        "status": "new", "discard_reason": None}
    store.approve(cid, "ana")
    history = store.history(cid)
    assert [h["kind"] for h in history] == ["review.approve", "review.restore", "review.discard", "review.note",
                                            "review.rate"]
    assert history[2]["actor"] == "ben" and history[2]["payload"]["reason"] == "ungrounded" and history[0]["ts"]
    for bad in (0, 6, "3", True, 2.5):
        with pytest.raises(ValidationError, match="1 to 5"):
            store.rate(cid, bad, "ana")
    with pytest.raises(ValidationError, match="reviewer name"):
        store.approve(cid, "  ")
    with pytest.raises(ValidationError, match="why"):
        store.discard(cid, " ", "ana")
    with pytest.raises(NotFoundError, match="does not exist"):
        store.approve("nope", "ana")
    with pytest.raises(ValidationError, match="tag cannot be empty"):
        store.tag(cid, "  ", "ana")
    store.tag(cid, "  legal   citations ", "ana")
    store.tag(cid, "legal citations", "ana")  # idempotent
    assert store.get(cid)["tags"] == ["legal citations"]
    store.untag(cid, "legal citations", "ana")
    assert store.get(cid)["tags"] == []


def test_edit_keeps_the_original_marks_it_and_refuses_empty_text(generated):
    wb, ids = generated
    store = ReviewStore(wb.db)
    cid = ids[0]
    first = store.get(cid)["turns"][1]["content"]
    assert store.edit_message(cid, 1, "Better answer.", "ana")
    assert store.edit_message(cid, 1, "Even better answer.", "ben")
    t = store.get(cid)["turns"][1]
    assert t["content"] == "Even better answer." and t["original_content"] == first  # the first original stays
    assert t["edited_by"] == "ben" and t["edited_at"] and t["edited"]
    assert not store.edit_message(cid, 1, "Even better answer.", "ben")  # unchanged: nothing recorded
    search = wb.db.scalar("SELECT search_text FROM conversations WHERE id=?", [cid])
    assert "Even better answer." in search and first not in search
    with pytest.raises(ValidationError, match=f"Conversation {cid}, turn 1 answer: a message cannot be empty"):
        store.edit_message(cid, 1, "  \n ", "ana")
    assert store.get(cid)["turns"][1]["content"] == "Even better answer."  # nothing lost
    assert store.revert_message(cid, 1, "ana")
    t = store.get(cid)["turns"][1]
    assert t["content"] == first and t["original_content"] is None and t["edited_by"] is None
    edits = [h for h in store.history(cid) if h["kind"] == "review.edit"]
    assert len(edits) == 3 and edits[-1]["payload"]["before"] == first
    with pytest.raises(NotFoundError, match="no turn 99"):
        store.edit_message(cid, 99, "x", "ana")


def test_mark_turn_bad_only_for_answers(generated):
    wb, ids = generated
    store = ReviewStore(wb.db)
    store.mark_turn(ids[0], 1, True, "ana")
    assert wb.db.scalar("SELECT weight FROM turns WHERE conversation_id=? AND idx=1", [ids[0]]) == 0
    store.mark_turn(ids[0], 1, False, "ana")
    assert wb.db.scalar("SELECT weight FROM turns WHERE conversation_id=? AND idx=1", [ids[0]]) == 1
    with pytest.raises(ValidationError, match="only assistant turns"):
        store.mark_turn(ids[0], 0, True, "ana")


def test_bulk_actions_on_the_filter_with_a_confirmed_count(generated):
    wb, ids = generated
    store = ReviewStore(wb.db)
    store.rate(ids[0], 5, "ana")
    store.rate(ids[1], 4, "ana")
    good = ReviewFilter(status="new", min_rating=4)
    with pytest.raises(ValidationError, match="now matches 2 conversations, not the 3"):
        store.bulk_status(good, "approved", "ana", expected=3)
    assert store.count(ReviewFilter(status="approved")) == 0  # nothing changed
    assert store.bulk_status(good, "approved", "ana", expected=2) == 2
    assert store.count(ReviewFilter(status="approved")) == 2
    assert store.bulk_tag(ReviewFilter(status="new"), "batch-1", "ana") == 6
    assert store.count(ReviewFilter(tag="batch-1")) == 6
    assert store.bulk_status(ReviewFilter(status="new"), "discarded", "ana", reason="weak") == 6
    assert store.count(ReviewFilter(status="discarded")) == 6
    assert wb.db.scalar("SELECT COUNT(*) FROM events WHERE kind='review.discard' AND actor='ana'") == 6
    with pytest.raises(ValidationError, match="No conversations match"):
        store.bulk_status(ReviewFilter(status="new"), "approved", "ana")
    with pytest.raises(ValidationError, match="why"):
        store.bulk_status(ReviewFilter(status="discarded"), "discarded", "ana")


def test_regenerate_from_a_turn_keeps_the_prefix_and_writes_the_rest(generated, fake):
    wb, ids = generated
    store = ReviewStore(wb.db)
    cid = multi_turn(wb, ids)
    old = store.get(cid)
    answers = sum(1 for t in old["turns"] if t["role"] == "assistant")
    store.edit_message(cid, 2, "Could you instead explain who pays the attorney fees?", "ana")
    settings, factory = gemini(wb, fake)
    new_id_ = store.regenerate(cid, 2, "ana", settings=settings, corpus=wb.corpus, provider_factory=factory, seed=1)
    new = store.get(new_id_)
    assert new["parent_id"] == cid and new["question"] == old["question"]
    assert [t["content"] for t in new["turns"][:3]] == [t["content"] for t in store.get(cid)["turns"][:3]]
    assert new["turns"][2]["original_content"] == old["turns"][2]["content"]  # the edit mark travels along
    assert sum(1 for t in new["turns"] if t["role"] == "assistant") == answers
    assert new["turns"][3]["role"] == "assistant" and new["turns"][3]["retrieval"]
    assert new["turns"][3]["content"].strip()
    assert new["turns"][1]["retrieval"] == old["turns"][1]["retrieval"]
    assert wb.db.scalar("SELECT kind FROM runs WHERE id=?", [new["run_id"]]) == "regenerate"
    assert any(c["purpose"] == "respondent" for c in new["calls"])
    parent = store.get(cid)
    assert parent["status"] == "discarded" and new_id_ in parent["discard_reason"]
    assert [c["id"] for c in parent["children"]] == [new_id_]
    # The reviewer prefers the new version: a regenerate preference, withdrawn when they change their mind.
    assert store.prefer(new_id_, cid, "ana") == "regenerate"
    assert preferences_of(wb.db, new_id_) == [{"rejected_id": cid, "source": "regenerate"}]
    store.prefer(cid, new_id_, "ana")
    assert preferences_of(wb.db, new_id_) == [] and preferences_of(wb.db, cid)[0]["rejected_id"] == new_id_
    with pytest.raises(ValidationError, match="nothing to compare"):
        store.prefer(ids[0], ids[1] if ids[0] != cid else ids[2], "ana")
    last = max(t["idx"] for t in new["turns"])
    with pytest.raises(ValidationError, match="nothing after it to regenerate"):
        store.regenerate(new_id_, last, "ana", settings=settings, corpus=wb.corpus, provider_factory=factory)


def test_queue_stays_fast_at_10000_conversations(tmp_path):
    from core.db import Database

    db = Database(tmp_path / "big.db")
    insert_synthetic(db, 10_000)
    store = ReviewStore(db)
    f = ReviewFilter(status="new")
    started = time.perf_counter()
    counts = store.status_counts(f)
    rows = store.page(f, limit=25, offset=9_000)
    last = rows[-1]["id"]
    nxt = store.next_id(f, last)
    position = store.position(f, last)
    elapsed = time.perf_counter() - started
    assert counts["new"] == 10_000 and len(rows) == 25 and nxt and position == 9_025
    assert elapsed < 1.0, f"queue queries took {elapsed:.2f} s at 10,000 conversations"


def insert_synthetic(db, n: int, run_id: str = "synthetic", groups: int = 50, start: int = 0) -> list[str]:
    """``n`` two-turn conversations written straight into SQLite (for scale tests), briefed from ``groups`` chunks."""
    ids = []
    with db.write() as w:
        w["runs"].insert({"id": run_id, "kind": "demo", "status": "completed", "num_dialogs": n, "saved": n,
                          "failed": 0, "provider": "synthetic", "model": "synthetic-model", "created_at": now()},
                         replace=True)
        for i in range(start, start + n):
            cid = new_id()
            ids.append(cid)
            question = f"Synthetic question {i} about the security deposit rules?"
            answer = f"Synthetic answer {i}: the deposit must be returned within 21 days."
            w.execute("INSERT INTO conversations (id, run_id, status, provider, model, prompt_versions, briefing, "
                      "briefing_ids, question, question_meta, num_turns, prompt_tokens, completion_tokens, "
                      "thinking_tokens, latency_ms, created_at, search_text) VALUES "
                      "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      [cid, run_id, "new", "synthetic", "synthetic-model", dumps({"respondent": 1}), "briefing",
                       dumps([f"chunk-{i % groups}"]), question, "{}", 1, 100, 20, 0, 10,
                       f"2026-01-01T{i // 60000 % 24:02d}:{i // 1000 % 60:02d}:00.{i % 1000:03d}+00:00",
                       f"{question}\n{answer}"])
            w.execute("INSERT INTO turns (conversation_id, idx, role, content, weight) VALUES (?,?,?,?,1)",
                      [cid, 0, "user", question])
            w.execute("INSERT INTO turns (conversation_id, idx, role, content, weight, retrieval) "
                      "VALUES (?,?,?,?,1,?)", [cid, 1, "assistant", answer, dumps([{
                          "id": f"chunk-{i % 50}", "score": 0.5, "text": "Deposits are due in 21 days.",
                          "document_id": f"doc-{i % 50}", "title": "Deposit rules", "source_path": "x.md",
                          "position": 0}])])
    return ids


def test_markdown_escaping_makes_hostile_text_inert():
    out = escape_markdown("[click](javascript:alert(1)) <script>x</script> **bold** $x$\nnext")
    assert "\\[click\\]\\(javascript" in out and "\\<script\\>" in out and "\\*\\*bold" in out and "\\$x\\$" in out
    assert out.endswith("  \nnext")
