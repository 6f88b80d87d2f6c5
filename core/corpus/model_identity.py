"""Which embedding model made a collection's vectors, recorded with the collection and checked before use.

Qdrant records only a collection's vector size and distance, and two models of one size (or one model with
another pooling) pass that check while every search quietly goes wrong. So the collection's SQLite record
keeps the model's identity (core.corpus.embeddings.Embedder.identity: name, dimension, pooling, normalisation, a
probe vector and its hash), and search, generation and the Workshop compare it with the configured model
before anything else happens (in particular before any LLM call).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.db import Database, dumps, loads
from core.corpus.embeddings import Embedder, describe_identity, identity_mismatch
from core.errors import GroundworkError, ModelMismatchError
from core.corpus.vectorstore import VectorStore

IDENTITY_SAMPLE = 4  # stored vectors embedded again to tell whether a collection without an identity is this model's
REPRODUCE_MIN_COSINE = 0.99  # the same model reproduces its vectors to > 0.9999; its CLS-pooled twin: 0.35-0.48


def check_model(db: Database, embedder: Embedder, store: VectorStore, collection: str, content_key: str,
                record: dict[str, Any]) -> None:
    """Refuse the configured model unless it makes the vectors the collection holds.

    A collection indexed before identities were recorded has none: if the configured model reproduces a few of
    its stored vectors from their texts, its identity is recorded now (when the data dir is writable; otherwise
    the check simply runs again on the next open).

    Raises:
        ModelMismatchError: the identities differ, or the model does not reproduce the stored vectors; the
            message names both models and the fix.
    """
    current = embedder.identity()
    stored = loads(record.get("embedding_identity"), None)
    fix = (f"Set GROUNDWORK_EMBEDDING_MODEL (or --embedding-model) to the model the collection was indexed with, "
           f"or re-index into a new collection (--collection NAME) with {embedder.model_name!r}.")
    if stored:
        differences = identity_mismatch(stored, current)
        if differences:
            raise ModelMismatchError(
                f"Collection {collection!r} was indexed with embedding model {describe_identity(stored)} but the "
                f"configured model is {describe_identity(current)}: {'; '.join(differences)}. {fix}")
        return
    rows, _ = store.scroll(collection, limit=IDENTITY_SAMPLE, with_vectors=True)
    rows = [r for r in rows if isinstance(r["payload"].get(content_key), str) and r.get("vector") is not None]
    if rows:
        stored_vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        # From the model itself, never the embedding cache: the question is what this model makes now.
        again = embedder.encode([r["payload"][content_key] for r in rows], use_cache=False)
        cosines = np.sum(stored_vectors * again, axis=1) / np.maximum(
            np.linalg.norm(stored_vectors, axis=1) * np.linalg.norm(again, axis=1), 1e-12)
        worst = float(np.min(cosines))
        if worst < REPRODUCE_MIN_COSINE:
            raise ModelMismatchError(
                f"The vectors in {collection!r} were not made by embedding model {describe_identity(current)}: its "
                f"stored passages embedded again with it come out different (cosine {worst:.3f}; the collection's "
                f"record names {record.get('embedding_model')!r}). {fix}")
    try:
        with db.write() as w:
            w.execute("UPDATE collections SET embedding_identity=? WHERE name=?", [dumps(current), collection])
    except GroundworkError:  # a read-only data dir: the same check runs again next time, nothing is lost
        pass
