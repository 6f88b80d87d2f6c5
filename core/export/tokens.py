"""Token counting for exports: the offline model's tokenizer, a .gguf file or a Hugging Face tokenizer."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import ValidationError

MESSAGE_OVERHEAD_TOKENS = 4  # role markers a chat template adds around each message


class TokenCounter:
    """Counts tokens of a text with one tokenizer; ``name`` goes into the manifest.

    Tokenizing is the slow part of an export (about 1 ms per KB here), and rows repeat the same passages,
    questions and answers across conversations and formats. So a long text is counted line by line,
    each distinct line tokenized once (cached), plus one token per line break. Measured on generated
    rows with the SmolLM2 tokenizer it was 0 to 3 tokens above tokenizing each whole message (never
    below), so the length filter errs on the safe side.
    """

    _WHOLE_BELOW = 400  # characters: shorter texts are tokenized whole

    def __init__(self, name: str, encode: Callable[[str], int]):
        self.name = name
        self._encode = lru_cache(maxsize=32_768)(encode)

    def count(self, text: str) -> int:
        if len(text) < self._WHOLE_BELOW or "\n" not in text:
            return self._encode(text) if text else 0
        total = 0
        for piece in _LINE_BREAKS.split(text):
            if not piece:
                continue
            total += len(piece) if piece[0] == "\n" else self._encode(piece)
        return total


_LINE_BREAKS = re.compile(r"(\n+)")


def load_tokenizer(spec: str = "", settings: Any = None) -> tuple[TokenCounter, str]:
    """A token counter and a warning ("" when none).

    Args:
        spec: "" for the offline model's tokenizer, a ``.gguf`` file, or a Hugging Face tokenizer folder/name.
        settings: used to find the offline model (``GROUNDWORK_LOCAL_MODEL`` or the packaged SmolLM2).

    Raises:
        ValidationError: a tokenizer the user named cannot be loaded.
    """
    spec = (spec or "").strip()
    if not spec:
        from core.providers.local import packaged_model_path, resolve_model_path

        path = resolve_model_path(settings) if settings is not None else packaged_model_path()
        if path and Path(path).is_file():
            try:
                return _gguf_counter(Path(path)), ""
            except ValidationError as e:
                return _estimate_counter(), f"{e} Token counts are estimates (4 characters per token)."
        return _estimate_counter(), ("The offline model is not installed, so token counts are estimates "
                                     "(4 characters per token); give a tokenizer path for exact counts.")
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValidationError(f"Tokenizer file not found: {path}. Give an existing .gguf file or a Hugging Face "
                                  "tokenizer folder.")
        return _gguf_counter(path), ""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except Exception as e:  # transformers raises many kinds (OSError, ValueError, HF errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValidationError(f"Could not load a tokenizer from {spec!r}: {first[:200]}. Give a folder holding "
                              "tokenizer.json / tokenizer_config.json, or a .gguf model file.") from None
    return TokenCounter(f"transformers:{spec}", lambda text: len(tok.encode(text, add_special_tokens=False))), ""


def _gguf_counter(path: Path) -> TokenCounter:
    from llama_cpp import Llama

    try:
        with _quiet_stderr():
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise ValidationError(f"llama.cpp could not read the tokenizer of {path}: {e}.") from None
    return TokenCounter(f"gguf:{path.name}",
                        lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)))


def _estimate_counter() -> TokenCounter:
    return TokenCounter("estimate:4-chars-per-token", lambda text: (len(text) + 3) // 4)


class _quiet_stderr:
    """llama.cpp writes load notes to file descriptor 2 (or through a Python log callback to ``sys.stderr``)."""

    def __enter__(self):
        self._py = sys.stderr
        sys.stderr = io.StringIO()
        try:
            self._saved = os.dup(2)
            self._null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(self._null, 2)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc):
        sys.stderr = self._py
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            os.close(self._null)


def row_tokens(fmt: str, row: dict[str, Any], counter: TokenCounter) -> int:
    """Tokens a trainer sees for one row: message texts plus a small per-message template overhead."""
    def msgs(messages: list[dict[str, Any]]) -> int:
        total = 0
        for m in messages:
            text = m.get("content") if "content" in m else m.get("value")
            if m.get("tool_calls"):
                text = json.dumps(m["tool_calls"], ensure_ascii=False)
            total += counter.count(text or "") + MESSAGE_OVERHEAD_TOKENS
        return total

    if fmt == "openai":
        return msgs(row["messages"])
    if fmt == "sharegpt":
        return msgs(row["conversations"])
    if fmt == "alpaca":
        texts = [row["instruction"], row["input"], row["output"], row.get("system") or ""]
        texts += [x for pair in row["history"] for x in pair]
        return sum(counter.count(x) for x in texts if x) + MESSAGE_OVERHEAD_TOKENS * (2 + 2 * len(row["history"]))
    if fmt == "raw":
        return msgs(row["messages"])
    if fmt == "dpo":
        return msgs(row["prompt"]) + max(msgs(row["chosen"]), msgs(row["rejected"]))
    if fmt in ("kto", "completion"):
        return msgs(row["prompt"]) + msgs(row["completion"])
    raise ValueError(fmt)
