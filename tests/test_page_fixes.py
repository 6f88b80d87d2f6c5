"""Page fixes of issue 24 (part B) under Streamlit's AppTest: prompt restore, turn numbering, inert text."""

import pytest

from core.review.store import escape_markdown
from core.turn_labels import turn_label, turn_number
from tests.conftest import new_app


def test_prompt_restore_puts_the_old_text_in_the_editor(app_env):
    at = new_app("pages/prompts.py")
    editor = at.text_area(key="prompts.text.respondent")
    original = editor.value
    editor.set_value(original + "\nKeep answers under 200 words.")
    at.button(key="prompts.save.respondent").click().run()
    assert "Saved respondent v2" in at.success[0].value
    inspect = at.selectbox(key="prompts.inspect.respondent")
    inspect.select_index(len(inspect.options) - 1).run()  # the oldest: v1 (history is newest first)
    at.button(key="prompts.restore.respondent").click().run()
    assert not at.exception  # was StreamlitAPIException: the editor's state set after it was drawn
    assert "Restored as v3" in at.success[0].value
    editor = at.text_area(key="prompts.text.respondent")
    assert editor.value == original and "editing from v3" in editor.label  # not the stale v2 text


def test_one_turn_numbering():
    roles = ["user", "assistant", "user", "assistant"]
    assert [turn_label(roles, i) for i in range(4)] == ["turn 1 question", "turn 1 answer", "turn 2 question",
                                                         "turn 2 answer"]
    assert turn_number(["assistant", "user", "assistant"], 0) == 1  # an answer before any question: turn 1


@pytest.mark.parametrize("text", ["https://evil.example/x", "www.evil.example", "help@evil.example",
                                  "[a](https://evil.example)", "<https://evil.example>"])
def test_escaped_text_holds_no_link_pattern(text):
    shown = escape_markdown(text)
    plain = shown.replace("\\", "").replace("\u2060", "")
    assert plain == text  # the same characters on screen
    for pattern in ("://", "www.", "@evil"):
        assert pattern not in shown.replace("\\", "")  # brackets stay backslash-escaped
