"""The demo data dir: the fictional sample corpus and the shipped example set, beside the user's data dir.

The sample corpus enters a user's own data dir only when asked for (Home's button, ``groundwork index
--sample``, or GROUNDWORK_AUTO_INDEX_SAMPLE=1); the demo runs here instead, so briefings never come from
fictional cases in a real project.

The example set: reviewed conversations over the sample corpus.

The file names passages by document and an exact quote rather than by chunk id, so it survives
changes to chunking: on import each quote is found in the indexed chunks of its document and scored
against the user message it answered, with the embedding model the corpus uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.db import dumps, new_id, now
from core.generation.conversation_store import store_conversation
from core.generation.simulator import Question, format_briefing
from core.errors import ValidationError
from core.generation.run_config import RunConfig
from core.corpus.collection import Passage
from core.workbench import Workbench

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "sample_data" / "corpus"
EXAMPLES_FILE = Path(__file__).resolve().parent.parent / "sample_data" / "examples" / "reviewed_conversations.jsonl"
EXAMPLE_RUN_KIND = "examples"


def examples_data_dir(data_dir: Path) -> Path:
    """Where the demo data dir (sample corpus and example set) lives: beside the main data dir, never inside it."""
    return data_dir.parent / f"{data_dir.name}-examples"


# One line, shown wherever the offline model is offered for the demo.
OFFLINE_LIMITS = ("What the offline model can do: short replies that reuse the passages' words, enough to watch "
                  "the whole pipeline — it does not reason across passages, drifts over turns and refuses badly, "
                  "so expect flags in Review; use Gemini or an OpenAI-compatible server for data you train on.")


def demo_config(local: bool) -> RunConfig:
    """The live part of the demo: one short conversation, small enough to watch in a meeting.

    With the offline model the time goes into reading the prompt (measured on this project's 2-core machine
    under load: ~15 prompt tokens a second, so a 1,300-token prompt is a minute and a half): one briefing
    passage, two passages per answer, one question and its answer, short replies asked again up to three times,
    and a token budget that ends the run cleanly if replies keep being rejected (README, "A demo that fits in a
    meeting").
    """
    if local:
        # The tiny model often writes a question that is not one, or not about its passage: asking again is
        # cheaper than failing the demo (each try is ~10 s on a quiet machine).
        return RunConfig(num_dialogs=1, max_turns=1, max_concurrency=1, max_tokens=120, top_k=2,
                         briefing_passages=1, instructions_per_sample=1, reply_retries=3, replacement_budget=2,
                         token_budget=16_000)
    return RunConfig(num_dialogs=1, max_turns=2, max_concurrency=2, max_tokens=512, instructions_per_sample=1)


def _find_passage(wb: Workbench, source_path: str, quote: str) -> Passage:
    # One file can hold several documents (JSONL, CSV): look in every document from that file.
    row = wb.db.one("SELECT c.id, c.position, c.text, d.id AS document_id, d.title, d.source_path FROM chunks c "
                    "JOIN documents d ON d.id = c.document_id WHERE d.source_path=? AND d.collection=? "
                    "AND instr(c.text, ?) > 0 ORDER BY d.id, c.position LIMIT 1",
                    [source_path, wb.corpus.collection, quote])
    if not row:
        if not wb.db.scalar("SELECT COUNT(*) FROM documents WHERE source_path=?", [source_path]):
            raise ValidationError(f"The example set refers to {source_path}, which is not indexed: index "
                                  "sample_data/corpus first.")
        raise ValidationError(f"Quote not found in {source_path}: {quote[:80]!r}")
    return Passage(id=row["id"], score=0.0, text=row["text"], document_id=row["document_id"], title=row["title"],
                   source_path=row["source_path"], position=row["position"])


def import_examples(wb: Workbench, path: Path = EXAMPLES_FILE, progress=None) -> int:
    """Import the example conversations once (a second call imports nothing); returns how many were added.

    ``progress``: ``(stage, done, total)``, as an ingest reports it (the demo shows it).
    """
    if wb.db.scalar("SELECT COUNT(*) FROM runs WHERE kind=?", [EXAMPLE_RUN_KIND]):
        return 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    run_id = new_id()[:12]
    prepared = []
    to_score: list[tuple[str, list[Passage]]] = []  # (the user message, the passages of the answer to it)
    for ex in lines:
        briefing = [_find_passage(wb, b["source_path"], b["quote"]) for b in ex["briefing"]]
        turns = []
        for i, t in enumerate(ex["turns"]):
            passages = [_find_passage(wb, p["source_path"], p["quote"]) for p in t.get("passages", [])]
            if t["role"] == "assistant":
                to_score.append((ex["turns"][i - 1]["content"], passages))
            turns.append({"role": t["role"], "content": t["content"], "call": None, "passages": passages})
        prepared.append((ex, briefing, turns))
    # Score each passage against the user message it answered, as retrieval would have: every text embedded
    # in one call (one call per turn costs minutes on a busy CPU).
    texts = list(dict.fromkeys([q for q, _ in to_score] + [p.text for _, ps in to_score for p in ps]))
    if progress:
        progress("scoring the example set's passages", 0, len(texts))
    vectors = dict(zip(texts, wb.embedder.encode(texts))) if texts else {}
    if progress:
        progress("scoring the example set's passages", len(texts), len(texts))
    for query, passages in to_score:
        for p in passages:
            p.score = float(np.dot(vectors[query], vectors[p.text]))
        passages.sort(key=lambda p: -p.score)
    for _, _, turns in prepared:
        for t in turns:
            passages = t.pop("passages")
            t["retrieval"] = [p.as_dict() for p in passages] if t["role"] == "assistant" else None
    with wb.db.write() as w:
        w["runs"].insert({"id": run_id, "kind": EXAMPLE_RUN_KIND, "status": "completed", "reason": "",
                          "num_dialogs": len(prepared), "saved": len(prepared), "failed": 0, "provider": "examples",
                          "model": "written for the project", "recipe": dumps({"source": str(path.name)}),
                          "created_at": now(), "finished_at": now()})
        for ex, briefing, turns in prepared:
            question = Question(turns[0]["content"], {**ex.get("question_meta", {}), "example_id": ex["id"]},
                                [p.id for p in briefing], format_briefing(briefing))
            cid = store_conversation(w, run_id=run_id, work_item_id=ex["id"], provider="examples",
                                     model="written for the project", prompt_versions={}, question=question,
                                     result={"turns": turns, "calls": []},
                                     turns=sum(t["role"] == "assistant" for t in turns))
            w.execute("UPDATE conversations SET status=?, rating=?, note=?, discard_reason=?, reviewed_by=?, "
                      "reviewed_at=? WHERE id=?",
                      [ex["status"], ex.get("rating"), ex.get("note", ""), ex.get("discard_reason", ""),
                       ex.get("reviewed_by", "example reviewer"), now(), cid])
            for tag in ex.get("tags", []):
                w["tags"].insert({"conversation_id": cid, "tag": tag, "created_at": now(),
                                  "created_by": ex.get("reviewed_by", "example reviewer")}, replace=True)
    return len(prepared)


def load_example_workspace(main_data_dir: Path, make_workbench, corpus_dir: Path,
                           progress=None) -> tuple[Path, int]:
    """Prepare the examples data dir: index the sample corpus there if needed, then import the examples.

    Args:
        main_data_dir: the data dir the app runs on (left untouched).
        make_workbench: data dir → Workbench (the app passes its cached getter).
        corpus_dir: the sample corpus folder.
    """
    target = examples_data_dir(main_data_dir)
    wb = make_workbench(target)
    if wb.corpus.stats()["documents"] == 0:
        wb.corpus.ingest_path(corpus_dir, progress=progress)
    return target, import_examples(wb, progress=progress)
