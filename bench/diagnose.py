"""Where generation workers spend their time: wraps engine methods (in memory, restored afterwards; core files
are never changed) and adds up wall time per stage over the worker threads.

Only time spent on the worker threads counts (calls made by other threads, e.g. a prefetcher, do not).
Nested stages overlap: "question pool" contains the instruction calls a worker makes itself, and
"LLM call" contains "gate wait". Use :func:`breakdown` to get the exclusive shares.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, stage: str, seconds: float) -> None:
        # Only generation workers ("gen-N" threads) count: a worker's time is what the breakdown divides up.
        if not stage.startswith("run start") and not threading.current_thread().name.startswith("gen-"):
            return
        with self._lock:
            self.seconds[stage] += seconds
            self.calls[stage] += 1

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        fn = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if fn is None:
            return  # the engine changed under us: skip this stage rather than fail the benchmark
        clock = self

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.add(stage, time.perf_counter() - t)

        timed.__wrapped__ = fn
        setattr(owner, name, timed)
        self._undo.append((owner, name, fn))

    def wrap_gate_wait(self, gate_cls: Any) -> None:
        orig = gate_cls.__dict__.get("attempt")
        if orig is None:
            return
        clock = self

        @contextmanager
        def attempt(gate_self, priority=0.0):
            t = time.perf_counter()
            with orig(gate_self, priority):
                clock.add("gate wait", time.perf_counter() - t)
                yield

        setattr(gate_cls, "attempt", attempt)
        self._undo.append((gate_cls, "attempt", orig))

    def restore(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()


@contextmanager
def instrument_engine():
    """Instrument core.generation.engine's worker path for the duration of the block; yields the clock."""
    from core.generation import engine

    clock = StageClock()
    clock.wrap(engine.QuestionPool, "take", "question pool (wait + own instruction calls)")
    clock.wrap(engine.Simulator, "write_questions", "instruction call")
    clock.wrap(engine.Simulator, "retrieve", "retrieval (encode + search)")
    clock.wrap(engine.Simulator, "call", "LLM call (gate + HTTP + parse)")
    clock.wrap(engine.GenerationRun, "_reserve", "reserve item (SQLite)")
    clock.wrap(engine.GenerationRun, "_save", "save conversation (SQLite)")
    clock.wrap(engine.Retriever, "_load_snapshot", "run start: load vectors")
    clock.wrap_gate_wait(engine.AdaptiveGate)
    try:
        yield clock
    finally:
        clock.restore()


def breakdown(clock: StageClock, workers: int, wall_s: float, calls: int, latency: float) -> list[str]:
    """Lines: share of the workers' total time (workers x wall) per exclusive stage."""
    s = clock.seconds
    total = workers * wall_s
    llm = s.get("LLM call (gate + HTTP + parse)", 0.0)
    gate = s.get("gate wait", 0.0)
    pool = s.get("question pool (wait + own instruction calls)", 0.0)
    instr = s.get("instruction call", 0.0)
    server = clock.calls.get("LLM call (gate + HTTP + parse)", 0) * latency
    rows = [
        ("server latency (workers' calls x latency)", server),
        ("client + server CPU per call (LLM call - gate wait - latency)", llm - gate - server),
        ("gate wait", gate),
        ("question pool wait (others' instruction calls)", pool - instr),
        ("retrieval (encode + search)", s.get("retrieval (encode + search)", 0.0)),
        ("save conversation (SQLite)", s.get("save conversation (SQLite)", 0.0)),
        ("reserve item (SQLite)", s.get("reserve item (SQLite)", 0.0)),
    ]
    accounted = sum(v for _, v in rows)
    rows.append(("rest: prompt building, idle at start and tail", total - accounted))
    out = [f"    worker time {workers} x {wall_s:.2f} s = {total:.1f} s:"]
    for name, v in rows:
        out.append(f"      {name:62s} {v:7.2f} s  {100 * v / total:5.1f}%")
    out.append(f"      (run start, loading the vector snapshot: {s.get('run start: load vectors', 0.0):.2f} s; "
               f"instruction calls: {clock.calls.get('instruction call', 0)}, "
               f"retrievals: {clock.calls.get('retrieval (encode + search)', 0)})")
    return out
