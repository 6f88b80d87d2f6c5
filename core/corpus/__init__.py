"""The corpus: documents in, passages out.

Loading files (:mod:`~core.corpus.loaders`), chunking them to what the embedder reads
(:mod:`~core.corpus.chunking`), embedding (:mod:`~core.corpus.embeddings`, the packaged MiniLM, with
:mod:`~core.corpus.embedding_cache`: vectors already computed, shared by every data dir on the machine), the vector
stores behind one interface (:mod:`~core.corpus.vectorstore`: Qdrant Edge embedded, qdrant-client local or a
server by URL; :mod:`~core.corpus.edge_store`, :mod:`~core.corpus.storehub`, :mod:`~core.corpus.migrate`), the
full-text side (:mod:`~core.corpus.lexical`), the collection itself (:mod:`~core.corpus.collection`: ingest,
search, titles), the user's say over documents (:mod:`~core.corpus.documents`: delete, tag, select) and the
embedding model's identity (:mod:`~core.corpus.model_identity`).

May import: the foundations at the top of ``core`` (errors, config, schema, db, ids, readonly) — nothing of
generation, review or export, which all read the corpus.
"""
