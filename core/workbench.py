"""The workbench's long-lived parts wired together once per process: settings, database, embedder, store hub.

Pages get one through ``core.ui_cache``; the CLI builds one per command. Heavy things (the embedding
model, the vector store) load on first use, so opening a workbench is cheap.
"""

from __future__ import annotations

from core.config import Settings
from core.corpus.collection import Corpus
from core.db import Database
from core.corpus.embeddings import Embedder
from core.quality.passage_windows import WindowIndexer
from core.readonly import read_only_message
from core.corpus.storehub import StoreHub, open_store


class Workbench:
    """Args:
        settings: the configuration (data dir, store, models).
        store_idle_close_s: how long the vector store stays open after its last use; the app keeps it
            short so a CLI batch on the same data dir can take its turn.
        wait_for_store_s: how long to wait for another process to release the embedded store.
        embedder: an already loaded embedding model to reuse, if it is the configured one.
    """

    def __init__(self, settings: Settings, store_idle_close_s: float = 5.0, wait_for_store_s: float = 0.0,
                 embedder: Embedder | None = None, read_only: bool = False):
        """read_only: for reading commands on a data dir this user may not write (core.readonly): the
        database opens read-only and the embedded vector store as a private copy."""
        self.settings = settings
        self.read_only = read_only
        if read_only:
            self.db = Database(settings.db_path, read_only=read_only_message(settings))
        else:
            settings.data_path.mkdir(parents=True, exist_ok=True)
            self.db = Database(settings.db_path)
        # An embedder can be shared between workbenches (tests, several data dirs in one process).
        self.embedder = embedder if embedder and embedder.model_name == settings.embedding_model \
            else Embedder.from_settings(settings)
        self.stores = StoreHub(lambda: open_store(settings, read_only=read_only), idle_close_s=store_idle_close_s,
                               wait_for_lock_s=wait_for_store_s)
        self.corpus = Corpus(settings, self.db, self.embedder, self.stores)
        # The grounding checks' passage windows, embedded as chunks are indexed (in the background, after each
        # ingest), so checking an answer embeds only the answer.
        self.windows: WindowIndexer | None = None
        if not read_only:
            self.windows = WindowIndexer(self.embedder, settings.data_path)
            self.corpus.on_indexed = self.windows.add

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()
        self.stores.close()
        self.db.close()
