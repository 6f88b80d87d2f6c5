"""Data quality: grounding, citations, near-duplicates and coverage, one module per concept.

- :mod:`~core.quality.grounding`: the offline verifier, each answer sentence against the passages shown for
  *its* turn (embedding similarity of passage windows plus numbers, names, identifiers; contradictions in
  :mod:`~core.quality.contradictions`); :mod:`~core.quality.grounding_store` stores, re-grades and reads results;
- :mod:`~core.quality.verify`: the LLM verifier (structured verdicts whose quotes are checked in the passages);
  both verifiers return :mod:`~core.quality.verdicts`;
- :mod:`~core.quality.judge`: the LLM judge with a rubric, and bounded auto-improve;
- :mod:`~core.quality.grade`: grading JSONL files (``groundwork grade``);
- :mod:`~core.quality.calibration`: judge and grounding scores against reviewer decisions;
- :mod:`~core.quality.benchmark`: precision, recall and AUROC on the labelled sets (``bench/grounding.py``);
- :mod:`~core.quality.citations`: identifiers in an answer that appear in none of its passages;
- :mod:`~core.quality.duplicates`: near-duplicate conversations, clustered;
- :mod:`~core.quality.coverage`: which documents were sampled for briefings and which were retrieved.

The names below are re-exported so callers can keep writing ``from core.quality import …``.

May import: the foundations, :mod:`core.corpus` (the embedder) and :mod:`core.providers` (the LLM verifier
and judge) — never generation, review or export.
"""

from __future__ import annotations

from core.quality.common import (  # noqa: F401
    GROUNDING_METHOD, LIST_COLUMNS, ProgressFn, chunks, text_hash, validate_threshold,
)
from core.quality.verdicts import (  # noqa: F401
    FLAGGED, VERDICTS, SentenceVerdict, TurnVerdict, Verifier,
)
from core.quality.sentences import (  # noqa: F401
    Sentence, sentence_kind, split_sentences,
)
from core.quality.citations import (  # noqa: F401
    CitationFlag, IDENTIFIER_TYPES, Identifier, IdentifierPool, check_citations, extract_identifiers,
)
from core.quality.grounding import (  # noqa: F401
    DEFAULT_THRESHOLDS, GroundingChecker, GroundingThresholds, OfflineVerifier, SentenceScore, TurnGrounding, TurnInput,
    WEAKLY_GROUNDED_BELOW, WINDOW_SIZES, WindowCache, shared_window_cache,
)
from core.quality.grounding_store import (  # noqa: F401
    ConversationGrounding, grounding_details, grounding_scores, is_flagged, quality_summary, regrade_stale,
    score_conversation, score_conversations, score_ids, store_verdicts, verify_conversation, weakly_grounded, with_citation_flags,
)
from core.quality.duplicates import (  # noqa: F401
    CONVERSATION_DUP_THRESHOLD, CONVERSATION_TEXT_CHARS, DuplicateCluster, QUESTION_DUP_THRESHOLD, conversation_vectors,
    find_near_duplicates, keep_best_of_clusters, mark_near_duplicates, near_duplicates_of, similar_pairs,
)
from core.quality.coverage import (  # noqa: F401
    CoverageReport, coverage, coverage_by_chunk,
)
from core.quality.highlight import (  # noqa: F401
    evidence_html, grounding_html,
)
