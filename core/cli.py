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

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
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
    from core.workbench import Workbench

    wb = Workbench(_settings(args), store_idle_close_s=0, wait_for_store_s=args.wait)
    progress = Progress(args.quiet)
    try:
        total = None
        for path in args.paths:
            report = wb.corpus.ingest_path(path, text_field=args.text_field, progress=progress)
            progress.close()
            for line in report.problems + report.duplicates:
                print(f"warning: {line}", file=sys.stderr)
            print(f"{path}: {report.summary()}")
            total = report
        stats = wb.corpus.stats()
        print(f"collection {stats['collection']}: {stats['documents']} documents, {stats['chunks']} chunks "
              f"({stats['engine']} store at {stats['location']})")
        if stats["warning"]:
            print(f"note: {stats['warning']}", file=sys.stderr)
        return 0 if total is not None and (total.added_documents or total.already_indexed or not total.problems) \
            else EXIT_USER_ERROR
    finally:
        progress.close()
        wb.close()


def cmd_search(args: argparse.Namespace) -> int:
    from core.workbench import Workbench

    wb = Workbench(_settings(args), store_idle_close_s=0, wait_for_store_s=args.wait)
    try:
        passages = wb.corpus.search(args.query, k=args.k)
        if not passages:
            print("no passages found")
        for i, p in enumerate(passages, 1):
            text = " ".join(p.text.split())
            print(f"{i}. score {p.score:.3f}  {p.title}  [{p.source_path} #{p.position}]")
            print(f"   {text[:args.width]}{'…' if len(text) > args.width else ''}")
        return 0
    finally:
        wb.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundwork", description="Groundwork: grounded SFT conversations "
                                     "from your documents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index files or folders into the corpus")
    p.add_argument("paths", nargs="+", help="files or folders (recursive): txt md html pdf docx jsonl csv")
    _add_store_options(p)
    p.add_argument("--text-field", help="text field of JSONL/CSV rows (default: the content key)")
    p.add_argument("--chunk-size", type=int, help="chunk size in characters (env GROUNDWORK_CHUNK_SIZE)")
    p.add_argument("--chunk-overlap", type=int, help="chunk overlap in characters")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for another process to release the embedded store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="semantic search over the corpus")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=3, help="passages to show")
    p.add_argument("--width", type=int, default=300, help="characters of each passage to print")
    p.add_argument("--wait", type=float, default=30.0)
    _add_store_options(p)
    p.set_defaults(func=cmd_search)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
