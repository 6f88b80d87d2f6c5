"""The user's say over the corpus: delete documents, tag them, and select some of them for a run.

A selection names documents by id, by source path, by folder (every document under it) or by a glob on
the source path, and by tag. A run stores the names, not the ids, in its recipe and resolves them when it
starts, so a resume draws from the same folder and tags however the corpus changed in between.

Deleting a document removes its chunks from the vector store, then its rows (the chunks' and documents'
full-text rows go with them through their triggers). Conversations keep the passages they quoted: each
stored turn holds its passages' text, not a reference that would break.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

from core.db import now
from core.errors import ValidationError

TAG_MAX_CHARS = 60


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 document``, ``2 documents``: counts the user reads never say "1 documents"."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def _clean_tag(tag: str) -> str:
    tag = " ".join(str(tag).split())
    if not tag:
        raise ValidationError("A tag cannot be empty: type a word or two (e.g. 'contracts').")
    if len(tag) > TAG_MAX_CHARS:
        raise ValidationError(f"Tag {tag[:20]!r}… is {len(tag)} characters long: keep tags under {TAG_MAX_CHARS}.")
    return tag


def list_documents(corpus, limit: int = 50, offset: int = 0, search: str = "", folder: str = "",
                   tag: str = "") -> list[dict[str, Any]]:
    """One page of documents with their tags, optionally within a folder, carrying a tag, or matching words."""
    where, params = _where(corpus, folder, tag)
    tags = "(SELECT group_concat(tag, ', ') FROM (SELECT tag FROM document_tags t WHERE t.document_id=d.id " \
           "ORDER BY tag)) AS tags"
    cols = f"d.id, d.title, d.source_path, d.n_chars, d.n_chunks, d.status, {tags}"
    if search.strip():
        from core.db import fts_query

        return corpus.db.rows(f"SELECT {cols} FROM documents d JOIN documents_fts f ON f.rowid = d.rowid "
                              f"WHERE documents_fts MATCH ? AND {' AND '.join(where)} ORDER BY rank LIMIT ? OFFSET ?",
                              [fts_query(search), *params, limit, offset])
    return corpus.db.rows(f"SELECT {cols} FROM documents d WHERE {' AND '.join(where)} ORDER BY d.source_path "
                          "LIMIT ? OFFSET ?", [*params, limit, offset])


def _where(corpus, folder: str, tag: str) -> tuple[list[str], list[Any]]:
    """SQL conditions (on ``documents d``) for this collection, optionally within a folder or carrying a tag."""
    where, params = ["d.collection=?"], [corpus.collection]
    if folder:
        where.append("(d.source_path = ? OR d.source_path LIKE ? ESCAPE '\\')")
        params += [folder, _like_prefix(folder.rstrip("/") + "/")]
    if tag:
        where.append("EXISTS (SELECT 1 FROM document_tags t WHERE t.document_id=d.id AND t.tag=?)")
        params.append(tag)
    return where, params


def count_documents(corpus, folder: str = "", tag: str = "") -> int:
    where, params = _where(corpus, folder, tag)
    return corpus.db.scalar(f"SELECT COUNT(*) FROM documents d WHERE {' AND '.join(where)}", params) or 0


def folders(corpus) -> list[str]:
    """Every folder that holds documents (nested ones too), for selecting by source."""
    out: set[str] = set()
    for row in corpus.db.rows("SELECT DISTINCT source_path FROM documents WHERE collection=?", [corpus.collection]):
        parts = row["source_path"].split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


def tag_counts(corpus) -> dict[str, int]:
    rows = corpus.db.rows("SELECT t.tag, COUNT(*) AS n FROM document_tags t JOIN documents d ON d.id=t.document_id "
                          "WHERE d.collection=? GROUP BY t.tag ORDER BY t.tag", [corpus.collection])
    return {r["tag"]: r["n"] for r in rows}


def tag_documents(corpus, document_ids: Iterable[str], tag: str) -> int:
    """Put ``tag`` on the documents; returns how many did not carry it yet."""
    tag, ids = _clean_tag(tag), list(dict.fromkeys(document_ids))
    _check_known(corpus, ids)
    with corpus.db.write() as w:
        before = w.execute("SELECT COUNT(*) FROM document_tags WHERE tag=?", [tag]).fetchone()[0]
        w["document_tags"].insert_all([{"document_id": i, "tag": tag, "created_at": now()} for i in ids],
                                      ignore=True)
        return w.execute("SELECT COUNT(*) FROM document_tags WHERE tag=?", [tag]).fetchone()[0] - before


def untag_documents(corpus, document_ids: Iterable[str], tag: str) -> int:
    ids = list(dict.fromkeys(document_ids))
    with corpus.db.write() as w:
        return sum(w.execute("DELETE FROM document_tags WHERE document_id=? AND tag=?", [i, tag]).rowcount for i in ids)


def delete_documents(corpus, document_ids: Iterable[str]) -> dict[str, int]:
    """Delete documents: their vectors first, then their chunks, tags and rows (full-text rows by trigger).

    The vectors go first: a failure after that leaves rows whose vectors are gone, and deleting again
    finishes the job (deleting absent points is harmless), whereas the other order could leave vectors
    that search would still return for a document no longer listed.

    Returns:
        ``{"documents": n, "chunks": m}`` deleted.
    """
    ids = list(dict.fromkeys(document_ids))
    if not ids:
        return {"documents": 0, "chunks": 0}
    _check_known(corpus, ids)
    marks = ",".join("?" * len(ids))
    chunk_ids = [r["id"] for r in corpus.db.rows(f"SELECT id FROM chunks WHERE document_id IN ({marks})", ids)]
    with corpus.stores.use() as store:
        if chunk_ids and store.exists(corpus.collection):
            for start in range(0, len(chunk_ids), 1000):
                store.delete(corpus.collection, chunk_ids[start:start + 1000])
    with corpus.db.write() as w:
        w.execute(f"DELETE FROM document_tags WHERE document_id IN ({marks})", ids)
        w.execute(f"DELETE FROM chunks WHERE document_id IN ({marks})", ids)
        deleted = w.execute(f"DELETE FROM documents WHERE id IN ({marks})", ids).rowcount
    return {"documents": deleted, "chunks": len(chunk_ids)}


def _check_known(corpus, ids: Sequence[str]) -> None:
    if not ids:
        raise ValidationError("No documents chosen: tick one or more rows first.")
    marks = ",".join("?" * len(ids))
    known = {r["id"] for r in corpus.db.rows(f"SELECT id FROM documents WHERE collection=? AND id IN ({marks})",
                                             [corpus.collection, *ids])}
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValidationError(f"Document {missing[0]} is not in collection {corpus.collection!r} (deleted meanwhile?): "
                              "reload the list.")


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def select_documents(db, collection: str, names: Sequence[str] = (), tags: Sequence[str] = ()) -> list[str] | None:
    """The ids of the documents a run may draw briefings from; None when nothing narrows the corpus.

    Args:
        names: document ids, source paths, folders (every document under them) or globs on the source path
            (``contracts/*.md``); a document matching any name is selected.
        tags: tags; a document carrying any of them is selected (with names too: either kind selects).

    Raises:
        ValidationError: a name or tag that matches no indexed document (say which, and where to look).
    """
    names = [n.strip() for n in names if n and n.strip()]
    tags = [t.strip() for t in tags if t and t.strip()]
    if not names and not tags:
        return None
    docs = db.rows("SELECT id, source_path FROM documents WHERE collection=? AND status='complete'", [collection])
    chosen: set[str] = set()
    for name in names:
        folder = name.rstrip("/") + "/"
        hits = {d["id"] for d in docs if d["id"] == name or d["source_path"] == name
                or d["source_path"].startswith(folder) or fnmatch.fnmatchcase(d["source_path"], name)}
        if not hits:
            raise ValidationError(f"--documents {name!r} matches no indexed document in collection {collection!r}: "
                                  "give a document id, a source path, a folder or a glob as the Corpus page lists "
                                  "them.")
        chosen |= hits
    complete = {d["id"] for d in docs}
    for tag in tags:
        hits = {r["document_id"] for r in db.rows("SELECT document_id FROM document_tags WHERE tag=?", [tag])} & complete
        if not hits:
            known = sorted({r["tag"] for r in db.rows("SELECT DISTINCT tag FROM document_tags")})
            raise ValidationError(f"--tag {tag!r} is on no indexed document: tag documents on the Corpus page"
                                  + (f" (tags in use: {', '.join(known[:10])})." if known else " first."))
        chosen |= hits
    return sorted(chosen)


def selection_summary(db, collection: str, names: Sequence[str] = (), tags: Sequence[str] = ()) -> str:
    """One line for a page: what a run's selection draws briefings from."""
    ids = select_documents(db, collection, names, tags)
    if ids is None:
        return "Briefings come from every indexed document."
    chunks = db.scalar(f"SELECT COALESCE(SUM(n_chunks),0) FROM documents WHERE id IN ({','.join('?' * len(ids))})",
                       ids) if ids else 0
    return f"Briefings come from {plural(len(ids), 'document')} ({plural(chunks, 'chunk')}) only."
