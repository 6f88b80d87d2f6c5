"""Rows to grade for the speed benchmark: conversations over the sample corpus, shaped like `generate --output`.

Deterministic (seeded). Each row: three answers, each graded against five consecutive chunks of one
opinion (about the size retrieval hands the respondent). Each answer is two or three sentences of those
chunks, some reworded, some with a figure changed, plus a sentence that is not in them: what a run's
answers look like to the checks (the words are not what is measured here, the time is).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPINIONS = ROOT / "sample_data" / "corpus" / "opinions"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_EXTRA = ["The court also noted that the parties had tried mediation before the trial.",
          "This is consistent with how most courts in the region approach the issue.",
          "You may want to check whether a later appeal changed the outcome."]


def build_rows(answers: int, seed: int = 7, turns: int = 3) -> list[dict]:
    try:
        from core.corpus.chunking import chunk_text
    except ImportError:  # a checkout from before core/ had subsystem packages (the --base of the speed bench)
        from core.chunking import chunk_text

    rng = random.Random(seed)
    docs = []
    for path in sorted(OPINIONS.glob("*.md")):
        chunks = [c.text for c in chunk_text(path.read_text(encoding="utf-8"), 1000, 150)]
        if len(chunks) >= 5:
            docs.append((path.stem, chunks))
    rows = []
    made = 0
    while made < answers:
        name, chunks = docs[len(rows) % len(docs)]
        messages, context = [], []
        for _ in range(min(turns, answers - made)):
            start = rng.randrange(0, len(chunks) - 4)
            passages = [{"id": f"{name}#{start + i}", "text": chunks[start + i]} for i in range(5)]
            sentences = [s.strip() for p in passages for s in _SENT.split(p["text"])
                         if 8 <= len(s.split()) <= 40 and not s.lstrip().startswith(("#", "-", "|"))]
            picked = rng.sample(sentences, min(3, len(sentences)))
            if picked and rng.random() < 0.3:
                picked[0] = re.sub(r"\d+", lambda m: str(int(m.group(0)) + 3), picked[0], count=1)
            if rng.random() < 0.4:
                picked.append(rng.choice(_EXTRA))
            messages.append({"role": "user", "content": f"What did the court decide in {name.replace('-', ' ')}?"})
            context.append({"turn": len(messages), "passages": passages})
            messages.append({"role": "assistant", "content": " ".join(picked)})
            made += 1
        rows.append({"id": f"row-{len(rows)}", "messages": messages, "retrieved_context": context})
    return rows


def write_rows(path: Path, answers: int, seed: int = 7) -> int:
    rows = build_rows(answers, seed)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return sum(len(r["retrieved_context"]) for r in rows)


def grade_speed(answers: int, workdir: Path, data_dir: Path | None = None) -> dict:
    """Answers per second of `groundwork grade`'s offline path (model loaded and warm). Without ``data_dir`` the
    window cache is cold; with one (the sample corpus indexed by this checkout) its vectors are what indexing
    left there, as for a user grading answers over a corpus they indexed."""
    import time

    try:
        from core.corpus.embeddings import Embedder
    except ImportError:  # a checkout from before core/ had subsystem packages
        from core.embeddings import Embedder
    from core.quality.grade import grade_file
    from core.quality.grounding import OfflineVerifier

    src, dst = workdir / "grade_in.jsonl", workdir / "grade_out.jsonl"
    n = write_rows(src, answers)
    embedder = Embedder()
    embedder.encode(["warm up"])
    verifier = OfflineVerifier(embedder, data_dir=data_dir) if data_dir else OfflineVerifier(embedder)
    started = time.perf_counter()
    rows = grade_file(src, dst, verifier)
    seconds = time.perf_counter() - started
    return {"answers": n, "rows": rows, "seconds": round(seconds, 2), "answers_per_s": round(n / seconds, 2)}


if __name__ == "__main__":  # python bench/grounding_rows.py N: the grade speed alone (works on older commits too)
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(sys.argv[2]) if len(sys.argv) > 2 else None  # a data dir holding the indexed sample corpus
        print(json.dumps(grade_speed(int(sys.argv[1]) if len(sys.argv) > 1 else 150, Path(tmp), data)))
