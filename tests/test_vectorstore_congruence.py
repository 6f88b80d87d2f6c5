"""Congruence: the same calls on Qdrant local mode and on Qdrant Edge give the same answers.

Like qdrant-client's own ``congruence_tests/``: one script of upserts, overwrites and deletes runs on both
backends, then exact searches (unfiltered, by document, excluding ids, both), scroll, count and info are
compared. Search results must hold the same ids in the same order; ids whose scores tie may come in any
order, and at the cut-off any of the tied points may be the one returned. numpy is the referee for scores.
"""

import uuid

import numpy as np
import pytest

from core.corpus.edge_store import EdgeStore
from core.corpus.vectorstore import PointFilter, QdrantStore

DIM = 32
COLLECTION = "congruence"
TOL = 1e-5


def pid(i: int) -> str:
    return str(uuid.UUID(int=0xC0FFEE << 64 | int(i)))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("congruence")
    local = QdrantStore(path=str(root / "local"))
    edge = EdgeStore(root / "edge", auto_build=False)
    rng = np.random.default_rng(7)
    vectors = {i: rng.normal(size=DIM) for i in range(600)}
    for twin, original in ((600, 5), (601, 5), (602, 77)):  # exact duplicates: ties in score
        vectors[twin] = vectors[original].copy()
    payload = {i: {"text": f"passage {i}", "document_id": f"doc-{i % 23}", "position": i // 23} for i in vectors}
    for store in (local, edge):
        store.create(COLLECTION, DIM)
        ids = sorted(vectors)
        for start in range(0, len(ids), 128):
            batch = ids[start:start + 128]
            store.upsert(COLLECTION, [pid(i) for i in batch], [vectors[i] for i in batch], [payload[i] for i in batch])
    # Overwrite some points (new vector and payload), delete others.
    for i in range(0, 60, 3):
        vectors[i] = rng.normal(size=DIM)
        payload[i] = {**payload[i], "text": f"rewritten {i}"}
    deleted = list(range(100, 140)) + [601]
    for store in (local, edge):
        store.upsert(COLLECTION, [pid(i) for i in range(0, 60, 3)], [vectors[i] for i in range(0, 60, 3)],
                     [payload[i] for i in range(0, 60, 3)])
        store.delete(COLLECTION, [pid(i) for i in deleted])
    for i in deleted:
        vectors.pop(i)
        payload.pop(i)
    yield {"local": local, "edge": edge, "vectors": vectors, "payload": payload, "rng": rng}
    local.close()
    edge.close()


def reference_scores(vectors: dict[int, np.ndarray], query: np.ndarray) -> dict[str, float]:
    q = query / np.linalg.norm(query)
    return {pid(i): float(v @ q / np.linalg.norm(v)) for i, v in vectors.items()}


def assert_same_hits(a, b, truth: dict[str, float], k: int) -> None:
    """Same scores at every rank; same ids per rank except among tied scores."""
    assert len(a) == len(b) == min(k, len(truth))
    for hits in (a, b):
        for h in hits:
            assert abs(h.score - truth[h.id]) < TOL, "a store's score disagrees with numpy"
    expected = sorted(truth.values(), reverse=True)[:k]
    assert np.allclose([h.score for h in a], expected, atol=TOL)
    assert np.allclose([h.score for h in b], expected, atol=TOL)
    if not expected:
        return
    cutoff = expected[-1]
    ids_a, ids_b = [h.id for h in a], [h.id for h in b]
    # A point in one answer and not the other must be tied with the last one kept.
    for i in set(ids_a) ^ set(ids_b):
        assert abs(truth[i] - cutoff) < TOL
    # Points in both come in the same order, except points whose scores tie.
    rank_b = {i: r for r, i in enumerate(ids_b)}
    common = [i for i in ids_a if i in rank_b]
    for x, y in zip(common, common[1:]):
        if rank_b[x] > rank_b[y]:
            assert abs(truth[x] - truth[y]) < TOL
    payloads_b = {h.id: h.payload for h in b}
    assert all(h.payload == payloads_b[h.id] for h in a if h.id in payloads_b)


def filters(rng) -> list[PointFilter | None]:
    return [None,
            PointFilter(document_ids=["doc-3"]),
            PointFilter(document_ids=[f"doc-{i}" for i in range(0, 23, 4)]),
            PointFilter(exclude_ids=[pid(i) for i in rng.choice(600, 50, replace=False)]),
            PointFilter(document_ids=["doc-5", "doc-8"], exclude_ids=[pid(5), pid(600), pid(8)]),
            PointFilter(document_ids=["no-such-document"])]


def matches(flt: PointFilter | None, i: int, payload: dict) -> bool:
    if flt is None:
        return True
    if flt.document_ids and payload["document_id"] not in flt.document_ids:
        return False
    return pid(i) not in set(flt.exclude_ids)


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_exact_search_agrees(stores, k):
    rng = np.random.default_rng(k)
    queries = [rng.normal(size=DIM) for _ in range(12)] + [stores["vectors"][5], stores["vectors"][77]]
    for flt in filters(rng):
        visible = {i: v for i, v in stores["vectors"].items() if matches(flt, i, stores["payload"][i])}
        for q in queries:
            truth = reference_scores(visible, q)
            a = stores["local"].search(COLLECTION, q, k, flt)
            b = stores["edge"].search(COLLECTION, q, k, flt)
            assert_same_hits(a, b, truth, k)


def test_ties_are_returned_as_ties(stores):
    hits = stores["edge"].search(COLLECTION, stores["vectors"][5], 2)
    assert {h.id for h in hits} == {pid(5), pid(600)} and abs(hits[0].score - hits[1].score) < TOL


def scroll_all(store, flt=None, page=37, with_vectors=False):
    rows, offset = [], None
    while True:
        batch, offset = store.scroll(COLLECTION, limit=page, offset=offset, flt=flt, with_vectors=with_vectors)
        rows += batch
        if offset is None:
            return rows


@pytest.mark.parametrize("flt_index", range(6))
def test_scroll_and_count_agree(stores, flt_index):
    flt = filters(np.random.default_rng(0))[flt_index]
    a, b = scroll_all(stores["local"], flt), scroll_all(stores["edge"], flt)
    expected = {pid(i) for i, p in stores["payload"].items() if matches(flt, i, p)}
    assert [r["id"] for r in a] == [r["id"] for r in b]  # both page in id order
    assert {r["id"] for r in a} == expected and len(a) == len(expected)
    assert [r["payload"] for r in a] == [r["payload"] for r in b]
    assert stores["local"].count(COLLECTION, flt) == stores["edge"].count(COLLECTION, flt) == len(expected)


def test_scroll_with_vectors_agrees(stores):
    a = scroll_all(stores["local"], with_vectors=True, page=100)
    b = scroll_all(stores["edge"], with_vectors=True, page=100)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    va, vb = np.asarray([r["vector"] for r in a]), np.asarray([r["vector"] for r in b])
    assert va.shape == vb.shape == (len(stores["vectors"]), DIM)
    assert np.allclose(va, vb, atol=1e-5)  # both store cosine vectors normalized


def test_info_agrees(stores):
    a, b = stores["local"].info(COLLECTION), stores["edge"].info(COLLECTION)
    assert (a.dim, a.distance, a.points) == (b.dim, b.distance, b.points) == (DIM, "Cosine", len(stores["vectors"]))
    assert (a.engine, b.engine) == ("local", "edge")
    assert stores["local"].exists(COLLECTION) and stores["edge"].exists(COLLECTION)
    assert not stores["local"].exists("other") and not stores["edge"].exists("other")
