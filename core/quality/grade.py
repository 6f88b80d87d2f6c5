"""Grading conversation files: rows shaped like ``generate --output`` in, the same rows plus ``grounding`` out.

Input row: ``messages`` (``[{"role", "content"}]``) and ``retrieved_context``
(``[{"turn", "passages": [{"id", "text", ...}]}]``, ``turn`` being the index in ``messages`` of the
assistant message those passages served). Every assistant message with a ``retrieved_context`` entry is
graded against all of that entry's passages (new and carried ones alike). Output row: the input row plus
``grounding``: ``[{"turn", "score", "method", "sentences": [{"text", "verdict", "passage_id", "evidence"}]}]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from core.errors import ValidationError
from core.quality.grounding import TurnInput, conversation_inputs
from core.quality.verdicts import Verifier

MAX_REPORTED = 20  # problems listed before "… and N more"


class GradeInputError(ValidationError):
    """The input file has rows that cannot be graded; the message lists them, one line each."""


@dataclass
class Row:
    line: int
    data: dict[str, Any]
    turns: list[TurnInput]


def _problem(line: int, what: str) -> str:
    return f"line {line}: {what}"


def parse_row(line_no: int, text: str) -> tuple[Row | None, list[str]]:
    """One JSONL line → a gradable row, or the problems with it (each says where and what to do)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [_problem(line_no, f"not valid JSON ({e.msg} at column {e.colno}); fix or remove the line")]
    if not isinstance(data, dict):
        return None, [_problem(line_no, "expected a JSON object with 'messages' and 'retrieved_context'")]
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, [_problem(line_no, "'messages' is missing or empty; give a list of {\"role\", \"content\"}")]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            problems.append(_problem(line_no, f"messages[{i}] needs a string 'role' and a string 'content'"))
    if problems:
        return None, problems
    context = data.get("retrieved_context")
    if not isinstance(context, list):
        return None, [_problem(line_no, "'retrieved_context' is missing; give a list of {\"turn\", \"passages\"} "
                                        "(turn: the index in 'messages' of the assistant message)")]
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for k, entry in enumerate(context):
        where = f"retrieved_context[{k}]"
        if not isinstance(entry, dict) or isinstance(entry.get("turn"), bool) or not isinstance(entry.get("turn"), int):
            problems.append(_problem(line_no, f"{where} needs an integer 'turn' (an index into 'messages')"))
            continue
        turn = entry["turn"]
        if not 0 <= turn < len(messages):
            problems.append(_problem(line_no, f"{where} has turn {turn}, but 'messages' has only {len(messages)} "
                                              "entries"))
            continue
        if messages[turn]["role"] != "assistant":
            problems.append(_problem(line_no, f"{where} has turn {turn}, which is a {messages[turn]['role']!r} "
                                              "message; it must point at an assistant message"))
            continue
        passages = entry.get("passages")
        if not isinstance(passages, list):
            problems.append(_problem(line_no, f"{where} needs a list 'passages'"))
            continue
        for j, p in enumerate(passages):
            if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                problems.append(_problem(line_no, f"{where}.passages[{j}] needs a string 'text'"))
        by_turn.setdefault(turn, []).extend(
            {**p, "id": str(p.get("id") if p.get("id") is not None else f"{turn}.{j}")}
            for j, p in enumerate(passages) if isinstance(p, dict))
    if problems:
        return None, problems
    if not by_turn:
        return None, [_problem(line_no, "no assistant message has passages in 'retrieved_context'; nothing to "
                                        "grade")]
    turns = conversation_inputs((m["role"], m["content"], by_turn.get(i), None, i) for i, m in enumerate(messages))
    return Row(line_no, data, turns), []


def read_rows(lines: TextIO) -> list[Row]:
    """Every row of a JSONL stream, checked before any grading starts.

    Raises:
        GradeInputError: one line per problem (the first :data:`MAX_REPORTED`), with line numbers.
    """
    rows, problems = [], []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        row, found = parse_row(n, text)
        problems += found
        if row is not None:
            rows.append(row)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n… and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise GradeInputError("\n".join(shown) + more)
    if not rows:
        raise GradeInputError("the input has no rows to grade")
    return rows


ROWS_PER_BATCH = 32  # rows graded together: one encode call for all their sentences (fuller model batches)


def grade_rows(rows: list[Row], verifier: Verifier,
               progress: Callable[[int, int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Each row with its ``grounding`` added, in input order (rows graded in batches of ROWS_PER_BATCH)."""
    done = 0
    for start in range(0, len(rows), ROWS_PER_BATCH):
        batch = rows[start:start + ROWS_PER_BATCH]
        verdicts = verifier.verify_turns([t for row in batch for t in row.turns])
        at = 0
        for row in batch:
            mine, at = verdicts[at:at + len(row.turns)], at + len(row.turns)
            yield {**row.data, "grounding": [v.public() for v in mine]}
            done += 1
            if progress:
                progress(done, len(rows))


def grade_file(src: Path, dst: Path, verifier: Verifier, progress: Callable[[int, int], None] | None = None) -> int:
    """Grade ``src`` into ``dst`` (written to a temporary name, renamed when complete). Returns the row count.

    Raises:
        GradeInputError: the input has rows that cannot be graded (nothing is written).
    """
    if not src.is_file():
        raise GradeInputError(f"{src} is not a file; give a JSONL file such as the one `generate --output` writes")
    if src.resolve() == dst.resolve():
        raise GradeInputError("--out must differ from the input file")
    with src.open(encoding="utf-8", errors="replace") as f:
        rows = read_rows(f)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for graded in grade_rows(rows, verifier, progress):
            out.write(json.dumps(graded, ensure_ascii=False) + "\n")
    partial.replace(dst)
    return len(rows)
