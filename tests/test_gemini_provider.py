"""GeminiProvider with the real google-genai client over HTTP to FakeGemini: replies, retries, errors, threads."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.config import Settings
from fakes.gemini import FakeGemini, Fault
from core.providers.base import CallGate, LLMError, LLMRequest, Message, QuotaExhaustedError
from core.providers.gemini import GeminiProvider
from core.providers.base import redact
from core.providers.registry import make_provider, provider_info, test_connection

KEY = "AIzaSy-FAKE-groundwork-test-key-0123456789"
MAX_RETRIES = 3
QUESTIONS_SCHEMA = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}},
    "required": ["questions"],
}


@pytest.fixture
def fake():
    with FakeGemini() as server:
        yield server


def settings_for(fake: FakeGemini, **changes) -> Settings:
    values = dict(gemini_base_url=fake.base_url, gemini_api_key=KEY, gemini_max_retries=MAX_RETRIES,
                  request_timeout=2.0)
    return Settings(**(values | changes))


def provider_for(fake: FakeGemini, gate: CallGate | None = None, max_retry_wait: float = 2.0,
                 **changes) -> GeminiProvider:
    return GeminiProvider(settings_for(fake, **changes), gate=gate, backoff_base=0.01, max_backoff=0.05,
                          max_retry_wait=max_retry_wait)


def ask(text: str = "Tell me about photosynthesis in desert plants", **options) -> LLMRequest:
    return LLMRequest(messages=[Message("user", text)], **options)


def test_reply_and_usage_including_thinking_tokens(fake):
    result = provider_for(fake).generate(ask())

    assert "photosynthesis" in result.text or "desert" in result.text or "plants" in result.text
    assert result.model == "gemini-2.5-flash"
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.thinking_tokens == fake.thinking_tokens
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens + result.thinking_tokens
    assert result.finish_reason == "STOP" and result.attempts == 1 and result.latency_ms >= 0
    assert fake.requests_with_key == 1 and fake.requests[-1].key_sent


def test_request_reaches_server_in_gemini_shape(fake):
    request = LLMRequest(
        messages=[Message("user", "Explain chlorophyll"), Message("assistant", "It absorbs light."),
                  Message("user", "Ask me about chlorophyll")],
        system="You write study questions about leaves.", temperature=0.3, max_tokens=300, seed=7,
        json_schema=QUESTIONS_SCHEMA)

    result = provider_for(fake).generate(request)

    body = fake.requests[-1].body
    assert fake.requests[-1].path.endswith("/models/gemini-2.5-flash:generateContent")
    assert body["systemInstruction"]["parts"][0]["text"] == "You write study questions about leaves."
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"][0]["text"] == "Ask me about chlorophyll"
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == QUESTIONS_SCHEMA
    assert (config["temperature"], config["maxOutputTokens"], config["seed"]) == (0.3, 300, 7)
    assert "thinkingConfig" not in config  # budget -1: the model's default
    questions = result.json()["questions"]
    assert len(questions) == 2 and all(q.endswith("?") for q in questions)
    assert any("chlorophyll" in q for q in questions)


def test_thinking_budget_is_sent_and_zero_turns_thoughts_off(fake):
    result = provider_for(fake, gemini_thinking_budget=0).generate(ask())

    thinking = fake.requests[-1].body["generationConfig"]["thinkingConfig"]
    assert thinking in ({"thinkingBudget": 0}, {"thinking_budget": 0})  # google-genai 3.6 sends snake_case here
    assert result.thinking_tokens == 0


@pytest.mark.parametrize("fault", [500, 502, 503, 504, "malformed"])
def test_transient_failure_is_retried(fake, fault):
    fake.push_faults(fault)
    gate = CallGate()

    result = provider_for(fake, gate=gate).generate(ask())

    assert result.text and result.attempts == 2
    assert fake.requests_total == 2
    assert gate.success_count == 1 and gate.rate_limited_count == 0


def test_per_minute_429_waits_as_retry_info_says(fake):
    fake.push_faults(Fault("rate_minute", retry_delay=0.4))
    gate = CallGate()

    started = time.monotonic()
    result = provider_for(fake, gate=gate).generate(ask())
    elapsed = time.monotonic() - started

    assert result.attempts == 2
    assert 0.4 <= elapsed < 1.5  # RetryInfo's 0.4 s (+ up to 10% jitter), not the 0.01 s backoff
    assert gate.rate_limited_count == 1 and gate.success_count == 1


def test_retry_info_wait_is_capped(fake):
    fake.push_faults(Fault("rate_minute", retry_delay=30))

    started = time.monotonic()
    provider_for(fake, max_retry_wait=0.2).generate(ask())

    assert time.monotonic() - started < 1.5


def test_timeout_is_retried(fake):
    fake.push_faults(Fault("timeout", sleep=1.5))

    result = provider_for(fake, request_timeout=0.5).generate(ask())

    assert result.attempts == 2 and fake.requests_total == 2


@pytest.mark.parametrize(("fault", "kind"), [(400, "bad_request"), (401, "auth"), (403, "auth"), (404, "not_found")])
def test_client_errors_are_not_retried(fake, fault, kind):
    fake.push_faults(fault)

    with pytest.raises(LLMError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == kind and caught.value.status == fault and not caught.value.retryable
    assert fake.requests_total == 1


def test_rejected_key_says_where_keys_come_from(fake):
    fake.api_key = "the-right-key"

    with pytest.raises(LLMError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == "auth" and caught.value.status == 403
    assert "GEMINI_API_KEY" in str(caught.value) and "Settings page" in str(caught.value)
    assert fake.requests_total == 1


def test_invalid_key_as_the_real_api_reports_it_is_auth_not_bad_request():
    # The real API answers a wrong key with 400 INVALID_ARGUMENT + ErrorInfo reason API_KEY_INVALID.
    with FakeGemini(api_key="the-right-key", bad_key_status=400) as fake:
        with pytest.raises(LLMError) as caught:
            provider_for(fake).generate(ask())

    assert caught.value.kind == "auth" and caught.value.status == 400


def test_unknown_model_is_not_found():
    with FakeGemini(models={"gemini-2.5-flash"}) as fake:
        with pytest.raises(LLMError) as caught:
            provider_for(fake, gemini_model="gemini-9-ultra").generate(ask())

    assert caught.value.kind == "not_found"
    assert "gemini-9-ultra" in str(caught.value) and "model name" in str(caught.value)
    assert fake.requests_total == 1


def test_daily_quota_stops_at_once(fake):
    fake.push_faults(Fault("rate_day", retry_delay=5))
    gate = CallGate()

    with pytest.raises(QuotaExhaustedError) as caught:
        provider_for(fake, gate=gate).generate(ask())

    assert caught.value.kind == "quota_day" and "daily" in str(caught.value)
    assert fake.requests_total == 1
    assert gate.rate_limited_count == 1


def test_429_outlasting_retries_is_quota_exhausted(fake):
    fake.fault_for = lambda n, request: Fault("rate_minute", retry_delay=0.01)
    gate = CallGate()

    with pytest.raises(QuotaExhaustedError) as caught:
        provider_for(fake, gate=gate).generate(ask())

    assert caught.value.kind == "rate_limited" and "429" in str(caught.value)
    assert fake.requests_total == MAX_RETRIES + 1
    assert gate.rate_limited_count == MAX_RETRIES + 1 and gate.success_count == 0


def test_persistent_server_error_gives_up_after_retries(fake):
    fake.fault_for = lambda n, request: 503

    with pytest.raises(LLMError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == "server" and caught.value.retryable
    assert f"gave up after {MAX_RETRIES + 1} attempts" in str(caught.value)
    assert fake.requests_total == MAX_RETRIES + 1


@pytest.mark.parametrize(("fault", "kind"), [("safety", "safety"), ("recitation", "recitation"),
                                             ("max_tokens", "max_tokens"), ("blocked", "safety")])
def test_empty_replies_are_errors_of_their_kind(fake, fault, kind):
    fake.push_faults(fault)

    with pytest.raises(LLMError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == kind
    assert fake.requests_total == 1


def test_missing_key_is_no_key_error(fake):
    with pytest.raises(LLMError) as caught:
        provider_for(fake, gemini_api_key="")

    assert caught.value.kind == "no_key"
    assert "GEMINI_API_KEY" in str(caught.value) and "Settings page" in str(caught.value)


def test_key_typed_in_the_sidebar_wins_over_settings(fake):
    fake.api_key = "typed-in-the-sidebar"
    provider = GeminiProvider(settings_for(fake, gemini_api_key=""), api_key=" typed-in-the-sidebar\n")

    assert provider.generate(ask()).text


def test_base_url_from_environment(fake, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)

    from_sdk = GeminiProvider(Settings(gemini_api_key=KEY))  # google-genai reads the variable itself
    from_settings = GeminiProvider(Settings.from_env(gemini_api_key=KEY))

    assert from_sdk.generate(ask()).text and from_settings.generate(ask()).text
    assert fake.requests_total == 2


def test_unreachable_server_is_reported(fake):
    settings = Settings(gemini_base_url=fake.base_url, gemini_api_key=KEY, gemini_max_retries=1)
    fake.close()

    with pytest.raises(LLMError) as caught:
        GeminiProvider(settings, backoff_base=0.01, max_backoff=0.02).generate(ask())

    assert caught.value.kind == "unreachable" and fake.base_url in str(caught.value)


def test_key_never_appears_in_errors_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[LLMError] = []
    fake.api_key = "another-key"
    try:
        provider_for(fake).generate(ask())
    except LLMError as error:
        errors.append(error)
    fake.api_key = None
    fake.push_faults(Fault("rate_minute", retry_delay=0.05), 503, "malformed", Fault("timeout", sleep=1.0))
    provider_for(fake, request_timeout=0.3, gemini_max_retries=4).generate(ask())  # logs a line per retry
    fake.fault_for = lambda n, request: Fault("rate_minute", retry_delay=0.05)
    try:
        provider_for(fake).generate(ask())
    except LLMError as error:
        errors.append(error)

    assert len(errors) == 2 and caplog.records
    for error in errors:
        assert error.__context__ is None or isinstance(error.__context__, LLMError)
        assert KEY not in "".join(traceback.format_exception(error))
    assert KEY not in caplog.text


def test_redact_replaces_every_secret():
    assert redact("key abc123 and abc123xyz, not ''", ["abc123", "abc123xyz", ""]) == "key *** and ***, not ''"


def test_one_provider_serves_many_threads_at_once():
    with FakeGemini(latency=0.3) as fake:
        provider = provider_for(fake)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda i: provider.generate(ask(f"Question {i} about cacti")), range(16)))
        elapsed = time.monotonic() - started

    assert all(r.text for r in results) and len(results) == 16
    assert fake.requests_total == 16 and fake.by_status[200] == 16
    assert fake.max_concurrency > 1
    assert elapsed < 16 * 0.3 / 2  # in parallel, not one after another


def test_fake_keeps_up_with_32_concurrent_slow_requests():
    with FakeGemini(latency=0.5) as fake:
        provider = provider_for(fake)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda i: provider.generate(ask(f"Question {i}")), range(32)))
        elapsed = time.monotonic() - started

    assert len(results) == 32 and fake.max_concurrency == 32
    assert elapsed < 1.5  # one round of 0.5 s, plus connection set-up


def test_scripted_responder(fake):
    fake.responder = lambda request: "Scripted: " + request["contents"][-1]["parts"][0]["text"]

    assert provider_for(fake).generate(ask("hello")).text == "Scripted: hello"


def test_gate_rpm_limit_paces_attempts(fake):
    gate = CallGate(rpm_limit=2, window=0.4)
    provider = provider_for(fake, gate=gate)
    sent_at: list[float] = []

    started = time.monotonic()
    for _ in range(5):
        provider.generate(ask())
        sent_at.append(time.monotonic() - started)

    # Two per 0.4 s window: calls 3-4 wait for the first window to pass, call 5 for the second.
    assert sent_at[1] < 0.3 and sent_at[2] >= 0.38 and sent_at[4] >= 0.78
    assert gate.success_count == 5


def test_fake_rpm_quota_answers_429_with_retry_info_and_provider_recovers():
    with FakeGemini(rpm_quota=2, rpm_window=0.5) as fake:
        gate = CallGate()
        provider = provider_for(fake, gate=gate)
        results = [provider.generate(ask()) for _ in range(4)]

    assert all(r.text for r in results)
    assert fake.by_status[429] >= 1 and gate.rate_limited_count == fake.by_status[429]


def test_threads_share_one_sdk_client(fake):
    provider = provider_for(fake)
    clients = set()

    def call() -> None:
        provider.generate(ask())
        clients.add(id(provider._client))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(clients) == 1 and fake.requests_total == 4


def test_registry_makes_gemini_and_tests_the_connection(fake):
    settings = settings_for(fake)

    assert isinstance(make_provider(settings), GeminiProvider)
    info = provider_info(settings)
    assert (info.name, info.model, info.extra["base_url"], info.extra["key_set"]) == (
        "gemini", "gemini-2.5-flash", fake.base_url, True)
    ok, message = test_connection(settings)
    assert ok and "gemini-2.5-flash" in message and " ms" in message

    fake.api_key = "another-key"
    ok, message = test_connection(settings)
    assert not ok and "GEMINI_API_KEY" in message and KEY not in message

    ok, message = test_connection(settings.replace(gemini_api_key=""), api_key="another-key")
    assert ok


def test_fake_embeddings_through_the_sdk(fake):
    provider = provider_for(fake)
    response = provider._client.models.embed_content(
        model="text-embedding-004", contents=["desert plants store water", "desert plants store water", "rockets"])

    first, second, third = (e.values for e in response.embeddings)
    assert len(first) == 768 and first == second and first != third
    assert fake.by_path["/v1/models/text-embedding-004:batchEmbedContents"] == 1


def test_429_retries_log_at_info_other_retries_warn(fake, caplog):
    caplog.set_level(logging.INFO, logger="core.providers.base")
    fake.push_faults(Fault("rate_minute", retry_delay=0.05), 503)
    provider_for(fake).generate(ask())

    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "core.providers.base"]
    assert [lvl for lvl, _ in levels] == ["INFO", "WARNING"]
    assert "rate limit" in levels[0][1].lower() and "retry 1 of" in levels[0][1]


@pytest.mark.parametrize("budget", [-1, 0, 512])
def test_request_body_is_what_the_sdk_would_send(fake, budget):
    """The provider writes generateContent's JSON itself (the SDK's serializer costs ~6.6 ms of CPU a call);
    it must be exactly what google-genai's generate_content builds from the same request."""
    from google.genai import _common, models, types

    provider = provider_for(fake, gemini_thinking_budget=budget)
    requests = [
        LLMRequest([Message("user", "Hi")]),
        LLMRequest([Message("user", "Q?"), Message("assistant", "A."), Message("user", "And?")], system="Be brief.",
                   temperature=0.2, max_tokens=77, seed=5, json_schema=QUESTIONS_SCHEMA),
        LLMRequest([Message("user", "ünïcödé ✓")], system="", temperature=1.0, seed=0),
    ]
    for request in requests:
        config = types.GenerateContentConfig(
            system_instruction=request.system or None, temperature=request.temperature,
            max_output_tokens=request.max_tokens, seed=request.seed,
            response_mime_type="application/json" if request.json_schema else None,
            response_json_schema=request.json_schema,
            thinking_config=types.ThinkingConfig(thinking_budget=budget) if budget >= 0 else None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
        contents = [types.Content(role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)])
                    for m in request.messages]
        params = types._GenerateContentParameters(model=provider.model, contents=contents, config=config)
        sdk = models._GenerateContentParameters_to_mldev(provider._client._api_client, params, None, params)
        assert f"{sdk.pop('_url')['model']}:generateContent" == provider._path
        sdk.pop("config", None)
        sdk = _common.encode_unserializable_types(_common.convert_to_dict(sdk))
        assert provider.request_body(request) == sdk
    provider.close()
