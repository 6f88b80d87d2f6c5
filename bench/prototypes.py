"""Prototypes of proposed core changes, applied in memory to one benchmark run only (core files are untouched).

They exist to measure what a proposed fix would buy before anyone changes core; each one names the core
function it stands in for. Select them with ``bench/throughput.py --prototype NAME[,NAME...]``:

  threads1  torch.set_num_threads(1) while the run generates (core/embeddings.py Embedder.encode for short
            queries): with 2 intra-op threads, every tiny query encode is a parallel region whose barrier
            stalls whenever one of the 2 cores is busy with the worker/server threads of the same process.
  noverify  start the run with the collection already verified (core/corpus.py Corpus.verify re-embeds 3
            full passages and runs 3 searches at every run start; a cached or one-short-probe check is cheap).
  exactn    ask for exactly n questions (minItems = maxItems = n in core/engine.py QUESTIONS_SCHEMA), so the
            QuestionPool's accounting of questions "coming" is right and fewer instruction calls are needed.
  batchq    coalesce the query encodes of concurrent workers into one forward pass (core/engine.py
            Retriever.search -> a micro-batching Embedder.encode_query).
  lpt       reserve the pending work item with the most turns first (core/engine.py GenerationRun._reserve;
            turns come from the item's seed): longest conversations start first, the tail is short ones.
  prefetch  QuestionPool keeps a few questions ready: when queued + coming - waiting falls below
            max(2, concurrency/4) and items are still pending, background instruction calls (at most
            concurrency/6 at once) refill it (core/engine.py
            QuestionPool.take), so workers rarely sit idle waiting for another worker's instruction call.
  pacegate  AdaptiveGate learns the quota from the first 429 with RetryInfo (successes since the last pause in
            the window the server reports) and paces attempts at 95% of it (core/engine.py AdaptiveGate).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

NAMES = ("threads1", "noverify", "exactn", "batchq", "lpt", "prefetch", "pacegate")


class _CoalescingEmbedder:
    """Wraps an Embedder: single-text encodes from many threads are batched into one model call."""

    def __init__(self, inner):
        self._inner = inner
        self._cond = threading.Condition()
        self._pending: list[dict[str, Any]] = []
        self._busy = False
        self.batches = 0
        self.texts = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, texts, progress=None):
        texts = list(texts)
        if len(texts) != 1:
            return self._inner.encode(texts, progress)
        slot: dict[str, Any] = {"text": texts[0], "vec": None}
        with self._cond:
            self._pending.append(slot)
            while slot["vec"] is None and self._busy:
                self._cond.wait()
            if slot["vec"] is not None:
                return slot["vec"][None, :]
            batch, self._pending, self._busy = self._pending, [], True
        try:
            vectors = self._inner.encode([s["text"] for s in batch])
        except BaseException:
            with self._cond:
                self._busy = False
                self._pending[:0] = [s for s in batch if s is not slot]
                self._cond.notify_all()
            raise
        with self._cond:
            for s, v in zip(batch, vectors):
                s["vec"] = v
            self._busy = False
            self.batches += 1
            self.texts += len(batch)
            self._cond.notify_all()
        return slot["vec"][None, :]


class _PacingMixin:
    """Learns (quota, window) from the first RetryInfo 429 and paces attempts with the base CallGate's rpm limiter."""

    def _pace_init(self) -> None:
        self._ok_times: deque[float] = deque(maxlen=100_000)
        self._burst_start = time.monotonic()
        self.learned: list[tuple[float, int, float]] = []

    def record_success(self) -> None:
        super().record_success()
        self._ok_times.append(time.monotonic())

    def record_rate_limited(self, retry_after):
        t = time.monotonic()
        if retry_after and self.rpm_limit == 0:
            oks = [x for x in self._ok_times if x >= self._burst_start]
            if oks:
                window = (t + retry_after) - oks[0]
                quota = len(oks)
                self.rpm_limit = max(1, int(quota * 0.95))
                self.window = max(window, 1.0)
                self.learned.append((t, quota, window))
                # The sends already counted in the window must be known to the limiter too.
                with self._lock:
                    self._sent = deque(oks[-self.rpm_limit:])
        super().record_rate_limited(retry_after)


def apply(names: list[str], run, wb) -> tuple[Callable[[], None], dict[str, Any]]:
    """Apply prototypes to one GenerationRun before ``run.run()``; returns (undo, stats)."""
    from core import engine

    undo: list[Callable[[], None]] = []
    stats: dict[str, Any] = {}
    for name in names:
        if name not in NAMES:
            raise SystemExit(f"unknown prototype {name!r}; choose from {', '.join(NAMES)}")
    if "threads1" in names:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        undo.append(lambda: torch.set_num_threads(before))
    if "noverify" in names:
        wb.corpus.verify()  # done here, outside the timed run, as a cached check would be
    if "exactn" in names:
        orig_schema = engine.QUESTIONS_SCHEMA
        orig_write = engine.Simulator.write_questions

        def write_questions(self, briefing_passages, n, rng):
            engine.QUESTIONS_SCHEMA = {"type": "object", "required": ["questions"], "properties": {
                "questions": {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}}}
            return orig_write(self, briefing_passages, n, rng)

        engine.Simulator.write_questions = write_questions

        def _undo_exactn():
            engine.Simulator.write_questions = orig_write
            engine.QUESTIONS_SCHEMA = orig_schema

        undo.append(_undo_exactn)
    if "batchq" in names:
        coalescer = _CoalescingEmbedder(wb.corpus.embedder)
        inner = wb.corpus.embedder
        wb.corpus.embedder = coalescer
        stats["batchq"] = coalescer

        def _undo_batchq():
            wb.corpus.embedder = inner

        undo.append(_undo_batchq)
    if "lpt" in names:
        max_turns = run.config.max_turns

        def turns_of(seed: int) -> int:
            return random.Random(seed).randint(1, max_turns)

        def reserve_longest_first():
            with run.db.write() as w:
                rows = w.execute("SELECT * FROM work_items WHERE run_id=? AND status='pending'",
                                 [run.run_id]).fetchall()
                if not rows:
                    return None
                row = max(rows, key=lambda r: (turns_of(r["seed"]), -r["slot"]))
                stamp = engine.now()
                w.execute("UPDATE work_items SET status='in_flight', attempts=attempts+1, reserved_at=?, "
                          "updated_at=? WHERE id=?", [stamp, stamp, row["id"]])
                item = dict(row)
                item["attempts"] += 1
                return item

        run._reserve = reserve_longest_first
    if "prefetch" in names:
        orig_take = engine.QuestionPool.take
        low_water = max(2, run.config.max_concurrency // 4)
        counters = {"prefetch_batches": 0}
        stats["prefetch"] = counters

        def take(self, still_needed, should_stop):
            with self._cond:
                if self._queue:
                    q = self._queue.popleft()
                    _maybe_prefetch(self)
                    return q
            q = orig_take(self, still_needed, should_stop)
            with self._cond:
                _maybe_prefetch(self)
            return q

        max_prefetch = max(1, run.config.max_concurrency // 6)

        def _maybe_prefetch(pool):  # called with pool._cond held
            while True:
                in_flight = getattr(pool, "_prefetch_in_flight", 0)
                surplus = len(pool._queue) + pool._coming - pool._waiting
                if in_flight >= max_prefetch or surplus >= low_water:
                    return
                # Questions nobody will use cost calls: only for items not yet reserved.
                if run._count("pending") <= len(pool._queue) + pool._coming:
                    return
                n = pool.per_call
                pool._coming += n
                pool._prefetch_in_flight = in_flight + 1
                counters["prefetch_batches"] += 1
                threading.Thread(target=_fill, args=(pool, n), name="question-prefetch", daemon=True).start()

        def _fill(pool, n):
            batch = []
            try:
                batch = pool._make_batch(n)
            except Exception:
                pass  # a failed prefetch only means a worker writes its own batch later
            finally:
                with pool._cond:
                    pool._coming -= n
                    pool._queue.extend(batch)
                    pool._prefetch_in_flight -= 1
                    pool._cond.notify_all()

        engine.QuestionPool.take = take
        undo.append(lambda: setattr(engine.QuestionPool, "take", orig_take))
    if "pacegate" in names:
        gate = run.gate
        cls = type("PacingAdaptiveGate", (_PacingMixin, type(gate)), {})
        gate.__class__ = cls
        gate._pace_init()
        stats["pacegate"] = gate

    def undo_all() -> None:
        for fn in reversed(undo):
            fn()

    return undo_all, stats
