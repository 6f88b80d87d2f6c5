"""The same core, headless: ``python -m core.cli COMMAND`` or the ``groundwork`` console command.

Every user error ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from core.config import Settings
from core.errors import GroundworkError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Progress:
    """A tqdm bar per stage on stderr; quiet when stderr is not a terminal and --quiet is given."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar = None
        self._stage = None
        self._last: tuple[str, int] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if not sys.stderr.isatty():  # logs and CI: one line per change, not a redrawn bar
            if (stage, done) != self._last:
                self._last = (stage, done)
                print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="", file=sys.stderr, dynamic_ncols=True)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(name) or default


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "collection": getattr(args, "collection", None),
        "content_key": getattr(args, "content_key", None),
        "embedding_model": getattr(args, "embedding_model", None),
        "qdrant_url": getattr(args, "qdrant_url", None),
        "chunk_size": getattr(args, "chunk_size", None),
        "chunk_overlap": getattr(args, "chunk_overlap", None),
    }
    return Settings.from_env(**overrides)


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data dir (env GROUNDWORK_DATA_DIR, default ./data)")
    p.add_argument("--collection", help="Qdrant collection (env GROUNDWORK_COLLECTION)")
    p.add_argument("--content-key", help="payload field holding passage text (env GROUNDWORK_CONTENT_KEY)")
    p.add_argument("--embedding-model", help="sentence-transformers model name or path "
                                             "(env GROUNDWORK_EMBEDDING_MODEL)")
    p.add_argument("--qdrant-url", help="Qdrant server URL (env QDRANT_URL); empty: embedded local mode")


def cmd_index(args: argparse.Namespace) -> int:
    from core.readonly import require_writable
    from core.corpus.documents import plural
    from core.workbench import Workbench

    settings = _settings(args)
    require_writable(settings)
    wb = Workbench(settings, store_idle_close_s=0, wait_for_store_s=args.wait)
    progress = Progress(args.quiet)
    try:
        total = None
        paths = list(args.paths)
        if args.sample:  # the fictional sample corpus enters a data dir only when asked for
            from core.examples import SAMPLE_CORPUS

            paths.append(str(SAMPLE_CORPUS))
        if not paths:
            raise GroundworkError("Nothing to index: give files or folders, or --sample for the fictional sample "
                                  "corpus.")
        for path in paths:
            report = wb.corpus.ingest_path(path, text_field=args.text_field, progress=progress,
                                           title_key=args.title_key)
            progress.close()
            for line in report.problems + report.duplicates:
                print(f"warning: {line}", file=sys.stderr)
            print(f"{path}: {report.summary()}")
            total = report
        if wb.windows is not None and wb.windows.busy:  # searchable already; the checks' windows finish here
            wb.windows.wait(progress)
            progress.close()
        stats = wb.corpus.stats()
        print(f"collection {stats['collection']}: {plural(stats['documents'], 'document')}, "
              f"{plural(stats['chunks'], 'chunk')} "
              f"({stats['engine']} store at {stats['location']})")
        if stats["warning"]:
            print(f"note: {stats['warning']}", file=sys.stderr)
        return 0 if total is not None and (total.added_documents or total.already_indexed or not total.problems) \
            else EXIT_USER_ERROR
    finally:
        progress.close()
        wb.close()


def cmd_search(args: argparse.Namespace) -> int:
    from core.readonly import is_read_only
    from core.generation.retrieval import found_by_label, search
    from core.workbench import Workbench

    settings = _settings(args)
    _existing_database(settings).close()  # a mistyped --data-dir must not become a new, empty workbench
    wb = Workbench(settings, store_idle_close_s=0, wait_for_store_s=args.wait, read_only=is_read_only(settings))
    try:
        passages = search(wb.corpus, args.query, k=args.k, mode=args.mode)
        if not passages:
            print("no passages found")
        for i, p in enumerate(passages, 1):
            text = " ".join(p.text.split())
            print(f"{i}. score {p.score:.3f}  {p.title}  [{p.source_path} #{p.position}]  found by {found_by_label(p.ranks)}")
            print(f"   {text[:args.width]}{'…' if len(text) > args.width else ''}")
        return 0
    finally:
        wb.close()


def cmd_generate(args: argparse.Namespace) -> int:
    import threading
    import time

    from core.generation.batch_run import NEEDS_GEMINI, generation_run
    from core.generation.run_config import QuestionMix, RunConfig
    from core.providers.registry import make_provider, provider_name
    from core.readonly import require_writable
    from core.workbench import Workbench

    overrides = {"gemini_model": args.gemini_model, "gemini_max_retries": args.gemini_max_retries,
                 "provider": args.provider}
    settings = _settings(args).replace(**{k: v for k, v in overrides.items() if v is not None})
    settings.validate()
    if args.batch and provider_name(settings) != "gemini":
        raise GroundworkError(NEEDS_GEMINI)
    require_writable(settings)
    wb = Workbench(settings, store_idle_close_s=0, wait_for_store_s=args.wait)
    config = None
    if not args.resume:
        config = RunConfig(num_dialogs=args.num_dialogs, max_turns=args.max_turns,
                           max_concurrency=args.max_concurrency, temperature=args.temperature, top_k=args.top_k,
                           instructions_per_sample=args.instructions_per_sample, seed=args.seed,
                           output=args.output or "", max_docs=args.max_docs, log_dir=args.log_dir or "",
                           retrieval=args.retrieval, retrieval_mode=args.retrieval_mode,
                           follow_up_queries=args.follow_up_queries, token_budget=args.token_budget,
                           auto_improve=args.auto_improve, max_improve_attempts=args.improve_attempts,
                           judge_threshold=args.judge_threshold, verify_grounding=args.verify_grounding,
                           batch=args.batch, documents=list(args.documents or []), tags=list(args.tag or []),
                           question_mix=QuestionMix(unanswerable_share=args.unanswerable_share))
        if config.documents or config.tags:  # a name that selects nothing: say so before anything starts
            from core.corpus.documents import selection_summary

            print(selection_summary(wb.db, wb.corpus.collection, config.documents, config.tags), file=sys.stderr)
    run = generation_run(settings, wb.db, wb.corpus, lambda gate: make_provider(settings, gate=gate), config=config,
                         run_id=args.resume, more_replacements=args.more_replacements,
                         on_alert=[lambda a: print(f"alert - {a.name} - {a.message}", file=sys.stderr)])
    if run.config.batch:
        run.on_note = lambda line: print(f"batch {line}", file=sys.stderr, flush=True)
    mode = "Gemini Batch API, one job per round" if run.config.batch else f"concurrency {run.config.max_concurrency}"
    print(f"run {run.run_id}: {run.config.num_dialogs} conversations, up to {run.config.max_turns} turns, "
          f"{mode}, provider {settings.resolved_provider}", file=sys.stderr)
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["progress"] = run.run()
        except BaseException as e:  # reported below, after the bar closes
            outcome["error"] = e

    grade, graded = not args.no_grade, None
    checks = None
    if grade:  # each conversation is checked as it is saved, so the checks do not follow the run
        from core.quality.background import BackgroundChecks

        checks = BackgroundChecks(wb.db, wb.embedder, settings.data_path)
        run.on_saved.append(checks.submit)
    worker = threading.Thread(target=work, name="generate", daemon=True)
    worker.start()
    progress = Progress(args.quiet)
    try:
        try:
            while worker.is_alive():
                worker.join(0.5)
                snap = run.monitor.snapshot()
                progress("conversations", snap["saved"], run.config.num_dialogs)
        except KeyboardInterrupt:
            progress.close()
            print("cancelling: finishing calls in flight; everything completed is kept …", file=sys.stderr)
            run.cancel()
            worker.join(60)
            grade = False  # a cancel means stop now; Review and export check what was saved
        progress.close()
        if grade and "error" not in outcome:
            graded = _grade_run(wb, run.run_id, progress, checks)
    finally:
        progress.close()
        if checks is not None:
            checks.close()
        wb.close()
    if "error" in outcome:
        raise outcome["error"]
    final = outcome.get("progress") or run.progress()
    snap = final.metrics
    print(f"run {run.run_id}: {final.status} — {final.saved}/{final.target} saved, {final.failed} failed, "
          f"{snap.get('calls', 0)} LLM calls, {snap.get('conversations_per_min', 0)} conversations/min")
    if final.reason:
        print(f"reason: {final.reason}")
    if snap.get("rejections"):
        print("replies rejected and asked again: " + "; ".join(f"{n} × {why}" for why, n in snap["rejections"].items()))
    if graded:
        print(graded)
    if final.status != "completed":
        more = " (--more-replacements N sets its budget)" if "replacement budget" in (final.reason or "") else ""
        print(f"resume with: groundwork generate --resume {run.run_id}{more}", file=sys.stderr)
    if run.config.output:
        print(f"JSONL: {run.config.output}")
    return 0 if final.status == "completed" else 3


def cmd_runs(args: argparse.Namespace) -> int:
    from core.generation.engine import list_runs

    settings = _settings(args)
    db = _existing_database(settings)
    try:
        runs = list_runs(db, args.limit)
    finally:
        db.close()
    if not runs:
        print(f"no runs yet in {settings.data_path}")
    for r in runs:
        note = r["reason"] or ""
        if r["status"] == "interrupted":
            note = f"its process stopped without finishing; resume with: groundwork generate --resume {r['id']}"
        print(f"{r['id']}  {r['status']:<11} {r['saved']:>5}/{r['num_dialogs']:<5} {r['provider']}/{r['model']}  "
              f"{r['created_at'][:19]}  {note}")
    return 0


def _existing_data_dir(settings: Settings) -> None:
    """Read-only commands never create a data dir or a database: a mistyped path must not look like an empty one."""
    if not settings.data_path.is_dir():
        raise GroundworkError(f"The data dir {settings.data_path} does not exist: pass --data-dir (or set "
                              "GROUNDWORK_DATA_DIR) to the folder you indexed or generated into.")


def _existing_database(settings: Settings):
    from core.db import Database
    from core.readonly import is_read_only, read_only_message

    _existing_data_dir(settings)
    # Another user's data dir is read without writing a byte (no migration, no WAL switch).
    return Database(settings.db_path, create=False,
                    read_only=read_only_message(settings) if is_read_only(settings) else "")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise GroundworkError(f"{name}={raw!r} is not a whole number.") from None


def cmd_export(args: argparse.Namespace) -> int:
    from core.db import Database
    from core.errors import DataDirReadOnlyError
    from core.export import ExportOptions, default_out_dir, export
    from core.readonly import is_read_only, read_only_message
    from core.review.store import ReviewFilter

    settings = _settings(args)
    options = ExportOptions(
        formats=args.format or ["openai"], context=args.context, profile=args.profile,
        raft_distractors=args.raft_distractors, raft_no_oracle_share=args.raft_no_oracle_share,
        filter=ReviewFilter(status=args.status, run_id=args.run or "", min_rating=args.min_rating, tag=args.tag or "",
                            require_agreement=args.require_agreement),
        split=None if args.no_split else args.split, seed=args.seed, split_group=args.split_group,
        with_system_prompt=args.with_system_prompt,
        tokenizer=args.tokenizer or "", max_tokens=args.max_tokens,
        drop_near_duplicates=args.drop_near_duplicates, license=args.license)
    options.validate()  # bad options are reported before the database is opened
    for warning in options.warnings():  # before the work, so a wrong choice can be stopped early
        print(f"warning: {warning}", file=sys.stderr)
    if not settings.db_path.exists():
        raise GroundworkError(f"No workbench database at {settings.db_path}: pass --data-dir (or set "
                              "GROUNDWORK_DATA_DIR) to the data dir you generated into.")
    read_only = is_read_only(settings)
    if read_only and not args.out:
        raise DataDirReadOnlyError(read_only_message(settings, what_to_do=(
            "the export cannot go into its exports/ folder; pass --out DIR with a folder you can write.")))
    db = Database(settings.db_path, read_only=read_only_message(settings) if read_only else "")
    progress = Progress(args.quiet)
    try:
        if read_only and not args.no_grade:
            print("note: the data dir is read-only, so conversations never checked are not checked now (the "
                  "manifest counts them as unchecked).", file=sys.stderr)
        elif not args.no_grade:
            _grade_selection(settings, db, options.filter, progress)
        result = export(db, options, args.out or default_out_dir(settings), settings=settings, progress=progress)
    finally:
        progress.close()
        db.close()
    print(f"manifest: {result.manifest_path}")
    for line in result.summary_lines():
        print(line)
    already = set(options.warnings())
    for warning in result.manifest["warnings"]:
        if warning not in already:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _grade_run(wb, run_id: str, progress: Progress, checks=None) -> str | None:
    """The offline grounding checks on a run's saved conversations (as the Generate page does), so Review
    opens with its badges and export knows what is flagged. Advisory: a failure is reported, not raised.

    ``checks``: the background worker that checked conversations as they were saved; only what it has not
    reached yet is waited for, then any conversation of the run still unchecked (saved by an earlier session
    of a resumed run) is checked here."""
    from core.quality import score_conversations
    from core.review.store import ReviewFilter, ReviewStore

    try:
        checked = 0
        if checks is not None:
            checked = checks.finish(progress=lambda done, total: progress("grounding checks", done, total))
        checked += score_conversations(wb.db, wb.embedder, run_id=run_id,
                                       checker=checks.checker if checks is not None else None,
                                       progress=lambda done, total: progress("grounding checks", done, total))
    except KeyboardInterrupt:
        print("grounding checks stopped: Review and export check the rest", file=sys.stderr)
        return None
    except Exception as e:  # the conversations are saved; only their badges wait
        print(f"grounding checks failed ({type(e).__name__}: {e}); Review checks each conversation on open",
              file=sys.stderr)
        return None
    flagged = ReviewStore(wb.db).flagged_count(ReviewFilter(status="any", run_id=run_id))
    return (f"grounding checks: {checked} conversation(s) checked, {flagged} of the run flagged"
            + (" — open them in Review (Quality flag filter) before exporting" if flagged else ""))


def _grade_selection(settings, db, f, progress: Progress) -> None:
    """Check the selected conversations never checked, so the manifest's grounding counts are complete."""
    from core.corpus.embeddings import Embedder
    from core.quality import score_ids
    from core.review.store import ReviewStore

    ids = ReviewStore(db).unchecked_ids(f)
    if ids:
        print(f"checking the grounding of {len(ids)} conversation(s) never checked (skip with --no-grade) …",
              file=sys.stderr)
        score_ids(db, Embedder.from_settings(settings), ids,
                  progress=lambda done, total: progress("grounding checks", done, total))


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade conversations from a JSONL file (ours or another tool's) and write them with ``grounding``."""
    from pathlib import Path

    from core.quality.grade import grade_file

    settings = _settings(args)
    if args.provider and args.trained:
        raise GroundworkError("--trained and --provider choose two different verifiers: give one of them.")
    if args.provider:
        settings = settings.replace(provider=args.provider)
    settings.validate()
    db = None
    if args.provider:
        from core.db import Database
        from core.quality.judge import judge_available
        from core.providers.registry import make_provider
        from core.quality.verify import DatabaseCache, LLMVerifier

        available, reason = judge_available(args.provider)
        if not available:
            raise GroundworkError(f"The LLM verifier cannot run on this provider. {reason}")
        db = Database(settings.db_path)
        verifier = LLMVerifier(make_provider(settings), cache=DatabaseCache(db))
    else:
        from core.corpus.embeddings import Embedder
        from core.quality.grounding import OfflineVerifier

        # Sentence vectors are kept in the data dir (when there is one): grading again, or grading a run's
        # output whose checks ran as it was saved, embeds only what is new.
        verifier = OfflineVerifier(Embedder.from_settings(settings),
                                   data_dir=settings.data_path if settings.data_path.is_dir() else None)
        if args.trained:
            from core.db import Database
            from core.quality.trained import TrainedVerifier, TrainedVerifierStore

            if not settings.db_path.exists():
                raise GroundworkError(f"No data dir at {settings.data_path}: --trained uses the verifier trained "
                                      "on that data dir's corpus (`groundwork verifier train`).")
            db = Database(settings.db_path)
            store = TrainedVerifierStore(db, settings.data_path)
            scorer = store.load()
            if scorer is None:
                state = store.status()["state"]
                raise GroundworkError(
                    "No verifier is trained on this corpus" + (" as it is now (it was re-indexed since)"
                                                              if state == "stale" else "")
                    + ": run `groundwork verifier train` first, or grade without --trained.")
            verifier = TrainedVerifier(verifier, scorer, name=store.fingerprint()[:8])
    progress = Progress(args.quiet)
    try:
        rows = grade_file(Path(args.input), Path(args.out), verifier,
                          progress=lambda done, total: progress("conversations", done, total))
    finally:
        progress.close()
        if db is not None:
            db.close()
    line = f"graded {rows} conversation(s) with {verifier.method} into {args.out}"
    if args.provider:
        line += (f"; {verifier.calls} verifier call(s), {verifier.cached} from the cache, "
                 f"{verifier.prompt_tokens} prompt + {verifier.completion_tokens} completion tokens")
    print(line, file=sys.stderr)
    return 0


def cmd_verifier(args: argparse.Namespace) -> int:
    """Train the data dir's corpus verifier, or say whether one is trained on the corpus as it is now."""
    from core.db import Database
    from core.quality.trained import TrainedVerifierStore

    settings = _settings(args)
    if not settings.db_path.exists():
        raise GroundworkError(f"No data dir at {settings.data_path}: index documents first (`groundwork index`).")
    db = Database(settings.db_path)
    try:
        store = TrainedVerifierStore(db, settings.data_path)
        if args.action == "status":
            st = store.status()
            if st["state"] == "current":
                print(f"trained on this corpus ({st['fingerprint']}) at {st['trained_at']}: {st['pairs']} pairs from "
                      f"{st['sentences']} sentences in {st['seconds']} s; {st['path']}")
            elif st["state"] == "stale":
                print("trained on an earlier version of the corpus (re-indexed since): set aside; "
                      "`groundwork verifier train` trains it again")
            else:
                print("no verifier trained on this corpus: `groundwork verifier train` trains one (a few minutes)")
            return 0
        if not db.scalar("SELECT COUNT(*) FROM documents WHERE status='complete'"):
            raise GroundworkError("The corpus is empty: index documents first (`groundwork index PATH`).")
        progress = Progress(args.quiet)
        try:
            meta = store.train(progress=lambda done, total, _what: progress("training steps", done, total))
        finally:
            progress.close()
        print(f"trained a verifier on this corpus ({meta['fingerprint']}): {meta['pairs']} pairs from "
              f"{meta['sentences']} sentences in {meta['seconds']} s; `groundwork grade --trained` uses it")
        return 0
    finally:
        db.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundwork", description="Groundwork: grounded SFT conversations "
                                     "from your documents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index files or folders into the corpus")
    p.add_argument("paths", nargs="*", help="files or folders (recursive): txt md html pdf docx jsonl csv")
    p.add_argument("--sample", action="store_true",
                   help="also index the fictional case-law sample corpus (sample_data/corpus) into this data dir")
    _add_store_options(p)
    p.add_argument("--text-field", help="text field of JSONL/CSV rows (default: the content key)")
    p.add_argument("--title-key", default=_env("GROUNDWORK_TITLE_KEY"),
                   help="title field of JSONL/CSV rows (env GROUNDWORK_TITLE_KEY; default: the first of title, "
                        "name, case_name, heading, subject); re-indexing with it retitles without re-embedding")
    p.add_argument("--chunk-size", type=int, help="chunk size in characters (env GROUNDWORK_CHUNK_SIZE)")
    p.add_argument("--chunk-overlap", type=int, help="chunk overlap in characters")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for another process to release the embedded store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="hybrid search over the corpus (vectors and BM25 keywords, fused)")
    p.add_argument("query")
    p.add_argument("--mode", choices=["hybrid", "dense"], default="hybrid",
                   help="hybrid: vector and keyword (BM25) rankings fused; dense: vectors only")
    p.add_argument("-k", type=int, default=3, help="passages to show")
    p.add_argument("--width", type=int, default=300, help="characters of each passage to print")
    p.add_argument("--wait", type=float, default=30.0)
    _add_store_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("generate", help="generate grounded conversations (headless batch)")
    _add_store_options(p)
    p.add_argument("--max-docs", type=int, default=_int_env("MAX_DOCS", 0),
                   help="sample briefings from at most N documents (env MAX_DOCS; 0: all)")
    p.add_argument("--documents", nargs="+", metavar="NAME",
                   help="draw briefings only from these documents: ids, source paths, folders (everything under "
                        "them) or globs on the source path such as 'leases/*.md'")
    p.add_argument("--tag", action="append", metavar="TAG",
                   help="draw briefings only from documents carrying this tag (Corpus page); repeatable; with "
                        "--documents, a document matching either is drawn from")
    p.add_argument("--num-dialogs", type=int, default=_int_env("NUM_DIALOGS", 10),
                   help="conversations to save (env NUM_DIALOGS)")
    p.add_argument("--max-turns", type=int, default=_int_env("MAX_TURNS", 3),
                   help="turns per conversation are uniform in 1..N (env MAX_TURNS)")
    p.add_argument("--max-concurrency", type=int, default=_int_env("MAX_CONCURRENCY", 4),
                   help="LLM calls in flight at most (env MAX_CONCURRENCY); lower for tight quotas")
    p.add_argument("--provider", choices=["gemini", "openai", "local"], default=_env("GROUNDWORK_PROVIDER"),
                   help="LLM provider (env GROUNDWORK_PROVIDER; default gemini with a key, else local)")
    p.add_argument("--gemini-model", default=_env("GEMINI_MODEL"), help="Gemini model (env GEMINI_MODEL)")
    p.add_argument("--gemini-max-retries", type=int, default=None,
                   help="retries of one call on 429/5xx (env GEMINI_MAX_RETRIES)")
    p.add_argument("--output", default=_env("OUTPUT"), help="JSONL file written as conversations complete "
                                                            "(env OUTPUT)")
    p.add_argument("--log-dir", default=_env("LOG_DIR"), help="monitor logs (env LOG_DIR; default data dir logs/)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=_int_env("TOP_K", 3), help="passages retrieved per turn")
    p.add_argument("--retrieval", choices=["rag", "briefing"], default="rag",
                   help="rag: retrieve for every turn; briefing: answer from the sampled briefing")
    p.add_argument("--retrieval-mode", choices=["hybrid", "dense"], default="hybrid",
                   help="hybrid: vectors and BM25 keywords fused (identifiers findable); dense: vectors only")
    p.add_argument("--follow-up-queries", choices=["auto", "model", "rule"], default="auto",
                   help="how a follow-up's standalone search query is made: model: the simulated user writes it "
                        "with its message (one call); rule: its message plus the conversation's subject; auto: "
                        "model, except rule for the offline model")
    p.add_argument("--instructions-per-sample", type=int, default=3, help="questions written per briefing")
    p.add_argument("--unanswerable-share", type=float, default=0.1,
                   help="share of questions the corpus cannot answer")
    p.add_argument("--token-budget", type=int, default=_int_env("TOKEN_BUDGET", 0),
                   help="stop cleanly after this many tokens (0: no budget)")
    p.add_argument("--seed", type=int, default=_int_env("SEED", 0))
    p.add_argument("--auto-improve", action="store_true", default=_env("AUTO_IMPROVE", "") in ("1", "true", "yes"),
                   help="judge each conversation and regenerate it with the judge's feedback when below the "
                        "threshold (env AUTO_IMPROVE; costs extra calls)")
    p.add_argument("--improve-attempts", type=int, default=2, help="attempts per conversation with --auto-improve")
    p.add_argument("--judge-threshold", type=float, default=3.5, help="mean rubric score (1-5) to pass")
    p.add_argument("--verify-grounding", action="store_true",
                   default=_env("VERIFY_GROUNDING", "") in ("1", "true", "yes"),
                   help="LLM verifier: one more call per answer checks each sentence against its passages, with a "
                   "quote that must really be there; stored for Review and counted in the estimate (env "
                   "VERIFY_GROUNDING; Gemini or OpenAI-compatible)")
    p.add_argument("--batch", action="store_true", default=_env("GROUNDWORK_BATCH", "") in ("1", "true", "yes"),
                   help="a large run through Gemini's Batch API: each round of calls is one batch job (half price; "
                        "minutes to hours per round; resumable while jobs run). Gemini only")
    p.add_argument("--resume", metavar="RUN_ID", help="finish an incomplete run (a batch run resumes polling its job)")
    p.add_argument("--more-replacements", type=int, metavar="N",
                   help="with --resume: failed conversations this session may replace (default: the run's budget "
                        "again, so a run stopped for its budget can finish)")
    p.add_argument("--wait", type=float, default=30.0)
    p.add_argument("--no-grade", action="store_true",
                   help="skip the offline grounding checks that otherwise run on each conversation as it is saved "
                        "(Review checks each conversation on open)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("runs", help="list generation runs")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("export", help="export reviewed conversations as training JSONL (+ manifest.json)")
    p.add_argument("--data-dir", help="data dir (env GROUNDWORK_DATA_DIR, default ./data)")
    p.add_argument("--format", action="append",
                   choices=["openai", "sharegpt", "alpaca", "completion", "raw", "dpo", "kto"],
                   help="output format; repeat for several (default: openai)")
    p.add_argument("--context", choices=["user", "tool", "system", "none"], default="user",
                   help="where each answer's passages go: user (default: a context block in the user message it "
                        "answers), tool (a retrieve tool call before each answer), system (single-turn rows only), "
                        "none (no passages: answers cite sources the model cannot see)")
    p.add_argument("--profile", choices=["standard", "raft"], default="standard",
                   help="raft: oracle passages plus k distractors, shuffled, and a share of distractor-only rows "
                        "whose answer says the passages do not cover it (Zhang et al., 2024)")
    p.add_argument("--raft-distractors", type=int, default=3, metavar="K", help="RAFT distractors per answer (3)")
    p.add_argument("--raft-no-oracle-share", type=float, default=0.2, metavar="P",
                   help="share of RAFT rows with distractors only (0.2)")
    p.add_argument("--status", choices=["approved", "new", "discarded", "any"], default="approved",
                   help="review status to export (default approved)")
    p.add_argument("--run", metavar="RUN_ID", help="only this generation run")
    p.add_argument("--min-rating", type=int, metavar="N", help="only conversations rated N or more (1-5)")
    p.add_argument("--tag", metavar="T", help="only conversations tagged T")
    p.add_argument("--require-agreement", action="store_true",
                   help="only conversations that two or more reviewers (at least as many as each needs) decided, "
                        "all the same way (team review)")
    p.add_argument("--split", type=float, default=0.9,
                   help="share of document groups in train, between 0 and 1 (default 0.9); a group is every "
                        "document whose text reaches a row, so no validation document reaches a training row")
    p.add_argument("--no-split", action="store_true", help="one file per format, no validation side")
    p.add_argument("--split-group", choices=["answers", "passages"], default="answers",
                   help="documents that tie rows together: answers (default: briefing + the passages answers draw "
                        "on; other passages from the other side are withheld) or passages (every document shown; "
                        "nothing withheld, but one group may hold every document)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation assignment")
    p.add_argument("--license", default="other", help="license id for the dataset card (default: other)")
    p.add_argument("--with-system-prompt", action="store_true",
                   help="start each row with the respondent prompt the conversation was generated with")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer for token lengths: a .gguf file or a Hugging "
                                                       "Face tokenizer folder (default: the offline model's)")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N",
                   help="drop rows longer than N tokens (0: keep all)")
    p.add_argument("--drop-near-duplicates", action="store_true",
                   help="keep only the best-rated conversation of each near-duplicate cluster")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <data dir>/exports/export-<time>)")
    p.add_argument("--no-grade", action="store_true",
                   help="do not run the offline grounding checks on selected conversations never checked (the "
                        "manifest then counts them as unchecked)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("grade", help="grade the grounding of conversations in a JSONL file (rows like "
                                     "`generate --output` writes); writes each row with 'grounding' added")
    p.add_argument("input", help="JSONL: 'messages' and 'retrieved_context' per row")
    p.add_argument("--out", required=True, help="output JSONL (each input row plus 'grounding')")
    p.add_argument("--provider", choices=["gemini", "openai"],
                   help="grade with the LLM verifier on this provider (its settings and key from the environment); "
                        "default: the offline verifier")
    p.add_argument("--data-dir", help="data dir whose database caches LLM verdicts (env GROUNDWORK_DATA_DIR)")
    p.add_argument("--embedding-model", help="embedding model of the offline verifier (env GROUNDWORK_EMBEDDING_MODEL)")
    p.add_argument("--trained", action="store_true",
                   help="also the verifier trained on the data dir's corpus (`groundwork verifier train`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("verifier", help="a grounding verifier trained on this corpus (FactCC-style cross-encoder "
                                        "from the packaged MiniLM): train it, or see its state")
    p.add_argument("action", choices=["train", "status"])
    p.add_argument("--data-dir", help="data dir (env GROUNDWORK_DATA_DIR, default ./data)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_verifier)

    p = sub.add_parser("migrate", help="move the corpus between Qdrant Edge and local mode (no re-embedding), "
                                       "or load a Qdrant server's shard snapshot into Edge")
    p.add_argument("--to", choices=["edge", "local"], help="the embedded engine that will hold the collection")
    p.add_argument("--from-snapshot", metavar="FILE",
                   help="a shard snapshot from a Qdrant server (/collections/NAME/shards/0/snapshot) to search "
                        "offline with Edge")
    p.add_argument("--replace", action="store_true", help="overwrite the collection if the target has it")
    p.add_argument("--collection", help="collection to move (env GROUNDWORK_COLLECTION)")
    p.add_argument("--data-dir", help="data dir (env GROUNDWORK_DATA_DIR, default ./data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_migrate)
    return parser


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.corpus.migrate import load_snapshot, migrate

    if bool(args.to) == bool(args.from_snapshot):
        raise GroundworkError("Give either --to edge|local or --from-snapshot FILE.")
    from core.readonly import require_writable

    settings = Settings.from_env(data_dir=args.data_dir, collection=args.collection)
    require_writable(settings)
    progress = Progress(args.quiet)
    try:
        if args.from_snapshot:
            info = load_snapshot(settings, args.from_snapshot, progress=progress)
            progress.close()
            print(f"collection {info['collection']}: {info['points']:,} points of {info['dim']} dims in Qdrant Edge "
                  f"at {info['location']}. Search it with GROUNDWORK_EMBEDDED_ENGINE=edge and no QDRANT_URL "
                  "(--content-key: the payload field holding the text).")
            return 0
        report = migrate(settings, args.to, replace=args.replace, progress=progress)
        progress.close()
        print(report.summary())
        if settings.embedded_engine != args.to:
            print(f"now set GROUNDWORK_EMBEDDED_ENGINE={args.to} to use it", file=sys.stderr)
        return 0
    finally:
        progress.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except GroundworkError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: everything completed so far is saved.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # unwritable paths, full disks: the message says which file
        print(f"error: {e.strerror or e}: {getattr(e, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
