"""Grounding verifier quality on the in-sample and the held-out label sets (method and thresholds frozen).

    .venv/bin/python bench/grounding.py            # the offline verifier (packaged MiniLM + checks)
    .venv/bin/python bench/grounding.py --json     # the same numbers as JSON

Prints, per set: AUROC (supported vs not, ranked by the weakest sentence's confidence), precision and
recall of the flag (a sentence judged unsupported or contradicted), and how many units of each label were
flagged. The held-out targets: AUROC >= 0.9, >= 80% of reversed answers flagged, <= 15% of supported
answers flagged. See core/quality/benchmark.py for what a unit is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--dev", action="store_true", help="also the development sets (tests/data/grounding_dev.json, grounding_dev3.json)")
    args = parser.parse_args()

    from core.embeddings import Embedder
    from core.quality.benchmark import DEV, DEV_3, HELD_OUT_2, as_dict, evaluate, format_report, load_held_out, load_in_sample
    from core.quality.grounding import OfflineVerifier

    embedder = Embedder()
    verifier = OfflineVerifier(embedder)
    started = time.perf_counter()
    reports = [evaluate("in-sample (tuned on)", load_in_sample(), verifier),
               evaluate("held-out", load_held_out(), verifier),
               evaluate("held-out 2 (new domains)", load_held_out(HELD_OUT_2), verifier)]
    if args.dev:
        reports.append(evaluate("development (tuned on)", load_held_out(DEV), verifier))
        reports.append(evaluate("development 3 (tuned on)", load_held_out(DEV_3), verifier))
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"method": verifier.method, "seconds": round(seconds, 2),
                          "sets": [as_dict(r) for r in reports]}, indent=1))
        return
    print(f"method {verifier.method} ({seconds:.1f} s)")
    for r in reports:
        print(format_report(r))
    for held in reports[1:3]:
        _targets(held)


def _targets(held) -> None:
    reversed_rate, supported_rate = held.rate("reversed"), held.rate("supported")
    print(f"{held.name} targets: AUROC {held.auroc:.3f} (>= 0.9: {'met' if held.auroc >= 0.9 else 'NOT met'}), "
          f"reversed flagged {reversed_rate:.0%} (>= 80%: {'met' if reversed_rate >= 0.8 else 'NOT met'}), "
          f"supported flagged {supported_rate:.0%} (<= 15%: {'met' if supported_rate <= 0.15 else 'NOT met'})")


if __name__ == "__main__":
    main()
