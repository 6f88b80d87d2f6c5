"""Corpus text shown readably and inertly: a little Markdown structure kept, nothing that can link or run.

Headings, bold, italics and list bullets become plain HTML emphasis; links keep only their words; every
other character is escaped first, so a document's text can never become markup (see core.review.store's
escape_markdown for the Markdown-rendered places).
"""

from __future__ import annotations

import html
import re

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# Asterisks only: underscores are far more often part of names (snake_case, __dunder__) than emphasis.
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")


def _terms_pattern(terms: list[str]) -> re.Pattern | None:
    words = sorted({t for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return None
    # Not inside an entity (&amp;): the text is already escaped when terms are marked.
    return re.compile(r"(?<![&#])\b(" + "|".join(re.escape(html.escape(t)) for t in words) + r")", re.IGNORECASE)


def readable_html(text: str, terms: list[str] | None = None) -> str:
    """``text`` as escaped HTML with light Markdown structure and ``terms`` wrapped in <mark>."""
    marks = _terms_pattern(terms or [])
    out = []
    for line in (text or "").split("\n"):
        line = _LINK.sub(r"\1", line)  # a link's words stay, its target goes
        heading = _HEADING.match(line)
        body = heading.group(2) if heading else _BULLET.sub(r"\1• ", line)
        body = html.escape(body)
        if marks:
            body = marks.sub(r"<mark>\1</mark>", body)
        body = _BOLD.sub(r"<strong>\1</strong>", body)
        body = _ITALIC.sub(r"<em>\1</em>", body)
        if heading:
            size = {1: "1.25em", 2: "1.12em"}.get(len(heading.group(1)), "1em")
            body = f'<strong style="font-size:{size}">{body}</strong>'
        out.append(body)
    return "<div style='white-space: pre-wrap; line-height: 1.5'>" + "\n".join(out) + "</div>"
