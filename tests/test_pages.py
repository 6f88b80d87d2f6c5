"""Pages through Streamlit's AppTest, on real data dirs."""


from tests.conftest import new_app, rerun_until_success


def test_home_indexes_the_sample_corpus_on_first_open_when_the_setting_says_so(app_env, monkeypatch):
    monkeypatch.setenv("GROUNDWORK_AUTO_INDEX_SAMPLE", "1")  # default 0: only on request (test_project_data)
    at = new_app()
    assert any("Sample corpus ready" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Corpus →"].replace(",", "")) >= 30
    # Second open: nothing to index again.
    at = new_app()
    assert not at.success
    assert int({m.label: m.value for m in at.metric}["Corpus →"]) >= 30


def test_corpus_page_browse_and_search(indexed_app_env):
    at = new_app("pages/corpus.py")
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Documents"]) >= 30
    assert metrics["Store"] == "edge"  # the embedded default engine
    at.text_input(key="corpus.query").set_value("security deposit returned late").run()
    assert not at.exception
    assert "Okafor" in " ".join(m.value for m in at.markdown)
    at.text_input(key="corpus.filter").set_value("non-compete").run()
    assert not at.exception and len(at.dataframe[0].value) >= 1


def test_corpus_page_ingest_reports_bad_folder(indexed_app_env):
    at = new_app("pages/corpus.py")
    at.text_input(key="corpus.folder").set_value("sample_data/no/such/place")
    at.button(key="corpus.ingest_folder").click().run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def test_generate_page_runs_a_batch_in_the_background(indexed_app_env, monkeypatch):
    from fakes.gemini import FakeGemini

    with FakeGemini(latency=0.05) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "AIza-page-test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        at = new_app("pages/generate.py")
        assert "gemini" in at.caption[0].value
        at.number_input(key="generate.num_dialogs").set_value(3)
        at.number_input(key="generate.concurrency").set_value(2)
        assert "Estimate: ≈" in " ".join(c.value for c in at.caption)
        at.button(key="generate.start").click().run()
        assert not at.exception
        run_id = at.session_state["generate.run_id"]
        rerun_until_success(at, "Completed")
        assert not at.exception
        assert any("Completed: 3 conversations" in s.value for s in at.success)
        runs = at.dataframe[-1].value.set_index("id")
        assert runs.loc[run_id, "status"] == "completed" and runs.loc[run_id, "saved"] == 3  # not a stale table
        # The grounding checks of the three follow the run, counted for the page; Open in Review comes after.
        from core import ui_cache

        job = ui_cache.jobs().get(run_id)
        job.thread.join(120)
        assert job.run_done and job.grading == (3, 3)
        assert ui_cache.workbench().db.scalar("SELECT COUNT(*) FROM conversations WHERE run_id=? AND grounded_at "
                                              "IS NOT NULL", [run_id]) == 3
        at.run()
        assert any(b.key == "generate.open_review" for b in at.button)
        shown = [e.value for kind in (at.markdown, at.caption, at.success, at.info) for e in kind]
        assert shown and "AIza-page-test-key" not in str(shown)
        # The form lasts the browser session: another page and back, the numbers are still there.
        at.switch_page("pages/home.py").run()
        at.switch_page("pages/generate.py").run()
        assert at.number_input(key="generate.num_dialogs").value == 3
        assert at.number_input(key="generate.concurrency").value == 2


def test_settings_keep_a_typed_key_and_switch_provider_only_when_asked(app_env, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GROUNDWORK_PROVIDER", raising=False)
    at = new_app("pages/settings.py")

    def active() -> str:  # (AppTest does not see the sidebar under st.navigation: the page says it too)
        return " ".join(c.value for c in [*at.caption, *at.warning] if "Active: " in c.value)

    assert "Active: **local**" in active()
    at.radio(key="settings.provider_choice").set_value("gemini").run()
    at.text_input(key="settings.gemini_key_input").set_value("AIza-typed-in-the-page-XYZ").run()
    assert any("key set · …XYZ" in c.value for c in at.caption)
    assert at.text_input(key="settings.gemini_key_input").value == ""  # the field does not keep it
    # Another page and back: the key is still set (in this browser session only).
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/settings.py").run()
    assert any("key set · …XYZ" in c.value for c in at.caption)
    assert "AIza-typed-in-the-page-XYZ" not in str([c.value for c in at.caption])
    # A key makes Gemini the default; choosing openai only proposes it until "Use anyway".
    assert "Active: **gemini**" in active()
    at.radio(key="settings.provider_choice").set_value("openai").run()
    assert "Active: **gemini**. To switch to **openai**" in active()
    assert "settings.provider" not in at.session_state  # nothing switched yet
    at.button(key="settings.use_anyway").click().run()
    assert not at.exception
    assert "Active: **openai**" in active() and at.session_state["settings.provider"] == "openai"


def test_corpus_page_shows_how_searches_run_on_the_edge_index(indexed_app_env):
    at = new_app("pages/corpus.py")
    assert not at.exception
    lines = [c.value for c in at.caption if c.value.startswith("Search index")]
    assert len(lines) == 1
    # 190 sample chunks: a build is due or done, and a corpus that small is searched by an exact scan.
    assert "exact full scan" in lines[0] or "int8 full scan" in lines[0]
