"""Grounding checks on a background worker: each conversation is checked as it is saved, so a run's checks
never follow the run (the Generate page and ``groundwork generate`` wait only for the few saved last).

One thread and one queue: the checks share the embedding model with the run's retrieval, and one worker
holding it briefly per conversation costs the run little, where several would queue behind each other.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from core.db import Database
from core.corpus.embeddings import Embedder
from core.quality.common import ProgressFn
from core.quality.grounding import GroundingChecker
from core.quality.grounding_store import score_conversation


class BackgroundChecks:
    """Checks conversations handed to :meth:`submit` on one background thread, in order.

    Args:
        db, embedder: the workbench's database and embedding model.
        data_dir: where sentence vectors are kept between processes (see core.quality.grounding.VectorStore).
    """

    def __init__(self, db: Database, embedder: Embedder, data_dir: Path | None = None):
        self.db = db
        self.checker = GroundingChecker(embedder, data_dir=data_dir)
        self.submitted = 0
        self.checked = 0
        self.errors: list[str] = []  # "conversation id: why" (advisory: Review checks those on open)
        self.busy_s = 0.0  # time spent checking, for the bench
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="grounding-checks", daemon=True)
        self._thread.start()

    def submit(self, conversation_id: str) -> None:
        """Queue a saved conversation (a run's ``on_saved`` callback); returns at once."""
        with self._lock:
            self.submitted += 1
        self._queue.put(conversation_id)

    @property
    def pending(self) -> int:
        with self._lock:
            return self.submitted - self.checked

    def _work(self) -> None:
        while True:
            cid = self._queue.get()
            if cid is None:
                return
            started = time.perf_counter()
            try:
                # A conversation the LLM verifier checked as it was saved (--verify-grounding) keeps its verdicts.
                if self.db.scalar("SELECT grounded_at FROM conversations WHERE id=?", [cid]) is None:
                    score_conversation(self.db, self.checker.embedder, cid, self.checker)
            except Exception as e:  # the conversation is saved; only its badge waits for Review to check it
                self.errors.append(f"{cid}: {type(e).__name__}: {e}")
            finally:
                with self._lock:
                    self.checked += 1
                    self.busy_s += time.perf_counter() - started

    def finish(self, progress: ProgressFn | None = None, stop: threading.Event | None = None) -> int:
        """Wait for the queued checks (reporting ``progress(done, total)``), then end the thread.

        Returns how many conversations were checked. ``stop`` set: stop waiting (the rest stays queued for
        nobody: Review and export check them).
        """
        while self.pending and not (stop is not None and stop.is_set()):
            if progress:
                progress(self.checked, self.submitted)
            time.sleep(0.05)
        if progress:
            progress(self.checked, self.submitted)
        self.close()
        return self.checked

    def close(self) -> None:
        """End the thread after what it is checking now (anything still queued is left unchecked)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout=60)
