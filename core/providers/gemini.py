"""The Gemini provider: one shared google-genai client, our own retry loop, and errors that say what to do."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.genai._transformers import t_model

from core.config import Settings
from core.providers.base import (CallGate, LLMError, LLMRequest, LLMResult, QuotaExhaustedError, RetryPolicy,
                                 call_with_retries, until_pacific_midnight)
from core.providers.base import redact

NO_KEY_MESSAGE = "No Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) or paste one on the Settings page."
KEY_REJECTED_MESSAGE = "The Gemini key was rejected: check GEMINI_API_KEY or the key typed on the Settings page."
RETRIED_STATUSES = frozenset({408, 500, 502, 503, 504})
SAFETY_FINISH_REASONS = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
                                   "MODEL_ARMOR"})
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# google-genai 3.x sends through httpx2 (a fork of httpx with its own exception classes) unless
# GOOGLE_GENAI_HTTP_CLIENT=httpx, so transport failures can come from either package.
_TIMEOUTS = (httpx.TimeoutException, httpx2.TimeoutException)
_BAD_URLS = (httpx.UnsupportedProtocol, httpx2.UnsupportedProtocol, httpx.InvalidURL, httpx2.InvalidURL)
_TRANSPORT_ERRORS = (httpx.TransportError, httpx2.TransportError)


class GeminiProvider:
    """Gemini through google-genai. One client serves every call from every thread.

    The SDK's own retries stay off (they would hide 429s from the call gate); :func:`call_with_retries`
    retries 429/5xx/timeouts/connection errors with backoff and honours Gemini's RetryInfo.

    Args:
        settings: model, base URL, timeout, retries, thinking budget.
        gate: paces attempts and hears about 429s; default: a gate with ``settings.rpm_limit``.
        api_key: overrides ``settings.gemini_api_key`` (the key typed on the Settings page).
        backoff_base, max_backoff: exponential backoff (seconds) for retries without a server hint.
        max_retry_wait: cap on a RetryInfo delay (seconds).
        max_connections: size of the shared HTTP connection pool; keep it above the number of workers.
    """

    name = "gemini"

    def __init__(self, settings: Settings, gate: CallGate | None = None, api_key: str | None = None, *,
                 backoff_base: float = 1.0, max_backoff: float = 30.0, max_retry_wait: float = 90.0,
                 max_connections: int = 128):
        key = (api_key or settings.gemini_api_key or "").strip()
        if not key:
            raise LLMError(NO_KEY_MESSAGE, kind="no_key")
        self.model = settings.gemini_model
        self.settings = settings
        self.gate = gate or CallGate(settings.rpm_limit)
        self.retry = RetryPolicy(max(settings.gemini_max_retries, 0), backoff_base, max_backoff, max_retry_wait)
        self._secrets = [key, *settings.secret_values()]
        self.base_url = gemini_base_url(settings)
        http_options = types.HttpOptions(
            base_url=settings.gemini_base_url or None,  # None: the SDK reads GOOGLE_GEMINI_BASE_URL itself
            timeout=int(settings.request_timeout * 1000),
            retry_options=None,
            # httpx2 keeps only 20 idle connections by default: with more workers, every call beyond 20 would
            # open (and TLS-handshake) a fresh connection.
            client_args={"limits": httpx2.Limits(max_connections=max_connections,
                                                 max_keepalive_connections=max_connections)},
        )
        self._client = genai.Client(api_key=key, vertexai=False, http_options=http_options)
        self._path = f"{t_model(self._client._api_client, self.model)}:generateContent"

    def generate(self, request: LLMRequest) -> LLMResult:
        """One reply for ``request``, retried on transient failures.

        Raises:
            QuotaExhaustedError: the daily quota is used up, or 429s outlasted the retries.
            LLMError: anything else, with ``kind`` saying why.
        """
        if not request.messages:
            raise LLMError("Nothing to send: the request has no messages.", kind="bad_request")
        body = self.request_body(request)

        def attempt() -> LLMResult:
            try:
                # The SDK's own generate_content turns its pydantic request into this JSON field by field
                # (~6.6 ms of CPU a call, a quarter of a run's CPU per call at c=32): we write the JSON once and
                # send it through the same client (its auth, base URL, timeout, pooled connections and
                # APIError for non-200 answers). tests/test_gemini_provider.py checks the two bodies match.
                response = self._client._api_client.request("post", self._path, body, None)
                data = json.loads(response.body) if response.body else {}
                if not isinstance(data, dict):
                    raise json.JSONDecodeError("not a JSON object", str(response.body)[:50], 0)
            except (genai_errors.APIError, *_TRANSPORT_ERRORS, json.JSONDecodeError,
                    pydantic.ValidationError) as exc:
                error = self._error_from(exc)
            else:
                return self._result_from(data)
            # Raised outside the except block so the SDK's exception (which holds the request, key header
            # included) is not kept as __context__ and never shows up in a traceback.
            raise error

        return call_with_retries(attempt, self.gate, self.retry, label=f"Gemini {self.model}",
                                 priority=request.priority)

    def close(self) -> None:
        self._client.close()

    def request_body(self, request: LLMRequest) -> dict[str, Any]:
        """The generateContent JSON for ``request``, as google-genai's ``generate_content`` would send it."""
        body: dict[str, Any] = {"contents": [
            {"parts": [{"text": m.content}], "role": "model" if m.role == "assistant" else "user"}
            for m in request.messages]}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}], "role": "user"}
        config: dict[str, Any] = {"temperature": request.temperature, "maxOutputTokens": request.max_tokens}
        if request.seed is not None:
            config["seed"] = request.seed
        if request.json_schema:
            config["responseMimeType"] = "application/json"
            # responseJsonSchema takes plain JSON Schema as is; responseSchema is Gemini's OpenAPI subset,
            # which rejects keywords that subset lacks.
            config["responseJsonSchema"] = request.json_schema
        budget = self.settings.gemini_thinking_budget
        if budget >= 0:
            config["thinkingConfig"] = {"thinking_budget": budget}  # the SDK's spelling; the API takes both
        body["generationConfig"] = config
        return body

    def _result_from(self, data: dict[str, Any]) -> LLMResult:
        usage = data.get("usageMetadata") or {}
        prompt = int(usage.get("promptTokenCount") or 0)
        completion = int(usage.get("candidatesTokenCount") or 0)
        thinking = int(usage.get("thoughtsTokenCount") or 0)
        total = int(usage.get("totalTokenCount") or 0) or prompt + completion + thinking
        candidates = [c for c in data.get("candidates") or [] if isinstance(c, dict)]
        if not candidates:
            feedback = data.get("promptFeedback") or {}
            if feedback.get("blockReason"):
                reason = str(feedback["blockReason"])
                raise LLMError(f"Gemini blocked the prompt ({reason}) and wrote nothing: rephrase the prompt or "
                               f"skip the passage that triggers it.", kind="safety")
            raise LLMError("Gemini answered with no candidates at all; trying again may help.", kind="empty")
        candidate = candidates[0]
        finish = str(candidate.get("finishReason") or "STOP")
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(str(part.get("text") or "") for part in parts
                       if isinstance(part, dict) and part.get("text") and not part.get("thought"))
        if not text.strip():
            if finish in SAFETY_FINISH_REASONS:
                raise LLMError(f"Gemini's safety filter stopped the reply ({finish}): rephrase the prompt or skip "
                               f"the passage that triggers it.", kind="safety")
            if finish == "RECITATION":
                raise LLMError("Gemini stopped because the reply recited its training data verbatim (RECITATION): "
                               "ask for a paraphrase or raise the temperature.", kind="recitation")
            if finish == "MAX_TOKENS":
                spent = f" ({thinking} of them on thinking)" if thinking else ""
                raise LLMError(f"Gemini used up max tokens{spent} before writing any text: raise the max tokens "
                               f"or lower GEMINI_THINKING_BUDGET.", kind="max_tokens")
            raise LLMError(f"Gemini returned an empty reply (finish reason {finish}).", kind="empty")
        return LLMResult(text=text, model=str(data.get("modelVersion") or self.model), prompt_tokens=prompt,
                         completion_tokens=completion, thinking_tokens=thinking, total_tokens=total,
                         finish_reason=finish)

    def _error_from(self, exc: Exception) -> LLMError:
        """Our error for one failed attempt: its kind, whether to retry, how long the server asked us to wait."""
        if isinstance(exc, genai_errors.APIError):
            return self._api_error(exc)
        if isinstance(exc, _TIMEOUTS):
            return LLMError(f"Gemini did not answer within {self.settings.request_timeout:g} s "
                            f"(GROUNDWORK_REQUEST_TIMEOUT).", kind="timeout", retryable=True)
        if isinstance(exc, _BAD_URLS):
            return LLMError(self._redact(f"The Gemini base URL {self.base_url!r} is not a valid http(s) URL: check "
                                         f"GOOGLE_GEMINI_BASE_URL."), kind="unreachable")
        if isinstance(exc, _TRANSPORT_ERRORS):
            return LLMError(self._redact(f"Cannot reach Gemini at {self.base_url}: {exc or type(exc).__name__}."),
                            kind="unreachable", retryable=True)
        return LLMError(("Gemini answered with a malformed body (not valid JSON). If this persists, check that "
                         "the base URL points at the Gemini API."),
                        kind="malformed", retryable=True)

    def _api_error(self, exc: genai_errors.APIError) -> LLMError:
        code = int(exc.code or 0)
        body = exc.details if isinstance(exc.details, dict) else {}
        error = body.get("error", body) if isinstance(body.get("error"), dict) else body
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        said = self._redact(str(exc.message or error.get("message") or exc.status or "")[:300])
        if code == 429:
            return self._rate_limit_error(details, said)
        if code in (401, 403) or _error_reason(details) == "API_KEY_INVALID":
            return LLMError(f"{KEY_REJECTED_MESSAGE} (Gemini said: {said})", kind="auth", status=code)
        if code == 404:
            return LLMError(f"Model {self.model!r} not found: check the model name (GEMINI_MODEL), "
                            f"e.g. gemini-2.5-flash. (Gemini said: {said})", kind="not_found", status=code)
        if code in RETRIED_STATUSES:
            return LLMError(f"Gemini server error {code} {exc.status or ''}: {said}".replace("  ", " "),
                            kind="server", retryable=True, status=code)
        if code >= 500:
            return LLMError(f"Gemini server error {code}: {said}", kind="server", status=code)
        return LLMError(f"Gemini rejected the request ({code} {exc.status or ''}): {said}".replace(" )", ")"),
                        kind="bad_request", status=code)

    def _rate_limit_error(self, details: list[dict[str, Any]], said: str) -> LLMError:
        retry_after = _retry_delay(details, said)
        violations = [v for d in details if d.get("@type") == QUOTA_FAILURE for v in d.get("violations") or []]
        quota_ids = [str(v.get("quotaId") or v.get("quotaMetric") or "") for v in violations]
        for violation, quota_id in zip(violations, quota_ids):
            names = f"{violation.get('quotaId', '')} {violation.get('quotaMetric', '')}"
            if re.search(r"per_?day", names, re.IGNORECASE):
                return QuotaExhaustedError(
                    f"The daily Gemini quota for {self.model} is used up ({quota_id}). It resets at midnight "
                    f"Pacific time ({until_pacific_midnight()}): resume then, use a key with billing enabled, or "
                    f"switch model or provider.",
                    kind="quota_day", status=429, retry_after=retry_after)
            if str(violation.get("quotaValue")) == "0":
                return QuotaExhaustedError(
                    f"This key has no quota at all for {self.model} ({quota_id} is 0): the free tier does not "
                    f"include this model. Choose another model or enable billing.",
                    kind="quota_day", status=429, retry_after=retry_after)
        which = f" ({', '.join(q for q in quota_ids if q)})" if any(quota_ids) else ""
        hint = f"; Gemini asks to wait {retry_after:g} s" if retry_after is not None else ""
        return LLMError(f"Gemini rate limit hit{which}{hint}.", kind="rate_limited", retryable=True, status=429,
                        retry_after=retry_after, quota_metric=_quota_metric(violations),
                        quota_value=_quota_value(violations))

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


def gemini_base_url(settings: Settings) -> str:
    """The endpoint calls go to: the setting, else GOOGLE_GEMINI_BASE_URL (as google-genai reads it), else Google's."""
    return (settings.gemini_base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL")
            or "https://generativelanguage.googleapis.com/")


def _error_reason(details: list[dict[str, Any]]) -> str:
    return next((str(d.get("reason")) for d in details if d.get("@type") == ERROR_INFO), "")


def _quota_metric(violations: list[dict[str, Any]]) -> str | None:
    """Which per-minute quota a 429 hit: "tokens" (e.g. GenerateContentInputTokensPerModelPerMinute), "requests"
    (GenerateRequestsPerMinutePerProjectPerModel), or None when the body does not say (bare 429s happen)."""
    names = " ".join(f"{v.get('quotaId', '')} {v.get('quotaMetric', '')}" for v in violations).lower()
    if "token" in names:
        return "tokens"
    return "requests" if "request" in names else None


def _quota_value(violations: list[dict[str, Any]]) -> float | None:
    """The quota's size from QuotaFailure's quotaValue ("120"), when there is exactly one positive one."""
    values = set()
    for violation in violations:
        try:
            values.add(float(violation.get("quotaValue")))
        except (TypeError, ValueError):
            continue
    return values.pop() if len(values) == 1 and min(values) > 0 else None


def _retry_delay(details: list[dict[str, Any]], message: str) -> float | None:
    """Seconds from google.rpc.RetryInfo ("37s", "0.250s"), else from "Please retry in 37.2s." in the message."""
    for detail in details:
        if detail.get("@type") == RETRY_INFO:
            delay = detail.get("retryDelay")
            if isinstance(delay, dict):  # Duration as {"seconds": ..., "nanos": ...}
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            match = re.fullmatch(r"\s*([\d.]+)s\s*", str(delay or ""))
            if match:
                return float(match.group(1))
    match = re.search(r"retry in ([\d.]+)\s*s", message, re.IGNORECASE)
    return float(match.group(1)) if match else None
