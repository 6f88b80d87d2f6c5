"""Review page render time at 10 and 10,000 conversations (target: the 10k/10 ratio at most 1.3).

    .venv/bin/python bench/review.py [--runs 7] [--sizes 10 10000]

Each size gets a fresh data dir whose conversations (three turns, passages on every answer, a few tags
and ratings) are written straight into SQLite. The page is rendered with Streamlit's AppTest, the
way the tests drive it: one cold run (opens the workbench), then ``--runs`` reruns of the queue as a
reviewer sees it, and ``--runs`` "Next" clicks. An untimed warm-up pass comes first, so imports do not
count against the first size. Medians are printed per size, then the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def populate(data_dir: Path, n: int) -> None:
    """``n`` synthetic three-turn conversations, inserted in one transaction."""
    from core.db import Database, dumps, new_id

    db = Database(data_dir / "groundwork.db")
    conversations, turns, tags = [], [], []
    for i in range(n):
        cid = new_id()
        question = f"Question {i}: when must a landlord return a security deposit, and what if it is late?"
        follow = f"Follow-up {i}: does the itemized statement have to list each deduction?"
        answers = [f"Answer {i}: within 21 days, with an itemized statement [1].",
                   f"Answer {i}b: yes, each deduction with its amount [2]."]
        passages = dumps([{"id": f"chunk-{i % 400}-{k}", "score": 0.61 - k / 10, "text": "Deposit rules " * 40,
                           "document_id": f"doc-{i % 400}", "title": f"Opinion {i % 400}",
                           "source_path": f"opinions/{i % 400}.md", "position": k} for k in range(3)])
        stamp = f"2026-01-01T{i // 3_600_000 % 24:02d}:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}+00:00"
        conversations.append([cid, "bench", "new", "bench", "bench-model", dumps({"respondent": 1}),
                              "Briefing passages " * 30, dumps([f"chunk-{i % 400}-0"]), question,
                              dumps({"persona": "tenant", "type": "fact lookup", "difficulty": "easy",
                                     "answerable": True}), 2, 900, 120, 0, 1500, stamp,
                              "\n".join([question, answers[0], follow, answers[1]]),
                              (i % 5) + 1 if i % 3 == 0 else None])
        turns += [[cid, 0, "user", question, None], [cid, 1, "assistant", answers[0], passages],
                  [cid, 2, "user", follow, None], [cid, 3, "assistant", answers[1], passages]]
        if i % 7 == 0:
            tags.append([cid, "needs-citation", stamp, "bench"])
    with db.write() as w:
        w["runs"].insert({"id": "bench", "kind": "demo", "status": "completed", "num_dialogs": n, "saved": n,
                          "failed": 0, "provider": "bench", "model": "bench-model", "created_at": "2026-01-01"})
        w.conn.executemany(
            "INSERT INTO conversations (id, run_id, status, provider, model, prompt_versions, briefing, briefing_ids, "
            "question, question_meta, num_turns, prompt_tokens, completion_tokens, thinking_tokens, latency_ms, "
            "created_at, search_text, rating) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", conversations)
        w.conn.executemany("INSERT INTO turns (conversation_id, idx, role, content, retrieval, weight) "
                           "VALUES (?,?,?,?,?,1)", turns)
        w.conn.executemany("INSERT INTO tags (conversation_id, tag, created_at, created_by) VALUES (?,?,?,?)", tags)
    db.close()


def measure(data_dir: Path, runs: int) -> dict[str, float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GROUNDWORK_DATA_DIR"] = str(data_dir)
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "pages" / "review.py"), default_timeout=300)
    at.session_state["reviewer"] = "bench"
    started = time.perf_counter()
    at.run()
    cold = time.perf_counter() - started
    if at.exception:
        raise SystemExit(f"the review page failed: {at.exception}")
    reruns, nexts = [], []
    for _ in range(runs):
        started = time.perf_counter()
        at.run()
        reruns.append(time.perf_counter() - started)
    for _ in range(runs):
        started = time.perf_counter()
        at.button(key="review.next").click().run()
        nexts.append(time.perf_counter() - started)
    assert not at.exception, at.exception
    matching = {m.label: m.value for m in at.metric}["Matching the filter"]
    st.cache_resource.clear()
    return {"cold_s": cold, "rerun_s": statistics.median(reruns), "next_s": statistics.median(nexts),
            "matching": matching}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 10_000])
    args = ap.parse_args()
    os.chdir(ROOT)
    results = {}
    with tempfile.TemporaryDirectory(prefix="groundwork-bench-review-") as tmp:
        for n in args.sizes:
            data_dir = Path(tmp) / f"n{n}"
            started = time.perf_counter()
            populate(data_dir, n)
            filled = time.perf_counter() - started
            if n == args.sizes[0]:
                measure(data_dir, 2)  # untimed warm-up: imports and first-use costs would count against size one
            results[n] = measure(data_dir, args.runs)
            r = results[n]
            print(f"{n:>7,} conversations (inserted in {filled:.1f} s, {r['matching']} in the queue): "
                  f"first render {r['cold_s'] * 1000:.0f} ms, rerun {r['rerun_s'] * 1000:.0f} ms, "
                  f"next {r['next_s'] * 1000:.0f} ms (medians of {args.runs})")
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        for key, label in (("rerun_s", "rerun"), ("next_s", "next")):
            ratio = results[large][key] / results[small][key]
            print(f"ratio {large:,}/{small:,} ({label}): {ratio:.2f} (target <= 1.3) "
                  f"{'OK' if ratio <= 1.3 else 'OVER TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
