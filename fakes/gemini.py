"""Fake Gemini and OpenAI-compatible HTTP servers on 127.0.0.1, with scripted faults, for tests and benchmarks.

They speak the real wire format, so the real google-genai and openai clients run against them unchanged::

    with FakeGemini(latency=0.5) as fake:
        settings = Settings(gemini_base_url=fake.base_url, gemini_api_key="k")
        ...
        fake.push_faults("rate_minute", 503)   # the next two generateContent calls fail
        assert fake.max_concurrency > 1
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

from fakes.gemini_batch import GeminiBatchEndpoints

FAULT_KINDS = (
    "rate_minute", "rate_day", "bad_request", "unauthenticated", "permission_denied", "not_found",
    "internal", "bad_gateway", "unavailable", "gateway_timeout", "timeout", "malformed",
    "safety", "recitation", "max_tokens", "truncated", "blocked",
)
_KIND_FOR_STATUS = {429: "rate_minute", 400: "bad_request", 401: "unauthenticated", 403: "permission_denied",
                    404: "not_found", 500: "internal", 502: "bad_gateway", 503: "unavailable",
                    504: "gateway_timeout"}
_STATUS_FOR_KIND = {kind: status for status, kind in _KIND_FOR_STATUS.items()} | {"rate_day": 429}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}
PER_MINUTE_QUOTA_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
TOKENS_PER_MINUTE_QUOTA_ID = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
PER_DAY_QUOTA_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
# How a quota 429 is written. "value": QuotaFailure with quotaValue (the quota's size) and RetryInfo; "retry_info":
# QuotaFailure naming the quota but no quotaValue, and RetryInfo (many real Gemini 429s); "bare": no details at all.
QUOTA_SHAPES = ("value", "retry_info", "bare")
# How a quota counts. "sliding": the last `rpm_window` seconds; "fixed": windows of `rpm_window` seconds from the
# first request counted, each starting empty (RetryInfo then says when the next one starts).
WINDOW_KINDS = ("sliding", "fixed")


@dataclass(frozen=True)
class Fault:
    """One scripted failure. ``kind`` is one of :data:`FAULT_KINDS`."""

    kind: str
    retry_delay: float = 1.0  # seconds, sent as google.rpc.RetryInfo (Gemini) or Retry-After (OpenAI) on 429
    sleep: float = 5.0  # seconds the server stalls before answering, for kind "timeout"
    details: bool = True  # False: a 429 with no details at all (no QuotaFailure, no RetryInfo), as Gemini sometimes sends

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; choose one of {', '.join(FAULT_KINDS)}.")


FaultSpec = Union[Fault, str, int, None]


def as_fault(spec: FaultSpec) -> Fault | None:
    """A :class:`Fault` from shorthand: a kind name ("safety") or an HTTP status (503)."""
    if spec is None or isinstance(spec, Fault):
        return spec
    if isinstance(spec, int):
        if spec not in _KIND_FOR_STATUS:
            raise ValueError(f"No fault for HTTP status {spec}; use one of {sorted(_KIND_FOR_STATUS)}.")
        return Fault(_KIND_FOR_STATUS[spec])
    return Fault(spec)


@dataclass
class RecordedRequest:
    """A request the fake received. The API key itself is never stored, only whether one came."""

    path: str
    model: str
    body: Any  # parsed JSON, or None when the body was not JSON
    key_sent: bool
    at: float = field(default_factory=time.time)


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Deterministic fake content
# ---------------------------------------------------------------------------------------------------------------

_STOPWORDS = frozenset("""
a about above after again against all also an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers him
his how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your yours answer answers
question questions reply respond write please using based given following user assistant conversation passage
passages context json return must only each one two three turn turns tell explain describe give make like
know ask about many much well
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{3,}")


def salient_words(*texts: str, limit: int = 12) -> list[str]:
    """Distinct content words from ``texts`` in order of appearance (the last text first)."""
    seen: dict[str, None] = {}
    for text in reversed(texts):
        for word in _WORD.findall(text or ""):
            if word.lower() not in _STOPWORDS and word.lower() not in seen:
                seen[word.lower()] = None
                if len(seen) >= limit:
                    return list(seen)
    return list(seen) or ["topic"]


_SENTENCES = (
    "The passage explains how {a} shapes {b} in practice.",
    "In short, {a} depends on {b}, and the text gives a concrete example of it.",
    "According to the source, {a} is described alongside {b} rather than in isolation.",
    "A key point is that {a} matters most when {b} is taken into account.",
    "The document notes that {a} and {b} are often confused, but they differ in scope.",
    "It also mentions {a} as the main reason behind {b}.",
)
_QUESTIONS = (  # like a real model's questions, each names two things from its material
    "What does the text say about {a} and {b}?",
    "How is {a} related to {b}?",
    "Why does the document emphasise {a} over {b}?",
    "Can you explain the role of {a} in {b}?",
    "What are the main points about {a} and {b}?",
)


def fake_text(words: list[str], rng: random.Random, sentences: int | None = None) -> str:
    """A few plausible sentences built around ``words``."""
    count = sentences or rng.randint(2, 4)
    return " ".join(rng.choice(_SENTENCES).format(a=rng.choice(words), b=rng.choice(words)) for _ in range(count))


def fake_question(words: list[str], rng: random.Random) -> str:
    """A plausible question ending in "?" that mentions one of ``words`` (the first one at least once)."""
    a = words[0] if rng.random() < 0.5 else rng.choice(words)
    others = [w for w in words if w != a] or words
    return rng.choice(_QUESTIONS).format(a=a, b=rng.choice(others))


def fake_json(schema: dict[str, Any], words: list[str], rng: random.Random) -> Any:
    """A value valid for a JSON Schema or a Gemini ``Schema`` (upper-case types, int64 fields as strings)."""
    return _fake_value(schema, schema, words, rng, name="", depth=0)


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _fake_value(schema: dict[str, Any], root: dict[str, Any], words: list[str], rng: random.Random, name: str,
                depth: int) -> Any:
    if depth > 12:
        return None
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if part else target
        return _fake_value(target, root, words, rng, name, depth + 1)
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = [s for s in schema.get(combinator) or [] if str(s.get("type", "")).lower() != "null"]
        if options:
            return _fake_value(options[0], root, words, rng, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else
                                           "array" if "items" in schema else "string")
    if kind == "object":
        return {key: _fake_value(sub, root, words, rng, key, depth + 1)
                for key, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        low = _as_int(schema.get("minItems"), 1)
        high = _as_int(schema.get("maxItems"), max(3, low))
        count = rng.randint(max(low, 1) if high >= 1 else 0, max(min(high, 3), low))
        item_name = name[:-1] if name.endswith("s") else name
        return [_fake_value(schema.get("items") or {}, root, words, rng, item_name, depth + 1) for _ in range(count)]
    if kind == "integer":
        return rng.randint(_as_int(schema.get("minimum"), 1), _as_int(schema.get("maximum"), 5))
    if kind == "number":
        low, high = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))
        return round(rng.uniform(low, high), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = (fake_question(words, rng) if re.search(r"question|query|ask", name, re.I)
            else fake_text(words, rng, sentences=1 if re.search(r"title|name|topic|label", name, re.I) else None))
    max_length = _as_int(schema.get("maxLength"), 0)
    return text[:max_length] if max_length else text


def _seeded_rng(body: Any) -> random.Random:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def fake_embedding(text: str, dims: int) -> list[float]:
    """A unit vector from hashed words: deterministic, and texts sharing words land close together."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "big") % dims
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON form, as Gemini writes it ("37s", "0.250s")."""
    return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{seconds:.3f}s"


# ---------------------------------------------------------------------------------------------------------------
# Server machinery shared by both fakes
# ---------------------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled "timeout" handler must not keep the process alive
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # benchmarks open many connections at once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse pooled connections
    disable_nagle_algorithm = True  # headers and body go out in separate writes; Nagle would add ~40 ms
    fake: "_FakeServer"

    def do_POST(self) -> None:
        self.fake._serve(self, "POST")

    def do_GET(self) -> None:
        self.fake._serve(self, "GET")

    def do_DELETE(self) -> None:
        self.fake._serve(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # the default prints every request to stderr
        pass


class _FakeServer:
    """Start/stop, counters, request log, latency and the fault queue; subclasses answer the requests."""

    def __init__(self, *, latency: float = 0.0, faults: Iterable[FaultSpec] = (),
                 fault_for: Callable[[int, Any], FaultSpec] | None = None,
                 responder: Callable[[Any], str] | None = None, api_key: str | None = None,
                 models: Collection[str] | None = None, rpm_quota: int = 0, rpm_window: float = 60.0,
                 tpm_quota: int = 0, quota_details: bool = True, quota_shape: str = "value",
                 window_kind: str = "sliding", log_size: int = 1000, port: int = 0):
        self.latency = latency  # seconds before each answer; may be changed while running
        self.fault_for = fault_for  # called with (n, request body) for the n-th (1-based) generate request
        self.responder = responder  # request body -> reply text; default: derived from the request
        self.api_key = api_key  # when set, requests must carry exactly this key
        self.models = set(models) if models is not None else None  # None: every model name exists
        self.rpm_quota = rpm_quota  # >0: at most this many generate requests per rpm_window, then 429
        self.rpm_window = rpm_window  # the window of both quotas, in seconds
        self.tpm_quota = tpm_quota  # >0: at most this many tokens (as usage reports them) per rpm_window, then 429
        if quota_shape not in QUOTA_SHAPES:
            raise ValueError(f"Unknown quota_shape {quota_shape!r}; choose one of {', '.join(QUOTA_SHAPES)}.")
        if window_kind not in WINDOW_KINDS:
            raise ValueError(f"Unknown window_kind {window_kind!r}; choose one of {', '.join(WINDOW_KINDS)}.")
        # quota_details=False is the older spelling of quota_shape="bare".
        self.quota_shape = quota_shape if quota_details else "bare"
        self.window_kind = window_kind
        self._window_origin: float | None = None  # fixed windows: when the first one began
        self._accepted_tokens: deque[tuple[float, int]] = deque()
        self._faults: deque[Fault | None] = deque(as_fault(f) for f in faults)
        self._lock = threading.Lock()
        self._accepted: deque[float] = deque()
        self._generate_count = 0
        self._in_flight = 0
        self.max_concurrency = 0
        self.requests_total = 0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.requests_with_key = 0
        self.requests: deque[RecordedRequest] = deque(maxlen=log_size)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _HTTPServer(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "_FakeServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"{type(self).__name__}:{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "_FakeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # scripting and statistics ----------------------------------------------------------------------------------

    def push_faults(self, *faults: FaultSpec) -> None:
        """Queue faults for the next generate requests, in order; ``None`` lets one request through."""
        with self._lock:
            self._faults.extend(as_fault(f) for f in faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reset_stats(self) -> None:
        with self._lock:
            self.requests_total = self.max_concurrency = self.requests_with_key = self._generate_count = 0
            self.by_path.clear()
            self.by_status.clear()
            self.requests.clear()

    def _next_fault(self, body: Any) -> Fault | None:
        with self._lock:
            self._generate_count += 1
            n = self._generate_count
            queued = self._faults.popleft() if self._faults else None
        if queued is not None:
            return queued
        return as_fault(self.fault_for(n, body)) if self.fault_for else None

    def set_quota(self, rpm: int | None = None, tpm: int | None = None) -> None:
        """Change the quotas while running (a provider raising or cutting a limit mid-run); None keeps one.

        What was accepted in the current window still counts against the new limit, as with a real quota."""
        with self._lock:
            if rpm is not None:
                self.rpm_quota = rpm
            if tpm is not None:
                self.tpm_quota = tpm

    def _take_quota_slot(self, tokens: int = 0) -> float | None:
        """None when the request fits the quotas, else seconds until it would fit (see :meth:`_take_quota`)."""
        hit = self._take_quota(tokens)
        return hit[1] if hit else None

    def _take_quota(self, tokens: int = 0) -> tuple[str, float] | None:
        """None when a request of ``tokens`` fits the rpm and tpm quotas (and is counted), else which quota it
        broke ("requests" or "tokens") and the seconds until enough of the window frees up."""
        if self.rpm_quota <= 0 and self.tpm_quota <= 0:
            return None
        with self._lock:
            now = time.monotonic()
            if self.window_kind == "fixed":
                return self._take_fixed(now, tokens)
            while self._accepted and now - self._accepted[0] >= self.rpm_window:
                self._accepted.popleft()
            while self._accepted_tokens and now - self._accepted_tokens[0][0] >= self.rpm_window:
                self._accepted_tokens.popleft()
            if 0 < self.rpm_quota <= len(self._accepted):
                # The slot frees when enough old requests leave for the count to drop under the quota.
                oldest = self._accepted[len(self._accepted) - self.rpm_quota]
                return "requests", max(self.rpm_window - (now - oldest), 0.001)
            used = sum(n for _, n in self._accepted_tokens)
            if self.tpm_quota > 0 and used + tokens > self.tpm_quota:
                over, freed = used + tokens - self.tpm_quota, 0
                for at, n in self._accepted_tokens:
                    freed += n
                    if freed >= over:
                        return "tokens", max(self.rpm_window - (now - at), 0.001)
                return "tokens", self.rpm_window  # bigger than the whole quota: never fits
            self._accepted.append(now)
            if self.tpm_quota > 0:
                self._accepted_tokens.append((now, tokens))
            return None

    def _take_fixed(self, now: float, tokens: int) -> tuple[str, float] | None:
        """:meth:`_take_quota` for fixed windows (caller holds the lock): the count starts at zero at each
        window's start, and a 429 waits until the next one."""
        if self._window_origin is None:
            self._window_origin = now
        start = now - (now - self._window_origin) % self.rpm_window
        while self._accepted and self._accepted[0] < start:
            self._accepted.popleft()
        while self._accepted_tokens and self._accepted_tokens[0][0] < start:
            self._accepted_tokens.popleft()
        wait = max(start + self.rpm_window - now, 0.001)
        if 0 < self.rpm_quota <= len(self._accepted):
            return "requests", wait
        if self.tpm_quota > 0 and sum(n for _, n in self._accepted_tokens) + tokens > self.tpm_quota:
            return "tokens", wait
        self._accepted.append(now)
        if self.tpm_quota > 0:
            self._accepted_tokens.append((now, tokens))
        return None

    # request handling --------------------------------------------------------------------------------------------

    def _serve(self, handler: _Handler, method: str) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)
            self.requests_total += 1
        try:
            length = int(handler.headers.get("Content-Length") or 0)
            raw = handler.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                body = None
            path = handler.path.split("?", 1)[0]
            key = self._key_from(handler)
            model = self._model_from(path, body)
            with self._lock:
                self.by_path[path] += 1
                self.requests_with_key += bool(key)
                self.requests.append(RecordedRequest(path, model, body, key_sent=bool(key)))
            if self.latency:
                time.sleep(self.latency)
            try:
                reply = self._answer(method, path, model, key, body)
            except Exception as exc:  # a broken responder or fault_for: answer 500 rather than drop the connection
                reply = _json_reply(500, {"error": {"code": 500, "message": f"fake server bug: {exc!r}",
                                                    "status": "INTERNAL"}})
            with self._lock:
                self.by_status[reply.status] += 1
            handler.send_response(reply.status)
            headers = {"Content-Type": "application/json; charset=UTF-8", **reply.headers,
                       "Content-Length": str(len(reply.body))}
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up (its timeout): nothing left to do
        finally:
            with self._lock:
                self._in_flight -= 1

    def _key_from(self, handler: _Handler) -> str:
        raise NotImplementedError

    def _model_from(self, path: str, body: Any) -> str:
        raise NotImplementedError

    def _answer(self, method: str, path: str, model: str, key: str, body: Any) -> _Reply:
        raise NotImplementedError


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers or {})


# ---------------------------------------------------------------------------------------------------------------
# Gemini
# ---------------------------------------------------------------------------------------------------------------


class FakeGemini(GeminiBatchEndpoints, _FakeServer):
    """A Gemini REST API (``:generateContent``, ``:batchEmbedContents``, ``:embedContent``) on 127.0.0.1.

    Args:
        latency: seconds before each answer (change ``.latency`` while running to simulate load).
        faults: faults for the first generate requests, in order (see :class:`Fault`, :func:`as_fault`).
        fault_for: ``(n, request) -> fault or None`` for the n-th generate request, after the queue is empty.
        responder: ``request -> reply text``; default: a deterministic reply derived from the request.
        api_key: when set, a request without a key gets 403, one with another key gets ``bad_key_status``.
        bad_key_status: 403 or 401, or 400 to answer like the real API (INVALID_ARGUMENT, API_KEY_INVALID).
        models: model names that exist; others get 404 NOT_FOUND. None: every name exists.
        rpm_quota: more than this many generate requests within ``rpm_window`` seconds get a per-minute 429
            whose RetryInfo says when the oldest request leaves the window.
        tpm_quota: more than this many tokens (``totalTokenCount`` of the replies) within ``rpm_window`` seconds
            get a tokens-per-minute 429 (quotaId GenerateContentInputTokensPerModelPerMinute-FreeTier).
            Change either quota while running with :meth:`set_quota`.
        quota_shape: how quota 429s are written (:data:`QUOTA_SHAPES`): "value" (QuotaFailure with quotaValue,
            and RetryInfo), "retry_info" (no quotaValue), "bare" (no details: real ones sometimes are).
            ``quota_details=False`` is the same as "bare".
        window_kind: "sliding" (the last ``rpm_window`` seconds) or "fixed" (windows starting empty every
            ``rpm_window`` seconds from the first request; RetryInfo says when the next one starts).
        thinking_tokens: ``thoughtsTokenCount`` reported per reply (0 when the request turns thinking off).
        embedding_dims: embedding size when the request gives no ``outputDimensionality``.
    """

    def __init__(self, *, bad_key_status: int = 403, thinking_tokens: int = 24, embedding_dims: int = 768,
                 **options: Any):
        super().__init__(**options)
        self._init_batch()  # the Batch and Files API endpoints (fakes.gemini_batch)
        self.bad_key_status = bad_key_status
        self.thinking_tokens = thinking_tokens
        self.embedding_dims = embedding_dims

    def __enter__(self) -> "FakeGemini":
        self.start()
        return self

    def _key_from(self, handler: _Handler) -> str:
        query_key = re.search(r"[?&]key=([^&]+)", handler.path)
        return handler.headers.get("x-goog-api-key") or (query_key.group(1) if query_key else "")

    def _model_from(self, path: str, body: Any) -> str:
        match = re.search(r"/models/([^/:]+)", path)
        return match.group(1) if match else ""

    @staticmethod
    def error_body(status: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON Gemini sends with a non-200 status."""
        error: dict[str, Any] = {"code": status, "message": message,
                                 "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
        if details:
            error["details"] = details
        return {"error": error}

    def _error(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> _Reply:
        return _json_reply(status, self.error_body(status, message, details))

    def _answer(self, method: str, path: str, model: str, key: str, body: Any) -> _Reply:
        if method != "POST" or not re.search(r":(generateContent|batchEmbedContents|embedContent)$", path):
            return self._error(404, f"Method not found: {method} {path}.")
        if self.api_key is not None and key != self.api_key:
            return self._auth_failure(key)
        if self.models is not None and model not in self.models:
            return self._error(404, f"models/{model} is not found for API version v1beta, or is not supported "
                                    f"for generateContent. Call ListModels to see the list of available models "
                                    f"and their supported methods.")
        if not isinstance(body, dict):
            return self._error(400, "Invalid JSON payload received.")
        if path.endswith(":batchEmbedContents"):
            return self._embeddings(body)
        if path.endswith(":embedContent"):
            return _json_reply(200, {"embedding": {"values": self._embed_one(body)}})
        fault = self._next_fault(body)
        if fault is not None:
            return self._faulty(fault, model, body)
        # A tokens quota counts the reply's tokens, so the reply is written first (and dropped on a 429).
        response = self._generate(model, body) if self.tpm_quota > 0 else None
        hit = self._take_quota(response["usageMetadata"]["totalTokenCount"] if response else 0)
        if hit is not None:
            which, wait = hit
            if self.quota_shape == "bare":
                return self._rate_limited("", model, wait, details=False)
            value = (self.tpm_quota if which == "tokens" else self.rpm_quota) if self.quota_shape == "value" else -1
            return self._rate_limited(TOKENS_PER_MINUTE_QUOTA_ID if which == "tokens" else PER_MINUTE_QUOTA_ID,
                                      model, wait, quota_value=value)
        return _json_reply(200, response or self._generate(model, body))

    def _auth_failure(self, key: str) -> _Reply:
        if not key:
            return self._error(403, "Method doesn't allow unregistered callers (callers without established "
                                    "identity). Please use API Key or other form of API consumer identity to call "
                                    "this API.")
        if self.bad_key_status == 400:
            return self._error(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        if self.bad_key_status == 401:
            return self._error(401, "Request had invalid authentication credentials. Expected OAuth 2 access "
                                    "token, login cookie or other valid authentication credential.")
        return self._error(403, "The caller does not have permission")

    def _rate_limited(self, quota_id: str, model: str, retry_delay: float, details: bool = True,
                      quota_value: int = 0) -> _Reply:
        """A 429 as Gemini writes it; ``quota_value`` -1 leaves quotaValue out (0: a default for scripted faults)."""
        if not details:
            # What Gemini sometimes answers under load or a quota alike: no QuotaFailure, no RetryInfo.
            return self._error(429, "Resource has been exhausted (e.g. check quota).")
        per_day = "PerDay" in quota_id
        metric = ("generate_content_free_tier_input_token_count" if "Tokens" in quota_id
                  else "generate_content_free_tier_requests")
        violation = {"quotaMetric": f"generativelanguage.googleapis.com/{metric}", "quotaId": quota_id,
                     "quotaDimensions": {"location": "global", "model": model}}
        if quota_value >= 0:
            violation["quotaValue"] = str(quota_value or (250 if per_day else 10))
        details = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _duration(retry_delay)},
        ]
        return self._error(429, "You exceeded your current quota, please check your plan and billing details. "
                                "For more information on this error, head to: "
                                "https://ai.google.dev/gemini-api/docs/rate-limits.", details)

    def _faulty(self, fault: Fault, model: str, body: dict[str, Any]) -> _Reply:
        kind = fault.kind
        if kind in ("rate_minute", "rate_day"):
            return self._rate_limited(PER_DAY_QUOTA_ID if kind == "rate_day" else PER_MINUTE_QUOTA_ID, model,
                                      fault.retry_delay, details=fault.details)
        if kind == "timeout":
            time.sleep(fault.sleep)
            return _json_reply(200, self._generate(model, body))
        if kind == "malformed":
            return _Reply(200, b'{"candidates": [{"content": {"parts": [{"text": "cut off')
        usage = self._usage(body, "", thinking=self._thinking(body))
        if kind == "safety":
            candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}
            return _json_reply(200, {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model})
        if kind == "recitation":
            return _json_reply(200, {"candidates": [{"finishReason": "RECITATION", "index": 0}],
                                     "usageMetadata": usage, "modelVersion": model})
        if kind == "max_tokens":
            # What gemini-2.5 does when thinking uses up max_output_tokens: a candidate with no parts.
            candidate = {"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}
            return _json_reply(200, {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model})
        if kind == "truncated":
            # A long reply cut at max_output_tokens: the text so far, finish reason MAX_TOKENS.
            text = self.reply_for(body)
            cut = text[:max(8, len(text) // 2)]
            candidate = {"content": {"parts": [{"text": cut}], "role": "model"}, "finishReason": "MAX_TOKENS",
                         "index": 0}
            return _json_reply(200, {"candidates": [candidate], "usageMetadata": self._usage(body, cut, False),
                                     "modelVersion": model})
        if kind == "blocked":
            feedback = {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]}
            usage = {k: v for k, v in usage.items() if k in ("promptTokenCount", "totalTokenCount")}
            return _json_reply(200, {"promptFeedback": feedback, "usageMetadata": usage, "modelVersion": model})
        status = _STATUS_FOR_KIND[kind]
        messages = {400: "Request contains an invalid argument.", 401: "Request had invalid authentication "
                    "credentials.", 403: "The caller does not have permission", 404: f"models/{model} is not found.",
                    500: "An internal error has occurred. Please retry or report in "
                         "https://developers.generativeai.google/guide/troubleshooting",
                    502: "Bad Gateway", 503: "The model is overloaded. Please try again later.",
                    504: "Deadline expired before operation could complete."}
        return self._error(status, messages[status])

    @staticmethod
    def _thinking(body: dict[str, Any]) -> bool:
        # google-genai 3.x sends this sub-object with snake_case keys; the real API takes both spellings.
        thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        return thinking.get("thinkingBudget", thinking.get("thinking_budget")) != 0

    def _usage(self, body: dict[str, Any], text: str, thinking: bool) -> dict[str, int]:
        prompt = max(1, len(json.dumps(body.get("contents", "")) + json.dumps(body.get("systemInstruction", ""))) // 4)
        usage = {"promptTokenCount": prompt}
        if text:
            usage["candidatesTokenCount"] = max(1, len(text) // 4)
        if thinking and self.thinking_tokens:
            usage["thoughtsTokenCount"] = self.thinking_tokens  # omitted when zero, as the real API does
        usage["totalTokenCount"] = sum(usage.values())
        return usage

    def _generate(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.responder(body) if self.responder else self.reply_for(body)
        return {
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                            "index": 0}],
            "usageMetadata": self._usage(body, text, thinking=self._thinking(body)),
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }

    @staticmethod
    def reply_for(body: dict[str, Any]) -> str:
        """The default reply: JSON for the schema when structured output is asked for, else a few sentences."""
        system = " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
        user_turns = [c for c in body.get("contents") or [] if c.get("role", "user") == "user"]
        last = " ".join(p.get("text", "") for p in (user_turns[-1].get("parts") or [])) if user_turns else ""
        # Like a real model, write about the quoted material when the prompt has some, not about the prompt's
        # own instructions; and never take a request to write questions as the topic of the questions.
        start, end = system.find("<passages>"), system.rfind("</passages>")
        material = re.sub(r"<[^>]*>", " ", system[start:end]) if 0 <= start < end else system
        words = salient_words(material) if "Write the" in last else salient_words(material, last)
        rng = _seeded_rng(body)
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if config.get("responseMimeType") == "application/json":
            return json.dumps(fake_json(schema, words, rng) if schema else {"answer": fake_text(words, rng)})
        return fake_text(words, rng)

    def _embed_one(self, request: dict[str, Any]) -> list[float]:
        text = " ".join(p.get("text", "") for p in (request.get("content") or {}).get("parts") or [])
        return fake_embedding(text, int(request.get("outputDimensionality") or self.embedding_dims))

    def _embeddings(self, body: dict[str, Any]) -> _Reply:
        return _json_reply(200, {"embeddings": [{"values": self._embed_one(r)} for r in body.get("requests") or []]})


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible
# ---------------------------------------------------------------------------------------------------------------


class FakeOpenAI(_FakeServer):
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 (as Ollama, vLLM or llama.cpp serve it).

    Takes the same options as :class:`FakeGemini` (latency, faults, fault_for, responder, api_key, models,
    rpm_quota). ``json_schema_support=False`` answers 400 to ``response_format`` type json_schema, as some
    servers do, so clients can be tested falling back to json_object. ``base_url`` ends in ``/v1``.
    """

    def __init__(self, *, json_schema_support: bool = True, reasoning_tokens: int = 0, **options: Any):
        super().__init__(**options)
        self.json_schema_support = json_schema_support
        self.reasoning_tokens = reasoning_tokens

    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _key_from(self, handler: _Handler) -> str:
        auth = handler.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else ""

    def _model_from(self, path: str, body: Any) -> str:
        return str(body.get("model", "")) if isinstance(body, dict) else ""

    @staticmethod
    def _error(status: int, message: str, error_type: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> _Reply:
        return _json_reply(status, {"error": {"message": message, "type": error_type, "param": None, "code": code}},
                           headers)

    def _answer(self, method: str, path: str, model: str, key: str, body: Any) -> _Reply:
        if method != "POST" or not path.endswith("/chat/completions"):
            return self._error(404, f"Unknown path {path}", "invalid_request_error")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if self.models is not None and model not in self.models:
            return self._error(404, f"The model `{model}` does not exist.", "invalid_request_error",
                               "model_not_found")
        if not isinstance(body, dict):
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema" and not self.json_schema_support:
            return self._error(400, "response_format type json_schema is not supported", "invalid_request_error")
        fault = self._next_fault(body)
        if fault is not None:
            return self._faulty(fault, model, body)
        wait = self._take_quota_slot()
        if wait is not None:
            return self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                               {"retry-after": f"{wait:.3f}"})
        return _json_reply(200, self._completion(model, body))

    def _faulty(self, fault: Fault, model: str, body: dict[str, Any]) -> _Reply:
        kind = fault.kind
        if kind == "timeout":
            time.sleep(fault.sleep)
            return _json_reply(200, self._completion(model, body))
        if kind == "malformed":
            return _Reply(200, b'{"choices": [{"message": {"content": "cut off')
        if kind in ("safety", "recitation", "blocked"):
            return _json_reply(200, self._completion(model, body, text="", finish_reason="content_filter"))
        if kind == "max_tokens":
            return _json_reply(200, self._completion(model, body, text="", finish_reason="length"))
        status = _STATUS_FOR_KIND[kind]
        if status == 429:
            return self._error(429, "You exceeded your current quota" if kind == "rate_day" else
                               "Rate limit reached for requests", "requests",
                               "insufficient_quota" if kind == "rate_day" else "rate_limit_exceeded",
                               {"retry-after": f"{fault.retry_delay:g}"})
        return self._error(status, f"Fake {kind} error", "server_error" if status >= 500 else "invalid_request_error")

    def _completion(self, model: str, body: dict[str, Any], text: str | None = None,
                    finish_reason: str = "stop") -> dict[str, Any]:
        if text is None:
            text = self.responder(body) if self.responder else self.reply_for(body)
        prompt = max(1, len(json.dumps(body.get("messages", ""))) // 4)
        completion = max(1, len(text) // 4) if text else 0
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion + self.reasoning_tokens,
                                 "total_tokens": prompt + completion + self.reasoning_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage}

    @staticmethod
    def reply_for(body: dict[str, Any]) -> str:
        """The default reply: JSON for ``response_format`` when asked for, else a few sentences."""
        messages = body.get("messages") or []

        def text_of(message: dict[str, Any]) -> str:
            content = message.get("content") or ""
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)

        system = " ".join(text_of(m) for m in messages if m.get("role") in ("system", "developer"))
        users = [text_of(m) for m in messages if m.get("role") == "user"]
        words = salient_words(system, users[-1] if users else "")
        rng = _seeded_rng(body)
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            return json.dumps(fake_json((response_format.get("json_schema") or {}).get("schema") or {}, words, rng))
        if response_format.get("type") == "json_object":
            return json.dumps({"answer": fake_text(words, rng)})
        return fake_text(words, rng)


# Follow-ups the way people write them: they lean on the conversation and name nothing.
LEANING_FOLLOW_UPS = (
    "Why did the court decide it that way?",
    "Which earlier decisions did it rely on for that point?",
    "What happened to the other side's argument?",
    "Can you walk me through the reasoning there?",
    "So what was the outcome in the end?",
    "Did anyone disagree with that?",
    "What facts mattered most for that?",
)


def leaning_user(structured_query: str = "lazy") -> Callable[[dict[str, Any]], str]:
    """A responder whose simulated user writes follow-ups that lean on the conversation, like real users.

    Opening questions, answers and everything else are the default replies. A follow-up request (the
    correspondent's) gets one of :data:`LEANING_FOLLOW_UPS`. When the request asks for structured output,
    ``structured_query`` says what the model puts in the search query: ``lazy`` repeats the vague message
    (as weak models do), ``none`` ignores the schema and answers in plain text, ``empty`` leaves it blank.
    """
    def respond(body: dict[str, Any]) -> str:
        system = " ".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
        config = body.get("generationConfig") or {}
        schema = json.dumps(config.get("responseJsonSchema") or config.get("responseSchema") or {})
        if "search_query" not in schema and "You play" not in system:
            return FakeGemini.reply_for(body)
        message = _seeded_rng(body).choice(LEANING_FOLLOW_UPS)
        if "search_query" not in schema or structured_query == "none":
            return message
        return json.dumps({"message": message, "search_query": message if structured_query == "lazy" else ""})
    return respond
