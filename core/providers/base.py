"""The one small interface every LLM provider implements, and the errors it raises.

Messages in (role/content list + system prompt + sampling settings + optional JSON schema); text,
token usage, latency and finish reason out. Providers are safe to call from many threads at once.
Every HTTP attempt passes through a :class:`CallGate`, which is how the generation engine paces
requests (requests per minute) and learns of every 429 (adaptive concurrency).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import GroundworkError

logger = logging.getLogger(__name__)


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass
class LLMRequest:
    messages: list[Message]
    system: str = ""
    temperature: float = 0.7
    max_tokens: int = 1024
    json_schema: dict[str, Any] | None = None  # structured output: the reply text is JSON for this schema
    seed: int | None = None
    priority: float = 0.0  # when calls queue for a slot at the gate, higher goes first (the engine's scheduling)


@dataclass
class LLMResult:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    thinking_tokens: int = 0
    total_tokens: int = 0
    latency_ms: int = 0
    finish_reason: str = "STOP"
    attempts: int = 1

    def json(self) -> Any:
        """The reply parsed as JSON (structured output), or an :class:`LLMError` saying it was not."""
        import json

        try:
            return json.loads(self.text)
        except (json.JSONDecodeError, TypeError):
            raise LLMError(f"The model was asked for JSON but replied with something else: "
                           f"{self.text[:200]!r}", kind="malformed", retryable=True) from None


class LLMError(GroundworkError):
    """An LLM call failed. ``kind`` says why; ``retryable`` says whether trying again can help.

    kinds: auth, not_found, bad_request, no_key, rate_limited, quota_day, server, timeout,
    unreachable, malformed, empty, safety, recitation, max_tokens.
    """

    def __init__(self, message: str, kind: str, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None, quota_metric: str | None = None,
                 quota_value: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.quota_metric = quota_metric  # on a 429: "requests" or "tokens" when the server said which quota
        self.quota_value = quota_value  # on a 429: the quota's size when the server said it (Gemini's quotaValue)


class QuotaExhaustedError(LLMError):
    """A quota that will not come back soon (per day, or 429s outlasting the retries): stop the run."""


class LLMProvider(Protocol):
    name: str
    model: str

    def generate(self, request: LLMRequest) -> LLMResult: ...

    def close(self) -> None: ...


class CallGate:
    """Paces every HTTP attempt of a provider. The base gate only applies a requests-per-minute limit.

    The generation engine passes a subclass that also bounds calls in flight and shrinks that bound
    on 429s (see ``core.generation.engine``). One gate is shared by all workers of a run.
    """

    def __init__(self, rpm_limit: int = 0, window: float = 60.0):
        self.rpm_limit = rpm_limit
        self.window = window  # seconds; tests shrink it
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self.rate_limited_count = 0
        self.success_count = 0

    @contextmanager
    def attempt(self, priority: float = 0.0) -> Iterator[None]:
        self._wait_for_rpm()
        yield

    def _wait_for_rpm(self) -> None:
        if self.rpm_limit <= 0:
            return
        while True:
            with self._lock:
                t = time.monotonic()
                while self._sent and t - self._sent[0] >= self.window:
                    self._sent.popleft()
                if len(self._sent) < self.rpm_limit:
                    self._sent.append(t)
                    return
                wait = self.window - (t - self._sent[0])
            time.sleep(min(max(wait, 0.01), 1.0))

    def record_rate_limited(self, retry_after: float | None, kind: str = "rate_limited",
                            metric: str | None = None, quota_value: float | None = None) -> None:
        """A 429; ``kind`` is rate_limited (a per-minute quota) or quota_day (gone until it resets); ``metric``
        says which quota when the server told ("requests" or "tokens"), else None; ``quota_value`` its size
        when the server told."""
        with self._lock:
            self.rate_limited_count += 1

    def record_success(self, tokens: int = 0) -> None:
        """A call succeeded; ``tokens`` it used (prompt, output and thinking) count against a tokens quota."""
        with self._lock:
            self.success_count += 1


@dataclass
class ProviderInfo:
    """What the UI shows about a provider: name, model, and a caveat when it is a tiny demo model."""

    name: str
    model: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetryPolicy:
    """How a provider retries one call: exponential backoff with jitter; server-requested waits honoured but capped.

    Tests shrink ``backoff_base``, ``max_backoff`` and ``max_retry_wait`` so retries take milliseconds.
    """

    max_retries: int = 5
    backoff_base: float = 1.0  # seconds before the first retry, before jitter
    max_backoff: float = 30.0  # cap on one exponential backoff
    max_retry_wait: float = 90.0  # cap on a wait the server asks for (RetryInfo, Retry-After)

    def wait_before(self, retry: int, error: LLMError) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based) after ``error``."""
        if error.retry_after is not None:
            # Up to 10% extra so workers told the same delay do not all come back at the same instant.
            return min(error.retry_after, self.max_retry_wait) * random.uniform(1.0, 1.1)
        backoff = min(self.max_backoff, self.backoff_base * 2 ** (retry - 1))
        return random.uniform(backoff / 2, backoff)


def call_with_retries(attempt: Callable[[], LLMResult], gate: CallGate, policy: RetryPolicy,
                      label: str, priority: float = 0.0) -> LLMResult:
    """Run ``attempt`` inside ``gate.attempt()`` until it succeeds, retrying errors marked ``retryable``.

    Every 429 is reported to the gate (so adaptive concurrency can back off) and every success too. Sleeps
    happen outside the gate, so a waiting worker does not hold a slot.

    Args:
        attempt: one HTTP call that returns a result or raises :class:`LLMError`.
        gate: the run's call gate.
        policy: retry counts and waits.
        label: names the provider and model in log lines and messages, e.g. "Gemini gemini-2.5-flash".
        priority: passed to the gate (the request's ``priority``).

    Returns:
        The result, with ``attempts`` set and ``latency_ms`` of the successful attempt.

    Raises:
        QuotaExhaustedError: 429s outlasted the retries, or a quota that will not come back soon.
        LLMError: any other failure, at once when not retryable, else after the last retry.
    """
    retries = 0
    while True:
        try:
            with gate.attempt(priority):
                started = time.monotonic()  # after the gate: pacing waits are not the model's latency
                result = attempt()
        except LLMError as error:
            if error.kind in ("rate_limited", "quota_day"):
                gate.record_rate_limited(error.retry_after, kind=error.kind, metric=error.quota_metric,
                                         quota_value=getattr(error, "quota_value", None))
            if not error.retryable:
                raise
            if retries >= policy.max_retries:
                raise _gave_up(error, retries, label) from None
            retries += 1
            wait = policy.wait_before(retries, error)
            # Under a quota, 429s are routine and the gate and the run monitor count them (an alert fires
            # when their share is high); a warning line per retry would bury everything else in the log.
            level = logging.INFO if error.kind == "rate_limited" else logging.WARNING
            logger.log(level, "%s: %s; retry %d of %d in %.1f s", label, str(error).rstrip("."), retries,
                       policy.max_retries, wait)
            time.sleep(wait)
            continue
        gate.record_success(result.total_tokens or result.prompt_tokens + result.completion_tokens
                            + result.thinking_tokens)
        result.attempts = retries + 1
        result.latency_ms = int((time.monotonic() - started) * 1000)
        return result


def _gave_up(error: LLMError, retries: int, label: str) -> LLMError:
    tries = f"{retries + 1} attempt{'s' if retries else ''}"
    if error.kind == "rate_limited":
        return QuotaExhaustedError(
            f"{label} kept answering 429 (a per-minute rate limit) for {tries}, waiting as asked each time. The run "
            f"already cuts its calls in flight on bursts of 429s and paces them to the quota it learns; it stops only "
            f"if no call gets through for a while. Setting GROUNDWORK_RPM_LIMIT to the quota paces it from the start.",
            kind="rate_limited", retryable=True, status=error.status, retry_after=error.retry_after,
            quota_metric=error.quota_metric, quota_value=error.quota_value)
    return LLMError(f"{error} (gave up after {tries})", kind=error.kind, retryable=True, status=error.status,
                    retry_after=error.retry_after)


def until_pacific_midnight(now: "datetime | None" = None) -> str:
    """When a daily quota that resets at midnight Pacific time (Gemini's) is back: "in 7 h 5 min, 08:00 UTC"."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        pacific = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no tz database on this machine: the plain rule still holds
        return "that is 07:00 or 08:00 UTC"
    now = (now or datetime.now(timezone.utc)).astimezone(pacific)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=pacific)
    left = int((midnight - now).total_seconds() // 60)
    return f"in {left // 60} h {left % 60} min, at {midnight.astimezone(timezone.utc):%H:%M} UTC"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret value replaced by ``***`` (longest first, so overlaps go too).

    Here, beside the interface every provider implements, so providers use it without importing the registry
    that imports them."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
