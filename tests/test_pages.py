"""Pages through Streamlit's AppTest, on real data dirs."""

import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


@pytest.fixture
def app_env(monkeypatch, tmp_path):
    st.cache_resource.clear()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GROUNDWORK_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"
    st.cache_resource.clear()


@pytest.fixture
def indexed_app_env(app_env, indexed_sample_dir):
    shutil.copytree(indexed_sample_dir, app_env)
    return app_env


def new_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_home_indexes_the_sample_corpus_on_first_open(app_env):
    at = new_app()
    assert any("Sample corpus ready" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Documents"].replace(",", "")) >= 30
    # Second open: nothing to index again.
    at = new_app()
    assert not at.success
    assert int({m.label: m.value for m in at.metric}["Documents"]) >= 30


def test_corpus_page_browse_and_search(indexed_app_env):
    at = new_app("pages/corpus.py")
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Documents"]) >= 30
    assert metrics["Store"] == "local"
    at.text_input(key="corpus.query").set_value("security deposit returned late").run()
    assert not at.exception
    assert "Okafor" in " ".join(m.value for m in at.markdown)
    at.text_input(key="corpus.filter").set_value("non-compete").run()
    assert not at.exception and len(at.dataframe[0].value) >= 1


def test_corpus_page_ingest_reports_bad_folder(indexed_app_env):
    at = new_app("pages/corpus.py")
    at.text_input(key="corpus.folder").set_value("/no/such/place")
    at.button(key="corpus.ingest_folder").click().run()
    assert not at.exception
    assert "does not exist" in at.error[0].value
