"""Export: reviewed conversations as JSONL that trainers load, split by source document, with a manifest.

Formats (one file per format and split):

- ``openai``: ``{"messages": [...]}`` as OpenAI fine-tuning and TRL's SFTTrainer read it; assistant
  messages carry ``weight`` (0 for turns marked bad); ``tools`` when the context goes through a tool call.
- ``sharegpt``: ``{"conversations": [{"from": "system|human|gpt|function_call|observation", "value"}]}``.
- ``alpaca``: ``instruction/input/output`` (+ ``system``) and ``history`` as ``[[user, assistant], ...]``,
  the way LLaMA-Factory reads multi-turn alpaca.
- ``raw``: everything the workbench knows: briefing, per-turn retrieval, ratings, tags, edits, prompt
  versions, model, tokens.
- ``dpo``: TRL's conversational ``prompt/chosen/rejected``, from what review already produced: an edited
  assistant message over its original; an A/B pick (the latest ``ab_pick`` of a pair, from the workshop or
  the review page); a regenerated version preferred over its parent; the judge's kept attempt over each
  lower-scoring attempt. Two conversations make a pair at the first turn where they differ, which must be
  an answer (the prompt is their shared history); the filter selects the chosen side.
- ``kto``: TRL's ``prompt/completion/label``: the final answer of approved conversations (true), of
  discarded ones (false), and every assistant turn marked bad (false).

Where the retrieved passages go (``context``): ``none``; ``system`` (single-turn rows only: one system
prompt cannot hold the passages of later turns without leaking them, so multi-turn rows are skipped and
counted); ``user`` (a context block before each user message with the passages retrieved for the answer
that follows); ``tool`` (an assistant call to a ``retrieve`` tool and the tool's reply before each answer).

Turns marked bad: ``openai`` keeps them with ``weight: 0`` (trailing ones are cut so a row ends on a trained
answer); formats without per-message weights are cut before the first bad turn, so no bad answer is ever
trained on. Every chat row ends on an assistant message.

Rows stream from SQLite and straight to disk, so memory stays flat in the number of conversations.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import statistics
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core import prompts as prompt_lib
from core.corpus import Passage
from core.db import Database, loads, now
from core.engine import format_passages
from core.errors import ValidationError
from core.quality import keep_best_of_clusters
from core.review import ReviewFilter, ReviewStore, preferences_of

FORMATS = ("openai", "sharegpt", "alpaca", "raw", "dpo", "kto")
CONTEXTS = ("none", "system", "user", "tool")
FORMAT_HELP = {
    "openai": "OpenAI chat {messages} (OpenAI fine-tuning, TRL SFTTrainer); bad turns get weight 0",
    "sharegpt": "ShareGPT {conversations: [{from, value}]} (LLaMA-Factory, Axolotl)",
    "alpaca": "Alpaca instruction/input/output with a history of earlier turns (LLaMA-Factory)",
    "raw": "everything: briefing, per-turn retrieval, ratings, tags, edits, prompt versions, model, tokens",
    "dpo": "preference pairs prompt/chosen/rejected from edits, A/B picks and regenerations (TRL DPO)",
    "kto": "prompt/completion/label: approved true, discarded and bad turns false (TRL KTO)",
}
CONTEXT_HELP = {
    "none": "no passages in the rows",
    "system": "the passages in the system prompt (single-turn rows only)",
    "user": "a context block before each user message",
    "tool": "a retrieve tool call and its result before each answer (OpenAI tools format)",
}
SPLIT_GROUPING = "the document of the conversation's first briefing passage"
_MESSAGE_OVERHEAD_TOKENS = 4  # role markers a chat template adds around each message
_CONTEXT_NOTES = {  # what {context} in a respondent prompt becomes when the passages are elsewhere
    "none": "(no passages are given here)",
    "user": "(the passages for each question are given in a context block at the start of the user's message)",
    "tool": "(call the retrieve tool to get passages from the document collection)",
}
_DEFAULT_SYSTEM_WITH_CONTEXT = "Answer the user's question from these passages:\n\n{context}"
RETRIEVE_TOOL = {
    "type": "function",
    "function": {
        "name": "retrieve",
        "description": "Search the document collection and return the passages most relevant to the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to look for"}},
            "required": ["query"],
        },
    },
}
ProgressFn = Callable[[str, int, int], None]


@dataclass
class ExportOptions:
    """What to export and how.

    Args:
        formats: any of :data:`FORMATS`.
        context: where retrieved passages go, one of :data:`CONTEXTS`.
        filter: the selection (default: approved conversations).
        split: share of groups in train, strictly between 0 and 1; None: no validation side, one
            ``<format>.jsonl`` per format (counted as train in the manifest).
        seed: changes which groups land in validation (the assignment is a hash, stable as rows are added).
        with_system_prompt: start each row with the conversation's respondent prompt (its pinned version).
        system_prompt: a system prompt of your own instead (``{context}`` is filled like the respondent's).
        dedupe: drop rows that are exact duplicates of an earlier row of the same format.
        tokenizer: "" for the offline model's tokenizer (estimated when that model is not installed), a
            ``.gguf`` file, or a Hugging Face tokenizer folder or name.
        max_tokens: drop rows longer than this many tokens (0: no limit).
        drop_near_duplicates: of each near-duplicate cluster (found on the Dashboard or by
            ``core.quality.mark_near_duplicates``), keep only the best-rated conversation.
    """

    formats: list[str] = field(default_factory=lambda: ["openai"])
    context: str = "none"
    filter: ReviewFilter = field(default_factory=lambda: ReviewFilter(status="approved"))
    split: float | None = 0.9
    seed: int = 0
    with_system_prompt: bool = False
    system_prompt: str = ""
    dedupe: bool = True
    tokenizer: str = ""
    max_tokens: int = 0
    drop_near_duplicates: bool = False

    def validate(self) -> None:
        formats = list(dict.fromkeys(self.formats or []))
        if not formats:
            raise ValidationError(f"Choose at least one format: {', '.join(FORMATS)}.")
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ValidationError(f"Unknown format {unknown[0]!r}: use one of {', '.join(FORMATS)}.")
        self.formats = formats
        if self.context not in CONTEXTS:
            raise ValidationError(f"Unknown context placement {self.context!r}: use one of {', '.join(CONTEXTS)}.")
        if self.context == "tool" and "alpaca" in formats:
            raise ValidationError("Alpaca has no tool messages, so --context tool cannot go with --format alpaca: "
                                  "use --context user (or none) for alpaca, or export openai/sharegpt instead.")
        if self.split is not None:
            try:
                ratio = float(self.split)
            except (TypeError, ValueError):
                raise ValidationError(f"The split ratio must be a number between 0 and 1 (got {self.split!r}).") \
                    from None
            if not 0 < ratio < 1:
                raise ValidationError(f"The split ratio must be strictly between 0 and 1, e.g. 0.9 for 90% train "
                                      f"(got {self.split}).")
            self.split = ratio
        if self.max_tokens < 0:
            raise ValidationError(f"The maximum length must be 0 (no limit) or a positive number of tokens "
                                  f"(got {self.max_tokens}).")
        self.filter.validate()


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]

    def summary_lines(self) -> list[str]:
        """Row counts per format and split, one line each (the CLI prints these)."""
        lines = []
        for fmt, c in self.manifest["counts"].items():
            sides = ", ".join(f"{side} {c[side]}" for side in ("train", "validation") if side in c)
            extra = [f"{k} {v}" for k, v in (("duplicates removed", c["duplicates"]),
                                             ("too long", c["too_long"])) if v]
            extra += [f"skipped {n} ({reason})" for reason, n in c["skipped"].items()]
            lines.append(f"{fmt}: {sides}" + (f" — {'; '.join(extra)}" if extra else ""))
        return lines


# ---- split ------------------------------------------------------------------------------------------
def split_of(group: str, ratio: float, seed: int = 0) -> str:
    """train or validation for a group, from a hash of (seed, group): stable however many rows come later."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return "train" if int.from_bytes(digest[:8], "big") / 2**64 < ratio else "validation"


# ---- tokenizers -------------------------------------------------------------------------------------
class TokenCounter:
    """Counts tokens of a text with one tokenizer; ``name`` goes into the manifest.

    Tokenizing is the slow part of an export (about 1 ms per KB here), and rows repeat the same passages,
    questions and answers across conversations and formats. So a long text is counted line by line,
    each distinct line tokenized once (cached), plus one token per line break. Measured on generated
    rows with the SmolLM2 tokenizer it was 0 to 3 tokens above tokenizing each whole message (never
    below), so the length filter errs on the safe side.
    """

    _WHOLE_BELOW = 400  # characters: shorter texts are tokenized whole

    def __init__(self, name: str, encode: Callable[[str], int]):
        self.name = name
        self._encode = lru_cache(maxsize=32_768)(encode)

    def count(self, text: str) -> int:
        if len(text) < self._WHOLE_BELOW or "\n" not in text:
            return self._encode(text) if text else 0
        total = 0
        for piece in _LINE_BREAKS.split(text):
            if not piece:
                continue
            total += len(piece) if piece[0] == "\n" else self._encode(piece)
        return total


_LINE_BREAKS = re.compile(r"(\n+)")


def load_tokenizer(spec: str = "", settings: Any = None) -> tuple[TokenCounter, str]:
    """A token counter and a warning ("" when none).

    Args:
        spec: "" for the offline model's tokenizer, a ``.gguf`` file, or a Hugging Face tokenizer folder/name.
        settings: used to find the offline model (``GROUNDWORK_LOCAL_MODEL`` or the packaged SmolLM2).

    Raises:
        ValidationError: a tokenizer the user named cannot be loaded.
    """
    spec = (spec or "").strip()
    if not spec:
        from core.providers.local import packaged_model_path, resolve_model_path

        path = resolve_model_path(settings) if settings is not None else packaged_model_path()
        if path and Path(path).is_file():
            try:
                return _gguf_counter(Path(path)), ""
            except ValidationError as e:
                return _estimate_counter(), f"{e} Token counts are estimates (4 characters per token)."
        return _estimate_counter(), ("The offline model is not installed, so token counts are estimates "
                                     "(4 characters per token); give a tokenizer path for exact counts.")
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValidationError(f"Tokenizer file not found: {path}. Give an existing .gguf file or a Hugging Face "
                                  "tokenizer folder.")
        return _gguf_counter(path), ""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
    except Exception as e:  # transformers raises many kinds (OSError, ValueError, HF errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValidationError(f"Could not load a tokenizer from {spec!r}: {first[:200]}. Give a folder holding "
                              "tokenizer.json / tokenizer_config.json, or a .gguf model file.") from None
    return TokenCounter(f"transformers:{spec}", lambda text: len(tok.encode(text, add_special_tokens=False))), ""


def _gguf_counter(path: Path) -> TokenCounter:
    from llama_cpp import Llama

    try:
        with _quiet_stderr():
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise ValidationError(f"llama.cpp could not read the tokenizer of {path}: {e}.") from None
    return TokenCounter(f"gguf:{path.name}",
                        lambda text: len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)))


def _estimate_counter() -> TokenCounter:
    return TokenCounter("estimate:4-chars-per-token", lambda text: (len(text) + 3) // 4)


class _quiet_stderr:
    """llama.cpp writes load notes to file descriptor 2 (or through a Python log callback to ``sys.stderr``)."""

    def __enter__(self):
        self._py = sys.stderr
        sys.stderr = io.StringIO()
        try:
            self._saved = os.dup(2)
            self._null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(self._null, 2)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc):
        sys.stderr = self._py
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            os.close(self._null)


# ---- building rows ----------------------------------------------------------------------------------
@dataclass
class _Conversation:
    row: dict[str, Any]
    turns: list[dict[str, Any]]
    group: str
    respondent_prompt: str


class _Skip(Exception):
    """This conversation (or pair) yields no row in this format; the message is the manifest's reason."""


class RowBuilder:
    """Turns one conversation into the rows of each format (pure: no database access)."""

    def __init__(self, options: ExportOptions):
        self.o = options

    # -- shared chat view ---------------------------------------------------------------------------
    def messages(self, conv: _Conversation, turns: list[dict[str, Any]], weighted: bool) -> list[dict[str, Any]]:
        """OpenAI-style messages for ``turns`` with the context placed; ``weighted`` adds assistant weights."""
        _check_alternation(conv, turns)
        n_answers = sum(1 for t in turns if t["role"] == "assistant")
        if self.o.context == "system" and n_answers > 1:
            raise _Skip("multi-turn rows cannot carry their passages in one system prompt (use context user or tool)")
        out: list[dict[str, Any]] = []
        system = self._system(conv, turns)
        if system:
            out.append({"role": "system", "content": system})
        calls = 0
        for i, t in enumerate(turns):
            if t["role"] == "user":
                content = t["content"]
                if self.o.context == "user":
                    following = turns[i + 1] if i + 1 < len(turns) else None
                    passages = (following or {}).get("retrieval") or []
                    content = f"<context>\n{_passages_text(passages)}\n</context>\n\n{content}"
                out.append({"role": "user", "content": content})
                continue
            if self.o.context == "tool":
                calls += 1
                call_id = f"call_{calls}"
                query = turns[i - 1]["content"] if i else ""
                call = {"role": "assistant", "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": "retrieve", "arguments": json.dumps({"query": query}, ensure_ascii=False)}}]}
                if weighted:
                    call["weight"] = 1
                out.append(call)
                out.append({"role": "tool", "tool_call_id": call_id,
                            "content": _passages_text(t.get("retrieval") or [])})
            message = {"role": "assistant", "content": t["content"]}
            if weighted:
                message["weight"] = 1 if t["weight"] else 0
            out.append(message)
        return out

    def _system(self, conv: _Conversation, turns: list[dict[str, Any]]) -> str:
        base = self.o.system_prompt.strip() or (conv.respondent_prompt if self.o.with_system_prompt else "")
        if self.o.context == "system":
            answer = next(t for t in turns if t["role"] == "assistant")
            passages = _passages_text(answer.get("retrieval") or [])
            if not base:
                return _DEFAULT_SYSTEM_WITH_CONTEXT.replace("{context}", passages)
            if "{context}" in base:
                return prompt_lib.render(base, context=passages)
            return f"{base}\n\n{passages}"
        if not base:
            return ""
        return prompt_lib.render(base, context=_CONTEXT_NOTES[self.o.context]).strip()

    @staticmethod
    def cut_before_bad(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Turns before the first assistant turn marked bad (and before the user message it answered)."""
        for i, t in enumerate(turns):
            if t["role"] == "assistant" and not t["weight"]:
                return turns[:max(i - 1, 0)]
        return turns

    @staticmethod
    def trim_trailing_bad(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop bad assistant turns (and their user messages) from the end, so the row ends on a trained answer."""
        turns = list(turns)
        while turns and turns[-1]["role"] == "assistant" and not turns[-1]["weight"]:
            turns = turns[:-2]
        return turns

    # -- formats ------------------------------------------------------------------------------------
    def openai(self, conv: _Conversation) -> list[dict[str, Any]]:
        turns = self.trim_trailing_bad(conv.turns)
        _need_answer(turns)
        row: dict[str, Any] = {"messages": self.messages(conv, turns, weighted=True)}
        if self.o.context == "tool":
            row["tools"] = [RETRIEVE_TOOL]
        return [row]

    def sharegpt(self, conv: _Conversation) -> list[dict[str, Any]]:
        turns = self.cut_before_bad(conv.turns)
        _need_answer(turns)
        names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
        out = []
        for m in self.messages(conv, turns, weighted=False):
            if m.get("tool_calls"):
                fn = m["tool_calls"][0]["function"]
                out.append({"from": "function_call", "value": json.dumps(
                    {"name": fn["name"], "arguments": json.loads(fn["arguments"])}, ensure_ascii=False)})
            else:
                out.append({"from": names[m["role"]], "value": m["content"]})
        row: dict[str, Any] = {"conversations": out}
        if self.o.context == "tool":
            row["tools"] = json.dumps([RETRIEVE_TOOL["function"]], ensure_ascii=False)
        return [row]

    def alpaca(self, conv: _Conversation) -> list[dict[str, Any]]:
        turns = self.cut_before_bad(conv.turns)
        _need_answer(turns)
        messages = self.messages(conv, turns, weighted=False)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        chat = [m for m in messages if m["role"] != "system"]
        pairs = [[chat[i]["content"], chat[i + 1]["content"]] for i in range(0, len(chat) - 1, 2)]
        row: dict[str, Any] = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1],
                               "history": pairs[:-1]}
        if system is not None:
            row["system"] = system
        return [row]

    def raw(self, conv: _Conversation, extra: dict[str, Any]) -> list[dict[str, Any]]:
        c = conv.row
        turns = []
        for t in conv.turns:
            item = {"idx": t["idx"], "role": t["role"], "content": t["content"]}
            if t["role"] == "assistant":
                item["weight"] = 1 if t["weight"] else 0
                item["retrieval"] = t.get("retrieval") or []
            # Every key in every row, with one type: a loader that infers the schema from the train file
            # (datasets' json builder does) must not meet a string where the train file only had nulls.
            item.update(original_content=t["original_content"] or "", edited_by=t["edited_by"] or "",
                        edited_at=t["edited_at"] or "")
            item["tokens"] = {"prompt": t["prompt_tokens"], "completion": t["completion_tokens"]}
            turns.append(item)
        return [{
            "id": c["id"], "run_id": c["run_id"], "status": c["status"],
            "rating": c["rating"] or 0,  # 1-5; 0: not rated
            "tags": extra.get("tags", []), "note": c["note"] or "", "discard_reason": c["discard_reason"] or "",
            "reviewed_by": c["reviewed_by"] or "", "reviewed_at": c["reviewed_at"] or "",
            "provider": c["provider"], "model": c["model"], "prompt_versions": loads(c["prompt_versions"], {}),
            "briefing": c["briefing"], "briefing_ids": loads(c["briefing_ids"], []), "source_document": conv.group,
            "question": c["question"], "question_meta": loads(c["question_meta"], {}),
            "comparison_id": c["comparison_id"] or "", "arm": c["arm"] or "", "parent_id": c["parent_id"] or "",
            "messages": turns,
            "tokens": {"prompt": c["prompt_tokens"], "completion": c["completion_tokens"],
                       "thinking": c["thinking_tokens"]},
            "latency_ms": c["latency_ms"], "created_at": c["created_at"],
        }]

    def edit_pairs(self, conv: _Conversation) -> Iterator[Callable[[], dict[str, Any]]]:
        """DPO rows, one builder per edited assistant message (still marked good): the edit over its original."""
        for k, t in enumerate(conv.turns):
            if (t["role"] == "assistant" and t["original_content"] is not None and t["weight"]
                    and t["original_content"].strip() and t["original_content"] != t["content"]):
                yield lambda k=k, t=t: self._pair(conv, conv.turns[:k + 1], t["original_content"])

    def preference_pair(self, chosen: _Conversation, rejected_turns: list[dict[str, Any]]) -> dict[str, Any]:
        """DPO row from two conversations: at the first turn where they differ, which must be an answer."""
        a, b = chosen.turns, rejected_turns
        k = next((i for i in range(min(len(a), len(b)))
                  if a[i]["role"] != b[i]["role"] or a[i]["content"] != b[i]["content"]), None)
        if k is None:
            raise _Skip("the two conversations of a preference pick do not differ")
        if a[k]["role"] != "assistant" or b[k]["role"] != "assistant":
            raise _Skip("a preference pick whose conversations first differ in a user message")
        if not (b[k]["content"] or "").strip():
            raise _Skip("a preference pick whose rejected answer is empty")
        return self._pair(chosen, a[:k + 1], b[k]["content"])

    def _pair(self, conv: _Conversation, turns: list[dict[str, Any]], rejected: str) -> dict[str, Any]:
        messages = self.messages(conv, turns, weighted=False)
        return {"prompt": messages[:-1], "chosen": [messages[-1]],
                "rejected": [{"role": "assistant", "content": rejected}]}

    def kto(self, conv: _Conversation) -> Iterator[Callable[[], dict[str, Any]]]:
        """KTO rows, one builder each: approved → the last good answer true; discarded → the last answer
        false; every answer marked bad → false."""
        status = conv.row["status"]
        last = len(conv.turns) - 1
        if status == "approved":
            turns = self.cut_before_bad(conv.turns)
            if any(t["role"] == "assistant" for t in turns):
                yield lambda: self._labelled(conv, turns, True)
        elif status == "discarded":
            yield lambda: self._labelled(conv, conv.turns, False)
        for k, t in enumerate(conv.turns):
            if t["role"] == "assistant" and not t["weight"] and not (status == "discarded" and k == last):
                yield lambda k=k: self._labelled(conv, conv.turns[:k + 1], False)

    def _labelled(self, conv: _Conversation, turns: list[dict[str, Any]], label: bool) -> dict[str, Any]:
        messages = self.messages(conv, turns, weighted=False)
        return {"prompt": messages[:-1], "completion": [messages[-1]], "label": label}


def judge_rejects(judge_json: str | None) -> list[list[dict[str, Any]]]:
    """Messages of the judge's attempts that scored below the kept (best) attempt: the rejected side of pairs."""
    record = loads(judge_json, {}) if judge_json else {}
    attempts = record.get("attempts") or []
    best = record.get("best", 0)
    if not isinstance(best, int) or not 0 <= best < len(attempts):
        return []
    top = attempts[best].get("overall") or 0
    return [a["messages"] for i, a in enumerate(attempts)
            if i != best and (a.get("overall") or 0) < top and a.get("messages")]


def _check_alternation(conv: _Conversation, turns: list[dict[str, Any]]) -> None:
    expected = "user"
    for t in turns:
        if t["role"] != expected:
            raise _Skip("roles do not alternate user/assistant")
        expected = "assistant" if expected == "user" else "user"
    if turns and turns[-1]["role"] != "assistant":
        raise _Skip("the conversation does not end on an assistant message")


def _need_answer(turns: list[dict[str, Any]]) -> None:
    if not any(t["role"] == "assistant" for t in turns):
        raise _Skip("no assistant turn left after removing the turns marked bad")


def _passages_text(passages: list[dict[str, Any]]) -> str:
    """Passages as the respondent saw them when it wrote the answer (same ids and order, so citations hold)."""
    return format_passages([Passage(id=p.get("id", ""), score=float(p.get("score") or 0), text=p.get("text") or "",
                                    document_id=p.get("document_id") or "", title=p.get("title") or "",
                                    source_path=p.get("source_path") or "", position=p.get("position") or 0)
                            for p in passages])


# ---- token length -----------------------------------------------------------------------------------
def row_tokens(fmt: str, row: dict[str, Any], counter: TokenCounter) -> int:
    """Tokens a trainer sees for one row: message texts plus a small per-message template overhead."""
    def msgs(messages: list[dict[str, Any]]) -> int:
        total = 0
        for m in messages:
            text = m.get("content") if "content" in m else m.get("value")
            if m.get("tool_calls"):
                text = json.dumps(m["tool_calls"], ensure_ascii=False)
            total += counter.count(text or "") + _MESSAGE_OVERHEAD_TOKENS
        return total

    if fmt == "openai":
        return msgs(row["messages"])
    if fmt == "sharegpt":
        return msgs(row["conversations"])
    if fmt == "alpaca":
        texts = [row["instruction"], row["input"], row["output"], row.get("system") or ""]
        texts += [x for pair in row["history"] for x in pair]
        return sum(counter.count(x) for x in texts if x) + _MESSAGE_OVERHEAD_TOKENS * (2 + 2 * len(row["history"]))
    if fmt == "raw":
        return msgs(row["messages"])
    if fmt == "dpo":
        return msgs(row["prompt"]) + max(msgs(row["chosen"]), msgs(row["rejected"]))
    if fmt == "kto":
        return msgs(row["prompt"]) + msgs(row["completion"])
    raise ValueError(fmt)


# ---- writing ------------------------------------------------------------------------------------------
class _Output:
    """One JSONL file being written: a temporary name until the export succeeds; checksum as it goes."""

    def __init__(self, out_dir: Path, name: str):
        self.name = name
        self.path = out_dir / name
        self.tmp = out_dir / f".{name}.partial"
        self.rows = 0
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._fh = None

    def write(self, line: bytes) -> None:
        if self._fh is None:
            self._fh = self.tmp.open("wb")
        self._fh.write(line)
        self._sha.update(line)
        self.rows += 1
        self.bytes += len(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def commit(self) -> dict[str, Any] | None:
        self.close()
        if not self.rows:
            self.path.unlink(missing_ok=True)  # an older export's file would contradict this manifest
            return None
        os.replace(self.tmp, self.path)
        return {"rows": self.rows, "bytes": self.bytes, "sha256": self._sha.hexdigest()}

    def discard(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


def _prepare_out_dir(out_dir: Path | str) -> Path:
    out = Path(out_dir).expanduser()
    try:
        out = out.resolve()
        if out.exists() and not out.is_dir():
            raise ValidationError(f"The export path {out} is a file, not a folder: choose a folder (--out DIR).")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".groundwork-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValidationError(f"Cannot write the export to {out}: {e.strerror or e}. Choose a folder you can write "
                              "to (--out DIR on the CLI, the output folder field on the Export page).") from None
    return out


def _check_no_empty_messages(db: Database, f: ReviewFilter) -> None:
    where, params = f.where()
    bad = db.rows(
        f"SELECT t.conversation_id, t.idx, t.role, t.edited_by FROM turns t JOIN conversations c "
        f"ON c.id = t.conversation_id WHERE {where} AND "
        f"trim(COALESCE(t.content, ''), ' ' || char(9) || char(10) || char(13)) = '' LIMIT 5", params)
    if bad:
        first = bad[0]
        who = f", edited by {first['edited_by']}" if first["edited_by"] else ""
        others = sorted({b["conversation_id"] for b in bad} - {first["conversation_id"]})
        more = f" (also: {', '.join(others)})" if others else ""
        raise ValidationError(f"Conversation {first['conversation_id']} has an empty {first['role']} message at turn "
                              f"{first['idx']}{who}{more}: nothing was exported. Write the message on the Review "
                              "page, or discard the conversation.")


def _iter_conversations(db: Database, f: ReviewFilter, prompt_texts: dict[int, str]) -> Iterator[_Conversation]:
    where, params = f.where()
    sql = (f"SELECT c.*, (SELECT ch.document_id FROM chunks ch WHERE ch.id = json_extract(c.briefing_ids, '$[0]')) "
           f"AS group_doc FROM conversations c WHERE {where} ORDER BY c.created_at, c.id")
    for row in db.iter_rows(sql, params):
        yield _load_conversation(db, row, prompt_texts)


def _load_conversation(db: Database, row: dict[str, Any], prompt_texts: dict[int, str]) -> _Conversation:
    turns = db.rows("SELECT idx, role, content, original_content, edited_by, edited_at, weight, retrieval, "
                    "prompt_tokens, completion_tokens FROM turns WHERE conversation_id=? ORDER BY idx", [row["id"]])
    for t in turns:
        t["retrieval"] = loads(t["retrieval"], None)
        if not (t["content"] or "").strip():  # the pre-check catches these; rows written meanwhile land here
            raise ValidationError(f"Conversation {row['id']} has an empty {t['role']} message at turn {t['idx']}: "
                                  "nothing was exported. Write the message on the Review page, or discard it.")
    briefing_ids = loads(row["briefing_ids"], [])
    group = row.get("group_doc") or (f"chunk:{briefing_ids[0]}" if briefing_ids else f"conversation:{row['id']}")
    respondent_id = loads(row["prompt_versions"], {}).get("respondent")
    if respondent_id not in prompt_texts:
        found = db.one("SELECT text FROM prompt_versions WHERE id=?", [respondent_id]) if respondent_id else None
        prompt_texts[respondent_id] = found["text"] if found else ""
    return _Conversation(row=row, turns=turns, group=group, respondent_prompt=prompt_texts[respondent_id])


def export(db: Database, options: ExportOptions, out_dir: Path | str, settings: Any = None,
           progress: ProgressFn | None = None) -> ExportResult:
    """Write the selected conversations in each format, split, deduplicated and length-filtered, plus a manifest.

    Args:
        db: the workbench database.
        options: formats, context placement, selection, split, tokenizer.
        out_dir: folder for ``<format>.train.jsonl``, ``<format>.validation.jsonl`` (or ``<format>.jsonl``
            without a split) and ``manifest.json``; created if needed. Files of the same names are replaced.
        settings: used to find the offline model's tokenizer.
        progress: ``(stage, done, total)`` callback.

    Raises:
        ValidationError: bad options, an empty selection, an unwritable folder, or a conversation holding
            an empty message (named by id). Nothing is written in these cases.
    """
    options.validate()
    f = options.filter
    selected = ReviewStore(db).count(f)
    if selected == 0:
        raise ValidationError(f"Nothing to export: no conversations match the selection ({f.describe()}). Approve "
                              "conversations on the Review page, or widen the selection (e.g. --status any).")
    _check_no_empty_messages(db, f)
    keep: set[str] | None = None
    if options.drop_near_duplicates:
        where, params = f.where()
        ids = [r["id"] for r in db.iter_rows(f"SELECT c.id FROM conversations c WHERE {where} "
                                             "ORDER BY c.created_at, c.id", params)]
        keep = set(keep_best_of_clusters(db, ids))
    near_duplicates_dropped = 0
    out = _prepare_out_dir(out_dir)
    counter, tokenizer_warning = load_tokenizer(options.tokenizer, settings)
    builder = RowBuilder(options)
    sides = ("train", "validation") if options.split is not None else ("train",)
    outputs = {(fmt, side): _Output(out, f"{fmt}.{side}.jsonl" if options.split is not None else f"{fmt}.jsonl")
               for fmt in options.formats for side in sides}
    seen: dict[str, set[bytes]] = {fmt: set() for fmt in options.formats}
    counts = {fmt: {**{s: 0 for s in sides}, "duplicates": 0, "too_long": 0, "skipped": Counter(),
                    "sources": Counter()} for fmt in options.formats}
    tokens: dict[str, list[int]] = {fmt: [] for fmt in options.formats}
    groups: dict[str, set[str]] = {s: set() for s in sides}
    prompt_ids: set[int] = set()
    models: Counter = Counter()
    prompt_texts: dict[int, str] = {}
    rejected_cache: dict[str, list[dict[str, Any]]] = {}

    def emit(fmt: str, row: dict[str, Any], conv: _Conversation, source: str = "") -> None:
        line = json.dumps(row, ensure_ascii=False)
        if options.dedupe:  # rows are built in a fixed key order, so equal rows give equal lines
            key = hashlib.sha256(line.encode("utf-8")).digest()[:16]
            if key in seen[fmt]:
                counts[fmt]["duplicates"] += 1
                return
            seen[fmt].add(key)
        n = row_tokens(fmt, row, counter)
        if options.max_tokens and n > options.max_tokens:
            counts[fmt]["too_long"] += 1
            return
        side = split_of(conv.group, options.split, options.seed) if options.split is not None else "train"
        outputs[(fmt, side)].write((line + "\n").encode("utf-8"))
        counts[fmt][side] += 1
        if source:
            counts[fmt]["sources"][source] += 1
        tokens[fmt].append(n)
        groups[side].add(conv.group)

    def rows_for(fmt: str, conv: _Conversation) -> Iterator[tuple[dict[str, Any], str]]:
        if fmt == "openai":
            yield from ((r, "") for r in builder.openai(conv))
        elif fmt == "sharegpt":
            yield from ((r, "") for r in builder.sharegpt(conv))
        elif fmt == "alpaca":
            yield from ((r, "") for r in builder.alpaca(conv))
        elif fmt == "raw":
            tags = [r["tag"] for r in db.rows("SELECT tag FROM tags WHERE conversation_id=? ORDER BY tag",
                                              [conv.row["id"]])]
            yield from ((r, "") for r in builder.raw(conv, {"tags": tags}))
        elif fmt == "kto":
            for make in builder.kto(conv):
                try:
                    r = make()
                except _Skip as e:
                    counts["kto"]["skipped"][str(e)] += 1
                    continue
                yield r, "approved" if r["label"] else "rejected"
        elif fmt == "dpo":
            for make in builder.edit_pairs(conv):
                try:
                    yield make(), "edit"
                except _Skip as e:
                    counts["dpo"]["skipped"][str(e)] += 1
            for pref in preferences_of(db, conv.row["id"]):
                rid = pref["rejected_id"]
                if rid not in rejected_cache:
                    rejected_cache.clear()  # keep memory flat: pairs of one conversation are looked up together
                    rejected_cache[rid] = db.rows("SELECT idx, role, content, weight FROM turns "
                                                  "WHERE conversation_id=? ORDER BY idx", [rid])
                if not rejected_cache[rid]:
                    counts["dpo"]["skipped"]["a preference pick whose other conversation no longer exists"] += 1
                    continue
                try:
                    yield builder.preference_pair(conv, rejected_cache[rid]), pref["source"]
                except _Skip as e:
                    counts["dpo"]["skipped"][str(e)] += 1
            for rejected in judge_rejects(conv.row.get("judge")):
                try:
                    yield builder.preference_pair(conv, rejected), "judge"
                except _Skip as e:
                    counts["dpo"]["skipped"][str(e)] += 1

    done = 0
    try:
        for conv in _iter_conversations(db, f, prompt_texts):
            if keep is not None and conv.row["id"] not in keep:
                near_duplicates_dropped += 1
                continue
            prompt_ids.update(v for v in loads(conv.row["prompt_versions"], {}).values() if isinstance(v, int))
            models[conv.row["model"] or "unknown"] += 1
            for fmt in options.formats:
                try:
                    for row, source in rows_for(fmt, conv):
                        emit(fmt, row, conv, source)
                except _Skip as e:
                    counts[fmt]["skipped"][str(e)] += 1
            done += 1
            if progress and (done % 50 == 0 or done == selected):
                progress("exporting conversations", done, selected)
        files = {}
        for (fmt, side), o in outputs.items():
            info = o.commit()
            if info:
                files[o.name] = {"format": fmt, "split": side, **info}
    except BaseException:
        for o in outputs.values():
            o.discard()
        raise

    warnings = [tokenizer_warning] if tokenizer_warning else []
    for fmt in options.formats:
        if not any(counts[fmt][s] for s in sides):
            warnings.append(_empty_format_hint(fmt, f))
    if "kto" in options.formats:
        labels = counts["kto"]["sources"]
        if sum(labels.values()) and (not labels["approved"] or not labels["rejected"]):
            warnings.append("kto: every row has the same label; KTO learns from both, so include approved and "
                            "discarded conversations (--status any).")
    if options.split is not None and sum(counts[fmt]["validation"] for fmt in options.formats) == 0:
        warnings.append(f"The validation split is empty: the {len(groups['train'])} source document(s) all hashed "
                        "into train. Export more documents' conversations, or change the seed or the ratio.")
    manifest = {
        "created_at": now(),
        "out_dir": str(out),
        "selection": {"filter": f.as_dict(), "description": f.describe(), "conversations": selected,
                      "near_duplicates_dropped": near_duplicates_dropped},
        "formats": options.formats,
        "context": options.context,
        "with_system_prompt": options.with_system_prompt,
        "custom_system_prompt": bool(options.system_prompt.strip()),
        "split": ({"ratio": options.split, "seed": options.seed, "group_by": SPLIT_GROUPING,
                   "assignment": "sha256(f'{seed}:{group}') < ratio: train, else validation",
                   "groups": {s: len(groups[s]) for s in sides}}
                  if options.split is not None else None),
        "dedupe": options.dedupe,
        "tokenizer": {"name": counter.name, "max_tokens": options.max_tokens or None,
                      "counting": f"message texts (long ones line by line) plus {_MESSAGE_OVERHEAD_TOKENS} "
                                  "tokens per message"},
        "counts": {fmt: {**{s: c[s] for s in sides}, "duplicates": c["duplicates"], "too_long": c["too_long"],
                         "skipped": dict(c["skipped"]), **({"sources": dict(c["sources"])} if c["sources"] else {})}
                   for fmt, c in counts.items()},
        "token_stats": {fmt: _stats(v) for fmt, v in tokens.items()},
        "prompt_versions": _prompt_versions(db, prompt_ids),
        "models": dict(models),
        "files": files,
        "warnings": warnings,
    }
    manifest_path = out / "manifest.json"
    tmp = out / ".manifest.json.partial"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    return ExportResult(out, manifest_path, manifest)


def _stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"rows": 0}
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {"rows": len(values), "min": ordered[0], "max": ordered[-1], "mean": round(statistics.fmean(values), 1),
            "p50": pct(0.5), "p95": pct(0.95), "total": sum(values)}


def _prompt_versions(db: Database, ids: set[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    ordered = sorted(ids)
    return db.rows(f"SELECT id, kind, version, name FROM prompt_versions WHERE id IN ({','.join('?' * len(ordered))}) "
                   "ORDER BY kind, version", ordered)


def _empty_format_hint(fmt: str, f: ReviewFilter) -> str:
    hints = {
        "dpo": "dpo: no preference pairs in the selection: edit an assistant message, pick an A/B arm, or prefer a "
               "regenerated version on the Review page.",
        "kto": "kto: no labelled rows: KTO takes approved and discarded conversations and turns marked bad.",
    }
    return hints.get(fmt, f"{fmt}: no rows (see the skipped counts) for the selection {f.describe()}.")


def zip_export(result_dir: Path | str, manifest: dict[str, Any]) -> Path:
    """A zip of the manifest and the files it lists, beside the export folder (for browser downloads)."""
    folder = Path(result_dir)
    target = folder.parent / f"{folder.name}.zip"
    tmp = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(folder / "manifest.json", "manifest.json")
        for name in manifest["files"]:
            z.write(folder / name, name)
    os.replace(tmp, target)
    return target


def default_out_dir(settings: Any) -> Path:
    """``<data dir>/exports/<UTC timestamp>``: a new folder per export, so earlier exports stay as they were."""
    stamp = now().replace(":", "").replace("-", "").replace(".", "")[:18]
    return Path(settings.exports_path) / f"export-{stamp}"


