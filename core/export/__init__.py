"""Export: reviewed conversations as JSONL that trainers load, split without leaks, with a manifest and a card.

Formats (one file per format and split; :data:`TRAINERS` says which trainer reads what):

- ``openai``: ``{"messages": [...]}`` as OpenAI fine-tuning, TRL's SFTTrainer and Axolotl read it.
- ``sharegpt``: ``{"conversations": [{"from": "system|human|gpt|function_call|observation", "value"}]}``.
- ``alpaca``: ``instruction/input/output`` (+ ``system``) and ``history`` as ``[[user, assistant], ...]``,
  the way LLaMA-Factory reads multi-turn alpaca.
- ``completion``: TRL's conversational ``prompt/completion``, one row per good answer.
- ``raw``: everything the workbench knows: briefing, per-turn retrieval, ratings, tags, edits, prompt
  versions, model, tokens, the documents that reach the row.
- ``dpo``: TRL's conversational ``prompt/chosen/rejected``, from explicit preferences: an edited assistant
  message over its original; an A/B pick; a regenerated version preferred over its parent; the judge's kept
  attempt over each lower-scoring attempt.
- ``kto``: TRL's ``prompt/completion/label``, labelled by one reason table (:mod:`core.export.labels`).

Where the passages go (``context``, default ``user``): per turn, in a context block at the start of the user
message an answer replies to (``user``) or as a retrieve tool call and result before the answer (``tool``);
``system`` (single-turn rows only) and ``none`` (with a warning) are explicit choices. The ``raft`` profile
(:mod:`core.export.raft`) rewrites each answer's passages into oracle + distractors. The split
(:mod:`core.export.split`) groups every document whose text reaches a row. Every export folder also gets a
Hugging Face dataset card (:mod:`core.export.card`).

Modules: ``options`` (what can be asked), ``rows`` (rows per format), ``raft``, ``split``, ``labels``,
``tokens``, ``writer``, ``card``, ``run`` (the export itself). None imports this package's ``__init__``.

May import: every subsystem before it (foundations, corpus, providers, quality, generation, review); nothing
imports export but the entry points.
"""

from core.export.labels import REASON_LABELS, label_for_discard, reason_table
from core.export.options import (CHAT_FORMATS, CONTEXT_HELP, CONTEXTS, DEFAULT_CONTEXT, FORMAT_HELP, FORMATS,
                                 NO_CONTEXT_WARNING, PLACEMENT, PROFILE_HELP, PROFILES, RAFT_REFUSAL, SPLIT_GROUPS,
                                 TRAINERS, ExportOptions, ExportResult)
from core.export.rows import RETRIEVE_TOOL, RowBuilder, judge_rejects, passages_text
from core.export.run import export
from core.export.split import split_of
from core.export.tokens import TokenCounter, load_tokenizer, row_tokens
from core.export.writer import default_out_dir, zip_export

__all__ = [
    "CHAT_FORMATS", "CONTEXTS", "CONTEXT_HELP", "DEFAULT_CONTEXT", "FORMATS", "FORMAT_HELP", "NO_CONTEXT_WARNING",
    "PLACEMENT", "PROFILES", "PROFILE_HELP", "RAFT_REFUSAL", "SPLIT_GROUPS", "REASON_LABELS", "RETRIEVE_TOOL",
    "TRAINERS",
    "ExportOptions", "ExportResult", "RowBuilder", "TokenCounter", "default_out_dir", "export", "judge_rejects",
    "label_for_discard", "load_tokenizer", "passages_text", "reason_table", "row_tokens", "split_of", "zip_export",
]
