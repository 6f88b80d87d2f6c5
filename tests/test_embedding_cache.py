"""The embedding cache: text embedded once is a lookup in every data dir after, with the very vectors the model made."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from core.corpus.embedding_cache import EmbeddingCache
from core.corpus.embeddings import Embedder, packaged_model_path
from core.corpus.model_identity import check_model
from core.errors import ModelMismatchError
from core.workbench import Workbench
from tests.conftest import SAMPLE_DIR, make_settings

TEXTS = ["The landlord kept the tenant's deposit of $1,200 without an itemised list.",
         "A non-compete clause of two years was held unenforceable for a junior employee.",
         "The court awarded double damages for the deposit withheld in bad faith."]


def _no_model(*_args, **_kwargs):
    raise AssertionError("the model was asked for a vector the cache holds")


@pytest.fixture(scope="module")
def private_embedder(tmp_path_factory) -> Embedder:
    """MiniLM loaded once with an empty cache of its own (the suite's shared cache is not touched)."""
    e = Embedder(cache=EmbeddingCache(tmp_path_factory.mktemp("cache") / "embeddings.sqlite"))
    e.load()
    return e


def test_vectors_come_back_exactly_and_a_second_process_embeds_nothing(private_embedder, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")  # empty, whatever ran before
    embedder = private_embedder.with_cache(cache)
    texts = [*TEXTS, TEXTS[0]]  # a repeat within one call is embedded once
    first = embedder.encode(texts)
    fresh = embedder.encode(texts, use_cache=False)
    np.testing.assert_allclose(first, fresh, atol=1e-6)
    assert np.array_equal(first[0], first[3])
    assert (cache.hits, cache.misses) == (0, 3)

    # Another process on the same machine (another Embedder, another connection to the file): all lookups.
    other = Embedder(packaged_model_path().as_posix(), cache=EmbeddingCache(cache.path))  # another name, same model
    assert other.cache_key() == embedder.cache_key()
    monkeypatch.setattr(other, "_encode", _no_model)
    seen = []
    again = other.encode(texts, progress=lambda done, total: seen.append((done, total)))
    assert np.array_equal(again, first)  # the very float32 values, not a float16 approximation
    assert seen == [(4, 4)] and (other.cache.hits, other.cache.misses) == (3, 0)

    # Text, not only hashes, would be a leak: the file holds none of it, and only its owner may read it.
    raw = cache.path.read_bytes()
    assert all(t.encode() not in raw for t in TEXTS)
    assert cache.path.stat().st_mode & 0o077 == 0


def test_progress_counts_what_the_cache_had_then_each_model_batch(private_embedder):
    known = TEXTS[:2]
    private_embedder.encode(known)
    new = [f"Ruling {i}: the tenant paid {i * 10} dollars late and the landlord waived the fee." for i in range(300)]
    seen = []
    private_embedder.encode([*known, *new], progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (2, 302) and seen[-1] == (302, 302)
    assert len(seen) >= 3 and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_another_model_under_the_same_name_never_gets_these_vectors(private_embedder, cls_model, tmp_path):
    private_embedder.encode(TEXTS)
    # The CLS-pooled copy, named like the packaged model: a name is not an identity.
    twin = Embedder(str(cls_model), cache=EmbeddingCache(private_embedder.cache.path))
    twin.load()
    twin.model_name = private_embedder.model_name  # as if the files under one name had changed
    assert twin.cache_key() != private_embedder.cache_key()
    vectors = twin.encode(TEXTS)
    assert twin.cache.hits == 0
    cosines = np.sum(vectors * private_embedder.encode(TEXTS), axis=1)
    assert float(cosines.max()) < 0.95  # its own vectors, not MiniLM's


def test_the_model_check_asks_the_model_not_the_cache(indexed_wb, tmp_path):
    """A collection without a recorded identity is checked by embedding a few stored passages again: a cache
    that held other vectors for them (poisoned, or another model's) must not decide that check."""
    with indexed_wb.db.write() as w:
        w.execute("UPDATE collections SET embedding_identity=NULL")
    record = indexed_wb.db.one("SELECT * FROM collections WHERE name=?", [indexed_wb.settings.collection])
    embedder = indexed_wb.embedder.with_cache(EmbeddingCache(tmp_path / "poisoned.sqlite"))
    with indexed_wb.stores.use() as store:
        rows, _ = store.scroll(indexed_wb.settings.collection, limit=8, with_vectors=False)
        texts = [r["payload"]["text"] for r in rows]
        rng = np.random.default_rng(0)
        noise = rng.normal(size=(len(texts), 384)).astype(np.float32)
        embedder.cache.put_many(embedder.cache_key(), zip(texts, noise / np.linalg.norm(noise, axis=1, keepdims=True)))
        assert np.allclose(embedder.encode(texts[:1]), noise[:1] / np.linalg.norm(noise[:1]))  # the cache is read
        check_model(indexed_wb.db, embedder, store, indexed_wb.settings.collection, "text", record)  # and passes
    assert json.loads(indexed_wb.db.scalar("SELECT embedding_identity FROM collections"))["pooling"] == "mean"


def test_a_second_data_dir_indexes_the_sample_corpus_from_the_cache(private_embedder, tmp_path, monkeypatch):
    first = Workbench(make_settings(tmp_path / "mine"), store_idle_close_s=0, embedder=private_embedder)
    try:
        first.corpus.ingest_path(SAMPLE_DIR / "summaries")
        assert first.windows.wait(timeout_s=300)
        mine = {r["text"]: r["id"] for r in first.db.rows("SELECT id, text FROM chunks")}
        with first.stores.use() as store:
            mine_vectors = {r["payload"]["text"]: r["vector"] for r in
                            store.scroll(first.settings.collection, limit=1000, with_vectors=True)[0]}
    finally:
        first.close()
    monkeypatch.setattr(private_embedder, "_encode", _no_model)
    demo = Workbench(make_settings(tmp_path / "demo"), store_idle_close_s=0, embedder=private_embedder)
    try:
        report = demo.corpus.ingest_path(SAMPLE_DIR / "summaries")  # chunks and grounding windows: no model time
        assert report.added_chunks == len(mine) and demo.windows.wait(timeout_s=300) and demo.windows.error is None
        with demo.stores.use() as store:
            theirs = {r["payload"]["text"]: r["vector"] for r in
                      store.scroll(demo.settings.collection, limit=1000, with_vectors=True)[0]}
        assert theirs.keys() == mine_vectors.keys()
        for text, vector in theirs.items():
            np.testing.assert_allclose(vector, mine_vectors[text], atol=1e-6)
    finally:
        demo.close()


def test_the_cache_keeps_its_size_by_dropping_the_oldest(tmp_path):
    cache = EmbeddingCache(tmp_path / "small.sqlite", max_mb=1)  # 1 MB: a few hundred vectors of 384 dimensions
    vectors = np.eye(384, dtype=np.float32)
    for batch in range(30):
        cache.put_many("m", ((f"text {batch}-{i}", vectors[i % 384]) for i in range(100)))
    with sqlite3.connect(cache.path) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert 250 <= kept <= 1024 * 1024 // (384 * 4)  # most of the bound used, never more vectors than fit in it
    assert cache.get_many("m", ["text 0-0", "text 20-99"]) == {}  # the oldest went first
    newest = cache.get_many("m", ["text 29-99"])
    assert np.array_equal(newest["text 29-99"], vectors[99])
    # The file itself stays near its bound (one insert's worth over at most): freed pages are used again.
    assert cache.path.stat().st_size < 1.5 * 1024 * 1024


def test_a_busy_cache_skips_one_call_and_a_damaged_vector_is_embedded_again(private_embedder, tmp_path):
    embedder = private_embedder.with_cache(EmbeddingCache(tmp_path / "busy.sqlite"))
    embedder.encode(TEXTS[:1])
    holder = sqlite3.connect(embedder.cache.path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write, for longer than the cache waits
    embedder.cache._timeout_s = 0.2
    try:
        assert embedder.encode(TEXTS).shape == (3, 384)  # embedded without it
    finally:
        holder.rollback()
        holder.close()
    assert embedder.cache.usable  # and the next call uses it again
    embedder.encode(TEXTS)
    with sqlite3.connect(embedder.cache.path) as conn:  # one stored vector cut short (a damaged file)
        conn.execute("UPDATE vectors SET vec=substr(vec, 1, 100)")
    again = embedder.encode(TEXTS)
    np.testing.assert_allclose(again, embedder.encode(TEXTS, use_cache=False), atol=1e-6)


def test_a_file_others_could_write_is_not_trusted(private_embedder, tmp_path):
    path = tmp_path / "shared.sqlite"
    EmbeddingCache(path).put_many("m", [("a", np.ones(384, dtype=np.float32))])
    path.chmod(0o666)  # anyone could plant vectors in it
    cache = EmbeddingCache(path)
    assert cache.get_many("m", ["a"]) == {} and not cache.usable


def test_an_unusable_cache_only_costs_time(private_embedder, tmp_path, capfd):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache's folder should be")
    e = private_embedder.with_cache(EmbeddingCache(blocker / "embeddings.sqlite"))
    vectors = e.encode(TEXTS)
    np.testing.assert_allclose(vectors, private_embedder.encode(TEXTS, use_cache=False), atol=1e-6)
    assert not e.cache.usable and e.encode(TEXTS[:1]).shape == (1, 384)
    assert capfd.readouterr().err == ""  # nothing on a user's terminal: the cache is an optimisation


def test_the_setting_chooses_the_file_or_none(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = Embedder.from_settings(make_settings(tmp_path / "d", embedding_cache="")).cache
    assert default.path == tmp_path / "xdg" / "groundwork" / "embeddings.sqlite"
    assert Embedder.from_settings(make_settings(tmp_path / "d", embedding_cache="off")).cache is None
    chosen = Embedder.from_settings(make_settings(tmp_path / "d", embedding_cache=str(tmp_path / "mine.sqlite")))
    assert chosen.cache.path == tmp_path / "mine.sqlite"
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="embedding_cache_mb is 0"):
        make_settings(tmp_path / "d", embedding_cache_mb=0)


def test_another_model_is_still_refused_with_the_cache_on(indexed_wb, cls_model):
    """The recorded identity decides before any vector is looked up: the cache changes no refusal."""
    record = indexed_wb.db.one("SELECT * FROM collections WHERE name=?", [indexed_wb.settings.collection])
    twin = Embedder(str(cls_model), cache=indexed_wb.embedder.cache)
    with indexed_wb.stores.use() as store, pytest.raises(ModelMismatchError, match="pooling mean vs cls"):
        check_model(indexed_wb.db, twin, store, indexed_wb.settings.collection, "text", record)
