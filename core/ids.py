"""Stable ids for documents and chunks: the same input always gives the same id, on any machine."""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from pathlib import PurePosixPath


def _digest(*parts: str) -> bytes:
    """SHA-256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") never collide."""
    digest = hashlib.sha256()
    for part in parts:
        # surrogatepass: text decoded from JSON may hold lone surrogates; it must still hash, not raise.
        data = part.encode("utf-8", "surrogatepass")
        digest.update(f"{len(data)}:".encode("ascii"))
        digest.update(data)
    return digest.digest()


def normalise_source(source_path: str) -> str:
    """Spell a relative source path the same way on every OS.

    Args:
        source_path: A path relative to the loaded folder, or an upload's name.

    Returns:
        The path with forward slashes, NFC Unicode, and no leading ``./``.
    """
    posix = unicodedata.normalize("NFC", source_path.replace("\\", "/"))
    return str(PurePosixPath(posix)).removeprefix("./") if posix else ""


def document_id(collection: str, source_path: str, text: str) -> str:
    """Id of one document in one collection.

    The id changes when the text changes, so an edited file is re-indexed rather than mistaken
    for the old one; it does not depend on where the corpus folder sits on disk.

    Args:
        collection: The vector store collection the document belongs to.
        source_path: The document's path relative to the loaded folder (or the upload's name).
        text: The document's full text.

    Returns:
        The first 32 hex digits of a SHA-256.
    """
    return _digest(collection, normalise_source(source_path), text).hex()[:32]


def chunk_id(document_id: str, position: int, text: str) -> str:
    """Id of one chunk, usable as a Qdrant point id (which must be an unsigned int or a UUID).

    The document id and position are part of the hash, so the same boilerplate paragraph in two
    documents (or twice in one) still gives two points.

    Args:
        document_id: The id of the chunk's document, from :func:`document_id`.
        position: The chunk's 0-based position in its document.
        text: The chunk's text.

    Returns:
        A UUID string derived from SHA-256 (version bits set to 5, as for name-based UUIDs).
    """
    return str(uuid.UUID(bytes=_digest(document_id, str(position), text)[:16], version=5))


def content_hash(text: str) -> str:
    """Hash of a text alone, to find exact duplicates whatever their source.

    Args:
        text: Any text.

    Returns:
        The full SHA-256 hex digest of the UTF-8 text.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
