"""Foundation: schema migrations, settings, and the rule that core/ stays free of Streamlit."""

import re
from pathlib import Path

import pytest

from core.config import Settings, describe_settings
from core.db import Database
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_migrations_are_idempotent(tmp_path):
    db = Database(tmp_path / "a.db")
    first = db.schema
    db.close()
    db = Database(tmp_path / "a.db")
    assert db.schema == first
    import sqlite_utils

    from core.schema import migrations

    raw = sqlite_utils.Database(db.path)
    assert migrations.pending(raw) == []
    assert db.scalar("SELECT COUNT(*) FROM _sqlite_migrations") == len(migrations.applied(raw)) >= 3
    for table in ("documents", "chunks", "prompt_versions", "runs", "work_items", "conversations", "turns",
                  "calls", "tags", "events"):
        assert table in db.table_names()


def test_only_the_cache_module_imports_streamlit():
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        if path.name == "ui_cache.py":
            continue
        if re.search(r"^\s*(import|from)\s+streamlit", path.read_text(encoding="utf-8"), re.M):
            offenders.append(path.name)
    assert offenders == []


def test_every_setting_has_env_and_help():
    for s in describe_settings():
        assert s["env"] and len(s["help"]) > 15, s["name"]


def test_settings_read_env_and_defaults_need_no_server(tmp_path):
    s = Settings.from_env(env={"GROUNDWORK_DATA_DIR": str(tmp_path), "GROUNDWORK_CHUNK_SIZE": "800",
                               "GOOGLE_API_KEY": "k-123"})
    assert s.chunk_size == 800
    assert s.qdrant_url == ""
    assert s.gemini_api_key == "k-123"
    assert s.resolved_provider == "gemini"
    assert s.db_path.parent == tmp_path.resolve()
    assert "gemini_api_key" not in s.public_dict() and "k-123" not in str(s.public_dict())
    assert Settings.from_env(env={}).resolved_provider == "local"


@pytest.mark.parametrize("env, fragment", [
    ({"GROUNDWORK_CHUNK_SIZE": "abc"}, "GROUNDWORK_CHUNK_SIZE='abc' is not a valid int"),
    ({"GROUNDWORK_CHUNK_SIZE": "50"}, "use at least 100"),
    ({"GROUNDWORK_CHUNK_OVERLAP": "900"}, "chunk_overlap 900"),
    ({"GROUNDWORK_PROVIDER": "claude"}, "Unknown provider 'claude'"),
])
def test_bad_settings_say_what_is_wrong(env, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Settings.from_env(env=env)


def test_two_data_dirs_do_not_interfere(tmp_path):
    a = Settings.from_env(env={}, data_dir=str(tmp_path / "a"))
    b = Settings.from_env(env={}, data_dir=str(tmp_path / "b"))
    assert a.db_path != b.db_path and a.qdrant_path != b.qdrant_path
