"""Precision-first offline grounding (issue 23): what flags, what stays neutral, and checks run as a run saves."""

import time

import pytest

from core.db import loads
from core.generation.engine import GenerationRun, RunConfig
from fakes.gemini import FakeGemini
from core.providers.gemini import GeminiProvider
from core.quality.background import BackgroundChecks
from core.quality.grounding import GroundingChecker, TurnInput, VectorStore, WindowCache

KEY = "AIzaSy-grounding-test-key-00000000000000"
PASSAGE = {"id": "hr-exp", "text": "Taxis home are reimbursed when you work past 9 pm, up to 40 EUR per ride. Submit "
                                   "the receipt in Expensify within 60 days. Alcohol is never reimbursable, "
                                   "including at client dinners."}


def verdicts(embedder, answer, passages=(PASSAGE,), **kw):
    [g] = GroundingChecker(embedder, cache=WindowCache(), **kw).score_turns([TurnInput(answer, list(passages))])
    return g


def test_only_checks_that_show_their_evidence_flag(embedder):
    g = verdicts(embedder, "If you stay past 9 pm, the company pays for a taxi home, capped at 40 EUR a ride. "
                           "Late taxis are covered up to 60 EUR per ride. "
                           "Our office in Lisbon approves every claim. "
                           "Most employees find the policy fair and easy to follow. "
                           "Alcohol is reimbursable at client dinners.")
    by_text = {s.text.split()[0]: s for s in g.sentences}
    assert by_text["If"].kind == "supported" and by_text["If"].check == "similarity"
    # A changed figure: the figure check speaks, and says what the passages have.
    assert (by_text["Late"].kind, by_text["Late"].check) == ("unsupported", "figure")
    assert "60 EUR" in by_text["Late"].reasons[0] and "40 EUR" in by_text["Late"].reasons[0]
    assert (by_text["Our"].kind, by_text["Our"].check) == ("unsupported", "name")
    # Nothing to show either way: neutral, "not checked offline", never a flag.
    assert (by_text["Most"].kind, by_text["Most"].check) == ("not_checked", "none")
    v = g.to_verdict()
    assert [s.verdict for s in v.sentences if s.check == "none"] == ["neutral"]
    # A reversed outcome: contradicted, with the passage sentence it reverses as the evidence.
    assert (by_text["Alcohol"].kind, by_text["Alcohol"].check) == ("contradicted", "polarity")
    assert "never reimbursable" in by_text["Alcohol"].evidence
    # Three of five flagged: below the flag band; the checks that spoke are counted for the badge.
    assert g.score == pytest.approx(0.5 * 2 / 5) and g.checks()["figure"] == 1 and g.checks()["polarity"] == 1


def test_an_answer_with_nothing_flagged_scores_in_the_upper_band(embedder):
    g = verdicts(embedder, "Upload the receipt to Expensify within sixty days. Drinks with alcohol are not covered, "
                           "even at a client dinner.")
    assert not any(s.kind in ("unsupported", "contradicted") for s in g.sentences)
    assert 0.5 <= g.score <= 1.0


def test_sentence_vectors_are_kept_in_the_data_dir_and_reused(embedder, tmp_path):
    calls = []

    class Counting:
        model_name = embedder.model_name

        def encode(self, texts):
            calls.append(len(texts))
            return embedder.encode(texts)

    first = GroundingChecker(Counting(), cache=WindowCache(store=VectorStore(tmp_path, embedder.model_name)))
    before = first.score_answer("Late taxis are covered up to 40 EUR per ride.", [PASSAGE])
    assert calls and (tmp_path / VectorStore.FILE).is_file()
    # A new process (a fresh memory cache) over the same data dir encodes nothing it has seen.
    again = GroundingChecker(Counting(), cache=WindowCache(store=VectorStore(tmp_path, embedder.model_name)))
    after = again.score_answer("Late taxis are covered up to 40 EUR per ride.", [PASSAGE])
    assert len(calls) == 1 and after.score == pytest.approx(before.score, abs=2e-3)


def test_each_conversation_is_checked_as_it_is_saved(indexed_wb):
    with FakeGemini(latency=0.3) as fake:
        settings = indexed_wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url,
                                               gemini_max_retries=2, request_timeout=5.0)
        run = GenerationRun(settings, indexed_wb.db, indexed_wb.corpus,
                            lambda gate: GeminiProvider(settings, gate=gate),
                            config=RunConfig(num_dialogs=3, max_turns=2, max_concurrency=1, seed=3))
        checks = BackgroundChecks(indexed_wb.db, indexed_wb.embedder, settings.data_path)
        run.on_saved.append(checks.submit)
        run.run()
        ended = time.time()
        checked_during_run = checks.checked
        assert checks.finish() == 3 and not checks.errors
    rows = indexed_wb.db.rows("SELECT id, grounded_at, grounding FROM conversations WHERE run_id=?", [run.run_id])
    assert len(rows) == 3 and all(r["grounded_at"] for r in rows)
    # One worker, one conversation at a time, while the run goes on: the checks started before the run ended
    # (conversations are a few LLM calls apart; a check takes a fraction of that).
    assert checked_during_run >= 1, checked_during_run
    turns = indexed_wb.db.rows("SELECT t.grounding FROM turns t JOIN conversations c ON c.id = t.conversation_id "
                               "WHERE c.run_id=? AND t.role='assistant'", [run.run_id])
    assert turns and all(loads(t["grounding"])["method"] == "offline-checks-v5" for t in turns)
    assert ended > 0 and (settings.data_path / VectorStore.FILE).is_file()


# ---- offline-checks-v5: what the shipped example set showed v4 getting wrong, each as a rule -------------------

OPINION = {"id": "op", "text": "Is the patient non-solicitation clause enforceable where no trade secret was misused? "
                               "A buyer's loss from a seller's failure to deliver a fungible commodity is easy to "
                               "measure. The judgment ordering Linden Park to return the $2,400 deposit is affirmed. "
                               "The order denying a statutory penalty is reversed. A clause that stacks a fixed "
                               "charge on top of full actual damages is not an estimate of loss; it is a deterrent. "
                               "Section 15-1805(b) directs the court, in choosing between dismissal with and without "
                               "prejudice, to consider the seriousness of the offense."}


def _flags(g):
    return [(s.text, s.kind, s.reasons) for s in g.sentences if s.kind in ("unsupported", "contradicted")]


def test_statements_that_agree_with_a_passage_are_not_read_as_flips(embedder):
    g = verdicts(embedder, "The court held the non-solicitation clause unenforceable as well. "
                           "A buyer's loss when a fungible commodity isn't delivered is easy to measure. "
                           "The Court of Appeals affirmed the judgment ordering Linden Park to return the $2,400 "
                           "deposit. A clause that stacks a fixed charge on top of full actual damages is a "
                           "deterrent. The court upheld dismissal with prejudice.", passages=(OPINION,))
    assert _flags(g) == []  # a question states nothing; "failure to" denies; both outcomes stated; a restatement


def test_the_v5_rules_still_catch_real_flips(embedder):
    g = verdicts(embedder, "A clause that stacks a fixed charge on top of full actual damages is an estimate of loss.",
                 passages=(OPINION,))
    assert [s.kind for s in g.sentences] == ["contradicted"]  # it says what the passage denies
    affirmed_only = {"id": "op2", "text": OPINION["text"].replace("The order denying a statutory penalty is reversed. ",
                                                                  "")}
    g = verdicts(embedder, "The judgment ordering Linden Park to return the $2,400 deposit was reversed.",
                 passages=(affirmed_only,))
    assert [s.kind for s in g.sentences] == ["contradicted"]  # the passages say "affirmed" and never "reversed"
    # Where the passages state both outcomes (affirmed in part, reversed in part), the offline check cannot tell
    # which one a sentence is about: it does not flag, and the LLM verifier is the path for that verdict.
    g = verdicts(embedder, "The judgment ordering Linden Park to return the $2,400 deposit was reversed.",
                 passages=(OPINION,))
    assert _flags(g) == []


def test_names_and_figures_of_earlier_turns_passages_are_established(embedder):
    earlier = [{"id": "e1", "text": "Both parties are located in Columbia, whose statute voids the restraint."}]
    now = [{"id": "n1", "text": "In New Avalon, section 28-115 lets a court modify an overbroad covenant rather than "
                                "void it."}]
    answer = "A court in New Avalon may modify an overbroad covenant, but a court in Columbia may not."
    [without, with_earlier] = GroundingChecker(embedder, cache=WindowCache()).score_turns(
        [TurnInput(answer, now), TurnInput(answer, now, earlier=earlier)])
    assert any("Columbia" in r for s in without.sentences for r in s.reasons)
    assert not any("Columbia" in r for s in with_earlier.sentences for r in s.reasons)


def test_an_amount_the_answer_computes_is_no_unverified_identifier(embedder):
    passage = {"id": "w", "text": "Novak earned $17.60 an hour and worked 8 hours a day at Silverline."}
    g = verdicts(embedder, "At his rate of $17.60 per hour, that works out to $140.80 per day.", passages=(passage,))
    assert g.citations == [] and _flags(g) == []
    g = verdicts(embedder, "At his rate of $17.60 per hour, that works out to $150.00 per day.", passages=(passage,))
    assert [c.text for c in g.citations] == ["$150.00"]


def test_none_of_the_shipped_example_sets_approved_conversations_is_flagged(indexed_wb, embedder):
    from core import quality
    from core.examples import import_examples

    import_examples(indexed_wb)
    quality.score_conversations(indexed_wb.db, embedder)
    rows = indexed_wb.db.rows("SELECT id, grounding, citation_flags FROM conversations WHERE status='approved'")
    assert len(rows) == 9
    flagged = [r["id"] for r in rows if quality.is_flagged(r["grounding"], r["citation_flags"])]
    assert flagged == []
