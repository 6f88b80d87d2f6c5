"""The run's shared pool of opening questions, kept a little ahead of the workers that take them."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from core.errors import RunStopped
from core.generation.simulator import Question


class QuestionPool:
    """Questions shared by workers: one instruction call feeds several conversations.

    A worker that finds the pool empty writes a new batch only if no batch already in progress
    will cover it, so 32 workers starting together do not make 32 instruction calls. Once the run
    is going, the pool stays a few questions ahead (``low_water``) with background instruction calls
    (at most ``max_prefetch`` at once), so a worker rarely waits for someone else's instruction call.
    Background calls never ask for more questions than the open work items still lack (``unasked``);
    what a stopped run did not use is handed back by ``close`` for the run to keep.
    """

    def __init__(self, make_batch: Callable[[int], list[Question]], per_call: int,
                 unasked: Callable[[], int] = lambda: 0, low_water: int = 0, max_prefetch: int = 0):
        self._make_batch = make_batch
        self.per_call = per_call
        self._unasked = unasked
        self.low_water = low_water
        self.max_prefetch = max_prefetch
        self._queue: deque[Question] = deque()
        self._cond = threading.Condition()
        self._coming = 0
        self._waiting = 0
        self._prefetching = 0
        self._prefetchers: list[threading.Thread] = []
        self._closed = False
        self.prefetched_batches = 0

    def take(self, still_needed: Callable[[], int], should_stop: Callable[[], bool]) -> Question:
        with self._cond:
            while True:
                if self._queue:
                    question = self._queue.popleft()
                    self._prefetch_locked()
                    return question
                if should_stop():
                    raise RunStopped("cancelled")
                if self._coming > self._waiting:
                    self._waiting += 1
                    self._cond.wait(timeout=0.5)
                    self._waiting -= 1
                    continue
                n = max(1, min(self.per_call, still_needed()))
                self._coming += n
                break
        try:
            batch = self._make_batch(n)
        finally:
            with self._cond:
                self._coming -= n
                self._cond.notify_all()
        with self._cond:
            mine, rest = batch[0], batch[1:]
            self._queue.extend(rest)
            self._prefetch_locked()
            self._cond.notify_all()
        return mine

    def prime(self, questions: int) -> None:
        """At run start, ask for enough questions for the first two waves of conversations at once.

        Until the first questions come back, no conversation can start and most call slots would sit
        empty; instruction calls for the second wave fill them instead of taking slots later.
        """
        with self._cond:
            lacking = min(questions, self._unasked()) - self._coming
            while lacking > 0 and self._start_fill_locked(min(self.per_call, lacking)):
                lacking -= min(self.per_call, lacking)

    def _prefetch_locked(self) -> None:
        """Start background instruction calls while the pool runs low (called with ``_cond`` held)."""
        if self._prefetching >= self.max_prefetch or len(self._queue) + self._coming - self._waiting >= self.low_water:
            return
        lacking = self._unasked() - len(self._queue) - self._coming  # one count per take, not per batch
        while (lacking > 0 and self._prefetching < self.max_prefetch
               and len(self._queue) + self._coming - self._waiting < self.low_water
               and self._start_fill_locked(min(self.per_call, lacking))):
            lacking -= min(self.per_call, lacking)

    def _start_fill_locked(self, n: int) -> bool:
        """Start one background batch of ``n``; False once the pool is closed."""
        if self._closed:
            return False
        thread = threading.Thread(target=self._fill, args=(n,), name="question-prefetch", daemon=True)
        thread.start()  # _fill takes _cond, held here, before it touches the counters
        self._prefetchers.append(thread)
        self._coming += n
        self._prefetching += 1
        self.prefetched_batches += 1
        return True

    def _fill(self, n: int) -> None:
        batch: list[Question] = []
        try:
            batch = self._make_batch(n)
        except Exception:
            pass  # the pool runs dry, a worker writes its own batch and any lasting error surfaces there
        finally:
            with self._cond:
                self._coming -= n
                self._prefetching -= 1
                self._queue.extend(batch)
                self._cond.notify_all()

    def close(self) -> list[Question]:
        """No more prefetching; waits for background batches to end (on cancel, calls still waiting for a
        slot end at once; calls in flight finish or fail as they would).

        Returns the questions nobody took, so a run that stops early can keep what it paid for.
        """
        with self._cond:
            self._closed = True
            threads, self._prefetchers = self._prefetchers, []
        for thread in threads:
            thread.join()
        with self._cond:
            left, self._queue = list(self._queue), deque()
        return left


