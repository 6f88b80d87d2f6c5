"""Ingest benchmark: documents/s and chunks/s end to end, against the bare model.encode rate.

Generates N synthetic legal-style .md documents, ingests them with a fresh Workbench into a temp data dir
(real SQLite, Qdrant local mode, the packaged all-MiniLM-L6-v2), then encodes the same chunk texts, read
back from SQLite, with the bare SentenceTransformer at the same batch size. The ratio of the two rates
says how much of the model's speed the ingest pipeline keeps (target >= 0.85).

    /work/main/.venv/bin/python bench/ingest.py                 # 200 docs of ~3,000 characters
    /work/main/.venv/bin/python bench/ingest.py --docs 50 --chars 2000 --keep
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from legal_text import write_corpus  # noqa: E402
from machine import CpuMeter  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StageTimer:
    """Wall time spent inside wrapped callables, by stage name (instance attributes only; core is untouched)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def call(self, stage: str, fn, *args, **kwargs):
        """Call fn, adding its wall time to ``stage``."""
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] += time.perf_counter() - t
            self.calls[stage] += 1

    def wrap(self, obj, attr: str, stage: str) -> None:
        fn = getattr(obj, attr)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            return self.call(stage, fn, *args, **kwargs)

        setattr(obj, attr, timed)


def ingest_once(wb, docs_dir: Path, label: str) -> tuple[float, int, int, object]:
    """Ingest docs_dir with wb (instrumented per stage); prints the block and returns (seconds, docs, chunks, usage)."""
    import core.corpus.collection as corpus_mod
    from core.corpus.collection import EMBED_GROUP_CHUNKS

    timer = StageTimer()
    corpus = wb.corpus
    timer.wrap(wb.embedder, "encode", "embed (Embedder.encode)")
    timer.wrap(wb.embedder, "count_wordpieces", "tokenize for truncation check")
    timer.wrap(corpus, "_write_pending", "sqlite pending rows (incl. tokenize)")
    timer.wrap(corpus, "_plan", "plan (chunking + dedup lookups)")
    opener = wb.stores._opener

    def opener_timed():
        store = opener()
        timer.wrap(store, "upsert", "qdrant upsert")
        return store

    wb.stores._opener = opener_timed
    orig_load_path = corpus_mod.load_path
    corpus_mod.load_path = lambda *a, **k: timer.call("read files", orig_load_path, *a, **k)
    try:
        with CpuMeter() as meter:
            report = corpus.ingest_path(docs_dir)
    finally:
        corpus_mod.load_path = orig_load_path
        for obj in (wb.embedder, corpus):
            for attr in ("encode", "count_wordpieces", "_write_pending", "_plan"):
                obj.__dict__.pop(attr, None)
        wb.stores._opener = opener
    seconds = meter.usage.wall_s
    print()
    print(f"{label}ingest (end to end, Corpus.ingest_path): {report.added_documents} documents, "
          f"{report.added_chunks} chunks in {seconds:.2f} s")
    print(f"  documents/s      {report.added_documents / seconds:8.1f}")
    print(f"  chunks/s         {report.added_chunks / seconds:8.1f}")
    print(f"  {meter.usage.describe()}")
    if report.problems or report.duplicates:
        print(f"  problems: {report.problems[:3]} duplicates: {report.duplicates[:3]}")
    print(f"  stages (wall s; nested stages overlap, embed group = {EMBED_GROUP_CHUNKS} chunks):")
    for stage, sec in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        print(f"    {stage:40s} {sec:7.2f} s  {100 * sec / seconds:5.1f}%  ({timer.calls[stage]} calls)")
    return seconds, report.added_documents, report.added_chunks, meter.usage


def bare_once(model, texts: list[str], batch_size: int, label: str) -> tuple[float, object]:
    with CpuMeter() as meter:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    seconds = meter.usage.wall_s
    print()
    print(f"{label}bare SentenceTransformer.encode (same model object, the same {len(texts)} chunk texts read back "
          f"from SQLite, batch_size={batch_size}, one call): {seconds:.2f} s")
    print(f"  chunks/s         {len(texts) / seconds:8.1f}   ({vectors.shape[1]} dims)")
    print(f"  {meter.usage.describe()}")
    return seconds, meter.usage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200, help="documents to generate (default 200)")
    ap.add_argument("--chars", type=int, default=3000, help="characters per document (default ~3000)")
    ap.add_argument("--seed", type=int, default=0, help="corpus generator seed")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate ingest (into a fresh data dir) and bare encode this many times; the ratio "
                         "uses the medians (use 2-3 on a shared machine)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads(N) first (0: leave as is)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    ap.add_argument("--quick", action="store_true", help="50 documents (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.docs = min(args.docs, 50)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    from core.config import Settings
    from core.workbench import Workbench

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-ingest-"))
    docs_dir = tmp / "docs"
    try:
        total_chars = write_corpus(docs_dir, args.docs, args.chars, args.seed)
        print(f"corpus: {args.docs} synthetic .md documents, {total_chars:,} characters "
              f"(avg {total_chars / args.docs:,.0f}), seed {args.seed}, in {docs_dir}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; torch {torch.__version__} "
              f"with {torch.get_num_threads()} threads")

        rss0 = current_rss_mb()
        t = time.perf_counter()
        # The embedding cache off: every round embeds its chunks, as a first ingest does (the cache is measured
        # on its own below).
        cold = {"embedding_cache": "off"}
        first = Workbench(Settings.from_env(env={}, data_dir=str(tmp / "data-1"), **cold), store_idle_close_s=0)
        embedder = first.embedder
        model = embedder.load()
        load_s = time.perf_counter() - t
        # Warm-up: the first forward passes allocate buffers and pick kernels; neither measurement pays for it.
        warm = ["The court held that the security deposit was withheld in bad faith under the statute. " * 12] * 64
        t = time.perf_counter()
        model.encode(warm, batch_size=embedder.batch_size, normalize_embeddings=True, show_progress_bar=False)
        warm_s = time.perf_counter() - t
        print(f"model: {embedder.model_name} loaded in {load_s:.1f} s (RSS {rss0:.0f} -> {current_rss_mb():.0f} MB), "
              f"warmed up with 64 texts in {warm_s:.1f} s; load and warm-up are excluded from both measurements")

        ingest_rates, bare_rates, others, ingest_cpu, bare_cpu = [], [], [], [], []
        docs = chunks = 0
        for r in range(1, args.rounds + 1):
            label = f"[round {r}] " if args.rounds > 1 else ""
            wb = first if r == 1 else Workbench(Settings.from_env(env={}, data_dir=str(tmp / f"data-{r}"), **cold),
                                                 store_idle_close_s=0, embedder=embedder)
            seconds, docs, chunks, usage = ingest_once(wb, docs_dir, label)
            ingest_rates.append((chunks / seconds, docs / seconds))
            ingest_cpu.append(chunks / max(usage.own_cpu_s, 1e-9))
            others.append(usage.others_cores)
            texts = [row["text"] for row in wb.db.rows(
                "SELECT c.text FROM chunks c JOIN documents d ON d.id=c.document_id WHERE d.collection=? "
                "ORDER BY d.source_path, c.position", [wb.settings.collection])]
            assert len(texts) == chunks, (len(texts), chunks)
            wb.close()
            seconds, usage = bare_once(model, texts, embedder.batch_size, label)
            bare_rates.append(len(texts) / seconds)
            bare_cpu.append(len(texts) / max(usage.own_cpu_s, 1e-9))
            others.append(usage.others_cores)

        ingest_cps = statistics.median(c for c, _ in ingest_rates)
        ingest_dps = statistics.median(d for _, d in ingest_rates)
        bare_cps = statistics.median(bare_rates)
        ratio = ingest_cps / bare_cps
        print()
        print(f"summary{f' (medians of {args.rounds} rounds)' if args.rounds > 1 else ''}: "
              f"{docs} documents / {chunks} chunks")
        print(f"  ingest           {ingest_dps:8.1f} documents/s  {ingest_cps:8.1f} chunks/s")
        print(f"  bare encode                            {bare_cps:8.1f} chunks/s")
        print(f"ratio ingest_chunks_per_s / bare_encode_chunks_per_s = {ratio:.3f}  "
              f"(target >= 0.85: {'MET' if ratio >= 0.85 else 'MISSED'})")
        cpu_ratio = statistics.median(ingest_cpu) / statistics.median(bare_cpu)
        print(f"  per CPU-second instead of per second: ingest {statistics.median(ingest_cpu):.1f} chunks/CPU-s, bare "
              f"{statistics.median(bare_cpu):.1f} chunks/CPU-s, ratio {cpu_ratio:.3f} (not the target; it stays "
              "meaningful when other processes take a varying share of the cores)")
        if max(others) > 0.25:
            print(f"  note: other processes used up to {max(others):.2f} of the {os.cpu_count()} cores during these "
                  "measurements, so ingest and bare encode may have had different shares of the machine; "
                  "rerun with --rounds 3 on a quiet machine for a clean ratio")
        # The same documents into a second data dir with the embedding cache on: the first data dir fills an
        # empty cache (its cost over the cold ingest is the cache's overhead), the second reads it.
        from core.corpus.embedding_cache import EmbeddingCache

        # The model already loaded and warmed up: only the cache differs.
        cached = embedder.with_cache(EmbeddingCache(tmp / "embedding-cache.sqlite"))
        rates = []
        for name in ("data-cache-fill", "data-cache-warm"):
            wb = Workbench(Settings.from_env(env={}, data_dir=str(tmp / name)), store_idle_close_s=0,
                           embedder=cached)
            seconds, _, n, _ = ingest_once(wb, docs_dir, f"[{name}] ")
            wb.close()
            rates.append(n / seconds)
        print(f"embedding cache: filling it {rates[0]:.1f} chunks/s ({rates[0] / ingest_cps:.2f} x the cold ingest), "
              f"the same documents again from it {rates[1]:.1f} chunks/s ({rates[1] / ingest_cps:.1f} x the cold "
              f"ingest, {rates[1] / bare_cps:.1f} x bare encode)")
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
