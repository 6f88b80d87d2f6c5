"""Team review on one data dir: per-reviewer verdicts, a split queue, k reviews needed, agreement, export.

Real SQLite and real generated conversations (fake Gemini through the real client); the agreement numbers are
checked against published and hand-computed values.
"""

import json

import pytest

from core.review import team
from core.cli import main
from core.errors import ValidationError
from core.review.store import ReviewFilter, ReviewStore
from tests.test_review import generate


@pytest.fixture
def fake():
    from fakes.gemini import FakeGemini

    with FakeGemini(latency=0.0) as server:
        yield server


@pytest.fixture
def team_wb(indexed_wb, fake):
    return indexed_wb, generate(indexed_wb, fake, n=6, max_turns=1, seed=3)


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, missing values.
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
    c = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]
    units = list(zip(a, b, c, d))
    assert team.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=0.001)
    assert team.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=0.001)
    assert team.krippendorff_alpha([(1, 1), (2, 2), (1, 1)]) == pytest.approx(1.0)
    assert team.krippendorff_alpha([(1, 1), (1, 1)]) is None  # no variation: undefined, not "perfect"
    assert team.krippendorff_alpha([(1,), (2,)]) is None  # nothing paired


def test_cohen_kappa_hand_computed():
    # 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o 0.7, p_e 0.5, kappa 0.4.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert team.cohen_kappa(pairs) == pytest.approx(0.4)
    assert team.cohen_kappa([]) is None


def test_each_reviewer_has_their_own_verdict_and_k_reviews_decide_the_status(team_wb):
    wb, ids = team_wb
    store = ReviewStore(wb.db)
    c1, c2, c3 = ids[:3]
    store.set_reviews_needed(c1, 2, "lead")
    store.rate(c1, 4, "ana")
    store.approve(c1, "ana")
    assert store.get(c1)["status"] == "new"  # one of two decisions: not yet approved
    store.rate(c1, 2, "ben")
    store.edit_message(c1, 1, "An answer ben rewrote from the passages.", "ben")
    store.discard(c1, "off topic", "ben")
    assert store.get(c1)["status"] == "new"  # two decisions that disagree: still open
    verdicts = {v["reviewer"]: v for v in store.verdicts(c1)}
    assert (verdicts["ana"]["rating"], verdicts["ana"]["decision"], verdicts["ana"]["edits"]) == (4, "approved", 0)
    assert (verdicts["ben"]["rating"], verdicts["ben"]["decision"], verdicts["ben"]["edits"]) == (2, "discarded", 1)
    assert verdicts["ben"]["reason"] == "off topic"
    store.approve(c1, "ben")  # ben changes his mind: two agreeing decisions approve it
    assert store.get(c1)["status"] == "approved"
    store.restore(c1, "ana")  # ana withdraws hers: one decision left, below k
    assert store.get(c1)["status"] == "new"
    # One review needed (the default): the last decision stands, as before team review.
    store.approve(c2, "ana")
    store.discard(c2, "duplicate", "ben")
    assert store.get(c2)["status"] == "discarded"
    with pytest.raises(ValidationError, match="Reviews needed is a whole number from 1 to 10"):
        store.set_reviews_needed(c3, 0, "lead")


def test_a_queue_is_split_between_reviewers_and_each_sees_their_share(team_wb):
    wb, ids = team_wb
    store = ReviewStore(wb.db)
    shares = store.split_queue(ReviewFilter(status="new"), ["ana", "ben", "cy"], "lead")
    assert shares == {"ana": 2, "ben": 2, "cy": 2}
    mine = [r["id"] for r in store.page(ReviewFilter(status="new", assigned_to="ana"), limit=50)]
    assert mine == [ids[0], ids[3]]  # round robin in queue order
    shares = store.split_queue(ReviewFilter(status="new"), ["ana", "ben"], "lead", reviews_needed=2)
    assert shares == {"ana": 6, "ben": 6}  # replaced: each conversation to both
    assert wb.db.scalar("SELECT COUNT(*) FROM conversations WHERE reviews_needed=2") == 6
    store.approve(ids[0], "ana")
    queue = ReviewFilter(status="new", assigned_to="ana", not_decided_by="ana")
    assert ids[0] not in [r["id"] for r in store.page(queue, limit=50)]  # decided by ana: gone from her queue
    assert ids[0] in [r["id"] for r in store.page(ReviewFilter(status="new", not_decided_by="ben"), limit=50)]
    # Re-review of approved conversations: the split keeps their status until a reviewer decides again.
    store.set_reviews_needed(ids[5], 1, "lead")
    store.approve(ids[5], "lead")
    assert store.get(ids[5])["status"] == "approved"
    store.split_queue(ReviewFilter(status="approved"), ["ana", "ben"], "lead", reviews_needed=2)
    assert store.get(ids[5])["status"] == "approved"
    store.approve(ids[5], "ana")  # two agreeing decisions (lead's and ana's): still approved
    assert store.get(ids[5])["status"] == "approved"
    store.discard(ids[5], "off topic", "ben")  # now they disagree: open again
    assert store.get(ids[5])["status"] == "new"
    with pytest.raises(ValidationError, match="needs 3 reviews but only 2 reviewer"):
        store.split_queue(ReviewFilter(status="new"), ["ana", "ben"], "lead", reviews_needed=3)
    with pytest.raises(ValidationError, match="Name at least one reviewer"):
        store.split_queue(ReviewFilter(status="new"), [" ", ""], "lead")


def test_agreement_and_disagreements_between_reviewers(team_wb):
    wb, ids = team_wb
    store = ReviewStore(wb.db)
    decisions = {"ana": ["approved", "approved", "discarded", "approved", "discarded", "approved"],
                 "ben": ["approved", "discarded", "discarded", "approved", "discarded", "approved"]}
    for who, row in decisions.items():
        for cid, decision in zip(ids, row):
            store.rate(cid, 5 if decision == "approved" else 1, who)
            store.approve(cid, who) if decision == "approved" else store.discard(cid, "off topic", who)
    report = team.agreement(wb.db)
    assert [r["reviewer"] for r in report["reviewers"]] == ["ana", "ben"]
    assert [d["conversation_id"] for d in report["disagreements"]] == [ids[1]]
    assert "ana: approved 5★" in report["disagreements"][0]["verdicts"]
    pair = report["pairs"][0]
    # 6 shared: p_o 5/6; ana approves 4/6, ben 3/6 -> p_e (4*3 + 2*3)/36 = 0.5 -> kappa 2/3.
    assert pair["shared"] == 6 and pair["kappa"] == pytest.approx(0.667, abs=0.001)
    assert report["decision_units"] == 6 and report["decision_alpha"] is not None
    assert report["decision_alpha"] == pytest.approx(
        team.krippendorff_alpha(zip(decisions["ana"], decisions["ben"])))


def test_export_can_require_agreement_cli_flag(team_wb, tmp_path, capsys):
    wb, ids = team_wb
    store = ReviewStore(wb.db)
    for cid in ids[:3]:
        store.approve(cid, "ana")
    store.approve(ids[0], "ben")  # agreed by two
    store.discard(ids[1], "off topic", "ben")  # disagreement (status: last decision with k=1)
    store.approve(ids[1], "cy")
    data_dir = str(wb.settings.data_path)

    def rows(*flags) -> int:
        out = tmp_path / f"out{len(flags)}"
        assert main(["export", "--data-dir", data_dir, "--out", str(out), "--no-split", "--no-grade", "--quiet",
                     *flags]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        return manifest["selection"]["conversations"]

    everyone = ReviewFilter(status="approved")
    agreed = ReviewFilter(status="approved", require_agreement=True)
    assert store.count(everyone) == 3
    assert [r["id"] for r in store.page(agreed)] == [ids[0]]  # ids[1]: ana and cy approved, ben discarded
    assert "reviewers agree" in agreed.describe()
    assert rows() == 3
    assert rows("--require-agreement") == 1
