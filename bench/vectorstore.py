"""Vector store benchmark: Qdrant local mode against Qdrant Edge at 10k and 100k chunks, then end to end.

Per corpus size and engine, in one run: upsert time (batches of 256, as ingest writes), index-build time
(Edge: the background build, here waited for), reopen time (open the store and get the first top-3 results;
Edge: not the first open after the build, which finds the files still in the page cache) and memory after
reopen (measured in a fresh child process), top-3 search p50/p95 unfiltered and filtered (250 documents =
1,000 chunks, minus the briefing's own chunk, as the engine asks), and recall@3 against exact numpy (ties
count as hits).

Vectors: at 10k, real all-MiniLM-L6-v2 embeddings of short legal sentences (~200 characters: MiniLM embeds
1,000-character chunks at ~19/s here, so 10k of those would take 9 minutes; the embeddings are cached in
bench/.cache after the first run); at 100k, synthetic Gaussian vectors of the same dimension (384).
Random vectors are the hardest case for HNSW; below core.corpus.edge_store.EXACT_MAX_POINTS Edge searches by full
scan: "exact" (float32) before the index build and for small collections, "scan" (int8 copies rescored in
float32) after it.

End to end: conversations/min of a GenerationRun at concurrency 32 against FakeGemini (0.5 s latency) on
the 100k-chunk corpus, with each engine holding it. Local mode: the engine's Retriever snapshots the vectors
into numpy at run start (in the background). Edge: past core.corpus.vectorstore.SNAPSHOT_MAX_POINTS the engine
searches the shard live every turn, holding it for the run; "edge-snapshot" forces the snapshot path on the
same corpus, for comparison.

    /work/main/.venv/bin/python bench/vectorstore.py            # ~10-15 min on 2 cores
    /work/main/.venv/bin/python bench/vectorstore.py --quick    # 2k real + 20k synthetic, fewer dialogs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]
for _name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "QDRANT_URL", "QDRANT_API_KEY", "GROUNDWORK_PROVIDER",
              "GOOGLE_GEMINI_BASE_URL", "GROUNDWORK_DATA_DIR", "GROUNDWORK_RPM_LIMIT",
              "GROUNDWORK_EMBEDDED_ENGINE"):
    os.environ.pop(_name, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from legal_text import make_document  # noqa: E402
from machine import CpuMeter  # noqa: E402

CACHE = HERE / ".cache"
DIM = 384
COLLECTION = "groundwork"
KEY = "AIzaSy-bench-dummy-key-000000000000000"
N_QUERIES = 200


def chunk_id(i: int) -> str:
    return str(uuid.UUID(int=(0xBE4C << 96) | i))


def document_of(i: int) -> str:
    return f"doc-{i // 4:06d}"  # 4 chunks per document


# ---- data -------------------------------------------------------------------------------------
def sentences(n: int) -> list[str]:
    """Distinct ~200-character passages cut from bench/legal_text.py documents (deterministic)."""
    texts: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(texts) < n:
        _, doc = make_document(i, chars=3000, seed=7)
        i += 1
        for para in doc.split("\n\n"):
            if para.startswith("#"):
                continue
            parts = para.split(". ")
            for j in range(0, len(parts), 2):
                chunk = ". ".join(parts[j:j + 2])
                if len(chunk) > 60 and chunk not in seen:
                    seen.add(chunk)
                    texts.append(chunk)
    return texts[:n]


def real_embeddings(n: int) -> tuple[np.ndarray, list[str]]:
    texts = sentences(n)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"vectorstore-minilm-{key}.npy"
    if path.exists():
        return np.load(path), texts
    from core.corpus.embeddings import Embedder

    print(f"embedding {n:,} real sentences with all-MiniLM-L6-v2 (cached for next time) …", flush=True)
    e = Embedder()
    t = time.perf_counter()
    vectors = np.asarray(e.encode(texts), dtype=np.float32)
    print(f"  {n / (time.perf_counter() - t):.0f} sentences/s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors, texts


def dataset(kind: str, n: int) -> dict:
    if kind == "real":
        vectors, texts = real_embeddings(n + N_QUERIES)
        return {"kind": "real MiniLM", "n": n, "vectors": vectors[:n], "texts": texts[:n],
                "queries": vectors[n:n + N_QUERIES]}
    rng = np.random.default_rng(n)
    filler = [" ".join(sentences(50)[k % 50] for k in range(j, j + 2)) for j in range(50)]
    return {"kind": "synthetic", "n": n, "vectors": rng.normal(size=(n, DIM)).astype(np.float32),
            "texts": [filler[i % 50] for i in range(n)],
            "queries": rng.normal(size=(N_QUERIES, DIM)).astype(np.float32)}


def filters_for(n: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """(250 document ids = 1,000 chunks, one of their chunks to exclude) per filtered query."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_QUERIES):
        docs = rng.choice(n // 4, 250, replace=False)
        out.append(([f"doc-{d:06d}" for d in docs], chunk_id(int(docs[0]) * 4)))
    return out


# ---- store side -------------------------------------------------------------------------------
def open_engine(engine: str, data: Path):
    from core.config import Settings
    from core.corpus.edge_store import EdgeStore
    from core.corpus.storehub import open_store

    settings = Settings(data_dir=str(data), embedded_engine=engine)
    if engine == "edge":  # both engines hold the corpus here on purpose: no "migrate me" check
        return EdgeStore(settings.edge_path, auto_build=False)
    return open_store(settings)


def fill(engine: str, data: Path, ds: dict) -> dict:
    store = open_engine(engine, data)  # Edge without the background build: it is timed on its own below
    store.create(COLLECTION, DIM)
    n = ds["n"]
    t = time.perf_counter()
    for a in range(0, n, 256):
        b = min(a + 256, n)
        store.upsert(COLLECTION, [chunk_id(i) for i in range(a, b)], ds["vectors"][a:b],
                     [{"text": ds["texts"][i], "document_id": document_of(i), "position": i % 4,
                       "title": document_of(i), "source_path": f"{document_of(i)}.md"} for i in range(a, b)])
    out = {"upsert_s": time.perf_counter() - t, "index_s": 0.0}
    if engine == "edge":
        t = time.perf_counter()
        store.build_index(COLLECTION)
        out["index_s"] = time.perf_counter() - t
        out["search"] = store.search_params(COLLECTION)["mode"]
    else:
        out["search"] = "exact (numpy)"
    store.close()
    return out


CHILD = r"""
import json, sys, time
import numpy as np
sys.path[:0] = [sys.argv[1]]
engine, data, vec_path, n, max_filtered = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
import qdrant_client, qdrant_edge  # imported before the baseline: only the store's own memory is counted
from core.config import Settings
from core.corpus.storehub import open_store
from core.corpus.vectorstore import PointFilter
sys.path[:0] = [sys.argv[7]]
from vectorstore import filters_for, chunk_id, COLLECTION

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

arrays = np.load(vec_path)
vectors, queries = arrays["vectors"], arrays["queries"]
normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
settings = Settings(data_dir=data, embedded_engine=engine)
base = rss_mb()
if engine == "edge":  # Edge drops the page cache of what it loads when a shard closes: the first open after
    open_store(settings).close()  # the build finds it warm, every later start does not. Time a later one.
t = time.perf_counter()  # what a user waits for: open the store, get the first results
store = open_store(settings)
store.search(COLLECTION, queries[0], 3)
reopen = time.perf_counter() - t
mem = rss_mb() - base

def recall(hits, scores):
    if not len(scores):
        return 1.0
    kth = np.sort(scores)[-3] if len(scores) >= 3 else scores.min()
    idx = [int(h.id.replace("-", ""), 16) & ((1 << 96) - 1) for h in hits]
    return sum(scores[i] >= kth - 1e-5 for i in idx) / 3

lat, rec = [], []
for q in queries:
    t = time.perf_counter(); hits = store.search(COLLECTION, q, 3); lat.append(time.perf_counter() - t)
    rec.append(recall(hits, normed @ (q / np.linalg.norm(q))))
flat, frec = [], []
for q, (docs, exclude) in list(zip(queries, filters_for(n)))[:max_filtered]:
    flt = PointFilter(document_ids=docs, exclude_ids=[exclude])
    t = time.perf_counter(); hits = store.search(COLLECTION, q, 3, flt); flat.append(time.perf_counter() - t)
    allowed = np.full(n, -np.inf)
    for d in docs:
        k = int(d[4:]) * 4
        allowed[k:k + 4] = (normed[k:k + 4] @ (q / np.linalg.norm(q)))
    allowed[int(exclude.replace("-", ""), 16) & ((1 << 96) - 1)] = -np.inf
    frec.append(recall(hits, allowed))
store.close()
ms = lambda xs, p: float(np.percentile(xs, p) * 1000)
print(json.dumps({"reopen_s": reopen, "memory_mb": mem, "p50": ms(lat, 50), "p95": ms(lat, 95),
                  "fp50": ms(flat, 50), "fp95": ms(flat, 95), "filtered_queries": len(flat),
                  "recall": float(np.mean(rec)), "frecall": float(np.mean(frec))}))
"""


def measure(engine: str, data: Path, ds: dict, max_filtered: int) -> dict:
    vec_path = data / f"vectors-{ds['n']}.npz"
    if not vec_path.exists():
        np.savez(vec_path, vectors=ds["vectors"], queries=ds["queries"])
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), engine, str(data), str(vec_path), str(ds["n"]),
                          str(max_filtered), str(HERE)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"measurement child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- end to end -------------------------------------------------------------------------------
def write_sqlite(data: Path, ds: dict) -> None:
    """Documents and chunks as ingest records them (complete), with the ids the stores hold."""
    from core.db import Database, now

    db = Database(data / "groundwork.db")
    n = ds["n"]
    with db.write() as w:
        w["collections"].insert({"name": COLLECTION, "embedding_model": "all-MiniLM-L6-v2", "dim": DIM,
                                 "distance": "Cosine", "content_key": "text", "engine": "edge", "created_at": now()},
                                replace=True)
        w["documents"].insert_all(({"id": document_of(i), "collection": COLLECTION,
                                    "source_path": f"{document_of(i)}.md",
                                    "title": document_of(i), "content_hash": document_of(i), "text": ds["texts"][i],
                                    "metadata": "{}", "n_chars": 4 * len(ds["texts"][i]), "n_chunks": 4,
                                    "status": "complete", "created_at": now()} for i in range(0, n, 4)),
                                  batch_size=2000)
        w["chunks"].insert_all(({"id": chunk_id(i), "document_id": document_of(i), "collection": COLLECTION,
                                 "position": i % 4, "start_char": 0, "end_char": len(ds["texts"][i]),
                                 "text": ds["texts"][i], "est_tokens": 50, "truncated": 0} for i in range(n)),
                               batch_size=2000)
    db.close()


def end_to_end(data: Path, mode: str, dialogs: int, embedder) -> dict:
    from core.generation import engine as engine_mod
    from core.config import Settings
    from core.generation.engine import GenerationRun, RunConfig
    from fakes.gemini import FakeGemini
    from core.providers.gemini import GeminiProvider
    from core.workbench import Workbench

    engine = "local" if mode == "local" else "edge"
    settings = Settings(data_dir=str(data), embedded_engine=engine)
    wb = Workbench(settings, store_idle_close_s=0, embedder=embedder)
    wb.corpus._verified = True  # synthetic vectors cannot pass the model probe (tests cover the probe)
    original = engine_mod.Retriever
    timing = {}

    original_limit = engine_mod.SNAPSHOT_MAX_POINTS
    if mode == "edge-snapshot":
        engine_mod.SNAPSHOT_MAX_POINTS = 10**12

    class TimedRetriever(original):
        def _load_snapshot(self):  # in the background during a run: timed where it happens
            t = time.perf_counter()
            super()._load_snapshot()
            timing["retriever_s"] = time.perf_counter() - t

    engine_mod.Retriever = TimedRetriever
    try:
        with FakeGemini(latency=0.5) as fake:
            s = settings.replace(gemini_api_key=KEY, gemini_base_url=fake.base_url)
            run = GenerationRun(s, wb.db, wb.corpus, lambda gate: GeminiProvider(s, gate=gate),
                                config=RunConfig(num_dialogs=dialogs, max_turns=3, max_concurrency=32, seed=1))
            with CpuMeter() as meter:
                t = time.perf_counter()
                progress = run.run()
                wall = time.perf_counter() - t
    finally:
        engine_mod.Retriever = original
        engine_mod.SNAPSHOT_MAX_POINTS = original_limit
        wb.close()
    return {"saved": progress.saved, "wall_s": wall, "per_min": progress.saved / wall * 60,
            "retriever_s": timing.get("retriever_s", 0.0), "usage": meter.usage.describe()}


def retrieval_only(data: Path, ds: dict, embedder) -> dict:
    """Per-call retrieval at this size: the engine's numpy snapshot against searching the Edge shard."""
    from core.config import Settings
    from core.generation.engine import Retriever
    from core.workbench import Workbench

    wb = Workbench(Settings(data_dir=str(data), embedded_engine="edge"), store_idle_close_s=60, embedder=embedder)
    wb.corpus._verified = True
    try:
        t = time.perf_counter()
        snap = Retriever(wb.corpus, snapshot=True)
        load = time.perf_counter() - t
        live = Retriever(wb.corpus, snapshot=False)
        out = {"snapshot_load_s": load}
        lat = []
        for i in range(60):
            t = time.perf_counter()
            embedder.encode([ds["texts"][i * 7]])
            lat.append(time.perf_counter() - t)
        out["encode"] = float(np.percentile(lat, 50) * 1000)
        for name, r in (("snapshot", snap), ("live", live)):
            lat = []
            for i in range(60):
                t = time.perf_counter()
                r.search(ds["texts"][i * 7], 3, exclude_ids=[chunk_id(i), chunk_id(i + 1)])
                lat.append(time.perf_counter() - t)
            out[name] = float(np.percentile(lat, 50) * 1000)
        return out
    finally:
        wb.close()


# ---- main -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2k real + 20k synthetic vectors, 48 dialogs")
    ap.add_argument("--dialogs", type=int, default=0, help="conversations per end-to-end run (default 160)")
    ap.add_argument("--skip-e2e", action="store_true", help="no end-to-end generation runs")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    args = ap.parse_args()
    small, large = (2_000, 20_000) if args.quick else (10_000, 100_000)
    dialogs = args.dialogs or (48 if args.quick else 160)
    max_filtered_local_large = 3  # local mode filters in Python: ~1.4 s a query at 10k, ~15 s at 100k

    from core.corpus import edge_store

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-vectorstore-"))
    started = time.perf_counter()
    results = []
    try:
        with CpuMeter() as whole:
            for kind, n in (("real", small), ("synthetic", large)):
                ds = dataset(kind, n)
                data = tmp / f"data-{n}"
                data.mkdir()
                for engine in ("local", "edge"):
                    print(f"{n:,} {ds['kind']}: {engine} …", flush=True)
                    built = fill(engine, data, ds)
                    limit = N_QUERIES if engine == "edge" else (max_filtered_local_large if n == large else 20)
                    results.append({"n": n, "kind": ds["kind"], "engine": engine, **built,
                                    **measure(engine, data, ds, limit)})
                if n == large and not args.skip_e2e:
                    large_ds, large_data = ds, data
            print_table(results, small, large)
            if not args.skip_e2e:
                from core.corpus.embeddings import Embedder

                embedder = Embedder()
                embedder.load()
                write_sqlite(large_data, large_ds)
                print(f"\nretrieval per turn at {large:,} chunks (query embedding included, Edge store):", flush=True)
                r = retrieval_only(large_data, large_ds, embedder)
                print(f"  snapshot load {r['snapshot_load_s']:.2f} s; p50 per search: numpy snapshot "
                      f"{r['snapshot']:.1f} ms, Edge live search {r['live']:.1f} ms (both include the query "
                      f"embedding, p50 {r['encode']:.1f} ms alone)")
                print(f"\nend to end: {dialogs} conversations, concurrency 32, FakeGemini 0.5 s latency, "
                      f"{large:,}-chunk corpus", flush=True)
                e2e = {}
                for mode in ("local", "edge-snapshot", "edge"):
                    e2e[mode] = end_to_end(large_data, mode, dialogs, embedder)
                    x = e2e[mode]
                    print(f"  {mode:<10} {x['per_min']:7.1f} conversations/min  ({x['saved']} saved in "
                          f"{x['wall_s']:.1f} s; " + (f"vector snapshot loaded in the background in "
                          f"{x['retriever_s']:.2f} s; " if x["retriever_s"] else "searched live; ") + f"{x['usage']})",
                          flush=True)
                print(f"  edge / local: {e2e['edge']['per_min'] / max(e2e['local']['per_min'], 1e-9):.2f}x")
        print(f"\nsettings: EXACT_MAX_POINTS={edge_store.EXACT_MAX_POINTS:,}, HNSW_EF={edge_store.HNSW_EF}, "
              f"Edge {version('qdrant-edge-py')}, qdrant-client {version('qdrant-client')}")
        print(f"whole bench: {time.perf_counter() - started:.0f} s; {whole.usage.describe()}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def version(dist: str) -> str:
    from importlib.metadata import version as v

    return v(dist)


def print_table(results: list[dict], small: int, large: int) -> None:
    by = {(r["n"], r["engine"]): r for r in results}
    cols = [(small, "local"), (small, "edge"), (large, "local"), (large, "edge")]
    kinds = {r["n"]: r["kind"] for r in results}
    head = [f"{e} {n // 1000}k" for n, e in cols]
    print(f"\nvectors: {small:,} = {kinds[small]} (384 dims), {large:,} = {kinds[large]} (384 dims); "
          f"{N_QUERIES} queries each")
    print(f"{'':34}" + "".join(f"{h:>16}" for h in head))
    rows = [
        ("upsert (s)", lambda r: f"{r['upsert_s']:.2f}"),
        ("index build (s)", lambda r: f"{r['index_s']:.2f}" if r["engine"] == "edge" else "-"),
        ("search mode", lambda r: r["search"]),
        ("reopen (s)", lambda r: f"{r['reopen_s']:.3f}"),
        ("memory after reopen (MB)", lambda r: f"{r['memory_mb']:.0f}"),
        ("top-3 p50 / p95 (ms)", lambda r: f"{r['p50']:.2f} / {r['p95']:.1f}"),
        ("filtered top-3 p50 / p95 (ms)", lambda r: f"{r['fp50']:.1f} / {r['fp95']:.1f}"
         + ("*" if r["filtered_queries"] < N_QUERIES else "")),
        ("recall@3 vs numpy", lambda r: f"{r['recall']:.4f}"),
        ("filtered recall@3 vs numpy", lambda r: f"{r['frecall']:.4f}"),
    ]
    for label, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt(by[c]):>16}" for c in cols))
    print("  * local mode filters in Python (seconds per query): only "
          f"{by[(small, 'local')]['filtered_queries']} and {by[(large, 'local')]['filtered_queries']} filtered "
          "queries there")
    loc, edge = by[(large, "local")], by[(large, "edge")]
    print(f"targets at {large:,}: p50 speed-up {loc['p50'] / edge['p50']:.1f}x (>= 10x), memory "
          f"{edge['memory_mb'] / max(loc['memory_mb'], 1e-9):.2f} of local (<= 0.2), reopen {edge['reopen_s']:.3f} s "
          f"(<= 0.2 s), recall@3 {edge['recall']:.4f} (>= 0.99)")


if __name__ == "__main__":
    sys.exit(main())
