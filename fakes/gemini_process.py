"""The fake Gemini server in a process of its own, as every real provider is, for benchmarks and tests.

In the same process the fake shares the client's GIL: its handlers steal CPU from the run it serves and hide
the cost of real network hand-offs. Here it runs as ``python -m fakes.gemini_process`` and is driven over
HTTP (control endpoints under ``/_fake/``)::

    with FakeGeminiProcess(latency=0.5, rpm_quota=120, rpm_window=10, quota_shape="bare") as fake:
        settings = Settings(gemini_base_url=fake.base_url, gemini_api_key="k")
        ...
        fake.set_quota(rpm=60)          # cut mid-run
        stats = fake.stats()            # by_status, by_path, max_concurrency, answers, in-flight samples

``answers`` are (time.monotonic(), status, tokens) of every generateContent answer: CLOCK_MONOTONIC is the
same clock in every process of a machine, so they line up with the client's own times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from fakes.gemini import QUOTA_SHAPES, WINDOW_KINDS, FakeGemini, Fault, _Handler

ROOT = Path(__file__).resolve().parent.parent


class RecordingGemini(FakeGemini):
    """FakeGemini that logs every generateContent answer, samples its calls in flight, and answers ``/_fake/``."""

    def __init__(self, *, fault_every: int = 0, fault_kind: str = "unavailable", sample_every: float = 0.02,
                 **options: Any):
        if fault_every:
            options["fault_for"] = lambda n, body: Fault(fault_kind) if n % fault_every == 0 else None
        super().__init__(**options)
        self.answers: list[tuple[float, int, int]] = []
        self.samples: list[tuple[float, int]] = []  # (time, generate calls in flight)
        self._generate_in_flight = 0
        self._sample_every = sample_every
        self._sampling = threading.Event()
        # A client that closes an idle keep-alive connection is normal; no traceback for it.
        self._server.handle_error = lambda request, client_address: None

    def start(self) -> "RecordingGemini":
        super().start()
        threading.Thread(target=self._sample, name="fake-sampler", daemon=True).start()
        return self

    def close(self) -> None:
        self._sampling.set()
        super().close()

    def _sample(self) -> None:
        while not self._sampling.wait(self._sample_every):
            self.samples.append((time.monotonic(), self._generate_in_flight))

    def _serve(self, handler: _Handler, method: str) -> None:
        if handler.path.startswith("/_fake/"):
            self._control(handler, method)
            return
        generate = handler.path.split("?", 1)[0].endswith(":generateContent")
        if generate:
            with self._lock:
                self._generate_in_flight += 1
        try:
            super()._serve(handler, method)
        finally:
            if generate:
                with self._lock:
                    self._generate_in_flight -= 1

    def _answer(self, method: str, path: str, model: str, key: str, body: Any):
        reply = super()._answer(method, path, model, key, body)
        if path.endswith(":generateContent"):
            tokens = json.loads(reply.body)["usageMetadata"]["totalTokenCount"] if reply.status == 200 else 0
            with self._lock:
                self.answers.append((time.monotonic(), reply.status, tokens))
        return reply

    def _control(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}") if length else {}
        path = handler.path.split("?", 1)[0]
        if path == "/_fake/stats":
            since = float(body.get("since", 0.0))
            with self._lock:
                payload = {"by_status": dict(self.by_status), "by_path": dict(self.by_path),
                           "max_concurrency": self.max_concurrency, "requests_total": self.requests_total,
                           "answers": [a for a in self.answers if a[0] >= since],
                           "samples": [s for s in self.samples if s[0] >= since]}
        elif path == "/_fake/quota":
            self.set_quota(rpm=body.get("rpm"), tpm=body.get("tpm"))
            payload = {"ok": True}
        elif path == "/_fake/latency":
            self.latency = float(body["latency"])
            payload = {"ok": True}
        elif path == "/_fake/reset":
            self.reset_stats()
            with self._lock:
                self.answers.clear()
                self.samples.clear()
            payload = {"ok": True}
        else:
            payload = {"error": f"unknown control path {path}"}
        data = json.dumps(payload).encode()
        handler.send_response(200 if "error" not in payload else 404)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class FakeGeminiProcess:
    """Starts ``RecordingGemini`` in a child process with these options and talks to it over HTTP.

    Options: latency, rpm_quota, tpm_quota, rpm_window, quota_shape, window_kind, thinking_tokens, api_key,
    fault_every and fault_kind (every n-th generate call answers that fault; a callable cannot cross processes).
    """

    def __init__(self, **options: Any):
        self.options = options
        self._proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeGeminiProcess":
        if self._proc is not None:
            return self
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen([sys.executable, "-m", "fakes.gemini_process", json.dumps(self.options)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(ROOT),
                                      text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.strip():
            self.close()
            raise RuntimeError("the fake Gemini process did not start (see its stderr above)")
        self.port = int(json.loads(line)["port"])
        return self

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url + path, data=json.dumps(payload or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self, since: float = 0.0) -> dict[str, Any]:
        return self._call("/_fake/stats", {"since": since})

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (user + system; Linux /proc)."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (AttributeError, OSError, IndexError, ValueError):
            return 0.0

    def set_quota(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self._call("/_fake/quota", {"rpm": rpm, "tpm": tpm})

    def set_latency(self, latency: float) -> None:
        self._call("/_fake/latency", {"latency": latency})

    def reset_stats(self) -> None:
        self._call("/_fake/reset")

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.stdin:
                self._proc.stdin.close()  # the child serves until its stdin closes
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        finally:
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> "FakeGeminiProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessFake:
    """:class:`RecordingGemini` in this process behind :class:`FakeGeminiProcess`'s interface (to compare the two)."""

    def __init__(self, **options: Any):
        self.fake = RecordingGemini(**options)

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def start(self) -> "InProcessFake":
        self.fake.start()
        return self

    def stats(self, since: float = 0.0) -> dict[str, Any]:
        fake = self.fake
        with fake._lock:
            return {"by_status": dict(fake.by_status), "by_path": dict(fake.by_path),
                    "max_concurrency": fake.max_concurrency, "requests_total": fake.requests_total,
                    "answers": [a for a in fake.answers if a[0] >= since],
                    "samples": [s for s in fake.samples if s[0] >= since]}

    def set_quota(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.fake.set_quota(rpm=rpm, tpm=tpm)

    def cpu_s(self) -> float:
        return 0.0  # its CPU is this process's

    def set_latency(self, latency: float) -> None:
        self.fake.latency = latency

    def reset_stats(self) -> None:
        self.fake.reset_stats()
        with self.fake._lock:
            self.fake.answers.clear()
            self.fake.samples.clear()

    def close(self) -> None:
        self.fake.close()

    def __enter__(self) -> "InProcessFake":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="Serve a fake Gemini on 127.0.0.1 until stdin closes; prints "
                                             '{"port": N} first. Options as one JSON object.')
    ap.add_argument("options", nargs="?", default="{}", help="JSON: FakeGemini options (see FakeGeminiProcess)")
    args = ap.parse_args()
    options = json.loads(args.options)
    if options.get("quota_shape", "value") not in QUOTA_SHAPES or options.get("window_kind", "sliding") not in WINDOW_KINDS:
        print(f"quota_shape must be one of {QUOTA_SHAPES}, window_kind one of {WINDOW_KINDS}", file=sys.stderr)
        return 2
    fake = RecordingGemini(**options).start()
    print(json.dumps({"port": fake.port}), flush=True)
    try:
        sys.stdin.read()  # EOF when the parent closes the pipe or dies
    except KeyboardInterrupt:
        pass
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
