"""Data dirs the current user may read but not write (another user's, a read-only mount, a chmod 555 copy).

Reading commands (``runs``, ``search``, ``export --out``) open such a data dir read-only: SQLite through a
``mode=ro`` URI without touching its journal mode, and the embedded vector store as a private copy (neither
Qdrant Edge nor local mode can open a folder they may not write). Writing commands refuse it up front, in one
line that names the user and the owner, instead of failing half-way with SQLite's or Qdrant's own words.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from core.config import Settings
from core.errors import DataDirReadOnlyError


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def owner_name(path: Path) -> str:
    try:
        return user_name(path.stat().st_uid)
    except OSError:
        return "unknown"


def _unwritable(settings: Settings) -> Path | None:
    """The first part of the data dir this user may not write: the folder, its database, its store folders."""
    candidates = [settings.data_path, settings.db_path, settings.edge_path, settings.qdrant_path]
    if settings.edge_path.is_dir():  # each collection's shard folder is written too
        candidates += sorted(p for p in settings.edge_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in candidates:
        if path.exists() and not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            return path
    return None


def is_read_only(settings: Settings) -> bool:
    """Whether the (existing) data dir cannot be written by this user; a missing one is not read-only."""
    return settings.data_path.is_dir() and _unwritable(settings) is not None


def read_only_message(settings: Settings, path: Path | None = None, what_to_do: str = "") -> str:
    path = path or _unwritable(settings) or settings.data_path
    part = "" if path == settings.data_path else f" ({path.name} in it belongs to {owner_name(path)})"
    return (f"The data dir {settings.data_path} is not writable by user {user_name()} (it belongs to "
            f"{owner_name(settings.data_path)}){part}: "
            + (what_to_do or f"run this as {owner_name(path)}, give {user_name()} write access, or copy the data "
                             "dir to a folder of your own and pass --data-dir (or set GROUNDWORK_DATA_DIR) to it."))


def require_writable(settings: Settings) -> None:
    """Raise DataDirReadOnlyError, in one line, for a command that writes to a data dir it may not write."""
    if settings.data_path.is_dir():
        path = _unwritable(settings)
        if path is not None:
            raise DataDirReadOnlyError(read_only_message(settings, path))
