"""Qdrant Edge as the embedded engine: model checks and locking as in local mode, a SIGKILL mid-ingest, the
background index build, migration both ways, and a server snapshot searched offline."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.corpus import edge_store
from core.corpus.edge_store import EdgeStore
from core.errors import ModelMismatchError, StoreLockedError, VectorStoreError
from core.corpus.migrate import load_snapshot, migrate
from core.corpus.storehub import open_store
from core.corpus.vectorstore import PointFilter, QdrantStore
from core.workbench import Workbench
from tests.conftest import ROOT, make_settings
from tests.test_corpus import run_cli, write_docs


@pytest.fixture
def engine_wb(request, tmp_path, embedder):
    w = Workbench(make_settings(tmp_path / "data", embedded_engine=request.param), store_idle_close_s=0,
                  embedder=embedder)
    yield w
    w.close()


def test_edge_is_the_embedded_default_and_lives_apart_from_local_mode(tmp_path):
    settings = make_settings(tmp_path / "data")
    assert settings.embedded_engine == "edge"
    assert settings.edge_path != settings.qdrant_path and settings.edge_path.parent == settings.qdrant_path.parent
    store = open_store(settings)
    try:
        assert isinstance(store, EdgeStore) and store.location == str(settings.edge_path)
    finally:
        store.close()
    local = open_store(settings.replace(embedded_engine="local"))
    try:
        assert isinstance(local, QdrantStore) and local.engine == "local"
    finally:
        local.close()
    with pytest.raises(Exception, match="choose edge or local"):
        make_settings(tmp_path / "data", embedded_engine="faiss")


@pytest.mark.parametrize("engine_wb", ["local", "edge"], indirect=True)
def test_dimension_mismatch_is_caught_the_same_way(engine_wb):
    with engine_wb.stores.use() as store:
        store.create(engine_wb.settings.collection, 768)
        store.upsert(engine_wb.settings.collection, [str(uuid.UUID(int=1))], [np.ones(768) / np.sqrt(768)],
                     [{"text": "a passage"}])
    with pytest.raises(ModelMismatchError, match=r"768-dim.*all-MiniLM-L6-v2.*384-dim"):
        engine_wb.corpus.search("anything")


@pytest.mark.parametrize("engine_wb", ["local", "edge"], indirect=True)
def test_same_size_other_model_is_caught_by_the_probe(engine_wb):
    texts = ["The tenant sued for the deposit.", "The employee was fired.", "The zoning board denied it.",
             "A contract was breached."]
    with engine_wb.stores.use() as store:
        store.create(engine_wb.settings.collection, 384)
        store.upsert(engine_wb.settings.collection, [str(uuid.UUID(int=i + 1)) for i in range(4)],
                     np.random.default_rng(0).normal(size=(4, 384)), [{"text": t} for t in texts])
    with pytest.raises(ModelMismatchError, match="do not find themselves"):
        engine_wb.corpus.search("deposit")


def test_vector_of_the_wrong_size_is_refused_before_writing(tmp_path):
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        store.create("c", 8)
        with pytest.raises(VectorStoreError, match="4 dims.*8-dim"):
            store.upsert("c", [str(uuid.UUID(int=1))], [[1.0, 0, 0, 0]], [{}])
        assert store.count("c") == 0
    finally:
        store.close()


def _locked_message(settings, holder_code: str) -> str:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(holder_code)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as caught:
            open_store(settings)
        return str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_shard_held_by_another_process_gives_the_local_mode_message(tmp_path):
    edge_settings = make_settings(tmp_path / "edge-data")
    store = open_store(edge_settings)
    store.create("groundwork", 4)
    store.close()
    edge_message = _locked_message(edge_settings, f"""
        import time
        from qdrant_edge import EdgeShard
        s = EdgeShard.load({str(edge_settings.edge_path / "groundwork")!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    local_settings = make_settings(tmp_path / "local-data", embedded_engine="local")
    local_settings.qdrant_path.mkdir(parents=True)
    local_message = _locked_message(local_settings, f"""
        import time
        from qdrant_client import QdrantClient
        c = QdrantClient(path={str(local_settings.qdrant_path)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    assert "in use by another process" in edge_message
    assert edge_message.replace(str(edge_settings.edge_path), "<folder>") == \
        local_message.replace(str(local_settings.qdrant_path), "<folder>")
    # Released: the shard opens again, intact.
    store = open_store(edge_settings)
    try:
        assert store.list_collections() == ["groundwork"] and store.info("groundwork").dim == 4
    finally:
        store.close()


CRASHING_INGEST = """
import sys
from core.workbench import Workbench
from tests.conftest import make_settings
# Every chunk embedded by the model (no cache), so the ingest takes long enough to be killed in the middle.
wb = Workbench(make_settings(sys.argv[1], embedding_cache="off"), store_idle_close_s=0)
wb.corpus.embed_group_chunks = 3
def progress(stage, done, total):
    if stage == "embedding":
        print(f"embedded {done}", flush=True)
wb.corpus.ingest_path(sys.argv[2], progress=progress)
print("finished", flush=True)
"""


def test_sigkill_mid_ingest_then_rerun_loses_and_duplicates_nothing(tmp_path, embedder):
    folder = write_docs(tmp_path / "docs", n=8, words=700)
    data = tmp_path / "data"
    child = subprocess.Popen([sys.executable, "-c", CRASHING_INGEST, str(data), str(folder)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        seen = 0
        for line in child.stdout:
            if line.startswith("embedded ") and int(line.split()[1]) > 0:
                seen += 1
                if seen == 2:  # two groups stored; the third is being embedded or written right now
                    os.kill(child.pid, signal.SIGKILL)
                    break
        assert seen == 2, "the ingest finished before it could be killed"
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    wb = Workbench(make_settings(data), store_idle_close_s=0, embedder=embedder)
    try:
        partial = wb.corpus.stats()
        assert partial["engine"] == "edge" and 0 < partial["documents"] - partial["pending"] < 8
        report = wb.corpus.ingest_path(folder)
        stats = wb.corpus.stats()
        assert stats["documents"] == 8 and stats["pending"] == 0
        assert report.added_documents + report.already_indexed == 8
        assert wb.corpus.consistency() == {"sqlite_chunks": stats["chunks"], "points": stats["chunks"]}
        sqlite_ids = {r["id"] for r in wb.db.rows("SELECT id FROM chunks")}
        with wb.stores.use() as store:
            rows, offset = [], None
            while True:
                batch, offset = store.scroll(wb.settings.collection, limit=100, offset=offset)
                rows += batch
                if offset is None:
                    break
        point_ids = [r["id"] for r in rows]
        assert len(point_ids) == len(set(point_ids)) == len(sqlite_ids) and set(point_ids) == sqlite_ids
        assert wb.corpus.search("easement dispute", k=1)[0].text
    finally:
        wb.close()


def _fill(store, collection, n, dim=16, seed=0, start=0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    ids = [str(uuid.UUID(int=start + i + 1)) for i in range(n)]
    store.upsert(collection, ids, vectors, [{"document_id": f"d{(start + i) % 10}", "text": f"t{i}"}
                                            for i in range(n)])
    return ids, vectors


def test_index_build_runs_beside_searches_and_is_swapped_in(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "OPTIMIZE_MIN_POINTS", 100)
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        store.create("c", 16)
        _fill(store, "c", 3000)
        query = np.random.default_rng(5).normal(size=16)
        before = [h.id for h in store.search("c", query, 5)]
        assert store.needs_build("c") and store.index_status("c")["state"] == "pending"
        searches, stop = [], threading.Event()

        def search_loop():
            while not stop.is_set():
                searches.append([h.id for h in store.search("c", query, 5, PointFilter(document_ids=["d1", "d2"]))])

        t = threading.Thread(target=search_loop)
        t.start()
        stages = []
        try:
            assert store.build_index("c", progress=lambda s, d, n: stages.append(s)) is True
        finally:
            stop.set()
            t.join()
        assert len(searches) > 3 and all(s == searches[0] for s in searches)
        assert "building the search index (estimate)" in stages
        assert [h.id for h in store.search("c", query, 5)] == before
        assert not store.needs_build("c") and store.count("c") == 3000
        assert not any(p.name.startswith(".") for p in (tmp_path / "edge").iterdir())
    finally:
        store.close()
    reopened = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        assert [h.id for h in reopened.search("c", query, 5)] == before and not reopened.needs_build("c")
    finally:
        reopened.close()


def test_background_build_after_writes_survives_close_and_is_adopted_on_reopen(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "OPTIMIZE_MIN_POINTS", 100)
    monkeypatch.setattr(edge_store, "BUILD_DEBOUNCE_S", 0.2)
    root = tmp_path / "edge"
    store = EdgeStore(root)
    store.create("c", 16)
    _fill(store, "c", 3000)
    deadline = time.monotonic() + 30
    while store.index_status("c")["state"] != "building":
        assert time.monotonic() < deadline, "no background build started after the writes"
        time.sleep(0.05)
    store.close()  # like the app's idle close: the build process is left to finish
    built = root / ".build-c" / edge_store.BUILT_FILE
    deadline = time.monotonic() + 120
    while not built.exists():
        assert time.monotonic() < deadline, "the detached build never finished"
        time.sleep(0.1)
    reopened = EdgeStore(root, auto_build=False)
    try:
        assert not reopened.needs_build("c") and reopened.count("c") == 3000
        assert not any(p.name.startswith(".") for p in root.iterdir())
    finally:
        reopened.close()


def test_a_write_during_the_build_discards_the_stale_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "OPTIMIZE_MIN_POINTS", 100)
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        store.create("c", 16)
        _fill(store, "c", 2000)
        store.build_index("c", wait=False)
        _fill(store, "c", 10, seed=9, start=5000)  # written after the copy was taken
        build = store._builds["c"]
        build["done"].wait(120)
        assert build["state"] == "discarded"
        assert store.count("c") == 2010  # nothing lost
        assert store.build_index("c") is True and store.count("c") == 2010
    finally:
        store.close()


def test_beyond_the_exact_limit_search_uses_hnsw_with_full_recall(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "EXACT_MAX_POINTS", 500)
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        store.create("c", 16)
        ids, vectors = _fill(store, "c", 2000)
        assert store.search_params("c")["mode"] == "exact"  # no graph yet: exact
        assert store.build_index("c") is True
        assert store.search_params("c") == {"mode": "hnsw", "hnsw_ef": edge_store.HNSW_EF}
        normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        rng = np.random.default_rng(3)
        recall = []
        for q in rng.normal(size=(30, 16)):
            truth = {ids[i] for i in np.argsort(-(normed @ q))[:3]}
            recall.append(len(truth & {h.id for h in store.search("c", q, 3)}) / 3)
        assert np.mean(recall) >= 0.99
    finally:
        store.close()


def test_after_the_build_the_int8_scan_finds_what_exact_search_finds(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "OPTIMIZE_MIN_POINTS", 100)
    monkeypatch.setattr(edge_store, "SCAN_MIN_POINTS", 1000)
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        store.create("c", 32)
        ids, vectors = _fill(store, "c", 3000, dim=32)
        queries = np.random.default_rng(4).normal(size=(40, 32))
        flt = PointFilter(document_ids=["d1", "d7"], exclude_ids=ids[:5])
        exact = [[h.id for h in store.search("c", q, 3, f)] for q in queries for f in (None, flt)]
        assert store.search_params("c")["mode"] == "exact"
        assert store.build_index("c") is True
        assert store.search_params("c") == {"mode": "scan", "oversampling": edge_store.SCAN_OVERSAMPLING}
        assert [[h.id for h in store.search("c", q, 3, f)] for q in queries for f in (None, flt)] == exact
    finally:
        store.close()


def _layout(shard_dir):
    import qdrant_edge

    config = json.loads((shard_dir / "edge_config.json").read_text())
    shard = qdrant_edge.EdgeShard.load(str(shard_dir))
    try:
        params = shard.info().payload_schema["document_id"].params
    finally:
        shard.close()
    return config["vectors"][""].get("memory"), getattr(params, "memory", None)


def test_a_shard_built_with_the_older_layout_is_rebuilt_once_and_opens_the_same(tmp_path, monkeypatch):
    import qdrant_edge as qe

    monkeypatch.setattr(edge_store, "OPTIMIZE_MIN_POINTS", 100)
    monkeypatch.setattr(edge_store, "SCAN_MIN_POINTS", 1000)
    root = tmp_path / "edge"
    store = EdgeStore(root, auto_build=False)
    store.create("c", 16)
    ids, _ = _fill(store, "c", 3000)
    store.close()
    # What earlier versions built: float32 vectors read into RAM at open, the document index in RAM.
    shard = qe.EdgeShard.load(str(root / "c"), qe.EdgeConfig(
        vectors={"": qe.EdgeVectorParams(size=16, distance=qe.Distance.Cosine)}, hnsw_config=edge_store._hnsw(qe, 0),
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1)))
    shard.update(qe.UpdateOperation.create_field_index("document_id", qe.PayloadSchemaType.Keyword))
    shard.optimize()
    shard.flush()
    shard.close()
    assert _layout(root / "c") == (None, None)

    queries = np.random.default_rng(4).normal(size=(20, 16))
    flt = PointFilter(document_ids=["d1", "d7"], exclude_ids=ids[:5])
    store = EdgeStore(root, auto_build=False)
    try:
        assert store.search_params("c")["mode"] == "scan" and store.count("c") == 3000
        before = [[h.id for h in store.search("c", q, 3, f)] for q in queries for f in (None, flt)]
        assert store.needs_build("c") and store.index_status("c")["state"] == "pending"
        assert store.build_index("c") is True and not store.needs_build("c")
        assert [[h.id for h in store.search("c", q, 3, f)] for q in queries for f in (None, flt)] == before
        assert store.count("c") == 3000 and store.count("c", PointFilter(document_ids=["d1"])) == 300
    finally:
        store.close()
    assert _layout(root / "c") == ("cold", qe.Memory.Cold)
    store = EdgeStore(root, auto_build=False)
    try:
        assert not store.needs_build("c") and store.count("c") == 3000
        assert store.search_params("c")["mode"] == "scan"
        assert [[h.id for h in store.search("c", q, 3, f)] for q in queries for f in (None, flt)] == before
    finally:
        store.close()


def test_a_crash_in_the_middle_of_a_swap_keeps_a_complete_shard(tmp_path):
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    store.create("c", 4)
    _fill(store, "c", 20, dim=4)
    store.close()
    os.replace(tmp_path / "edge" / "c", tmp_path / "edge" / ".old-c")  # died between the two renames
    store = EdgeStore(tmp_path / "edge", auto_build=False)
    try:
        assert store.count("c") == 20
    finally:
        store.close()


def test_local_mode_collection_is_not_silently_empty_under_edge(tmp_path, embedder):
    settings = make_settings(tmp_path / "data", embedded_engine="local")
    wb = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    wb.corpus.ingest_path(write_docs(tmp_path / "docs", n=2))
    wb.close()
    wb = Workbench(settings.replace(embedded_engine="edge"), store_idle_close_s=0, embedder=embedder)
    try:
        assert "groundwork migrate --to edge" in wb.corpus.stats()["warning"]
        with pytest.raises(VectorStoreError, match="groundwork migrate --to edge"):
            wb.corpus.search("deposit")
    finally:
        wb.close()


def test_migrate_local_to_edge_and_back_without_reembedding(tmp_path, embedder):
    local = make_settings(tmp_path / "data", embedded_engine="local")
    wb = Workbench(local, store_idle_close_s=0, embedder=embedder)
    wb.corpus.ingest_path(write_docs(tmp_path / "docs", n=6))
    expected = [(p.id, round(p.score, 4)) for p in wb.corpus.search("easement dispute", k=4)]
    chunks = wb.corpus.stats()["chunks"]
    wb.close()

    stages = []
    report = migrate(local, "edge", progress=lambda s, d, n: stages.append((s, d, n)))
    assert report.points == chunks and ("copying vectors", chunks, chunks) in stages
    edge = local.replace(embedded_engine="edge")
    wb = Workbench(edge, store_idle_close_s=0, embedder=embedder)
    try:
        assert [(p.id, round(p.score, 4)) for p in wb.corpus.search("easement dispute", k=4)] == expected
        stats = wb.corpus.stats()
        assert stats["engine"] == "edge" and stats["warning"] == ""
        assert wb.corpus.consistency() == {"sqlite_chunks": chunks, "points": chunks}
    finally:
        wb.close()

    with pytest.raises(VectorStoreError, match="--replace"):
        migrate(edge, "local")
    assert migrate(edge, "local", replace=True).points == chunks
    wb = Workbench(local, store_idle_close_s=0, embedder=embedder)
    try:
        assert [(p.id, round(p.score, 4)) for p in wb.corpus.search("easement dispute", k=4)] == expected
        assert wb.corpus.stats()["warning"] == ""
    finally:
        wb.close()


def test_cli_migrate(tmp_path, embedder):
    data = tmp_path / "data"
    wb = Workbench(make_settings(data, embedded_engine="local"), store_idle_close_s=0, embedder=embedder)
    wb.corpus.ingest_path(write_docs(tmp_path / "docs", n=2))
    wb.close()
    out = run_cli("migrate", "--to", "edge", "--data-dir", str(data), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "points of 'groundwork' copied" in out.stdout
    out = run_cli("migrate", "--data-dir", str(data))
    assert out.returncode == 2 and "Give either --to" in out.stderr and "Traceback" not in out.stderr


def server_style_snapshot(shard_dir: Path, out: Path) -> Path:
    """A shard snapshot laid out as a Qdrant server writes one (GET .../shards/0/snapshot): each segment a
    ``segments/<id>.tar`` holding ``snapshot/files/...``, the WAL, the shard's own config; no Edge config.

    No Qdrant server can run here, so the archive is made from a flushed shard's files in that layout.
    """
    with tarfile.open(out, "w") as tar:
        for seg in sorted(p for p in (shard_dir / "segments").iterdir() if p.is_dir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as seg_tar:
                for f in sorted(seg.rglob("*")):
                    if f.is_file():
                        seg_tar.add(f, arcname=f"snapshot/files/{f.relative_to(seg)}")
            info = tarfile.TarInfo(f"segments/{seg.name}.tar")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        tar.add(shard_dir / "wal", arcname="wal")
        config = json.dumps({"type": "local"}).encode()
        info = tarfile.TarInfo("shard_config.json")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
    return out


def _server_shard(tmp_path: Path, name: str, texts: list[str], embedder) -> Path:
    """A collection as the seed's index_corpus.py builds it: one unnamed vector, the text under "content"."""
    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation

    path = tmp_path / name
    shard = EdgeShard.create(str(path), EdgeConfig(vectors=EdgeVectorParams(size=384, distance=Distance.Cosine)))
    vectors = embedder.encode(texts)
    shard.update(UpdateOperation.upsert_points([
        Point(id=str(uuid.UUID(int=i + 1)), vector=list(map(float, v)), payload={"content": t, "case": i})
        for i, (t, v) in enumerate(zip(texts, vectors))]))
    shard.flush()
    shard.close()
    return server_style_snapshot(path, tmp_path / f"{name}.snapshot")


def test_server_snapshot_is_searched_offline_and_refreshed(tmp_path, embedder):
    texts = ["The court held the non-compete unenforceable.", "The search of the vehicle was unlawful.",
             "The landlord must return the deposit within 21 days."]
    first = _server_shard(tmp_path, "v1", texts, embedder)
    settings = make_settings(tmp_path / "data", collection="caselaw", content_key="content")
    info = load_snapshot(settings, first)
    assert (info["collection"], info["points"], info["dim"]) == ("caselaw", 3, 384)
    wb = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    try:
        hit = wb.corpus.search("when is a deposit due back", k=1)[0]
        assert hit.text == texts[2]
        with wb.stores.use() as store:
            assert store.count("caselaw", PointFilter(exclude_ids=[hit.id])) == 2
    finally:
        wb.close()

    more = texts + ["An easement by necessity arises when a parcel is landlocked."]
    second = _server_shard(tmp_path, "v2", more, embedder)
    assert load_snapshot(settings, second)["points"] == 4
    wb = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    try:
        assert wb.corpus.search("landlocked parcel access", k=1)[0].text == more[3]
    finally:
        wb.close()


def test_not_a_snapshot_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.snapshot"
    junk.write_bytes(b"not a tar")
    with pytest.raises(VectorStoreError, match="not a Qdrant shard snapshot"):
        load_snapshot(make_settings(tmp_path / "data"), junk)
    assert not [p for p in (tmp_path / "data" / "qdrant-edge").iterdir()]


def test_a_build_started_by_an_earlier_opener_shows_its_real_elapsed_time(tmp_path):
    root = tmp_path / "edge"
    store = EdgeStore(root, auto_build=False)
    store.create("c", 16)
    _fill(store, "c", 50)
    store.close()
    # What an earlier process leaves behind while its build child runs: the copy and the child's PID file.
    worker = subprocess.Popen(["sleep", "60"])
    try:
        build_dir = root / ".build-c"
        build_dir.mkdir()
        pid_file = build_dir / edge_store.PID_FILE
        pid_file.write_text(str(worker.pid))
        os.utime(pid_file, (time.time() - 5, time.time() - 5))
        reopened = EdgeStore(root, auto_build=False)
        try:
            status = reopened.index_status("c")
            assert status["state"] == "building" and status["elapsed_s"] >= 5 and status["estimate_s"] > 0
        finally:
            reopened.close()
    finally:
        worker.kill()
        worker.wait()
