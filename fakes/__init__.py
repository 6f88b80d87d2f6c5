"""Test doubles: fake Gemini and OpenAI-compatible servers speaking the real wire formats over HTTP.

Tests and benches import them from here (``fakes.gemini``, ``fakes.gemini_batch``, ``fakes.gemini_process``);
the product (``core/``, ``pages/``, ``app.py``) never does, and they are not installed with it.
"""
