"""Rows of every format from one conversation (pure: no database access except through a RAFT recipe).

Passages sit per turn: an answer's passages (every passage of its ``retrieval``: new ones and ones carried
over from earlier turns, de-duplicated) come before that answer and never before an earlier one. Turns
marked bad never reach a trained position: chat rows stop before the first bad answer (only OpenAI
fine-tuning reads a per-message weight; TRL, Axolotl and LLaMA-Factory would train it), and the
``completion`` format keeps the later good answers as rows of their own with the bad one in the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.generation import prompts as prompt_lib
from core.corpus.collection import Passage
from core.db import loads
from core.export.labels import label_for_discard
from core.export.options import ExportOptions
from core.generation.turn_context import format_passages

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


@dataclass
class Conversation:
    row: dict[str, Any]
    turns: list[dict[str, Any]]
    group: str  # the briefing's first document (raw rows' ``source_document``)
    respondent_prompt: str
    side: str = "train"
    documents: set[str] = field(default_factory=set)  # every document whose text reaches the rows
    core: set[str] = field(default_factory=set)  # the briefing's documents and each answer's oracle passages'


class Skip(Exception):
    """This conversation (or pair) yields no row in this format; the message is the manifest's reason."""


def turn_passages(turn: dict[str, Any]) -> list[dict[str, Any]]:
    """Every passage the respondent was shown for this answer, new then carried over, each id once."""
    seen: set[str] = set()
    out = []
    for p in turn.get("retrieval") or []:
        key = p.get("id") or p.get("text", "")
        if key in seen:
            continue
        seen.add(key)
        out.append(p)
    return out


def passages_text(passages: list[dict[str, Any]]) -> str:
    """Passages exactly as the respondent saw them (``core.generation.turn_context.format_passages``: same ids, order,
    delimiters and data notice, so citations hold and the model trains on the prompt shape it will get); a
    passage carried over from an earlier turn says so."""
    shown = [Passage.from_dict(p) for p in passages]
    return format_passages([p for p in shown if not p.carried], [p for p in shown if p.carried])


def cut_before_bad(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns before the first assistant turn marked bad (and before the user message it answered).

    An answer whose every passage was withheld by the split (``unseen``) is cut the same way: trained
    without a passage in front of it, it would teach the model to answer from nothing.
    """
    for i, t in enumerate(turns):
        if t["role"] == "assistant" and (not t["weight"] or t.get("unseen")):
            return turns[:max(i - 1, 0)]
    return turns


class RowBuilder:
    """Turns one conversation into the rows of each format."""

    def __init__(self, options: ExportOptions, raft: Any = None):
        self.o = options
        self.raft = raft

    # -- shared chat view ---------------------------------------------------------------------------
    def train_turns(self, conv: Conversation) -> list[dict[str, Any]]:
        """The turns SFT rows train on: cut before the first bad answer, rewritten by RAFT in that profile."""
        turns = cut_before_bad(conv.turns)
        _need_answer(turns)
        if self.raft is not None:
            _check_alternation(turns)
            turns = self.raft.apply(conv.row["id"], turns, conv.side)
        return turns

    def messages(self, conv: Conversation, turns: list[dict[str, Any]], weighted: bool) -> list[dict[str, Any]]:
        """OpenAI-style messages for ``turns`` with the context placed; ``weighted`` adds assistant weights."""
        _check_alternation(turns)
        n_answers = sum(1 for t in turns if t["role"] == "assistant")
        if self.o.context == "system" and n_answers > 1:
            raise Skip("multi-turn rows cannot carry their passages in one system prompt (use context user or tool)")
        out: list[dict[str, Any]] = []
        system = self._system(conv, turns)
        if system:
            out.append({"role": "system", "content": system})
        calls = 0
        for i, t in enumerate(turns):
            if t["role"] == "user":
                content = t["content"]
                if self.o.context == "user":
                    following = turns[i + 1] if i + 1 < len(turns) else {}
                    content = f"<context>\n{passages_text(turn_passages(following))}\n</context>\n\n{content}"
                out.append({"role": "user", "content": content})
                continue
            if self.o.context == "tool":
                calls += 1
                call_id = f"call_{calls}"
                query = t.get("query") or (turns[i - 1]["content"] if i else "")
                call = {"role": "assistant", "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": "retrieve", "arguments": json.dumps({"query": query}, ensure_ascii=False)}}]}
                if weighted:
                    call["weight"] = 1
                out.append(call)
                out.append({"role": "tool", "tool_call_id": call_id, "content": passages_text(turn_passages(t))})
            message = {"role": "assistant", "content": t["content"]}
            if weighted:
                message["weight"] = 1 if t["weight"] else 0
            out.append(message)
        return out

    def _system(self, conv: Conversation, turns: list[dict[str, Any]]) -> str:
        base = self.o.system_prompt.strip() or (conv.respondent_prompt if self.o.with_system_prompt else "")
        if self.o.context == "system":
            answer = next(t for t in turns if t["role"] == "assistant")
            passages = passages_text(turn_passages(answer))
            if not base:
                return _DEFAULT_SYSTEM_WITH_CONTEXT.replace("{context}", passages)
            if "{context}" in base:
                return prompt_lib.render(base, context=passages)
            return f"{base}\n\n{passages}"
        if not base:
            return ""
        return prompt_lib.render(base, context=_CONTEXT_NOTES[self.o.context]).strip()

    # -- SFT formats --------------------------------------------------------------------------------
    def openai(self, conv: Conversation, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        row: dict[str, Any] = {"messages": self.messages(conv, turns, weighted=True)}
        if self.o.context == "tool":
            row["tools"] = [RETRIEVE_TOOL]
        return [row]

    def sharegpt(self, conv: Conversation, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
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

    def alpaca(self, conv: Conversation, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        messages = self.messages(conv, turns, weighted=False)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        chat = [m for m in messages if m["role"] != "system"]
        pairs = [[chat[i]["content"], chat[i + 1]["content"]] for i in range(0, len(chat) - 1, 2)]
        row: dict[str, Any] = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1],
                               "history": pairs[:-1]}
        if system is not None:
            row["system"] = system
        return [row]

    def completion(self, conv: Conversation) -> list[dict[str, Any]]:
        """One prompt/completion row per good answer; everything before it (a bad answer too) is prompt."""
        if self.raft is not None:  # RAFT rows are rewritten up to the first bad answer
            turns = self.train_turns(conv)
        else:
            turns = conv.turns
            _check_alternation(turns)
        rows = []
        for k, t in enumerate(turns):
            if t["role"] == "assistant" and t["weight"] and not t.get("unseen"):
                messages = self.messages(conv, turns[:k + 1], weighted=False)
                row: dict[str, Any] = {"prompt": messages[:-1], "completion": [messages[-1]]}
                if self.o.context == "tool":
                    row["tools"] = [RETRIEVE_TOOL]
                rows.append(row)
        if not rows:
            raise Skip(NO_ANSWER_LEFT)
        return rows

    def raw(self, conv: Conversation, extra: dict[str, Any]) -> list[dict[str, Any]]:
        c = conv.row
        turns = []
        for t in conv.turns:
            item = {"idx": t["idx"], "role": t["role"], "content": t["content"]}
            if t["role"] == "assistant":
                item["weight"] = 1 if t["weight"] else 0
                item["retrieval"] = t.get("retrieval") or []
                item["withheld"] = t.get("withheld") or []  # ids of passages from the other side of the split
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
            "documents": sorted(conv.documents),
            "question": c["question"], "question_meta": loads(c["question_meta"], {}),
            "comparison_id": c["comparison_id"] or "", "arm": c["arm"] or "", "parent_id": c["parent_id"] or "",
            "messages": turns,
            "tokens": {"prompt": c["prompt_tokens"], "completion": c["completion_tokens"],
                       "thinking": c["thinking_tokens"]},
            "latency_ms": c["latency_ms"], "created_at": c["created_at"],
        }]

    # -- preference formats -------------------------------------------------------------------------
    def edit_pairs(self, conv: Conversation) -> Iterator[Callable[[], dict[str, Any]]]:
        """DPO rows, one builder per edited assistant message (still marked good): the edit over its original."""
        for k, t in enumerate(conv.turns):
            if (t["role"] == "assistant" and t["original_content"] is not None and t["weight"]
                    and t["original_content"].strip() and t["original_content"] != t["content"]):
                yield lambda k=k, t=t: self._pair(conv, conv.turns[:k + 1], t["original_content"])

    def preference_pair(self, chosen: Conversation, rejected_turns: list[dict[str, Any]]) -> dict[str, Any]:
        """DPO row from two conversations: at the first turn where they differ, which must be an answer."""
        a, b = chosen.turns, rejected_turns
        k = next((i for i in range(min(len(a), len(b)))
                  if a[i]["role"] != b[i]["role"] or a[i]["content"] != b[i]["content"]), None)
        if k is None:
            raise Skip("the two conversations of a preference pick do not differ")
        if a[k]["role"] != "assistant" or b[k]["role"] != "assistant":
            raise Skip("a preference pick whose conversations first differ in a user message")
        if not (b[k]["content"] or "").strip():
            raise Skip("a preference pick whose rejected answer is empty")
        return self._pair(chosen, a[:k + 1], b[k]["content"])

    def _pair(self, conv: Conversation, turns: list[dict[str, Any]], rejected: str) -> dict[str, Any]:
        messages = self.messages(conv, turns, weighted=False)
        return {"prompt": messages[:-1], "chosen": [messages[-1]],
                "rejected": [{"role": "assistant", "content": rejected}]}

    def kto(self, conv: Conversation) -> Iterator[Callable[[], dict[str, Any]]]:
        """KTO rows, one builder each, labelled by :mod:`core.export.labels`: approved → the last good
        answer true; discarded for a reason about the answer → the last answer false (other reasons: no row,
        see :func:`kto_skip_reason`); every answer marked bad → false."""
        status = conv.row["status"]
        last = len(conv.turns) - 1
        discarded_label = label_for_discard(conv.row.get("discard_reason")) if status == "discarded" else None
        if status == "approved":
            turns = cut_before_bad(conv.turns)
            if any(t["role"] == "assistant" for t in turns):
                yield lambda: self._labelled(conv, turns, True)
        elif status == "discarded":
            if discarded_label is False:
                yield lambda: self._labelled(conv, conv.turns, False)
            else:
                def skip() -> dict[str, Any]:
                    raise Skip(kto_skip_reason(conv.row.get("discard_reason")))
                yield skip
        for k, t in enumerate(conv.turns):
            if t["role"] == "assistant" and not t["weight"] and not (discarded_label is False and k == last):
                yield lambda k=k: self._labelled(conv, conv.turns[:k + 1], False)

    def _labelled(self, conv: Conversation, turns: list[dict[str, Any]], label: bool) -> dict[str, Any]:
        messages = self.messages(conv, turns, weighted=False)
        return {"prompt": messages[:-1], "completion": [messages[-1]], "label": label}


def kto_skip_reason(reason: str | None) -> str:
    short = (reason or "").strip().split(":")[0][:40] or "no reason"
    return f"discarded as {short!r}: not a reason about the answer, so no KTO label (see the reason table)"


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


def _check_alternation(turns: list[dict[str, Any]]) -> None:
    expected = "user"
    for t in turns:
        if t["role"] != expected:
            raise Skip("roles do not alternate user/assistant")
        expected = "assistant" if expected == "user" else "user"
    if turns and turns[-1]["role"] != "assistant":
        raise Skip("the conversation does not end on an assistant message")


NO_ANSWER_LEFT = "no assistant turn left after removing the turns marked bad"


def _need_answer(turns: list[dict[str, Any]]) -> None:
    if not any(t["role"] == "assistant" for t in turns):
        raise Skip(NO_ANSWER_LEFT)
