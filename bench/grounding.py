"""Grounding verifier quality on the label sets, `grade` speed, and what the checks cost a run.

    .venv/bin/python bench/grounding.py                  # quality: in-sample and held-out 1, 2, 3
    .venv/bin/python bench/grounding.py --json           # the same numbers as JSON
    .venv/bin/python bench/grounding.py --speed 150 --base /path/to/older/checkout
        # `grade` answers/s of this checkout and of an older one (e.g. `git archive 640e2c0 | tar -x`), same
        # rows, alternating in one run of this script, each in its own process (so the same machine load)
    .venv/bin/python bench/grounding.py --run 12         # wall time of `generate` with the checks and with
        # --no-grade, fake Gemini at 0.5 s latency in its own process (target: <= 1.15x)
    .venv/bin/python bench/grounding.py --trained --dev  # the verifier trained on each set's own passages
        # against the rules, on the development sets (a sweep of its flag cut: where FLAG_BELOW was chosen)
    .venv/bin/python bench/grounding.py --trained        # the same on the held-out sets, at FLAG_BELOW only

Quality, per set: AUROC (supported vs not, ranked by the weakest sentence's confidence), precision and
recall of the flag (a sentence judged unsupported or contradicted), and how many units of each label were
flagged. Targets on every held-out set: supported answers flagged <= 10%, precision of a flag >= 0.85.
See core/quality/benchmark.py for what a unit is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PY = sys.executable

from core.corpus.sparse_copy import copy_tree  # noqa: E402


def quality(args) -> None:
    from core.corpus.embeddings import Embedder
    from core.quality.benchmark import (DEV, DEV_3, HELD_OUT_2, HELD_OUT_3, as_dict, evaluate, format_report,
                                        load_held_out, load_in_sample)
    from core.quality.grounding import OfflineVerifier

    verifier = OfflineVerifier(Embedder())
    started = time.perf_counter()
    reports = [evaluate("in-sample (legal, tuned on)", load_in_sample(), verifier),
               evaluate("held-out 1 (looked at since, so closer to development)", load_held_out(), verifier),
               evaluate("held-out 2 (new domains)", load_held_out(HELD_OUT_2), verifier),
               evaluate("held-out 3 (new domains, written before v4)", load_held_out(HELD_OUT_3), verifier)]
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
    for held in reports[1:4]:
        supported = held.rate("supported") or 0.0
        print(f"{held.name}: supported flagged {supported:.0%} (<= 10%: {'met' if supported <= 0.1 else 'NOT met'}), "
              f"precision {held.precision:.3f} (>= 0.85: {'met' if held.precision >= 0.85 else 'NOT met'}), "
              f"recall {held.recall:.3f}")


class _MemoScorer:
    """A trained model's probabilities remembered per pair, so a sweep of flag cuts scores each pair once."""

    def __init__(self, scorer):
        self.scorer, self.memo = scorer, {}

    def predict(self, pairs):
        import numpy as np
        todo = [p for p in dict.fromkeys(pairs) if p not in self.memo]
        if todo:
            self.memo.update(zip(todo, self.scorer.predict(todo)))
        return np.array([self.memo[p] for p in pairs], dtype=np.float32)


def trained(args) -> None:
    """Train a verifier on each set's own passages (its "corpus") and compare it with the rules.

    Adoption rule, written before the held-out sets were measured: the trained verifier becomes the default only
    if on every held-out set its AUROC is at least the rules' and its flags still meet the targets (supported
    flagged <= 10%, precision >= 0.85), and on one at least its AUROC is 0.02 higher."""
    from core.corpus.embeddings import Embedder
    from core.quality.benchmark import (DEV, DEV_3, HELD_OUT_2, HELD_OUT_3, evaluate, format_report, load_held_out,
                                        load_in_sample)
    from core.quality.grounding import OfflineVerifier
    from core.quality.trained import FLAG_BELOW, TRAINED_VERSION, PairScorer, TrainedVerifier, train_pair_scorer

    offline = OfflineVerifier(Embedder())
    if args.dev:
        sets = [("in-sample (legal)", load_in_sample()), ("development", load_held_out(DEV)),
                ("development 3", load_held_out(DEV_3))]
        cuts = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    else:
        sets = [("held-out 1", load_held_out()), ("held-out 2", load_held_out(HELD_OUT_2)),
                ("held-out 3", load_held_out(HELD_OUT_3))]
        cuts = (FLAG_BELOW,)
    verdict = []
    for name, units in sets:
        texts = list(dict.fromkeys(p["text"] for u in units for p in u.turn.passages))
        with tempfile.TemporaryDirectory(prefix="gw-trained-") as tmp:
            # --model-cache keeps each set's model between runs of the bench (same set, seed and recipe).
            model = (Path(args.model_cache) / f"{TRAINED_VERSION}-{name.split(' (')[0].replace(' ', '-')}-{args.seed}"
                     if args.model_cache else Path(tmp) / "model")
            if (model / "groundwork.json").exists():
                meta = json.loads((model / "groundwork.json").read_text())
            else:
                meta = train_pair_scorer({str(i): t for i, t in enumerate(texts)}, model, seed=args.seed)
            scorer = _MemoScorer(PairScorer(model))
            print(f"{name}: trained on {len(texts)} passages ({meta['sentences']} sentences"
                  f"{', topped up from the sample corpus' if meta['topped_up_from_sample'] else ''}): "
                  f"{meta['pairs']} pairs in {meta['seconds']} s", flush=True)
            rules = evaluate(f"{name} · rules", units, offline)
            print(format_report(rules) + f" · supported flagged {rules.rate('supported') or 0:.0%}")
            for cut in cuts:
                r = evaluate(f"{name} · trained < {cut}", units, TrainedVerifier(offline, scorer, flag_below=cut))
                print(format_report(r) + f" · supported flagged {r.rate('supported') or 0:.0%}", flush=True)
                if cut == FLAG_BELOW:
                    verdict.append((rules, r))
    if not args.dev:
        meets = all(t.auroc >= r.auroc and (t.rate("supported") or 0) <= 0.1 and t.precision >= 0.85
                    for r, t in verdict)
        wins = any(t.auroc >= r.auroc + 0.02 for r, t in verdict)
        print(f"adopt the trained verifier: {'yes' if meets and wins else 'no'} (needs AUROC >= the rules' and the "
              "targets met on every held-out set, and AUROC +0.02 on one)")


def _speed_once(checkout: Path, answers: int, data_dir: Path | None = None) -> dict:
    """`grade` of the bench rows in a fresh process of ``checkout`` (its own code; a cold cache, or the
    sentence vectors of ``data_dir``)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    extra = [str(data_dir)] if data_dir else []
    out = subprocess.run([PY, str(checkout / "bench" / "grounding_rows.py"), str(answers), *extra], env=env,
                         capture_output=True, text=True, cwd=str(checkout), timeout=3600)
    if out.returncode:
        raise SystemExit(f"{checkout}: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    checkouts = [("this checkout", ROOT)]
    if args.base:
        base = Path(args.base).resolve()
        if not (base / "bench" / "grounding_rows.py").is_file():
            shutil.copy(ROOT / "bench" / "grounding_rows.py", base / "bench" / "grounding_rows.py")
        checkouts.insert(0, ("base", base))
    # The rows' passages are chunks of the sample corpus's opinions: indexed by this checkout (whose indexing
    # embeds each chunk's window sentences into the data dir), a fresh copy per round, graded with that data dir.
    work = Path(tempfile.mkdtemp(prefix="gw-grade-speed-"))
    try:
        indexed = work / "indexed"
        started = time.perf_counter()
        out = subprocess.run([PY, "-m", "core.cli", "index", "--sample", "--quiet", "--data-dir", str(indexed)],
                             env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, cwd=str(ROOT),
                             capture_output=True, text=True, timeout=3600)
        if out.returncode:
            raise SystemExit(f"indexing the sample corpus failed: {out.stderr[-800:]}")
        print(f"sample corpus indexed by this checkout (windows included) in {time.perf_counter() - started:.1f} s",
              flush=True)
        cases = [(name, path, None) for name, path in checkouts]
        cases.append(("this checkout, indexed data dir", ROOT, indexed))
        results: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
        for n in range(args.rounds):
            for name, path, data in cases:
                copy = None
                if data is not None:
                    copy = work / f"round-{n}"
                    copy_tree(data, copy)
                r = _speed_once(path, args.speed, copy)
                results[name].append(r)
                print(f"{name}: {r['answers']} answers in {r['seconds']} s = {r['answers_per_s']} answers/s",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {name: max(r["answers_per_s"] for r in rs) for name, rs in results.items()}
    if args.base:
        for name in ("this checkout", "this checkout, indexed data dir"):
            print(f"grade speed, {name}: {best[name]} vs {best['base']} answers/s = "
                  f"{best[name] / best['base']:.1f}x (target >= 10x)")


def _fake_server(latency: float) -> tuple[subprocess.Popen, str]:
    code = ("import sys, time\nfrom fakes.gemini import FakeGemini\n"
            f"f = FakeGemini(latency={latency}).start()\nprint(f.base_url, flush=True)\n"
            "while True:\n    time.sleep(3600)\n")
    proc = subprocess.Popen([PY, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    return proc, proc.stdout.readline().strip()


def run_cost(args) -> None:
    """Two identical runs (same seed, fresh copies of one indexed data dir): checks on, and --no-grade."""
    from core.config import Settings
    from core.workbench import Workbench

    work = Path(tempfile.mkdtemp(prefix="gw-grounding-bench-"))
    proc = None
    try:
        template = work / "indexed"
        # The embedding cache off here and in the runs: "checks on again" has the same seed, so its answers would
        # come from the first run's vectors and the checks would look cheaper than they are.
        wb = Workbench(Settings.from_env(env={}, data_dir=str(template), embedding_cache="off"), store_idle_close_s=0)
        wb.corpus.ingest_path(ROOT / "sample_data" / "corpus")
        wb.close()
        proc, base_url = _fake_server(args.latency)
        walls = {}
        for label, extra in (("--no-grade", ["--no-grade"]), ("checks on", []), ("--no-grade again", ["--no-grade"]),
                             ("checks on again", [])):
            data = work / label.replace(" ", "-")
            copy_tree(template, data)
            env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
            env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", GEMINI_API_KEY="AIzaSy-bench-key-0000000000000000000",
                       GOOGLE_GEMINI_BASE_URL=base_url, GROUNDWORK_EMBEDDING_CACHE="off")
            cmd = [PY, "-m", "core.cli", "generate", "--data-dir", str(data), "--num-dialogs", str(args.run),
                   "--max-turns", "3", "--max-concurrency", "8", "--seed", "5", "--provider", "gemini", "--quiet",
                   *extra]
            started = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT), timeout=3600)
            walls[label] = time.perf_counter() - started
            tail = (out.stdout + out.stderr).strip().splitlines()
            print(f"{label}: {walls[label]:.1f} s (exit {out.returncode}) {[l for l in tail if 'grounding' in l or 'saved' in l][:2]}",
                  flush=True)
        on = min(walls["checks on"], walls["checks on again"])
        off = min(walls["--no-grade"], walls["--no-grade again"])
        print(f"run with checks / --no-grade: {on:.1f} / {off:.1f} s = {on / off:.2f}x (target <= 1.15x; best of two each)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--dev", action="store_true", help="also the development sets")
    parser.add_argument("--speed", type=int, default=0, help="measure `grade` on this many answers")
    parser.add_argument("--base", default="", help="an older checkout to measure --speed against")
    parser.add_argument("--rounds", type=int, default=1, help="--speed rounds (alternating)")
    parser.add_argument("--run", type=int, default=0, help="measure a run of this many conversations, checks on/off")
    parser.add_argument("--latency", type=float, default=0.5, help="fake Gemini latency for --run")
    parser.add_argument("--trained", action="store_true", help="the verifier trained on each set's passages")
    parser.add_argument("--seed", type=int, default=0, help="--trained: the training seed")
    parser.add_argument("--model-cache", default="", help="--trained: keep the trained models in this folder")
    args = parser.parse_args()
    if args.trained:
        trained(args)
    elif args.speed:
        speed(args)
    elif args.run:
        run_cost(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
