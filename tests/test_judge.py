"""LLM judge with bounded auto-improve, against the fake Gemini server with scripted scores."""

import json
import threading

import pytest

from core.db import loads
from core.generation.engine import GenerationRun, RunConfig
from core.errors import ValidationError
from fakes.gemini import FakeGemini
from core.quality.judge import JUDGE_SYSTEM, judge_available
from core.providers.gemini import GeminiProvider

KEY = "AIza-judge-key-0000"


class ScriptedJudge:
    """Answers judge requests with scripted scores (in order) and everything else like Gemini would."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.lock = threading.Lock()
        self.respondent_prompts = []

    def __call__(self, body):
        system = " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
        if system.startswith(JUDGE_SYSTEM[:40]):
            with self.lock:
                score = self.scores.pop(0) if self.scores else 5
            return json.dumps({"groundedness": score, "helpfulness": score, "coherence": score,
                               "role_consistency": score,
                               "feedback": f"Cite the docket number exactly (was scored {score})."})
        if "Retrieved passages:" in system:
            with self.lock:
                self.respondent_prompts.append(system)
        return FakeGemini.reply_for(body)


def run_with(wb, fake, config):
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, gemini_max_retries=1)
    factory = lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01)  # noqa: E731
    run = GenerationRun(settings, wb.db, wb.corpus, factory, config=config)
    return run, run.run()


def test_auto_improve_is_bounded_feeds_back_and_keeps_the_best(indexed_wb):
    judge = ScriptedJudge([2, 3, 1])  # three attempts allowed: 2 → 3 → 1, best is the second
    with FakeGemini(responder=judge) as fake:
        run, progress = run_with(indexed_wb, fake, RunConfig(num_dialogs=1, max_turns=1, max_concurrency=1,
                                                              auto_improve=True, max_improve_attempts=3))
    assert progress.status == "completed"
    conversation = indexed_wb.db.one("SELECT * FROM conversations WHERE run_id=?", [run.run_id])
    record = loads(conversation["judge"])
    assert [a["overall"] for a in record["attempts"]] == [2.0, 3.0, 1.0]  # bounded: exactly 3 attempts
    assert record["best"] == 1 and record["overall"] == 3.0
    # The retry prompts carried the judge's feedback from the attempt before.
    assert "Cite the docket number exactly (was scored 2)" in judge.respondent_prompts[1]
    assert "Cite the docket number exactly (was scored 3)" in judge.respondent_prompts[2]
    assert "reviewer graded" not in judge.respondent_prompts[0]
    # The stored conversation is the best attempt's text.
    turns = indexed_wb.db.rows("SELECT role, content FROM turns WHERE conversation_id=? ORDER BY idx",
                               [conversation["id"]])
    assert [{"role": t["role"], "content": t["content"]} for t in turns] == record["attempts"][1]["messages"]


def test_a_passing_conversation_is_judged_once(indexed_wb):
    judge = ScriptedJudge([5, 5])
    with FakeGemini(responder=judge) as fake:
        run, progress = run_with(indexed_wb, fake, RunConfig(num_dialogs=2, max_turns=1, max_concurrency=1,
                                                              auto_improve=True, max_improve_attempts=3))
    records = [loads(r["judge"]) for r in indexed_wb.db.rows("SELECT judge FROM conversations WHERE run_id=?",
                                                             [run.run_id])]
    assert [len(r["attempts"]) for r in records] == [1, 1]


def test_offline_model_cannot_judge(indexed_wb):
    available, reason = judge_available("local")
    assert not available and "too small" in reason
    settings = indexed_wb.settings.replace(provider="local")
    with pytest.raises(ValidationError, match="Auto-improve needs a judge"):
        GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, lambda gate: None,
                      config=RunConfig(num_dialogs=1, auto_improve=True))
