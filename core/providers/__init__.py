"""LLM providers behind one small interface (:mod:`~core.providers.base`): Gemini live
(:mod:`~core.providers.gemini`) and its Batch API (:mod:`~core.providers.gemini_batch`), any OpenAI-compatible
server (:mod:`~core.providers.openai_compat`), and the embedded offline model (:mod:`~core.providers.local`);
:mod:`~core.providers.registry` builds one from settings.

May import: the foundations only (errors, config); every provider sits behind :mod:`core.providers.base`.
"""
