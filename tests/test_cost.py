"""Cost estimates: heuristic first, then learned from past calls with the same prompt versions."""

import pytest

from core.generation.cost import calls_per_conversation, estimate_run, parse_prices
from core.generation.engine import GenerationRun, RunConfig
from core.errors import ConfigError
from fakes.gemini import FakeGemini
from core.generation.prompts import KINDS, PromptLibrary
from core.providers.gemini import GeminiProvider


def test_calls_per_conversation_follow_the_turn_distribution():
    calls = calls_per_conversation(RunConfig(max_turns=3, instructions_per_sample=3))
    assert calls == {"respondent": 2.0, "correspondent": 1.0, "instruction": pytest.approx(1 / 3)}
    judged = calls_per_conversation(RunConfig(max_turns=3, auto_improve=True, max_improve_attempts=2))
    assert judged["judge"] == 1.5 and judged["respondent"] == 3.0


def test_prices_parse_and_bad_entries_are_named():
    prices = parse_prices("my-model=1/2")
    assert prices["my-model"] == (1.0, 2.0) and "gemini-2.5-flash" in prices
    with pytest.raises(ConfigError, match="'oops' should look like"):
        parse_prices("oops")


def test_estimate_learns_from_past_runs(indexed_wb):
    library = PromptLibrary(indexed_wb.db)
    library.ensure_defaults()
    versions = {k: library.current(k)["id"] for k in KINDS}
    texts = {k: library.current(k)["text"] for k in KINDS}
    config = RunConfig(num_dialogs=10, max_turns=3, prompt_versions=versions)
    before = estimate_run(indexed_wb.db, config, "gemini-2.5-flash", texts)
    assert "heuristic" in before.basis and before.calls == pytest.approx(10 * (2 + 1 + 1 / 3))
    assert before.cost_usd > 0
    with FakeGemini() as fake:
        settings = indexed_wb.settings.replace(gemini_api_key="k", gemini_base_url=fake.base_url)
        GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, lambda g: GeminiProvider(settings, gate=g),
                      config=RunConfig(num_dialogs=6, max_turns=3, prompt_versions=versions)).run()
    after = estimate_run(indexed_wb.db, config, "gemini-2.5-flash", texts)
    assert "past calls" in after.basis and after.thinking_tokens > 0
    assert after.total_tokens != before.total_tokens
    assert estimate_run(indexed_wb.db, config, "local-model", texts, provider="local").cost_usd == 0.0
