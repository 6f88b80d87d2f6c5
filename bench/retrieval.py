"""Retrieval eval: does each turn of a conversation find, and stay on, the right document?

Indexes a corpus into a temporary data dir (real SQLite, the embedded vector store, the packaged MiniLM),
then asks every hand-written chain's turns in order four ways:

- **dense**: each message embedded as it stands, vector search only;
- **hybrid**: each message as it stands, vector and BM25 (SQLite FTS5) fused by reciprocal rank;
- **conversation-aware (before #22)**: a standalone query (message + the opening question's terms) and a third
  ranking within every document retrieved so far; every retrieved passage carried on;
- **anchored (engine)**: the engine's own code (``Simulator.passages_for`` / ``record_answer``): the opening
  turn searched within its briefing's documents (a chain's first labelled documents: what a run's question
  was written from), follow-ups within the documents the answers used unless they name another document or
  point away, only used passages carried, queries cleaned. Answers quote the first new passage and name its
  title (as the respondent prompts ask); every other follow-up comes with a sloppy model-written search query
  (the passage header copied in, a file name, prompt words), as weak models write them.

Per turn position: hit@3 (a labelled document among the top 3), MRR (top 10), and **top-1** (the first new
passage is from a labelled document). For the conversation: the **share of carried passages from the
conversation's documents** (the documents labelled so far) and **queries with noise** (file names, ids,
markup, status words, prompt words; detected here independently of the engine's cleaner).

Sets: ``dev`` (tests/data/retrieval_chains.jsonl over sample_data/corpus), ``held-out`` (written before tuning,
same corpus), ``held-out-long`` (tests/data/heldout_long: 32 long documents in families of near-identical
topics, written before any #22 change, never tuned on).

    .venv/bin/python bench/retrieval.py                  # every set
    .venv/bin/python bench/retrieval.py --set dev --misses 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "sample_data/corpus"
LONG = ROOT / "tests/data/heldout_long"
SETS = {"dev": (ROOT / "tests/data/retrieval_chains.jsonl", SAMPLE),
        "held-out": (ROOT / "tests/data/retrieval_chains_heldout.jsonl", SAMPLE),
        "held-out-long": (LONG / "chains.jsonl", LONG)}
MODES = ("dense", "hybrid", "conversation-aware (before #22)", "anchored (engine)")
ENGINE = MODES[-1]
BEFORE = MODES[-2]
POSITIONS = ("opening", "follow-up 1", "follow-up 2", "follow-up 3")


def load_chains(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def label_map(db) -> dict[str, str]:
    """Chain labels (paths under the corpus folder, or file.jsonl#id / file.jsonl#case_name) -> document ids."""
    out = {}
    for d in db.rows("SELECT id, source_path, metadata FROM documents"):
        out[d["source_path"]] = d["id"]
        meta = json.loads(d["metadata"] or "{}")
        base = d["source_path"].split("#")[0].split(" ")[0]
        for key in ("id", "case_name"):
            value = meta.get(key) or (meta.get("fields") or {}).get(key)
            if value:
                out[f"{base}#{value}"] = d["id"]
    return out


# Noise in a search query, detected independently of the engine's own cleaner.
_NOISE = [re.compile(p, re.I) for p in (
    r"\.(jsonl|json|csv|txt|md|html?|pdf|docx)\b", r"\bline \d+\b", r"[<>]", r"\w+=\S",
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-", r"\b[0-9a-f]{10,}\b", r"\bstatus\b", r"\bcarried\b", r"\bpassages?\b",
    r"\bretrieved\b", r"\bbriefing\b", r"\bchunk\b")]


def noisy(query: str) -> bool:
    return any(p.search(query or "") for p in _NOISE)


def _sentence(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(p for p in parts[:2] if len(p) > 20) or parts[0]


def conversation_documents(earlier: list, per_turn: int = 2, limit: int = 6) -> list[str]:
    """The engine before #22: every document among each earlier turn's best passages joined the conversation."""
    docs: dict[str, None] = {}
    for passages in reversed(earlier):
        for p in passages[:per_turn]:
            docs.setdefault(p.document_id, None)
    return list(docs)[:limit]


class _Said:
    """What the bench's respondent said (the engine reads ``.text`` only)."""

    def __init__(self, text: str):
        self.text = text


def evaluate(retriever, chains: list[dict], labels: dict[str, str], k: int = 3, misses: int = 0) -> dict:
    from core.corpus.collection import Passage
    from core.providers.base import Message
    from core.generation.run_config import RunConfig
    from core.generation.simulator import Question, Simulator
    from core.generation.standalone_query import standalone_query

    titles = retriever.corpus.titles()
    sim = Simulator(None, retriever, RunConfig(top_k=k), {"respondent": "{context}", "correspondent": "{briefing}",
                                                           "instruction": "{briefing} {n}"})
    hits = {m: defaultdict(list) for m in MODES}
    rr = {m: defaultdict(list) for m in MODES}
    top1 = {m: defaultdict(list) for m in MODES}
    carried = {m: [0, 0] for m in (BEFORE, ENGINE)}  # on topic, all
    noise = {m: [0, 0] for m in (BEFORE, ENGINE)}  # noisy, all follow-up queries
    focus_counts: dict[str, int] = defaultdict(int)
    shown = 0
    for chain in chains:
        earlier: list = []  # the "before" mode's results, turn by turn
        users: list[str] = []
        briefing_docs = [labels[d] for d in chain["turns"][0]["docs"]]
        question = Question(chain["turns"][0]["text"], {}, [], "",
                            briefing_passages=[Passage(f"briefing-{d}", 1.0, "", d, titles.get(d, ""), "", 0)
                                               for d in briefing_docs])
        state = sim.start(question)
        conversation_docs: set[str] = set()
        last_new: list = []  # the engine's new passages of the previous turn (their header goes into sloppy queries)
        for t, turn in enumerate(chain["turns"]):
            relevant = {labels[d] for d in turn["docs"]}
            conversation_docs |= relevant
            users.append(turn["text"])
            position = POSITIONS[min(t, 3)]
            if t:  # the simulated user's message, with a sloppy search query every other turn
                state.history.append(Message("user", turn["text"]))
                state.turns.append({"role": "user", "content": turn["text"]})
                header = (f'<passage n="1" title="{last_new[0].title}" id="{last_new[0].id}" '
                          f'source="{last_new[0].source_path}" status="new">') if last_new else ""
                state.proposed_query = (f"{turn['text']} {header} passages retrieved" if t % 2 else "")
            for mode in MODES:
                query = turn["text"]
                if mode == "dense":
                    top, got = (retriever.search(query, n, mode="dense") for n in (k, 10))
                elif mode == "hybrid":
                    top, got = (retriever.search(query, n) for n in (k, 10))
                elif mode == BEFORE:
                    query = standalone_query(users)
                    docs_so_far = conversation_documents(earlier) if t else None
                    top, got = (retriever.search(query, n, conversation_docs=docs_so_far) for n in (k, 10))
                    old_carry = [p for e in earlier for p in e if p.id not in {x.id for x in top}]
                    carried[mode][0] += sum(p.document_id in conversation_docs for p in old_carry)
                    carried[mode][1] += len(old_carry)
                    earlier.append(top)
                else:
                    plan = sim._plan_search(state)
                    query = plan[0]
                    focus_counts[plan[3]] += 1
                    turn_passages = sim.passages_for(state)
                    top = turn_passages.new
                    got = retriever.search(query, 10, conversation_docs=plan[1], anchored=plan[2])
                    carried[mode][0] += sum(p.document_id in conversation_docs for p in turn_passages.carried)
                    carried[mode][1] += len(turn_passages.carried)
                    last_new = top
                    answer = f"According to {top[0].title}: {_sentence(top[0].text)}" if top else "I cannot tell."
                    sim.record_answer(state, turn_passages, _Said(answer))
                if t and mode in noise:
                    noise[mode][0] += noisy(query)
                    noise[mode][1] += 1
                docs = [p.document_id for p in got]
                hit = any(p.document_id in relevant for p in top)
                hits[mode][position].append(hit)
                top1[mode][position].append(bool(top) and top[0].document_id in relevant)
                first = next((i for i, d in enumerate(docs, 1) if d in relevant), 0)
                rr[mode][position].append(1 / first if first else 0.0)
                if mode == ENGINE and top and top[0].document_id not in relevant and shown < misses:
                    shown += 1
                    print(f"  top-1 miss {chain['id']} turn {t + 1} ({plan[3]}): {query[:150]!r} -> "
                          f"{[titles.get(p.document_id, '')[:30] for p in top]} want {turn['docs']}")
    return {"hits": hits, "rr": rr, "top1": top1, "carried": carried, "noise": noise, "focus": dict(focus_counts)}


def table(name: str, result: dict) -> str:
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    lines = [f"### {name}", "", "| mode | " + " | ".join(f"{p} hit@3 / MRR / top-1 (n)" for p in
                                                        (*POSITIONS, "all follow-ups"))
             + " | carried from the conversation's documents | follow-up queries with noise |",
             "|---" * (len(POSITIONS) + 4) + "|"]
    for mode in MODES:
        h, r, f = result["hits"][mode], result["rr"][mode], result["top1"][mode]
        cells = []
        for p in POSITIONS:
            cells.append(f"{mean(h[p]):.2f} / {mean(r[p]):.2f} / {mean(f[p]):.2f} ({len(h[p])})" if h[p] else "—")
        fh = [x for p in POSITIONS[1:] for x in h[p]]
        fr = [x for p in POSITIONS[1:] for x in r[p]]
        ff = [x for p in POSITIONS[1:] for x in f[p]]
        cells.append(f"{mean(fh):.2f} / {mean(fr):.2f} / **{mean(ff):.2f}** ({len(fh)})")
        c = result["carried"].get(mode)
        n = result["noise"].get(mode)
        cells.append(f"{c[0] / c[1]:.2f} ({c[0]}/{c[1]})" if c and c[1] else ("—" if not c else "none carried"))
        cells.append(f"{n[0]}/{n[1]}" if n else "—")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("anchored (engine) follow-ups by focus: " + ", ".join(f"{k} {v}" for k, v in
                                                                        sorted(result["focus"].items())))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=[*SETS, "all"], default="all")
    parser.add_argument("--misses", type=int, default=0, help="print this many conversation-aware misses")
    parser.add_argument("--engine", default="edge", choices=["edge", "local"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from core.config import Settings
    from core.generation.retrieval import Retriever
    from core.workbench import Workbench

    chosen = SETS if args.set == "all" else {args.set: SETS[args.set]}
    opened: dict[Path, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="gw-retrieval-") as tmp:
        os.environ["GROUNDWORK_EMBEDDED_ENGINE"] = args.engine
        for name, (path, corpus_dir) in chosen.items():
            if corpus_dir not in opened:
                wb = Workbench(Settings(data_dir=str(Path(tmp) / corpus_dir.name), embedded_engine=args.engine))
                report = wb.corpus.ingest_path(corpus_dir)
                print(f"indexed {corpus_dir.relative_to(ROOT)}: {report.summary()}")
                opened[corpus_dir] = (wb, label_map(wb.db), Retriever(wb.corpus, snapshot=True))
            wb, labels, retriever = opened[corpus_dir]
            chains = load_chains(path)
            unknown = sorted({d for c in chains for t in c["turns"] for d in t["docs"] if d not in labels})
            if unknown:
                print(f"{path.name}: unknown document labels {unknown}")
                return 2
            result = evaluate(retriever, chains, labels, misses=args.misses)
            print()
            print(table(f"{name} set ({path.relative_to(ROOT)}: {len(chains)} chains)", result))
        for wb, _, _ in opened.values():
            wb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
