"""Retrieval eval: hit@3 and MRR per turn position on hand-written multi-turn question chains.

Indexes ``sample_data/corpus`` into a temporary data dir (real SQLite, the embedded vector store, the
packaged MiniLM), then asks every chain's turns in order three ways:

- **dense**: each message embedded as it stands, vector search only (how runs retrieved before);
- **hybrid**: each message as it stands, vector and BM25 (SQLite FTS5) fused by reciprocal rank;
- **conversation-aware hybrid**: what the engine does now: a follow-up searches with a standalone query
  (the message plus the conversation's subject terms) and a third ranking within the documents the
  conversation has been about (the engine's ``conversation_documents``).

A turn is a hit when a passage of a labelled document is among the top 3; MRR uses the first such
passage in the top 10. Two sets: ``tests/data/retrieval_chains.jsonl`` (development) and
``tests/data/retrieval_chains_heldout.jsonl`` (written before any tuning, never used to tune).

    .venv/bin/python bench/retrieval.py            # both sets
    .venv/bin/python bench/retrieval.py --set dev --misses 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SETS = {"dev": ROOT / "tests/data/retrieval_chains.jsonl", "held-out": ROOT / "tests/data/retrieval_chains_heldout.jsonl"}
MODES = ("dense", "hybrid", "conversation-aware hybrid")
POSITIONS = ("opening", "follow-up 1", "follow-up 2", "follow-up 3")


def load_chains(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def label_map(db) -> dict[str, str]:
    """Chain labels (paths under sample_data/corpus, or headnotes.jsonl#id) -> document ids."""
    out = {}
    for d in db.rows("SELECT id, source_path, metadata FROM documents"):
        out[d["source_path"]] = d["id"]
        meta = json.loads(d["metadata"] or "{}")
        row_id = meta.get("id") or (meta.get("fields") or {}).get("id")
        if row_id:
            out[f"{d['source_path'].split('#')[0].split(' ')[0]}#{row_id}"] = d["id"]
    return out


def evaluate(retriever, chains: list[dict], labels: dict[str, str], k: int = 3, misses: int = 0) -> dict:
    from core.retrieval import conversation_documents
    from core.standalone_query import standalone_query

    hits = {m: defaultdict(list) for m in MODES}
    rr = {m: defaultdict(list) for m in MODES}
    shown = 0
    for chain in chains:
        earlier: list = []  # conversation-aware mode's own results, turn by turn
        users: list[str] = []
        for t, turn in enumerate(chain["turns"]):
            relevant = {labels[d] for d in turn["docs"]}
            users.append(turn["text"])
            position = POSITIONS[min(t, 3)]
            for mode in MODES:
                # Top-k as a run asks for it (what hit@k measures), and the top 10 for MRR.
                if mode == "dense":
                    search = lambda n: retriever.search(turn["text"], n, mode="dense")  # noqa: E731
                elif mode == "hybrid":
                    search = lambda n: retriever.search(turn["text"], n)  # noqa: E731
                else:
                    query = standalone_query(users)
                    docs_so_far = conversation_documents(earlier) if t else None
                    search = lambda n: retriever.search(query, n, conversation_docs=docs_so_far)  # noqa: E731
                top = search(k)
                got = search(10)
                if mode == MODES[-1]:
                    earlier.append(top)
                docs = [p.document_id for p in got]
                hit = any(p.document_id in relevant for p in top)
                hits[mode][position].append(hit)
                first = next((i for i, d in enumerate(docs, 1) if d in relevant), 0)
                rr[mode][position].append(1 / first if first else 0.0)
                if mode == MODES[-1] and not hit and shown < misses:
                    shown += 1
                    print(f"  miss {chain['id']} turn {t + 1}: {query[:150]!r} -> "
                          f"{[p.source_path for p in top]} want {turn['docs']}")
    return {"hits": hits, "rr": rr}


def table(name: str, result: dict) -> str:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    lines = [f"### {name}", "", "| mode | " + " | ".join(f"{p} hit@3 / MRR (n)" for p in (*POSITIONS, "all follow-ups"))
             + " | follow-up ÷ opening |", "|---" * (len(POSITIONS) + 3) + "|"]
    for mode in MODES:
        h, r = result["hits"][mode], result["rr"][mode]
        cells = []
        for p in POSITIONS:
            cells.append(f"{mean(h[p]):.2f} / {mean(r[p]):.2f} ({len(h[p])})" if h[p] else "—")
        fh = [x for p in POSITIONS[1:] for x in h[p]]
        fr = [x for p in POSITIONS[1:] for x in r[p]]
        cells.append(f"{mean(fh):.2f} / {mean(fr):.2f} ({len(fh)})")
        ratio = mean(fh) / mean(h["opening"]) if mean(h["opening"]) else float("nan")
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=[*SETS, "both"], default="both")
    parser.add_argument("--misses", type=int, default=0, help="print this many conversation-aware misses")
    parser.add_argument("--engine", default="edge", choices=["edge", "local"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.config import Settings
    from core.retrieval import Retriever
    from core.workbench import Workbench

    with tempfile.TemporaryDirectory(prefix="gw-retrieval-") as tmp:
        os.environ["GROUNDWORK_EMBEDDED_ENGINE"] = args.engine
        wb = Workbench(Settings(data_dir=tmp, embedded_engine=args.engine))
        report = wb.corpus.ingest_path(ROOT / "sample_data/corpus")
        print(f"indexed: {report.summary()}")
        labels = label_map(wb.db)
        retriever = Retriever(wb.corpus, snapshot=True)
        chosen = SETS if args.set == "both" else {args.set: SETS[args.set]}
        for name, path in chosen.items():
            chains = load_chains(path)
            unknown = sorted({d for c in chains for t in c["turns"] for d in t["docs"] if d not in labels})
            if unknown:
                print(f"{path.name}: unknown document labels {unknown}")
                return 2
            result = evaluate(retriever, chains, labels, misses=args.misses)
            print()
            print(table(f"{name} set ({path.name}: {len(chains)} chains)", result))
        wb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
