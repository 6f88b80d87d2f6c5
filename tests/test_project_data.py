"""Issue 24 (part A) without a browser: my corpus only (delete, tags, selection), export what I approved, the
demo data dir, and the numbers pages show. Real SQLite, the real vector store and embedding model, the real
google-genai client against the fake Gemini server."""

import json

import pytest

from core.cli import main
from core.corpus.collection import IngestReport
from core.db import Database
from core.corpus.documents import (delete_documents, folders, list_documents, select_documents, tag_counts, tag_documents,
                            untag_documents)
from core.generation.engine import GenerationRun, RunConfig
from core.errors import ValidationError
from core.examples import import_examples
from core.export import ExportOptions
from core.export.selection import selection_summary, split_sides
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.generation.retrieval import search
from core.review.store import ReviewFilter, ReviewStore
from tests.conftest import make_settings, new_app

KEY = "AIza-project-key-0000"


@pytest.fixture(scope="module")
def fake():
    with FakeGemini(latency=0.01) as server:
        yield server


def _doc(wb, source_path):
    return wb.db.one("SELECT id, n_chunks FROM documents WHERE source_path=?", [source_path])


def test_ingest_summary_counts_in_words():
    assert IngestReport(added_documents=1, added_chunks=1).summary().startswith("1 document (1 chunk) indexed")
    assert IngestReport(added_documents=2, added_chunks=5).summary().startswith("2 documents (5 chunks) indexed")


def test_deleting_a_document_removes_its_chunks_vectors_and_full_text_rows_but_not_quoted_passages(indexed_wb):
    wb = indexed_wb
    import_examples(wb)  # conversations quoting passages of the sample corpus
    quoted = wb.db.one("SELECT t.conversation_id, t.retrieval FROM turns t WHERE t.role='assistant' "
                       "AND t.retrieval IS NOT NULL LIMIT 1")
    passage = json.loads(quoted["retrieval"])[0]
    doc = wb.db.one("SELECT id, n_chunks, source_path, title FROM documents WHERE id=?", [passage["document_id"]])
    before = wb.corpus.consistency()
    chunk_ids = [r["id"] for r in wb.db.rows("SELECT id FROM chunks WHERE document_id=?", [doc["id"]])]
    assert any(p.document_id == doc["id"] for p in search(wb.corpus, passage["text"][:200], k=5))

    assert delete_documents(wb.corpus, [doc["id"]]) == {"documents": 1, "chunks": doc["n_chunks"]}
    after = wb.corpus.consistency()
    assert after["points"] == before["points"] - doc["n_chunks"]  # the vectors are gone ...
    assert after["sqlite_chunks"] == before["sqlite_chunks"] - doc["n_chunks"] == after["points"]
    marks = ",".join("?" * len(chunk_ids))
    assert wb.db.scalar(f"SELECT COUNT(*) FROM chunks_fts WHERE rowid IN (SELECT rowid FROM chunks WHERE id IN "
                        f"({marks}))", chunk_ids) == 0
    assert not wb.db.rows("SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?",
                          ['"' + doc["title"].replace('"', "") + '"']) or \
        all(r["rowid"] != doc["id"] for r in wb.db.rows("SELECT rowid FROM documents_fts"))
    # ... neither search side finds it any more ...
    assert all(p.document_id != doc["id"] for p in search(wb.corpus, passage["text"][:200], k=10))
    assert wb.corpus.stats()["documents"] == 39 and wb.corpus.document(doc["id"]) is None
    # ... and the conversation still holds the passage it quoted, text and all.
    kept = json.loads(wb.db.scalar("SELECT retrieval FROM turns WHERE conversation_id=? AND retrieval IS NOT NULL "
                                   "AND role='assistant' LIMIT 1", [quoted["conversation_id"]]))
    assert kept[0]["text"] == passage["text"]
    with pytest.raises(ValidationError, match="not in collection"):
        delete_documents(wb.corpus, [doc["id"]])


def test_tags_folders_and_selection(indexed_wb):
    wb = indexed_wb
    opinions = [d for d in list_documents(wb.corpus, limit=100) if d["source_path"].startswith("opinions/")]
    assert "opinions" in folders(wb.corpus) and len(opinions) >= 10
    assert tag_documents(wb.corpus, [opinions[0]["id"], opinions[1]["id"]], "  leases ") == 2
    assert tag_documents(wb.corpus, [opinions[0]["id"]], "leases") == 0  # already there
    assert tag_counts(wb.corpus) == {"leases": 2}
    listed = list_documents(wb.corpus, tag="leases")
    assert {d["id"] for d in listed} == {opinions[0]["id"], opinions[1]["id"]} and listed[0]["tags"] == "leases"
    assert len(list_documents(wb.corpus, folder="opinions", limit=100)) == len(opinions)

    db, coll = wb.db, wb.corpus.collection
    assert select_documents(db, coll) is None  # nothing narrows the corpus
    assert set(select_documents(db, coll, tags=["leases"])) == {opinions[0]["id"], opinions[1]["id"]}
    assert set(select_documents(db, coll, ["opinions/"])) == {d["id"] for d in opinions}
    assert set(select_documents(db, coll, ["opinions"])) == {d["id"] for d in opinions}
    assert select_documents(db, coll, [opinions[2]["source_path"]]) == [opinions[2]["id"]]
    assert len(select_documents(db, coll, ["opinions/s*.md"])) >= 1
    headnotes = select_documents(db, coll, ["headnotes.jsonl"])
    assert len(headnotes) > 1  # one file, many documents
    with pytest.raises(ValidationError, match="matches no indexed document"):
        select_documents(db, coll, ["contracts/"])
    with pytest.raises(ValidationError, match="on no indexed document.*leases"):
        select_documents(db, coll, tags=["nda"])
    with pytest.raises(ValidationError, match="cannot be empty"):
        tag_documents(wb.corpus, [opinions[0]["id"]], "  ")
    assert untag_documents(wb.corpus, [opinions[0]["id"]], "leases") == 1


def test_a_run_draws_briefings_only_from_its_selection(indexed_wb, fake):
    wb = indexed_wb
    settings = make_settings(wb.settings.data_path, gemini_api_key=KEY, gemini_base_url=fake.base_url)
    chosen = select_documents(wb.db, wb.corpus.collection, ["opinions/s*.md", "opinions/greer-v-talbot.md"])
    assert 2 <= len(chosen) <= 6
    config = RunConfig(num_dialogs=4, max_turns=1, max_concurrency=2, briefing_passages=1,
                       documents=["opinions/s*.md", "opinions/greer-v-talbot.md"])
    progress = GenerationRun(settings, wb.db, wb.corpus, lambda g: GeminiProvider(settings, gate=g),
                             config=config).run()
    assert progress.saved == 4
    briefed = wb.db.rows("SELECT DISTINCT d.id FROM chunks c JOIN documents d ON d.id=c.document_id "
                         "WHERE c.briefing_uses > 0")
    assert briefed and {r["id"] for r in briefed} <= set(chosen)  # today: briefings from all 40 documents
    for row in wb.db.rows("SELECT briefing_ids FROM conversations"):
        for chunk in json.loads(row["briefing_ids"]):
            assert wb.db.scalar("SELECT document_id FROM chunks WHERE id=?", [chunk]) in chosen
    recipe = json.loads(wb.db.scalar("SELECT recipe FROM runs"))["config"]
    assert recipe["documents"] == ["opinions/s*.md", "opinions/greer-v-talbot.md"]  # a resume resolves it again


def test_cli_generate_with_documents_and_tags(indexed_wb, fake, monkeypatch, capsys):
    wb = indexed_wb
    doc = _doc(wb, "opinions/greer-v-talbot.md")
    tag_documents(wb.corpus, [doc["id"]], "family")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
    data = str(wb.settings.data_path)
    wb.close()
    code = main(["generate", "--data-dir", data, "--documents", "contracts/", "--num-dialogs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "'contracts/' matches no indexed document" in err and "Traceback" not in err
    code = main(["generate", "--data-dir", data, "--tag", "family", "--num-dialogs", "2", "--max-turns", "1",
                 "--no-grade", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "Briefings come from 1 document (" in err
    db = Database(wb.settings.data_path / "groundwork.db")
    used = db.rows("SELECT DISTINCT document_id FROM chunks WHERE briefing_uses > 0")
    assert [r["document_id"] for r in used] == [doc["id"]]
    db.close()


def test_export_selection_summary_and_empty_validation_side(indexed_wb):
    wb = indexed_wb
    import_examples(wb)  # 9 approved, 3 discarded, 2 new
    approved = ReviewFilter(status="approved")
    summary = selection_summary(wb.db, approved)
    assert summary["selected"] == 9 and summary["by_status"] == {"approved": 9} and summary["runs"] == 1
    assert summary["line"].startswith("Will write 9 conversations (9 approved; ") and "from 1 run" in summary["line"]
    everything = selection_summary(wb.db, ReviewFilter(status="any"))
    assert everything["by_status"] == {"approved": 9, "discarded": 3, "new": 2}
    assert "Nothing selected" in selection_summary(wb.db, ReviewFilter(status="any", tag="no-such-tag"))["line"]
    # One conversation cannot be split: validation is empty, and the page asks before writing (see the browser test).
    one = wb.db.scalar("SELECT id FROM conversations WHERE status='approved' LIMIT 1")
    ReviewStore(wb.db).tag(one, "solo", "ana")
    sides = split_sides(wb.db, ExportOptions(formats=["openai"], filter=ReviewFilter(status="any", tag="solo"),
                                             split=0.9))
    assert sum(sides.values()) == 1 and sides["validation"] == 0
    sides = split_sides(wb.db, ExportOptions(formats=["openai"], filter=approved, split=0.5, seed=3))
    assert sum(sides.values()) == 9


def test_dashboard_data_of_the_example_set_is_chartable(indexed_wb):
    from core.review import analytics

    wb = indexed_wb
    import_examples(wb)
    assert analytics.tokens_per_conversation(wb.db, None) == []  # written, not generated: no zero-token bars
    labels = {r["respondent_version"] for r in analytics.ratings_by_prompt_version(wb.db)}
    assert labels and not any("None" in label for label in labels)


# ---- pages (AppTest) ---------------------------------------------------------------------------------------

def test_home_leaves_an_empty_data_dir_empty_until_asked(app_env):
    at = new_app()
    assert not any("Sample corpus ready" in s.value for s in at.success)
    db = Database(app_env / "groundwork.db")
    assert db.scalar("SELECT COUNT(*) FROM documents") == 0
    at.button(key="home.index_sample").click().run()
    assert not at.exception
    assert any("Sample corpus ready: 40 documents" in s.value for s in at.success)
    assert db.scalar("SELECT COUNT(*) FROM documents") == 40
    db.close()


def test_corpus_page_tags_filters_and_deletes(indexed_app_env):
    at = new_app("pages/corpus.py")
    db = Database(indexed_app_env / "groundwork.db")
    at.selectbox(key="corpus.folder_filter").set_value("opinions/").run()
    shown = at.dataframe[0].value
    assert len(shown) == min(25, db.scalar("SELECT COUNT(*) FROM documents WHERE source_path LIKE 'opinions/%'"))
    at.checkbox(key="corpus.act_all").check().run()
    at.text_input(key="corpus.tag_text").set_value("opinion").run()
    at.button(key="corpus.tag_add").click().run()
    assert not at.exception
    tagged = db.scalar("SELECT COUNT(*) FROM document_tags WHERE tag='opinion'")
    assert tagged == db.scalar("SELECT COUNT(*) FROM documents WHERE source_path LIKE 'opinions/%'")
    assert any(f"Tagged {tagged} documents" in s.value for s in at.success)
    db.close()
