"""A run's recipe: everything that shapes a generation run, stored whole with the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import ValidationError

PERSONAS = ["practising lawyer", "paralegal", "law student", "small-business owner", "tenant or consumer"]
QUESTION_TYPES = ["fact lookup", "comparison", "application to new facts", "procedural"]
DIFFICULTIES = ["easy", "medium", "hard"]


@dataclass
class QuestionMix:
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    difficulties: list[str] = field(default_factory=lambda: list(DIFFICULTIES))
    unanswerable_share: float = 0.1  # questions the corpus cannot answer: teaches "say what is missing"


@dataclass
class RunConfig:
    """Everything that shapes a run; stored whole as the run's recipe snapshot."""

    num_dialogs: int = 10
    max_turns: int = 3
    max_concurrency: int = 4  # LLM calls in flight at most (the run's workers share these slots)
    temperature: float = 0.7
    max_tokens: int = 1024
    top_k: int = 3
    instructions_per_sample: int = 3
    briefing_passages: int = 2
    retrieval: str = "rag"  # rag: retrieve per turn | briefing: inject the sampled briefing instead
    retrieval_mode: str = "hybrid"  # hybrid: vectors and BM25 fused | dense: vectors only
    conversation_aware: bool = True  # follow-ups search with a standalone query, within the conversation's documents too
    follow_up_queries: str = "auto"  # model: the simulated user writes the query | rule: built from the conversation
    carry_tokens: int = 0  # earlier turns' passages the respondent sees again; 0: a quarter of the model's context
    reply_retries: int = 2  # a rejected reply (cut off, degenerate, off-topic) is asked again this often
    question_mix: QuestionMix = field(default_factory=QuestionMix)
    seed: int = 0
    max_conversation_attempts: int = 2
    replacement_budget: int = -1  # failed conversations replaced at most this often; -1: num_dialogs // 2 + 2
    stall_timeout_s: float = 120.0  # sustained 429s with no success this long ends the run
    token_budget: int = 0  # 0: none; otherwise stop cleanly once this many tokens were used
    output: str = ""  # JSONL path, written as conversations complete
    max_docs: int = 0  # 0: briefings may come from any document; N: from N documents chosen by the seed
    documents: list[str] = field(default_factory=list)  # briefings only from these (ids, paths, folders, globs)
    tags: list[str] = field(default_factory=list)  # ... or from documents carrying these tags (core.corpus.documents)
    log_dir: str = ""  # monitor log folder; empty: the data dir's logs/
    auto_improve: bool = False  # judge each conversation; regenerate with the judge's feedback when below threshold
    judge_threshold: float = 3.5  # mean rubric score (1-5) a conversation must reach
    max_improve_attempts: int = 2  # attempts per conversation in all, the first included
    verify_grounding: bool = False  # LLM verifier: one call per answer, verdicts stored with the conversation
    batch: bool = False  # a large run: each round of calls goes to Gemini's Batch API (half price, minutes to hours)
    prompt_versions: dict[str, int] = field(default_factory=dict)
    kind: str = "generate"

    def validate(self) -> None:
        problems = []
        if not 1 <= self.num_dialogs <= 1_000_000:
            problems.append(f"num_dialogs must be at least 1 (got {self.num_dialogs})")
        if not 1 <= self.max_turns <= 50:
            problems.append(f"max_turns must be between 1 and 50 (got {self.max_turns})")
        if not 1 <= self.max_concurrency <= 256:
            problems.append(f"max_concurrency must be between 1 and 256 (got {self.max_concurrency})")
        if not 0 <= self.temperature <= 2:
            problems.append(f"temperature must be between 0 and 2 (got {self.temperature})")
        if not 1 <= self.top_k <= 50:
            problems.append(f"top_k must be between 1 and 50 (got {self.top_k})")
        if not 1 <= self.instructions_per_sample <= 20:
            problems.append(f"instructions per sample must be between 1 and 20 (got {self.instructions_per_sample})")
        if self.retrieval not in ("rag", "briefing"):
            problems.append(f"retrieval must be 'rag' or 'briefing' (got {self.retrieval!r})")
        if self.retrieval_mode not in ("hybrid", "dense"):
            problems.append(f"retrieval mode must be 'hybrid' or 'dense' (got {self.retrieval_mode!r})")
        if self.follow_up_queries not in ("auto", "model", "rule"):
            problems.append(f"follow-up queries must be 'auto', 'model' or 'rule' (got {self.follow_up_queries!r})")
        if not 0 <= self.reply_retries <= 5:
            problems.append(f"reply retries must be between 0 and 5 (got {self.reply_retries})")
        if self.carry_tokens < 0:
            problems.append(f"carried-passage tokens must be 0 (automatic) or more (got {self.carry_tokens})")
        if not 1 <= self.max_improve_attempts <= 5:
            problems.append(f"auto-improve attempts must be between 1 and 5 (got {self.max_improve_attempts})")
        if not 1 <= self.judge_threshold <= 5:
            problems.append(f"the judge threshold must be between 1 and 5 (got {self.judge_threshold})")
        if not 0 <= self.question_mix.unanswerable_share <= 1:
            problems.append("the unanswerable share must be between 0 and 1")
        if self.batch and (self.auto_improve or self.verify_grounding):
            problems.append("a batch run does not run the judge or the LLM verifier (turn off auto-improve and "
                            "grounding verification, or run without batch mode)")
        if not all(isinstance(x, str) for x in [*self.documents, *self.tags]):
            problems.append("documents and tags must be lists of names")
        if problems:
            raise ValidationError("Run settings: " + "; ".join(problems) + ".")

    @property
    def replacements(self) -> int:
        return self.replacement_budget if self.replacement_budget >= 0 else self.num_dialogs // 2 + 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        data["question_mix"] = QuestionMix(**data.get("question_mix", {}))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

