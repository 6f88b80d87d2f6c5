"""Home page (pipeline counts match the database, demo batch) and Dashboard through AppTest."""

import json

import pytest

from core.db import Database
from core.generation.engine import GenerationRun, RunConfig
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.workbench import Workbench
from tests.conftest import make_settings, new_app, rerun_until_success

KEY = "AIza-home-key-1234"


@pytest.fixture
def env(monkeypatch, indexed_app_env, embedder):
    data = indexed_app_env
    with FakeGemini(latency=0.01) as fake:
        settings = make_settings(data, gemini_api_key=KEY, gemini_base_url=fake.base_url)
        wb = Workbench(settings, store_idle_close_s=0, embedder=embedder)
        GenerationRun(settings, wb.db, wb.corpus, lambda g: GeminiProvider(settings, gate=g),
                      config=RunConfig(num_dialogs=5, max_turns=3, max_concurrency=3)).run()
        with wb.db.write() as w:
            ids = [r[0] for r in w.execute("SELECT id FROM conversations ORDER BY id").fetchall()]
            w.execute("UPDATE conversations SET status='approved', rating=5 WHERE id=?", [ids[0]])
            w.execute("UPDATE conversations SET status='discarded', rating=1 WHERE id=?", [ids[1]])
        wb.close()
        monkeypatch.setenv("GEMINI_API_KEY", KEY)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        yield data


def test_home_counts_match_the_database(env):
    at = new_app()
    metrics = {m.label.rstrip(" →"): m.value for m in at.metric}
    db = Database(env / "groundwork.db")
    assert int(metrics["Corpus"]) == db.scalar("SELECT COUNT(*) FROM documents WHERE status='complete'")
    assert int(metrics["Conversations"]) == 5 == db.scalar("SELECT COUNT(*) FROM conversations")
    assert int(metrics["Review"]) == 2
    assert int(metrics["Briefings"].replace(",", "")) == db.scalar("SELECT SUM(briefing_uses) FROM chunks")
    assert int(metrics["Retrieval"].replace(",", "")) == db.scalar("SELECT SUM(retrieved_uses) FROM chunks")
    assert int(metrics["Questions"]) == db.scalar("SELECT COUNT(DISTINCT question) FROM conversations")
    assert len(at.get("plotly_chart")) == 1


def test_home_demo_batch_runs_with_the_configured_provider(env):
    at = new_app()
    at.button(key="home.demo").click().run()
    assert not at.exception
    rerun_until_success(at, "Demo done")
    assert any("Demo done" in s.value for s in at.success)
    assert Database(env / "groundwork.db").scalar("SELECT COUNT(*) FROM conversations") == 8


def test_dashboard_draws_every_chart_with_csv(env):
    at = new_app("pages/dashboard.py")
    charts = at.get("plotly_chart")
    assert len(charts) >= 5  # per minute, tokens, ratings, outcomes, turns
    assert len(at.get("download_button")) == len(charts)
    assert any("auto-improve" in c.value for c in at.caption)  # judge chart explains why it is empty


def test_example_set_loads_into_a_separate_data_dir(env):
    at = new_app()
    at.button(key="home.examples").click().run()
    assert not at.exception
    examples_dir = env.parent / f"{env.name}-examples"
    assert at.session_state["app.data_dir"] == str(examples_dir)
    db = Database(examples_dir / "groundwork.db")
    rows = db.rows("SELECT status, COUNT(*) AS n FROM conversations GROUP BY status ORDER BY status")
    assert {r["status"]: r["n"] for r in rows} == {"approved": 9, "discarded": 3, "new": 2}
    assert db.scalar("SELECT COUNT(*) FROM tags") > 0
    # Every assistant turn carries real passages, scored against the question it answered.
    for t in db.rows("SELECT retrieval FROM turns WHERE role='assistant'"):
        passages = json.loads(t["retrieval"])
        assert passages and all(p["text"] and -1 <= p["score"] <= 1 for p in passages)
    # The main data dir is untouched.
    assert Database(env / "groundwork.db").scalar("SELECT COUNT(*) FROM conversations") == 5
    metrics = {m.label.rstrip(" →"): m.value for m in at.metric}
    assert int(metrics["Conversations"]) == 14


def test_dashboard_scores_grounding_and_shows_coverage(env):
    at = new_app("pages/dashboard.py")
    at.button(key="dashboard.score").click().run()
    assert not at.exception
    db = Database(env / "groundwork.db")
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE grounded_at IS NOT NULL") == 5
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Scored conversations"]) == 5
    labels = [c.value for c in at.markdown]
    assert any("Coverage" in v for v in labels)
    # One approved and one discarded conversation, now both scored: the agreement table has the grounding row.
    assert any("agree with reviewers" in v for v in labels)
    tables = [d.value for d in at.dataframe if "spearman_decision" in d.value.columns]
    assert tables, "the reviewer-agreement table is missing"
    grounding = tables[0][tables[0]["score"] == "grounding"].iloc[0]
    assert grounding["reviewed"] == 2 and grounding["threshold"] == 0.5  # below: a check flagged something
    assert grounding["pass_approved"] + grounding["fail_approved"] == 1
    assert grounding["pass_discarded"] + grounding["fail_discarded"] == 1


def test_review_page_highlights_grounding_after_scoring(env, embedder):
    from core import quality

    db = Database(env / "groundwork.db")
    assert quality.score_conversations(db, embedder) == 5
    at = new_app("pages/review.py")
    at.selectbox(key="review.f.status").set_value("any").run()
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "grounding 0." in captions or "grounding 1." in captions
    html = at.get("html")
    # Flagged sentences in red, those not checked offline in grey: either is marked.
    assert html and any("<span style=" in h.proto.body for h in html)


def test_dashboard_shows_the_corpus_verifier_state_and_trains_it(env, embedder):
    from core.quality.trained import TrainedVerifierStore

    at = new_app("pages/dashboard.py")
    button = at.button(key="dashboard.train_verifier")
    assert button.label == "Train it now"
    assert not any("Trained" in c.value for c in at.caption)
    db = Database(env / "groundwork.db")
    meta = TrainedVerifierStore(db, env).train(max_anchors=8, epochs=1)  # the button's call, made small
    at = new_app("pages/dashboard.py")
    assert at.button(key="dashboard.train_verifier").label == "Train it again"
    assert any(f"on {meta['sentences']:,} sentences ({meta['pairs']:,} pairs" in c.value for c in at.caption)
