"""Prompts and Workshop pages through AppTest on real data dirs with the fake Gemini server."""

import pytest

from fakes.gemini import FakeGemini
from tests.conftest import new_app


@pytest.fixture
def env(monkeypatch, indexed_app_env):
    with FakeGemini(latency=0.01) as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "AIza-pages-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        yield fake


def test_prompts_page_saves_a_version_and_refuses_a_bad_one(env):
    at = new_app("pages/prompts.py")
    text = at.text_area(key="prompts.text.respondent")
    text.set_value(text.value + "\nKeep answers under 200 words.")
    at.text_input(key="prompts.note.respondent").set_value("shorter")
    at.button(key="prompts.save.respondent").click().run()
    assert not at.exception
    assert "Saved respondent v2" in at.success[0].value
    assert "editing from v2" in at.text_area(key="prompts.text.respondent").label  # the page shows the new version
    at.text_area(key="prompts.text.respondent").set_value("Answer from {passages}.")
    at.button(key="prompts.save.respondent").click().run()
    assert "unknown placeholder(s) {passages}" in at.error[0].value
    # A new session sees the saved version: it is in SQLite, not in the session.
    at = new_app("pages/prompts.py")
    assert at.text_area(key="prompts.text.respondent").value.endswith("Keep answers under 200 words.")


def test_workshop_preview_and_dry_run(env):
    at = new_app("pages/workshop.py")
    at.text_input(key="workshop.question").set_value("Was the non-compete enforceable?").run()
    assert not at.exception
    assert "non-compete" in " ".join(c.value for c in at.code).lower()
    at.button(key="workshop.dry_start").click().run()
    assert not at.exception
    at.button(key="workshop.dry_next").click().run()  # step by step: one step per press
    titles = " ".join(m.value for m in at.markdown).replace("\\", "")  # markdown escapes dropped
    assert "Sampled briefing" in titles and "question written by" not in titles
    at.button(key="workshop.dry_next").click().run()
    titles = " ".join(m.value for m in at.markdown).replace("\\", "")  # markdown escapes dropped
    assert "Turn 1: question written by the instruction prompt" in titles and "Turn 1: answer" not in titles
    assert "prompt · " in titles and "completion" in titles and "{" not in titles  # token counts read as text
    at.button(key="workshop.dry_end").click().run()
    titles = " ".join(m.value for m in at.markdown).replace("\\", "")  # markdown escapes dropped
    for expected in ("Sampled briefing", "Turn 1: question written by", "Turn 1: retrieval", "Turn 1: answer",
                     "Turn 2: question from the simulated user", "Turn 2: retrieval", "Turn 2: answer"):
        assert expected in titles  # one numbering (core.turn_labels): turn N is a question and its answer
    # The step callbacks' return values never reach the page (Streamlit's magic wrote "Step(...)" and "None").
    shown = [str(getattr(e, "value", "")) for e in at.main]
    assert not [v for v in shown if v.startswith("Step(") or v in ("None", "`None`")], shown[:5]
    assert at.button(key="workshop.dry_next").disabled
    at.button(key="workshop.dry_save").click().run()
    assert any("Saved as conversation" in s.value for s in at.success)
