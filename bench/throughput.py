"""Generation throughput benchmark: Groundwork's GenerationRun against a FakeGemini in its own process (as every
real provider is; ``--in-process`` to share this one), then AfterImage against the same.

Cases (100 dialogs, max_turns 3 unless told otherwise):
  1. latency 0.5 s, concurrency 8       -> efficiency target >= 0.9
  2. latency 0.5 s, concurrency 32      -> efficiency target >= 0.75
  3. latency 0 s,   concurrency 32      -> conversations/min (CPU bound: everything shares 2 cores)
  4. AfterImage 0.18.1 on cases 2 and 3 (own venv, subprocess) -> ours/theirs at 0 s >= 2.5x
  5. quotas, ours and AfterImage on the same fake, concurrency 32, cold start, windows of W s: requests per
     window (and with --quota-cases: tokens per window, requests cut to half and raised to 1.5x mid-run), each
     with 429s in three shapes (quotaValue + RetryInfo, RetryInfo only, bare) on a sliding and a fixed window
     -> >= 0.95 of the quota used, <= 10% of calls answered 429, conversations/min vs AfterImage's
  6. one call in 7 answered 429 (QuotaFailure + RetryInfo, no quota behind it) vs one in 7 answered 503
     -> the 429 run within 1.5x of the 503 run's wall time

efficiency = (LLM calls x latency / concurrency) / wall time: the share of the time the run kept
``concurrency`` calls in flight. Only ``run.run()`` is timed; setup (copying the indexed data dir, opening
the workbench, creating the run) is reported separately.

    /work/main/.venv/bin/python bench/throughput.py             # everything (~5-10 min)
    /work/main/.venv/bin/python bench/throughput.py --quick     # fewer dialogs, shorter quota case
    /work/main/.venv/bin/python bench/throughput.py --skip-afterimage --skip-quota
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

# Never talk to a real provider or pick up a developer's settings.
for _name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QDRANT_URL", "QDRANT_API_KEY", "GROUNDWORK_PROVIDER",
              "GOOGLE_GEMINI_BASE_URL", "GROUNDWORK_DATA_DIR", "GROUNDWORK_RPM_LIMIT"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fakes.gemini import QUOTA_SHAPES, WINDOW_KINDS  # noqa: E402
from fakes.gemini_process import FakeGeminiProcess, InProcessFake  # noqa: E402
from diagnose import breakdown, instrument_engine  # noqa: E402
from machine import CpuMeter, Usage  # noqa: E402
from core.corpus.sparse_copy import copy_tree  # noqa: E402

KEY = "AIzaSy-bench-dummy-key-000000000000000"
AFTERIMAGE_VERSION = "0.18.1"
TORCH_VERSION = "2.13.0"
AI_VENV = HERE / ".cache" / "afterimage-venv"
AI_PY = AI_VENV / "bin" / "python"


FAKE_IN_PROCESS = False  # --in-process: the fake shares this process (and its GIL) with the run


def make_fake(latency: float, options: dict | None = None):
    """The fake Gemini for one case, started: in its own process unless --in-process."""
    options = {k: v for k, v in (options or {}).items() if k != "count_tokens"}
    return (InProcessFake if FAKE_IN_PROCESS else FakeGeminiProcess)(latency=latency, **options).start()


def generate_calls(stats: dict) -> int:
    return sum(n for p, n in stats["by_path"].items() if p.endswith(":generateContent"))


def mean_in_flight(stats: dict, t0: float, t1: float) -> float:
    """Mean generateContent calls in flight at the server between t0 and t1 (its own samples)."""
    xs = [n for t, n in stats["samples"] if t0 <= t <= t1]
    return sum(xs) / len(xs) if xs else 0.0


@dataclass
class Sampler:
    """Samples the run's gate every ``every`` seconds on a background thread (the server samples itself)."""

    gate: object | None = None
    every: float = 0.02
    samples: list[tuple[float, int, float, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            g = self.gate
            limit = getattr(g, "limit", 0.0) if g else 0.0
            in_flight = getattr(g, "in_flight", 0) if g else 0
            paused = bool(g and getattr(g, "_paused_until", 0.0) > time.monotonic())
            self.samples.append((time.monotonic(), 0, limit, in_flight, paused))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Env:
    """The once-per-process setup: warmed embedder and the sample corpus indexed into a template data dir."""

    def __init__(self, root: Path):
        from core.config import Settings
        from core.corpus.embeddings import Embedder
        from core.workbench import Workbench

        self.root = root
        t = time.perf_counter()
        self.embedder = Embedder()
        self.embedder.load()
        self.embedder.encode(["warm-up: when must a landlord return a security deposit?"] * 8)
        self.load_s = time.perf_counter() - t
        self.template = root / "template"
        t = time.perf_counter()
        wb = Workbench(Settings.from_env(env={}, data_dir=str(self.template)), store_idle_close_s=0,
                       embedder=self.embedder)
        self.report = wb.corpus.ingest_path(ROOT / "sample_data")
        self.chunk_texts = [r["text"] for r in wb.db.rows(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id=c.document_id ORDER BY d.source_path, c.position")]
        wb.close()
        self.index_s = time.perf_counter() - t
        self._n = 0

    def fresh_workbench(self):
        from core.config import Settings
        from core.workbench import Workbench

        self._n += 1
        data_dir = self.root / f"case-{self._n}"
        copy_tree(self.template, data_dir)
        return Workbench(Settings.from_env(env={}, data_dir=str(data_dir)), store_idle_close_s=0,
                         embedder=self.embedder)


@dataclass
class Result:
    label: str
    latency: float
    concurrency: int
    dialogs: int
    saved: int = 0
    status: str = ""
    calls: int = 0
    wall_s: float = 0.0
    setup_s: float = 0.0
    mean_in_flight: float = 0.0
    max_in_flight: int = 0
    by_status: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    usage: object = None
    extra_lines: list = field(default_factory=list)

    @property
    def conv_per_min(self) -> float:
        return 60 * self.saved / self.wall_s if self.wall_s else 0.0

    @property
    def calls_per_conv(self) -> float:
        return self.calls / self.saved if self.saved else 0.0

    @property
    def efficiency(self) -> float | None:
        if not self.latency or not self.wall_s:
            return None
        return (self.calls * self.latency / self.concurrency) / self.wall_s

    def line(self) -> str:
        eff = f"{self.efficiency:.3f}" if self.efficiency is not None else "  n/a"
        return (f"{self.label:34s} {self.saved:4d}/{self.dialogs:<4d} {self.conv_per_min:9.1f} "
                f"{self.calls_per_conv:10.2f} {eff:>10s} {self.wall_s:8.2f} {self.setup_s:8.2f} "
                f"{self.mean_in_flight:7.1f} {self.max_in_flight:4d}")


HEADER = (f"{'case':34s} {'saved':>9s} {'conv/min':>9s} {'calls/conv':>10s} {'efficiency':>10s} "
          f"{'wall s':>8s} {'setup s':>8s} {'avg inf':>7s} {'max':>4s}")


def schedule_changes(fake, changes: list | None) -> list[threading.Timer]:
    """Quota changes ``[(seconds after start, rpm, tpm), ...]`` applied to ``fake`` by timers (a limit changing
    mid-run); the clock starts now, so call this right before the run starts."""
    timers = []
    for at, rpm, tpm in changes or []:
        timer = threading.Timer(at, fake.set_quota, kwargs={"rpm": rpm, "tpm": tpm})
        timer.daemon = True
        timer.start()
        timers.append(timer)
    return timers


def run_ours(env: Env, label: str, latency: float, concurrency: int, dialogs: int, max_turns: int,
             fake_options: dict | None = None, instrument_gate: bool = False, diagnose: bool = False,
             changes: list | None = None) -> Result:
    from core.generation.engine import GenerationRun, RunConfig, worker_count
    from core.providers.gemini import GeminiProvider

    res = Result(label, latency, concurrency, dialogs)
    t = time.perf_counter()
    wb = env.fresh_workbench()
    fake = make_fake(latency, fake_options)
    settings = wb.settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url)
    run = GenerationRun(settings, wb.db, wb.corpus, lambda gate: GeminiProvider(settings, gate=gate),
                        config=RunConfig(num_dialogs=dialogs, max_turns=max_turns, max_concurrency=concurrency,
                                         seed=1))
    events: list[tuple[float, str, float, float]] = []
    if instrument_gate:
        gate = run.gate
        cls = type(gate)

        def on_429(retry_after, kind="rate_limited", metric=None, quota_value=None):
            cls.record_rate_limited(gate, retry_after, kind, metric, quota_value)
            events.append((time.monotonic(), "429", gate.limit, retry_after or 0.0))

        def on_ok(tokens=0):
            cls.record_success(gate, tokens)
            events.append((time.monotonic(), "ok", gate.limit, 0.0))

        gate.record_rate_limited, gate.record_success = on_429, on_ok
    fake.reset_stats()
    res.setup_s = time.perf_counter() - t
    with contextlib.ExitStack() as stack:
        clock = stack.enter_context(instrument_engine()) if diagnose else None
        sampler = stack.enter_context(Sampler(run.gate))
        fake_cpu = fake.cpu_s()
        meter = stack.enter_context(CpuMeter())
        timers = schedule_changes(fake, changes)
        t0 = time.monotonic()
        progress = run.run()
        res.wall_s = time.monotonic() - t0
        for timer in timers:
            timer.cancel()
    fake_cpu = fake.cpu_s() - fake_cpu
    # The fake's own process is not this one: the meter counted its CPU among the others'.
    res.usage = Usage(meter.usage.wall_s, meter.usage.own_cpu_s, meter.usage.others_cpu_s - fake_cpu)
    res.extra_lines.append(f"    fake server process: {fake_cpu / max(res.wall_s, 1e-9):.2f} cores"
                           if not FAKE_IN_PROCESS else "    fake server: in this process (its CPU is ours)")
    stats = fake.stats()
    # The server's in-flight samples go into the gate's samples (slot 1) for the per-window tables.
    server = stats["samples"]
    samples, j = [], 0
    for s in sampler.samples:
        while j + 1 < len(server) and server[j + 1][0] <= s[0]:
            j += 1
        samples.append((s[0], server[j][1] if server else 0, *s[2:]))
    if clock is not None:
        res.extra_lines += breakdown(clock, worker_count(concurrency), res.wall_s, generate_calls(stats), latency)
    res.saved, res.status = progress.saved, progress.status
    res.calls = generate_calls(stats)
    res.by_status = {int(k): v for k, v in stats["by_status"].items()}
    res.mean_in_flight = mean_in_flight(stats, t0, t0 + res.wall_s)
    res.max_in_flight = stats["max_concurrency"]
    res.extra = {"t0": t0, "answers": [tuple(a) for a in stats["answers"]], "events": events, "samples": samples,
                 "reason": progress.reason, "tokens": run.monitor.prompt_tokens + run.monitor.completion_tokens
                 + run.monitor.thinking_tokens, "paces": {m: (round(p.limit, 1), round(p.window, 2))
                                                         for m, p in run.gate.paces.items()}}
    fake.close()
    wb.close()
    return res


# ---- AfterImage --------------------------------------------------------------------------------------------


def ensure_afterimage(log) -> tuple[bool, str]:
    """Create bench/.cache/afterimage-venv with afterimage==0.18.1 (+ sentence-transformers for RAG) once."""
    check = ("import afterimage, importlib.metadata as m; assert m.version('afterimage') == '%s'; "
             "import sentence_transformers" % AFTERIMAGE_VERSION)
    if AI_PY.exists() and subprocess.run([str(AI_PY), "-c", check], capture_output=True, cwd="/").returncode == 0:
        return True, "cached"
    t = time.perf_counter()
    try:
        if not AI_PY.exists():
            log(f"creating {AI_VENV} ...")
            subprocess.run(["python3", "-m", "venv", str(AI_VENV)], check=True, capture_output=True)
        pip = [str(AI_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        # The embeddings-local extra pulls sentence-transformers -> torch: pin the CPU torch first, as
        # scripts/setup.sh does, so pip does not fetch a multi-GB CUDA build.
        log(f"installing torch=={TORCH_VERSION} and afterimage[embeddings-local]=={AFTERIMAGE_VERSION} ...")
        for spec in (f"torch=={TORCH_VERSION}", f"afterimage[embeddings-local]=={AFTERIMAGE_VERSION}"):
            p = subprocess.run(pip + [spec], capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                tail = [ln for ln in p.stderr.splitlines() if "is ignored" not in ln][-3:]
                if spec.startswith("afterimage"):
                    # Without the extra AfterImage still runs (WithContext grounding instead of RAG).
                    p2 = subprocess.run(pip + [f"afterimage=={AFTERIMAGE_VERSION}"], capture_output=True,
                                        text=True, timeout=900)
                    if p2.returncode == 0:
                        return True, f"installed without embeddings-local ({' '.join(tail)})"
                return False, f"pip install {spec} failed: {' '.join(tail)}"
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{type(e).__name__}: {e}"
    return True, f"installed in {time.perf_counter() - t:.0f} s"


def run_afterimage(env: Env, label: str, latency: float, concurrency: int, dialogs: int, max_turns: int,
                   corpus_json: Path, model_path: str, fake_options: dict | None = None,
                   changes: list | None = None) -> Result:
    res = Result(label, latency, concurrency, dialogs)
    fake = make_fake(latency, fake_options)
    timers = schedule_changes(fake, changes)
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [str(AI_PY), str(HERE / "afterimage_driver.py"), fake.base_url, str(dialogs), str(max_turns),
           str(concurrency), "--corpus-json", str(corpus_json), "--model-path", model_path]
    t = time.perf_counter()
    fake_cpu = fake.cpu_s()
    with CpuMeter() as meter:
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env, cwd="/", timeout=900)
    total_s = time.perf_counter() - t
    fake_cpu = fake.cpu_s() - fake_cpu
    for timer in timers:
        timer.cancel()
    stats = fake.stats()
    res.calls = generate_calls(stats)
    res.by_status = {int(k): v for k, v in stats["by_status"].items()}
    res.max_in_flight = stats["max_concurrency"]
    fake.close()
    out = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not out:
        res.status = "failed"
        res.extra = {"error": (p.stderr.strip().splitlines() or ["no output"])[-5:]}
        return res
    data = json.loads(out[-1])
    res.saved, res.wall_s, res.status = min(data["saved"], dialogs), data["wall_s"], "completed"
    # Its generate() starts after its own setup; the first generateContent answer marks it well enough.
    answers = [tuple(a) for a in stats["answers"]]
    first = min((a[0] for a in answers), default=time.monotonic()) - latency
    data.update(t0=first, answers=answers, samples=[], events=[])
    res.setup_s = total_s - data["generate_s"]
    res.mean_in_flight = res.calls * latency / res.wall_s if latency else 0.0
    res.extra = data
    # The meter also covered the child's start-up (imports, model, index): keep the generate() part, i.e. the
    # child's CPU during generate() plus this process's (the fake server's), others scaled to that time.
    u = meter.usage
    if FAKE_IN_PROCESS:
        fake_cpu = max(u.own_cpu_s - data["total_cpu_s"], 0.0)
        others = u.others_cpu_s
    else:  # the fake's process counted among the others; ours is only the child's
        others = u.others_cpu_s - fake_cpu
        fake_cpu = 0.0
    res.usage = Usage(data["generate_s"], data["cpu_s"] + fake_cpu, others * data["generate_s"] / max(u.wall_s, 1e-9))
    return res


# ---- the rpm quota case ------------------------------------------------------------------------------------


def quota_report(res: Result, quota: int, window: float, log) -> dict:
    t0 = res.extra["t0"]
    answers = [(t - t0, s) for t, s, _ in res.extra["answers"]]
    ok = sum(1 for _, s in answers if s == 200)
    limited = sum(1 for _, s in answers if s == 429)
    total = len(answers)
    goodput_share = (ok / res.wall_s) * window / quota if res.wall_s else 0.0
    share_429 = limited / total if total else 0.0
    n_windows = int(res.wall_s // window) + 1
    per_window = []
    samples = [(t - t0, *rest) for t, *rest in res.extra["samples"]]
    for w in range(n_windows):
        lo, hi = w * window, (w + 1) * window
        in_w = [s for t, s in answers if lo <= t < hi]
        ss = [s for s in samples if lo <= s[0] < hi]
        per_window.append({
            "window": w, "from_s": lo, "to_s": min(hi, res.wall_s), "ok": in_w.count(200), "429": in_w.count(429),
            "avg_limit": sum(s[2] for s in ss) / max(len(ss), 1), "min_limit": min((s[2] for s in ss), default=0),
            "avg_in_flight": sum(s[1] for s in ss) / max(len(ss), 1),
            "paused_share": sum(1 for s in ss if s[4]) / max(len(ss), 1)})
    full = [w for w in per_window if w["to_s"] - w["from_s"] >= window - 1e-9]
    steady = full[1:] if len(full) > 1 else full  # without the cold-start window
    steady_share = (sum(w["ok"] for w in steady) / (len(steady) * quota)) if steady else 0.0
    log(f"  per {window:g} s window (quota {quota}): ok / 429 / gate limit avg (min) / server in-flight avg / "
        "share of time paused by RetryInfo")
    for w in per_window:
        log(f"    {w['from_s']:6.1f}-{w['to_s']:6.1f} s  ok {w['ok']:4d}  429 {w['429']:4d}  limit "
            f"{w['avg_limit']:5.1f} ({w['min_limit']:4.1f})  in-flight {w['avg_in_flight']:5.1f}  "
            f"paused {100 * w['paused_share']:3.0f}%")
    # The first seconds at 1/10 s resolution: how the gate reacts to the first burst of 429s.
    log("  cold start, per 0.5 s: ok / 429 answered, gate limit at the end of the slice, gate in-flight")
    horizon = min(res.wall_s, 2 * window + 2)
    step = 0.5
    t = 0.0
    while t < horizon:
        a = [s for x, s in answers if t <= x < t + step]
        ss = [s for s in samples if t <= s[0] < t + step]
        last = ss[-1] if ss else (0, 0, 0.0, 0, False)
        if a or t < 3:
            log(f"    {t:5.1f} s  ok {a.count(200):3d}  429 {a.count(429):3d}  limit {last[2]:5.2f}  "
                f"gate in-flight {last[3]:3d}{'  paused' if last[4] else ''}")
        t += step
    return {"ok": ok, "429": limited, "total": total, "goodput_share": goodput_share, "share_429": share_429,
            "steady_share": steady_share, "windows": per_window}


def print_timeline(r: Result, log, step: float = 0.5) -> None:
    t0 = r.extra["t0"]
    samples = [(t - t0, inflight, limit, gate_in) for t, inflight, limit, gate_in, _ in r.extra["samples"]]
    answers = [t - t0 for t, _, _ in r.extra["answers"]]
    t = 0.0
    row = []
    while t < r.wall_s:
        ss = [s for s in samples if t <= s[0] < t + step]
        mean = sum(s[1] for s in ss) / max(len(ss), 1)
        row.append(f"{mean:4.1f}")
        t += step
    log(f"    server in flight, mean per {step:g} s: " + " ".join(row))
    log(f"    answers per {step:g} s: " + " ".join(
        str(sum(1 for a in answers if i * step <= a < (i + 1) * step)) for i in range(int(r.wall_s / step) + 1)))


def quota_summary(res: Result, window: float, rpm: int, tpm: int, changes: list | None) -> dict:
    """Share of the quota used (successful calls, or their tokens for a tpm quota, over what the quota allowed
    in the run's wall time, following the schedule of changes) and share of calls answered 429."""
    answers = res.extra["answers"]
    ok = [a for a in answers if a[1] == 200]
    limited = sum(1 for a in answers if a[1] == 429)
    steps = [(0.0, rpm, tpm)] + [(at, r if r is not None else 0, t if t is not None else 0)
                                  for at, r, t in (changes or [])]
    allowed, current = 0.0, (rpm, tpm)
    for i, (at, r, t) in enumerate(steps):
        current = (r or current[0], t or current[1])
        until = min(steps[i + 1][0], res.wall_s) if i + 1 < len(steps) else res.wall_s
        if until > at:
            allowed += (current[1] if tpm else current[0]) * (until - at) / window
    used = sum(a[2] for a in ok) if tpm else len(ok)
    return {"used_share": used / allowed if allowed else 0.0, "share_429": limited / max(len(answers), 1),
            "ok": len(ok), "429": limited}


def _median_range(xs: list[float]) -> tuple[float, float, float]:
    ys = sorted(xs)
    n = len(ys)
    median = ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2
    return median, ys[0], ys[-1]


def _cell(xs: list[float], fmt: str) -> str:
    """One value, or the median and range of several rounds: 0.962 (0.951-0.970)."""
    if not xs:
        return "-"
    median, lo, hi = _median_range(xs)
    return format(median, fmt) + (f" ({format(lo, fmt)}-{format(hi, fmt)})" if len(xs) > 1 else "")


def quota_cases(env: Env, args, log, ai_ready: bool, corpus_json: Path) -> None:
    """Ours and AfterImage under the same quotas (requests per window; tokens per window and a limit cut and raised
    on request), each with 429s in every shape asked for on every window kind asked for, ``--repeat`` rounds."""
    from core.corpus.embeddings import packaged_model_path

    q, w = args.quota, args.window
    kinds = [
        ("rpm", f"rpm {q}/{w:g}s", {"rpm_quota": q, "rpm_window": w}, None),
        ("tpm", f"tpm {args.tpm}/{w:g}s", {"tpm_quota": args.tpm, "rpm_window": w}, None),
        ("change", f"rpm {q}->{q // 2}->{q * 3 // 2}/{w:g}s", {"rpm_quota": q, "rpm_window": w},
         [(3 * w, q // 2, None), (6 * w, q * 3 // 2, None)]),
    ]
    wanted = args.quota_cases.split(",")
    cases = [(f"{label} {window} {shape}", {**options, "quota_shape": shape, "window_kind": window}, changes)
             for key, label, options, changes in kinds if key in wanted
             for window in args.quota_windows.split(",") for shape in args.quota_shapes.split(",")]
    log("")
    log(f"quota cases: windows of {w:g} s (Gemini's per-minute window scaled down {60 / w:g}x), latency "
        f"{args.quota_latency:g} s, concurrency 32, cold start, {args.quota_dialogs} dialogs, GeminiProvider with "
        "its default retry policy; 429 shapes: value = QuotaFailure with quotaValue + RetryInfo, retry_info = "
        "QuotaFailure without quotaValue + RetryInfo, bare = no details; sliding window = the last W s, fixed = "
        "windows of W s starting empty" + ("; the changing limit is cut to half after 3 windows and raised to "
                                           "1.5x after 6" if "change" in wanted else ""))
    per_case: dict[str, dict[str, list]] = {}
    rounds_n = args.quota_repeat if args.quota_repeat is not None else args.repeat
    for rep in range(rounds_n):
        if rounds_n > 1:
            log(f"quota round {rep + 1} of {rounds_n}")
        for label, options, changes in cases:
            rpm, tpm = options.get("rpm_quota", 0), options.get("tpm_quota", 0)
            got = per_case.setdefault(label, {"ours": [], "ai": []})
            r = run_ours(env, f"groundwork quota {label}", args.quota_latency, 32, args.quota_dialogs,
                         args.max_turns, fake_options=options, instrument_gate=True, changes=changes)
            s_ours = quota_summary(r, w, rpm, tpm, changes)
            got["ours"].append((r, s_ours))
            log(f"  done: {r.line().strip()}  [{r.status}]  {r.usage.describe()}")
            log(f"    quota used {s_ours['used_share']:.3f}, 429 share {s_ours['share_429']:.3f}, tokens/call "
                f"{r.extra['tokens'] / max(s_ours['ok'], 1):.0f}, learned paces {r.extra['paces']}")
            if args.quota_detail and rep == 0 and label == cases[0][0]:
                quota_report(r, q, w, log)
            if ai_ready:
                ai = run_afterimage(env, f"afterimage quota {label}", args.quota_latency, 32, args.quota_dialogs,
                                    args.max_turns, corpus_json, str(packaged_model_path()), options, changes)
                if ai.status == "failed":
                    log(f"  AfterImage failed: {' | '.join(ai.extra['error'])}")
                else:
                    s_ai = quota_summary(ai, w, rpm, tpm, changes)
                    got["ai"].append((ai, s_ai))
                    log(f"  done: {ai.line().strip()}  quota used {s_ai['used_share']:.3f}, 429 share "
                        f"{s_ai['share_429']:.3f}")
    log("")
    rounds = f" (median and range of {rounds_n} rounds)" if rounds_n > 1 else ""
    log(f"quota cases{rounds}: ours / AfterImage")
    log(f"{'quota case':34s} {'ours c/min':>18s} {'AI c/min':>18s} {'ratio':>6s} {'ours used':>19s} "
        f"{'ours 429':>19s} {'AI used':>19s} {'AI 429':>19s}")
    for label, got in per_case.items():
        ours, ai = got["ours"], got["ai"]
        ratio = ("%.2fx" % (_median_range([r.conv_per_min for r, _ in ours])[0]
                            / _median_range([a.conv_per_min for a, _ in ai])[0]) if ai else "-")
        log(f"{label:34s} {_cell([r.conv_per_min for r, _ in ours], '.1f'):>18s} "
            f"{_cell([a.conv_per_min for a, _ in ai], '.1f'):>18s} {ratio:>6s} "
            f"{_cell([x['used_share'] for _, x in ours], '.3f'):>19s} "
            f"{_cell([x['share_429'] for _, x in ours], '.3f'):>19s} "
            f"{_cell([x['used_share'] for _, x in ai], '.3f'):>19s} {_cell([x['share_429'] for _, x in ai], '.3f'):>19s}")
    for label, got in per_case.items():
        used = _median_range([x["used_share"] for _, x in got["ours"]])[0]
        share = _median_range([x["share_429"] for _, x in got["ours"]])[0]
        line = (f"target: {label}: quota used {used:.3f} >= 0.95 -> {'MET' if used >= 0.95 else 'MISSED'}; "
                f"429 share {share:.3f} <= 0.10 -> {'MET' if share <= 0.10 else 'MISSED'}")
        if got["ai"]:
            ours_cpm = _median_range([r.conv_per_min for r, _ in got["ours"]])[0]
            ai_cpm = _median_range([a.conv_per_min for a, _ in got["ai"]])[0]
            line += (f"; conv/min {ours_cpm:.1f} >= AfterImage's {ai_cpm:.1f} -> "
                     f"{'MET' if ours_cpm >= ai_cpm else 'MISSED'}")
        log(line)


def run_cli(env: Env, latency: float, concurrency: int, dialogs: int, max_turns: int) -> dict:
    """``groundwork generate`` in a fresh process, as a new user runs it: the SDK import, the embedding model's
    load and the retriever's start are inside the run's clock (the run's own conversations/min, as it prints)."""
    import re

    data_dir = env.root / f"cli-{concurrency}-{time.monotonic_ns()}"
    copy_tree(env.template, data_dir)
    fake = make_fake(latency)
    child_env = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)},
                 "GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": fake.base_url,
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "core.cli", "generate", "--data-dir", str(data_dir), "--num-dialogs",
                        str(dialogs), "--max-turns", str(max_turns), "--max-concurrency", str(concurrency),
                        "--no-grade", "--seed", "1"], env=child_env, capture_output=True, text=True, cwd=str(data_dir),
                       timeout=900)
    process_s = time.monotonic() - t
    stats = fake.stats()
    fake.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    match = re.search(r"(\d+)/(\d+) saved.*?([\d.]+) conversations/min", p.stdout)
    if p.returncode != 0 or not match:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    saved, per_min = int(match.group(1)), float(match.group(3))
    calls = generate_calls(stats)
    run_s = 60 * saved / per_min if per_min else 0.0
    return {"saved": saved, "conv_per_min": per_min, "calls": calls, "run_s": run_s, "process_s": process_s,
            "efficiency": calls * latency / concurrency / run_s if run_s else 0.0}


def cli_cases(env: Env, args, log) -> None:
    log("")
    log(f"as a new user runs it: groundwork generate in a fresh process (imports and model load inside the run's "
        f"clock), {args.dialogs} dialogs, latency {args.latency:g} s; efficiency over the run's own elapsed time")
    rows: dict[int, list[dict]] = {}
    for rep in range(args.repeat):
        for conc in [int(c) for c in args.cli_cases.split(",") if c]:
            r = run_cli(env, args.latency, conc, args.dialogs, args.max_turns)
            if "error" in r:
                log(f"  cli c={conc}: failed: {r['error']}")
                continue
            rows.setdefault(conc, []).append(r)
            log(f"  done: cli c={conc}: {r['saved']} saved, {r['conv_per_min']:.1f} conv/min, {r['calls']} calls, "
                f"run {r['run_s']:.1f} s (process {r['process_s']:.1f} s), efficiency {r['efficiency']:.3f}")
    for conc, rs in rows.items():
        log(f"cli c={conc}: conv/min {_cell([r['conv_per_min'] for r in rs], '.1f')}, efficiency "
            f"{_cell([r['efficiency'] for r in rs], '.3f')}")


def fault_cases(env: Env, args, log) -> None:
    """One call in seven answered 429 (with QuotaFailure and RetryInfo, but no quota behind it) against one in
    seven answered 503: a stray 429 must cost about what a 503 costs, not teach the run a slow pace."""
    log("")
    log(f"stray faults: every 7th generateContent call fails, latency {args.latency:g} s, c=32, {args.dialogs} dialogs")
    walls = {}
    for kind in ("unavailable", "rate_minute"):
        r = run_ours(env, f"groundwork 1 in 7 {'429' if kind == 'rate_minute' else '503'}", args.latency, 32,
                     args.dialogs, args.max_turns,
                     fake_options={"fault_every": 7, "fault_kind": kind})
        walls[kind] = r.wall_s
        log(f"  done: {r.line().strip()}  [{r.status}] answers {dict(sorted(r.by_status.items()))}, learned paces "
            f"{r.extra['paces']}")
    ratio = walls["rate_minute"] / walls["unavailable"]
    log(f"target: 1-in-7 429 run {walls['rate_minute']:.1f} s / 1-in-7 503 run {walls['unavailable']:.1f} s = "
        f"{ratio:.2f} <= 1.5 -> {'MET' if ratio <= 1.5 else 'MISSED'}")


# ---- main --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogs", type=int, default=100)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="40 dialogs, 40 s quota case")
    ap.add_argument("--skip-afterimage", action="store_true")
    ap.add_argument("--skip-quota", action="store_true")
    ap.add_argument("--only-quota", action="store_true")
    ap.add_argument("--cases", default="8,32,32@0",
                    help="our cases as CONCURRENCY[@LATENCY], comma separated (default 8,32,32@0)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all cases (ours and AfterImage interleaved); rows show the median (shared machine)")
    ap.add_argument("--timeline", action="store_true", help="print server calls in flight per 0.5 s for our cases")
    ap.add_argument("--diagnose", action="store_true",
                    help="for our cases, print where worker time goes (wraps engine methods; adds a little overhead)")
    ap.add_argument("--quota", type=int, default=120, help="requests per window (default 120)")
    ap.add_argument("--window", type=float, default=10.0,
                    help="quota window in seconds (default 10: Gemini's 60 s window scaled down 6x)")
    ap.add_argument("--quota-dialogs", type=int, default=300, help="dialogs in the quota case (default 300)")
    ap.add_argument("--quota-latency", type=float, default=0.5)
    ap.add_argument("--tpm", type=int, default=150_000, help="tokens per window in the tpm quota case")
    ap.add_argument("--quota-cases", default="rpm", help="which quota cases (rpm,tpm,change; default rpm)")
    ap.add_argument("--quota-shapes", default=",".join(QUOTA_SHAPES),
                    help="429 shapes of the quota cases (value: quotaValue + RetryInfo, retry_info: RetryInfo "
                         "without quotaValue, bare: no details; default all)")
    ap.add_argument("--quota-windows", default=",".join(WINDOW_KINDS),
                    help="window kinds of the quota cases (sliding,fixed; default both)")
    ap.add_argument("--quota-repeat", type=int, default=None,
                    help="rounds of the quota cases (default: --repeat)")
    ap.add_argument("--cli-cases", default="32,8",
                    help="concurrencies of `groundwork generate` run in a fresh process, as a new user runs it "
                         "('' to skip; default 32,8)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the fake Gemini in this process (default: its own process, as a real provider)")
    ap.add_argument("--quota-detail", action="store_true", help="per-window table and cold start of the rpm case")
    ap.add_argument("--skip-faults", action="store_true", help="skip the 1-in-7 429 vs 503 runs")
    args = ap.parse_args()
    global FAKE_IN_PROCESS
    FAKE_IN_PROCESS = args.in_process
    if args.only_quota:
        args.cli_cases = ""
    if args.quick:
        args.dialogs = min(args.dialogs, 40)
        args.quota_dialogs = min(args.quota_dialogs, 120)

    log = lambda *a: print(*a, flush=True)  # noqa: E731
    # GeminiProvider logs one warning per retried 429; the quota case counts them instead.
    logging.getLogger("core.providers.base").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-throughput-"))
    try:
        log(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
        env = Env(tmp)
        log(f"setup once: embedding model loaded and warmed in {env.load_s:.1f} s; sample_data/ indexed in "
            f"{env.index_s:.1f} s ({env.report.added_documents} documents, {env.report.added_chunks} chunks); "
            "each case runs on a fresh copy of that data dir")
        log(f"workload: {args.dialogs} dialogs, max_turns {args.max_turns} (turns uniform 1..{args.max_turns}), "
            "GeminiProvider (google-genai) -> FakeGemini on 127.0.0.1 "
            + ("in this process" if args.in_process else "in its own process") + "; only run.run() is timed")
        results: list[Result] = []
        ai_results: dict[tuple[float, int], Result] = {}
        ai_note = ""
        ai_ready = False
        corpus_json = tmp / "chunks.json"
        if not args.skip_afterimage:
            ok, why = ensure_afterimage(log)
            ai_ready = ok
            if not ok:
                ai_note = f"AfterImage could not be installed: {why}"
                log(ai_note)
            else:
                log(f"AfterImage {AFTERIMAGE_VERSION} venv: {why}")
                corpus_json.write_text(json.dumps(env.chunk_texts), encoding="utf-8")
        runs: dict[str, list[Result]] = {}
        if not args.only_quota:
            from core.corpus.embeddings import packaged_model_path

            specs = []
            for spec in filter(None, args.cases.split(",")):
                conc_s, _, lat_s = spec.partition("@")
                specs.append(((float(lat_s) if lat_s else args.latency), int(conc_s)))
            for rep in range(args.repeat):
                if args.repeat > 1:
                    log(f"round {rep + 1} of {args.repeat}")
                for latency, conc in specs:
                    label = f"groundwork  {latency:g} s  c={conc}"
                    r = run_ours(env, label, latency, conc, args.dialogs, args.max_turns, diagnose=args.diagnose)
                    runs.setdefault(label, []).append(r)
                    log(f"  done: {r.line().strip()}  [{r.status}]  {r.usage.describe()}")
                    for line in r.extra_lines:
                        log(line)
                    if args.timeline:
                        print_timeline(r, log)
                    # AfterImage right after ours on the same case, so both see a similar machine.
                    if ai_ready and conc == 32:
                        label = f"afterimage  {latency:g} s  c={conc}"
                        r = run_afterimage(env, label, latency, conc, args.dialogs, args.max_turns, corpus_json,
                                           str(packaged_model_path()))
                        if r.status == "failed":
                            ai_note = f"AfterImage run failed: {' | '.join(r.extra['error'])}"
                            log(ai_note)
                            ai_ready = False
                            continue
                        runs.setdefault(label, []).append(r)
                        log(f"  done: {r.line().strip()}  [{r.extra.get('grounding')}]  {r.usage.describe()}")
        for label, rs in runs.items():
            # The run with the median conversations/min stands for the case.
            r = sorted(rs, key=lambda x: x.conv_per_min)[(len(rs) - 1) // 2]
            if len(rs) > 1:
                r.label = label
                r.spread = (min(x.conv_per_min for x in rs), max(x.conv_per_min for x in rs))
            r.rounds = rs
            results.append(r)
            if label.startswith("afterimage"):
                ai_results[(r.latency, r.concurrency)] = r

        if results:
            log("")
            log(HEADER)
            for r in results:
                log(r.line())
            log("  (avg inf = mean generateContent calls in flight at the server; for AfterImage estimated as "
                "calls x latency / wall)")
            if args.repeat > 1:
                log(f"  (each row is the median of {args.repeat} rounds by conversations/min; range: "
                    + "; ".join(f"{r.label.strip()} {r.spread[0]:.0f}-{r.spread[1]:.0f}" for r in results
                                if getattr(r, "spread", None)) + ")")
            log("")
            for r in results:
                if r.label.startswith("groundwork") and r.efficiency is not None:
                    target = 0.9 if r.concurrency <= 8 else 0.75
                    effs = [x.efficiency for x in r.rounds]
                    median = _median_range(effs)[0]
                    log(f"target: {r.label.strip()} efficiency {_cell(effs, '.3f')} >= {target} -> "
                        f"{'MET' if median >= target else 'MISSED'}")
            ours = {(r.latency, r.concurrency): r for r in results if r.label.startswith("groundwork")}
            for key, target in (((args.latency, 32), None), ((0.0, 32), 2.5)):
                if key in ai_results and key in ours and ai_results[key].conv_per_min:
                    ours_cpm = _median_range([x.conv_per_min for x in ours[key].rounds])[0]
                    ai_cpm = _median_range([x.conv_per_min for x in ai_results[key].rounds])[0]
                    ratio = ours_cpm / ai_cpm
                    verdict = (f">= {target}x -> {'MET' if ratio >= target else 'MISSED'}" if target
                               else "(no target)")
                    log(f"{'target: ' if target else ''}ours/theirs conversations/min at latency {key[0]:g} s, "
                        f"c={key[1]}: {ours_cpm:.1f} / {ai_cpm:.1f} = "
                        f"{ratio:.2f}x {verdict}")
            if ai_results:
                g = next(iter(ai_results.values())).extra.get("grounding")
                log(f"  AfterImage wiring: ContextualInstructionGeneratorCallback(InMemoryDocumentProvider(same "
                    f"chunks), 2 contexts, 3 instructions) + respondent grounding: {g}; its wall time is until "
                    "the num_dialogs-th conversation was saved (generate() itself took "
                    + ", ".join(f"{r.extra['generate_s']:.1f} s" for r in ai_results.values())
                    + " including its end-of-run metric plots)")
            if ai_note:
                log(ai_note)

        if not args.skip_quota:
            quota_cases(env, args, log, ai_ready, corpus_json)
        if args.cli_cases:
            cli_cases(env, args, log)
        if not args.skip_faults:
            fault_cases(env, args, log)
        log(f"load average at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
