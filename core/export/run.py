"""One export: select, group and split, build rows per format, write files, the manifest and the dataset card.

Rows stream from SQLite and straight to disk, so memory stays flat in the number of conversations; the
split needs one pass over the conversations' documents first (memory grows with documents only).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.db import Database, loads, now
from core.errors import ValidationError
from core.export.card import render_card
from core.export.labels import reason_table
from core.export.options import (CHAT_FORMATS, PLACEMENT, PROFILE_HELP, RAFT_REFUSAL, TRAINERS, ExportOptions,
                                 ExportResult)
from core.export.raft import Raft, oracle_ids
from core.export.rows import Conversation, RowBuilder, Skip, judge_rejects, turn_passages
from core.export.split import GROUP_BY, METHOD, DocumentGroups, QuestionOverlap
from core.export.tokens import MESSAGE_OVERHEAD_TOKENS, load_tokenizer, row_tokens
from core.export.writer import Output, prepare_out_dir
from core.quality import GROUNDING_METHOD, WEAKLY_GROUNDED_BELOW, is_flagged, keep_best_of_clusters
from core.review.store import ReviewFilter, ReviewStore, preferences_of
from core.turn_labels import turn_label

ProgressFn = Callable[[str, int, int], None]
# A passage ties its document to a conversation's split group only when it holds this share of the answer's
# content words: generic words shared with many passages would otherwise join every document into one group.
ORACLE_FLOOR = 0.3
BAD_TURNS = ("chat rows (openai, sharegpt, alpaca) stop before the first answer marked bad, so no trainer can "
             "train on it; completion rows keep each later good answer, with the bad one in the prompt only")


def export(db: Database, options: ExportOptions, out_dir: Path | str, settings: Any = None,
           progress: ProgressFn | None = None) -> ExportResult:
    """Write the selected conversations in each format, split, deduplicated and length-filtered, plus a
    manifest and a dataset card (README.md).

    Args:
        db: the workbench database.
        options: formats, context placement, profile, selection, split, tokenizer.
        out_dir: folder for ``<format>.train.jsonl``, ``<format>.validation.jsonl`` (or ``<format>.jsonl``
            without a split), ``manifest.json`` and ``README.md``; created if needed. Files of the same
            names are replaced.
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
        raise ValidationError(f"Nothing to export: no conversations match the selection ({f.describe()}). "
                              + _empty_selection_hint(db, f))
    _check_no_empty_messages(db, f)
    keep: set[str] | None = None
    if options.drop_near_duplicates:
        where, params = f.where()
        ids = [r["id"] for r in db.iter_rows(f"SELECT c.id FROM conversations c WHERE {where} "
                                             "ORDER BY c.created_at, c.id", params)]
        keep = set(keep_best_of_clusters(db, ids))
    near_duplicates_dropped = 0
    checks: Counter[str] = Counter()  # the grounding checks' verdicts on the exported conversations
    out = prepare_out_dir(out_dir)
    counter, tokenizer_warning = load_tokenizer(options.tokenizer, settings)
    split = options.split
    groups = DocumentGroups()
    if split is not None:  # a first pass: the groups must be complete before any row gets a side
        for conv in _iter_conversations(db, f, {}):
            if keep is None or conv.row["id"] in keep:
                groups.join(conv.core if options.split_group == "answers" else conv.documents)
        groups.assign(split, options.seed)

    def side_of_document(doc: str) -> str:
        return groups.side_of_document(doc, split, options.seed) if split is not None else "train"

    raft = (Raft(db, options.raft_distractors, options.raft_no_oracle_share, RAFT_REFUSAL, options.seed,
                 side_of_document) if options.profile == "raft" else None)
    builder = RowBuilder(options, raft)
    sides = ("train", "validation") if split is not None else ("train",)
    outputs = {(fmt, side): Output(out, f"{fmt}.{side}.jsonl" if split is not None else f"{fmt}.jsonl")
               for fmt in options.formats for side in sides}
    seen: dict[str, set[bytes]] = {fmt: set() for fmt in options.formats}
    counts = {fmt: {**{s: 0 for s in sides}, "duplicates": 0, "too_long": 0, "skipped": Counter(),
                    "sources": Counter()} for fmt in options.formats}
    tokens: dict[str, list[int]] = {fmt: [] for fmt in options.formats}
    prompt_ids: set[int] = set()
    run_ids: set[str] = set()
    models: Counter = Counter()
    prompt_texts: dict[int, str] = {}
    rejected_cache: dict[str, list[dict[str, Any]]] = {}
    overlap = QuestionOverlap()
    validation_ids: set[str] = set()
    withheld = unseen = 0
    conversations_per_side: Counter = Counter()

    def emit(fmt: str, row: dict[str, Any], conv: Conversation, source: str = "") -> None:
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
        outputs[(fmt, conv.side)].write((line + "\n").encode("utf-8"))
        counts[fmt][conv.side] += 1
        if source:
            counts[fmt]["sources"][source] += 1
        tokens[fmt].append(n)

    def rows_for(fmt: str, conv: Conversation, sft_turns: Callable[[], list[dict[str, Any]]]
                 ) -> Iterator[tuple[dict[str, Any], str]]:
        if fmt in ("openai", "sharegpt", "alpaca"):
            yield from ((r, "") for r in getattr(builder, fmt)(conv, sft_turns()))
        elif fmt == "completion":
            yield from ((r, "") for r in builder.completion(conv))
        elif fmt == "raw":
            tags = [r["tag"] for r in db.rows("SELECT tag FROM tags WHERE conversation_id=? ORDER BY tag",
                                              [conv.row["id"]])]
            yield from ((r, "") for r in builder.raw(conv, {"tags": tags}))
        elif fmt == "kto":
            for make in builder.kto(conv):
                try:
                    r = make()
                except Skip as e:
                    counts["kto"]["skipped"][str(e)] += 1
                    continue
                yield r, "approved" if r["label"] else "rejected"
        elif fmt == "dpo":
            for make in builder.edit_pairs(conv):
                try:
                    yield make(), "edit"
                except Skip as e:
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
                except Skip as e:
                    counts["dpo"]["skipped"][str(e)] += 1
            for rejected in judge_rejects(conv.row.get("judge")):
                try:
                    yield builder.preference_pair(conv, rejected), "judge"
                except Skip as e:
                    counts["dpo"]["skipped"][str(e)] += 1

    done = 0
    try:
        for conv in _iter_conversations(db, f, prompt_texts):
            if keep is not None and conv.row["id"] not in keep:
                near_duplicates_dropped += 1
                continue
            if split is not None:
                conv.side = groups.side(conv.core if options.split_group == "answers" else conv.documents)
                withheld += _withhold(conv, lambda doc: groups.side_of_document(doc, split, options.seed),
                                      shows_passages=options.context != "none")
                unseen += sum(1 for t in conv.turns if t.get("unseen"))
            conversations_per_side[conv.side] += 1
            row = conv.row
            checks["unchecked" if row["grounded_at"] is None else
                   "flagged" if is_flagged(row["grounding"], row["citation_flags"]) else "passed"] += 1
            if conv.side == "validation":
                validation_ids.add(conv.row["id"])
                for t in conv.turns:
                    if t["role"] == "user":
                        overlap.add_validation(conv.row["id"], t["content"])
            prompt_ids.update(v for v in loads(conv.row["prompt_versions"], {}).values() if isinstance(v, int))
            run_ids.add(conv.row["run_id"])
            models[conv.row["model"] or "unknown"] += 1
            memo: list[list[dict[str, Any]]] = []

            def sft_turns(conv: Conversation = conv, memo: list = memo) -> list[dict[str, Any]]:
                if not memo:  # built once per conversation for every chat format (RAFT draws once)
                    memo.append(builder.train_turns(conv))
                return memo[0]

            for fmt in options.formats:
                try:
                    for row, source in rows_for(fmt, conv, sft_turns):
                        emit(fmt, row, conv, source)
                except Skip as e:
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

    split_record = None
    if split is not None:
        if validation_ids:  # every training conversation's questions against the validation index
            where, params = f.where()
            for r in db.iter_rows(f"SELECT t.conversation_id AS cid, t.content FROM turns t JOIN conversations c ON "
                                  f"c.id = t.conversation_id WHERE {where} AND t.role = 'user'", params):
                if r["cid"] not in validation_ids and (keep is None or r["cid"] in keep):
                    overlap.probe(r["cid"], r["content"] or "")
        split_record = {"ratio": split, "seed": options.seed, "split_group": options.split_group,
                        "group_by": GROUP_BY[options.split_group], "method": METHOD,
                        **groups.stats(), "conversations": {s: conversations_per_side[s] for s in sides},
                        "passages_withheld": withheld, "answers_left_without_passages": unseen,
                        "near_duplicate_questions": overlap.report()}

    warnings = options.warnings()
    if tokenizer_warning:
        warnings.append(tokenizer_warning)
    for fmt in options.formats:
        if not any(counts[fmt][s] for s in sides):
            warnings.append(_empty_format_hint(fmt, f))
    if "kto" in options.formats:
        labels = counts["kto"]["sources"]
        if sum(labels.values()) and (not labels["approved"] or not labels["rejected"]):
            warnings.append("kto: every row has the same label; KTO learns from both, so include approved and "
                            "discarded conversations (--status any).")
    if checks["flagged"]:
        warnings.append(f"{checks['flagged']} of the {sum(checks.values())} exported conversations are flagged by "
                        "the grounding checks (weakly grounded, or an identifier none of their passages contains): "
                        "review them, or leave them out with the Quality flag filter.")
    if checks["unchecked"]:
        warnings.append(f"{checks['unchecked']} exported conversations were never checked for grounding, so their "
                        "flags are unknown: check them (the Export page's button, or export from the CLI without "
                        "--no-grade) before training on them.")
    if split_record is not None:
        if sum(counts[fmt]["validation"] for fmt in options.formats) == 0:
            largest = split_record["largest_group"]
            warnings.append(f"The validation split is empty: documents that share conversations form "
                            f"{sum(split_record['groups'].values())} group(s), the largest holding "
                            f"{largest['documents']} documents, and all landed in train. Export more "
                            "conversations from other documents, or change the seed or the ratio"
                            + (", or group by answers (--split-group answers)"
                               if options.split_group == "passages" else "") + ".")
        if split_record["near_duplicate_questions"]["pairs"]:
            nd = split_record["near_duplicate_questions"]
            warnings.append(f"{nd['pairs']} near-duplicate question pair(s) across train and validation (from "
                            f"{nd['train_conversations']} training conversations): see manifest split."
                            "near_duplicate_questions; validation scores may be optimistic.")
    manifest = {
        "created_at": now(),
        "out_dir": str(out),
        "selection": {"filter": f.as_dict(), "description": f.describe(), "conversations": selected,
                      "near_duplicates_dropped": near_duplicates_dropped},
        "formats": options.formats,
        "context": options.context,
        "placement": PLACEMENT[options.context],
        "profile": _profile_record(options, raft),
        "bad_turns": BAD_TURNS,
        "trainers": {fmt: [{"trainer": t, "reads": what} for t, what in TRAINERS[fmt]] for fmt in options.formats},
        "with_system_prompt": options.with_system_prompt,
        "custom_system_prompt": bool(options.system_prompt.strip()),
        "split": split_record,
        "grounding_checks": {"method": GROUNDING_METHOD, "weakly_grounded_below": WEAKLY_GROUNDED_BELOW,
                             "passed": checks["passed"], "flagged": checks["flagged"],
                             "unchecked": checks["unchecked"]},
        "dedupe": options.dedupe,
        "tokenizer": {"name": counter.name, "max_tokens": options.max_tokens or None,
                      "counting": f"message texts (long ones line by line) plus {MESSAGE_OVERHEAD_TOKENS} "
                                  "tokens per message"},
        "counts": {fmt: {**{s: c[s] for s in sides}, "duplicates": c["duplicates"], "too_long": c["too_long"],
                         "skipped": dict(c["skipped"]), **({"sources": dict(c["sources"])} if c["sources"] else {})}
                   for fmt, c in counts.items()},
        "token_stats": {fmt: _stats(v) for fmt, v in tokens.items()},
        "prompt_versions": _prompt_versions(db, prompt_ids),
        "models": dict(models),
        "runs": _runs(db, run_ids),
        **({"kto_labels": reason_table()} if "kto" in options.formats else {}),
        "card": {"file": "README.md", "license": options.license,
                 "pretty_name": f"Groundwork export {out.name}"},
        "files": files,
        "warnings": warnings,
    }
    _write_atomic(out / "README.md", render_card(manifest))
    _write_atomic(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return ExportResult(out, out / "manifest.json", manifest)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _profile_record(options: ExportOptions, raft: Raft | None) -> dict[str, Any]:
    record: dict[str, Any] = {"name": options.profile, "description": PROFILE_HELP[options.profile]}
    if raft is not None:
        record.update(distractors=options.raft_distractors, no_oracle_share=options.raft_no_oracle_share,
                      refusal=RAFT_REFUSAL, applies_to=[f for f in options.formats if f in CHAT_FORMATS],
                      shuffled=True, reference="Zhang et al., 2024, RAFT: Adapting Language Model to Domain "
                                               "Specific RAG (arXiv:2403.10131)", counts=dict(raft.counts))
    return record


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
        roles = [r["role"] for r in db.rows("SELECT role FROM turns WHERE conversation_id=? ORDER BY idx",
                                            [first["conversation_id"]])]
        raise ValidationError(f"Conversation {first['conversation_id']} has an empty {first['role']} message "
                              f"({turn_label(roles, first['idx'])}){who}{more}: nothing was exported. Write the "
                              "message on the Review "
                              "page, or discard the conversation.")


def _iter_conversations(db: Database, f: ReviewFilter, prompt_texts: dict[int, str]) -> Iterator[Conversation]:
    where, params = f.where()
    sql = f"SELECT c.* FROM conversations c WHERE {where} ORDER BY c.created_at, c.id"
    for row in db.iter_rows(sql, params):
        yield _load_conversation(db, row, prompt_texts)


def _load_conversation(db: Database, row: dict[str, Any], prompt_texts: dict[int, str]) -> Conversation:
    # SELECT *: the optional ``query`` column (the search query a turn used) exists only in newer databases.
    turns = db.rows("SELECT * FROM turns WHERE conversation_id=? ORDER BY idx", [row["id"]])
    documents: set[str] = set()
    for t in turns:
        t["retrieval"] = loads(t["retrieval"], None)
        if not (t["content"] or "").strip():  # the pre-check catches these; rows written meanwhile land here
            raise ValidationError(f"Conversation {row['id']} has an empty {t['role']} message "
                                  f"({turn_label([x['role'] for x in turns], t['idx'])}): "
                                  "nothing was exported. Write the message on the Review page, or discard it.")
        for p in t["retrieval"] or []:
            documents.add(_document_of(p))
    briefing_ids = loads(row["briefing_ids"], []) or []
    briefing_docs = {}
    if briefing_ids:
        found = db.rows(f"SELECT id, document_id FROM chunks WHERE id IN ({','.join('?' * len(briefing_ids))})",
                        [str(b) for b in briefing_ids])
        briefing_docs = {r["id"]: r["document_id"] for r in found if r["document_id"]}
    documents.update(briefing_docs.get(str(b)) or f"chunk:{b}" for b in briefing_ids)
    first = briefing_docs.get(str(briefing_ids[0])) if briefing_ids else None
    group = first or (f"chunk:{briefing_ids[0]}" if briefing_ids else f"conversation:{row['id']}")
    respondent_id = loads(row["prompt_versions"], {}).get("respondent")
    if respondent_id not in prompt_texts:
        found_prompt = db.one("SELECT text FROM prompt_versions WHERE id=?", [respondent_id]) if respondent_id else None
        prompt_texts[respondent_id] = found_prompt["text"] if found_prompt else ""
    core = {briefing_docs.get(str(b)) or f"chunk:{b}" for b in briefing_ids}
    for t in turns:
        if t["role"] == "assistant" and t["retrieval"]:
            shown = turn_passages(t)
            oracle = oracle_ids(t["content"], shown, floor=ORACLE_FLOOR)
            core.update(_document_of(p) for p in shown if p.get("id", "") in oracle)
    fallback = {f"conversation:{row['id']}"}
    return Conversation(row=row, turns=turns, group=group, respondent_prompt=prompt_texts[respondent_id],
                        documents=documents or fallback, core=core or fallback)


def _document_of(passage: dict[str, Any]) -> str:
    return passage.get("document_id") or f"chunk:{passage.get('id')}"


def _withhold(conv: Conversation, side_of: Callable[[str], str], shows_passages: bool = True) -> int:
    """Drop from each answer's passages those of documents on the other side of the split; returns how many.

    Passages an answer clearly draws on are never dropped (their documents are in the conversation's group).
    An answer left with no passage at all is marked ``unseen`` and SFT rows stop before it.
    """
    n = 0
    for t in conv.turns:
        if t["role"] != "assistant" or not t["retrieval"]:
            continue
        kept = [p for p in t["retrieval"] if side_of(_document_of(p)) == conv.side]
        if len(kept) < len(t["retrieval"]):
            t["withheld"] = [p.get("id", "") for p in t["retrieval"] if side_of(_document_of(p)) != conv.side]
            n += len(t["retrieval"]) - len(kept)
            t["retrieval"] = kept
            t["unseen"] = shows_passages and not kept  # SFT rows stop before it (rows.cut_before_bad)
    conv.documents = {d for d in conv.documents if side_of(d) == conv.side}
    return n


def _runs(db: Database, ids: set[str]) -> list[dict[str, Any]]:
    """Generation settings of each run in the export (for the dataset card): model, retrieval, embeddings."""
    ids_list = sorted(i for i in ids if i)
    if not ids_list:
        return []
    out = []
    for r in db.rows(f"SELECT id, provider, model, recipe FROM runs WHERE id IN ({','.join('?' * len(ids_list))}) "
                     "ORDER BY created_at, id", ids_list):
        recipe = loads(r["recipe"], {}) or {}
        config, settings = recipe.get("config") or {}, recipe.get("settings") or {}
        out.append({"id": r["id"], "provider": r["provider"], "model": r["model"],
                    **{k: config[k] for k in ("top_k", "retrieval", "retrieval_with_history", "briefing_passages",
                                              "temperature", "max_turns") if k in config},
                    **{k: settings[k] for k in ("embedding_model", "collection") if k in settings},
                    **({"corpus": recipe["corpus"]} if "corpus" in recipe else {})})
    return out


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
        "kto": "kto: no labelled rows: KTO takes approved conversations, answers marked bad, and conversations "
               "discarded for a reason about the answer (see the reason table).",
    }
    return hints.get(fmt, f"{fmt}: no rows (see the skipped counts) for the selection {f.describe()}.")


def _empty_selection_hint(db: Database, f: ReviewFilter) -> str:
    """What to do about an empty selection: never the widening that is already in place."""
    if f.status != "any":
        return "Approve conversations on the Review page, or widen the selection (e.g. --status any)."
    narrowed = f.describe() != ReviewFilter(status="any").describe()
    if narrowed:
        return "Widen the selection (fewer of run, rating, tag and the other filters)."
    if not db.scalar("SELECT COUNT(*) FROM conversations"):
        return "This data dir has no conversations yet: generate some first (Generate page, or `groundwork generate`)."
    return "Widen the selection."
