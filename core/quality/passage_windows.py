"""Passage windows embedded at index time, so checking an answer embeds only the answer.

The grounding checks compare each claim with the sentences ("windows") of the passages its turn was shown.
Embedding those sentences when an answer is first checked was most of a check's model time: a run's checks,
``groundwork grade`` and Review each paid for the passages again in every new process. Here every new chunk's
window sentences are embedded right after it is indexed, on a background thread that starts once the ingest
has finished (the ingest itself is not slowed), into the data dir's sentence-vector store
(:class:`core.quality.grounding.VectorStore`, ``grounding-vectors.sqlite``) through the process-wide cache the
checks read. Nothing depends on it having finished: a check embeds whatever sentence is still missing, as before.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from core.corpus.embeddings import Embedder
from core.quality.grounding import _window_sentences, shared_window_cache

ProgressFn = Callable[[str, int, int], None]
STEP = "embedding the passages' sentences for the grounding checks"
ENCODE_SLICE = 32


class WindowIndexer:
    """Embeds the window sentences of newly indexed chunks in the background (see the module docstring).

    Args:
        embedder: the workbench's embedder (its encode lock lets searches interleave with these batches).
        data_dir: the data dir whose sentence-vector store receives the vectors.
        chunks_per_batch: chunks split and embedded per step; a close waits for at most one step.
    """

    def __init__(self, embedder: Embedder, data_dir: Path | None, chunks_per_batch: int = 64):
        self.embedder = embedder
        self.data_dir = data_dir
        self.chunks_per_batch = chunks_per_batch
        self._pending: deque[str] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.chunks_done = 0
        self.chunks_total = 0
        self.sentences_embedded = 0
        self.error: str | None = None

    def add(self, chunk_texts: Sequence[str]) -> None:
        """Queue chunks that were just indexed; the background thread starts if it is not running."""
        with self._cond:
            if self._closed or not chunk_texts:
                return
            self._pending.extend(chunk_texts)
            self.chunks_total += len(chunk_texts)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="groundwork-passage-windows", daemon=True)
                self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._thread is not None

    def wait(self, progress: ProgressFn | None = None, timeout_s: float | None = None) -> bool:
        """Block until every queued chunk is done (True) or ``timeout_s`` passed (False), reporting progress."""
        import time

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._thread is not None:
                if progress:
                    progress(STEP, self.chunks_done, max(self.chunks_total, 1))
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(0.5, left))
            if progress and self.chunks_total:
                progress(STEP, self.chunks_done, self.chunks_total)
            return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop after the current step; what is not embedded yet is embedded by the first check that needs it."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _work(self) -> None:
        cache = shared_window_cache(self.embedder.model_name, self.data_dir)
        try:
            while True:
                with self._cond:
                    if self._closed or not self._pending:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    batch = [self._pending.popleft() for _ in range(min(self.chunks_per_batch, len(self._pending)))]
                # Shortest first: a slice is padded to its longest sentence, so slices of like lengths cost about
                # half of slices in passage order (sample corpus: 985 sentences, 9.9 CPU-s sorted vs 19.1).
                sentences = sorted(dict.fromkeys(s for text in batch for s in _window_sentences(text)), key=len)
                # In slices, each a short hold of the embedder's lock: a search or a run's query embedding
                # waits for one slice at most, not for the whole step.
                embedded = sum(cache.fill(sentences[start:start + ENCODE_SLICE], self.embedder.encode)[1]
                               for start in range(0, len(sentences), ENCODE_SLICE))
                with self._cond:
                    self.chunks_done += len(batch)
                    self.sentences_embedded += embedded
                    self._cond.notify_all()
        except Exception as exc:  # a cache only: the checks embed what is missing; say why it stopped
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
                self._pending.clear()
                self._thread = None
                self._cond.notify_all()
