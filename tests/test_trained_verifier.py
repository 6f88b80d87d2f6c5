"""The verifier trained on the user's corpus: its training pairs, its lifecycle in the data dir, how it combines
with the rules, and the CLI around it (core/quality/trained.py)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np

from core.quality.common import GROUNDING_METHOD
from core.quality.grounding import OfflineVerifier, TurnInput
from core.quality.trained import TrainedVerifier, TrainedVerifierStore, _NUMBER, training_pairs
from tests.conftest import ROOT

DOCS = {
    "lease": "The tenant paid a deposit of $1,200 on March 3, 2021. The landlord kept $450 for repairs to the "
             "kitchen floor. The court held that the landlord was liable for the remaining $750. Judge Okafor "
             "wrote the opinion for a unanimous panel. The appeal was affirmed in all respects.",
    "wages": "Silverline paid the final wages of $1,128 on October 26, 2022, nineteen days late. The employee "
             "claimed waiting-time penalties for each day of delay. The trial court granted the employee's motion "
             "for summary judgment. Penalties were capped at thirty days of wages by the statute.",
}


class ScorerThatFlagsFigures:
    """A test double for the trained model: certain of every claim except those about patience (0.01)."""

    def __init__(self):
        self.pairs = []

    def predict(self, pairs):
        self.pairs.extend(pairs)
        return np.array([0.01 if "patience" in claim else 0.97 for _, claim in pairs], dtype=np.float32)


def test_pairs_are_balanced_and_every_negative_changes_what_the_sentence_says():
    pairs = training_pairs(DOCS, seed=1)
    labels = Counter(p.label for p in pairs)
    assert labels[1] == labels[0] and labels[1] >= 8
    sentences = {s.strip() for text in DOCS.values() for s in re.split(r"(?<=\.) ", text)}
    for p in pairs:
        assert p.window and p.claim
        if p.label == 0 and p.kind != "other document":
            assert p.claim not in sentences  # a corrupted copy, never the sentence itself
        home = [d for d, t in DOCS.items() if p.window in t]
        assert len(home) == 1  # a window is consecutive sentences of one document
        if p.kind == "other document":
            assert p.claim not in DOCS[home[0]]
        elif p.kind == "figure":  # another figure put in: the claim's numbers are not the sentence's
            original = next(s for s in sentences if s in p.window and s.split()[:2] == p.claim.split()[:2])
            assert {m.group(0) for m in _NUMBER.finditer(p.claim)} != {m.group(0) for m in _NUMBER.finditer(original)}
    kinds = Counter(p.kind for p in pairs)
    assert kinds["sentence"] == kinds["rewrite"] and kinds["other document"] >= 1
    assert kinds["figure"] + kinds["name"] + kinds["outcome"] + kinds["negation"] >= 1
    assert set(kinds) <= {"sentence", "rewrite", "negation", "outcome", "figure", "name", "other document"}


def test_a_small_corpus_keeps_all_its_sentences_and_is_topped_up_from_another():
    extra = {"other": "The planning commission denied the permit in 2019. The applicant appealed to the board. "
                      "The board reversed the commission and granted a variance of ten feet. "
                      "The neighbours sought review in the superior court within thirty days."}
    pairs = training_pairs(DOCS, seed=2, top_up=extra, min_anchors=11)
    own = [p for p in pairs if p.kind == "sentence"]
    assert len(own) == 11  # 9 sentences of DOCS, 2 from the top-up
    assert sum(any(p.claim in t for t in DOCS.values()) for p in own) == 9


def test_the_rules_flags_stand_and_the_trained_model_flags_what_they_left_with_its_window_as_evidence(embedder):
    offline = OfflineVerifier(embedder)
    scorer = ScorerThatFlagsFigures()
    verifier = TrainedVerifier(offline, scorer, name="test")
    passages = [{"id": "p1", "text": DOCS["lease"]}]
    turn = TurnInput("The landlord was held liable for the remaining $750. The tenant paid her deposit of $1,200 "
                     "on March 3, 2021. The opinion praised the tenant for her patience throughout the long dispute.",
                     passages, ["Who won the deposit case?"])
    rules = offline.verify_turns([turn])[0]
    verdict = verifier.verify_turns([turn])[0]
    assert verdict.method == f"{GROUNDING_METHOD}+trained-test"
    for before, after in zip(rules.sentences, verdict.sentences):
        if before.verdict in ("unsupported", "contradicted"):
            assert after == before  # a rule's flag shows its evidence: the trained model never overrides it
    flagged_by_model = [s for s in verdict.sentences if s.check == "trained"]
    # No figure, name or outcome to check: the rules cannot decide that sentence, the trained model flags it.
    assert [s.check for s in rules.sentences if "patience" in s.text] == ["none"]
    assert len(flagged_by_model) == 1 and "patience" in flagged_by_model[0].text
    assert flagged_by_model[0].verdict == "unsupported" and flagged_by_model[0].passage_id == "p1"
    assert flagged_by_model[0].evidence in DOCS["lease"] and flagged_by_model[0].confidence == 0.01
    # Every claim the rules left unflagged was scored against at most 3 windows: the model can lower the rules'
    # confidence, never raise it, and gives one where the rules had none.
    for before, after in zip(rules.sentences, verdict.sentences):
        if after.check in ("similarity", "none"):
            assert after.confidence == (0.97 if before.confidence is None else min(before.confidence, 0.97))
    assert scorer.pairs and len(scorer.pairs) <= 3 * len(verdict.sentences)
    assert verdict.score is not None and (verdict.score < 0.5) == verdict.flagged


def test_trained_on_the_corpus_stored_reused_and_set_aside_when_the_corpus_changes(indexed_wb, embedder, tmp_path):
    data_dir = indexed_wb.settings.data_path
    store = TrainedVerifierStore(indexed_wb.db, data_dir)
    assert store.status()["state"] == "none" and store.load() is None
    steps = []
    meta = store.train(progress=lambda done, total, what: steps.append((done, total)), max_anchors=8, epochs=1)
    assert steps[-1][0] == steps[-1][1] == math.ceil(meta["pairs"] / 16) and meta["pairs"] >= 8 * 3
    status = store.status()
    assert status["state"] == "current" and status["trained_at"] == meta["trained_at"]
    assert (data_dir / "verifiers").is_dir() and any((data_dir / "verifiers").rglob("model.safetensors"))
    # Another process (a new store on the same data dir) reuses it from disk: no training.
    again = TrainedVerifierStore(indexed_wb.db, data_dir)
    assert again.status()["trained_at"] == meta["trained_at"]
    scorer = again.load()
    assert scorer is not None and again.load() is scorer
    probs = scorer.predict([("The court affirmed the judgment.", "The court affirmed the judgment."),
                            ("The court affirmed the judgment.", "Bananas ripen faster in paper bags.")])
    assert probs.shape == (2,) and all(0.0 <= p <= 1.0 for p in probs)
    # Re-indexing changes the corpus: the model is set aside, and training again replaces it.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "memo.txt").write_text("The board approved the merger on 4 May 2023 by a vote of seven to two. "
                                    "Two directors dissented and asked that their reasons be recorded.",
                                    encoding="utf-8")
    indexed_wb.corpus.ingest_path(extra)
    assert store.status()["state"] == "stale" and store.load() is None
    store.train(max_anchors=8, epochs=1)
    assert store.status()["state"] == "current"
    assert len([p for p in (data_dir / "verifiers").iterdir() if p.is_dir()]) == 1


def test_cli_says_in_one_line_when_no_verifier_is_trained(tmp_path):
    env = {**os.environ, "GROUNDWORK_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
                    '"retrieved_context": [{"turn": 1, "passages": [{"id": "p", "text": "a"}]}]}\n')
    out = subprocess.run([sys.executable, "-m", "core.cli", "grade", str(rows), "--out", str(tmp_path / "o.jsonl"),
                          "--trained"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "groundwork verifier train" in out.stderr
    out = subprocess.run([sys.executable, "-m", "core.cli", "verifier", "train"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "index documents first" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()



def test_the_corruptions_reverse_what_a_sentence_says():
    from core.quality.trained import _swap_outcome, _toggle_negation

    assert _toggle_negation("The tenant can't sue.") == "The tenant can sue."
    assert _toggle_negation("It won't apply.") == "It will apply."
    assert _toggle_negation("The court did not rule on costs.") == "The court did rule on costs."
    assert _toggle_negation("The lease is valid.") == "The lease is not valid."
    assert _toggle_negation("Tenants win.") is None  # nothing to negate without guessing a verb's form
    assert _swap_outcome("The motion was granted.") == "The motion was denied."
    assert _swap_outcome("Affirmed in part.") == "Reversed in part."
    assert _swap_outcome("The sky is blue.") is None
