"""Copies of a vector-store shard keep its holes: a copy costs the disk the original does, not its file length."""

from __future__ import annotations

import os
from pathlib import Path

from core.corpus.sparse_copy import copy_sparse, copy_tree
from core.corpus.storehub import open_store
from tests.conftest import make_settings


def _blocks(path: Path) -> int:
    """Bytes a tree occupies on disk (st_blocks is in 512-byte units whatever the filesystem's block size)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_blocks * 512 for p in files)


def _length(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_a_sparse_file_is_copied_byte_for_byte_and_stays_sparse(tmp_path):
    src = tmp_path / "wal"
    with open(src, "wb") as f:
        f.write(b"head" * 1000)
        f.seek(16 << 20)
        f.write(b"middle")
        f.truncate(32 << 20)  # ends in a hole, as a preallocated WAL segment does
    if _blocks(src) > 4 << 20:
        import pytest

        pytest.skip("this filesystem does not keep holes")
    dst = tmp_path / "copy"
    copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_size == 32 << 20
    assert _blocks(dst) <= 2 * _blocks(src) + (64 << 10)
    assert dst.stat().st_mtime == src.stat().st_mtime  # copy2's metadata, as copytree gives


def test_plain_and_empty_files_and_a_copy_into_a_folder(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "plain").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "into").mkdir()
    copy_sparse(tmp_path / "plain", tmp_path / "into")
    copy_sparse(tmp_path / "empty", tmp_path / "empty-copy")
    assert (tmp_path / "into" / "plain").read_bytes() == data
    assert (tmp_path / "empty-copy").read_bytes() == b""


def test_an_indexed_data_dir_copies_at_its_own_size_and_still_searches(indexed_sample_dir, tmp_path, embedder):
    src_qdrant = indexed_sample_dir / "qdrant-edge"
    assert _length(src_qdrant) > 8 * _blocks(src_qdrant)  # preallocated: the case this exists for
    data = tmp_path / "data"
    copy_tree(indexed_sample_dir, data)
    assert _blocks(data / "qdrant-edge") <= 2 * _blocks(src_qdrant) + (1 << 20)
    assert _length(data / "qdrant-edge") == _length(src_qdrant)

    # The product's read-only copy (a data dir another user owns) is searched from such a copy.
    settings = make_settings(data)
    store = open_store(settings, read_only=True)
    try:
        folder = store._folder
        assert _blocks(folder) <= 2 * _blocks(src_qdrant) + (1 << 20)
        hits = store.search(settings.collection, list(embedder.encode_query("fertiliser contract")), 3)
        assert len(hits) == 3
    finally:
        store.close()
    assert not folder.exists()
