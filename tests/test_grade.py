"""`groundwork grade`, the LLM verifier (the real google-genai client against FakeGemini), stale grounding after an
edit, and the judge/grounding calibration against reviewers — on real SQLite and the real packaged MiniLM."""

from __future__ import annotations

import json
import re

import pytest

from core import quality
from core.cli import main
from core.db import Database, dumps, new_id
from fakes.gemini import FakeGemini
from core.quality.calibration import best_threshold, reviewer_agreement, spearman
from core.quality.grade import GradeInputError, read_rows
from core.quality.grounding import OfflineVerifier, TurnInput
from core.quality.spans import locate
from core.quality.verify import DatabaseCache, LLMVerifier, MemoryCache, check_evidence

PASSAGE = {"id": "kb-refunds", "score": 0.8, "text":
           "Annual plans can be refunded in full within 14 days of purchase. After 14 days, we refund the unused "
           "months minus a 10% processing fee. Monthly plans are not refundable, but you can cancel at any time."}
CARRIED = {"id": "kb-cancel", "score": 0.5, "carried": True, "from_turn": 1, "text":
           "To cancel, open Billing > Plan and choose Cancel plan. Access continues until the end of the period."}


def row(answer2: str = "To cancel, go to Billing > Plan and pick Cancel plan.") -> dict:
    return {"id": "c1", "messages": [
        {"role": "user", "content": "Can I get a refund on my annual plan?"},
        {"role": "assistant", "content": "Yes: within 14 days of purchase an annual plan is refunded in full. "
                                         "I hope this helps!"},
        {"role": "user", "content": "How do I cancel?"},
        {"role": "assistant", "content": answer2}],
        "retrieved_context": [{"turn": 1, "passages": [PASSAGE]},
                              {"turn": 3, "query": "cancel plan", "passages": [CARRIED, PASSAGE]}]}


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


# ---- groundwork grade, offline ---------------------------------------------------------------------------

def test_grade_offline_writes_each_row_with_grounding_in_the_documented_shape(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    reversed_answer = "Monthly plans can be refunded at any time."
    write_jsonl(src, [row(), row(reversed_answer)])
    assert main(["grade", str(src), "--out", str(dst), "--quiet"]) == 0
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert len(out) == 2 and out[0]["messages"] == row()["messages"]  # the input row, unchanged, plus grounding
    first = out[0]["grounding"]
    assert [g["turn"] for g in first] == [1, 3]
    for g in first:
        assert set(g) == {"turn", "score", "method", "sentences"} and 0 <= g["score"] <= 1
        assert g["method"] == quality.GROUNDING_METHOD
        for s in g["sentences"]:
            assert set(s) == {"text", "verdict", "check", "passage_id", "evidence"}
            assert s["verdict"] in quality.VERDICTS
    verdicts = [s["verdict"] for s in first[0]["sentences"]]
    assert verdicts == ["supported", "neutral"]  # "I hope this helps!" makes no claim
    assert first[0]["sentences"][0]["passage_id"] == "kb-refunds"
    assert first[0]["sentences"][0]["evidence"] in PASSAGE["text"]  # a real span of the passage
    # The second answer is graded against every passage shown for it, the carried one included.
    assert first[1]["sentences"][0]["passage_id"] == "kb-cancel"
    assert first[1]["score"] > 0.5  # nothing flagged: the upper band
    flipped = out[1]["grounding"][1]["sentences"][0]
    assert flipped["verdict"] == "contradicted" and "not refundable" in flipped["evidence"]
    assert "graded 2 conversation(s)" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ("{not json", r"line 2: not valid JSON .*fix or remove the line"),
    ('["a list"]', r"line 2: expected a JSON object"),
    ('{"messages": [], "retrieved_context": []}', r"line 2: 'messages' is missing or empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"line 2: 'retrieved_context' is missing"),
    ('{"messages": [{"role": "user", "content": "hi"}], "retrieved_context": [{"turn": 0, "passages": []}]}',
     r"line 2: retrieved_context\[0\] has turn 0, which is a 'user' message"),
    ('{"messages": [{"role": "assistant", "content": "x"}], "retrieved_context": [{"turn": 5, "passages": []}]}',
     r"line 2: retrieved_context\[0\] has turn 5, but 'messages' has only 1"),
    ('{"messages": [{"role": "assistant", "content": "x"}], "retrieved_context": [{"turn": 0, "passages": [{}]}]}',
     r"line 2: retrieved_context\[0\]\.passages\[0\] needs a string 'text'"),
])
def test_grade_bad_input_is_one_line_per_problem_with_its_line_number(tmp_path, capsys, line, message):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [row(), line])
    assert main(["grade", str(src), "--out", str(dst), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()  # nothing half-written


def test_grade_lists_every_bad_line_and_a_missing_file(tmp_path, capsys):
    rows = [row()] + ["{broken"] * 25
    with pytest.raises(GradeInputError) as e:
        read_rows(iter(json.dumps(r) if isinstance(r, dict) else r for r in rows))
    problems = str(e.value).splitlines()
    assert problems[0].startswith("line 2:") and problems[19].startswith("line 21:")
    assert problems[-1] == "… and 5 more"
    assert main(["grade", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "is not a file" in capsys.readouterr().err


# ---- the LLM verifier ----------------------------------------------------------------------------------

def verifier_reply(body: dict) -> str:
    """What a model answers: sentence 1 supported with a real quote (re-cased, curly quotes), sentence 2
    "supported" with a quote that is in no passage, the rest unsupported."""
    prompt = " ".join(p.get("text", "") for c in body["contents"] for p in c.get("parts", []))
    numbered = re.findall(r"^(\d+)\. ", prompt, flags=re.M)
    rows = []
    for n in map(int, numbered):
        if n == 1:
            rows.append({"n": 1, "verdict": "supported", "passage_id": "kb-cancel",  # wrong id, right quote
                         "evidence": "“Refunded in full … 14 DAYS of purchase”"})
        elif n == 2:
            rows.append({"n": 2, "verdict": "supported", "passage_id": "kb-refunds",
                         "evidence": "refunds are always instant"})
        else:
            rows.append({"n": n, "verdict": "unsupported", "passage_id": "", "evidence": ""})
    return json.dumps({"sentences": rows})


def test_llm_verifier_checks_every_quote_against_the_passages_and_caches_by_content(tmp_path):
    from core.config import Settings
    from core.providers.gemini import GeminiProvider

    with FakeGemini(responder=verifier_reply) as fake:
        provider = GeminiProvider(Settings(gemini_base_url=fake.base_url, gemini_api_key="k", gemini_max_retries=0,
                                           request_timeout=5.0))
        db = Database(tmp_path / "gw.db")
        verifier = LLMVerifier(provider, cache=DatabaseCache(db))
        turn = TurnInput("Within 14 days of purchase an annual plan is refunded in full. Refunds are instant. "
                         "You also get a free month.", [PASSAGE, CARRIED], ["Can I get a refund?"], idx=1)
        v = verifier.verify(turn)
        assert [s.verdict for s in v.sentences] == ["supported", "unsupported", "unsupported"]
        first = v.sentences[0]
        # The quote was found in the passage that holds it and returned as the passage has it.
        assert first.passage_id == "kb-refunds" and first.evidence == "refunded in full within 14 days of purchase"
        assert first.evidence in PASSAGE["text"]
        assert "quote is in no passage" in v.sentences[1].reasons[0] and v.sentences[1].evidence is None
        # Two of three sentences flagged: below the flag band (0.5), at half the share not flagged.
        assert v.score == round(0.5 * (1 / 3), 4) and v.method.startswith("llm-verifier-v1:")
        assert [s.check for s in v.sentences] == ["llm", "llm", "llm"]
        assert (verifier.calls, verifier.cached) == (1, 0) and verifier.prompt_tokens > 0
        assert fake.requests_total == 1
        # Same content: from the cache (a new verifier on the same database: no call at all).
        cached = LLMVerifier(provider, cache=DatabaseCache(db))
        again = cached.verify(turn)
        assert [s.verdict for s in again.sentences] == [s.verdict for s in v.sentences]
        assert (cached.calls, cached.cached, fake.requests_total) == (0, 1, 1)
        # Changed passages: a new call.
        other = LLMVerifier(provider, cache=MemoryCache())
        other.verify(TurnInput(turn.answer, [PASSAGE], turn.context, idx=1))
        assert other.calls == 1 and fake.requests_total == 2
        provider.close()
        db.close()


def test_grade_with_a_provider_goes_through_the_real_client_and_caches_in_the_data_dir(tmp_path, monkeypatch,
                                                                                      capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [row()])
    with FakeGemini(responder=verifier_reply) as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "k")
        monkeypatch.setenv("GEMINI_MAX_RETRIES", "0")
        args = ["grade", str(src), "--out", str(dst), "--provider", "gemini", "--data-dir", str(tmp_path / "d"),
                "--quiet"]
        assert main(args) == 0
        graded = json.loads(dst.read_text(encoding="utf-8"))["grounding"]
        assert [g["turn"] for g in graded] == [1, 3] and graded[0]["method"].startswith("llm-verifier-v1:")
        first = graded[0]["sentences"][0]
        assert set(first) == {"text", "verdict", "check", "passage_id", "evidence"}
        assert (first["verdict"], first["passage_id"]) == ("supported", "kb-refunds")
        assert first["evidence"] in PASSAGE["text"]
        assert graded[0]["sentences"][1]["verdict"] == "unsupported"  # its "quote" is in no passage
        assert "2 verifier call(s), 0 from the cache" in capsys.readouterr().err
        assert main(args) == 0  # the same file again: every verdict from the data dir's cache
        assert "0 verifier call(s), 2 from the cache" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: the tiny offline model is not a choice
        main(["grade", str(src), "--out", str(dst), "--provider", "local"])
    assert exit_.value.code == 2


def test_quotes_are_found_despite_case_quotes_whitespace_and_an_elided_middle():
    passage = "The **Calvin cycle** does not use light directly,\nbut it stops in the dark because it depends on ATP."
    assert locate("the calvin cycle does not use light directly", passage) == \
        "The **Calvin cycle** does not use light directly"
    assert locate("does not use light … it depends on ATP", passage) == \
        "does not use light directly,\nbut it stops in the dark because it depends on ATP"
    assert locate("uses light directly", passage) is None
    assert locate("ATP", passage) is None  # too short to prove anything
    assert check_evidence("contradicted", "p", "stops in the dark", [{"id": "p", "text": passage}])[:3] == \
        ("contradicted", "p", "stops in the dark")
    assert check_evidence("neutral", "", "", [])[0] == "neutral"


# ---- stored conversations: LLM verdicts, stale marks after an edit -------------------------------------

def store_conversation(db: Database, answer: str, passages: list[dict]) -> str:
    cid = new_id()
    with db.write() as w:
        w["conversations"].insert({"id": cid, "run_id": "r", "status": "new", "question": "q", "num_turns": 1,
                                   "created_at": "2024-01-01T00:00:00", "briefing_ids": "[]", "search_text": "q"})
        w["turns"].insert({"conversation_id": cid, "idx": 0, "role": "user", "content": "Can I get a refund?",
                           "created_at": "2024-01-01T00:00:00"})
        w["turns"].insert({"conversation_id": cid, "idx": 1, "role": "assistant", "content": answer,
                           "retrieval": dumps(passages), "created_at": "2024-01-01T00:00:00"})
    return cid


def test_an_edited_turn_is_stale_until_regraded_and_only_it_is_regraded(wb, embedder):
    from core.review.store import ReviewStore

    cid = store_conversation(wb.db, "Annual plans can be refunded in full within 14 days of purchase.", [PASSAGE])
    quality.score_conversation(wb.db, embedder, cid)
    [before] = quality.grounding_details(wb.db, cid)
    assert before["score"] == 1.0 and not before["stale"]
    ReviewStore(wb.db).edit_message(cid, 1, "Monthly plans can be refunded at any time.", "ann")
    [after_edit] = quality.grounding_details(wb.db, cid)
    assert after_edit["stale"]  # the old score no longer describes the text
    assert quality.regrade_stale(wb.db, embedder, cid) == 1
    [regraded] = quality.grounding_details(wb.db, cid)
    assert not regraded["stale"] and regraded["score"] == 0.0
    assert regraded["sentences"][0]["kind"] == "contradicted"
    assert quality.regrade_stale(wb.db, embedder, cid) == 0  # nothing left to do
    assert wb.db.scalar("SELECT grounding FROM conversations WHERE id=?", [cid]) == 0.0
    # An edit made elsewhere is picked up by the next "score what is not scored" pass too.
    assert quality.score_conversations(wb.db, embedder) == 0
    ReviewStore(wb.db).edit_message(cid, 1, "Annual plans are refunded in full within 14 days.", "ann")
    assert quality.score_conversations(wb.db, embedder) == 1
    assert not quality.grounding_details(wb.db, cid)[0]["stale"]


def test_llm_verdicts_are_stored_for_the_review_page_with_their_evidence(wb):
    from core.config import Settings
    from core.providers.gemini import GeminiProvider

    cid = store_conversation(wb.db, "Within 14 days of purchase an annual plan is refunded in full. "
                                    "Refunds are instant.", [PASSAGE])
    with FakeGemini(responder=verifier_reply) as fake:
        settings = Settings(gemini_base_url=fake.base_url, gemini_api_key="k", gemini_max_retries=0,
                            request_timeout=5.0)
        message = quality.verify.verify_stored(wb.db, "gemini", lambda gate: GeminiProvider(settings), cid)
    assert message.startswith("Verified 1 answer(s) with llm-verifier-v1:") and "1 with an unsupported" in message
    [d] = quality.grounding_details(wb.db, cid)
    assert d["method"].startswith("llm-verifier-v1:") and not d["stale"] and d["score"] == 0.25  # 1 of 2 flagged
    assert [s["kind"] for s in d["sentences"]] == ["supported", "unsupported"]
    html = quality.evidence_html(d["sentences"], [PASSAGE])
    assert "<mark>refunded in full within 14 days of purchase</mark>" in html and "no passage says this" in html
    with pytest.raises(quality.verify.ValidationError, match="capable model"):
        quality.verify.verify_stored(wb.db, "local", lambda gate: None, cid)


def test_offline_verifier_evidence_is_a_real_span_of_the_passage(embedder):
    passage = {"id": "p", "text": "# Refunds\n\n**Monthly plans** are not refundable.\nAnnual plans can be refunded "
                                  "in full within 14 days of purchase."}
    [v] = OfflineVerifier(embedder).verify_turns([TurnInput("Annual plans are refundable in full for 14 days after "
                                                            "you buy them.", [passage])])
    s = v.sentences[0]
    assert s.verdict == "supported" and s.evidence in passage["text"]


# ---- judges and grounding against reviewers ----------------------------------------------------------

def test_spearman_and_best_threshold_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert spearman([1, 1, 2], [0, 1, 1]) == 0.5  # ties share ranks
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [0, 1, 0]) is None
    assert best_threshold([0.2, 0.4, 0.6, 0.9], [False, False, True, True]) == (0.6, 1.0)


def test_reviewer_agreement_per_prompt_version(wb):
    db = wb.db
    with db.write() as w:
        for v in (1, 2):
            w["prompt_versions"].insert({"id": v, "kind": "respondent", "version": v, "name": f"p{v}", "text": "t",
                                         "created_at": "2024-01-01"}, alter=True)
    rows = [  # (version, status, rating, judge overall, grounding)
        (1, "approved", 5, 4.5, 0.95), (1, "approved", 4, 4.0, 0.9), (1, "discarded", 1, 2.0, 0.4),
        (1, "discarded", 2, 3.75, 0.45), (1, "new", None, 5.0, 1.0), (2, "approved", 4, 3.0, 0.8),
        (2, "discarded", 1, 4.0, 0.3), (2, "approved", 5, 4.0, 0.85)]
    with db.write() as w:
        for i, (v, status, rating, judge, grounding) in enumerate(rows):
            w["conversations"].insert({"id": f"c{i}", "run_id": "r", "status": status, "rating": rating,
                                       "prompt_versions": json.dumps({"respondent": v}), "grounding": grounding,
                                       "judge": json.dumps({"overall": judge, "threshold": 3.5}),
                                       "created_at": f"2024-01-0{i + 1}"})
    out = {(r["prompt_version"], r["score"]): r for r in reviewer_agreement(db)}
    assert set(out) == {("v1 p1", "judge"), ("v1 p1", "grounding"), ("v2 p2", "judge"), ("v2 p2", "grounding")}
    g1 = out[("v1 p1", "grounding")]
    assert g1["reviewed"] == 4 and g1["rated"] == 4  # the unreviewed, unrated one does not count
    assert g1["spearman_decision"] > 0.8 and g1["spearman_rating"] == 1.0
    assert (g1["pass_approved"], g1["fail_approved"], g1["pass_discarded"], g1["fail_discarded"]) == (2, 0, 0, 2)
    assert g1["threshold"] == quality.WEAKLY_GROUNDED_BELOW and g1["agreement"] == 1.0
    j1 = out[("v1 p1", "judge")]
    # At 3.5 the judge passes a discarded conversation (3.75); a cut at 4.0 matches the reviewers.
    assert (j1["pass_discarded"], j1["agreement"]) == (1, 0.75)
    assert (j1["best_threshold"], j1["best_agreement"]) == (4.0, 1.0)
    j2 = out[("v2 p2", "judge")]
    assert j2["spearman_decision"] < 0  # this version's judge ranks against its reviewers


# ---- the LLM verifier at generation time -------------------------------------------------------------

class VerifyingGemini:
    """Like Gemini for the run's own calls; answers verifier calls by quoting the first passage shown."""

    def __init__(self):
        self.verify_calls = 0

    def __call__(self, body):
        from core.quality.verify import VERIFY_SYSTEM

        system = " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
        if not system.startswith(VERIFY_SYSTEM[:40]):
            return FakeGemini.reply_for(body)
        self.verify_calls += 1
        prompt = " ".join(p.get("text", "") for c in body["contents"] for p in c.get("parts", []))
        first = re.search(r"^\[([^\]]+)\] (.+)$", prompt, flags=re.M)
        numbered = re.findall(r"^(\d+)\. ", prompt, flags=re.M)
        return json.dumps({"sentences": [{"n": int(n), "verdict": "supported", "passage_id": first.group(1),
                                          "evidence": first.group(2)[:60]} for n in numbered]})


def test_generation_verifies_each_answer_when_enabled_and_the_estimate_counts_it(indexed_wb):
    from core.generation.cost import calls_per_conversation, estimate_run
    from core.generation.engine import GenerationRun, RunConfig
    from core.providers.gemini import GeminiProvider

    responder = VerifyingGemini()
    config = RunConfig(num_dialogs=2, max_turns=2, max_concurrency=1, verify_grounding=True)
    with FakeGemini(responder=responder) as fake:
        settings = indexed_wb.settings.replace(gemini_api_key="k", gemini_base_url=fake.base_url,
                                               gemini_max_retries=1)
        run = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus,
                            lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01), config=config)
        assert run.run().status == "completed"
    answers = indexed_wb.db.rows("SELECT t.grounding, t.content, t.retrieval FROM turns t JOIN conversations c ON "
                                 "c.id = t.conversation_id WHERE c.run_id=? AND t.role='assistant'", [run.run_id])
    assert answers and responder.verify_calls == len(answers)  # one verifier call per answer
    for a in answers:
        stored = json.loads(a["grounding"])
        assert stored["method"].startswith("llm-verifier-v1:") and stored["content_hash"]
        passages = json.loads(a["retrieval"])
        for s in stored["sentences"]:
            if s["verdict"] == "supported":
                assert any(s["evidence"] in p["text"] for p in passages)
    assert all(d["score"] is not None for c in indexed_wb.db.rows("SELECT id FROM conversations WHERE run_id=?",
                                                                    [run.run_id])
               for d in quality.grounding_details(indexed_wb.db, c["id"]))
    per = calls_per_conversation(config)
    assert per["verify"] == per["respondent"] == 1.5  # one per answer
    with_verify = estimate_run(indexed_wb.db, config, "gemini-2.5-flash", {"respondent": "r", "correspondent": "c",
                                                                            "instruction": "i"})
    config.verify_grounding = False
    without = estimate_run(indexed_wb.db, config, "gemini-2.5-flash", {"respondent": "r", "correspondent": "c",
                                                                        "instruction": "i"})
    assert with_verify.calls == without.calls + 3 and with_verify.prompt_tokens > without.prompt_tokens


def test_llm_verifier_on_an_openai_compatible_server():
    from core.config import Settings
    from fakes.gemini import FakeOpenAI
    from core.providers.openai_compat import OpenAICompatProvider

    def reply(body):
        prompt = " ".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        assert body["response_format"]["type"] == "json_schema"  # structured output was asked for
        assert "1. Monthly plans can be refunded any time." in prompt
        return json.dumps({"sentences": [{"n": 1, "verdict": "contradicted", "passage_id": "kb-refunds",
                                          "evidence": "Monthly plans are not refundable"}]})

    with FakeOpenAI(responder=reply) as fake:
        provider = OpenAICompatProvider(Settings(provider="openai", openai_base_url=fake.base_url,
                                                 openai_model="m", gemini_max_retries=0, request_timeout=5.0))
        v = LLMVerifier(provider).verify(TurnInput("Monthly plans can be refunded any time.", [PASSAGE], idx=1))
        provider.close()
    [s] = v.sentences
    assert (s.verdict, s.passage_id, s.evidence) == ("contradicted", "kb-refunds", "Monthly plans are not refundable")
    assert v.score == 0.0 and v.flagged and v.method == "llm-verifier-v1:m"


# ---- at generation time: `generate --verify-grounding` ----------------------------------------------------

def run_reply(body: dict) -> str:
    """A model that writes conversations as the fake's default does, and as a verifier quotes the opening
    words of the first passage for sentence 1 (in the wrong case) and nothing for the rest."""
    prompt = " ".join(p.get("text", "") for c in body["contents"] for p in c.get("parts", []))
    if not prompt.startswith("Passages shown to the assistant:"):
        return FakeGemini.reply_for(body)
    first = re.search(r"^\[([^\]]+)\] (.+)$", prompt, flags=re.M)
    quote = " ".join(first.group(2).split()[:8]).upper()
    rows = [{"n": int(n), "verdict": "unsupported", "passage_id": "", "evidence": ""}
            for n in re.findall(r"^(\d+)\. ", prompt, flags=re.M)]
    rows[0] = {"n": 1, "verdict": "supported", "passage_id": first.group(1), "evidence": quote}
    return json.dumps({"sentences": rows})


def test_generate_with_verify_grounding_stores_checked_verdicts_for_every_answer(indexed_wb, monkeypatch, capsys):
    data_dir = str(indexed_wb.settings.data_path)
    indexed_wb.close()
    with FakeGemini(responder=run_reply) as fake:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "k")
        assert main(["generate", "--data-dir", data_dir, "--provider", "gemini", "--num-dialogs", "2",
                     "--max-turns", "2", "--verify-grounding", "--quiet"]) == 0
        asked = [r for r in fake.requests if "Passages shown to the assistant:" in json.dumps(r.body)]
    db = Database(indexed_wb.settings.db_path)
    answers = db.rows("SELECT t.content, t.retrieval, t.grounding FROM turns t JOIN conversations c "
                      "ON c.id = t.conversation_id WHERE t.role='assistant'")
    assert len(asked) == len(answers) >= 2  # one verifier call per answer
    for a in answers:
        grounding = json.loads(a["grounding"])
        assert grounding["method"].startswith("llm-verifier-v1:")
        first = grounding["sentences"][0]
        passage = {str(p["id"]): p["text"] for p in json.loads(a["retrieval"])}[first["passage_id"]]
        assert first["verdict"] == "supported" and first["evidence"] in passage  # the real span, as written
        assert first["evidence"] != first["evidence"].upper()
    assert db.scalar("SELECT COUNT(*) FROM conversations WHERE grounding IS NOT NULL") == 2
    db.close()
    # The offline demo model cannot verify: one line, no run started.
    assert main(["generate", "--data-dir", data_dir, "--provider", "local", "--num-dialogs", "1",
                 "--verify-grounding", "--quiet"]) == 2
    assert "LLM verifier needs a capable model" in capsys.readouterr().err
