"""The only place tables are defined: sqlite-utils Migrations, applied once each, idempotently.

Pages and other modules never change the schema; a new column is a new migration at the end.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("groundwork")


@migrations()
def create_corpus_tables(db: Database) -> None:
    db["collections"].create({
        "name": str, "embedding_model": str, "dim": int, "distance": str, "content_key": str,
        "engine": str, "created_at": str,
    }, pk="name")
    db["documents"].create({
        "id": str, "collection": str, "source_path": str, "title": str, "content_hash": str,
        "text": str, "metadata": str, "n_chars": int, "n_chunks": int,
        "status": str,  # 'pending' until every chunk is in the vector store, then 'complete'
        "created_at": str,
    }, pk="id")
    db["documents"].create_index(["collection", "status"])
    db["documents"].create_index(["source_path"])
    db["chunks"].create({
        "id": str,  # UUID string, also the Qdrant point id
        "document_id": str, "collection": str, "position": int, "start_char": int, "end_char": int,
        "text": str, "est_tokens": int, "truncated": int,
        "briefing_uses": int,  # times sampled into a briefing: sampling prefers the least used
        "retrieved_uses": int,  # times retrieved for an answer (coverage)
    }, pk="id", foreign_keys=[("document_id", "documents", "id")],
        defaults={"briefing_uses": 0, "retrieved_uses": 0, "truncated": 0})
    db["chunks"].create_index(["document_id", "position"], unique=True)
    db["chunks"].create_index(["collection", "briefing_uses"])
    db["chunks"].enable_fts(["text"], create_triggers=True)
    db["documents"].enable_fts(["title", "text"], create_triggers=True)


@migrations()
def create_prompt_tables(db: Database) -> None:
    db["prompt_versions"].create({
        "id": int, "kind": str,  # respondent | correspondent | instruction
        "version": int, "name": str, "text": str, "note": str, "template": str, "created_at": str,
    }, pk="id")
    db["prompt_versions"].create_index(["kind", "version"], unique=True)


@migrations()
def create_generation_tables(db: Database) -> None:
    db["runs"].create({
        "id": str, "kind": str,  # generate | dryrun | ab | regenerate | demo
        "status": str,  # pending | running | completed | incomplete | failed
        "reason": str, "num_dialogs": int, "saved": int, "failed": int,
        "provider": str, "model": str, "recipe": str, "owner_pid": int, "heartbeat_at": str,
        "created_at": str, "started_at": str, "finished_at": str, "metrics": str,
    }, pk="id")
    db["work_items"].create({
        "id": str, "run_id": str, "slot": int,
        "status": str,  # pending | in_flight | done | failed
        "attempts": int, "conversation_id": str, "error": str, "reserved_at": str, "updated_at": str,
        "seed": int, "briefing_ids": str, "question": str,
    }, pk="id", foreign_keys=[("run_id", "runs", "id")], defaults={"attempts": 0})
    db["work_items"].create_index(["run_id", "status"])
    db["conversations"].create({
        "id": str, "run_id": str, "work_item_id": str,
        "status": str,  # new | approved | discarded
        "provider": str, "model": str, "prompt_versions": str, "briefing": str, "briefing_ids": str,
        "question": str, "question_meta": str, "num_turns": int, "prompt_tokens": int,
        "completion_tokens": int, "thinking_tokens": int, "latency_ms": int, "created_at": str,
        "rating": int, "note": str, "discard_reason": str, "reviewed_by": str, "reviewed_at": str,
        "comparison_id": str, "arm": str, "judge": str, "grounding": float, "dup_of": str,
        "parent_id": str, "search_text": str,
    }, pk="id")
    db["conversations"].create_index(["run_id"])
    db["conversations"].create_index(["status", "created_at"])
    db["conversations"].create_index(["comparison_id"])
    db["conversations"].enable_fts(["search_text"], create_triggers=True)
    db["turns"].create({
        "id": int, "conversation_id": str, "idx": int, "role": str, "content": str,
        "original_content": str, "edited_by": str, "edited_at": str, "weight": int,
        "retrieval": str,  # JSON list of {id, score, text, document_id, title} for assistant turns
        "grounding": str, "prompt_tokens": int, "completion_tokens": int, "thinking_tokens": int,
        "latency_ms": int, "created_at": str,
    }, pk="id", foreign_keys=[("conversation_id", "conversations", "id")], defaults={"weight": 1})
    db["turns"].create_index(["conversation_id", "idx"], unique=True)
    db["calls"].create({
        "id": int, "conversation_id": str, "run_id": str, "purpose": str, "system_prompt": str,
        "messages": str, "response": str, "prompt_tokens": int, "completion_tokens": int,
        "thinking_tokens": int, "latency_ms": int, "finish_reason": str, "created_at": str,
    }, pk="id")
    db["calls"].create_index(["conversation_id"])
    db["tags"].create({"conversation_id": str, "tag": str, "created_at": str, "created_by": str},
                      pk=("conversation_id", "tag"))
    db["tags"].create_index(["tag"])
    db["events"].create({
        "id": int, "ts": str, "actor": str, "kind": str, "run_id": str, "conversation_id": str,
        "payload": str,
    }, pk="id")
    db["events"].create_index(["run_id", "kind"])
    db["events"].create_index(["conversation_id"])
    db["comparisons"].create({
        "id": str, "name": str, "kind": str, "version_a": int, "version_b": int, "created_at": str,
    }, pk="id")
    db["jobs"].create({
        "id": str, "kind": str, "run_id": str, "status": str, "payload": str, "created_at": str,
        "claimed_by": int, "claimed_at": str,
    }, pk="id")


@migrations()
def add_quality_scores(db: Database) -> None:
    """Grounding scores, citation flags and near-duplicate links written by core.quality.

    ``turns.grounding`` (JSON, per sentence) and ``conversations.grounding`` / ``dup_of`` already
    exist; these columns make the review filters ("weakly grounded", "invented citations", "has a
    twin") plain indexed queries, and the vector cache keeps re-running near-duplicate detection cheap.
    """
    db["turns"].add_column("grounding_score", float)
    db["turns"].add_column("citation_flags", int)
    db["conversations"].add_column("grounded_at", str)  # NULL: never scored (score_conversations picks these)
    db["conversations"].add_column("citation_flags", int)
    db["conversations"].add_column("dup_similarity", float)  # similarity to the closest twin in its cluster
    db["conversations"].create_index(["grounding"], if_not_exists=True)
    db["conversations"].create_index(["dup_of"], if_not_exists=True)
    db["quality_vectors"].create({
        "conversation_id": str, "kind": str,  # question | conversation
        "model": str, "text_hash": str, "vector": bytes,
    }, pk=("conversation_id", "kind"))


@migrations()
def add_review_indexes(db: Database) -> None:
    """Indexes the review queue pages and looks up by, so it stays fast at 10,000+ conversations.

    ``parent_id``: a conversation's regenerated versions (review shows them beside it). ``created_at``:
    queue order when no status is chosen (``status`` + ``created_at`` already exists for the usual case).
    """
    db["conversations"].create_index(["parent_id"], if_not_exists=True)
    db["conversations"].create_index(["created_at", "id"], if_not_exists=True)


@migrations()
def add_work_item_turns(db: Database) -> None:
    """Each work item's turn count (a function of its seed), so runs reserve the longest conversations first.

    A run ends when its last conversation does; starting the long ones first leaves short ones for the
    tail, where they fill the gaps instead of leaving most workers idle behind one long conversation.
    Items created before this column have NULL turns and are simply reserved after the others.
    """
    from sqlite_utils.db import DescIndex

    db["work_items"].add_column("turns", int)
    db["work_items"].create_index(["run_id", "status", DescIndex("turns"), "slot"],
                                  index_name="idx_work_items_longest_first", if_not_exists=True)


@migrations()
def add_turn_queries_and_chunker(db: Database) -> None:
    """The search query each assistant turn used, and how each document was chunked.

    ``turns.query``: follow-ups search with a standalone query that carries the conversation's subject;
    Review and the dry run show it. NULL for turns stored before (they searched with the message itself).
    ``documents.chunker``: chunks are now cut by the embedding model's own tokenizer so none is longer
    than it reads; documents chunked before (NULL) are re-chunked when their folder is indexed again.
    """
    db["turns"].add_column("query", str)
    db["documents"].add_column("chunker", str)


@migrations()
def add_verifier_cache(db: Database) -> None:
    """LLM verifier results by content hash (core.quality.verify), shared by runs, ``grade`` and review."""
    db["verifier_cache"].create({"key": str, "method": str, "value": str, "created_at": str}, pk="key",
                                if_not_exists=True)


@migrations()
def add_run_leases(db: Database) -> None:
    """Run ownership as a lease: one owner token and its expiry per run, and the token on each reserved item.

    A process takes the lease in the same transaction that checks it (so two resumes started at once cannot
    both win), renews it with its heartbeat, reserves work items under its token and saves only items that
    still carry it. A resume reclaims in-flight items only once their owner's lease has lapsed.
    """
    db["runs"].add_column("owner_token", str)
    db["runs"].add_column("lease_expires_at", str)
    db["work_items"].add_column("owner", str)


@migrations()
def add_batch_jobs(db: Database) -> None:
    """Gemini Batch API jobs of batch runs (core.generation.batch_run), every request's key, and each conversation's progress.

    A round's job row and its request rows are written before the job is created at Google, and the job's name
    as soon as it exists, so a process stopped at any point resumes polling the same job (or finds it by its
    display name) and never submits a request key twice. ``work_items.batch_state``: the turns a batch
    conversation has so far, kept between rounds (a round is minutes to hours).
    """
    db["batch_jobs"].create({
        "id": str,  # the round's own id, also the job's display name at Google
        "run_id": str, "round": int,
        "name": str,  # Google's job name (batches/…); NULL until the job exists
        "state": str,  # preparing | PENDING | RUNNING | SUCCEEDED | FAILED | CANCELLED | EXPIRED | applied
        "source": str,  # inline, or the uploaded JSONL file's name
        "requests": int, "error": str, "created_at": str, "updated_at": str,
    }, pk="id", if_not_exists=True)
    db["batch_jobs"].create_index(["run_id", "state"], if_not_exists=True)
    db["batch_requests"].create({
        "key": str, "run_id": str, "job_id": str,
        "work_item_id": str,  # NULL for an instruction request (its items are in the payload)
        "purpose": str,  # instruction | respondent | correspondent
        "payload": str,  # JSON: the request and what its reply needs (passages, plan, items)
        "status": str,  # queued | accepted | rejected | failed
        "error": str, "created_at": str,
    }, pk="key", if_not_exists=True)
    db["batch_requests"].create_index(["job_id", "status"], if_not_exists=True)
    db["work_items"].add_column("batch_state", str)


@migrations()
def m_issue25_embedding_identity(db: Database) -> None:
    """The embedding model a collection's vectors were made with: name, dimension, pooling, normalisation and
    a probe vector (JSON, core.corpus.embeddings.Embedder.identity). Searches and runs compare it with the configured
    model before any LLM call. NULL for collections indexed before: recorded on first open if the configured
    model reproduces their stored vectors."""
    db["collections"].add_column("embedding_identity", str)


@migrations()
def m_issue23_grounding_calibrations(db: Database) -> None:
    """Grounding flag thresholds fitted to reviewers' labels (core.quality.reviewer_fit), one per respondent
    prompt version, each tied to the corpus it was fitted on (``corpus``: a hash of the indexed documents);
    ``active`` = 1 only while it agrees better with reviewers than the default and the corpus is unchanged."""
    db["grounding_calibrations"].create({
        "prompt_version_id": int, "corpus": str, "threshold": float, "labels": int,
        "agreement_before": float, "agreement_after": float, "active": int, "method": str, "fitted_at": str,
    }, pk="prompt_version_id", if_not_exists=True)


@migrations()
def m_issue24b_team_review(db: Database) -> None:
    """Team review: each reviewer's own verdict per conversation, queue assignments, and reviews needed.

    ``reviewer_verdicts``: one row per (conversation, reviewer) holding that reviewer's latest rating,
    decision (approved / discarded / NULL after a restore), discard reason and how many edits they made;
    agreement between reviewers (Dashboard) and an export that requires it read this table.
    ``review_assignments``: who is to review which conversation when a queue is split.
    ``conversations.reviews_needed``: how many reviewers must decide before the conversation's status is set
    (NULL: one, the behaviour before team review).
    """
    db["reviewer_verdicts"].create({
        "conversation_id": str, "reviewer": str, "rating": int, "decision": str, "reason": str, "edits": int,
        "updated_at": str,
    }, pk=("conversation_id", "reviewer"), defaults={"edits": 0}, if_not_exists=True)
    db["reviewer_verdicts"].create_index(["reviewer"], if_not_exists=True)
    db["review_assignments"].create({
        "conversation_id": str, "reviewer": str, "assigned_at": str, "assigned_by": str,
    }, pk=("conversation_id", "reviewer"), if_not_exists=True)
    db["review_assignments"].create_index(["reviewer"], if_not_exists=True)
    db["conversations"].add_column("reviews_needed", int)


@migrations()
def m_issue24a_document_tags(db: Database) -> None:
    """Tags on documents (the Corpus page, ``generate --tag``): a run can draw briefings from tagged ones only."""
    db["document_tags"].create({"document_id": str, "tag": str, "created_at": str},
                               pk=("document_id", "tag"), if_not_exists=True)
    db["document_tags"].create_index(["tag"], if_not_exists=True)
