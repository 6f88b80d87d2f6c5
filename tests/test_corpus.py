"""Corpus ingest → embed → Qdrant local mode, search, resumable ingest and the model/store checks."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from core.errors import IngestError, ModelMismatchError, StoreLockedError, VectorStoreError
from core.corpus.vectorstore import QdrantStore
from core.workbench import Workbench
from tests.conftest import ROOT, SAMPLE_DIR, make_settings


def write_docs(folder, n=4, words=220):
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["deposit refund", "wrongful termination", "easement dispute", "speedy trial", "product defect",
              "zoning variance"]
    for i in range(n):
        body = " ".join(f"Sentence {j} about the {topics[i % len(topics)]} in matter {i}." for j in range(words // 8))
        (folder / f"doc{i}.md").write_text(f"# Matter {i}\n\n{body}\n", encoding="utf-8")
    return folder


def test_sample_corpus_is_indexed_and_searchable(indexed_wb):
    stats = indexed_wb.corpus.stats()
    assert stats["documents"] >= 30 and stats["chunks"] > stats["documents"]
    assert stats["pending"] == 0
    assert indexed_wb.corpus.consistency() == {"sqlite_chunks": stats["chunks"], "points": stats["chunks"]}
    hits = indexed_wb.corpus.search("landlord kept the security deposit", k=3)
    assert len(hits) == 3
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert any("deposit" in h.text.lower() for h in hits)
    assert all(h.title and h.source_path and h.document_id for h in hits)


def test_reingesting_the_same_files_adds_nothing(indexed_wb):
    before = indexed_wb.corpus.stats()
    report = indexed_wb.corpus.ingest_path(SAMPLE_DIR)
    assert report.added_documents == 0 and report.already_indexed == before["documents"]
    assert indexed_wb.corpus.stats()["chunks"] == before["chunks"]
    assert indexed_wb.corpus.consistency()["points"] == before["chunks"]


def test_identical_boilerplate_in_two_documents_stays_two_chunks(wb, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    boiler = "This opinion is not designated for publication and may not be cited."
    (folder / "a.md").write_text(f"# A\n\nFirst case: the facts of a residential lease dispute between two parties."
                                 f"\n\n{boiler}\n", encoding="utf-8")
    (folder / "b.md").write_text(f"# B\n\nSecond case: the facts of a commercial contract dispute over a delivery."
                                 f"\n\n{boiler}\n", encoding="utf-8")
    wb.settings.chunk_size = 100
    wb.settings.chunk_overlap = 0
    wb.corpus.ingest_path(folder)
    rows = wb.db.rows("SELECT id FROM chunks WHERE text LIKE ?", [f"%{boiler}%"])
    assert len(rows) == 2 and rows[0]["id"] != rows[1]["id"]


def test_duplicate_document_in_a_later_ingest_is_reported(wb, tmp_path):
    folder = write_docs(tmp_path / "docs", n=2)
    wb.corpus.ingest_path(folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "same.md").write_text((folder / "doc0.md").read_text(encoding="utf-8"), encoding="utf-8")
    report = wb.corpus.ingest_path(copy)
    assert report.added_documents == 0
    assert "same text as" in report.duplicates[0]


def test_interrupted_ingest_completes_on_rerun_without_duplicates(wb, tmp_path):
    folder = write_docs(tmp_path / "docs", n=6, words=600)
    wb.corpus.embed_group_chunks = 2  # several groups, so we can stop between them

    class Interrupt(Exception):
        pass

    calls = {"n": 0}

    def stop_after_first_group(stage, done, total):
        # Stopped once a group is complete (not by counting reports: the embedding cache may already hold some
        # of these chunks, and then a group reports in fewer steps).
        if stage == "embedding" and wb.db.scalar("SELECT COUNT(*) FROM documents WHERE status='complete'"):
            calls["n"] += 1
            raise Interrupt

    with pytest.raises(Interrupt):
        wb.corpus.ingest_path(folder, progress=stop_after_first_group)
    partial = wb.corpus.stats()
    assert 0 < partial["documents"] - partial["pending"] < 6
    report = wb.corpus.ingest_path(folder)
    stats = wb.corpus.stats()
    assert stats["documents"] == 6 and stats["pending"] == 0
    assert report.already_indexed == partial["documents"] - partial["pending"]
    # SQLite and Qdrant agree: no duplicate and no orphan chunk.
    assert wb.corpus.consistency() == {"sqlite_chunks": stats["chunks"], "points": stats["chunks"]}
    assert wb.db.scalar("SELECT COUNT(*) FROM chunks") == stats["chunks"]


def test_bad_path_and_empty_folder_are_clear(wb, tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        wb.corpus.ingest_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="No supported files"):
        wb.corpus.ingest_path(tmp_path / "empty")


def test_one_bad_file_does_not_stop_the_others(wb, tmp_path):
    folder = write_docs(tmp_path / "docs", n=2)
    (folder / "empty.txt").write_text("", encoding="utf-8")
    (folder / "binary.md").write_bytes(b"\x00\x01\x02" * 100)
    report = wb.corpus.ingest_path(folder)
    assert report.added_documents == 2
    assert len(report.problems) == 2
    assert any("empty.txt" in p for p in report.problems) and any("binary.md" in p for p in report.problems)


def test_model_mismatch_by_dimension_names_both(wb, tmp_path):
    with wb.stores.use() as store:
        store.create(wb.settings.collection, 768)
        store.upsert(wb.settings.collection, ["00000000-0000-0000-0000-000000000001"],
                     [np.ones(768) / np.sqrt(768)], [{"text": "a passage"}])
    with pytest.raises(ModelMismatchError, match=r"768-dim.*all-MiniLM-L6-v2.*384-dim"):
        wb.corpus.search("anything")


def test_same_size_but_different_model_is_caught_by_the_probe(wb):
    rng = np.random.default_rng(0)
    texts = ["The tenant sued for the deposit.", "The employee was fired.", "The zoning board denied it.",
             "A contract was breached."]
    with wb.stores.use() as store:
        store.create(wb.settings.collection, 384)
        vectors = rng.normal(size=(4, 384))  # another "model": same size, unrelated geometry
        store.upsert(wb.settings.collection, [f"00000000-0000-0000-0000-00000000000{i}" for i in range(4)],
                     vectors, [{"text": t} for t in texts])
    with pytest.raises(ModelMismatchError, match="do not find themselves"):
        wb.corpus.search("deposit")


def test_attach_existing_collection_built_elsewhere(tmp_path, embedder):
    """Like the seed's index_corpus.py: points with text under another payload key, no SQLite records."""
    # Built with qdrant-client on the local-mode folder, so read through local mode (Edge: tests/test_edge.py).
    settings = make_settings(tmp_path / "data", collection="caselaw", content_key="content", embedded_engine="local")
    texts = ["The court held the non-compete unenforceable.", "The search of the vehicle was unlawful.",
             "The landlord must return the deposit within 21 days."]
    store = QdrantStore(path=str(settings.qdrant_path))
    store.create("caselaw", 384)
    store.upsert("caselaw", [f"00000000-0000-0000-0000-00000000000{i}" for i in range(3)], embedder.encode(texts),
                 [{"content": t, "case": f"case {i}"} for i, t in enumerate(texts)])
    store.close()
    w = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    try:
        hits = w.corpus.search("when is a deposit due back", k=1)
        assert hits[0].text == texts[2]
    finally:
        w.close()
    wrong = make_settings(tmp_path / "data", collection="caselaw", content_key="body", embedded_engine="local")
    w = Workbench(wrong, store_idle_close_s=0, embedder=embedder)
    try:
        with pytest.raises(VectorStoreError, match="content key"):
            w.corpus.search("deposit")
    finally:
        w.close()


def test_unreachable_qdrant_url_is_clear():
    with pytest.raises(VectorStoreError, match="Cannot reach the Qdrant server at http://127.0.0.1:9"):
        QdrantStore(url="http://127.0.0.1:9", timeout=2)


@pytest.fixture
def local_wb(tmp_path, embedder):
    """A workbench on qdrant-client's local mode (the lock of an Edge shard: tests/test_edge.py)."""
    w = Workbench(make_settings(tmp_path / "data", embedded_engine="local"), store_idle_close_s=0, embedder=embedder)
    yield w
    w.close()


def test_store_folder_held_by_another_process(local_wb):
    wb = local_wb
    path = wb.settings.qdrant_path
    path.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from qdrant_client import QdrantClient
        c = QdrantClient(path={str(path)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="in use by another process"):
            with wb.stores.use():
                pass
    finally:
        holder.kill()
        holder.wait()
    # Once the other process is gone the folder opens normally: nothing was corrupted.
    with wb.stores.use() as store:
        assert store.list_collections() == []


def test_store_hub_closes_when_idle_so_another_process_can_open(indexed_wb):
    indexed_wb.stores.idle_close_s = 0.2
    indexed_wb.corpus.search("deposit")
    time.sleep(0.6)
    assert not indexed_wb.stores.is_open


def run_cli(*args, env_extra=None, cwd=ROOT):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_cli_index_and_search(tmp_path):
    folder = write_docs(tmp_path / "docs", n=3)
    env = {"GROUNDWORK_DATA_DIR": str(tmp_path / "data")}
    out = run_cli("index", str(folder), "--quiet", env_extra=env)
    assert out.returncode == 0, out.stderr
    assert "3 documents" in out.stdout
    out = run_cli("search", "easement dispute", "-k", "2", env_extra=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("score") == 2 and "easement" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["index", "/no/such/folder"], "does not exist"),
    (["index", "sample_data/corpus", "--chunk-size", "10"], "use at least 100"),
    (["search", "x", "--collection", "missing"], "does not exist yet"),
])
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, args, fragment):
    if args[0] == "search":  # a data dir that exists (a missing one is its own message, tests/test_bad_inputs.py)
        from core.db import Database

        Database(tmp_path / "data" / "groundwork.db").close()
    out = run_cli(*args, "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 2
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
