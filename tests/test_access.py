"""What a browser session may reach: keys only where they belong, server paths only under allowed roots,
corpus and LLM text inert, and who is signed in (issue #16, item 7)."""

import os

import pytest

from core.access import confine_path, session_settings
from core.errors import ValidationError
from fakes.gemini import FakeOpenAI
from core.review.store import escape_markdown
from tests.conftest import ROOT, make_settings, new_app

SERVER_KEY = "sk-server-secret-0000000000000016"
TYPED_KEY = "sk-typed-in-the-browser-00000016"


@pytest.fixture
def servers():
    # Each fake accepts exactly one key: a 200 from it proves that key, and only that key, was sent.
    with FakeOpenAI(api_key=SERVER_KEY) as configured, FakeOpenAI(api_key=SERVER_KEY) as chosen, \
            FakeOpenAI(api_key=TYPED_KEY) as chosen_typed:
        yield configured, chosen, chosen_typed


def _openai_env(monkeypatch, configured):
    monkeypatch.setenv("GROUNDWORK_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", configured.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    monkeypatch.setenv("OPENAI_MODEL", "llama3.2")


def _test_connection(at):
    at.button(key="settings.test").click().run()
    assert not at.exception, at.exception
    return [("ok", s.value) for s in at.success] + [("error", e.value) for e in at.error]


def test_the_server_key_goes_only_to_the_server_configured_url(app_env, monkeypatch, servers):
    configured, chosen, chosen_typed = servers
    _openai_env(monkeypatch, configured)
    at = new_app("pages/settings.py")
    assert _test_connection(at)[0][0] == "ok"  # the configured server gets the server's key
    assert configured.requests_with_key >= 1
    # A URL typed in the browser: the server's key must not go there.
    at.text_input(key="settings.openai_base_url").set_value(chosen.base_url).run()
    outcome = _test_connection(at)
    assert outcome[0][0] == "error", outcome
    assert chosen.requests_total >= 1  # it was asked, without the server's key (else it would have said 200)
    # With a key typed in the same session, that key (and only it) goes to the typed URL.
    at.text_input(key="settings.openai_base_url").set_value(chosen_typed.base_url).run()
    at.text_input(key="settings.openai_key_input").set_value(TYPED_KEY).run()
    assert _test_connection(at)[0][0] == "ok"


def test_session_settings_scope_keys_to_urls(tmp_path):
    base = make_settings(tmp_path / "data", openai_base_url="http://127.0.0.1:1/v1", openai_api_key=SERVER_KEY)
    assert session_settings(base, {"openai_base_url": "http://127.0.0.1:1/v1/"}).openai_api_key == SERVER_KEY
    assert session_settings(base, {"openai_base_url": "https://elsewhere.example/v1"}).openai_api_key == ""
    assert session_settings(base, {"openai_base_url": "https://elsewhere.example/v1"},
                            TYPED_KEY).openai_api_key == TYPED_KEY
    assert "openai_api_key" not in session_settings(base, {}, TYPED_KEY).public_dict()


@pytest.fixture
def roots(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.data_path.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the browser")
    (settings.data_path / "link-out").symlink_to(outside)
    return settings, outside


def test_typed_paths_are_confined_to_the_allowed_roots(roots):
    settings, outside = roots
    assert confine_path("sample_data/corpus", settings, "ingest folder") == ROOT / "sample_data" / "corpus"
    assert confine_path(settings.data_path / "exports" / "x", settings, "export folder").parent.name == "exports"
    with pytest.raises(ValidationError, match=r"^The ingest folder /etc is outside the folders the browser may use"):
        confine_path("/etc", settings, "ingest folder")
    with pytest.raises(ValidationError, match=r"uses '\.\.'"):
        confine_path(f"{settings.data_path}/../outside", settings, "export folder")
    with pytest.raises(ValidationError, match=r"\(a symlink to .*outside\) is outside the folders"):
        confine_path(settings.data_path / "link-out", settings, "ingest folder")
    allowed = settings.replace(allowed_roots=str(outside))
    assert confine_path(outside / "secret.txt", allowed, "GGUF file") == outside / "secret.txt"


def test_the_corpus_page_refuses_to_ingest_outside_the_allowed_roots(indexed_app_env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.md").write_text("# Private\n\nA server file the browser must not read into the corpus.")
    (indexed_app_env / "link-out").symlink_to(outside)
    at = new_app("pages/corpus.py")
    for typed, expect in ((str(outside), "outside the folders"), (f"{indexed_app_env}/link-out", "a symlink to"),
                          (f"{indexed_app_env}/../outside", "uses '..'")):
        at.text_input(key="corpus.folder").set_value(typed)
        at.button(key="corpus.ingest_folder").click().run()
        assert not at.exception
        assert expect in at.error[0].value, at.error[0].value
    from core.db import Database

    db = Database(indexed_app_env / "groundwork.db")
    assert db.scalar("SELECT COUNT(*) FROM documents WHERE title='Private'") == 0
    db.close()


def test_the_export_page_refuses_a_folder_outside_the_allowed_roots(indexed_app_env, tmp_path):
    target = tmp_path / "elsewhere" / "export"
    at = new_app("pages/export.py")
    at.text_input(key="export.out").set_value(str(target))
    at.button(key="export.run").click().run()
    assert not at.exception
    assert any("outside the folders the browser may use" in e.value for e in at.error), [e.value for e in at.error]
    assert not target.exists()


def test_a_gguf_path_outside_the_allowed_roots_is_not_used(app_env, monkeypatch):
    monkeypatch.setenv("GROUNDWORK_PROVIDER", "local")
    at = new_app("pages/settings.py")
    at.text_input(key="settings.local_model_path").set_value("/etc/passwd").run()
    assert not at.exception
    assert any("GGUF file /etc/passwd is outside the folders" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert "passwd" not in " ".join(c.value for c in at.caption)  # the active model is still the packaged one


def test_text_shown_from_the_corpus_or_the_llm_cannot_link_or_load():
    hostile = "See https://evil.example/x and www.evil.example, ![x](https://evil.example/p.png) <img src=x>"
    import re

    out = escape_markdown(hostile)
    # Every character that could start a link, an image, a tag or an auto-linked URL is escaped.
    assert re.findall(r"(?<!\\)[<>\[\]()!:]|(?<!\\)\.(?=example)", out) == [], out


def test_the_app_binds_to_localhost_unless_configured():
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert "--server.address" not in (ROOT / "scripts" / "start.sh").read_text()


def test_with_oidc_login_configured_nothing_shows_until_signed_in_and_settings_names_the_user(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets["auth"] = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "groundwork", "client_secret": "s",
                          "server_metadata_url": "https://id.example.org/.well-known/openid-configuration"}
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"] and not at.sidebar.caption
    at.user = {"is_logged_in": True, "email": "ana@example.org", "name": "Ana"}
    at.run()
    at.switch_page("pages/settings.py").run()
    assert not at.exception, at.exception
    # Word joiners keep the address from rendering as a live mailto link (escape_markdown).
    assert any(c.value.replace("\u2060", "") == "Signed in as **ana@example\\.org**" for c in at.caption), \
        [c.value for c in at.caption]


def test_without_auth_settings_names_nobody(app_env):
    at = new_app("pages/settings.py")
    assert not any("Signed in as" in c.value for c in at.caption)
