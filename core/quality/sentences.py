"""Answer text into sentences with spans, and which sentences make no claim (abstentions, boilerplate)."""

from __future__ import annotations

import re
from dataclasses import dataclass


from core.quality.lexical import _NUMBER, _content_words


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
