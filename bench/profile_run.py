"""cProfile of one throughput case over every thread (workers, question prefetch, fake server handlers).

cProfile profiles only the thread that enables it, so every thread started during the run gets its own
profiler and the stats are merged at the end. Prints the top entries by own time and by cumulative time; times are CPU seconds of the thread that spent
them (``time.thread_time``), so waits on locks, sockets and sleeps do not count (``--wall`` counts them).

    /work/main/.venv/bin/python bench/profile_run.py                 # 100 dialogs, 0 s latency, c=32
    /work/main/.venv/bin/python bench/profile_run.py --latency 0.5 --top 40 --out /tmp/run.prof
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import throughput  # noqa: E402  (also clears provider env vars)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogs", type=int, default=100)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="", help="also write the merged stats here (pstats format)")
    ap.add_argument("--wall", action="store_true",
                    help="wall time per thread (waits included) instead of CPU time (time.thread_time)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-profile-"))
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run
    timer = None if args.wall else time.thread_time

    def profiled_run(self):
        prof = cProfile.Profile(timer) if timer else cProfile.Profile()
        with lock:
            profiles.append(prof)
        prof.enable()
        try:
            original_run(self)
        finally:
            prof.disable()

    try:
        env = throughput.Env(tmp)
        threading.Thread.run = profiled_run
        main_prof = cProfile.Profile(timer) if timer else cProfile.Profile()
        main_prof.enable()
        r = throughput.run_ours(env, "profile", args.latency, args.concurrency, args.dialogs, args.max_turns)
        main_prof.disable()
        threading.Thread.run = original_run
        print(f"{r.saved} saved, {r.calls} calls, {r.conv_per_min:.1f} conv/min (slowed by the profiler), "
              f"{r.usage.describe()}")
        stats = pstats.Stats(main_prof)
        for p in profiles:
            try:
                stats.add(p)
            except TypeError:  # a thread that never ran anything
                pass
        if args.out:
            stats.dump_stats(args.out)
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            stats.stream = buf
            stats.sort_stats(key).print_stats(args.top)
            print(buf.getvalue())
    finally:
        threading.Thread.run = original_run
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
