"""What an export can do: formats, context placements, profiles, which trainer reads what, and the options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ValidationError
from core.export.split import SPLIT_GROUPS
from core.review.store import ReviewFilter

FORMATS = ("openai", "sharegpt", "alpaca", "completion", "raw", "dpo", "kto")
CHAT_FORMATS = ("openai", "sharegpt", "alpaca", "completion")  # SFT formats whose rows show passages
CONTEXTS = ("user", "tool", "system", "none")
DEFAULT_CONTEXT = "user"  # the one placement every chat format and every chat template can hold
PROFILES = ("standard", "raft")
FORMAT_HELP = {
    "openai": "OpenAI chat {messages} (OpenAI fine-tuning, TRL SFTTrainer, Axolotl chat_template); rows stop "
              "before the first bad answer",
    "sharegpt": "ShareGPT {conversations: [{from, value}]} (LLaMA-Factory, Axolotl)",
    "alpaca": "Alpaca instruction/input/output with a history of earlier turns (LLaMA-Factory)",
    "completion": "TRL prompt/completion: one row per good answer with everything before it as the prompt "
                  "(answers after a bad one are kept; the bad one is only ever prompt)",
    "raw": "everything: briefing, per-turn retrieval, ratings, tags, edits, prompt versions, model, tokens",
    "dpo": "preference pairs prompt/chosen/rejected from edits, A/B picks and regenerations (TRL DPO)",
    "kto": "prompt/completion/label: approved true; bad answers and answer-quality discards false (TRL KTO)",
}
CONTEXT_HELP = {
    "user": "each answer's passages in a context block at the start of the user message it answers",
    "tool": "a retrieve tool call and its result before each answer (OpenAI tools format)",
    "system": "the passages in the system prompt (single-turn rows only)",
    "none": "no passages in the rows: answers will cite sources the model cannot see",
}
PLACEMENT = {  # what the manifest and the dataset card say about where passages sit
    "user": "per turn: each assistant answer's passages (new and carried over) in a `<context>` block at the start "
            "of the user message it answers; never a later turn's",
    "tool": "per turn: a retrieve tool call and its result (the answer's passages, new and carried over) just "
            "before each assistant answer; never a later turn's",
    "system": "in the system prompt, single-turn rows only (one system prompt cannot hold later turns' passages)",
    "none": "no passages: the answers cite sources the model is not shown",
}
NO_CONTEXT_WARNING = ("context none: answers will cite sources the model cannot see, so a model trained on these "
                      "rows learns to state specifics with no source in front of it. Use --context user (the "
                      "default) or tool unless you add the passages yourself.")
PROFILE_HELP = {
    "standard": "each answer with the passages the respondent was shown",
    "raft": "RAFT (Zhang et al., 2024): oracle passages plus k distractors from other documents, shuffled; a share "
            "of rows has distractors only and answers that the passages do not cover the question",
}
RAFT_REFUSAL = ("The passages I was given do not cover this question, so I cannot answer it from them. Could you "
                "point me to the document it concerns, or ask about something the passages address?")

# Who reads what (item 3 of issue #14). Every chat row is cut before its first answer marked bad, because only
# OpenAI fine-tuning reads a per-message weight; the completion format keeps later answers, with the bad one
# in the prompt (never trained: SFTTrainer trains only the completion of prompt/completion rows).
TRAINERS = {
    "openai": [
        ("OpenAI fine-tuning", "trains every assistant message; reads `weight` (0 skips a message). Every exported "
                               "assistant message is a good one with `weight: 1`: rows stop before a bad answer"),
        ("TRL SFTTrainer", "`assistant_only_loss=True` trains assistant messages only (the chat template needs "
                           "`{% generation %}` markers; TRL supplies a marked copy for the model families it "
                           "knows); it ignores `weight`, which is why bad answers are cut, not weighted. Without "
                           "that flag it trains every token, passages and questions too"),
        ("Axolotl", "`type: chat_template`, `field_messages: messages`, `roles_to_train: [assistant]`; "
                    "`message_field_training: weight` reads the per-message weight"),
    ],
    "sharegpt": [
        ("LLaMA-Factory", "`formatting: sharegpt` trains every gpt turn (`mask_history: true` trains only the "
                          "last); rows stop before a bad answer, so either way no bad answer is trained"),
        ("Axolotl", "`type: chat_template` with `message_property_mappings: {role: from, content: value}`"),
    ],
    "alpaca": [
        ("LLaMA-Factory", "`formatting: alpaca` with `history`: trains `output` and the history's answers; rows "
                          "stop before a bad answer"),
    ],
    "completion": [
        ("TRL SFTTrainer", "prompt/completion rows: `completion_only_loss` (on by default) trains the completion "
                           "only, so the history, passages and any bad answer in the prompt are masked"),
        ("OpenAI fine-tuning", "does not read this format: use openai"),
    ],
    "raw": [("none", "for analysis and your own converters; not a training format")],
    "dpo": [("TRL DPOTrainer", "conversational prompt/chosen/rejected")],
    "kto": [("TRL KTOTrainer", "conversational prompt/completion/label; labels from the reason table")],
}


@dataclass
class ExportOptions:
    """What to export and how.

    Args:
        formats: any of :data:`FORMATS`.
        context: where retrieved passages go, one of :data:`CONTEXTS` (default: per turn, in the user message).
        profile: ``standard`` or ``raft`` (see :data:`PROFILE_HELP`).
        raft_distractors: distractor passages per answer in the RAFT profile (k).
        raft_no_oracle_share: share of RAFT rows whose last answer gets distractors only (and a refusal).
        filter: the selection (default: approved conversations).
        split: share of groups in train, strictly between 0 and 1; None: no validation side, one
            ``<format>.jsonl`` per format (counted as train in the manifest).
        seed: changes which groups land in validation (the assignment is a hash, stable as rows are added).
        split_group: which documents tie a conversation's rows together (:mod:`core.export.split`):
            ``answers`` (briefing + each answer's oracle passages; other passages from the other side are
            withheld) or ``passages`` (every document whose text reaches the row; nothing withheld).
        with_system_prompt: start each row with the conversation's respondent prompt (its pinned version).
        system_prompt: a system prompt of your own instead (``{context}`` is filled like the respondent's).
        dedupe: drop rows that are exact duplicates of an earlier row of the same format.
        tokenizer: "" for the offline model's tokenizer (estimated when that model is not installed), a
            ``.gguf`` file, or a Hugging Face tokenizer folder or name.
        max_tokens: drop rows longer than this many tokens (0: no limit).
        drop_near_duplicates: of each near-duplicate cluster (found on the Dashboard or by
            ``core.quality.mark_near_duplicates``), keep only the best-rated conversation.
        license: the dataset card's license (a Hugging Face license id; ``other`` when unsure).
    """

    formats: list[str] = field(default_factory=lambda: ["openai"])
    context: str = DEFAULT_CONTEXT
    profile: str = "standard"
    raft_distractors: int = 3
    raft_no_oracle_share: float = 0.2
    filter: ReviewFilter = field(default_factory=lambda: ReviewFilter(status="approved"))
    split: float | None = 0.9
    seed: int = 0
    split_group: str = "answers"
    with_system_prompt: bool = False
    system_prompt: str = ""
    dedupe: bool = True
    tokenizer: str = ""
    max_tokens: int = 0
    drop_near_duplicates: bool = False
    license: str = "other"

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
        if self.profile not in PROFILES:
            raise ValidationError(f"Unknown export profile {self.profile!r}: use one of {', '.join(PROFILES)}.")
        if self.profile == "raft":
            if self.context in ("none", "system"):
                raise ValidationError(f"The RAFT profile puts passages in every turn, so it cannot go with --context "
                                      f"{self.context}: use --context user or tool.")
            if not isinstance(self.raft_distractors, int) or not 1 <= self.raft_distractors <= 20:
                raise ValidationError(f"RAFT distractors per answer must be a whole number from 1 to 20 "
                                      f"(got {self.raft_distractors!r}).")
            try:
                share = float(self.raft_no_oracle_share)
            except (TypeError, ValueError):
                share = -1.0
            if not 0 <= share < 1:
                raise ValidationError(f"The RAFT share of distractor-only rows must be at least 0 and below 1, "
                                      f"e.g. 0.2 (got {self.raft_no_oracle_share!r}).")
            self.raft_no_oracle_share = share
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
        if self.split_group not in SPLIT_GROUPS:
            raise ValidationError(f"Unknown split grouping {self.split_group!r}: use one of {', '.join(SPLIT_GROUPS)}.")
        if self.max_tokens < 0:
            raise ValidationError(f"The maximum length must be 0 (no limit) or a positive number of tokens "
                                  f"(got {self.max_tokens}).")
        self.license = (self.license or "other").strip() or "other"
        if any(c.isspace() for c in self.license):
            raise ValidationError(f"The license must be a Hugging Face license id such as apache-2.0, cc-by-4.0 "
                                  f"or other (got {self.license!r}).")
        self.filter.validate()

    def warnings(self) -> list[str]:
        """Choices that are allowed but likely wrong (the CLI prints them, the page shows them)."""
        chat = [f for f in self.formats if f in CHAT_FORMATS]
        return [NO_CONTEXT_WARNING] if self.context == "none" and chat else []


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
