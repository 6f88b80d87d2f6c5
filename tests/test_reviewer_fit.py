"""The grounding threshold learned from reviewers' labels (core.quality.reviewer_fit), on real SQLite."""

import json

from core.quality import WEAKLY_GROUNDED_BELOW
from core.quality.reviewer_fit import MIN_LABELS, calibrations, fit_thresholds, flag_threshold, reviewer_labels
from core.review.store import ReviewFilter, ReviewStore


def add(db, i, version, status, grounding, reason="", bad_turn=False):
    with db.write() as w:
        w["conversations"].insert({"id": f"c{version}-{i}", "run_id": "r", "status": status, "grounding": grounding,
                                   "discard_reason": reason, "prompt_versions": json.dumps({"respondent": version}),
                                   "created_at": f"2024-01-01T00:00:{i:02d}"}, alter=True)
        w["turns"].insert({"conversation_id": f"c{version}-{i}", "idx": 1, "role": "assistant", "content": "a",
                           "weight": 0 if bad_turn else 1, "created_at": "2024-01-01"}, alter=True)


def test_a_threshold_is_fitted_per_prompt_version_from_thirty_labels_and_used_by_review(wb):
    db = wb.db
    with db.write() as w:
        for v in (1, 2):
            w["prompt_versions"].insert({"id": v, "kind": "respondent", "version": v, "name": f"p{v}", "text": "t",
                                         "created_at": "2024-01-01"}, alter=True)
    # Version 1: reviewers discard as ungrounded answers nothing flagged but that match their passages poorly
    # (0.55-0.62), and approve the close matches (0.8+): the default cut (0.5) misses every discard.
    for i in range(20):
        add(db, i, 1, "approved", 0.8 + i / 200)
    for i in range(20, 32):
        add(db, i, 1, "discarded", 0.55 + (i - 20) / 200, reason="ungrounded: not supported by the passages")
    add(db, 32, 1, "new", 0.6, bad_turn=True)  # an answer marked bad is a label too
    add(db, 33, 1, "discarded", 0.56, reason="off topic")  # says nothing about grounding: not a label
    # Version 2: too few labels to fit.
    for i in range(5):
        add(db, i, 2, "approved", 0.9)
    labels = reviewer_labels(db)
    assert len(labels[1]) == 33 and len(labels[2]) == 5 and sum(not g for _, g in labels[1]) == 13
    store = ReviewStore(db)
    assert store.flagged_count(ReviewFilter(status="any")) == 0  # nothing below the default cut

    rows = {r["prompt_version_id"]: r for r in fit_thresholds(db)}
    one, two = rows[1], rows[2]
    assert one["labels"] == 33 and one["agreement_before"] == 0.5 and one["agreement_after"] == 1.0
    assert one["active"] and 0.62 < one["threshold"] <= 0.8
    assert two["labels"] == 5 < MIN_LABELS and two["threshold"] is None and not two["active"]
    assert flag_threshold(db, 1) == one["threshold"] and flag_threshold(db, 2) == WEAKLY_GROUNDED_BELOW
    # Review and Export now flag version 1's poor matches (12 discards, the marked-bad one, the off-topic one).
    assert store.flagged_count(ReviewFilter(status="any")) == 14
    [stored] = calibrations(db)
    assert stored["labels"] == 33 and stored["active"] == 1

    # A re-indexed corpus (different documents) sets the fit aside until it is fitted again.
    with db.write() as w:
        w["documents"].insert({"id": "d-new", "status": "complete", "content_hash": "abc"}, alter=True)
    assert flag_threshold(db, 1) == WEAKLY_GROUNDED_BELOW
    fit_thresholds(db)
    assert flag_threshold(db, 1) == one["threshold"]


def test_a_fit_that_does_not_agree_better_is_not_adopted(wb):
    for i in range(16):
        add(wb.db, i, 7, "approved", 0.9)
    for i in range(16, 32):
        add(wb.db, i, 7, "discarded", 0.3, reason="ungrounded: not supported by the passages")
    [row] = fit_thresholds(wb.db)
    assert row["agreement_before"] == 1.0 and not row["active"]  # the default already agrees fully
    assert flag_threshold(wb.db, 7) == WEAKLY_GROUNDED_BELOW
