"""Identifiers in an answer (case names, dockets, statute sections, dates, amounts) checked against its passages."""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


from core.quality.sentences import Sentence, _SENTENCE_STARTERS, sentence_kind, split_sentences
from core.quality.lexical import _MULTIPLIERS, _QUANTITY, _compounds, _decimal_key


# Atomic: a word never matches a shorter prefix of itself (so "Okafor v." cannot become "Okafo" + "r v.").
_CAP_WORD = r"(?<![\w'’&\-])(?:(?:[A-Z]\.){1,4}|[A-Z][A-Za-z'’&\-]*(?![A-Za-z'’&\-]))"
_LINK = r"(?:of|and|the|for|de|del|la|le|du|van|von|der|ex\s+rel\.|&)"
_CORP = r"(?:,?\s+(?:Inc|LLC|L\.L\.C|LP|L\.P|LLP|Co|Corp|Ltd|N\.A|P\.C|PLLC|P\.A)\b\.?)*"
_PARTY_1 = rf"{_CAP_WORD}(?:\s+(?:{_LINK}\s+)*{_CAP_WORD})*{_CORP}"
# The second party must not swallow the first party of a following case ("Whitaker and Okafor v. …").
_NOT_NEXT_PARTY = r"(?!\s+vs?\.\s)(?!,?\s+(?:Inc|LLC|Co|Corp)\b\.?\s+vs?\.\s)"
_PARTY_2 = rf"{_CAP_WORD}(?:\s+(?:{_LINK}\s+)*{_CAP_WORD}{_NOT_NEXT_PARTY})*{_CORP}"
_CASE_V = re.compile(rf"(?P<p1>{_PARTY_1})\s+vs?\.\s+(?P<p2>{_PARTY_2})")
_CASE_RE = re.compile(rf"\b(?P<prefix>In\s+re|Ex\s+parte|In\s+the\s+Matter\s+of|Matter\s+of)\s+(?P<p>{_PARTY_2})")
# Capitalised only because they start a sentence or clause: not part of a party's name.
_LEADING_WORDS = frozenset("""
in see under like unlike both the but and as per cf also compare following citing applying relying because
while whereas although here then thus so accordingly after before since when similarly likewise only even
whether neither nor or yes no moreover however further finally first second third notably next instead given
if distinguishing contrast by from with under
""".split())
_CORP_TOKENS = frozenset("inc llc lp llp co corp ltd na pc pllc pa the company corporation incorporated".split())

_DOCKET_AFTER_NO = re.compile(r"\b(?P<label>(?:Case|Docket|Civil|Criminal)\s+Nos?\.?|Nos?\.)[\s*:]*"
                              r"(?P<id>[A-Za-z0-9]+(?:[-:][A-Za-z0-9]+)+)", re.IGNORECASE)
_DOCKET_BARE = re.compile(r"(?<![\w\-])(?:\d{1,2}:\d{2}-[A-Za-z]{2,4}-\d{3,6}(?:-[A-Za-z]{1,4})?"
                          r"|\d{2}-[A-Z]{2,4}-\d{3,6}|[A-Z]{1,3}-\d{2}-\d{3,6}|\d[A-Z]\d{2}-\d{3,6})(?![\w\-])")

# Never a prefix of a longer token: "2:21-cv-01433" after "Sections 11.2 through 11.4, and" is a docket.
_SEC_NUM = r"\d+[A-Za-z]?(?:[.\-:]\d+[A-Za-z]?)*(?:\([A-Za-z0-9]{1,4}\))*(?![\w\-:]|\.\w)"
_STATUTE = re.compile(
    rf"(?P<marker>§§?|\b[Ss]ections?\b|\b[Ss]ecs?\.|\bRule\b)\s*(?P<first>{_SEC_NUM})"
    rf"(?P<more>(?:\s*(?:,\s*(?:and|or)?|and|or|through|to|–|—)\s*(?:§§?\s*)?{_SEC_NUM})*)")
_SEC_PART = re.compile(_SEC_NUM)
_CODE_NAME = re.compile(r"((?:(?:[A-Z][A-Za-z]*\.?|of|and)\s+){1,6})$")

_MONTHS = {"january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7, "august": 8,
           "september": 9, "october": 10, "november": 11, "december": 12, "jan": 1, "feb": 2, "mar": 3, "apr": 4,
           "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12}
_MONTH = r"(?P<month>January|February|March|April|May|June|July|August|September|October|November|December|" \
         r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?"
_DATES = [
    re.compile(rf"\b{_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<year>(?:19|20)\d{{2}})\b"),
    re.compile(rf"\b(?P<day>\d{{1,2}})\s+{_MONTH},?\s+(?P<year>(?:19|20)\d{{2}})\b"),
    re.compile(r"\b(?P<year>(?:19|20)\d{2})-(?P<mnum>\d{2})-(?P<day>\d{2})\b"),
    re.compile(r"\b(?P<mnum>\d{1,2})/(?P<day>\d{1,2})/(?P<year>(?:19|20)\d{2})\b"),
    re.compile(rf"\b{_MONTH}\s+(?P<year>(?:19|20)\d{{2}})\b"),
    re.compile(rf"\b{_MONTH}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?!,?\s*\d)"),
]
_AMOUNT = re.compile(
    r"\$\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?(?:\s*(?P<mult>million|billion|thousand)\b)?"
    r"|(?P<int2>\d{1,3}(?:,\d{3})+|\d+)(?P<dec2>\.\d+)?\s*(?P<mult2>million|billion|thousand)?\s*"
    r"(?:dollars|USD)\b", re.IGNORECASE)

IDENTIFIER_TYPES = ("case", "docket", "statute", "date", "amount")


@dataclass
class Identifier:
    """A citation-like identifier found in a text: ``key`` is its normalised form, used for matching."""

    type: str  # case | docket | statute | date | amount
    text: str  # as written
    key: Any
    start: int
    end: int

    @property
    def normalized(self) -> str:
        k = self.key
        if self.type == "case":
            return " v. ".join(" ".join(p) for p in k[1:]) if k[0] == "v" else f"{k[0]} {' '.join(k[1])}"
        if self.type == "statute":
            base = k[0].replace("rule ", "Rule ") if k[0].startswith("rule ") else "§ " + k[0]
            return base + "".join(f"({s})" for s in k[1])
        if self.type == "date":
            year, month, day = k
            return (str(year) if year else "-") + f"-{month:02d}" + (f"-{day:02d}" if day else "")
        if self.type == "amount":
            return "$" + k
        return str(k)


def _party_tokens(name: str) -> tuple[str, ...]:
    name = name.replace("&", " and ").replace(".", "").replace("’", "'").lower()
    return tuple(t for t in re.findall(r"[a-z0-9']+", name) if t not in _CORP_TOKENS)


def _strip_leading(party: str) -> str:
    words = party.split()
    while len(words) > 1 and words[0].lower().rstrip(",") in _LEADING_WORDS:
        words.pop(0)
    return " ".join(words)


def _cut_at_sentence_start(party: str) -> str:
    """An initial ending a party ("M.R.") can run into the next sentence: cut at "M.R. The"."""
    m = re.search(r"\.\s+([A-Z][a-z]+)", party)
    if m and m.group(1).lower() in _SENTENCE_STARTERS | _LEADING_WORDS:
        return party[: m.start() + 1]
    return party


def _trim_period(text: str, end: int) -> tuple[str, int]:
    """Drop a sentence's closing period from a name, but keep the one of "Inc." / "Co."."""
    if text.endswith(".") and not re.search(r"(?:\b(?:Inc|Co|Corp|Ltd|L\.P|L\.L\.C|N\.A|P\.C|P\.A)|\b[A-Z])\.$", text):
        return text[:-1], end - 1
    return text, end


def _extract_cases(text: str) -> list[Identifier]:
    found = []
    for m in _CASE_RE.finditer(text):
        party = _cut_at_sentence_start(m.group("p"))
        raw, end = _trim_period(text[m.start():m.start("p") + len(party)], m.start("p") + len(party))
        prefix = " ".join(m.group("prefix").lower().split())
        tokens = _party_tokens(party)
        if tokens:
            found.append(Identifier("case", raw, (prefix, tokens), m.start(), end))
    taken = [(i.start, i.end) for i in found]
    for m in _CASE_V.finditer(text):
        p1 = _strip_leading(m.group("p1"))
        start = m.start("p1") + (len(m.group("p1")) - len(p1))
        if any(s <= start < e for s, e in taken):
            continue
        p2 = _cut_at_sentence_start(m.group("p2"))
        end = m.start("p2") + len(p2)
        if text[end:end + 1] == "." and re.search(r"\b(?:Inc|Co|Corp|Ltd)$", p2):
            end += 1  # "Halvorsen Manufacturing Co." keeps its period
        raw, end = _trim_period(text[start:end], end)
        t1, t2 = _party_tokens(p1), _party_tokens(p2)
        if t1 and t2:
            found.append(Identifier("case", raw, ("v", t1, t2), start, end))
    return found


def _extract_dockets(text: str) -> list[Identifier]:
    found: dict[int, Identifier] = {}
    for m in _DOCKET_AFTER_NO.finditer(text):
        ident = m.group("id")
        if not any(ch.isdigit() for ch in ident) or _QUANTITY.fullmatch(ident):
            continue
        found[m.start("id")] = Identifier("docket", ident, ident.upper(), m.start("id"), m.end("id"))
    for m in _DOCKET_BARE.finditer(text):
        if m.start() not in found:
            found[m.start()] = Identifier("docket", m.group(0), m.group(0).upper(), m.start(), m.end())
    return list(found.values())


def _section_key(number: str, rule: bool = False) -> tuple[str, tuple[str, ...]]:
    base = ("rule " if rule else "") + number.split("(", 1)[0].lower()
    return base, tuple(s.lower() for s in re.findall(r"\(([A-Za-z0-9]{1,4})\)", number))


def _extract_statutes(text: str) -> list[Identifier]:
    found = []
    for m in _STATUTE.finditer(text):
        code = _CODE_NAME.search(text[max(0, m.start() - 60):m.start()])
        prefix = ""
        if code and m.group("marker").startswith("§"):
            words = code.group(1).split()
            while words and words[0].lower() in _LEADING_WORDS:
                words.pop(0)
            prefix = " ".join(words) + " " if words else ""
        parts = [(m.start("first"), m.end("first"))]
        more = m.group("more")
        if more:
            offset = m.start("more")
            parts += [(offset + p.start(), offset + p.end()) for p in _SEC_PART.finditer(more)]
        for i, (s, e) in enumerate(parts):
            number = text[s:e]
            marker = "§" if m.group("marker").startswith("§") else m.group("marker").rstrip("s")
            marker = "Section" if marker.lower() in ("section", "sec.", "secs.") else marker
            label = (prefix + text[m.start():e]) if i == 0 else f"{marker} {number}"
            start = m.start() - len(prefix) if i == 0 else s
            found.append(Identifier("statute", label, _section_key(number, marker == "Rule"), start, e))
    return found


def _extract_dates(text: str) -> list[Identifier]:
    found: list[Identifier] = []
    for pattern in _DATES:
        for m in pattern.finditer(text):
            if any(i.start <= m.start() < i.end or m.start() <= i.start < m.end() for i in found):
                continue  # a fuller pattern already took it ("May 3, 2021" before "May 3")
            groups = m.groupdict()
            month = _MONTHS[groups["month"].lower()] if groups.get("month") else int(groups["mnum"])
            day = int(groups["day"]) if groups.get("day") else None
            year = int(groups["year"]) if groups.get("year") else None
            if not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
                continue
            found.append(Identifier("date", m.group(0), (year, month, day), m.start(), m.end()))
    return found


def _extract_amounts(text: str) -> list[Identifier]:
    found = []
    for m in _AMOUNT.finditer(text):
        digits = (m.group("int") or m.group("int2")).replace(",", "")
        mult = m.group("mult") or m.group("mult2")
        try:
            value = Decimal(digits + (m.group("dec") or m.group("dec2") or ""))
        except InvalidOperation:
            continue
        if mult:
            value *= _MULTIPLIERS[mult.lower()]
        found.append(Identifier("amount", m.group(0).strip(), _decimal_key(value), m.start(), m.end()))
    return found


def extract_identifiers(text: str) -> list[Identifier]:
    """Case names, docket numbers, statute sections, dates and dollar amounts in ``text``, in order.

    Each carries a normalised ``key`` so that "Section 44-212(c)" matches "§ 44-212(c)", "$1.1 million"
    matches "$1,100,000", "Mar. 14, 2023" matches "March 14, 2023" and "Linden Park Apartments"
    matches "Linden Park Apartments, Inc.".
    """
    found = (_extract_cases(text) + _extract_dockets(text) + _extract_statutes(text) + _extract_dates(text)
             + _extract_amounts(text))
    return sorted(found, key=lambda i: (i.start, IDENTIFIER_TYPES.index(i.type)))


@lru_cache(maxsize=4096)
def _pool_entries(text: str) -> tuple[tuple[Identifier, ...], frozenset[str]]:
    """A passage's identifiers and docket-like tokens, memoised: a conversation's passages recur at every turn
    (as earlier passages) and across conversations that retrieve the same chunks."""
    # Any compound token counts as a docket number: headers write "Docket No.:** 23-CV-0652".
    return tuple(extract_identifiers(text)), frozenset(m.group(0).upper() for m in _compounds(text))


class IdentifierPool:
    """The identifiers of a set of texts (a turn's passages), answering "does this one appear there?"."""

    def __init__(self, texts: Iterable[str]):
        self.cases: list[tuple] = []
        self.dockets: set[str] = set()
        self.statutes: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        self.dates: list[tuple[int | None, int, int | None]] = []
        self.amounts: set[str] = set()
        for text in texts:
            if not text:
                continue
            idents, dockets = _pool_entries(text)
            for ident in idents:
                if ident.type == "case":
                    self.cases.append(ident.key)
                elif ident.type == "statute":
                    self.statutes[ident.key[0]].append(ident.key[1])
                elif ident.type == "date":
                    self.dates.append(ident.key)
                elif ident.type == "amount":
                    self.amounts.add(ident.key)
            self.dockets.update(dockets)

    def contains(self, ident: Identifier) -> bool:
        if ident.type == "docket":
            return ident.key in self.dockets
        if ident.type == "amount":
            return ident.key in self.amounts
        if ident.type == "statute":
            base, subsections = ident.key
            # "§ 44-212" is supported by "§ 44-212(c)"; "§ 1950.5(g)(2)" is not supported by "§ 1950.5(g)".
            return any(subs[:len(subsections)] == subsections for subs in self.statutes.get(base, ()))
        if ident.type == "date":
            return any(_date_compatible(ident.key, d) for d in self.dates)
        if ident.type == "case":
            return any(_case_compatible(ident.key, c) for c in self.cases)
        return False


def _date_compatible(a: tuple, b: tuple) -> bool:
    """"May 3" and "May 2021" are supported by "May 3, 2021"; "May 3, 2021" is not supported by "May 2021"."""
    return all(x is None or x == y for x, y in zip(a, b))


def _prefix_compatible(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """A short form names the same party as the full one: "Castellan" ~ "Castellan Realty Group"."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def _case_compatible(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "v":
        return _prefix_compatible(a[1], b[1]) and _prefix_compatible(a[2], b[2])
    return _prefix_compatible(a[1], b[1])


@dataclass
class CitationFlag:
    """An identifier in an answer that appears in none of the turn's passages."""

    type: str
    text: str
    normalized: str
    sentence: str
    start: int  # span in the answer
    end: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_citations(answer: str, passages: Sequence[dict[str, Any]], context: Sequence[str] = ()) -> list[CitationFlag]:
    """Identifiers in ``answer`` that appear in none of ``passages`` (nor in ``context``).

    Args:
        answer: the assistant's reply.
        passages: that turn's retrieved passages (dicts with ``text`` and optionally ``title``).
        context: other texts an identifier may legitimately come from — the user's own messages
            (a user who says "my deposit was $3,000" is not quoting an invented amount).

    Returns:
        One flag per unsupported identifier, with its type, the text as written, its normalised
        form and the sentence it is in. Identifiers inside sentences that say what the passages
        lack ("The passages do not mention State v. Brennan") are not flagged.
    """
    pool = IdentifierPool(_source_texts(passages, context))
    return _citation_flags(answer, split_sentences(answer), pool)


def _source_texts(passages: Sequence[dict[str, Any]], context: Sequence[str]) -> list[str]:
    texts = []
    for p in passages:
        # The respondent sees each passage's id, title and path and may cite them ("id=…", the title).
        texts += [p.get("text") or "", p.get("title") or "", str(p.get("id") or ""), p.get("source_path") or ""]
    return texts + [c for c in context if c]


def _citation_flags(answer: str, sentences: list[Sentence], pool: IdentifierPool) -> list[CitationFlag]:
    flags = []
    for ident in extract_identifiers(answer):
        if pool.contains(ident):
            continue
        sentence = next((s for s in sentences if s.start <= ident.start < s.end), None)
        if sentence is not None and sentence_kind(sentence.text) == "abstention":
            continue
        flags.append(CitationFlag(ident.type, ident.text, ident.normalized, sentence.text if sentence else "",
                                  ident.start, ident.end))
    return flags
