"""The run's call gate: calls in flight bounded, paced to the rate quotas it meets, served by priority."""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.errors import RunStopped
from core.generation.monitor import RunMonitor
from core.providers.base import CallGate

# A 429 is evidence of a quota only in a cluster: at least this many of the last EVIDENCE_OF outcomes.
# One stray 429 in seven calls (an overloaded shard, a flaky proxy) reaches 6 of 8 about once per 5,000
# calls; a full quota window answers every call 429 and reaches it at once.
EVIDENCE_429S, EVIDENCE_OF = 6, 8
PACE_SHARE = 0.985  # pace just under the quota learned: a bit of slack for the server's clock and ours
STATED_SHARE = 0.99  # a quota whose size the server stated (quotaValue) needs slack only for the clocks
PROBE_FIRST = 0.1  # after a quiet window at the pace, probe 10% higher, then 20%, 40%, ... (a raised quota)
MIN_WINDOW_S, MAX_WINDOW_S = 1.0, 300.0
MAX_LAG_SHARE = 0.05  # the server may count a call this share of the window after we send it, at most (Pace.lag)
# Bare 429s (no RetryInfo) do not say when the quota's window reopens: after a cluster the gate holds every call
# and lets one through now and then, spaced by this share of the time since the window began (at least
# REOPEN_PROBE_MIN_S), so the window's length is known to within a few percent for a few dozen 429s.
REOPEN_PROBE_SHARE, REOPEN_PROBE_MIN_S = 0.05, 0.1


@dataclass
class Pace:
    """A learned quota on one metric (requests or tokens): at most ``limit`` units sent per ``window`` seconds."""

    metric: str
    limit: float
    window: float
    sent: deque[tuple[float, float]] = field(default_factory=deque)  # (send time, units)
    in_window: float = 0.0
    learned_at: float = 0.0
    probed_at: float = 0.0
    probe: float = PROBE_FIRST
    good_limit: float = 0.0  # the highest limit that ran a whole window without a 429 (set when learned)
    waited_at: float = 0.0  # last time a call had to wait for this pace (it binds)
    probe_failed_at: float = -1e9  # last time a probe above good_limit met a 429
    lag: float = 0.0  # how much later than our send the server counts a call (learned from RetryInfo, see _refund)

    def expire(self, t: float) -> None:
        while self.sent and t - self.sent[0][0] >= self.window + self.lag:
            self.in_window -= self.sent.popleft()[1]
        if not self.sent:
            self.in_window = 0.0

    def wait_for(self, units: float, t: float) -> float:
        """Seconds until ``units`` more fit in the window and the spacing (0: they fit now).

        Sends are also spread evenly (one call's share of the window apart): the server counts a call a
        little later than we send it, and a burst released at the instant our window frees would meet a
        server window that has not quite freed yet, a cluster of 429s; spread out, such a call is one 429.
        """
        self.expire(t)
        if not self.sent:
            return 0.0
        spaced = self.sent[-1][0] + self.sent[-1][1] * self.window / self.limit - t
        if self.in_window + units <= self.limit:
            return max(spaced, 0.0)
        over, freed = self.in_window + units - self.limit, 0.0
        for sent_at, amount in self.sent:
            freed += amount
            if freed >= over:
                return max(sent_at + self.window + self.lag - t, spaced, 0.001)
        return max(self.sent[-1][0] + self.window + self.lag - t, 0.001)


class AdaptiveGate(CallGate):
    """Bounds LLM calls in flight and paces them to the rate quotas (requests and tokens per window) it meets.

    Shared by every worker of a run, so the whole run backs off together instead of each worker hammering
    the quota on its own. A 429 on its own teaches nothing (the provider's retry waits as asked): a stray
    429 costs that one call a few seconds. A cluster of 429s (see EVIDENCE_429S) means a quota: the gate
    learns its window (from RetryInfo; without it, by holding calls and probing until one succeeds again,
    see REOPEN_PROBE_SHARE) and its size (the 429's quotaValue when stated, else what succeeded in that
    window, or the tokens it carried for a tokens-per-minute quota) and paces calls just under it.
    The learned pace is a hypothesis: a window at the pace without 429s probes it higher (the quota may
    have been raised), a new cluster lowers it again (the quota may have been cut), so it tracks a quota
    that changes mid-run. ``stalled`` turns true when 429s continue and nothing has succeeded for
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
        self._paused_until = 0.0  # kept for dashboards: until when the pace holds every call back
        self._last_decrease = 0.0
        self._latency_ewma = 1.0
        self._tokens_ewma = 0.0  # tokens per successful call: what a call will likely count against a TPM quota
        self._last_success = time.monotonic()
        self._last_429 = 0.0
        self._recent: deque[bool] = deque(maxlen=EVIDENCE_OF)  # last outcomes, True = 429
        self._successes: deque[tuple[float, int]] = deque()  # (time, tokens) of successes in the last MAX_WINDOW_S
        self._streak_start: float | None = None  # first success since the last quota evidence
        self._pending: tuple[str, float] | None = None  # evidence without RetryInfo: (metric, streak start)
        self._pending_since = 0.0  # when the cluster that left the window unknown came
        self._reopen_probe_at = 0.0  # while pending: when the next call may go out to see if the window reopened
        self._reopen_failed_at = 0.0  # while pending: the latest 429 (the window was still full then)
        self._quota_values: dict[str, float] = {}  # quota sizes the server stated (Gemini's quotaValue), by metric
        self._window_guess: float | None = None  # from the run's first 429 with RetryInfo (see record_rate_limited)
        self.quota_window: float = 60.0  # learned from the first cluster (the base gate's window is the rpm limit's)
        self._window_known = False
        self.paces: dict[str, Pace] = {}
        self._learned_at = 0.0
        self._held: list[tuple[Pace, tuple[float, float]]] = []  # charges of calls answered bare 429s (_refund)
        self._local = threading.local()  # this thread's latest attempt: when it passed the pace, what it was charged
        self.cancelled = threading.Event()

    @property
    def learned_quota(self) -> tuple[int, float] | None:
        """The learned requests quota as (requests, window seconds), or None (kept for callers and tests)."""
        pace = self.paces.get("requests")
        return (int(pace.limit), pace.window) if pace else None

    @contextmanager
    def attempt(self, priority: float = 0.0) -> Iterator[None]:
        """Hold one call slot for the block. Waiting calls get free slots highest ``priority`` first, then
        in arrival order: the engine ranks a conversation's calls by the calls it still has to make, so
        long conversations are not starved into the run's tail by short ones."""
        self._wait_for_rpm()
        self._wait_for_pace()
        self._local.started = time.monotonic()  # passed the pace: a 429 for a call from before it relearned is stale
        with self._cond:
            ticket = (-priority, next(self._arrivals))
            heapq.heappush(self._queue, ticket)
            try:
                while True:
                    if self.cancelled.is_set():
                        raise RunStopped("cancelled")
                    if self.in_flight < max(1, int(self.limit)) and self._queue[0] == ticket:
                        break
                    self._cond.wait(timeout=0.5)
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

    def _wait_for_pace(self) -> None:
        """Block until this call fits every learned pace, then count it against them.

        While a cluster of bare 429s left the window unknown, calls go out one at a time, spaced (see
        REOPEN_PROBE_SHARE): each is a probe of whether the window reopened."""
        self._local.charged = ()
        while self.paces or self._pending is not None:
            if self.cancelled.is_set():
                raise RunStopped("cancelled")
            with self._cond:
                t = time.monotonic()
                if self._pending is not None:
                    wait = self._reopen_probe_at - t
                    if wait <= 0:
                        self._reopen_probe_at = t + max(REOPEN_PROBE_MIN_S,
                                                        REOPEN_PROBE_SHARE * (t - self._pending[1]))
                        return
                    self._paused_until = self._reopen_probe_at
                    self._cond.wait(timeout=min(wait, 0.25))
                    continue
                units = {"requests": 1.0, "tokens": max(self._tokens_ewma, 1.0)}
                wait = max(p.wait_for(units[m], t) for m, p in self.paces.items())
                if wait <= 0:
                    charged = []
                    for m, p in self.paces.items():
                        entry = (t, units[m])
                        p.sent.append(entry)
                        p.in_window += units[m]
                        charged.append((p, entry))
                    self._local.charged = charged
                    return
                for p in self.paces.values():
                    p.waited_at = t
                self._paused_until = t + wait
            time.sleep(min(wait, 0.25))

    def record_rate_limited(self, retry_after: float | None, kind: str = "rate_limited",
                            metric: str | None = None, quota_value: float | None = None) -> None:
        super().record_rate_limited(retry_after, kind, metric, quota_value)
        if self.monitor:
            self.monitor.record_rate_limited(kind)
        with self._cond:
            t = time.monotonic()
            self._last_429 = t
            self._refund(t, retry_after)
            if self._pending is not None:
                # Waiting for a bare quota's window to reopen: this 429 says it had not yet, nothing more.
                self._reopen_failed_at = t
                return
            if quota_value and metric in ("requests", "tokens") and kind == "rate_limited":
                self._take_quota_value(metric, quota_value, t)
            if retry_after and self._window_guess is None and self._successes:
                # The first 429 of a run comes when the quota's first window fills, and RetryInfo says when
                # the window's oldest call (about the run's first success) leaves it. Later 429s cannot tell
                # where their window began: a tokens quota, met by calls of mixed sizes, answers 429s here
                # and there long before a cluster.
                self._window_guess = t + retry_after - self._successes[0][0]
            if getattr(self._local, "started", t) < self._learned_at:
                return  # sent before the pace was (re)learned: the answer says nothing about the new pace
            self._recent.append(True)
            for pace in self.paces.values():
                if pace.limit > pace.good_limit:
                    # A probe above the pace that held: back to it at once, and next time try halfway between.
                    pace.probe = max(PROBE_FIRST, (pace.limit / pace.good_limit - 1) / 2)
                    pace.limit, pace.probed_at, pace.probe_failed_at = pace.good_limit, t, t
            if kind != "rate_limited" or sum(self._recent) < EVIDENCE_429S:
                return  # a stray 429 (or a daily quota, which pacing cannot help): the retry waits as asked
            pace = self.paces.get(metric if metric in ("requests", "tokens") else "requests")
            if pace is not None and t - pace.probe_failed_at < pace.window:
                # The aftermath of a probe that overshot: a fixed window answers every call 429 until it ends,
                # a cluster that says nothing new (the pace is back where it held). A cut shows up again later.
                self._recent.clear()
                return
            metric = metric if metric in ("requests", "tokens") else "requests"
            self._recent.clear()  # one cluster is one piece of evidence
            # A cluster is also congestion: fewer calls in flight, but never fewer than a learned pace needs.
            if t - self._last_decrease >= max(self._latency_ewma, 0.2):
                self.limit = max(1.0, self._pace_needs(), self.limit / 2)
                self._last_decrease = t
            start = self._streak_start if self._streak_start is not None else (
                self._successes[0][0] if self._successes else None)
            self._streak_start = None
            if self._window_known:
                self._learn(metric, t, retry_after)
            elif retry_after and (self._window_guess or start is not None):
                # RetryInfo says when the window frees again: the window began with the first success counted.
                # A guess shorter than this wait came from a stray 429, not from a window filling.
                guess = self._window_guess if (self._window_guess or 0) >= retry_after else None
                self._set_window(guess or t + retry_after - (start if start is not None else t))
                self._learn(metric, t, retry_after)
            elif start is not None:
                # The window is known once calls succeed again: until then, probe for it one call at a time.
                self._pending, self._pending_since = (metric, start), t
                self._reopen_probe_at = t + max(REOPEN_PROBE_MIN_S, REOPEN_PROBE_SHARE * (t - start))
                self._reopen_failed_at = t
            self._publish()

    def _refund(self, t: float, retry_after: float | None) -> None:
        """This thread's call was just answered 429: its charge leaves the paces when the server has room again
        (caller holds the lock).

        The server did not count the call, so a pace that kept counting it until a window after it was sent would,
        after a probe that overshot a fixed window, hold the next window's first calls back for nothing (a tenth of
        a window after each probe). But dropping the charge at once sends the next call into a window the server
        still has full (its count and ours differ by clocks and token estimates): a cascade of 429s. So the charge
        stays until RetryInfo says the window frees, or, without it, until a call succeeds again."""
        for pace, entry in getattr(self._local, "charged", ()):
            if pace is not self.paces.get(pace.metric):
                continue
            if not retry_after:
                self._held.append((pace, entry))
                continue
            steady = pace.limit <= pace.good_limit and t - pace.probe_failed_at >= pace.window
            if steady and retry_after < MAX_LAG_SHARE * pace.window:
                # At a pace that held (no probe above it, not a probe's aftermath, where a fixed window answers 429
                # until it ends, near its end with short waits), our count had room and the server's frees an
                # instant later: it counts calls a little after we send them (the trip there, its clock). Each
                # time a call leaves our window the next would meet this again, so calls leave it that much later.
                pace.lag = min(max(pace.lag, 2 * retry_after), MAX_LAG_SHARE * pace.window)
            try:
                pace.sent.remove(entry)
            except ValueError:
                continue  # already out of the window
            # Kept as if sent a window before the server frees it (never later than it really was sent), in send
            # order: the pace expires its charges from the oldest.
            bisect.insort(pace.sent, (min(entry[0], t + retry_after - pace.window), entry[1]))
        self._local.charged = ()

    def _settle(self, tokens: int) -> None:
        """This thread's call succeeded: a tokens pace counts what it really used, not the estimate it was charged
        when sent (caller holds the lock). Estimates a little low, kept, pace the server over its quota: a 429
        now and then all run long."""
        for pace, entry in getattr(self._local, "charged", ()):
            if not tokens or pace is not self.paces.get("tokens"):
                continue
            try:
                index = pace.sent.index(entry)
            except ValueError:
                continue  # already out of the window
            pace.sent[index] = (entry[0], float(tokens))
            pace.in_window += tokens - entry[1]
        self._local.charged = ()

    def _release_held(self) -> None:
        """A call succeeded: the server has room again, so the charges of calls answered bare 429s leave the
        paces (caller holds the lock)."""
        for pace, entry in self._held:
            if pace is self.paces.get(pace.metric):
                try:
                    pace.sent.remove(entry)
                except ValueError:
                    continue
                pace.in_window = max(0.0, pace.in_window - entry[1])
        self._held.clear()

    def _take_quota_value(self, metric: str, value: float, t: float) -> None:
        """The server stated the quota's size: pace to it at once, up or down (caller holds the lock)."""
        self._quota_values[metric] = value
        pace = self.paces.get(metric)
        target = max(value * STATED_SHARE, 1.0)
        if pace is not None and abs(pace.good_limit - target) > 0.01 * target:
            pace.limit = pace.good_limit = target
            pace.probe, pace.probed_at = PROBE_FIRST, t

    def _set_window(self, seconds: float) -> None:
        self.quota_window = min(max(seconds, MIN_WINDOW_S), MAX_WINDOW_S)
        self._window_known = True

    def _learn(self, metric: str, t: float, retry_after: float | None, since: float | None = None) -> None:
        """Pace ``metric`` to what the quota let through in its window, just under it (caller holds the lock)."""
        window = self.quota_window
        # With RetryInfo the window's oldest call still counted leaves at t + retry_after: what succeeded
        # after t + retry_after - window is what the quota holds now (right after a cut too).
        if since is None:
            since = t - window + (min(retry_after, window) if retry_after else 0.0)
        counted = [(s, n) for s, n in self._successes if s > since]
        amount = float(len(counted) if metric == "requests" else sum(n for _, n in counted))
        pace = self.paces.get(metric)
        if self._quota_values.get(metric):
            target = self._quota_values[metric] * STATED_SHARE  # the server said how much
        elif pace is not None and amount >= pace.limit:
            # 429s while paced although as much went through as the pace allows: the quota was cut and the
            # window still holds calls from before the cut. Lower the pace; the next cluster refines it.
            target = pace.limit * 0.8
        else:
            target = amount * PACE_SHARE
        target = max(target, 1.0 if metric == "requests" else max(self._tokens_ewma, 1.0))
        fresh = Pace(metric, target, window, learned_at=t, probed_at=t, waited_at=t, good_limit=target,
                     lag=pace.lag if pace is not None else 0.0)  # the trip to the server did not change
        # What already went out in the window counts: the pace holds calls back until the window frees.
        for s, n in self._successes:
            if s > t - window:
                units = 1.0 if metric == "requests" else float(n)
                fresh.sent.append((s, units))
                fresh.in_window += units
        self.paces[metric] = fresh
        self._learned_at = t
        # Clusters halved the calls in flight; the pace needs enough of them to be met at this latency.
        self.limit = min(float(self.max_concurrency), max(self.limit, self._pace_needs()))

    def _pace_needs(self) -> float:
        """Calls in flight a learned requests pace needs to be met at the current latency (with room)."""
        pace = self.paces.get("requests")
        return pace.limit / pace.window * self._latency_ewma * 2 if pace else 0.0

    def record_success(self, tokens: int = 0) -> None:
        super().record_success(tokens)
        with self._cond:
            t = time.monotonic()
            self._last_success = t
            self._settle(tokens)
            self._release_held()
            self._recent.append(False)
            self._successes.append((t, tokens))
            while self._successes and t - self._successes[0][0] > MAX_WINDOW_S:
                self._successes.popleft()
            if tokens:
                self._tokens_ewma = tokens if not self._tokens_ewma else 0.9 * self._tokens_ewma + 0.1 * tokens
            if self._streak_start is None:
                self._streak_start = t
            if self._pending is not None and getattr(self._local, "started", 0.0) >= self._pending_since:
                # 429s without RetryInfo until now, and a call sent since succeeded: the quota's window reopened
                # between the last 429 and now. (A call sent before the cluster may still succeed after it.)
                metric, start = self._pending
                self._pending = None
                self._set_window((self._reopen_failed_at + t) / 2 - start)
                # What the window held is what succeeded from its first call on (a cold start's first calls
                # come back together: a window measured a little short must not miss them).
                self._learn(metric, t, None, since=start - 1e-6)
            for pace in self.paces.values():
                self._probe(pace, t)
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / max(self.limit, 1.0))
            self._publish()
            self._cond.notify_all()

    def _probe(self, pace: Pace, t: float) -> None:
        """A whole window at the pace without a 429 cluster: the quota may have grown, so try a bit more.

        Each quiet window doubles the step (10%, 20%, 40%, ...), so a doubled quota is found in four
        windows; a 429 during a probe goes back to the last limit that held (a spread-out pace meets a
        quota it overshoots with single 429s, not clusters). A pace that did not hold any call back
        during the window is not raised: it was not what limited the run.
        """
        if t - pace.probed_at < pace.window:
            return
        if self._last_429 < pace.probed_at and t - pace.waited_at < pace.window:
            pace.good_limit = pace.limit
            pace.limit *= 1 + pace.probe
            pace.probe = min(pace.probe * 2, 1.0)
        pace.probed_at = t

    @property
    def stalled(self) -> bool:
        return (self._last_429 > self._last_success
                and time.monotonic() - self._last_success > self.stall_timeout_s)

    def _publish(self) -> None:
        if self.monitor:
            self.monitor.concurrency_limit = self.limit
            self.monitor.in_flight = self.in_flight
