"""Batch mode's own cost: CPU per LLM call and HTTP requests per conversation, live run vs batch run, same run.

Both runs generate the same workload against an in-process FakeGemini that answers at once (latency 0; batch
jobs go PENDING → RUNNING → SUCCEEDED without waiting), so what is timed is our side only: retrieval, prompt
building, reply checks, SQLite — plus, for the batch run, storing every round's requests and keys, encoding
them, and mapping results back. The fake runs in this process, so its CPU counts for both runs alike.

    .venv/bin/python bench/batch.py                 # 100 dialogs, max_turns 3
    .venv/bin/python bench/batch.py --dialogs 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]
for _name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QDRANT_URL", "GROUNDWORK_PROVIDER", "GOOGLE_GEMINI_BASE_URL",
              "GROUNDWORK_DATA_DIR", "GROUNDWORK_RPM_LIMIT"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fakes.gemini import FakeGemini  # noqa: E402
from machine import CpuMeter  # noqa: E402
from throughput import KEY, Env  # noqa: E402


def run_case(env: Env, batch: bool, dialogs: int, max_turns: int, concurrency: int) -> dict:
    from core.generation.batch_run import generation_run
    from core.providers.gemini import GeminiProvider
    from core.generation.run_config import RunConfig

    wb = env.fresh_workbench()
    fake = FakeGemini().start()
    fake.batch_pending_s = fake.batch_running_s = 0.0
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url, batch_poll_s=0.01,
                                   batch_poll_max_s=0.01)
    run = generation_run(settings, wb.db, wb.corpus, lambda gate: GeminiProvider(settings, gate=gate),
                         config=RunConfig(num_dialogs=dialogs, max_turns=max_turns, max_concurrency=concurrency,
                                          seed=1, batch=batch))
    with CpuMeter() as meter:
        progress = run.run()
    calls = (len(fake.batch_keys_submitted) if batch else
             sum(n for p, n in fake.by_path.items() if p.endswith(":generateContent")))
    out = {"saved": progress.saved, "status": progress.status, "calls": calls, "http": fake.requests_total,
           "jobs": len(fake.batch_jobs), "wall": meter.usage.wall_s, "cpu": meter.usage.own_cpu_s,
           "usage": meter.usage.describe()}
    fake.close()
    wb.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=100)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="the live run's calls in flight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        env = Env(Path(tmp))
        print(f"setup: model {env.load_s:.1f} s, index {env.index_s:.1f} s; {args.dialogs} dialogs, "
              f"max_turns {args.max_turns}", flush=True)
        rows = {}
        for label, batch in (("live (c=%d)" % args.concurrency, False), ("batch", True)):
            t = time.perf_counter()
            rows[label] = r = run_case(env, batch, args.dialogs, args.max_turns, args.concurrency)
            print(f"{label:12s} {r['status']:10s} saved {r['saved']:4d}  LLM calls {r['calls']:5d}  "
                  f"HTTP requests {r['http']:5d} ({r['http'] / max(r['saved'], 1):.2f}/conversation)  "
                  f"batch jobs {r['jobs']:3d}  wall {r['wall']:6.2f} s  CPU {r['cpu']:6.2f} s = "
                  f"{1000 * r['cpu'] / max(r['calls'], 1):5.1f} ms/call  [{r['usage']}] "
                  f"({time.perf_counter() - t:.1f} s with setup)", flush=True)
        live, batch = rows.values()
        per_call = (batch["cpu"] / max(batch["calls"], 1)) / (live["cpu"] / max(live["calls"], 1))
        print(f"batch ÷ live: CPU per LLM call {per_call:.2f}; HTTP requests "
              f"{batch['http'] / max(live['http'], 1):.3f}; rounds (jobs) {batch['jobs']} for max_turns "
              f"{args.max_turns} (2 × max_turns when nothing is rejected or fails)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
