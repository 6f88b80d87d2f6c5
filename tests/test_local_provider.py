"""The offline provider really generates with the packaged SmolLM2-135M GGUF through llama-cpp-python."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from core.config import Settings
from core.providers.base import LLMError, LLMRequest, Message
from core.providers.local import DEMO_MODEL_NOTE, LocalProvider, packaged_model_path
from core.providers.registry import make_provider, provider_info

pytestmark = pytest.mark.slow

QUESTIONS_SCHEMA = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string", "maxLength": 120},
                                 "minItems": 2, "maxItems": 2}},
    "required": ["questions"],
}


@pytest.fixture(scope="module")
def provider():
    local = LocalProvider(Settings(local_n_ctx=2048, local_threads=2))
    yield local
    local.close()


def test_packaged_model_is_found_and_described():
    path = packaged_model_path()
    assert path is not None and path.is_file()
    info = provider_info(Settings())
    assert info.name == "local" and info.model == path.name and info.note == DEMO_MODEL_NOTE
    assert isinstance(make_provider(Settings()), LocalProvider)


def test_generates_a_short_answer(provider):
    result = provider.generate(LLMRequest(messages=[Message("user", "What is the capital of France?")],
                                          system="Answer in one short sentence.", temperature=0.2,
                                          max_tokens=48, seed=1))

    assert result.text.strip()
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 48
    assert result.total_tokens == result.prompt_tokens + result.completion_tokens
    print(f"\nSmolLM2-135M answer: {result.text!r}")


def test_throughput(provider):
    result = provider.generate(LLMRequest(messages=[Message("user", "Describe the city of Paris.")],
                                          temperature=0.7, max_tokens=96, seed=2))

    assert result.completion_tokens > 10
    print(f"\nSmolLM2-135M: {result.completion_tokens / (result.latency_ms / 1000):.0f} tokens/s "
          f"({result.completion_tokens} tokens in {result.latency_ms} ms, prompt included): "
          f"{result.text[:100]!r}")


def test_json_schema_reply_parses(provider):
    result = provider.generate(LLMRequest(
        messages=[Message("user", "Write 2 questions a student might ask about photosynthesis.")],
        temperature=0.2, max_tokens=200, seed=1, json_schema=QUESTIONS_SCHEMA))

    questions = result.json()["questions"]
    assert len(questions) == 2 and all(isinstance(q, str) for q in questions)
    print(f"\nSmolLM2-135M JSON: {questions}")


def test_prompt_longer_than_the_context_is_trimmed_not_fatal():
    small = LocalProvider(Settings(local_n_ctx=256, local_threads=2))
    history = [Message("user" if i % 2 == 0 else "assistant", f"Turn {i}: " + "tide pools hold life. " * 20)
               for i in range(9)]
    try:
        result = small.generate(LLMRequest(messages=history, system="Be brief.", max_tokens=16, seed=1))
        huge = small.generate(LLMRequest(messages=[Message("user", "word " * 2000)], max_tokens=16, seed=1))
    finally:
        small.close()

    for reply in (result, huge):
        assert reply.text and reply.prompt_tokens + 16 <= 256


def test_calls_from_many_threads_are_serialized(provider):
    request = LLMRequest(messages=[Message("user", "Say hello.")], max_tokens=8, seed=1)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: provider.generate(request), range(4)))

    assert all(r.text for r in results)


def test_missing_and_non_gguf_files_are_clear_errors(tmp_path):
    with pytest.raises(LLMError, match="not found"):
        LocalProvider(Settings(local_model_path=str(tmp_path / "nope.gguf"))).generate(
            LLMRequest(messages=[Message("user", "hi")]))
    text_file = tmp_path / "model.gguf"
    text_file.write_text("not a model")
    with pytest.raises(LLMError, match="not a GGUF"):
        LocalProvider(Settings(local_model_path=str(text_file))).generate(LLMRequest(messages=[Message("user", "hi")]))
