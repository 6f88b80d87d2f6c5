"""Grounding, citation checks, near-duplicates and coverage on real SQLite and the real packaged MiniLM model.

The grounding and citation numbers come from a hand-labelled set (tests/data/grounding_labels.json):
answer sentences about passages quoted from sample_data/, each labelled supported, paraphrased,
contradicted, unsupported, abstention or connective, and identifiers labelled real or invented.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from core import quality
from core.db import Database, dumps, new_id
from core.errors import NotFoundError
from core.quality import (GroundingChecker, TurnInput, check_citations, coverage, coverage_by_chunk,
                          extract_identifiers, find_near_duplicates, grounding_details, grounding_scores,
                          keep_best_of_clusters, mark_near_duplicates, near_duplicates_of, quality_summary,
                          score_conversation, score_conversations, sentence_kind, similar_pairs, split_sentences,
                          weakly_grounded, with_citation_flags)

LABELS = json.loads((Path(__file__).parent / "data" / "grounding_labels.json").read_text(encoding="utf-8"))
SETS = {s["name"]: s for s in LABELS["sets"]}
BAD = {"contradicted", "unsupported"}
EXEMPT = {"abstention", "connective"}


def precision_recall(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


# ---- sentences ---------------------------------------------------------------------------------

def test_sentence_splitter_keeps_legal_citations_in_one_sentence():
    text = ("In Okafor v. Linden Park Apartments, Inc., No. 2D22-1184 (Colum. Ct. App. 2d Dist. Mar. 14, 2023), "
            "the court read Columbia Civ. Code § 1950.5(b). The U.S. District Court was not involved. "
            "See Smith v. Jones, Inc. The tenant won $12,500 under Rev. Stat. §§ 28-115 to 28-117. "
            "Justice Helena V. Ruiz wrote it.\n\n- **Holding:** affirmed\n- second item. It continues\n"
            "on a wrapped line.\n1. No. The end?")
    assert [s.text for s in split_sentences(text)] == [
        "In Okafor v. Linden Park Apartments, Inc., No. 2D22-1184 (Colum. Ct. App. 2d Dist. Mar. 14, 2023), "
        "the court read Columbia Civ. Code § 1950.5(b).",
        "The U.S. District Court was not involved.",
        "See Smith v. Jones, Inc.",
        "The tenant won $12,500 under Rev. Stat. §§ 28-115 to 28-117.",
        "Justice Helena V. Ruiz wrote it.",
        "Holding: affirmed",
        "second item.",
        "It continues on a wrapped line.",
        "No.",
        "The end?",
    ]
    for s in split_sentences(text):  # spans point into the original text, for highlighting
        assert text[s.start:s.end].replace("**", "").split() == s.text.split()


def test_abstentions_and_boilerplate_are_not_claims():
    assert sentence_kind("The passages do not say whether Castellan appealed the judgment.") == "abstention"
    assert sentence_kind("I could not find the penalty amount in these excerpts.") == "abstention"
    assert sentence_kind("Neither opinion addresses attorney fees.") == "abstention"
    assert sentence_kind("The court did not award attorney fees.") == "claim"  # a claim about the case
    assert sentence_kind("The opinion does not require proof of necessity.") == "claim"
    assert sentence_kind("I hope this helps.") == "neutral"
    assert sentence_kind("Would you like me to compare it with Okafor?") == "neutral"
    assert sentence_kind("Here is how the court approached it:") == "neutral"
    assert sentence_kind("The retention was willful.") == "claim"


# ---- grounding on the labelled set -------------------------------------------------------------

@pytest.fixture(scope="module")
def labelled_scores(embedder):
    """Every labelled set scored in one encode call, as score_conversation does for one conversation."""
    checker = GroundingChecker(embedder)
    inputs = [TurnInput(" ".join(s["text"] for s in st["sentences"]), st["passages"], [st["question"]])
              for st in LABELS["sets"]]
    results = checker.score_turns(inputs)
    rows = []
    for st, result in zip(LABELS["sets"], results):
        # The splitter recovers exactly the labelled sentences from the joined answer.
        assert [s.text for s in result.sentences] == [s["text"] for s in st["sentences"]], st["name"]
        rows += [(label, scored) for label, scored in zip(st["sentences"], result.sentences)]
    return rows


def test_grounding_detects_unsupported_and_contradicted_sentences(labelled_scores):
    rows = labelled_scores
    assert len(rows) >= 30 and sum(label["label"] in BAD for label, _ in rows) >= 15

    def measure(flagged_kinds):
        tp = sum(label["label"] in BAD and s.kind in flagged_kinds for label, s in rows)
        fp = sum(label["label"] not in BAD and s.kind in flagged_kinds for label, s in rows)
        fn = sum(label["label"] in BAD and s.kind not in flagged_kinds for label, s in rows)
        return precision_recall(tp, fp, fn)

    strict_p, strict_r = measure({"unsupported", "contradicted"})
    review_p, review_r = measure({"unsupported", "contradicted", "not_checked"})
    by_label = {}
    for label, s in rows:
        by_label.setdefault(label["label"], []).append(s.kind)
    print(f"\ngrounding, {len(rows)} sentences: flagged precision {strict_p:.3f} recall {strict_r:.3f}; "
          f"'flagged or not checked offline' precision {review_p:.3f} recall {review_r:.3f}")
    for name, kinds in by_label.items():
        print(f"  {name:12s} " + ", ".join(f"{k}={kinds.count(k)}" for k in sorted(set(kinds))))
    # Precision first (offline-checks-v4 and v5 measure 1.00 / 0.50): a flag is a figure, name, identifier or an
    # opposite the passages show. A low passage match is "not checked offline", never a flag, so recall is
    # what the checks can show; with the not-checked ones the reviewer still sees most bad sentences.
    assert strict_p >= 0.95 and strict_r >= 0.48
    assert review_p >= 0.8 and review_r >= 0.8
    # Paraphrases are never flagged, whatever their passage match.
    assert not any(s.kind in ("unsupported", "contradicted") for label, s in rows if label["label"] == "paraphrased")
    # Sentences that make no claim never count against grounding.
    assert all(s.kind in ("abstention", "neutral") for label, s in rows if label["label"] in EXEMPT)
    # Near-verbatim sentences are always supported.
    assert all(s.kind == "supported" for label, s in rows if label["label"] == "supported")


def test_a_changed_number_is_unsupported_and_says_why(labelled_scores):
    verdicts = {label["text"]: s for label, s in labelled_scores}
    changed = verdicts["Castellan returned $1,810 to the tenants on March 20, 2023."]
    assert changed.kind == "unsupported" and any("$1,810" in r for r in changed.reasons)
    flipped = verdicts["The court held that the retention was not willful."]
    assert flipped.kind == "contradicted" and any("willful" in r for r in flipped.reasons)
    assert flipped.evidence and "willful" in flipped.evidence  # the span it contradicts
    paraphrase = verdicts["Castellan returned the balance 48 days after the lease ended, which was 18 days "
                          "past the 30-day deadline."]  # "forty-eight days" in the passage
    assert paraphrase.kind == "supported" and paraphrase.passage_id and paraphrase.evidence


# ---- citations ---------------------------------------------------------------------------------

def test_citation_check_on_labelled_answers():
    tp = fp = fn = extracted = total = 0
    for st in LABELS["sets"]:
        for item in st["citations"]:
            answer = item["answer"]
            found = extract_identifiers(answer)
            flags = check_citations(answer, st["passages"], [st["question"]])
            matched = set()
            for label in item["identifiers"]:
                start = answer.index(label["text"])
                end = start + len(label["text"])
                total += 1
                extracted += any(i.type == label["type"] and i.start < end and start < i.end for i in found)
                hits = {k for k, f in enumerate(flags) if f.type == label["type"] and f.start < end and start < f.end}
                matched |= hits
                if label["invented"]:
                    tp += bool(hits)
                    fn += not hits
                else:
                    fp += bool(hits)
            fp += len(set(range(len(flags))) - matched)  # a flag on something that is no citation at all
    precision, recall = precision_recall(tp, fp, fn)
    print(f"\ncitations, {total} identifiers ({tp + fn} invented): precision {precision:.3f} recall {recall:.3f}, "
          f"extracted {extracted}/{total}")
    assert tp + fn >= 20
    assert precision >= 0.95 and recall >= 0.95 and extracted / total >= 0.95


def test_citations_are_normalised_before_matching():
    passages = [{"id": "p1", "title": "Okafor v. Linden Park Apartments, Inc.",
                 "text": "Under Columbia Civ. Code § 1950.5(g) the landlord had 21 days. The deposit was "
                         "$1,100,000 and the case was decided on March 14, 2023, No. 2D22-1184."}]
    answer = ("Okafor v. Linden Park Apartments (No. 2d22-1184, decided Mar. 14, 2023) applied section "
              "1950.5(g) and Section 1950.5 to a $1.1 million deposit.")
    assert check_citations(answer, passages) == []
    bad = check_citations("It applied § 1950.5(g)(2), § 1950.6 and a $1.2 million cap on 2023-03-15 in "
                          "Okafor v. Linden Park Towers.", passages)
    assert [(f.type, f.normalized) for f in bad] == [
        ("statute", "§ 1950.5(g)(2)"), ("statute", "§ 1950.6"), ("amount", "$1200000"), ("date", "2023-03-15"),
        ("case", "okafor v. linden park towers")]
    assert all(f.sentence.startswith("It applied") for f in bad)


def test_identifiers_from_the_user_or_inside_abstentions_are_not_flagged():
    passages = [SETS["dunmore-deposit"]["passages"][1]]
    answer = ("With your $3,000 deposit the same rule applies. "
              "The passages do not mention State v. Brennan, No. S-20-0441.")
    assert check_citations(answer, passages, ["My landlord kept my $3,000 deposit."]) == []
    assert [f.text for f in check_citations(answer, passages)] == ["$3,000"]


# ---- storage -----------------------------------------------------------------------------------

def add_conversation(db: Database, question: str, answers: list[str], passages: list[list[dict]], *,
                     run_id: str = "run-1", follow_ups: tuple[str, ...] = (), rating: int | None = None,
                     status: str = "new", created_at: str = "2024-01-01T00:00:00.000+00:00",
                     briefing_ids: list[str] | None = None) -> str:
    """A conversation inserted the way store_conversation lays it out: alternating turns, retrieval per answer."""
    cid = new_id()
    with db.write() as w:
        w["conversations"].insert({"id": cid, "run_id": run_id, "status": status, "question": question,
                                   "num_turns": len(answers), "rating": rating, "created_at": created_at,
                                   "briefing_ids": dumps(briefing_ids or []), "search_text": question})
        messages = [("user", question, None)]
        for i, answer in enumerate(answers):
            messages.append(("assistant", answer, passages[i]))
            if i < len(follow_ups):
                messages.append(("user", follow_ups[i], None))
        for idx, (role, content, retrieval) in enumerate(messages):
            w["turns"].insert({"conversation_id": cid, "idx": idx, "role": role, "content": content,
                               "retrieval": dumps(retrieval) if retrieval is not None else None,
                               "created_at": created_at})
    return cid


def test_grounding_is_stored_per_turn_and_weakly_grounded_conversations_are_listed(wb, embedder):
    dunmore = SETS["dunmore-deposit"]["passages"]
    whitaker = SETS["whitaker-consent"]["passages"]
    mixed = add_conversation(
        wb.db, "What could Castellan deduct?",
        ["The Dunmores paid a security deposit of **$4,200**. The passages do not say whether Castellan appealed.",
         "The court relied on Pemberton v. Harbin Street Trust, No. 22-CV-1187. Castellan returned $1,810 to the "
         "tenants."],
        [dunmore[1:3], dunmore[1:3]], follow_ups=("Did the court cite other cases?",))
    good = add_conversation(wb.db, "What did the trooper find?",
                            ["Inside the toolbox were 212 grams of methamphetamine."], [whitaker[1:2]],
                            created_at="2024-01-02T00:00:00.000+00:00")
    other_run = add_conversation(wb.db, "What did the trooper find?", ["He found 300 grams of cocaine."],
                                 [whitaker[1:2]], run_id="run-2")
    calls = []
    assert score_conversations(wb.db, embedder, run_id="run-1", progress=lambda d, t: calls.append((d, t))) == 2
    assert calls == [(0, 2), (1, 2), (2, 2)]  # the total first
    assert wb.db.scalar("SELECT grounded_at FROM conversations WHERE id=?", [other_run]) is None

    row = wb.db.one("SELECT grounding, citation_flags, grounded_at FROM conversations WHERE id=?", [mixed])
    # The worst answer decides (a changed figure in one answer flags the conversation); a flagged answer scores
    # below 0.5, one with nothing flagged 0.5 plus half its weakest passage match.
    assert row["grounding"] == 0.0 and row["citation_flags"] == 3 and row["grounded_at"]
    details = grounding_details(wb.db, mixed)
    assert details[0]["score"] > 0.5 and details[1]["score"] == 0.0
    assert [d["citation_flags"] for d in details] == [0, 3]
    assert [s["check"] for s in details[1]["sentences"]] == ["citation", "figure"]
    contents = [r["content"] for r in wb.db.rows(
        "SELECT content FROM turns WHERE conversation_id=? AND role='assistant' ORDER BY idx", [mixed])]
    for detail, content in zip(details, contents):
        for s in detail["sentences"]:  # spans highlight the stored text (markdown stripped from the sentence)
            assert content[s["start"]:s["end"]].replace("**", "") == s["text"]
    assert [s["kind"] for s in details[0]["sentences"]] == ["supported", "abstention"]
    assert [s["kind"] for s in details[1]["sentences"]] == ["unsupported", "unsupported"]
    assert {c["type"] for c in details[1]["citations"]} == {"case", "docket", "amount"}
    assert details[1]["method"] == quality.GROUNDING_METHOD

    assert [r["id"] for r in weakly_grounded(wb.db, 0.7)] == [mixed]
    assert [r["id"] for r in weakly_grounded(wb.db, 0.7, run_id="run-2")] == []
    assert [r["id"] for r in with_citation_flags(wb.db)] == [mixed]
    good_score = wb.db.scalar("SELECT grounding FROM conversations WHERE id=?", [good])
    assert good_score > 0.9
    summary = quality_summary(wb.db, run_id="run-1")
    assert summary["mean_grounding"] == pytest.approx(good_score / 2, abs=1e-4)
    assert {k: v for k, v in summary.items() if k != "mean_grounding"} == {
        "conversations": 2, "scored": 2, "weakly_grounded": 1, "with_citation_flags": 1,
        "citation_flags": 3, "near_duplicates": 0, "duplicate_clusters": 0, "weakly_grounded_below": 0.5}
    assert [(r["conversation_id"], r["grounding"]) for r in grounding_scores(wb.db)] == [(mixed, 0.0), (good, good_score)]

    # Already scored conversations are skipped unless asked; an edited turn is re-scored on request.
    assert score_conversations(wb.db, embedder, run_id="run-1") == 0
    with wb.db.write() as w:
        w.execute("UPDATE turns SET content=? WHERE conversation_id=? AND idx=3",
                  ["Castellan returned $1,180 with a list of deductions.", mixed])
    result = score_conversation(wb.db, embedder, mixed)
    assert result.score >= 0.5 and result.citation_flags == 0
    assert wb.db.scalar("SELECT citation_flags FROM conversations WHERE id=?", [mixed]) == 0
    assert score_conversations(wb.db, embedder, rescore=True) == 3
    with pytest.raises(NotFoundError):
        score_conversation(wb.db, embedder, "nope")


def test_a_turn_without_claims_has_no_score_and_does_not_count(wb, embedder):
    cid = add_conversation(wb.db, "Did Castellan appeal?", ["The passages do not say whether Castellan appealed. "
                                                            "I hope this helps."],
                           [SETS["dunmore-deposit"]["passages"][:1]])
    result = score_conversation(wb.db, embedder, cid)
    assert result.score is None and result.turns[0].score is None
    assert wb.db.one("SELECT grounding, grounded_at FROM conversations WHERE id=?", [cid])["grounded_at"]
    assert weakly_grounded(wb.db) == []


def test_migration_applies_once_and_adds_the_quality_columns(tmp_path):
    first = Database(tmp_path / "g.db")
    schema = first.schema
    first.close()
    second = Database(tmp_path / "g.db")
    assert second.schema == schema
    columns = {r["name"] for r in second.rows("PRAGMA table_info(conversations)")}
    assert {"grounding", "grounded_at", "citation_flags", "dup_of", "dup_similarity"} <= columns
    assert {"grounding", "grounding_score", "citation_flags"} <= {r["name"] for r in second.rows(
        "PRAGMA table_info(turns)")}
    assert "quality_vectors" in second.table_names()
    second.close()


# ---- near-duplicates ---------------------------------------------------------------------------

DEPOSIT_ANSWER = ("Castellan could keep the $420 cleaning charge, the $185 for broken blinds and $90 of the wall "
                  "repair. The re-keying charge and the $2,000 turnover fee were not permitted.")


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to encode."""

    def __init__(self, embedder):
        self.inner = embedder
        self.model_name = embedder.model_name
        self.encoded = 0

    @property
    def dim(self):
        return self.inner.dim

    def encode(self, texts, progress=None):
        self.encoded += len(texts)
        return self.inner.encode(texts, progress)


def test_near_duplicates_are_clustered_and_export_keeps_the_best(wb, embedder):
    db = wb.db
    p = [[]]
    first = add_conversation(db, "Which deductions could Castellan keep from the Dunmores' security deposit?",
                             [DEPOSIT_ANSWER], p, created_at="2024-01-01T00:00:01+00:00")
    paraphrase = add_conversation(db, "What deductions was Castellan allowed to take out of the Dunmores' "
                                      "security deposit?",
                                  ["The court allowed cleaning ($420), blinds ($185) and $90 for one wall hole; it "
                                   "rejected re-keying and the $2,000 turnover fee."], p, rating=5,
                                  created_at="2024-01-01T00:00:02+00:00")
    copy = add_conversation(db, "Which deductions could Castellan keep from the Dunmores' security deposit?",
                            [DEPOSIT_ANSWER], p, rating=3, created_at="2024-01-01T00:00:03+00:00")
    same_case = add_conversation(db, "What did the Dunmores recover in total?",
                                 ["They recovered $4,650: the $2,325 wrongfully withheld plus an equal amount, and "
                                  "$63 in interest."], p, created_at="2024-01-01T00:00:04+00:00")
    whitaker = add_conversation(db, "Could the trooper open the locked toolbox in Whitaker's trunk?",
                                ["No. A request for a quick look does not authorize breaking open a locked "
                                 "container."], p, created_at="2024-01-01T00:00:05+00:00")
    tessaract = add_conversation(db, "Can Halvorsen recover lost profits from Tessaract?",
                                 ["Only if the jury finds willful misconduct under Section 11.4."], p,
                                 run_id="run-2", created_at="2024-01-01T00:00:06+00:00")

    counting = CountingEmbedder(embedder)
    clusters = mark_near_duplicates(db, counting)
    assert len(clusters) == 1
    cluster = clusters[0]
    assert cluster.representative == paraphrase  # best rated
    assert set(cluster.members) == {first, paraphrase, copy}
    assert cluster.similarity[copy] >= 0.88 and cluster.similarity[paraphrase] == 1.0
    rows = {r["id"]: r for r in db.rows("SELECT id, dup_of, dup_similarity FROM conversations")}
    assert rows[first]["dup_of"] == paraphrase and rows[copy]["dup_of"] == paraphrase
    assert rows[paraphrase]["dup_of"] is None and rows[paraphrase]["dup_similarity"] is not None
    for unrelated in (same_case, whitaker, tessaract):
        assert rows[unrelated]["dup_of"] is None and rows[unrelated]["dup_similarity"] is None
    assert {r["id"] for r in near_duplicates_of(db, first)} == {paraphrase, copy}
    assert near_duplicates_of(db, whitaker) == []

    everything = [first, paraphrase, copy, same_case, whitaker, tessaract]
    assert keep_best_of_clusters(db, everything) == [paraphrase, same_case, whitaker, tessaract]
    # Only the ids being exported compete: without the representative, the better rated twin stays.
    assert keep_best_of_clusters(db, [first, copy, whitaker]) == [copy, whitaker]
    assert keep_best_of_clusters(db, [first, "not-a-conversation"]) == [first, "not-a-conversation"]

    # Vectors are cached: a second pass embeds nothing, and a run-scoped pass sees only that run.
    assert counting.encoded == 12
    assert len(mark_near_duplicates(db, counting)) == 1 and counting.encoded == 12
    assert find_near_duplicates(db, counting, run_id="run-2") == []


def test_similar_pairs_blockwise_equals_brute_force():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 32)).astype(np.float32)
    vectors[150] = vectors[3] + 0.05 * rng.normal(size=32)  # planted near-duplicates
    vectors[299] = vectors[150]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    other = vectors[::-1].copy()
    full, full_other = vectors @ vectors.T, other @ other.T
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if full[i, j] >= 0.9 or full_other[i, j] >= 0.95}
    got = similar_pairs(vectors, 0.9, other=other, other_threshold=0.95, block_rows=7)
    assert {(i, j) for i, j, _ in got} == expected and (3, 150) in expected and (150, 299) in expected
    assert all(i < j for i, j, _ in got)


# ---- coverage ----------------------------------------------------------------------------------

def test_coverage_counts_briefings_and_retrievals_per_document(wb):
    db = wb.db
    with db.write() as w:
        for doc, n in (("doc-a", 3), ("doc-b", 1), ("doc-c", 2)):
            w["documents"].insert({"id": doc, "collection": "groundwork", "source_path": f"{doc}.md",
                                   "title": doc.upper(), "status": "complete", "n_chunks": n})
            for pos in range(n):
                w["chunks"].insert({"id": f"{doc}-{pos}", "document_id": doc, "collection": "groundwork",
                                    "position": pos, "text": f"text of {doc} {pos}"})
        w.execute("UPDATE chunks SET briefing_uses=2, retrieved_uses=3 WHERE id='doc-a-0'")
        w.execute("UPDATE chunks SET retrieved_uses=1 WHERE id IN ('doc-a-1', 'doc-b-0')")

    def passage(chunk_id):
        return {"id": chunk_id, "score": 0.5, "text": "…", "document_id": chunk_id.rsplit("-", 1)[0]}

    add_conversation(db, "q1", ["a"], [[passage("doc-a-0"), passage("doc-a-1")]], briefing_ids=["doc-a-0"])
    add_conversation(db, "q2", ["a"], [[passage("doc-a-0")]], briefing_ids=["doc-a-0"])
    add_conversation(db, "q3", ["a"], [[passage("doc-a-0"), passage("doc-b-0")]], run_id="run-2")
    with db.write() as w:  # a damaged retrieval record is skipped, not fatal
        w.execute("UPDATE turns SET retrieval='{not json' WHERE id=(SELECT MAX(id) FROM turns)")
    add_conversation(db, "q4", ["a"], [[passage("doc-b-0")]], run_id="run-2")

    report = coverage(db, collection="groundwork")
    by_doc = {r["document_id"]: r for r in report.documents}
    assert by_doc["doc-a"]["briefing_uses"] == 2 and by_doc["doc-a"]["retrieved_uses"] == 4
    assert by_doc["doc-a"]["chunks_briefed"] == 1 and by_doc["doc-a"]["chunks_retrieved"] == 2
    assert by_doc["doc-b"]["briefed"] is False and by_doc["doc-b"]["retrieved"] is True
    assert [r["document_id"] for r in report.uncovered] == ["doc-c"]
    assert report.summary == {
        "run_id": None, "collection": "groundwork", "documents": 3, "documents_briefed": 1,
        "documents_retrieved": 2, "documents_uncovered": 1, "chunks": 6, "chunks_briefed": 1,
        "chunks_retrieved": 3, "briefing_uses": 2, "retrievals": 5, "share_briefed": 0.3333,
        "share_retrieved": 0.6667, "share_chunks_briefed": 0.1667, "share_chunks_retrieved": 0.5}
    assert report.documents[0]["document_id"] == "doc-a"  # most used first: ready for a bar chart

    run1 = coverage(db, run_id="run-1")
    by_doc = {r["document_id"]: r for r in run1.documents}
    assert by_doc["doc-a"]["briefing_uses"] == 2 and by_doc["doc-a"]["retrieved_uses"] == 3
    assert by_doc["doc-b"]["retrieved"] is False
    assert [r["document_id"] for r in run1.uncovered] == ["doc-b", "doc-c"]
    assert run1.summary["share_retrieved"] == 0.3333

    chunks = coverage_by_chunk(db, "doc-a")
    assert [(c["position"], c["briefing_uses"], c["retrieved_uses"]) for c in chunks] == [(0, 2, 3), (1, 0, 1),
                                                                                          (2, 0, 0)]
    assert [c["retrieved_uses"] for c in coverage_by_chunk(db, "doc-a", run_id="run-1")] == [2, 1, 0]
    with pytest.raises(NotFoundError):
        coverage_by_chunk(db, "doc-zzz")


def test_core_never_imports_streamlit_except_the_cached_getters():
    core = Path(quality.__file__).resolve().parent.parent
    offenders = [str(p.relative_to(core)) for p in core.rglob("*.py")
                 if p.name != "ui_cache.py" and "import streamlit" in p.read_text(encoding="utf-8")]
    assert offenders == []
    assert "import streamlit" in (core / "ui_cache.py").read_text(encoding="utf-8")  # the check can see it


def test_quality_is_split_by_concept_without_import_circles():
    """Each concept has a module of its own name, and no module imports one that imports it back."""
    import ast

    package = Path(quality.__file__).resolve().parent
    for concept in ("grounding", "citations", "duplicates", "coverage", "verify", "calibration", "grade"):
        assert (package / f"{concept}.py").is_file(), concept
    graph = {}
    for p in package.glob("*.py"):
        if p.name == "__init__.py":
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        # Module-level imports only: an import inside a function runs late and cannot close a circle at load.
        graph[p.stem] = {n.module.split(".")[2] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                         and n.module.startswith("core.quality.")}
        assert len(p.read_text(encoding="utf-8").splitlines()) < 700, f"{p.name} is growing back into a monolith"

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m)] == []


def test_review_filter_and_export_use_the_quality_flags(indexed_wb, embedder, tmp_path):
    """Flags from the quality checks reach the review queue filter and the export's near-duplicate option."""
    from core.generation.engine import Question, store_conversation
    from core.export import ExportOptions, export
    from core.quality import mark_near_duplicates
    from core.review.store import ReviewFilter, ReviewStore

    db = indexed_wb.db
    passage = {"id": "p1", "score": 0.9, "text": "The court awarded the tenant $2,400.", "document_id": "d1"}
    ids = []
    for i, (question, rating) in enumerate([("How much did the court award the tenant?", 5),
                                            ("How much did the court award the tenant?", 2),
                                            ("Was the non-compete clause enforced?", 4)]):
        turns = [{"role": "user", "content": question, "retrieval": None, "call": None},
                 {"role": "assistant", "content": f"The court awarded the tenant $2,400. ({i})",
                  "retrieval": [passage], "call": None}]
        with db.write() as w:
            cid = store_conversation(w, run_id="r", work_item_id=None, provider="p", model="m", prompt_versions={},
                                     question=Question(question, {}, ["p1"], "b"),
                                     result={"turns": turns, "calls": []}, turns=1)
            w.execute("UPDATE conversations SET status='approved', rating=? WHERE id=?", [rating, cid])
        ids.append(cid)
    mark_near_duplicates(db, embedder)
    flagged = ReviewStore(db).page(ReviewFilter(status="any", quality="near-duplicate"))
    assert [r["id"] for r in flagged] == [ids[1]]  # the lower-rated twin is the duplicate
    result = export(db, ExportOptions(formats=["openai"], split=None, drop_near_duplicates=True,
                                        filter=ReviewFilter(status="approved")), tmp_path / "out")
    rows = (tmp_path / "out" / "openai.jsonl").read_text().splitlines()
    assert len(rows) == 2 and result.manifest["selection"]["near_duplicates_dropped"] == 1


def test_bench_numbers_match_the_readme(embedder):
    """The numbers the README reports for both label sets are what the frozen method measures today."""
    from core.quality.benchmark import HELD_OUT_2, HELD_OUT_3, evaluate, load_held_out, load_in_sample
    from core.quality.grounding import OfflineVerifier

    verifier = OfflineVerifier(embedder)
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    inside = evaluate("in-sample", load_in_sample(), verifier)
    held = evaluate("held-out", load_held_out(), verifier)
    held_2 = evaluate("held-out 2", load_held_out(HELD_OUT_2), verifier)
    held_3 = evaluate("held-out 3", load_held_out(HELD_OUT_3), verifier)
    assert verifier.method == "offline-checks-v5" and f"method `{verifier.method}`" in readme
    for held_out in (held, held_2, held_3):  # the issue-23 targets: precision first on every held-out set
        assert held_out.precision >= 0.85 and held_out.rate("supported") <= 0.10, held_out
    for report, units in ((inside, "75 sentences"), (held, "67 answers"), (held_2, "70 answers"),
                          (held_3, "87 answers")):
        # Rows of earlier methods name their method; the current method's rows do not.
        row = next(line for line in readme.splitlines() if units in line and "sentence-windows-v" not in line)
        row = row.replace("**", "")
        assert f"| {report.auroc:.3f} | {report.precision:.3f} | {report.recall:.3f} |" in row, (row, report)
        if report is not inside:
            reversed_, supported = report.flagged_by_label["reversed"], report.flagged_by_label["supported"]
            assert f"| {reversed_[0]}/{reversed_[1]} ({reversed_[0] / reversed_[1]:.0%}) | " \
                   f"{supported[0]}/{supported[1]} ({supported[0] / supported[1]:.0%}) |" in row, (row, report)


def test_figures_with_units_are_compared_within_their_dimension():
    from core.quality.quantities import quantities, unsupported_quantities

    passages = ("Economy Standard adds one cabin bag of up to 8 kg; checked bags are 23 kg. A personal item is up to "
                "40 x 30 x 15 cm. Keep children home until 48 hours after the last episode. Refunds within 14 days.")
    assert [(q.text, q.dimension) for q in quantities("two full days, a few hours a day, €40, 60 percent")] == \
        [("two full days", "time"), ("60 percent", "share"), ("€40", "money:EUR")]
    wrong = unsupported_quantities("The cabin bag may weigh up to 10 kg.", passages)  # 40 − 30 is not a weight
    assert [(q.text, [k.text for k in said]) for q, said in wrong] == [("10 kg", ["8 kg", "23 kg"])]
    assert unsupported_quantities("Keep them at home for two full days.", passages) == []  # = 48 hours
    assert unsupported_quantities("Wait a fortnight.", passages) == []  # = 14 days
    assert [q.text for q, _ in unsupported_quantities("It takes four weeks.", passages)] == ["four weeks"]
    # A figure the sentence works out from one of its own: 21 days − 14 days.
    assert unsupported_quantities("Three weeks is 21 days, so you are 7 days past the window.", passages) == []
    assert unsupported_quantities("It costs 5 EUR.", passages) == []  # no money in the passages: not judged here
