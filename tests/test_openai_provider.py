"""OpenAICompatProvider with the real openai client over HTTP to FakeOpenAI: replies, usage, retries, errors."""

from __future__ import annotations

import time

import pytest

from core.config import Settings
from fakes.gemini import FakeOpenAI, Fault
from core.providers.base import CallGate, LLMError, LLMRequest, Message, QuotaExhaustedError
from core.providers.openai_compat import PLACEHOLDER_KEY, OpenAICompatProvider
from core.providers.registry import make_provider, provider_info, test_connection

SCHEMA = {"type": "object", "properties": {"questions": {"type": "array", "items": {"type": "string"},
                                                         "minItems": 2, "maxItems": 2}}, "required": ["questions"]}


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def provider_for(fake: FakeOpenAI, gate: CallGate | None = None, **changes) -> OpenAICompatProvider:
    values = dict(provider="openai", openai_base_url=fake.base_url, openai_model="llama3.2", gemini_max_retries=3,
                  request_timeout=2.0)
    return OpenAICompatProvider(Settings(**(values | changes)), gate=gate, backoff_base=0.01, max_backoff=0.05,
                                max_retry_wait=2.0)


def ask(text: str = "Tell me about tide pools", **options) -> LLMRequest:
    return LLMRequest(messages=[Message("user", text)], system="You are a marine biology tutor.", **options)


def test_reply_usage_and_request_shape(fake):
    result = provider_for(fake).generate(ask(temperature=0.2, max_tokens=200, seed=5))

    assert result.text and result.model == "llama3.2" and result.attempts == 1
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens
    body = fake.requests[-1].body
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("llama3.2", 0.2, 200, 5)
    assert fake.requests[-1].key_sent  # the placeholder: the SDK insists on some key


def test_reasoning_tokens_count_as_thinking():
    with FakeOpenAI(reasoning_tokens=30) as fake:
        result = provider_for(fake).generate(ask())

    assert result.thinking_tokens == 30
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens + 30


def test_structured_output_uses_json_schema(fake):
    result = provider_for(fake).generate(ask("Ask about anemones", json_schema=SCHEMA))

    assert fake.requests[-1].body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert len(result.json()["questions"]) == 2


def test_server_without_json_schema_gets_json_object_with_the_schema_in_the_prompt():
    with FakeOpenAI(json_schema_support=False) as fake:
        provider = provider_for(fake)
        first = provider.generate(ask(json_schema=SCHEMA))
        second = provider.generate(ask(json_schema=SCHEMA))

    assert isinstance(first.json(), dict) and isinstance(second.json(), dict)
    assert [r.body["response_format"]["type"] for r in fake.requests] == ["json_schema", "json_object",
                                                                          "json_object"]
    assert '"questions"' in fake.requests[-1].body["messages"][0]["content"]


def test_server_error_is_retried(fake):
    fake.push_faults(500)
    gate = CallGate()

    result = provider_for(fake, gate=gate).generate(ask())

    assert result.text and result.attempts == 2 and fake.requests_total == 2
    assert gate.success_count == 1


def test_429_honours_retry_after_and_reaches_the_gate(fake):
    fake.push_faults(Fault("rate_minute", retry_delay=0.3))
    gate = CallGate()

    started = time.monotonic()
    result = provider_for(fake, gate=gate).generate(ask())

    assert result.attempts == 2 and time.monotonic() - started >= 0.3
    assert gate.rate_limited_count == 1


def test_429_forever_is_quota_exhausted(fake):
    fake.fault_for = lambda n, request: Fault("rate_minute", retry_delay=0.01)

    with pytest.raises(QuotaExhaustedError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == "rate_limited" and fake.requests_total == 4


def test_insufficient_quota_stops_at_once(fake):
    fake.push_faults("rate_day")

    with pytest.raises(QuotaExhaustedError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == "quota_day" and fake.requests_total == 1


def test_timeout_is_retried(fake):
    fake.push_faults(Fault("timeout", sleep=1.5))

    result = provider_for(fake, request_timeout=0.5).generate(ask())

    assert result.attempts == 2


def test_wrong_key_is_auth_error_and_not_retried():
    with FakeOpenAI(api_key="server-key") as fake:
        with pytest.raises(LLMError) as caught:
            provider_for(fake, openai_api_key="wrong-key").generate(ask())

    assert caught.value.kind == "auth" and caught.value.status == 401
    assert "OPENAI_API_KEY" in str(caught.value) and "wrong-key" not in str(caught.value)
    assert fake.requests_total == 1


def test_unknown_model_is_not_found():
    with FakeOpenAI(models={"llama3.2"}) as fake:
        with pytest.raises(LLMError) as caught:
            provider_for(fake, openai_model="mystery-7b").generate(ask())

    assert caught.value.kind == "not_found" and "mystery-7b" in str(caught.value)
    assert fake.requests_total == 1


@pytest.mark.parametrize(("fault", "kind"), [("safety", "safety"), ("max_tokens", "max_tokens")])
def test_empty_replies_are_errors_of_their_kind(fake, fault, kind):
    fake.push_faults(fault)

    with pytest.raises(LLMError) as caught:
        provider_for(fake).generate(ask())

    assert caught.value.kind == kind and fake.requests_total == 1


def test_malformed_body_is_retried(fake):
    fake.push_faults("malformed")

    assert provider_for(fake).generate(ask()).attempts == 2


def test_unreachable_server(fake):
    settings = Settings(openai_base_url=fake.base_url, gemini_max_retries=1)
    fake.close()

    with pytest.raises(LLMError) as caught:
        OpenAICompatProvider(settings, backoff_base=0.01, max_backoff=0.02).generate(ask())

    assert caught.value.kind == "unreachable" and fake.base_url in str(caught.value)


def test_registry_chooses_openai(fake):
    settings = Settings(provider="openai", openai_base_url=fake.base_url, openai_model="llama3.2")

    provider = make_provider(settings)
    assert isinstance(provider, OpenAICompatProvider) and provider.model == "llama3.2"
    assert provider_info(settings).extra == {"base_url": fake.base_url, "key_set": False}
    ok, message = test_connection(settings)
    assert ok and "llama3.2" in message
    assert PLACEHOLDER_KEY  # sent when no key is configured
