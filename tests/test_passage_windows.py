"""Passage windows embedded at index time: after indexing, checking an answer embeds only the answer."""

from __future__ import annotations

import os
import subprocess
import sys

from core.quality.grounding import GroundingChecker, VectorStore, WindowCache, _window_sentences
from core.quality.passage_windows import WindowIndexer
from core.workbench import Workbench
from tests.conftest import ROOT, SAMPLE_DIR, make_settings


def _chunk_texts(wb: Workbench) -> list[str]:
    return [r["text"] for r in wb.db.rows("SELECT text FROM chunks ORDER BY id")]


def _stored(data_dir, embedder, sentences) -> int:
    store = VectorStore(data_dir, embedder.model_name)
    try:
        return len(store.get_many(list(sentences)))
    finally:
        store.close()


def test_indexing_embeds_every_chunks_window_sentences_and_a_check_then_embeds_only_the_answer(tmp_path, embedder):
    data = tmp_path / "data"
    wb = Workbench(make_settings(data), store_idle_close_s=0, embedder=embedder)
    try:
        report = wb.corpus.ingest_path(SAMPLE_DIR / "summaries")
        assert report.added_chunks > 0
        assert wb.windows.wait(timeout_s=300)
        assert wb.windows.error is None
        texts = _chunk_texts(wb)
        assert wb.windows.chunks_done == wb.windows.chunks_total == len(texts)
        sentences = {s for t in texts for s in _window_sentences(t)}
        assert len(sentences) > 50  # the six summaries: enough for several encode slices, a tenth of the model time
        assert wb.windows.sentences_embedded == len(sentences)
        assert _stored(data, embedder, sentences) == len(sentences)  # in the data dir, for other processes

        # Indexing the same folder again adds no chunk and embeds nothing.
        again = wb.corpus.ingest_path(SAMPLE_DIR / "summaries")
        assert again.added_chunks == 0 and not wb.windows.busy
    finally:
        wb.close()
    # No connection outlives a read or a write: a copy of the idle data dir is whole, nothing is left to a -wal.
    assert not list(data.glob("grounding-vectors.sqlite-*"))

    # Another process's checker over this data dir (a fresh memory cache): the passages cost no model time.
    encoded: list[str] = []

    class Counting:
        model_name = embedder.model_name

        def encode(self, batch):
            encoded.extend(batch)
            return embedder.encode(batch)

    passage = {"id": "p1", "text": texts[3]}
    claim = "The court held that the landlord had to return the deposit within thirty days."
    checker = GroundingChecker(Counting(), cache=WindowCache(store=VectorStore(data, embedder.model_name)))
    checker.score_answer(claim, [passage])
    assert encoded == [claim]


def test_closing_stops_the_background_work_and_a_check_embeds_what_is_missing(tmp_path, embedder):
    data = tmp_path / "data"
    data.mkdir()
    texts = [f"Ruling {i}. The tenant in matter {i} paid {i * 100} dollars of rent on time every month of the "
             f"lease. The landlord kept the deposit of matter {i} without an itemised list." for i in range(400)]
    indexer = WindowIndexer(embedder, data, chunks_per_batch=8)
    indexer.add(texts)
    indexer.close(timeout_s=60)
    assert not indexer.busy and indexer.error is None
    assert indexer.chunks_done < len(texts)  # stopped after the step under way, not at the end
    indexer.add(["Added after the close. It is ignored, not queued for a thread that will not come."])
    assert not indexer.busy

    left = [s for t in texts[indexer.chunks_done:] for s in _window_sentences(t)]
    assert _stored(data, embedder, left) == 0
    checker = GroundingChecker(embedder, cache=WindowCache(store=VectorStore(data, embedder.model_name)))
    result = checker.score_answer("The tenant in matter 399 paid 39900 dollars of rent on time every month.",
                                  [{"id": "last", "text": texts[-1]}])
    assert result.score is not None and result.score > 0.5


def test_a_read_only_workbench_embeds_nothing(indexed_sample_dir, embedder):
    wb = Workbench(make_settings(indexed_sample_dir), store_idle_close_s=0, embedder=embedder, read_only=True)
    try:
        assert wb.windows is None and wb.corpus.on_indexed is None
    finally:
        wb.close()


def test_cli_index_finishes_the_windows_before_it_exits(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("GROUNDWORK_DATA_DIR", None)
    out = subprocess.run([sys.executable, "-m", "core.cli", "index", str(SAMPLE_DIR / "headnotes.jsonl"),
                          "--data-dir", str(data)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-800:]
    assert "grounding checks" in out.stderr  # the step is shown with its progress
    from core.db import Database
    from core.corpus.embeddings import Embedder

    texts = [r["text"] for r in Database(data / "groundwork.db").rows("SELECT text FROM chunks")]
    sentences = {s for t in texts for s in _window_sentences(t)}
    assert sentences and _stored(data, Embedder(), sentences) == len(sentences)
