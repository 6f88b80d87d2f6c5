"""Grounded in the right document (#22): titles that travel with passages, a conversation anchored on the
documents its answers used, carried context that is evidence, clean search queries, opening questions from the
corpus, and a simulated user's reply parsed strictly. Unit checks first, then the real pipeline: real SQLite, the
real vector store, the real embedding model and the real google-genai client against the fake Gemini server."""

import json
import re
import threading

import pytest

from core.generation.anchoring import (TitleIndex, anchor_documents, evidence_to_carry, turn_focus, used_passages)
from core.corpus.collection import Passage
from core.db import loads
from core.generation.engine import GenerationRun, RunConfig
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.generation.reply_checks import FROM_PROMPT, REPEATED, OpeningQuestions, check_question
from core.corpus.lexical import query_terms
from core.generation.standalone_query import clean_query, query_noise, standalone_query
from test_loaders import make_pdf

KEY = "AIzaSy-anchoring-test-key-00000000000000"


def passage(pid, doc, text, title="", carried=False, from_turn=None):
    return Passage(id=pid, score=1.0, text=text, document_id=doc, title=title or doc, source_path=f"{doc}.md",
                   position=0, carried=carried, from_turn=from_turn)


# ---- units ------------------------------------------------------------------------------------------------------

def test_an_answer_uses_the_passages_it_draws_on_not_every_passage_shown():
    shown = [passage("p1", "harlow", "The court held the eighteen-month restraint unreasonable because Brenner "
                                      "never saw client pricing data.", "Harlow Analytics v. Brenner"),
             passage("p2", "voss", "The noncompete was enforced for twelve months within Lakeland county lines.",
                     "Voss v. Keller"),
             passage("p3", "sterling", "Sterling's refrigeration routes were trade secrets under the statute.",
                     "Sterling Cold Chain v. Ferreira")]
    answer = ("In Harlow Analytics v. Brenner the court found the eighteen-month restraint unreasonable, since "
              "Brenner never had access to client pricing data.")
    assert [p.id for p in used_passages(answer, shown)] == ["p1"]
    assert [p.id for p in used_passages("See passage p2 for the duration.", shown)] == ["p2"]  # cited by id
    # An abstention uses nothing: nothing of it is carried on as evidence.
    assert used_passages("I cannot tell from these documents; none of them addresses that.", shown) == []


def test_carried_context_is_what_earlier_answers_used_newest_first():
    t1 = [passage("a", "d1", "alpha " * 20), passage("b", "d1", "beta " * 20)]
    t2 = [passage("c", "d2", "gamma " * 20)]
    carried = evidence_to_carry([t1, t2], new=[passage("b", "d1", "beta")], budget_tokens=10_000)
    assert [(p.id, p.from_turn, p.carried) for p in carried] == [("c", 2, True), ("a", 1, True)]
    # A passage carried at turn 2 and used again keeps the turn it was first retrieved for.
    again = evidence_to_carry([t1, [carried[1]]], new=[], budget_tokens=10_000)
    assert [(p.id, p.from_turn) for p in again] == [("a", 1), ("b", 1)]
    assert [p.id for p in evidence_to_carry([t1], new=[], budget_tokens=30)] == ["a"]  # within the budget


def test_the_anchor_is_the_briefing_and_the_documents_answers_used():
    used = [[passage("x", "retrieved-and-used", "...")], []]
    assert anchor_documents(["briefed"], used) == ["briefed", "retrieved-and-used"]
    assert anchor_documents(["briefed"], [[], []]) == ["briefed"]  # retrieved but never used: no place


TITLES = {"harlow": "Harlow Analytics v. Brenner", "voss": "Voss v. Keller", "pine": "Pinecrest Analytics v. Dorn",
          "nimbus": "Nimbus Mesh AX3000 User Manual", "sky": "SkyLace Mesh Pro User Manual",
          "file": "caselaw.jsonl line 4"}


def test_a_follow_up_may_leave_the_anchor_by_naming_another_document_or_pointing_away():
    index = TitleIndex.build(TITLES)
    assert "file" not in index.names  # a file name names nothing
    named = turn_focus("What about the case it relied on, Voss v. Keller?", "", ["harlow"], TITLES, index)
    assert (named.reason, named.documents, named.anchored) == ("named", ["voss"], True)
    assert named.subject == ["Voss v. Keller"]
    away = turn_focus("How did the other case handle the same clause?", "", ["harlow"], TITLES, index)
    assert (away.reason, away.documents, away.anchored) == ("elsewhere", None, False)
    stay = turn_focus("What did the dissent say?", "", ["harlow"], TITLES, index)
    assert (stay.reason, stay.documents, stay.anchored) == ("anchor", ["harlow"], True)
    # A word two titles share ("Analytics", "Mesh") names neither; everyday words name nothing.
    assert turn_focus("Do analytics firms win these?", "", ["voss"], TITLES, index).reason == "anchor"
    assert index.named("How does the Mesh handle a reset?") == []
    assert index.named("Does the Nimbus reset the same way?") == ["nimbus"]


def test_queries_lose_file_names_ids_markup_status_and_prompt_words():
    noisy = ('caselaw.jsonl line 21 <passage id="3f2a9c1e-1111-4222-8333-444455556666" status="new"> dissent '
             'Harlow passages marked new retrieved for the latest message')
    assert set(query_noise(noisy)) == {"file name", "id", "markup", "status", "prompt words"}
    clean = clean_query(noisy, allowed={"dissent", "harlow"})
    assert query_noise(clean, allowed={"dissent", "harlow"}) == []
    assert "dissent" in clean and "Harlow" in clean
    query = standalone_query(["Was the Harlow Analytics v. Brenner noncompete enforced?", "What did the dissent say?"],
                             ["caselaw.jsonl line 21", "Harlow Analytics v. Brenner"],
                             proposed='dissent reasoning <passage id="c_9f8e7d6c5b"> status new caselaw.jsonl line 3')
    assert query_noise(query) == [] and "jsonl" not in query and "harlow" in query.lower()


def test_opening_questions_come_from_the_briefing_and_are_never_asked_twice():
    briefing = "Okafor v. Linden Park Apartments: the landlord mailed the itemized deposit statement 40 days late."
    prompt = "Below is a briefing: passages from the corpus, each with an id. Write questions."
    built_from_prompt = "What about the passages marked new that were retrieved for the latest message?"
    assert check_question(built_from_prompt, briefing, prompt).reason == FROM_PROMPT
    seen = OpeningQuestions()
    good = "Did Okafor's landlord lose the deposit by mailing the itemized statement late?"
    assert check_question(good, briefing, prompt, seen).ok
    assert check_question(good.lower(), briefing, prompt, seen).reason == REPEATED
    assert check_question("Did Okafor's landlord lose the deposit for mailing the itemized statement late?",
                          briefing, prompt, seen).reason == REPEATED  # near-same
    assert check_question("How many days late was the itemized statement in Okafor?", briefing, prompt, seen).ok


# ---- titles ----------------------------------------------------------------------------------------------------

def test_titles_come_from_metadata_in_every_format(wb, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "caselaw.jsonl").write_text(
        json.dumps({"case_name": "Harlow Analytics v. Brenner", "court": "Court of Appeals",
                    "text": "The restraint ran eighteen months across three states and was held unreasonable."})
        + "\n", encoding="utf-8")
    (folder / "manual.md").write_text("Intro line\n\n# Nimbus Mesh AX3000 User Manual\n\nHold reset for ten "
                                      "seconds until the light blinks amber.\n", encoding="utf-8")
    (folder / "policy.html").write_text("<html><head><title>Larkspur Parental Leave Policy</title></head><body>"
                                        "<p>Primary carers receive sixteen weeks of paid leave.</p></body></html>",
                                        encoding="utf-8")
    (folder / "wording.pdf").write_bytes(make_pdf(["Theft from an unattended car is covered up to 500 pounds."],
                                                  title="Cobalt TravelSafe Policy Wording"))
    wb.corpus.ingest_path(folder)
    titles = {r["source_path"]: r["title"] for r in wb.db.rows("SELECT source_path, title FROM documents")}
    assert titles == {"caselaw.jsonl": "Harlow Analytics v. Brenner", "manual.md": "Nimbus Mesh AX3000 User Manual",
                      "policy.html": "Larkspur Parental Leave Policy", "wording.pdf": "Cobalt TravelSafe Policy Wording"}
    from core.generation.retrieval import search
    hits = search(wb.corpus, "how long to hold reset until the light blinks", k=4)
    assert hits[0].title == "Nimbus Mesh AX3000 User Manual"


def test_reindexing_with_a_title_key_retitles_without_re_embedding(wb, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"docket": f"CV-{i}", "text": f"Opinion {i}: the tenant {w} prevailed."})
                              for i, w in enumerate(["Alder", "Birch", "Cedar"])) + "\n", encoding="utf-8")
    first = wb.corpus.ingest_path(path)
    assert first.added_chunks == 3
    assert {r["title"] for r in wb.db.rows("SELECT title FROM documents")} == {f"rows.jsonl line {i}" for i in (1, 2, 3)}
    again = wb.corpus.ingest_path(path, title_key="docket")
    assert (again.added_chunks, again.retitled) == (0, 3) and "retitled without re-embedding" in again.summary()
    from core.generation.retrieval import search
    assert search(wb.corpus, "the tenant Birch prevailed", k=1)[0].title == "CV-1"


# ---- the pipeline ----------------------------------------------------------------------------------------------

def _system(body):
    return " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])


def _passages_in(system):
    return [(m.group(1), m.group(2)) for m in re.finditer(r'<passage n="\d+" title="([^"]*)"[^>]*>\n(.*?)\n</passage>',
                                                           system, re.S)]


class RealisticUser:
    """Answers quote the first new passage and name its title; follow-ups lean on the conversation and come with a
    sloppy search query (copied passage markup, a file name, status words); the question writer sometimes builds
    a question from the prompt's own words and repeats itself; the first follow-up of every conversation is
    broken JSON, and one reply is blocked by a safety filter."""

    def __init__(self):
        self.lock = threading.Lock()
        self.broken_sent: set[str] = set()

    def __call__(self, body):
        system = _system(body)
        contents = body.get("contents") or []
        last = " ".join(p.get("text", "") for p in (contents[-1].get("parts") or [])) if contents else ""
        if "Write the" in last and "questions" in last:
            titles_texts = _passages_in(system)
            title, text = titles_texts[0]
            name = title.split(" v. ")[0].split(",")[0]
            words = [w for w in re.findall(r"[A-Za-z]{6,}", text)][:6]
            n = int(re.search(r"Write the (\d+)", last).group(1))
            questions = [f"In {name}, what did the court decide about {words[0]} and {words[1]}?",
                         "What about the passages marked new that were retrieved for the latest message?",
                         f"In {name}, what did the court decide about {words[0]} and {words[1]}?"]
            return json.dumps({"questions": (questions * n)[:n]})
        if "You play" in system:
            transcript = last
            key = transcript.split("\n\n")[1][:80] if "\n\n" in transcript else transcript[:80]
            with self.lock:
                first_time = key not in self.broken_sent
                self.broken_sent.add(key)
            if first_time:
                return '{"message": "What did the court say about the' # cut off: not JSON
            message = "What did the dissent say about that?" if transcript.count("Assistant:") == 1 else \
                "And was that reasoning followed on appeal?"
            return json.dumps({"message": message,
                               "search_query": f'{message} <passage id="c_0a1b2c3d4e" status="new"> '
                                               f'caselaw.jsonl line 7 passages retrieved'})
        found = _passages_in(system)
        if not found:
            return "I cannot tell from the material given."
        title, text = found[0]
        sentence = re.split(r"(?<=[.!?])\s", text.strip())[0]
        return f"According to {title}: {sentence}"


def _blocked_once():
    """The first simulated-user request is blocked by a safety filter (and must be asked again)."""
    state = {"done": False}
    lock = threading.Lock()

    def fault_for(n, body):
        if "You play" in _system(body):
            with lock:
                if not state["done"]:
                    state["done"] = True
                    return "safety"
        return None
    return fault_for


def test_the_pipeline_keeps_each_conversation_on_its_evidence(indexed_wb, tmp_path):
    user = RealisticUser()
    with FakeGemini(latency=0.0, responder=user, fault_for=_blocked_once()) as fake:
        settings = indexed_wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url,
                                               gemini_max_retries=0, request_timeout=5.0)
        factory = lambda gate: GeminiProvider(settings, gate=gate, backoff_base=0.01, max_backoff=0.05,  # noqa: E731
                                              max_retry_wait=1.0)
        run = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus, factory,
                            config=RunConfig(num_dialogs=6, max_turns=3, max_concurrency=2, seed=11,
                                             instructions_per_sample=3))
        progress = run.run()
        respondent_prompts = [_system(r.body) for r in fake.requests
                              if r.body and "Retrieved passages" in _system(r.body)]
    assert progress.saved == 6, progress.reason
    rejections = progress.metrics["rejections"]
    assert rejections.get("question: opening question is built from the prompt, not the briefing", 0) >= 1
    assert rejections.get("question: opening question repeats one already in the run", 0) >= 1
    assert rejections.get("correspondent: not the JSON asked for", 0) >= 1
    assert rejections.get("correspondent: blocked by the provider's safety filter", 0) == 1

    db = indexed_wb.db
    questions = [r["question"] for r in db.rows("SELECT question FROM conversations WHERE run_id=?", [run.run_id])]
    assert len(questions) == len({q.lower() for q in questions})  # no opening question saved twice
    assert not any("passages marked" in q for q in questions)
    users = db.rows("SELECT t.content FROM turns t JOIN conversations c ON c.id=t.conversation_id "
                    "WHERE c.run_id=? AND t.role='user'", [run.run_id])
    assert users and not any(u["content"].lstrip().startswith("{") for u in users)  # never a JSON fragment

    answers = db.rows("SELECT c.id, c.briefing_ids, t.idx, t.query, t.retrieval FROM turns t JOIN conversations c "
                      "ON c.id=t.conversation_id WHERE c.run_id=? AND t.role='assistant' ORDER BY c.id, t.idx",
                      [run.run_id])
    titles = indexed_wb.corpus.titles()
    follow_ups = [a for a in answers if a["idx"] > 1]
    assert follow_ups
    # A word of the prompts' text is noise only when the conversation itself never used it: a user who asks
    # what the opinion says "as written" may search for "written".
    said = {}
    for r in db.rows("SELECT t.conversation_id AS cid, t.idx, t.content FROM turns t JOIN conversations c "
                     "ON c.id=t.conversation_id WHERE c.run_id=? AND t.role='user'", [run.run_id]):
        said.setdefault(r["cid"], []).append((r["idx"], r["content"]))
    for a in follow_ups:
        allowed = {t for idx, text in said[a["id"]] if idx < a["idx"] for t in query_terms(text)}
        allowed |= {t for title in titles.values() for t in query_terms(title)}
        # no file names, ids, markup, status or prompt words
        assert query_noise(a["query"], allowed) == [], a["query"]
    by_conv: dict[str, list] = {}
    for a in answers:
        by_conv.setdefault(a["id"], []).append(a)
    carried_total = carried_on_topic = 0
    for turns in by_conv.values():
        briefed = {indexed_wb.corpus.chunk(cid)["document_id"] for cid in loads(turns[0]["briefing_ids"], [])}
        used_docs = set(briefed)
        for n, a in enumerate(turns):
            shown = loads(a["retrieval"], [])
            new = [p for p in shown if not p["carried"]]
            carried = [p for p in shown if p["carried"]]
            assert all(p["title"] == titles[p["document_id"]] for p in shown)  # titles travel with passages
            assert new[0]["document_id"] in used_docs  # the first new passage is from the conversation's documents
            earlier_used = {p["id"] for b in turns[:n] for p in loads(b["retrieval"], []) if p["used"]}
            assert {p["id"] for p in carried} <= earlier_used  # evidence only
            carried_total += len(carried)
            carried_on_topic += sum(p["document_id"] in used_docs for p in carried)
            used_docs |= {p["document_id"] for p in shown if p["used"]}
    assert carried_on_topic == carried_total
    # The respondent sees each passage's title first: what it names when it says where a statement comes from.
    assert respondent_prompts and all(re.search(r'<passage n="1" title="[^"]+"', s) for s in respondent_prompts)

    # Exports show each passage under its document's title (the respondent's header, as it saw it).
    from core.export import ExportOptions, export
    from tests.test_export import ANY
    result = export(db, ExportOptions(filter=ANY, formats=["openai"], context="system", split=None),
                    tmp_path / "out", settings=indexed_wb.settings)
    rows = [json.loads(line) for name in result.manifest["files"] for line in
            (result.out_dir / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    systems = [m["content"] for r in rows for m in r["messages"] if m["role"] == "system"]
    assert systems and all(re.search(r'<passage n="1" title="[^"]+"', s) for s in systems)
    assert not any(re.search(r'title="[^"]*\.jsonl', s) for s in systems)
