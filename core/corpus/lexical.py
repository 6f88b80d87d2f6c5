"""Lexical search: BM25 over the SQLite FTS5 index of chunks.

Dense retrieval finds paraphrases but not identifiers: a docket number, a statute section, a product
name or an error code embeds as noise. The chunks' FTS5 index (kept by triggers since the first
migration) finds them, the same way whichever vector store holds the vectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.db import Database

# Words that carry no subject: dropping them keeps an OR query from matching every chunk.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
our out over own same she should so some such than that the their them then there these they this those through
to too under until up very was we were what when where which while who whom why will with would you your yours
tell explain say said says happen happened anything something thing things please ok okay really
""".split())

# A query token: letters/digits with inner punctuation kept (2D22-1184, 844.1, e-bike), or § and ¶ marks.
_TOKEN = re.compile(r"[^\W_](?:[\w.\-/:]*[^\W_])?", re.UNICODE)
MAX_TERMS = 32


@dataclass
class LexicalHit:
    id: str
    score: float  # BM25, higher is better (FTS5 reports it negated)
    document_id: str


def query_terms(text: str) -> list[str]:
    """The distinct searchable terms of ``text``: stopwords dropped, identifiers kept whole."""
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text or ""):
        low = token.lower()
        if low in STOPWORDS or (len(low) < 2 and not low.isdigit()):
            continue
        seen.setdefault(low, None)
        if len(seen) >= MAX_TERMS:
            break
    return list(seen)


def match_expression(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: any of the terms, each quoted (a phrase for identifiers like 2D22-1184)."""
    return " OR ".join('"' + t.replace('"', "") + '"' for t in terms if t.replace('"', ""))


def search(db: Database, collection: str, text: str, k: int, document_ids: Sequence[str] | None = None,
           exclude_ids: Sequence[str] = ()) -> list[LexicalHit]:
    """Top-k chunks of ``collection`` for ``text`` by BM25; only complete documents.

    Args:
        db: the workbench database (its ``chunks_fts`` index).
        collection: the collection to search.
        text: a natural-language query; terms are OR-ed, so rare ones (identifiers) dominate the ranking.
        k: how many hits.
        document_ids: search only these documents (None: all).
        exclude_ids: chunk ids to leave out.
    """
    terms = query_terms(text)
    if not terms or k <= 0:
        return []
    sql = ("SELECT c.id, c.document_id, -bm25(chunks_fts) AS score FROM chunks_fts "
           "JOIN chunks c ON c.rowid = chunks_fts.rowid JOIN documents d ON d.id = c.document_id "
           "WHERE chunks_fts MATCH ? AND c.collection = ? AND d.status = 'complete'")
    params: list = [match_expression(terms), collection]
    if document_ids is not None:
        if not document_ids:
            return []
        sql += f" AND c.document_id IN ({','.join('?' * len(document_ids))})"
        params += list(document_ids)
    if exclude_ids:
        sql += f" AND c.id NOT IN ({','.join('?' * len(exclude_ids))})"
        params += list(exclude_ids)
    sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
    params.append(k)
    return [LexicalHit(r["id"], float(r["score"]), r["document_id"]) for r in db.rows(sql, params)]
