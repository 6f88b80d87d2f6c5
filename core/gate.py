"""The run's call gate: calls in flight bounded, shrunk on 429s, paced to a learned quota, served by priority."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import RunStopped
from core.monitor import RunMonitor
from core.providers.base import CallGate


class AdaptiveGate(CallGate):
    """Bounds LLM calls in flight; halves the bound on 429s, grows it by ~1 per round trip on success.

    Shared by every worker of a run, so the whole run backs off together instead of each worker
    hammering the quota on its own. After a 429 that says when to come back (RetryInfo), every
    worker waits until then. ``stalled`` turns true when 429s continue and nothing has succeeded for
    ``stall_timeout_s``: the quota is really gone and the run should stop rather than spin.
    """

    def __init__(self, max_concurrency: int, rpm_limit: int = 0, stall_timeout_s: float = 120.0,
                 monitor: RunMonitor | None = None):
        super().__init__(rpm_limit)
        self.max_concurrency = max_concurrency
        self.limit = float(max_concurrency)
        self.in_flight = 0
        self.stall_timeout_s = stall_timeout_s
        self.monitor = monitor
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int]] = []  # calls waiting for a slot: (-priority, arrival)
        self._arrivals = itertools.count()
        self._paused_until = 0.0
        self._last_decrease = 0.0
        self._latency_ewma = 1.0
        self._last_success = time.monotonic()
        self._last_429 = 0.0
        self._streak: deque[float] = deque()  # success times since the last pause
        self.learned_quota: tuple[int, float] | None = None  # (requests, window seconds)
        self.cancelled = threading.Event()

    @contextmanager
    def attempt(self, priority: float = 0.0) -> Iterator[None]:
        """Hold one call slot for the block. Waiting calls get free slots highest ``priority`` first, then
        in arrival order: the engine ranks a conversation's calls by the calls it still has to make, so
        long conversations are not starved into the run's tail by short ones."""
        self._wait_for_rpm()
        with self._cond:
            ticket = (-priority, next(self._arrivals))
            heapq.heappush(self._queue, ticket)
            try:
                while True:
                    if self.cancelled.is_set():
                        raise RunStopped("cancelled")
                    wait = self._paused_until - time.monotonic()
                    if wait <= 0 and self.in_flight < max(1, int(self.limit)) and self._queue[0] == ticket:
                        break
                    self._cond.wait(timeout=min(max(wait, 0.05), 0.5))
            finally:
                if self._queue[0] == ticket:
                    heapq.heappop(self._queue)
                else:  # cancelled while queued behind others
                    self._queue.remove(ticket)
                    heapq.heapify(self._queue)
            self.in_flight += 1
            if self._queue and self.in_flight < max(1, int(self.limit)):
                self._cond.notify_all()  # the next in line fits too
            self._publish()
        started = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._latency_ewma = 0.8 * self._latency_ewma + 0.2 * (time.monotonic() - started)
                self._publish()
                self._cond.notify_all()

    def record_rate_limited(self, retry_after: float | None, kind: str = "rate_limited") -> None:
        super().record_rate_limited(retry_after, kind)
        if self.monitor:
            self.monitor.record_rate_limited(kind)
        with self._cond:
            t = time.monotonic()
            self._last_429 = t
            # One burst of 429s is one congestion signal: decrease at most once per round trip.
            if t - self._last_decrease >= max(self._latency_ewma, 0.2):
                self.limit = max(1.0, self.limit / 2)
                self._last_decrease = t
            if retry_after:
                resume_at = t + min(retry_after, 60.0)
                self._learn_quota(resume_at)
                self._paused_until = max(self._paused_until, resume_at)
            self._publish()

    def _learn_quota(self, resume_at: float) -> None:
        """A rate quota (N requests per window) is what a 429 with RetryInfo usually means.

        Halving calls in flight cannot prevent it: whatever is in flight when the window fills gets a
        429. So the first such 429 after a run of successes teaches the gate the quota (the successes
        since the last pause, over the time until the server said to come back) and from then on
        attempts are paced just under it, through the base gate's requests-per-window limiter.
        """
        if self.learned_quota is not None or len(self._streak) < 5 or resume_at <= self._streak[0]:
            return
        requests, window = len(self._streak), resume_at - self._streak[0]
        self.learned_quota = (requests, window)
        with self._lock:  # the base gate's limiter state
            self.window = window
            self.rpm_limit = max(1, int(requests * 0.95))
            self._sent = deque(list(self._streak)[-self.rpm_limit:])

    def record_success(self) -> None:
        super().record_success()
        with self._cond:
            self._last_success = time.monotonic()
            if self._paused_until and self._last_success >= self._paused_until:
                self._streak.clear()  # a new window of successes starts after a pause
                self._paused_until = 0.0
            self._streak.append(self._last_success)
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / max(self.limit, 1.0))
            self._publish()
            self._cond.notify_all()

    @property
    def stalled(self) -> bool:
        return (self._last_429 > self._last_success
                and time.monotonic() - self._last_success > self.stall_timeout_s)

    def _publish(self) -> None:
        if self.monitor:
            self.monitor.concurrency_limit = self.limit
            self.monitor.in_flight = self.in_flight

