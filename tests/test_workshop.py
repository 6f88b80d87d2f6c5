"""Workshop: retrieval preview, step-by-step dry run and A/B against the fake Gemini server."""

import pytest

from core.db import loads
from core.errors import ValidationError
from fakes.gemini import FakeGemini
from core.generation.prompts import PromptLibrary
from core.providers.gemini import GeminiProvider
from core.generation.workshop import Workshop, highlight_html, query_terms

KEY = "AIza-workshop-key-1234567890"


@pytest.fixture
def fake():
    with FakeGemini(latency=0.01) as server:
        yield server


def workshop_for(wb, fake):
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, gemini_max_retries=1)
    factory = lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01, max_backoff=0.02)  # noqa: E731
    return Workshop(wb, factory, "gemini", settings.gemini_model)


def test_retrieval_preview_shows_passages_terms_and_the_exact_prompt(indexed_wb, fake):
    preview = workshop_for(indexed_wb, fake).preview_retrieval("When must a landlord return the security deposit?",
                                                               k=4)
    assert len(preview.passages) == 4
    assert {"landlord", "security", "deposit"} <= set(preview.terms) and "the" not in preview.terms
    for p in preview.passages:
        assert f'id="{p.id}"' in preview.system_prompt and p.text.strip()[:50] in preview.system_prompt
    assert "{context}" not in preview.system_prompt


def test_highlighting_escapes_hostile_text():
    out = highlight_html("<script>alert(1)</script> the deposit was kept", ["deposit", "script"])
    assert "<script>" not in out and "&lt;" in out
    assert "<mark>deposit</mark>" in out


def test_dry_run_shows_every_step_and_saves_only_on_request(indexed_wb, fake):
    ws = workshop_for(indexed_wb, fake)
    seen = []
    result = ws.dry_run(turns=2, top_k=3, seed=3, on_step=seen.append)
    kinds = [s.kind for s in result.steps]
    assert kinds == ["briefing", "questions", "retrieval", "answer", "follow_up", "retrieval", "answer"]
    assert seen == result.steps  # each step was handed to the page as it happened
    assert result.steps[0].passages and result.steps[1].reply.strip()
    answer = result.steps[3]
    assert answer.system_prompt and answer.reply and answer.tokens["prompt"] > 0
    assert all(p["id"] in answer.system_prompt for p in result.steps[2].passages)
    assert indexed_wb.db.scalar("SELECT COUNT(*) FROM conversations") == 0
    cid = ws.save_dry_run(result)
    turns = indexed_wb.db.rows("SELECT role, retrieval FROM turns WHERE conversation_id=? ORDER BY idx", [cid])
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert loads(turns[1]["retrieval"])


def test_dry_run_llm_error_is_shown_inline(indexed_wb, fake):
    fake.push_faults("not_found")
    result = workshop_for(indexed_wb, fake).dry_run(turns=1)
    assert result.steps[-1].kind == "error" and "not found" in result.steps[-1].reply.lower()
    assert not result.complete
    with pytest.raises(ValidationError, match="Only a dry run that finished"):
        workshop_for(indexed_wb, fake).save_dry_run(result)


def test_no_corpus_yet_is_a_clear_message(wb, fake):
    with pytest.raises(ValidationError, match="No corpus is indexed yet"):
        workshop_for(wb, fake).dry_run()
    with pytest.raises(ValidationError, match="No corpus is indexed yet"):
        workshop_for(wb, fake).preview_retrieval("deposit")


def test_ab_uses_identical_briefings_and_questions_for_both_arms(indexed_wb, fake):
    library = PromptLibrary(indexed_wb.db)
    library.ensure_defaults()
    a = library.current("respondent")
    b = library.save("respondent", a["text"] + "\nAnswer in at most three sentences.")
    ws = workshop_for(indexed_wb, fake)
    comparison = ws.run_ab("respondent", a["id"], b["id"], n=3, max_turns=2, seed=5)
    rows = indexed_wb.db.rows("SELECT * FROM conversations WHERE comparison_id=? ORDER BY work_item_id, arm",
                              [comparison])
    assert len(rows) == 6
    for arm_a, arm_b in zip(rows[::2], rows[1::2]):
        assert (arm_a["arm"], arm_b["arm"]) == ("A", "B")
        assert arm_a["question"] == arm_b["question"]
        assert arm_a["briefing_ids"] == arm_b["briefing_ids"] and arm_a["num_turns"] == arm_b["num_turns"]
        assert loads(arm_a["prompt_versions"])["respondent"] == a["id"]
        assert loads(arm_b["prompt_versions"])["respondent"] == b["id"]
    pairs = ws.comparison_pairs(comparison)
    ws.pick(comparison, pairs[0]["pair"], "B", actor="ana")
    assert ws.comparison_pairs(comparison)[0]["winner"] == "B"
    with pytest.raises(ValidationError):
        ws.run_ab("respondent", a["id"], a["id"])


def test_query_terms_drop_stopwords():
    assert query_terms("What did the court hold about § 1950.5? The COURT!") == ["court", "hold", "1950.5"]


def test_regenerate_low_rated_with_a_new_prompt_version(indexed_wb, fake):
    from core.generation.engine import GenerationRun, RunConfig
    from core.generation.workshop import low_rated, regenerate_with_versions

    settings = indexed_wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url)
    run = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, lambda g: GeminiProvider(settings, gate=g),
                        config=RunConfig(num_dialogs=3, max_turns=2, max_concurrency=2))
    run.run()
    ids = [r["id"] for r in indexed_wb.db.rows("SELECT id FROM conversations ORDER BY id")]
    with indexed_wb.db.write() as w:
        w.execute("UPDATE conversations SET rating=1 WHERE id IN (?, ?)", ids[:2])
    library = PromptLibrary(indexed_wb.db)
    new_version = library.save("respondent", library.current("respondent")["text"] + "\nBe brief.")
    ws = workshop_for(indexed_wb, fake)
    candidates = [c["id"] for c in low_rated(indexed_wb.db, 2)]
    assert sorted(candidates) == sorted(ids[:2])
    pairs = regenerate_with_versions(ws, candidates, {"respondent": new_version["id"]})
    for old_id, new_id in pairs:
        old = indexed_wb.db.one("SELECT * FROM conversations WHERE id=?", [old_id])
        new = indexed_wb.db.one("SELECT * FROM conversations WHERE id=?", [new_id])
        assert new["parent_id"] == old_id and new["question"] == old["question"]
        assert new["briefing_ids"] == old["briefing_ids"] and new["num_turns"] == old["num_turns"]
        assert loads(new["prompt_versions"])["respondent"] == new_version["id"]
    with pytest.raises(ValidationError, match="Select at least one"):
        regenerate_with_versions(ws, [], {})
