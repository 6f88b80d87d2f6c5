"""The OpenAI-compatible provider (Ollama, vLLM, LM Studio, llama.cpp server), with the same retries as Gemini."""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pydantic

from core.config import Settings
from core.providers.base import (CallGate, LLMError, LLMRequest, LLMResult, QuotaExhaustedError, RetryPolicy,
                                 call_with_retries)
from core.providers.base import redact

logger = logging.getLogger(__name__)

# Local servers need no key, but the SDK refuses to build a client without one.
PLACEHOLDER_KEY = "not-needed"
RETRIED_STATUSES = frozenset({408, 500, 502, 503, 504})


class OpenAICompatProvider:
    """Chat completions on any OpenAI-compatible server. One client serves every thread.

    The SDK's retries are off (``max_retries=0``) so every attempt passes the call gate and 429s are seen.
    Structured output asks for ``response_format`` json_schema; a server that rejects it gets json_object
    with the schema in the system prompt from then on.

    Args:
        settings: base URL, model, key, timeout, retries (``gemini_max_retries`` applies to every provider).
        gate: paces attempts and hears about 429s; default: a gate with ``settings.rpm_limit``.
        backoff_base, max_backoff, max_retry_wait: as for :class:`~core.providers.gemini.GeminiProvider`.
    """

    name = "openai"

    def __init__(self, settings: Settings, gate: CallGate | None = None, *, backoff_base: float = 1.0,
                 max_backoff: float = 30.0, max_retry_wait: float = 90.0):
        self.settings = settings
        self.model = settings.openai_model
        self.base_url = settings.openai_base_url
        self.gate = gate or CallGate(settings.rpm_limit)
        self.retry = RetryPolicy(max(settings.gemini_max_retries, 0), backoff_base, max_backoff, max_retry_wait)
        self._secrets = settings.secret_values()
        self._json_schema_supported = True
        self._client = openai.OpenAI(base_url=self.base_url, api_key=settings.openai_api_key or PLACEHOLDER_KEY,
                                     max_retries=0, timeout=settings.request_timeout)

    def generate(self, request: LLMRequest) -> LLMResult:
        """One reply for ``request``, retried on transient failures.

        Raises:
            QuotaExhaustedError: the server's quota is used up, or 429s outlasted the retries.
            LLMError: anything else, with ``kind`` saying why.
        """
        if not request.messages:
            raise LLMError("Nothing to send: the request has no messages.", kind="bad_request")

        def attempt() -> LLMResult:
            try:
                completion = self._complete(request)
            except (openai.APIError, json.JSONDecodeError, pydantic.ValidationError) as exc:
                error = self._error_from(exc)
            else:
                return self._result_from(completion)
            raise error  # outside the except block: the SDK's exception (it holds the request) is not chained

        return call_with_retries(attempt, self.gate, self.retry, label=f"{self.model} at {self.base_url}",
                                 priority=request.priority)

    def close(self) -> None:
        self._client.close()

    def _complete(self, request: LLMRequest) -> Any:
        schema = request.json_schema
        if schema and self._json_schema_supported:
            try:
                return self._create(request, {"type": "json_schema", "json_schema": {
                    "name": "reply", "schema": schema, "strict": False}})
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                logger.info("%s rejected response_format json_schema; using json_object from now on", self.base_url)
                self._json_schema_supported = False
        return self._create(request, {"type": "json_object"} if schema else None)

    def _create(self, request: LLMRequest, response_format: dict[str, Any] | None) -> Any:
        system = request.system
        if response_format and response_format["type"] == "json_object":
            # json_object only promises some JSON: the schema has to reach the model through the prompt.
            system = (f"{system}\n\n" if system else "") + ("Reply with a JSON object matching this JSON Schema:\n"
                                                            + json.dumps(request.json_schema))
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        options: dict[str, Any] = {"temperature": request.temperature, "max_tokens": request.max_tokens}
        if request.seed is not None:
            options["seed"] = request.seed
        if response_format:
            options["response_format"] = response_format
        return self._client.chat.completions.create(model=self.model, messages=messages, **options)

    def _result_from(self, completion: Any) -> LLMResult:
        usage = completion.usage
        prompt = (usage.prompt_tokens if usage else 0) or 0
        completion_tokens = (usage.completion_tokens if usage else 0) or 0
        details = getattr(usage, "completion_tokens_details", None)
        reasoning = (getattr(details, "reasoning_tokens", 0) if details else 0) or 0
        if not completion.choices:
            raise LLMError(f"{self.model} answered with no choices at all; trying again may help.", kind="empty")
        choice = completion.choices[0]
        finish = choice.finish_reason or "stop"
        text = (choice.message.content or "") if choice.message else ""
        if not text.strip():
            if finish == "content_filter":
                raise LLMError(f"{self.model}'s content filter stopped the reply: rephrase the prompt or skip the "
                               f"passage that triggers it.", kind="safety")
            if finish == "length":
                raise LLMError(f"{self.model} used up max tokens before writing any text: raise the max tokens.",
                               kind="max_tokens")
            raise LLMError(f"{self.model} returned an empty reply (finish reason {finish}).", kind="empty")
        return LLMResult(text=text, model=completion.model or self.model, prompt_tokens=prompt,
                         completion_tokens=completion_tokens - reasoning, thinking_tokens=reasoning,
                         total_tokens=(usage.total_tokens if usage else 0) or prompt + completion_tokens,
                         finish_reason={"stop": "STOP", "length": "MAX_TOKENS"}.get(finish, finish.upper()))

    def _error_from(self, exc: Exception) -> LLMError:
        """Our error for one failed attempt: its kind, whether to retry, how long the server asked us to wait."""
        where = f"the OpenAI-compatible server at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError: it is a subclass
            return LLMError(f"{where} did not answer within {self.settings.request_timeout:g} s "
                            f"(GROUNDWORK_REQUEST_TIMEOUT).", kind="timeout", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            return LLMError(f"Cannot reach {where}: is it running, and does OPENAI_BASE_URL point at it?",
                            kind="unreachable", retryable=True)
        if not isinstance(exc, openai.APIStatusError):
            return LLMError((f"{where} answered with a malformed body (not valid JSON). If this persists, check "
                               "that the base URL points at an OpenAI-compatible API."),
                            kind="malformed", retryable=True)
        code = exc.status_code
        said = self._redact(_server_message(exc)[:300])
        if code == 429:
            retry_after = _retry_after(exc)
            if _error_code(exc) == "insufficient_quota":
                return QuotaExhaustedError(f"{where} says the quota is used up ({said}): check the account's "
                                           f"billing or switch provider.", kind="quota_day", status=429)
            return LLMError(f"Rate limit hit at {where}: {said}", kind="rate_limited", retryable=True, status=429,
                            retry_after=retry_after)
        if code in (401, 403):
            return LLMError(f"{where} rejected the key: check OPENAI_API_KEY. ({said})", kind="auth", status=code)
        if code == 404:
            return LLMError(f"Model {self.model!r} not found at {self.base_url}: check OPENAI_MODEL (for Ollama, "
                            f"`ollama pull {self.model}`) and that OPENAI_BASE_URL ends in /v1. ({said})",
                            kind="not_found", status=code)
        if code in RETRIED_STATUSES:
            return LLMError(f"Server error {code} from {where}: {said}", kind="server", retryable=True, status=code)
        if code >= 500:
            return LLMError(f"Server error {code} from {where}: {said}", kind="server", status=code)
        return LLMError(f"{where} rejected the request ({code}): {said}", kind="bad_request", status=code)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body if isinstance(body, dict) else {}


def _server_message(exc: openai.APIStatusError) -> str:
    return str(_error_body(exc).get("message") or exc.message or "")


def _error_code(exc: openai.APIStatusError) -> str:
    return str(_error_body(exc).get("code") or "")


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds from the ``retry-after-ms`` or ``retry-after`` header (HTTP-date form ignored)."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / scale
        except (KeyError, ValueError):
            continue
    return None
