"""Review and Export pages through Streamlit's AppTest, on real data dirs with generated conversations."""

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.corpus.sparse_copy import copy_tree
from core.db import Database
from fakes.gemini import FakeGemini
from core.review.store import ReviewFilter, ReviewStore, escape_markdown
from core.workbench import Workbench
from tests.conftest import ROOT, make_settings, new_app
from tests.test_review import generate


@pytest.fixture
def review_env(app_env, indexed_sample_dir, embedder):
    """An indexed data dir holding six generated conversations (fake Gemini, real client)."""
    copy_tree(indexed_sample_dir, app_env)
    wb = Workbench(make_settings(app_env), store_idle_close_s=0, embedder=embedder)
    with FakeGemini(latency=0.0) as fake:
        ids = generate(wb, fake, n=6, max_turns=2, seed=2)
    wb.close()
    return app_env, ids


def db_of(data_dir) -> Database:
    return Database(make_settings(data_dir).db_path)


def texts(at) -> str:
    return "\n".join(e.value for e in [*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success])


def approve(at, data_dir, cid):
    """Approve the open conversation; one the grounding checks flagged asks first, with the count."""
    from core.review import evidence
    from core import quality

    db = db_of(data_dir)
    flagged = evidence.flagged_answers(quality.grounding_details(db, cid))
    at.button(key="review.approve").click().run()
    confirm = [b for b in at.button if b.key == "review.approve_confirm"]
    assert bool(confirm) == bool(flagged), (flagged, [b.key for b in at.button])
    if flagged:
        assert f"flagged **{flagged}**" in texts(at)
        assert db.scalar("SELECT status FROM conversations WHERE id=?", [cid]) == "new"
        confirm[0].click().run()
    db.close()


def test_review_actions_are_saved_and_survive_a_new_session(review_env):
    data_dir, ids = review_env
    at = new_app("pages/review.py")
    assert at.session_state["review.current"] == ids[0]  # default filter: new, oldest first
    assert {m.label: m.value for m in at.metric}["Matching the filter"] == "6"
    at.button(key="review.approve").click().run()
    assert "reviewer name" in at.error[0].value.lower()  # no name yet: nothing is recorded anonymously
    at.text_input(key="review.reviewer_input").set_value("ana").run()
    at.button(key="review.rate4").click().run()
    at.text_input(key="review.new_tag").set_value("citation-error").run()
    at.button(key="review.add_tag").click().run()
    at.text_area(key=f"review.edit.{ids[0]}.1").set_value("A corrected answer from the passages.").run()
    at.button(key="review.save_edit.1").click().run()
    at.button(key="review.mark.1").click().run()
    at.text_area(key=f"review.note.{ids[0]}").set_value("checked against the opinion").run()
    at.button(key="review.save_note").click().run()
    assert not at.exception
    assert "marked bad" in texts(at) and "edited by ana" in texts(at)
    approve(at, data_dir, ids[0])  # approve moves on to the next
    assert at.session_state["review.current"] == ids[1]
    at.button(key="review.discard").click().run()  # D asks for the reason: nothing is discarded yet
    assert at.session_state["review.current"] == ids[1]
    assert db_of(data_dir).scalar("SELECT status FROM conversations WHERE id=?", [ids[1]]) == "new"
    at.button(key="review.discard_as.O").click().run()  # "off topic", key O
    assert at.session_state["review.current"] == ids[2]
    at.button(key="review.prev").click().run()  # nothing before it is still "new"
    assert at.session_state["review.current"] == ids[2] and "first conversation" in at.info[0].value
    assert not at.exception

    # A new browser session on a restarted server: everything is still there.
    st.cache_resource.clear()
    db = db_of(data_dir)
    row = db.one("SELECT * FROM conversations WHERE id=?", [ids[0]])
    assert (row["status"], row["rating"], row["note"], row["reviewed_by"]) == ("approved", 4,
                                                                               "checked against the opinion", "ana")
    turn = db.one("SELECT * FROM turns WHERE conversation_id=? AND idx=1", [ids[0]])
    assert turn["content"] == "A corrected answer from the passages." and turn["original_content"]
    assert turn["weight"] == 0 and turn["edited_by"] == "ana"
    assert db.one("SELECT status, discard_reason FROM conversations WHERE id=?", [ids[1]]) == {
        "status": "discarded", "discard_reason": "off topic"}
    assert db.scalar("SELECT tag FROM tags WHERE conversation_id=?", [ids[0]]) == "citation-error"
    kinds = [r["kind"] for r in db.rows("SELECT kind FROM events WHERE actor='ana' ORDER BY id")]
    assert kinds == ["review.rate", "review.tag", "review.edit", "review.mark_turn", "review.note", "review.approve",
                     "review.discard"]
    db.close()
    at = new_app("pages/review.py")
    at.selectbox(key="review.f.status").set_value("approved").run()
    assert at.session_state["review.current"] == ids[0]
    page = texts(at)
    assert "approved" in page and "rating 4" in page and "edited by ana" in page and "marked bad" in page
    assert any(b.label == "citation-error" and b.key == "review.untag.citation-error" for b in at.button)


def test_keyboard_shortcuts_are_bound(review_env):
    at = new_app("pages/review.py")
    shortcuts = {b.key: b.proto.shortcut for b in at.button if b.proto.shortcut}
    expected = {"review.next": "j", "review.prev": "k", "review.approve": "a", "review.discard": "d",
                "review.restore": "u",
                **{f"review.rate{n}": str(n) for n in range(1, 6)}}
    for key, value in expected.items():
        assert shortcuts[key].lower() == value, (key, shortcuts.get(key))
    at.button(key="review.next").click().run()
    at.button(key="review.next").click().run()
    _, ids = review_env
    assert at.session_state["review.current"] == ids[2]


def test_filter_search_and_bulk_approve_with_confirmation(review_env):
    data_dir, ids = review_env
    at = new_app("pages/review.py")
    at.text_input(key="review.reviewer_input").set_value("ben").run()
    db = db_of(data_dir)
    word = db.scalar("SELECT content FROM turns WHERE conversation_id=? AND idx=0", [ids[3]]).split()[-1]
    db.close()
    at.text_input(key="review.f.search").set_value(word).run()
    matching = int({m.label: m.value for m in at.metric}["Matching the filter"])
    assert 1 <= matching <= 6 and at.session_state["review.filter"]["search"] == word
    at.text_input(key="review.f.search").set_value("").run()
    at.button(key="review.bulk_prepare").click().run()
    assert "6" in at.warning[0].value and "Approve" in at.warning[0].value  # the count, before anything changes
    db = db_of(data_dir)
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'") == 0
    at.button(key="review.bulk_confirm").click().run()
    assert not at.exception
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE status='approved'") == 6
    assert "6 conversations updated" in at.success[0].value
    assert at.info and "No conversations match" in at.info[0].value  # the "new" queue is empty now
    db.close()


def test_hostile_text_is_shown_as_text(review_env):
    data_dir, ids = review_env
    db = db_of(data_dir)
    ReviewStore(db).edit_message(ids[0], 1, "<script>alert('x')</script> [phish](http://evil.example) **loud**",
                                 "mallory")
    db.close()
    at = new_app("pages/review.py")
    rendered = [m.value for m in at.markdown if "alert" in m.value]  # not passages that say "prescriptive"
    assert all("<script>" not in v and "\\<script\\>" in v and "\\[phish\\]" in v for v in rendered)
    # Graded on open, the answer is drawn as escaped HTML with its unsupported sentences marked.
    graded = [h.proto.body for h in at.get("html") if "alert" in h.proto.body]
    assert rendered or graded
    assert all("<script>" not in v and "&lt;script&gt;" in v and "<a " not in v for v in graded)
    assert all(not getattr(m.proto, "allow_html", False) for m in at.markdown)


def test_regenerate_from_the_page(review_env, monkeypatch):
    data_dir, ids = review_env
    db = db_of(data_dir)
    cid = next(c for c in ids if db.scalar("SELECT COUNT(*) FROM turns WHERE conversation_id=? AND "
                                           "role='assistant'", [c]) >= 2)
    db.close()
    with FakeGemini(latency=0.0) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "AIza-page-test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        at = new_app("pages/review.py")
        at.text_input(key="review.reviewer_input").set_value("ana").run()
        at.session_state["review.current"] = cid
        at.run()
        at.button(key="review.regen.0").click().run()
        assert not at.exception
        new = at.session_state["review.current"]
        assert new != cid and "Regenerated from turn 1" in at.success[0].value
        assert "Regenerated from" in texts(at)
        at.button(key="review.prefer_parent").click().run()
        assert at.success and "Preference saved" in at.success[0].value, [e.value for e in at.error]
    db = db_of(data_dir)
    assert db.scalar("SELECT parent_id FROM conversations WHERE id=?", [new]) == cid
    assert db.scalar("SELECT status FROM conversations WHERE id=?", [cid]) == "discarded"
    db.close()


def test_export_page_exports_what_i_approved_not_what_review_shows(review_env, tmp_path):
    data_dir, ids = review_env
    db = db_of(data_dir)
    store = ReviewStore(db)
    for cid in ids[:4]:
        store.approve(cid, "ana")
    store.tag(ids[0], "gold", "ana")
    store.tag(ids[4], "gold", "ana")
    db.close()
    # The export's own selection: approved conversations, with a one-line summary of what will be written.
    at = new_app("pages/export.py")
    assert at.selectbox(key="export.status").value == "approved"
    assert any(m.value.startswith("Will write 4 conversations \\(4 approved; ") for m in at.markdown), \
        [m.value for m in at.markdown]
    out = data_dir / "exports" / "page-export"  # a folder typed in the browser must be under an allowed root
    at.multiselect(key="export.formats").set_value(["openai", "raw"]).run()
    at.text_input(key="export.out").set_value(str(out)).run()
    at.checkbox(key="export.do_split").uncheck().run()
    at.button(key="export.run").click().run()
    assert not at.exception and at.success, [e.value for e in at.error]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection"]["conversations"] == 4 and set(manifest["formats"]) == {"openai", "raw"}
    assert any(b.label == "Download as zip" for b in at.get("download_button"))
    # The Review page's filter does not follow into Export; the export's own conditions select.
    at = new_app("pages/review.py")
    at.selectbox(key="review.f.status").set_value("any").run()
    at.selectbox(key="review.f.tag").set_value("gold").run()
    at.switch_page("pages/export.py").run()
    assert not at.exception
    assert at.selectbox(key="export.status").value == "approved"
    at.selectbox(key="export.status").set_value("any").run()
    at.selectbox(key="export.tag").set_value("gold").run()
    assert any(m.value.startswith("Will write 2 conversations") for m in at.markdown)
    out2 = data_dir / "exports" / "filtered"
    at.text_input(key="export.out").set_value(str(out2)).run()
    at.multiselect(key="export.formats").set_value(["raw"]).run()
    db = db_of(data_dir)  # Review graded what it opened: a flagged selection asks before it is exported
    flagged = ReviewStore(db).flagged_count(ReviewFilter(status="any", tag="gold"))
    db.close()
    at.checkbox(key="export.do_split").uncheck().run()
    at.button(key="export.run").click().run()
    confirm = [b for b in at.button if b.key == "export.confirm"]
    assert bool(confirm) == bool(flagged)
    if flagged:
        assert not (out2 / "manifest.json").exists()
        assert any(f"**{flagged}** of the 2 conversations" in m.value for m in at.markdown)
        confirm[0].click().run()
    rows = [json.loads(line) for line in (out2 / "raw.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {ids[0], ids[4]}
    # Bad input on the page: an empty selection is a message, not a traceback.
    at.selectbox(key="export.status").set_value("discarded").run()
    at.button(key="export.run").click().run()
    assert not at.exception and "Nothing to export" in at.error[0].value
    assert ReviewFilter.from_dict(at.session_state["review.filter"]).tag == "gold"  # Review keeps its own filter


def test_export_page_checks_the_conversations_never_checked_before_it_counts_flags(review_env):
    data_dir, ids = review_env
    db = db_of(data_dir)
    for cid in ids[:3]:
        ReviewStore(db).approve(cid, "ana")
    db.close()
    at = new_app("pages/export.py")  # approved: three conversations no run or Review page ever checked
    assert any("**3** of the 3 selected conversations were never checked" in i.value for i in at.info)
    at.button(key="export.grade").click().run()
    assert not at.exception and not any("never checked" in i.value for i in at.info)
    db = db_of(data_dir)
    unchecked = {r["id"] for r in db.rows("SELECT id FROM conversations WHERE grounded_at IS NULL")}
    flagged = ReviewStore(db).flagged_count(ReviewFilter(status="approved"))
    db.close()
    assert unchecked == set(ids[3:])  # the selection only
    assert bool(flagged) == any(f"**{flagged}** of the 3 selected conversations are flagged" in w.value
                                for w in at.warning)


def test_grounding_is_shown_with_evidence_marked_stale_and_regraded_after_an_edit(review_env, embedder):
    from core import quality

    data_dir, ids = review_env
    db = db_of(data_dir)
    quality.score_conversation(db, embedder, ids[0])
    ReviewStore(db).edit_message(ids[1], 1, "Edited behind the page's back.", "bob")  # graded, then edited
    quality.score_conversation(db, embedder, ids[1])
    ReviewStore(db).edit_message(ids[1], 1, "Edited again, after it was graded.", "bob")
    db.close()
    at = new_app("pages/review.py")
    assert at.session_state["review.current"] == ids[0]
    page = texts(at)
    assert "grounding " in page and "checks\\-v5" in page and "grounding stale" not in page
    # Open when an answer is flagged: its unsupported sentences beside the passages.
    assert any(e.label.startswith(("Evidence for each sentence of the turn ", "Unsupported sentences of the turn "))
               for e in at.expander)
    at.text_input(key="review.reviewer_input").set_value("ana").run()
    at.text_area(key=f"review.edit.{ids[0]}.1").set_value("The passages do not say.").run()
    at.button(key="review.save_edit.1").click().run()
    assert not at.exception
    assert "grounding stale" not in texts(at)  # re-graded at once
    db = db_of(data_dir)
    [detail] = [d for d in quality.grounding_details(db, ids[0]) if d["idx"] == 1]
    assert not detail["stale"] and [s["verdict"] for s in detail["sentences"]] == ["neutral"]
    db.close()
    db = db_of(data_dir)
    assert any(d["stale"] for d in quality.grounding_details(db, ids[1]))  # edited behind the page's back
    at.session_state["review.current"] = ids[1]
    at.run()
    # Opening it re-grades the edited answer: what the page shows describes the text it shows.
    assert "grounding stale" not in texts(at)
    assert not any(d["stale"] for d in quality.grounding_details(db, ids[1]))
    db.close()


def carrying(data_dir) -> str | None:
    """A conversation whose second answer was shown passages carried from the first, if one was generated."""
    db = db_of(data_dir)
    try:
        for r in db.rows("SELECT conversation_id, retrieval FROM turns WHERE idx=3 AND role='assistant' "
                         "ORDER BY conversation_id"):
            if any(p.get("carried") for p in json.loads(r["retrieval"] or "[]")):
                return r["conversation_id"]
        return None
    finally:
        db.close()


def test_each_answer_shows_its_search_query_and_which_passages_are_new_or_carried(review_env, embedder):
    data_dir, ids = review_env
    cid = carrying(data_dir)
    # Whether a follow-up keeps earlier passages depends on what it asks (the run's questions vary with its id):
    # when none of the six did, a few more conversations give one.
    for seed in (3, 4):
        if cid is not None:
            break
        wb = Workbench(make_settings(data_dir), store_idle_close_s=0, embedder=embedder)
        with FakeGemini(latency=0.0) as fake:
            generate(wb, fake, n=6, max_turns=2, seed=seed)
        wb.close()
        cid = carrying(data_dir)
    assert cid is not None, "no follow-up in 18 conversations was shown a passage carried from its first turn"
    db = db_of(data_dir)
    query = db.scalar("SELECT query FROM turns WHERE conversation_id=? AND idx=3", [cid])
    db.close()
    at = new_app("pages/review.py")
    at.session_state["review.current"] = cid
    at.run()
    assert not at.exception
    shown = texts(at)
    assert f"**Search query:** {escape_markdown(query)}" in shown  # the follow-up's standalone query, as stored
    assert "carried from earlier turns" in shown
    labels = [e.label.replace("\\", "") for e in at.expander]  # labels are markdown-escaped
    assert any("carried from turn 1" in label for label in labels)  # core.turn_labels
    assert any("dense #" in label or "lexical #" in label for label in labels), labels
