"""Data quality without an LLM: per-turn grounding, citation checks, near-duplicates and corpus coverage.

Everything here runs on the embedding model the workbench already has loaded plus cheap lexical
rules, so it works offline and is fast enough to score every conversation of a run:

- grounding: each answer sentence is compared with sentence windows of the passages retrieved for
  *that* turn (embedding similarity), and with the passages' words, numbers and names (a changed
  amount or party keeps a high similarity, so the lexical side is what catches it);
- citations: case names, docket numbers, statute sections, dates and amounts in an answer that
  appear in none of the turn's passages (in legal data an invented citation is the worst defect);
- near-duplicates: question and conversation embeddings, compared blockwise, clustered;
- coverage: which documents were sampled for briefings and which were retrieved.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from core.db import Database, dumps, loads, now
from core.embeddings import Embedder
from core.errors import NotFoundError, ValidationError

ProgressFn = Callable[[int, int], None]

# Stored with every result so scores computed by an older method can be found and recomputed.
GROUNDING_METHOD = "sentence-windows-v1"

# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

# Tokens that end with a period without ending a sentence ("v.", "No.", "Civ.", "Inc.", "Sept.").
_ABBREVIATIONS = frozenset("""
v vs no nos civ crim proc stat stats rev ann gen pen lab fam bus prof ins gov govt pub admin evid
inc corp co ltd llc llp lp bros assn dept mfg intl natl
mr mrs ms dr hon jr sr st ave blvd mt ft
ct app dist cir supp super sup fed cal colum rptr
r p pp para paras sec secs art arts ch cl subd subds cf id ibid al approx est fig vol ed op cert
jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
# Abbreviations that also end sentences ("... Castellan Realty Group, Inc. The court held ...").
_MAY_END_SENTENCE = frozenset("no inc corp co ltd llc llp lp bros dist app cir supp ct stat jr sr al est approx "
                              "u.s".split())
_SENTENCE_STARTERS = frozenset("""
the this that these those it its he she they their his her we our you your i in on at under because
however but so a an as after before when although though if for both each neither there here while
since thus accordingly finally also then next first second third moreover further instead only
""".split())

_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
_LINE_MARKER = re.compile(r"[ \t]*(?:>[ \t]*)?(?:#{1,6}[ \t]+|[-*•+][ \t]+|\d{1,3}[.)][ \t]+)?")
_WORD_BEFORE_PERIOD = re.compile(r"([A-Za-z][A-Za-z.'’]*)$")
_MARKDOWN = re.compile(r"\*\*|__|`")


@dataclass
class Sentence:
    """One sentence of a text: ``text`` is cleaned of markdown; ``start:end`` is its span in the original."""

    text: str
    start: int
    end: int


def split_sentences(text: str) -> list[Sentence]:
    """Split prose into sentences, robust to legal abbreviations and citations.

    "Okafor v. Linden Park Apartments, Inc., No. 2D22-1184 (Colum. Ct. App. Mar. 14, 2023)",
    "§ 1950.5(b)" and "U.S. District Court" stay inside one sentence; list items, headings and
    lines each start a new one (a line starting in lower case continues the previous line).

    Args:
        text: an answer or a passage (plain text or light markdown).

    Returns:
        The sentences in order, with their character spans in ``text`` for highlighting.
    """
    sentences: list[Sentence] = []
    for start, end in _blocks(text):
        for s, e in _split_block(text, start, end):
            clean = " ".join(_MARKDOWN.sub("", text[s:e]).split())
            if clean and any(ch.isalnum() for ch in clean):
                sentences.append(Sentence(clean, s, e))
    return sentences


def _blocks(text: str) -> list[tuple[int, int]]:
    """Lines without their list/heading markers; soft-wrapped lines (next starts lower case) are joined."""
    blocks: list[list[int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        line_start, pos = pos, pos + len(line)
        body = line.rstrip("\r\n")
        if not body.strip():
            blocks.append([])  # a blank line closes the block
            continue
        marker = _LINE_MARKER.match(body)
        start = line_start + (marker.end() if marker else 0)
        end = line_start + len(body.rstrip())
        if start >= end:
            continue
        first = text[start]
        if blocks and blocks[-1] and not marker.group(0).strip() and first.islower():
            blocks[-1][1] = end
        else:
            blocks.append([start, end])
    return [(b[0], b[1]) for b in blocks if b]


def _split_block(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [start]
    for m in _BOUNDARY.finditer(text, start, end):
        nxt = m.end()
        while nxt < end and text[nxt].isspace():
            nxt += 1
        if nxt >= end:
            continue
        first = text[nxt]
        if not (first.isupper() or first.isdigit() or first in "\"“‘'([§$"):
            continue
        if _open_parenthesis(text, cuts[-1], m.start(), end):
            continue
        if m.group(0).startswith(".") and not _period_ends_sentence(text, cuts[-1], m.start(), nxt, end):
            continue
        cuts.append(m.end())
    cuts.append(end)
    spans = []
    for s, e in zip(cuts, cuts[1:]):
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            spans.append((s, e))
    return spans


def _open_parenthesis(text: str, sentence_start: int, at: int, end: int) -> bool:
    """Inside "( ... )" — unless the parenthesis never closes (then it cannot hold the sentence back)."""
    before = text[sentence_start:at]
    depth = before.count("(") - before.count(")")
    return depth > 0 and ")" in text[at:end]


def _period_ends_sentence(text: str, sentence_start: int, period_at: int, next_at: int, end: int) -> bool:
    m = _WORD_BEFORE_PERIOD.search(text[sentence_start:period_at])
    if not m:
        return True  # "… § 1950.5(b). The", "… 23-CV-0652. The"
    word = m.group(1)
    lower = word.lower().rstrip(".")
    next_word = re.match(r"[A-Za-z]+", text[next_at:end])
    starts_sentence = bool(next_word) and next_word.group(0).lower() in _SENTENCE_STARTERS
    if len(lower) == 1 and word[0].isupper():
        return False  # an initial: "Helena V. Ruiz", "M. R."
    if "." in lower or lower in _ABBREVIATIONS:  # "U.S", "e.g" or a listed abbreviation
        return lower in _MAY_END_SENTENCE and starts_sentence
    return True


# ---------------------------------------------------------------------------------------------
# Sentences that make no claim: abstentions ("the passages do not say …") and boilerplate
# ---------------------------------------------------------------------------------------------

_SOURCE = (r"(?:passages?|excerpts?|opinions?|sources?|materials?|documents?|summary|summaries|context|"
           r"provided\s+(?:text|cases?|information)|information\s+(?:provided|given|available)|"
           r"retrieved\s+\w+|case\s+law\s+provided|cases?\s+provided|record\s+provided)")
_REPORTING_VERB = (r"(?:say|state|mention|address|specify|indicate|discuss|include|contain|provide|reveal|"
                   r"explain|describe|cover|tell|show|identify|answer|give|disclose|report|note|detail|"
                   r"clarify|list|set\s+out|go\s+into)")
# Up to three words between the source and its verb ("the excerpts I was given do not say"), but not a
# clause boundary: "the opinions held that the landlord did not provide notice" is a claim about the case.
_BETWEEN = r"(?:\s+(?!(?:that|which|who|when|where|because|and|but|if)\b)[\w'’,-]+){0,3}?"
_ABSTENTION = re.compile(
    rf"\b{_SOURCE}\b{_BETWEEN}\s+(?:do|does|did)\s*(?:not|n['’]t)\s+{_REPORTING_VERB}"
    rf"|\b{_SOURCE}\b{_BETWEEN}\s+(?:is|are)\s+silent\b"
    rf"|\b(?:none|neither)\s+of\s+the\s+{_SOURCE}\b"
    rf"|\bneither\s+(?:passage|opinion|excerpt|source|document)\b"
    r"|\b(?:i|we)\s+(?:could|can|was|am|were|are)\s*(?:not|n['’]t|unable\s+to)\s+"
    r"(?:find|locate|see|identify|determine|confirm|tell|say)\b"
    r"|\b(?:i|we)\s+(?:do|did)\s*(?:not|n['’]t)\s+(?:have|see|find)\b"
    r"|\bi\s+cannot\s+(?:find|locate|see|identify|determine|confirm|tell|say)\b"
    r"|\b(?:is|are|was|were)\s+not\s+(?:stated|specified|mentioned|addressed|provided|disclosed|described|"
    r"discussed|given|included|explained|reported|identified)\s+(?:in|by)\s+(?:the|these|this|any)\b"
    r"|\b(?:there\s+is|there['’]s|i\s+have|we\s+have)\s+no\s+(?:information|mention|indication|record|"
    r"details?|discussion|data)\b"
    r"|\bno\s+information\s+(?:about|on|regarding|as\s+to)\b"
    r"|\b(?:not|nothing)\s+(?:is\s+)?(?:covered|addressed|mentioned|said)\s+(?:in|by)\s+(?:the|these)\b"
    r"|\bbeyond\s+(?:what|the\s+scope\s+of)\s+(?:the|these)\s+(?:passages|excerpts|materials|sources)\b",
    re.IGNORECASE)

_BOILERPLATE = re.compile(
    r"^(?:i\s+hope\s+(?:this|that)\s+helps|hope\s+(?:this|that)\s+helps|let\s+me\s+know\b|feel\s+free\b"
    r"|(?:that(?:['’]s|\s+is)\s+a\s+)?(?:very\s+)?(?:good|great|excellent|fair)\s+question"
    r"|(?:sure|certainly|of\s+course|absolutely|thanks?(?:\s+you)?)\b[^a-z]*$"
    r"|(?:here(?:['’]s|\s+is|\s+are)|below\s+is|below\s+are)\s+(?:a|an|the|some|my)?\s*"
    r"(?:short\s+|brief\s+|quick\s+)?"
    r"(?:summary|overview|breakdown|rundown|recap|explanation|answer|key\s+points?|main\s+points?)\b"
    r"|let\s+me\s+(?:explain|walk|break|summari[sz]e|outline|clarify)\b"
    r"|(?:please\s+)?(?:consult|speak\s+(?:with|to)|talk\s+to|contact)\s+(?:a|an|your)\s+(?:licensed\s+)?"
    r"(?:attorney|lawyer|legal\s+professional)"
    r"|(?:you\s+(?:may|might|should)\s+(?:want\s+to\s+)?|i\s+(?:would\s+)?(?:recommend|suggest)\s+)"
    r"(?:consult|speak|talk|consulting|speaking|talking)\b[^.]*\b(?:attorney|lawyer)"
    r"|(?:this|it|the\s+above)\s+is\s+not\s+legal\s+advice|i\s+am\s+not\s+a\s+lawyer|i['’]m\s+not\s+a\s+lawyer"
    r"|in\s+(?:short|summary|sum)\s*[:.]?$|to\s+(?:summari[sz]e|sum\s+up)\s*[:.]?$)",
    re.IGNORECASE)


_CLAIM_AFTER = re.compile(r"[,;]\s*(?:but|however|although|though|yet)\b|;\s+\w")


def sentence_kind(sentence: str) -> str:
    """``abstention`` (says what the passages lack), ``neutral`` (boilerplate, a question back, a
    lead-in ending in a colon, too few words to claim anything) or ``claim`` (to be checked)."""
    text = sentence.strip()
    abstention = _ABSTENTION.search(text)
    # "The passages do not say, but the court awarded $9,000" goes on to claim something: check it.
    if abstention and not _CLAIM_AFTER.search(text, abstention.end()):
        return "abstention"
    if text.endswith("?") or _BOILERPLATE.search(text):
        return "neutral"
    words = _content_words(text)
    if text.endswith(":") and len(words) <= 8:
        return "neutral"
    if len(words) < 2 and not _NUMBER.search(text):
        return "neutral"
    return "claim"


# ---------------------------------------------------------------------------------------------
# Words, numbers, names
# ---------------------------------------------------------------------------------------------

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just may me
might more most must my myself neither no nor not now of off on once only or other our ours ourselves
out over own same shall she should so some such than that the their theirs them themselves then there
these they this those through to too under until up upon very was we were what when where whether which
while who whom whose why will with within without would you your yours yourself yourselves however
therefore thus whatever whichever cannot can't don't doesn't didn't isn't wasn't aren't weren't won't
""".split())
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]*")
_SUFFIXES = ("ations", "ation", "ments", "ment", "ingly", "ings", "ing", "edly", "ied", "ies", "ed", "es",
             "s", "ly")


def _stem(word: str) -> str:
    """A deliberately crude stemmer: it only has to map a word and its inflections to the same key."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if suffix in ("ies", "ied"):
                w += "y"
            break
    return w


def _words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD_RE.findall(text.replace("-", " "))]


def _content_words(text: str) -> list[str]:
    return [w for w in _words(text) if w not in _STOPWORDS and len(w) > 1]


_UNITS = {w: i for i, w in enumerate("one two three four five six seven eight nine".split(), 1)}
_TEENS = {w: i for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
                                     "nineteen".split(), 10)}
_TENS = {w: i * 10 for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
# "one" is left out: "one of the", "one weekend" are rarely the claim a reader checks.
_NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>" + "|".join(_TENS) + r")(?:[-\s](?P<unit>" + "|".join(_UNITS) + r"))?"
    r"|(?P<small>" + "|".join([w for w in _UNITS if w != "one"] + list(_TEENS)) + r"))\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])\$?\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?(?![\w])"
                     r"(?:\s*(?P<mult>million|billion|thousand)\b)?", re.IGNORECASE)
_MULTIPLIERS = {"thousand": Decimal(1000), "million": Decimal(10**6), "billion": Decimal(10**9)}
# Docket numbers, section numbers, unit numbers, scores: letters/digits joined by "-" or ":", with a digit.
_COMPOUND_ID = re.compile(r"(?<![\w\-:])(?=[\w:\-]*\d)[A-Za-z0-9]+(?:[-:][A-Za-z0-9]+)+(?![\w\-])")
_QUANTITY = re.compile(r"\d+(?:\.\d+)?(?:-[a-z]+)+")  # "30-day", "212-unit": a number and a word, not an id


def _compounds(text: str) -> list[re.Match]:
    return [m for m in _COMPOUND_ID.finditer(text) if not _QUANTITY.fullmatch(m.group(0))]


def _decimal_key(value: Decimal) -> str:
    value = value.quantize(Decimal("0.01"))
    text = format(value.normalize(), "f")
    return text


def _numbers(text: str) -> set[str]:
    """Every number in ``text`` as a normalised string ("forty-eight" → "48", "$1.1 million" → "1100000")."""
    values: set[str] = set()
    for m in _NUMBER.finditer(text):
        try:
            value = Decimal(m.group("int").replace(",", "") + (m.group("dec") or ""))
        except InvalidOperation:
            continue
        if m.group("mult"):
            value *= _MULTIPLIERS[m.group("mult").lower()]
        values.add(_decimal_key(value))
    for m in _NUMBER_WORD.finditer(text):
        if m.group("tens"):
            value = _TENS[m.group("tens").lower()] + (_UNITS[m.group("unit").lower()] if m.group("unit") else 0)
        else:
            word = m.group("small").lower()
            value = _UNITS.get(word) or _TEENS[word]
        values.add(str(value))
    return values


def _blank(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for s, e in spans:
        chars[s:e] = " " * (e - s)
    return "".join(chars)


# Capitalised words that are not names whose absence would mean anything.
_GENERIC_CAPITALS = frozenset("""
i court courts supreme superior appeals appeal appellate district county state states judge justice justices
section sections article code statute constitution rule rules act plaintiff plaintiffs defendant defendants
appellant appellee respondent petitioner trial jury holding held reasoning disposition facts issue issues
procedural history parties court's january february march april may june july august september october
november december monday tuesday wednesday thursday friday saturday sunday mr mrs ms dr inc llc co corp ltd
english yes no ok okay note summary answer question first second third finally however overall
""".split())


def _names(text: str) -> set[str]:
    """Capitalised words past the first word of a sentence: the parties, places and judges a claim names."""
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w'’])([A-Z][a-z][A-Za-z'’]*)", text):
        if m.start() == 0 or re.search(r"[.!?:;\"“(]\s*$", text[:m.start()]):
            continue  # sentence-initial or after a colon or quote: capitalised for grammar, not as a name
        word = m.group(1).lower().replace("’", "'")
        if word.endswith("'s"):
            word = word[:-2]
        if word not in _GENERIC_CAPITALS and word not in _STOPWORDS:
            names.add(word)
    return names


# ---------------------------------------------------------------------------------------------
# Identifiers: case names, docket numbers, statute sections, dates, amounts
# ---------------------------------------------------------------------------------------------

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
            for ident in extract_identifiers(text):
                if ident.type == "case":
                    self.cases.append(ident.key)
                elif ident.type == "statute":
                    self.statutes[ident.key[0]].append(ident.key[1])
                elif ident.type == "date":
                    self.dates.append(ident.key)
                elif ident.type == "amount":
                    self.amounts.add(ident.key)
            # Any compound token counts as a docket number: headers write "Docket No.:** 23-CV-0652".
            self.dockets.update(m.group(0).upper() for m in _compounds(text))

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


# ---------------------------------------------------------------------------------------------
# Contradictions the embedding cannot see: flipped outcomes and flipped negations
# ---------------------------------------------------------------------------------------------

# Pairs whose swap flips a claim. Words with everyday senses ("lost profits", "including") are left out.
_OPPOSITES = [("affirmed", "reversed"), ("affirm", "reverse"), ("granted", "denied"), ("grant", "deny"),
              ("enforceable", "unenforceable"), ("valid", "invalid"), ("reasonable", "unreasonable"),
              ("lawful", "unlawful"), ("constitutional", "unconstitutional"), ("permitted", "prohibited"),
              ("allowed", "disallowed"), ("timely", "untimely"), ("unanimous", "dissenting"),
              ("guilty", "acquitted"), ("upheld", "overturned"), ("increased", "reduced"),
              ("increased", "decreased"), ("liable", "immune")]
_OPPOSITE_STEMS = [(_stem(a), _stem(b)) for a, b in _OPPOSITES]
# Outcomes: a claim of one that the passages never make, while they make the other, is a contradiction
# wherever in the passages it is ("The Court of Appeals reversed" against a disposition "Affirmed").
_OUTCOMES = [("affirmed", "reversed"), ("affirm", "reverse"), ("granted", "denied"), ("grant", "deny"),
             ("enforceable", "unenforceable"), ("valid", "invalid"), ("constitutional", "unconstitutional"),
             ("guilty", "acquitted"), ("upheld", "overturned"), ("lawful", "unlawful")]
_OUTCOME_STEMS = [(_stem(a), _stem(b)) for a, b in _OUTCOMES]
# Legal predicates whose negation flips a holding ("was not willful", "is not liable").
_PREDICATES = frozenset(_stem(w) for w in """liable willful negligent guilty entitled enforceable valid timely
proper permitted allowed necessary required voluntary responsible binding admissible unconscionable waived
preempted reasonable lawful""".split())
_NEGATIONS = frozenset("not no never nothing none nobody nowhere cannot can't don't doesn't didn't isn't wasn't "
                       "aren't weren't won't neither nor without".split())
_CLAUSE_END = re.compile(r"[.;:!?]")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’]*|[.;:!?]")
_AUXILIARIES = frozenset("be been being is are was were am do does did have has had a an the any to also "
                         "ever even really actually necessarily".split())


def _has_root(stems: Iterable[str], root: str) -> bool:
    return any(s.startswith(root) for s in stems)


def _negated_and_plain(text: str) -> tuple[set[str], set[str]]:
    """Stems that follow a negation ("was not willful" → willful) and stems that occur un-negated."""
    negated: set[str] = set()
    plain: set[str] = set()
    pending = False
    for token in _TOKEN.findall(text.replace("-", " ")):
        if _CLAUSE_END.fullmatch(token):
            pending = False  # "2. No. Bad faith …": a negation does not reach into the next sentence
            continue
        w = token.lower().replace("’", "'")
        if w in _NEGATIONS or w.endswith("n't"):
            pending = True
            continue
        if w in _AUXILIARIES or w in _STOPWORDS:
            continue
        (negated if pending else plain).add(_stem(w))
        pending = False
    return negated, plain


def _contradicts_passages(sentence: str, passages_negated: set[str], passages_plain: set[str]) -> str | None:
    """An outcome or a negated legal predicate that goes against everything the turn's passages say."""
    s_neg, s_plain = _negated_and_plain(sentence)
    passages_all = passages_negated | passages_plain
    for a, b in _OUTCOME_STEMS:
        for x, y in ((a, b), (b, a)):
            if _has_root(s_plain, x) and not _has_root(passages_all, x) and _has_root(passages_plain, y):
                return f"says '{x}…' but the passages only say '{y}…'"
    for stem in sorted(s_neg & _PREDICATES):
        if stem in passages_plain and stem not in passages_negated:
            return f"negates '{stem}…', which the passages affirm"
    for stem in sorted(s_plain & _PREDICATES - s_neg):
        if stem in passages_negated and stem not in passages_plain:
            return f"affirms '{stem}…', which the passages negate"
    return None


def _contradiction(sentence: str, window: str) -> str | None:
    """Why ``sentence`` contradicts a closely matching ``window``, or None."""
    s_neg, s_plain = _negated_and_plain(sentence)
    w_neg, w_plain = _negated_and_plain(window)
    s_all, w_all = s_neg | s_plain, w_neg | w_plain
    for a, b in _OPPOSITE_STEMS:
        for x, y in ((a, b), (b, a)):
            # A plain "affirmed" against a passage that says "reversed" and never "affirmed".
            if _has_root(s_plain, x) and _has_root(w_plain, y) and not _has_root(w_all, x):
                return f"says '{x}…' where the passage says '{y}…'"
    # Negation scope is guessed (the next content word), so only a negative statement against a
    # wholly positive window counts, and the other way round: "contains no necessity requirement"
    # against "Nothing in the statute adds a necessity requirement" is agreement, not a flip.
    if not w_neg:
        for stem in sorted(s_neg & w_plain):
            return f"negates '{stem}…', which the passage affirms"
    if not s_neg:
        for stem in sorted(w_neg & s_plain):
            return f"affirms '{stem}…', which the passage negates"
    return None


# ---------------------------------------------------------------------------------------------
# Grounding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundingThresholds:
    """Where support scores are cut. Calibrated on tests/data/grounding_labels.json (see the test).

    ``support = similarity_weight * max cosine to a passage window + (1 - similarity_weight) *
    share of the sentence's content words found in the passages``.
    """

    supported: float = 0.66  # at or above: supported
    weak: float = 0.58  # at or above: weak; below: unsupported
    similarity_weight: float = 0.5
    contradiction_gate: float = 0.6  # only a window this similar can be contradicted by a flipped word
    restates_question: float = 0.8  # a sentence this close to the user's own message restates it
    weak_credit: float = 0.5  # a weak sentence counts this much towards the turn score


DEFAULT_THRESHOLDS = GroundingThresholds()
WEAKLY_GROUNDED_BELOW = 0.7  # conversation score under which the review page lists it as weakly grounded
# 3-sentence windows measured the same precision and recall on the labelled set for a third more encoding.
WINDOW_SIZES = (1, 2)


@dataclass
class SentenceScore:
    text: str
    start: int
    end: int
    kind: str  # supported | weak | unsupported | abstention | neutral | restates_question
    support: float | None = None
    similarity: float | None = None
    overlap: float | None = None
    passage_id: str | None = None  # the passage holding the closest window
    evidence: str | None = None  # the closest window, so a reviewer sees what the sentence was matched to
    reasons: list[str] = field(default_factory=list)  # e.g. "not in the passages: $1,810"

    @property
    def scored(self) -> bool:
        return self.kind in ("supported", "weak", "unsupported")


@dataclass
class TurnGrounding:
    """Grounding of one assistant turn: per-sentence verdicts, a score, and citation flags."""

    score: float | None  # None: the turn makes no checkable claim (only abstentions and boilerplate)
    sentences: list[SentenceScore]
    citations: list[CitationFlag]
    turn_id: int | None = None
    idx: int | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for s in self.sentences:
            out[s.kind] += 1
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        return {"method": GROUNDING_METHOD, "score": self.score, "counts": self.counts(),
                "sentences": [asdict(s) for s in self.sentences],
                "citations": [c.to_json() for c in self.citations]}


@dataclass
class TurnInput:
    """What grounding needs for one assistant turn."""

    answer: str
    passages: list[dict[str, Any]]
    context: list[str] = field(default_factory=list)  # the user's messages up to this turn
    turn_id: int | None = None
    idx: int | None = None


@dataclass
class _Windows:
    texts: list[str]
    passage_ids: list[str | None]
    vectors: np.ndarray | None = None


class WindowCache:
    """Passage text → its windows and their vectors, least recently used dropped first; thread-safe.

    One per embedding model is shared by every checker in the process (:func:`shared_window_cache`),
    so a whole run embeds each corpus chunk once although many conversations retrieve it, and the
    review page re-scoring an edited turn does not embed its passages again.
    """

    def __init__(self, max_passages: int = 1024):  # ~25 KB per passage: about 25 MB at most
        self.max_passages = max_passages
        self._entries: OrderedDict[str, tuple[list[str], np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> tuple[list[str], np.ndarray] | None:
        key = _hash(text)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, text: str, windows: list[str], vectors: np.ndarray | None) -> tuple[list[str], np.ndarray]:
        entry = (windows, vectors if vectors is not None else np.zeros((0, 1), dtype=np.float32))
        with self._lock:
            self._entries[_hash(text)] = entry
            while len(self._entries) > self.max_passages:
                self._entries.popitem(last=False)
        return entry


_SHARED_CACHES: dict[str, WindowCache] = {}
_SHARED_CACHES_LOCK = threading.Lock()


def shared_window_cache(model_name: str) -> WindowCache:
    with _SHARED_CACHES_LOCK:
        return _SHARED_CACHES.setdefault(model_name, WindowCache())


class GroundingChecker:
    """Scores answers against their passages with an already loaded :class:`Embedder`.

    Args:
        embedder: the workbench's embedder (``encode`` returns unit vectors).
        thresholds: where support scores are cut.
        cache: passage windows already embedded; default: the process-wide cache of this model.
    """

    def __init__(self, embedder: Embedder, thresholds: GroundingThresholds = DEFAULT_THRESHOLDS,
                 cache: WindowCache | None = None):
        self.embedder = embedder
        self.thresholds = thresholds
        self.cache = cache if cache is not None else shared_window_cache(embedder.model_name)

    def score_answer(self, answer: str, passages: Sequence[dict[str, Any]], context: Sequence[str] = ()
                     ) -> TurnGrounding:
        """Grounding of one answer against its passages (see :meth:`score_turns`)."""
        return self.score_turns([TurnInput(answer, list(passages), list(context))])[0]

    def score_turns(self, turns: Sequence[TurnInput]) -> list[TurnGrounding]:
        """Grounding of several turns (one conversation) with a single ``encode`` call.

        Each sentence is compared only with windows of its own turn's passages.
        """
        prepared = []
        to_encode: dict[str, None] = {}
        for turn in turns:
            sentences = split_sentences(turn.answer)
            kinds = [sentence_kind(s.text) for s in sentences]
            claims = [s.text for s, k in zip(sentences, kinds) if k == "claim"]
            passage_windows = [(p, self.cache.get(p.get("text") or "")) for p in turn.passages]
            context_windows = [s.text for c in turn.context for s in split_sentences(c)]
            for text in claims + context_windows:
                to_encode[text] = None
            for p, cached in passage_windows:
                if cached is None:
                    for w in _windows_of(p.get("text") or ""):
                        to_encode[w] = None
            prepared.append((turn, sentences, kinds, passage_windows, context_windows))
        texts = list(to_encode)
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        vector_of = {t: vectors[i] for i, t in enumerate(texts)}
        results = []
        for turn, sentences, kinds, passage_windows, context_windows in prepared:
            windows = _Windows([], [])
            blocks = []
            for p, cached in passage_windows:
                if cached is None:
                    wtexts = _windows_of(p.get("text") or "")
                    wvecs = np.array([vector_of[w] for w in wtexts], dtype=np.float32) if wtexts else None
                    cached = self.cache.put(p.get("text") or "", wtexts, wvecs)
                wtexts, wvecs = cached
                if wtexts:
                    windows.texts.extend(wtexts)
                    windows.passage_ids.extend([p.get("id")] * len(wtexts))
                    blocks.append(wvecs)
            windows.vectors = np.vstack(blocks) if blocks else None
            context_vectors = (np.array([vector_of[c] for c in context_windows], dtype=np.float32)
                               if context_windows else None)
            results.append(self._score_turn(turn, sentences, kinds, windows, context_vectors, vector_of))
        return results

    # -- internals ---------------------------------------------------------------------------
    def _score_turn(self, turn: TurnInput, sentences: list[Sentence], kinds: list[str], windows: _Windows,
                    context_vectors: np.ndarray | None, vector_of: dict[str, np.ndarray]) -> TurnGrounding:
        t = self.thresholds
        sources = _source_texts(turn.passages, turn.context)
        pool = IdentifierPool(sources)
        source_text = "\n".join(sources)
        vocabulary = {_stem(w) for w in _content_words(source_text)}
        numbers = _numbers(_blank(source_text, [(m.start(), m.end()) for m in _compounds(source_text)]))
        names = {w for w in _words(source_text)}
        passages_negated, passages_plain = _negated_and_plain("\n".join(p.get("text") or "" for p in turn.passages))
        scored: list[SentenceScore] = []
        for sentence, kind in zip(sentences, kinds):
            if kind != "claim":
                scored.append(SentenceScore(sentence.text, sentence.start, sentence.end, kind))
                continue
            vec = vector_of[sentence.text]
            similarity, best = 0.0, -1
            sims = None
            if windows.vectors is not None and len(windows.texts):
                sims = windows.vectors @ vec
                best = int(np.argmax(sims))
                similarity = float(sims[best])
            words = [_stem(w) for w in _content_words(sentence.text)]
            overlap = sum(w in vocabulary for w in words) / len(words) if words else 1.0
            support = t.similarity_weight * similarity + (1 - t.similarity_weight) * overlap
            reasons = _missing_facts(sentence.text, pool, numbers, names)
            if turn.passages and not reasons:
                why = _contradicts_passages(sentence.text, passages_negated, passages_plain)
                if why:
                    reasons.append(why)
            if sims is not None and not reasons:
                # A flipped outcome or negation keeps a high similarity: look at the closest windows.
                for i in np.argsort(-sims)[:3]:
                    if sims[i] < t.contradiction_gate:
                        break
                    why = _contradiction(sentence.text, windows.texts[i])
                    if why:
                        reasons.append(why)
                        break
            if reasons:
                verdict = "unsupported"
            elif support >= t.supported:
                verdict = "supported"
            elif support >= t.weak:
                verdict = "weak"
            else:
                verdict = "unsupported"
            if verdict != "supported" and not reasons and context_vectors is not None:
                # "Your landlord kept $500 for cleaning" repeats the user's own facts: not a grounding failure.
                if float(np.max(context_vectors @ vec)) >= t.restates_question:
                    verdict = "restates_question"
            scored.append(SentenceScore(
                sentence.text, sentence.start, sentence.end, verdict, round(support, 4), round(similarity, 4),
                round(overlap, 4), windows.passage_ids[best] if best >= 0 else None,
                windows.texts[best] if best >= 0 else None, reasons))
        checked = [s for s in scored if s.scored]
        score = None
        if checked:
            credit = {"supported": 1.0, "weak": t.weak_credit, "unsupported": 0.0}
            score = round(sum(credit[s.kind] for s in checked) / len(checked), 4)
        citations = _citation_flags(turn.answer, sentences, pool)
        return TurnGrounding(score, scored, citations, turn.turn_id, turn.idx)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _windows_of(passage: str) -> list[str]:
    """1–3 sentence spans of a passage; headings and fragments are left out."""
    # Headings ("Procedural History") are not evidence; a short holding ("The retention was willful.") is.
    sentences = [s.text for s in split_sentences(passage)
                 if len(_content_words(s.text)) >= 2 and (s.text[-1] in ".!?\"”')" or len(s.text.split()) >= 6)]
    windows: dict[str, None] = {}
    for i in range(len(sentences)):
        for size in WINDOW_SIZES:
            if i + size <= len(sentences):
                windows[" ".join(sentences[i:i + size])] = None
    return list(windows)


def _missing_facts(sentence: str, pool: IdentifierPool, numbers: set[str], names: set[str]) -> list[str]:
    """Identifiers, numbers and names in a claim that the passages (and the user) never mention."""
    reasons = []
    idents = extract_identifiers(sentence)
    missing = [i for i in idents if not pool.contains(i)]
    for i in missing:
        reasons.append(f"{i.type} not in the passages: {i.text}")
    # Numbers inside identifiers and dates were judged above; the rest are checked one by one.
    spans = [(i.start, i.end) for i in idents if i.type in ("date", "docket", "statute", "case")]
    for m in _compounds(sentence):
        if not any(s <= m.start() < e for s, e in spans) and m.group(0).upper() not in pool.dockets:
            reasons.append(f"not in the passages: {m.group(0)}")
    spans += [(m.start(), m.end()) for m in _compounds(sentence)]
    amounts = {i.key for i in idents if i.type == "amount"}
    for n in sorted(_numbers(_blank(sentence, spans)) - numbers - amounts):
        reasons.append(f"number not in the passages: {n}")
    for name in sorted(_names(sentence) - names):
        reasons.append(f"name not in the passages: {name.title()}")
    return reasons


# ---------------------------------------------------------------------------------------------
# Grounding: storage
# ---------------------------------------------------------------------------------------------


@dataclass
class ConversationGrounding:
    conversation_id: str
    score: float | None  # mean of the turn scores; None when no turn makes a checkable claim
    turns: list[TurnGrounding]

    @property
    def citation_flags(self) -> int:
        return sum(len(t.citations) for t in self.turns)


def _turn_inputs(db: Database, conversation_id: str) -> list[TurnInput]:
    rows = db.rows("SELECT id, idx, role, content, retrieval FROM turns WHERE conversation_id=? ORDER BY idx",
                   [conversation_id])
    inputs, said = [], []
    for r in rows:
        if r["role"] == "user":
            said.append(r["content"] or "")
        elif r["role"] == "assistant":
            inputs.append(TurnInput(r["content"] or "", loads(r["retrieval"], []) or [], list(said), r["id"], r["idx"]))
    return inputs


def score_conversation(db: Database, embedder: Embedder, conversation_id: str,
                       checker: GroundingChecker | None = None) -> ConversationGrounding:
    """Compute and store grounding and citation flags for every assistant turn of one conversation.

    Writes ``turns.grounding`` (JSON per sentence), ``turns.grounding_score``, ``turns.citation_flags``
    and ``conversations.grounding`` / ``citation_flags`` / ``grounded_at``. Call it again after a
    turn is edited: the stored result describes the text it was computed from.

    Raises:
        NotFoundError: the conversation does not exist.
    """
    if db.scalar("SELECT 1 FROM conversations WHERE id=?", [conversation_id]) is None:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    checker = checker or GroundingChecker(embedder)
    turns = checker.score_turns(_turn_inputs(db, conversation_id))
    scores = [t.score for t in turns if t.score is not None]
    result = ConversationGrounding(conversation_id, round(sum(scores) / len(scores), 4) if scores else None, turns)
    with db.write() as w:
        for t in turns:
            w.execute("UPDATE turns SET grounding=?, grounding_score=?, citation_flags=? WHERE id=?",
                      [dumps(t.to_json()), t.score, len(t.citations), t.turn_id])
        w.execute("UPDATE conversations SET grounding=?, citation_flags=?, grounded_at=? WHERE id=?",
                  [result.score, result.citation_flags, now(), conversation_id])
    return result


def score_conversations(db: Database, embedder: Embedder, *, run_id: str | None = None, rescore: bool = False,
                        progress: ProgressFn | None = None, checker: GroundingChecker | None = None) -> int:
    """Score every not-yet-scored conversation of a run (or of all runs).

    Args:
        run_id: only this run's conversations; None: all.
        rescore: also recompute conversations that already have a score.
        progress: called as ``progress(done, total)`` after each conversation.

    Returns:
        How many conversations were scored.
    """
    where, params = [], []
    if run_id:
        where.append("run_id=?")
        params.append(run_id)
    if not rescore:
        where.append("grounded_at IS NULL")
    sql = "SELECT id FROM conversations" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at"
    ids = [r["id"] for r in db.rows(sql, params)]
    checker = checker or GroundingChecker(embedder)
    for n, cid in enumerate(ids, 1):
        score_conversation(db, embedder, cid, checker)
        if progress:
            progress(n, len(ids))
    return len(ids)


def grounding_details(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    """The stored per-turn results of one conversation, for highlighting in the review page.

    Returns:
        One dict per assistant turn: ``turn_id``, ``idx``, ``score``, ``citation_flags`` and the stored
        JSON (``sentences`` with ``start``/``end`` spans into the turn's content and a ``kind`` each;
        ``citations``). Empty dicts' ``sentences`` when the turn was never scored.
    """
    out = []
    for r in db.rows("SELECT id, idx, grounding, grounding_score, citation_flags FROM turns "
                     "WHERE conversation_id=? AND role='assistant' ORDER BY idx", [conversation_id]):
        data = loads(r["grounding"], {}) or {}
        out.append({"turn_id": r["id"], "idx": r["idx"], "score": r["grounding_score"],
                    "citation_flags": r["citation_flags"], "sentences": data.get("sentences", []),
                    "citations": data.get("citations", []), "counts": data.get("counts", {}),
                    "method": data.get("method")})
    return out


_LIST_COLUMNS = ("id, run_id, status, rating, question, grounding, citation_flags, dup_of, dup_similarity, "
                 "created_at")


def weakly_grounded(db: Database, threshold: float = WEAKLY_GROUNDED_BELOW, *, run_id: str | None = None,
                    limit: int = 500) -> list[dict[str, Any]]:
    """Scored conversations whose grounding is below ``threshold``, worst first."""
    sql = f"SELECT {_LIST_COLUMNS} FROM conversations WHERE grounding IS NOT NULL AND grounding < ?"
    params: list[Any] = [threshold]
    if run_id:
        sql += " AND run_id=?"
        params.append(run_id)
    return db.rows(sql + " ORDER BY grounding, created_at LIMIT ?", [*params, limit])


def with_citation_flags(db: Database, *, run_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Conversations with at least one identifier that none of its passages contain, most flags first."""
    sql = f"SELECT {_LIST_COLUMNS} FROM conversations WHERE citation_flags > 0"
    params: list[Any] = []
    if run_id:
        sql += " AND run_id=?"
        params.append(run_id)
    return db.rows(sql + " ORDER BY citation_flags DESC, created_at LIMIT ?", [*params, limit])


def grounding_scores(db: Database, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """One row per scored conversation (``conversation_id``, ``run_id``, ``grounding``,
    ``citation_flags``, ``is_duplicate``): the data of the dashboard's grounding histogram."""
    sql = ("SELECT id AS conversation_id, run_id, grounding, citation_flags, dup_of IS NOT NULL AS is_duplicate "
           "FROM conversations WHERE grounded_at IS NOT NULL")
    rows = db.rows(sql + (" AND run_id=?" if run_id else "") + " ORDER BY created_at", [run_id] if run_id else [])
    for r in rows:
        r["is_duplicate"] = bool(r["is_duplicate"])
    return rows


def quality_summary(db: Database, *, run_id: str | None = None,
                    threshold: float = WEAKLY_GROUNDED_BELOW) -> dict[str, Any]:
    """Headline numbers for the dashboard and the home page: how many conversations are scored,
    weakly grounded, carry unsupported citations, or are near-duplicates of another."""
    where, params = (" WHERE run_id=?", [run_id]) if run_id else ("", [])
    row = db.one(
        "SELECT COUNT(*) AS conversations, COUNT(grounded_at) AS scored, AVG(grounding) AS mean_grounding, "
        "SUM(grounding < ?) AS weakly_grounded, SUM(citation_flags > 0) AS with_citation_flags, "
        "COALESCE(SUM(citation_flags), 0) AS citation_flags, SUM(dup_of IS NOT NULL) AS near_duplicates, "
        f"COUNT(DISTINCT dup_of) AS duplicate_clusters FROM conversations{where}", [threshold, *params])
    out = {k: (v or 0) for k, v in row.items()}
    out["mean_grounding"] = round(row["mean_grounding"], 4) if row["mean_grounding"] is not None else None
    out["weakly_grounded_below"] = threshold
    return out


# ---------------------------------------------------------------------------------------------
# Near-duplicates
# ---------------------------------------------------------------------------------------------

QUESTION_DUP_THRESHOLD = 0.88  # cosine of first questions at or above which two conversations are twins
CONVERSATION_DUP_THRESHOLD = 0.9  # cosine of question + first answer at or above which they are twins
CONVERSATION_TEXT_CHARS = 1500  # MiniLM reads ~256 wordpieces; more text would only cost time
_MAX_BLOCK_CELLS = 4_000_000  # similarity cells per block: 16 MB of float32, whatever the corpus size


def similar_pairs(vectors: np.ndarray, threshold: float, *, other: np.ndarray | None = None,
                  other_threshold: float | None = None, block_rows: int = 1024) -> list[tuple[int, int, float]]:
    """Pairs ``i < j`` whose cosine is at or above ``threshold`` (unit vectors), computed blockwise.

    With ``other`` (a second embedding of the same rows), a pair also counts when its similarity in
    ``other`` reaches ``other_threshold``; the reported similarity is the larger of the two.
    Memory stays bounded: each block multiplies at most ``_MAX_BLOCK_CELLS`` cells.
    """
    n = len(vectors)
    pairs: list[tuple[int, int, float]] = []
    if n < 2:
        return pairs
    rows = max(1, min(block_rows, _MAX_BLOCK_CELLS // n))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        # Only columns from ``start`` on: the lower triangle was covered by earlier blocks.
        sims = vectors[start:stop] @ vectors[start:].T
        hit = sims >= threshold
        if other is not None:
            other_sims = other[start:stop] @ other[start:].T
            hit |= other_sims >= (other_threshold if other_threshold is not None else threshold)
            sims = np.maximum(sims, other_sims)
        local_i, local_j = np.nonzero(hit)
        keep = local_j > local_i  # columns are offset by ``start``: j > i means a different, later row
        for i, j in zip(local_i[keep], local_j[keep]):
            pairs.append((start + int(i), start + int(j), float(sims[i, j])))
    return pairs


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _preference(row: dict[str, Any]) -> tuple:
    """Sort key of the conversation to keep: not discarded, best rated, then earliest."""
    rating = row.get("rating")
    return (row.get("status") == "discarded", -(rating if rating is not None else -1), row.get("created_at") or "",
            row["id"])


@dataclass
class DuplicateCluster:
    representative: str
    members: list[str]  # every conversation in the cluster, the representative first
    similarity: dict[str, float]  # member → cosine to the representative (max of question and conversation)


def _conversation_texts(db: Database, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """conversation id → (first question, question + first answer truncated)."""
    out: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        firsts: dict[str, dict[str, str]] = defaultdict(dict)
        for r in db.rows(f"SELECT conversation_id, role, content FROM turns WHERE conversation_id IN ({marks}) "
                         "AND idx <= 1 ORDER BY conversation_id, idx", chunk):
            firsts[r["conversation_id"]].setdefault(r["role"], r["content"] or "")
        for r in db.rows(f"SELECT id, question FROM conversations WHERE id IN ({marks})", chunk):
            question = (r["question"] or firsts[r["id"]].get("user", "")).strip()
            answer = firsts[r["id"]].get("assistant", "").strip()
            out[r["id"]] = (question, (question + "\n\n" + answer)[:CONVERSATION_TEXT_CHARS])
    return out


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def conversation_vectors(db: Database, embedder: Embedder, ids: Sequence[str],
                         progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of each conversation's first question and of its question + first answer.

    Vectors are cached in ``quality_vectors`` (keyed by model and text hash), so re-running
    near-duplicate detection after a new batch embeds only the new conversations.
    """
    texts = _conversation_texts(db, ids)
    model = embedder.model_name
    cached: dict[tuple[str, str], tuple[str, bytes]] = {}
    for chunk in _chunks(list(ids), 500):
        marks = ",".join("?" * len(chunk))
        for r in db.rows(f"SELECT conversation_id, kind, text_hash, vector FROM quality_vectors "
                         f"WHERE model=? AND conversation_id IN ({marks})", [model, *chunk]):
            cached[(r["conversation_id"], r["kind"])] = (r["text_hash"], r["vector"])
    wanted: dict[tuple[str, str], str] = {}
    for cid in ids:
        q, c = texts.get(cid, ("", ""))
        wanted[(cid, "question")] = q
        wanted[(cid, "conversation")] = c
    vectors: dict[tuple[str, str], np.ndarray] = {}
    missing = []
    for key, text in wanted.items():
        hit = cached.get(key)
        if hit and hit[0] == _hash(text):
            vectors[key] = np.frombuffer(hit[1], dtype=np.float32)
        else:
            missing.append(key)
    if missing:
        encoded = embedder.encode([wanted[k] for k in missing], progress=progress)
        with db.write() as w:
            w.conn.executemany(
                "INSERT OR REPLACE INTO quality_vectors (conversation_id, kind, model, text_hash, vector) "
                "VALUES (?, ?, ?, ?, ?)",
                [(k[0], k[1], model, _hash(wanted[k]), encoded[i].astype(np.float32).tobytes())
                 for i, k in enumerate(missing)])
        for i, k in enumerate(missing):
            vectors[k] = encoded[i]
    elif progress:
        progress(len(ids), len(ids))
    dim = embedder.dim
    q = np.array([vectors[(cid, "question")] for cid in ids], dtype=np.float32).reshape(len(ids), dim)
    c = np.array([vectors[(cid, "conversation")] for cid in ids], dtype=np.float32).reshape(len(ids), dim)
    return q, c


def find_near_duplicates(db: Database, embedder: Embedder, *, run_id: str | None = None,
                         question_threshold: float = QUESTION_DUP_THRESHOLD,
                         conversation_threshold: float = CONVERSATION_DUP_THRESHOLD,
                         progress: ProgressFn | None = None) -> list[DuplicateCluster]:
    """Clusters of near-duplicate conversations (nothing is stored; see :func:`mark_near_duplicates`).

    Two conversations are twins when their first questions are at least ``question_threshold``
    similar (a paraphrased question) or their question + first answer at least
    ``conversation_threshold``; clusters are the connected components of the twin pairs.
    """
    sql = "SELECT id, status, rating, created_at FROM conversations" + (" WHERE run_id=?" if run_id else "")
    rows = db.rows(sql + " ORDER BY created_at, id", [run_id] if run_id else [])
    if len(rows) < 2:
        return []
    ids = [r["id"] for r in rows]
    q, c = conversation_vectors(db, embedder, ids, progress)
    pairs = similar_pairs(q, question_threshold, other=c, other_threshold=conversation_threshold)
    uf = _UnionFind(len(ids))
    for i, j, _ in pairs:
        uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)):
        groups[uf.find(i)].append(i)
    clusters = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda i: _preference(rows[i]))
        rep = ordered[0]
        sims = np.maximum(q[ordered] @ q[rep], c[ordered] @ c[rep])
        clusters.append(DuplicateCluster(ids[rep], [ids[i] for i in ordered],
                                         {ids[i]: round(float(s), 4) for i, s in zip(ordered, sims)}))
    clusters.sort(key=lambda cl: -len(cl.members))
    return clusters


def mark_near_duplicates(db: Database, embedder: Embedder, *, run_id: str | None = None,
                         question_threshold: float = QUESTION_DUP_THRESHOLD,
                         conversation_threshold: float = CONVERSATION_DUP_THRESHOLD,
                         progress: ProgressFn | None = None) -> list[DuplicateCluster]:
    """Find near-duplicate clusters and store them: ``dup_of`` points each twin at its cluster's
    representative (best rated, then earliest); ``dup_similarity`` is set on every member,
    the representative included (its closest twin), so "has a twin" is ``dup_similarity IS NOT NULL``.

    Earlier marks within the scope (one run, or everything) are cleared first.
    """
    clusters = find_near_duplicates(db, embedder, run_id=run_id, question_threshold=question_threshold,
                                    conversation_threshold=conversation_threshold, progress=progress)
    with db.write() as w:
        if run_id:
            w.execute("UPDATE conversations SET dup_of=NULL, dup_similarity=NULL WHERE run_id=?", [run_id])
        else:
            w.execute("UPDATE conversations SET dup_of=NULL, dup_similarity=NULL "
                      "WHERE dup_of IS NOT NULL OR dup_similarity IS NOT NULL")
        for cl in clusters:
            twins = [m for m in cl.members if m != cl.representative]
            w.execute("UPDATE conversations SET dup_similarity=? WHERE id=?",
                      [max(cl.similarity[m] for m in twins), cl.representative])
            w.conn.executemany("UPDATE conversations SET dup_of=?, dup_similarity=? WHERE id=?",
                               [(cl.representative, cl.similarity[m], m) for m in twins])
    return clusters


def near_duplicates_of(db: Database, conversation_id: str) -> list[dict[str, Any]]:
    """The other members of a conversation's cluster (for the review page's link to the twin)."""
    row = db.one("SELECT id, dup_of FROM conversations WHERE id=?", [conversation_id])
    if not row:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    root = row["dup_of"] or row["id"]
    return db.rows(f"SELECT {_LIST_COLUMNS} FROM conversations WHERE (id=? OR dup_of=?) AND id<>? "
                   "ORDER BY dup_of IS NOT NULL, created_at", [root, root, conversation_id])


def keep_best_of_clusters(db: Database, conversation_ids: Sequence[str]) -> list[str]:
    """Drop stored near-duplicates from ``conversation_ids``, keeping the best of each cluster.

    Only conversations in ``conversation_ids`` compete (the cluster's representative may have been
    filtered out of an export); the kept one is the best rated now, then the earliest. Order of
    the input is preserved; ids without a stored cluster are all kept.
    """
    ids = list(dict.fromkeys(conversation_ids))
    rows: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids, 500):
        marks = ",".join("?" * len(chunk))
        for r in db.rows(f"SELECT id, dup_of, status, rating, created_at FROM conversations WHERE id IN ({marks})",
                         chunk):
            rows[r["id"]] = r
    best: dict[str, dict[str, Any]] = {}
    for cid in ids:
        r = rows.get(cid)
        if r is None:
            continue
        key = r["dup_of"] or r["id"]
        if key not in best or _preference(r) < _preference(best[key]):
            best[key] = r
    keep = {r["id"] for r in best.values()}
    return [cid for cid in ids if cid in keep or cid not in rows]


# ---------------------------------------------------------------------------------------------
# Coverage
# ---------------------------------------------------------------------------------------------


# json_each raises on malformed JSON even where a WHERE clause would have skipped the row.
def _json_or_empty(column: str) -> str:
    return f"CASE WHEN json_valid({column}) THEN {column} ELSE '[]' END"


@dataclass
class CoverageReport:
    """Plain data for tables and plotly charts.

    ``documents``: one dict per document (``title``, ``chunks``, ``briefing_uses``, ``retrieved_uses``,
    ``chunks_briefed``, ``chunks_retrieved``, ``briefed``, ``retrieved`` …), most used first.
    ``uncovered``: the documents neither sampled for a briefing nor retrieved.
    ``summary``: totals and shares (``share_briefed``, ``share_retrieved`` …).
    """

    documents: list[dict[str, Any]]
    uncovered: list[dict[str, Any]]
    summary: dict[str, Any]


def coverage(db: Database, *, collection: str | None = None, run_id: str | None = None) -> CoverageReport:
    """Which documents and chunks were sampled for briefings and which were retrieved for answers.

    Args:
        collection: only this collection's documents; None: all.
        run_id: count only this run's saved conversations: ``briefing_uses`` is then how many of its
            conversations were built on the chunk (one sampled briefing feeds several questions) and
            ``retrieved_uses`` how often its turns retrieved it. None: the corpus-wide counters
            (``chunks.briefing_uses`` = times sampled, failed conversations included;
            ``chunks.retrieved_uses``) and every stored turn's retrieval.
    """
    doc_sql = "SELECT id, title, source_path, collection, status FROM documents"
    chunk_sql = "SELECT id, document_id, briefing_uses, retrieved_uses FROM chunks"
    params: list[Any] = []
    if collection:
        doc_sql += " WHERE collection=?"
        chunk_sql += " WHERE collection=?"
        params = [collection]
    documents = db.rows(doc_sql + " ORDER BY title, id", params)
    chunks = db.rows(chunk_sql, params)
    chunk_doc = {c["id"]: c["document_id"] for c in chunks}

    run_filter = " AND c.run_id=?" if run_id else ""
    run_params = [run_id] if run_id else []
    retrieved = db.rows(
        "SELECT json_extract(j.value, '$.id') AS chunk_id, json_extract(j.value, '$.document_id') AS document_id, "
        "COUNT(*) AS n FROM turns t JOIN conversations c ON c.id = t.conversation_id, "
        f"json_each({_json_or_empty('t.retrieval')}) j WHERE t.role='assistant'{run_filter} GROUP BY 1, 2",
        run_params)
    turn_uses: dict[str, int] = defaultdict(int)  # chunk id → retrievals stored with turns
    doc_turn_uses: dict[str, int] = defaultdict(int)
    for r in retrieved:
        doc = chunk_doc.get(r["chunk_id"]) or r["document_id"]  # a re-indexed document has new chunk ids
        turn_uses[r["chunk_id"]] += r["n"]
        if doc:
            doc_turn_uses[doc] += r["n"]
    if run_id:
        briefed = db.rows("SELECT j.value AS chunk_id, COUNT(*) AS n FROM conversations c, json_each("
                          + _json_or_empty("c.briefing_ids") + ") j WHERE c.run_id=? GROUP BY 1", [run_id])
        briefing_uses = {r["chunk_id"]: r["n"] for r in briefed}
        retrieved_uses = dict(turn_uses)
    else:
        briefing_uses = {c["id"]: c["briefing_uses"] or 0 for c in chunks}
        retrieved_uses = {c["id"]: max(c["retrieved_uses"] or 0, turn_uses.get(c["id"], 0)) for c in chunks}

    per_doc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in chunks:
        d = per_doc[c["document_id"]]
        b, r = briefing_uses.get(c["id"], 0), retrieved_uses.get(c["id"], 0)
        d["chunks"] += 1
        d["briefing_uses"] += b
        d["retrieved_uses"] += r
        d["chunks_briefed"] += b > 0
        d["chunks_retrieved"] += r > 0
    rows = []
    for doc in documents:
        d = per_doc.get(doc["id"], {})
        row = {"document_id": doc["id"], "title": doc["title"], "source_path": doc["source_path"],
               "collection": doc["collection"], "status": doc["status"], "chunks": d.get("chunks", 0),
               "briefing_uses": d.get("briefing_uses", 0), "retrieved_uses": d.get("retrieved_uses", 0),
               "turn_retrievals": doc_turn_uses.get(doc["id"], 0), "chunks_briefed": d.get("chunks_briefed", 0),
               "chunks_retrieved": d.get("chunks_retrieved", 0)}
        row["briefed"] = row["briefing_uses"] > 0
        row["retrieved"] = row["retrieved_uses"] > 0 or row["turn_retrievals"] > 0
        row["share_chunks_briefed"] = _share(row["chunks_briefed"], row["chunks"])
        row["share_chunks_retrieved"] = _share(row["chunks_retrieved"], row["chunks"])
        rows.append(row)
    rows.sort(key=lambda r: (-(r["briefing_uses"] + r["retrieved_uses"]), r["title"] or ""))
    uncovered = [r for r in rows if not r["briefed"] and not r["retrieved"]]
    n_docs, n_chunks = len(rows), sum(r["chunks"] for r in rows)
    summary = {
        "run_id": run_id, "collection": collection, "documents": n_docs,
        "documents_briefed": sum(r["briefed"] for r in rows),
        "documents_retrieved": sum(r["retrieved"] for r in rows),
        "documents_uncovered": len(uncovered),
        "chunks": n_chunks,
        "chunks_briefed": sum(r["chunks_briefed"] for r in rows),
        "chunks_retrieved": sum(r["chunks_retrieved"] for r in rows),
        "briefing_uses": sum(r["briefing_uses"] for r in rows),
        "retrievals": sum(r["retrieved_uses"] for r in rows),
    }
    summary["share_briefed"] = _share(summary["documents_briefed"], n_docs)
    summary["share_retrieved"] = _share(summary["documents_retrieved"], n_docs)
    summary["share_chunks_briefed"] = _share(summary["chunks_briefed"], n_chunks)
    summary["share_chunks_retrieved"] = _share(summary["chunks_retrieved"], n_chunks)
    return CoverageReport(rows, uncovered, summary)


def coverage_by_chunk(db: Database, document_id: str, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """Per-chunk briefing and retrieval counts of one document, in document order (drill-down)."""
    chunks = db.rows("SELECT id, position, briefing_uses, retrieved_uses, substr(text, 1, 160) AS preview "
                     "FROM chunks WHERE document_id=? ORDER BY position", [document_id])
    if not chunks:
        if db.scalar("SELECT 1 FROM documents WHERE id=?", [document_id]) is None:
            raise NotFoundError(f"Document {document_id} does not exist.")
        return []
    if run_id:
        ids = [c["id"] for c in chunks]
        marks = ",".join("?" * len(ids))
        retrieved = {r["chunk_id"]: r["n"] for r in db.rows(
            "SELECT json_extract(j.value, '$.id') AS chunk_id, COUNT(*) AS n FROM turns t JOIN conversations c "
            "ON c.id=t.conversation_id, json_each(" + _json_or_empty("t.retrieval") + ") j WHERE "
            f"t.role='assistant' AND c.run_id=? AND json_extract(j.value, '$.id') IN ({marks}) GROUP BY 1",
            [run_id, *ids])}
        briefed = {r["chunk_id"]: r["n"] for r in db.rows(
            "SELECT j.value AS chunk_id, COUNT(*) AS n FROM conversations c, json_each("
            + _json_or_empty("c.briefing_ids") + f") j WHERE c.run_id=? AND j.value IN ({marks}) GROUP BY 1",
            [run_id, *ids])}
        for c in chunks:
            c["briefing_uses"] = briefed.get(c["id"], 0)
            c["retrieved_uses"] = retrieved.get(c["id"], 0)
    return [{"chunk_id": c["id"], "position": c["position"], "briefing_uses": c["briefing_uses"] or 0,
             "retrieved_uses": c["retrieved_uses"] or 0, "preview": c["preview"]} for c in chunks]


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def validate_threshold(value: float, name: str = "threshold") -> float:
    """A similarity or score threshold from a form: between 0 and 1."""
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"The {name} must be between 0 and 1 (got {value}).")
    return value


def grounding_html(content: str, sentences: Sequence[dict[str, Any]]) -> str:
    """An answer as escaped HTML with unsupported sentences in red and weak ones in amber (review page).

    The answer text is escaped first, so generated text can never become markup.
    """
    import html

    colours = {"unsupported": "#fde2e1", "weak": "#fff3cd"}
    out, pos = [], 0
    for s in sorted((s for s in sentences if s.get("kind") in colours), key=lambda s: s["start"]):
        start, end = max(int(s["start"]), pos), int(s["end"])
        if start >= end:
            continue
        out.append(html.escape(content[pos:start]))
        reasons = "; ".join(s.get("reasons") or []) or s["kind"]
        out.append(f'<span style="background:{colours[s["kind"]]}" title="{html.escape(reasons, quote=True)}">'
                   f"{html.escape(content[start:end])}</span>")
        pos = end
    out.append(html.escape(content[pos:]))
    return "".join(out)
