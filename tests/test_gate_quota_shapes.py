"""The call gate learns a quota's size in every shape a 429 comes in (quotaValue + RetryInfo, RetryInfo only,
bare) on a sliding and on a fixed window. Real google-genai client (through GeminiProvider) against the fake
Gemini; windows of 2 s so a case takes seconds. bench/quota.py measures the same at 10 s windows."""

import pytest

from fakes.gemini import FakeGemini
from fakes.gemini_process import FakeGeminiProcess
from core.generation.gate import MAX_LAG_SHARE, STATED_SHARE, AdaptiveGate
from tests.test_gate import checked_twice, drive, drive_together, in_range

# Real windows on the clock: a late wakeup under load reads as a server that answered late.
pytestmark = pytest.mark.timed

QUOTA, WINDOW = 20, 2.0


SHAPES, WINDOW_KINDS = ("value", "retry_info", "bare"), ("sliding", "fixed")


def _shape_case(shape, window_kind):
    with FakeGemini(latency=0.05, rpm_quota=QUOTA, rpm_window=WINDOW, quota_shape=shape,
                    window_kind=window_kind) as fake:
        gate = AdaptiveGate(max_concurrency=8)
        at_3s = {}
        ok = drive(fake, gate, 9.0, changes=[(3.0, lambda: at_3s.update(fake.by_status))])
        return fake, gate, ok, at_3s


@pytest.fixture(scope="module")
def shape_runs():
    """The six shape x window cases driven side by side (9 s instead of 54 s: each waits on its windows)."""
    return drive_together({(s, w): (lambda s=s, w=w: _shape_case(s, w)) for s in SHAPES for w in WINDOW_KINDS})


@pytest.mark.parametrize("window_kind", WINDOW_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_quota_is_learned_and_used_in_every_429_shape(shape, window_kind, shape_runs):
    def check(fake, gate, ok, at_3s):
        pace = gate.paces["requests"]
        assert 1.6 <= pace.window <= 2.6, (shape, window_kind, pace.window)
        # The pace may stand a probe above what held (+10%), never far under the quota.
        assert 0.85 * QUOTA <= pace.good_limit <= 1.1 * QUOTA, (shape, window_kind, pace.good_limit, pace.limit)
        # After the cold start (the first window and, for bare 429s, the wait for it to reopen): the quota used,
        # and few 429s.
        assert in_range(ok, 3.0, 9.0) >= 0.85 * QUOTA * 3, (shape, window_kind, in_range(ok, 3.0, 9.0))
        late_429 = fake.by_status[429] - at_3s.get(429, 0)
        assert late_429 <= 0.1 * (fake.by_status[200] - at_3s.get(200, 0)), (shape, window_kind, late_429)

    checked_twice(shape_runs[(shape, window_kind)], lambda: _shape_case(shape, window_kind), check)


def test_bare_429s_hold_calls_until_the_window_reopens():
    """Without RetryInfo the gate does not let every call find out for itself: it sends one now and then."""
    with FakeGemini(latency=0.02, rpm_quota=QUOTA, rpm_window=3.0, quota_shape="bare") as fake:
        gate = AdaptiveGate(max_concurrency=8)
        seen = {}
        drive(fake, gate, 4.0, changes=[(0.8, lambda: seen.update(early=dict(fake.by_status))),
                                        (2.8, lambda: seen.update(late=dict(fake.by_status)))])
        # Between 0.8 s and 2.8 s the window is full: 8 workers unpaced would send ~100 calls, all 429.
        probes = seen["late"].get(429, 0) - seen["early"].get(429, 0)
        assert 3 <= probes <= 25, probes
        assert 2.6 <= gate.paces["requests"].window <= 3.4, gate.paces["requests"].window


def test_a_stated_quota_value_sets_the_pace_at_once_up_and_down():
    gate = AdaptiveGate(max_concurrency=8)
    for _ in range(30):
        gate.record_success()
    for _ in range(6):  # a cluster: the window from RetryInfo, the size from quotaValue (not from what got through)
        gate.record_rate_limited(1.0, metric="requests", quota_value=50)
    pace = gate.paces["requests"]
    assert pace.limit == pytest.approx(50 * STATED_SHARE)
    gate.record_rate_limited(1.0, metric="requests", quota_value=20)  # one 429 saying the quota was cut
    assert gate.paces["requests"].limit == pytest.approx(20 * STATED_SHARE)
    gate.record_rate_limited(1.0, metric="requests", quota_value=80)  # or raised
    assert gate.paces["requests"].limit == pytest.approx(80 * STATED_SHARE)


def test_fake_in_its_own_process_counts_quota_429s_in_each_shape():
    """The benchmark's server process: the same quota and shapes, driven over HTTP, stats read back."""
    from core.config import Settings
    from core.providers.base import LLMRequest, Message
    from core.providers.gemini import GeminiProvider

    for shape in ("value", "retry_info", "bare"):
        with FakeGeminiProcess(rpm_quota=2, rpm_window=30.0, quota_shape=shape, window_kind="fixed") as fake:
            settings = Settings(gemini_api_key="AIzaSy-gate-test-key-00000000000000000",
                                gemini_base_url=fake.base_url, gemini_max_retries=0)
            provider = GeminiProvider(settings)
            provider.generate(LLMRequest([Message("user", "one")]))
            provider.generate(LLMRequest([Message("user", "two")]))
            with pytest.raises(Exception) as caught:
                provider.generate(LLMRequest([Message("user", "three")]))
            provider.close()
            error = caught.value
            assert getattr(error, "status", None) == 429, (shape, error)
            assert (error.quota_value == 2) == (shape == "value"), (shape, error.quota_value)
            assert (error.retry_after is not None) == (shape != "bare"), (shape, error.retry_after)
            if shape != "bare":
                assert 25 <= error.retry_after <= 30  # a fixed window: until the next one starts
            stats = fake.stats()
            assert [a[1] for a in stats["answers"]] == [200, 200, 429], shape
            assert stats["by_status"] == {"200": 2, "429": 1}, shape


def _learned_gate(metric: str = "requests", tokens: int = 0) -> tuple[AdaptiveGate, object]:
    """A gate with a ``metric`` pace learned (window from RetryInfo), emptied and widened so calls pass at once."""
    gate = AdaptiveGate(max_concurrency=8)
    for _ in range(30):
        gate.record_success(tokens=tokens)
    for _ in range(6):
        gate.record_rate_limited(5.0, metric=metric)
    pace = gate.paces[metric]
    pace.limit = pace.good_limit = 1000.0 * max(tokens, 1)  # room: the learned pace would hold them
    pace.sent.clear()
    pace.in_window = 0.0
    return gate, pace


def test_a_call_answered_429_leaves_the_pace_when_the_server_has_room_again():
    """The server did not count a call it answered 429: the pace counts it only until the server has room again
    (RetryInfo's wait, or without it the next success), not a whole window, or after a probe that overshot a
    fixed window the next window's first calls are held back for nothing."""
    gate, pace = _learned_gate()
    with gate.attempt():
        pass
    gate.record_success()
    with gate.attempt():
        pass
    assert pace.in_window == 2 and len(pace.sent) == 2
    sent_at = pace.sent[-1][0]
    gate.record_rate_limited(0.5, metric="requests")  # the second call's answer: the window frees in 0.5 s
    # Still counted, but it leaves the window in ~0.5 s instead of a window (~5 s) after it was sent.
    assert pace.in_window == 2 and len(pace.sent) == 2
    leaves = pace.sent[0][0] + pace.window + pace.lag  # kept in send order: the moved charge is now the oldest
    assert leaves - sent_at < 1.0 and sent_at not in [e[0] for e in pace.sent], pace.sent
    gate.record_rate_limited(0.5, metric="requests")  # a retry's 429 without a new pass charges nothing back
    assert pace.in_window == 2 and len(pace.sent) == 2

    # Bare 429s: the charge stays until a call succeeds again (the server had room then).
    gate, pace = _learned_gate()
    with gate.attempt():
        pass
    gate.record_rate_limited(None, metric="requests")
    assert pace.in_window == 1
    with gate.attempt():
        pass
    assert pace.in_window == 2
    gate.record_success()  # this thread's second call: its success frees the held charge and keeps its own
    assert pace.in_window == 1 and len(pace.sent) == 1
    gate.record_rate_limited(None, metric="requests")  # no call of this thread in flight: its success stays counted
    gate.record_success()
    assert pace.in_window == 1 and len(pace.sent) == 1


def test_a_tokens_pace_counts_what_a_call_used_and_learns_the_servers_lag():
    """A call is charged the tokens estimate when sent and what it used once answered; a 429 that says the window
    frees an instant later teaches how much later than us the server counts (Pace.lag)."""
    gate, pace = _learned_gate("tokens", tokens=100)
    with gate.attempt():
        pass
    assert pace.in_window == pytest.approx(100.0)  # the estimate
    gate.record_success(tokens=130)
    assert pace.in_window == pytest.approx(130.0) and pace.sent[-1][1] == 130.0  # what it used
    assert pace.lag == 0.0
    with gate.attempt():
        pass
    gate.record_rate_limited(0.004, metric="tokens")  # room again in 4 ms: we sent a hair early
    assert pace.lag == pytest.approx(0.008)
    oldest, count = pace.sent[0][0], len(pace.sent)
    pace.expire(oldest + pace.window + 0.001)
    assert len(pace.sent) == count  # still counted a window + 1 ms after it was sent
    pace.expire(oldest + pace.window + 0.009)
    assert len(pace.sent) == count - 1
    with gate.attempt():
        pass
    gate.record_rate_limited(0.04 * pace.window, metric="tokens")  # twice that is over the bound: the bound
    assert pace.lag == pytest.approx(MAX_LAG_SHARE * pace.window)
    with gate.attempt():
        pass
    gate.record_rate_limited(30.0, metric="tokens")  # a long wait is no clock skew: the lag stays
    assert pace.lag == pytest.approx(MAX_LAG_SHARE * pace.window)


