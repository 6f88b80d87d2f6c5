"""Measuring a grounding verifier on labelled answers: precision, recall, AUROC, flag rates per label.

Two label sets ship with the project:

- ``tests/data/grounding_labels.json`` (in-sample): 88 sentences about six fictional opinions; the offline
  verifier's thresholds were tuned on it, so its numbers flatter the method;
- ``tests/data/grounding_heldout.json`` (held-out): 67 answers in customer support, tutoring and legal
  English, written before the verifier was reworked and never used to tune it.

A unit is "bad" when its label is reversed, contradicted or unsupported; it is flagged when any of its
sentences gets the verdict ``unsupported`` or ``contradicted``. AUROC ranks the units by the verifier's
``confidence`` (the weakest checkable sentence's), bad against good.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.quality.grounding import TurnInput
from core.quality.verdicts import FLAGGED, TurnVerdict, Verifier

ROOT = Path(__file__).resolve().parent.parent.parent
IN_SAMPLE = ROOT / "tests" / "data" / "grounding_labels.json"
HELD_OUT = ROOT / "tests" / "data" / "grounding_heldout.json"
# Written before the next change to the verifier and never tuned on: new domains (HR, cooking, manuals, finance).
HELD_OUT_2 = ROOT / "tests" / "data" / "grounding_heldout2.json"
# Written before offline-checks-v4 (issue 23) in seven domains no rule was developed on; measured once after it froze.
HELD_OUT_3 = ROOT / "tests" / "data" / "grounding_heldout3.json"
DEV = ROOT / "tests" / "data" / "grounding_dev.json"  # support/tutoring answers the rework was developed on
DEV_3 = ROOT / "tests" / "data" / "grounding_dev3.json"  # eight more domains sentence-windows-v3 was developed on
BAD_LABELS = frozenset({"reversed", "contradicted", "unsupported"})
GOOD_LABELS = frozenset({"supported", "paraphrased"})


@dataclass
class Unit:
    """One labelled thing to grade: an answer (held-out) or a sentence graded inside its answer (in-sample)."""

    label: str
    turn: TurnInput
    sentence: int | None = None  # in-sample: which sentence of the answer carries the label
    domain: str = ""


@dataclass
class Report:
    name: str
    units: int
    auroc: float
    precision: float
    recall: float
    flagged_by_label: dict[str, tuple[int, int]] = field(default_factory=dict)  # label → (flagged, total)

    def rate(self, label: str) -> float | None:
        flagged, total = self.flagged_by_label.get(label, (0, 0))
        return flagged / total if total else None


def load_in_sample(path: Path = IN_SAMPLE) -> list[Unit]:
    """Each labelled sentence (abstentions and boilerplate left out), graded within its whole answer."""
    units = []
    for st in json.loads(path.read_text(encoding="utf-8"))["sets"]:
        answer = " ".join(s["text"] for s in st["sentences"])
        turn = TurnInput(answer, st["passages"], [st["question"]])
        for i, s in enumerate(st["sentences"]):
            label = s["label"]
            if label in BAD_LABELS or label in GOOD_LABELS:
                units.append(Unit(label, turn, i, "legal"))
    return units


def load_held_out(path: Path = HELD_OUT) -> list[Unit]:
    units = []
    for item in json.loads(path.read_text(encoding="utf-8"))["items"]:
        for a in item["answers"]:
            units.append(Unit(a["label"], TurnInput(a["text"], item["passages"], [item["question"]]),
                              domain=item["domain"]))
    return units


def auroc(good: Sequence[float], bad: Sequence[float]) -> float:
    """Probability that a good unit scores above a bad one (ties count half)."""
    if not good or not bad:
        return float("nan")
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def _confidence(verdict: TurnVerdict, sentence: int | None) -> tuple[float, bool]:
    """(confidence, flagged) of one unit: a labelled sentence, or a whole answer (its weakest sentence)."""
    sentences = verdict.sentences if sentence is None else [verdict.sentences[sentence]]
    confidences = [s.confidence for s in sentences if s.confidence is not None]
    # A neutral sentence (abstention, boilerplate) makes no claim: nothing against the answer.
    conf = min(confidences) if confidences else 1.0
    return conf, any(s.verdict in FLAGGED for s in sentences)


def evaluate(name: str, units: Sequence[Unit], verifier: Verifier) -> Report:
    """Grade every unit's answer once (answers shared by units are graded once) and score the flags."""
    turns: dict[int, TurnInput] = {}
    for u in units:
        turns.setdefault(id(u.turn), u.turn)
    order = list(turns)
    verdicts = dict(zip(order, verifier.verify_turns([turns[k] for k in order])))
    good, bad = [], []
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    tp = fp = fn = 0
    for u in units:
        v = verdicts[id(u.turn)]
        if u.sentence is not None and len(v.sentences) <= u.sentence:
            raise ValueError(f"{name}: the answer split into {len(v.sentences)} sentences, fewer than labelled.")
        conf, flagged = _confidence(v, u.sentence)
        is_bad = u.label in BAD_LABELS
        (bad if is_bad else good).append(conf)
        counts[u.label][0] += flagged
        counts[u.label][1] += 1
        tp += is_bad and flagged
        fp += (not is_bad) and flagged
        fn += is_bad and not flagged
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return Report(name, len(units), auroc(good, bad), precision, recall,
                  {k: (v[0], v[1]) for k, v in sorted(counts.items())})


def format_report(r: Report) -> str:
    rates = ", ".join(f"{label} {f}/{t}" for label, (f, t) in r.flagged_by_label.items())
    return (f"{r.name}: {r.units} units · AUROC {r.auroc:.3f} · precision {r.precision:.3f} · "
            f"recall {r.recall:.3f} · flagged: {rates}")


def as_dict(r: Report) -> dict[str, Any]:
    return {"name": r.name, "units": r.units, "auroc": round(r.auroc, 4), "precision": round(r.precision, 4),
            "recall": round(r.recall, 4), "flagged_by_label": r.flagged_by_label}
