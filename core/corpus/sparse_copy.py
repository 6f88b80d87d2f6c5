"""Copying a vector-store shard without filling its holes.

Qdrant preallocates its files (32 MiB WAL segments, vector chunks, payload pages) as sparse files: an indexed
sample corpus holds ~2 MiB of data in ~140 MiB of file length. ``shutil.copytree`` writes every byte, holes
included, so each copy of a shard (an index build, a read-only copy) costs the full length on disk. Here only the
data extents are copied and the length is restored with ``truncate``, so a copy costs what the original does.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

_CHUNK = 8 << 20


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) ranges holding data; the whole file where the filesystem cannot say."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, min(end, size)))
            pos = end
    except (OSError, AttributeError):  # no SEEK_DATA here (an old kernel, some network filesystems)
        return [(0, size)] if size else []
    return extents


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        n = min(_CHUNK, end - pos)
        try:
            done = os.copy_file_range(fin, fout, n, pos, pos)
        except (OSError, AttributeError):
            done = 0
        if done <= 0:  # not supported across these filesystems: read and write it
            data = os.pread(fin, n, pos)
            if not data:
                return
            done = os.pwrite(fout, data, pos)
        pos += done


def copy_sparse(src: str | os.PathLike, dst: str | os.PathLike, *, follow_symlinks: bool = True) -> str:
    """``shutil.copy2`` that keeps a sparse file sparse (usable as ``copytree``'s ``copy_function``)."""
    if not follow_symlinks and os.path.islink(src):
        return shutil.copy2(src, dst, follow_symlinks=False)
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src))
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _extents(fin.fileno(), size):
            _copy_range(fin.fileno(), fout.fileno(), start, end)
        fout.truncate(size)
    shutil.copystat(src, dst, follow_symlinks=follow_symlinks)
    return str(dst)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike,
              ignore: Callable[[str, list[str]], set[str]] | None = None) -> Path:
    """``shutil.copytree`` with :func:`copy_sparse` for the files."""
    return Path(shutil.copytree(src, dst, ignore=ignore, copy_function=copy_sparse))
