"""The call gate alone under quotas: quota used and share of calls answered 429, per 429 shape and window kind.

No corpus, no embeddings, no SQLite: ``--workers`` threads call ``GeminiProvider.generate`` through one
``AdaptiveGate`` for ``--seconds`` against the fake Gemini in its own process (``--in-process`` to share this
one), so what is measured is the gate and the provider's retries, in a minute per case instead of the
full run's. ``bench/throughput.py --only-quota`` measures the same through ``GenerationRun``.

    /work/main/.venv/bin/python bench/quota.py                         # 3 shapes x 2 window kinds, 60 s each
    /work/main/.venv/bin/python bench/quota.py --shapes bare --windows fixed --seconds 40 --detail

quota used = successful calls ÷ (quota × wall time ÷ window), cold start included (target ≥ 0.95);
429 share = 429 answers ÷ all answers (target ≤ 0.10).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
for _name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GROUNDWORK_RPM_LIMIT"):
    os.environ.pop(_name, None)

from core.config import Settings  # noqa: E402
from fakes.gemini import QUOTA_SHAPES, WINDOW_KINDS  # noqa: E402
from fakes.gemini_process import FakeGeminiProcess, InProcessFake  # noqa: E402
from core.generation.gate import AdaptiveGate  # noqa: E402
from core.providers.base import LLMRequest, Message  # noqa: E402
from core.providers.gemini import GeminiProvider  # noqa: E402
from machine import CpuMeter  # noqa: E402

KEY = "AIzaSy-bench-dummy-key-000000000000000"


def drive(base_url: str, seconds: float, workers: int, concurrency: int,
          trace: bool = False) -> tuple[AdaptiveGate, float, float]:
    settings = Settings(gemini_api_key=KEY, gemini_base_url=base_url, gemini_max_retries=50, request_timeout=30.0)
    gate = AdaptiveGate(max_concurrency=concurrency)
    provider = GeminiProvider(settings, gate=gate)
    start = time.monotonic()
    deadline = start + seconds

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                provider.generate(LLMRequest([Message("user", f"worker {i} question {n} about tenancy deposits")]))
            except Exception as exc:  # a run would stop here; the bench only counts
                print(f"  worker {i}: {exc}", flush=True)
                return

    def watch() -> None:  # --trace: the gate's state once a second
        while time.monotonic() < deadline:
            time.sleep(1.0)
            pace = gate.paces.get("requests")
            print(f"    t={time.monotonic() - start:5.1f}  limit {gate.limit:5.1f}  in flight {gate.in_flight:2d}  "
                  f"pending {gate._pending is not None}  pace " + (
                      f"{pace.limit:.1f}/{pace.window:.2f}s (good {pace.good_limit:.1f}, in window "
                      f"{pace.in_window:.0f})" if pace else "-"), flush=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    if trace:
        threads.append(threading.Thread(target=watch, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic()
    provider.close()
    return gate, start, end


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(QUOTA_SHAPES))
    ap.add_argument("--windows", default=",".join(WINDOW_KINDS))
    ap.add_argument("--quota", type=int, default=120)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--in-process", action="store_true", help="the fake in this process (default: its own)")
    ap.add_argument("--detail", action="store_true", help="ok / 429 per window")
    ap.add_argument("--trace", action="store_true", help="the gate's state once a second")
    args = ap.parse_args()
    logging.getLogger("core.providers.base").setLevel(logging.ERROR)
    print(f"load average {os.getloadavg()[0]:.2f}; quota {args.quota} requests / {args.window:g} s, latency "
          f"{args.latency:g} s, {args.workers} workers, {args.seconds:g} s a case, fake "
          f"{'in this process' if args.in_process else 'in its own process'}", flush=True)
    rows = []
    for window_kind in args.windows.split(","):
        for shape in args.shapes.split(","):
            options = dict(latency=args.latency, rpm_quota=args.quota, rpm_window=args.window, quota_shape=shape,
                           window_kind=window_kind)
            with (InProcessFake if args.in_process else FakeGeminiProcess)(**options) as fake, CpuMeter() as meter:
                gate, start, end = drive(fake.base_url, args.seconds, args.workers, args.workers, args.trace)
                answers = fake.stats(since=start)["answers"]
            # Over the seconds the workers were sending: the calls still in flight at the end count, the tail
            # while they come back (nothing new sent) does not.
            answers = [a for a in answers if a[0] < start + args.seconds + args.latency]
            ok = sum(1 for a in answers if a[1] == 200)
            limited = sum(1 for a in answers if a[1] == 429)
            wall = args.seconds
            used = ok / (args.quota * wall / args.window)
            share = limited / max(len(answers), 1)
            paces = {m: (round(p.limit, 1), round(p.window, 2)) for m, p in gate.paces.items()}
            rows.append((window_kind, shape, used, share, ok, limited, paces))
            print(f"  {window_kind:7s} {shape:10s} used {used:.3f}  429 share {share:.3f}  ({ok} ok, {limited} 429, "
                  f"{wall:.1f} s)  learned {paces}  {meter.usage.describe()}", flush=True)
            if args.detail:
                n = int(wall // args.window) + 1
                print("    per window ok/429: " + "  ".join(
                    f"{sum(1 for a in answers if a[1] == 200 and w <= (a[0] - start) / args.window < w + 1)}/"
                    f"{sum(1 for a in answers if a[1] == 429 and w <= (a[0] - start) / args.window < w + 1)}"
                    for w in range(n)), flush=True)
    print("")
    for window_kind, shape, used, share, ok, limited, paces in rows:
        verdict = "MET" if used >= 0.95 and share <= 0.10 else "MISSED"
        print(f"target: {window_kind} window, {shape} 429s: used {used:.3f} >= 0.95, 429 share {share:.3f} <= 0.10 "
              f"-> {verdict}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
