"""Finding a quoted span in a passage, forgiving what copying changes (case, quotes, whitespace, markdown)."""

from __future__ import annotations

import re
from functools import lru_cache

_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-", "\u00a0": " "})
_ELLIPSIS = re.compile(r"\s*(?:\.\.\.|…|\[\.\.\.\])\s*")


@lru_cache(maxsize=2048)  # a passage is normalised once, not once for every quote looked for in it
def _normalise(text: str) -> tuple[str, tuple[int, ...]]:
    """Lower case, straight quotes, markdown emphasis dropped, whitespace collapsed; with a map from each
    character of the result back to its position in ``text``."""
    out: list[str] = []
    where: list[int] = []
    prev_space = True
    i = 0
    translated = text.translate(_QUOTES)
    while i < len(translated):
        ch = translated[i]
        if translated.startswith("**", i) or translated.startswith("__", i) or ch == "`":
            i += 2 if ch in "*_" else 1
            continue
        if ch.isspace():
            if not prev_space:
                out.append(" ")
                where.append(i)
            prev_space = True
        else:
            out.append(ch.lower())
            where.append(i)
            prev_space = False
        i += 1
    while out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), tuple(where)


def locate(quote: str, passage: str) -> str | None:
    """The span of ``passage`` that ``quote`` copies (case, quotes, whitespace and an elided middle ("…")
    forgiven), exactly as the passage has it; None when the passage does not contain it."""
    pieces = [p.strip(" \"'.,;:") for p in _ELLIPSIS.split(quote.translate(_QUOTES))]
    pieces = [_normalise(p)[0] for p in pieces if p.strip(" \"'.,;:")]
    if not pieces or sum(len(p) for p in pieces) < 8:  # a word or two proves nothing
        return None
    norm, where = _normalise(passage)
    start = norm.find(pieces[0])
    if start < 0:
        return None
    end = start + len(pieces[0])
    for piece in pieces[1:]:
        at = norm.find(piece, end)
        if at < 0 or at - end > 400:
            return None
        end = at + len(piece)
    return passage[where[start]:where[end - 1] + 1]
