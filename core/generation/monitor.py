"""Run metrics and alerts: generation time, success and error rate, tokens, turn counts, 429s, concurrency.

The engine feeds a :class:`RunMonitor`; it persists snapshots to the run row and a JSONL log, and
raises alerts (stored as events, printed by the CLI, shown in the UI) when a threshold is crossed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AlertThresholds:
    max_error_rate: float = 0.25  # failed conversation attempts / attempts, after min_samples
    max_rate_limited_share: float = 0.3  # 429s / LLM calls
    max_mean_call_latency_s: float = 30.0
    stall_seconds: float = 120.0  # no conversation saved for this long while the run is live
    min_samples: int = 5


@dataclass
class Alert:
    name: str
    message: str
    ts: float = field(default_factory=time.time)


class RunMonitor:
    """Thread-safe counters for one run, with alerting. ``on_alert`` callbacks get each new alert once."""

    def __init__(self, run_id: str, target: int, thresholds: AlertThresholds | None = None,
                 log_dir: Path | None = None, on_alert: list[Callable[[Alert], None]] | None = None):
        self.run_id = run_id
        self.target = target
        self.thresholds = thresholds or AlertThresholds()
        self.on_alert = list(on_alert or [])
        self._lock = threading.Lock()
        self.started = time.time()
        self.saved = 0
        self.saved_before = 0  # saved by earlier sessions of a resumed run
        self.failed_attempts = 0
        self.failed_final = 0
        self.calls = 0
        self.call_errors: Counter[str] = Counter()
        self.rate_limited = 0
        self.quota_day_hit = False  # a daily quota ran out: per-minute advice would be wrong
        self.rejections: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.thinking_tokens = 0
        self.call_latency_total_s = 0.0
        self.turn_counts: Counter[int] = Counter()
        self.saved_times: list[float] = []
        self.concurrency_limit = 0.0
        self.in_flight = 0
        self.alerts: list[Alert] = []
        self._alerted: set[str] = set()
        self.log_path = (log_dir / f"run-{run_id}.jsonl") if log_dir else None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def record_call(self, latency_s: float, prompt: int, completion: int, thinking: int) -> None:
        with self._lock:
            self.calls += 1
            self.call_latency_total_s += latency_s
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.thinking_tokens += thinking

    def record_call_error(self, kind: str) -> None:
        with self._lock:
            self.call_errors[kind] += 1

    def record_rate_limited(self, kind: str = "rate_limited") -> None:
        with self._lock:
            self.rate_limited += 1
            self.quota_day_hit = self.quota_day_hit or kind == "quota_day"

    def record_saved(self, turns: int) -> None:
        with self._lock:
            self.saved += 1
            self.turn_counts[turns] += 1
            self.saved_times.append(time.time())

    def record_rejection(self, reason: str) -> None:
        """A reply the checks turned down (cut off, degenerate, off the briefing): retried, and counted here."""
        with self._lock:
            self.rejections[reason] += 1

    def record_failed(self, final: bool) -> None:
        with self._lock:
            self.failed_attempts += 1
            self.failed_final += int(final)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            elapsed = max(time.time() - self.started, 1e-6)
            attempts = self.saved + self.failed_attempts
            turns = sum(self.turn_counts.values())
            return {
                "run_id": self.run_id, "target": self.target, "saved": self.saved + self.saved_before,
                "saved_this_session": self.saved, "failed_attempts": self.failed_attempts,
                "failed": self.failed_final, "elapsed_s": round(elapsed, 2),
                "conversations_per_min": round(self.saved / elapsed * 60, 2),
                "success_rate": round(self.saved / attempts, 4) if attempts else None,
                "error_rate": round(self.failed_attempts / attempts, 4) if attempts else None,
                "calls": self.calls, "call_errors": dict(self.call_errors), "rate_limited": self.rate_limited,
                "mean_call_latency_s": round(self.call_latency_total_s / self.calls, 3) if self.calls else None,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "thinking_tokens": self.thinking_tokens,
                "tokens_per_conversation": round((self.prompt_tokens + self.completion_tokens
                                                  + self.thinking_tokens) / self.saved, 1) if self.saved else None,
                "turn_counts": {str(k): v for k, v in sorted(self.turn_counts.items())},
                "mean_turns": round(sum(k * v for k, v in self.turn_counts.items()) / turns, 2) if turns else None,
                "concurrency_limit": round(self.concurrency_limit, 2), "in_flight": self.in_flight,
                "alerts": [asdict(a) for a in self.alerts],
                "rejections": dict(self.rejections.most_common()),
            }

    def check_alerts(self) -> list[Alert]:
        """Evaluate thresholds; returns (and dispatches) alerts raised for the first time."""
        t = self.thresholds
        snap = self.snapshot()
        new: list[Alert] = []
        attempts = self.saved + self.failed_attempts
        if attempts >= t.min_samples and (snap["error_rate"] or 0) > t.max_error_rate:
            new.append(Alert("error_rate", f"{snap['error_rate']:.0%} of conversation attempts failed "
                                           f"(threshold {t.max_error_rate:.0%}); see the run's errors."))
        # A daily quota's 429s stop the run with a reason that says when it resets; this alert is about a
        # per-minute quota, which the run copes with by itself.
        if (self.calls >= t.min_samples and not self.quota_day_hit
                and self.rate_limited / max(self.calls, 1) > t.max_rate_limited_share):
            new.append(Alert("rate_limited", f"{self.rate_limited} of {self.calls} calls were answered 429 (a "
                                             "rate quota): the run waits as each 429 asks, learns the quota (requests "
                                             "or tokens per window) from a cluster of them and paces its calls under "
                                             "it, so it goes on at the quota's speed; set GROUNDWORK_RPM_LIMIT to "
                                             "the quota to avoid the 429s."))
        if (snap["mean_call_latency_s"] or 0) > t.max_mean_call_latency_s:
            new.append(Alert("latency", f"mean LLM call latency {snap['mean_call_latency_s']} s exceeds "
                                        f"{t.max_mean_call_latency_s} s."))
        last = self.saved_times[-1] if self.saved_times else self.started
        if time.time() - last > t.stall_seconds:
            new.append(Alert("stalled", f"no conversation saved for {time.time() - last:.0f} s."))
        fresh = []
        for a in new:
            if a.name not in self._alerted:
                self._alerted.add(a.name)
                self.alerts.append(a)
                fresh.append(a)
                for cb in self.on_alert:
                    cb(a)
        return fresh

    def write_log(self) -> None:
        if self.log_path:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"ts": time.time(), **self.snapshot()}) + "\n")
