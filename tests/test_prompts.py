"""Prompt versions in real SQLite, placeholder validation, templates."""

import pytest

from core.db import Database
from core.errors import ValidationError
from core.generation.prompts import KINDS, TEMPLATES, PromptLibrary, placeholders_in, render, validate


@pytest.fixture
def library(tmp_path):
    return PromptLibrary(Database(tmp_path / "p.db"))


def test_defaults_are_the_legal_template_and_every_template_validates(library):
    library.ensure_defaults()
    for kind in KINDS:
        assert library.current(kind)["text"] == getattr(TEMPLATES["legal"], kind)
        for t in TEMPLATES.values():
            validate(kind, getattr(t, kind))


def test_versions_round_trip_restore_and_diff(library, tmp_path):
    library.ensure_defaults()
    v1 = library.current("respondent")
    v2 = library.save("respondent", v1["text"] + "\nAlways answer in two paragraphs.", name="two paras",
                      note="shorter answers")
    assert v2["version"] == 2 and library.current("respondent")["id"] == v2["id"]
    assert "+Always answer in two paragraphs." in library.diff(v2["id"])
    v3 = library.restore(v1["id"])
    assert v3["version"] == 3 and v3["text"] == v1["text"] and "restored from version 1" in v3["note"]
    # Versions are immutable rows: v2 is still there, unchanged, after a new connection.
    again = PromptLibrary(Database(tmp_path / "p.db"))
    assert again.get(v2["id"])["text"].endswith("two paragraphs.")
    assert [h["version"] for h in again.history("respondent")] == [3, 2, 1]


@pytest.mark.parametrize("kind, text, fragment", [
    ("respondent", "   ", "is empty"),
    ("respondent", "Answer well.", "missing placeholder(s) {context}"),
    ("respondent", "Use {context} and {passages}.", "unknown placeholder(s) {passages}"),
    ("correspondent", "Be a client. {first_question}", "missing placeholder(s) {briefing}"),
    ("instruction", "{briefing}", "missing placeholder(s) {n}"),
    ("respondent", "{context}" + "x" * 200_000, "200,009 characters"),
])
def test_bad_prompts_are_refused_with_a_clear_message(library, kind, text, fragment):
    library.ensure_defaults()
    before = library.current(kind)["id"]
    with pytest.raises(ValidationError, match=fragment.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        library.save(kind, text)
    assert library.current(kind)["id"] == before  # nothing saved


def test_render_leaves_other_braces_alone():
    text = 'Reply as JSON like {"a": 1}. Context:\n{context}'
    assert placeholders_in(text) == {"context"}
    assert render(text, context="[1] passage") == 'Reply as JSON like {"a": 1}. Context:\n[1] passage'
