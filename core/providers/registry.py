"""Chooses the LLM provider from settings (the one place that does), describes it, and tests a connection."""

from __future__ import annotations

import time

from core.config import Settings
from core.providers.base import CallGate, LLMError, LLMProvider, LLMRequest, Message, ProviderInfo, redact

# Errors that prove the server answered: the connection works even though this reply was unusable.
_ANSWERED_KINDS = frozenset({"max_tokens", "safety", "recitation", "empty", "malformed"})


def provider_name(settings: Settings, api_key: str | None = None) -> str:
    """gemini, openai or local: the setting, else gemini when a key is set (here or typed in), else local."""
    if settings.provider:
        return settings.provider
    return "gemini" if (api_key or settings.gemini_api_key) else settings.resolved_provider


def make_provider(settings: Settings, gate: CallGate | None = None, api_key: str | None = None) -> LLMProvider:
    """The provider the settings ask for, ready to call from many threads.

    Args:
        settings: which provider and how to reach it.
        gate: paces every attempt and hears about 429s; default: one with ``settings.rpm_limit``.
        api_key: a Gemini key typed in the UI; wins over ``settings.gemini_api_key``.

    Raises:
        LLMError: the provider cannot be set up (kind ``no_key`` when Gemini has no key).
    """
    name = provider_name(settings, api_key)
    # Imported here: each provider pulls in a heavy SDK that the others do not need.
    if name == "gemini":
        from core.providers.gemini import GeminiProvider

        return GeminiProvider(settings, gate=gate, api_key=api_key)
    if name == "openai":
        from core.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(settings, gate=gate)
    from core.providers.local import LocalProvider

    return LocalProvider(settings, gate=gate)


def provider_info(settings: Settings, api_key: str | None = None) -> ProviderInfo:
    """What the UI shows about the configured provider, without loading a model or calling anything."""
    name = provider_name(settings, api_key)
    if name == "gemini":
        from core.providers.gemini import gemini_base_url

        return ProviderInfo("gemini", settings.gemini_model, extra={
            "base_url": gemini_base_url(settings), "key_set": bool(api_key or settings.gemini_api_key),
            "thinking_budget": settings.gemini_thinking_budget, "max_retries": settings.gemini_max_retries})
    if name == "openai":
        return ProviderInfo("openai", settings.openai_model, extra={
            "base_url": settings.openai_base_url, "key_set": bool(settings.openai_api_key)})
    from core.providers.local import local_model_note, resolve_model_path

    path = resolve_model_path(settings)
    return ProviderInfo("local", path.name, note=local_model_note(path), extra={
        "model_path": str(path), "n_ctx": settings.local_n_ctx, "threads": settings.local_threads})


def test_connection(settings: Settings, api_key: str | None = None) -> tuple[bool, str]:
    """Make one tiny call with the configured provider.

    Returns:
        ``(True, "…model answered in N ms")`` or ``(False, <what went wrong and what to do>)``.
    """
    quick = settings.replace(gemini_max_retries=min(settings.gemini_max_retries, 1),
                             request_timeout=min(settings.request_timeout, 30.0))
    request = LLMRequest(messages=[Message("user", "Reply with the single word: ready")], temperature=0.0,
                         max_tokens=16)
    started = time.monotonic()
    provider = None
    try:
        provider = make_provider(quick, api_key=api_key)
        result = provider.generate(request)
    except LLMError as error:
        if error.kind in _ANSWERED_KINDS and provider is not None:
            elapsed = int((time.monotonic() - started) * 1000)
            return True, f"Connected: {provider.name} {provider.model} answered in {elapsed} ms ({error.kind})."
        return False, redact(str(error), [api_key or "", *settings.secret_values()])
    finally:
        if provider is not None:
            provider.close()
    return True, f"Connected: {provider.name} {result.model} answered in {result.latency_ms} ms."


test_connection.__test__ = False  # type: ignore[attr-defined]  # a pytest file importing it must not collect it
