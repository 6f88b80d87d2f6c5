"""The call gate under quotas that behave like Gemini's: requests and tokens per window, with and without
RetryInfo, limits that change mid-run, and stray 429s with no quota behind them. Real google-genai client
against the fake Gemini server; windows of 2 s so each case takes seconds."""

import threading
import time

import pytest

from core.config import Settings
from fakes.gemini import Fault, FakeGemini
from core.generation.gate import AdaptiveGate
from core.providers.base import LLMRequest, Message
from core.providers.gemini import GeminiProvider

# Real windows on the clock: a late wakeup under load reads as a server that answered late.
pytestmark = pytest.mark.timed

KEY = "AIzaSy-gate-test-key-00000000000000000"


def drive(fake, gate, seconds, workers=8, changes=()):
    """``workers`` threads call the provider until ``seconds`` pass; returns success times (from the start).

    ``changes``: (at seconds, callable) applied on the way, e.g. a quota raised or cut mid-run.
    """
    settings = Settings(gemini_api_key=KEY, gemini_base_url=fake.base_url, gemini_max_retries=50,
                        request_timeout=5.0)
    provider = GeminiProvider(settings, gate=gate, backoff_base=0.05, max_backoff=0.4, max_retry_wait=3.0)
    start = time.monotonic()
    deadline = start + seconds
    done, lock = [], threading.Lock()

    def work(i):
        n = 0
        while time.monotonic() < deadline:
            n += 1
            provider.generate(LLMRequest([Message("user", f"worker {i} question {n} about tenancy deposits")]))
            with lock:
                done.append(time.monotonic() - start)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    pending = sorted(changes, key=lambda c: c[0])
    for at, change in pending:
        time.sleep(max(0.0, start + at - time.monotonic()))
        change()
    for t in threads:
        t.join(30)
    provider.close()
    return sorted(done)


def in_range(times, lo, hi):
    return sum(1 for t in times if lo <= t < hi)


def drive_together(cases):
    """Run each case (name -> callable) in its own thread at the same time; returns name -> its result.

    Each case has its own fake server and gate and spends its seconds waiting on quota windows, not on the CPU:
    run side by side they take as long as the longest instead of their sum. A case that raised re-raises when
    its result is asked for (``result()``), in the test that reads it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(case) for name, case in cases.items()}
        for future in futures.values():
            future.exception()  # wait for every case before any test reads one
    return futures


def checked_twice(future, case, check) -> None:
    """``check`` a case driven side by side; if it misses, drive the case once more, alone, and check that run.

    The cases run on real windows: a stall of the driving process (a collection pause, a late wakeup on a busy
    machine) bunches calls at the server, and a window then answers a few more 429s, or lets a few fewer calls
    through, than the gate caused. Measured: 3 misses in 22 runs of the six 429-shape cases, each in one case
    (50 calls used where 51 are asked; 9 and 13 late 429s where 6.7 and 8.3 are allowed), while the same cases
    driven directly 48 times gave 54-60 calls and 1-3 late 429s. A gate that does not learn misses both runs; the
    second run is reported as a warning, so a miss is never silent."""
    import warnings

    try:
        check(*future.result())
    except AssertionError as first:
        warnings.warn(f"a wall-clock gate case missed once and was driven again alone: {first}", stacklevel=2)
        check(*case())


def _rpm_with_retry_info():
    with FakeGemini(rpm_quota=20, rpm_window=2.0) as fake:
        gate = AdaptiveGate(max_concurrency=8)
        return fake, gate, drive(fake, gate, 8.0), {}


def _rpm_bare():
    with FakeGemini(rpm_quota=20, rpm_window=2.0, quota_details=False) as fake:
        gate = AdaptiveGate(max_concurrency=8)
        at_4s = {}
        ok = drive(fake, gate, 9.0, changes=[(4.0, lambda: at_4s.update(fake.by_status))])
        return fake, gate, ok, at_4s


def _tpm():
    with FakeGemini(tpm_quota=20 * 60, rpm_window=2.0) as fake:  # ~60 tokens a call here: ~20 calls a window
        gate = AdaptiveGate(max_concurrency=8)
        at_4s = {}
        ok = drive(fake, gate, 8.0, changes=[(4.0, lambda: at_4s.update(fake.by_status))])
        return fake, gate, ok, at_4s


def _cut_and_raised():
    with FakeGemini(rpm_quota=20, rpm_window=2.0) as fake:
        gate = AdaptiveGate(max_concurrency=8)
        seen = {}
        changes = [(5.0, lambda: (seen.update(before=gate.paces["requests"].limit), fake.set_quota(rpm=10))),
                   (10.0, lambda: (seen.update(cut=gate.paces["requests"].limit), fake.set_quota(rpm=30)))]
        return fake, gate, drive(fake, gate, 24.0, changes=changes), seen


@pytest.fixture(scope="module")
def quota_runs():
    """The four quota cases below, driven side by side (24 s, the longest, instead of 49 s one after another)."""
    return drive_together({"rpm": _rpm_with_retry_info, "rpm_bare": _rpm_bare, "tpm": _tpm,
                           "cut": _cut_and_raised})


def test_a_stray_429_teaches_nothing_and_a_cluster_halves_calls_in_flight():
    gate = AdaptiveGate(max_concurrency=32)
    gate.record_rate_limited(1.0, metric="requests")  # alone: no pace, no cut, no pause
    assert gate.limit == 32 and not gate.paces
    for _ in range(5):
        gate.record_rate_limited(None)
    assert gate.limit == 16  # six of the last eight answers were 429: congestion, halved once
    for _ in range(200):
        gate.record_success()
    assert 20 < gate.limit <= 32


def test_rpm_quota_with_retry_info_is_learned_and_met(quota_runs):
    def check(fake, gate, ok, _):
        pace = gate.paces["requests"]
        assert 1.5 <= pace.window <= 3.0 and 15 <= pace.limit <= 24, (pace.limit, pace.window)  # probes: a step over
        assert "tokens" not in gate.paces
        # After the first window: close to the quota (bench/throughput.py measures how close), few calls 429.
        assert in_range(ok, 2.0, 8.0) >= 0.75 * 20 * 3
        assert fake.by_status[429] <= 0.2 * fake.by_status[200]

    checked_twice(quota_runs["rpm"], _rpm_with_retry_info, check)


def test_rpm_quota_answered_with_bare_429s_is_learned_too(quota_runs):
    def check(fake, gate, ok, at_4s):
        pace = gate.paces["requests"]
        assert 1.5 <= pace.window <= 4.0 and 10 <= pace.limit <= 24, (pace.limit, pace.window)
        assert in_range(ok, 4.0, 9.0) >= 0.7 * 20 * 2.5
        # The first window, with no hint when to come back, costs 429s; once learned, few.
        assert fake.by_status[429] - at_4s[429] <= 0.15 * (fake.by_status[200] - at_4s[200])

    checked_twice(quota_runs["rpm_bare"], _rpm_bare, check)


def test_tokens_per_minute_quota_is_learned_as_tokens(quota_runs):
    def check(fake, gate, ok, at_4s):
        assert set(gate.paces) == {"tokens"}
        pace = gate.paces["tokens"]
        assert 0.6 * 1200 <= pace.limit <= 1.2 * 1200 and 1.5 <= pace.window <= 3.0, (pace.limit, pace.window)
        # The cold start's first window costs a burst of 429s (8-11 here, 16 once on a loaded CI machine: it is
        # not what the gate learned); once learned, few (1-2 of ~30 here since a tokens pace counts what calls used
        # and the server's lag; 1-12 before, one run in three over this line).
        assert fake.by_status[429] - at_4s.get(429, 0) <= 0.2 * (fake.by_status[200] - at_4s.get(200, 0)), \
            (dict(at_4s), dict(fake.by_status))
        assert fake.by_status[429] <= 0.5 * fake.by_status[200]

    checked_twice(quota_runs["tpm"], _tpm, check)


def test_a_quota_cut_and_raised_mid_run_is_relearned(quota_runs):
    def check(fake, gate, ok, seen):
        assert 15 <= seen["before"] <= 24
        assert seen["cut"] <= 12, seen  # relearned down within two and a half windows of the cut
        # and probed up after the raise: +10%, +20%, +40%, ... a window each (a 429 halves the step)
        assert gate.paces["requests"].limit > 22, gate.paces["requests"].limit
        assert in_range(ok, 7.0, 10.0) >= 0.75 * 10 * 1.5
        assert in_range(ok, 20.0, 24.0) >= 0.75 * 22 * 2

    checked_twice(quota_runs["cut"], _cut_and_raised, check)


def test_stray_429s_without_a_quota_cost_no_more_than_503s():
    def stray(kind):
        # Every 7th call fails; a 429 carries QuotaFailure and RetryInfo like a real per-minute one, its delay
        # about the 503's backoff here (drive's backoff_base), so only what the gate does differs.
        with FakeGemini(latency=0.05, fault_for=lambda n, body: Fault(kind, retry_delay=0.05) if n % 7 == 0
                        else None) as fake:
            gate = AdaptiveGate(max_concurrency=8)
            return fake, gate, drive(fake, gate, 4.0)

    # Side by side, so both meet the same machine at the same time.
    runs = drive_together({kind: (lambda k=kind: stray(k)) for kind in ("rate_minute", "unavailable")})
    fake, gate, ok_429 = runs["rate_minute"].result()
    assert fake.by_status[429] >= 20
    assert not gate.paces and gate.limit >= 7  # nothing learned, nothing cut
    _, _, ok_503 = runs["unavailable"].result()
    assert len(ok_429) >= 0.7 * len(ok_503), (len(ok_429), len(ok_503))
