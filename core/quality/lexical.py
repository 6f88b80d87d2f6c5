"""Words, stems, numbers and names of a text: the lexical side of grounding."""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation





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


@lru_cache(maxsize=65536)  # a pure function called for every word of every sentence pair: ~200,000 calls a grade
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


_FOLD_WORDS = {w: i for i, w in enumerate("two three four five six seven eight nine ten".split(), 2)} | {"hundred": 100}
_FOLD = re.compile(r"\b(" + "|".join(_FOLD_WORDS) + r")[- ]?fold\b", re.IGNORECASE)


def _digit_numbers(text: str):
    """(value, match) for every number written in digits ("$1.1 million" → 1100000)."""
    for m in _NUMBER.finditer(text):
        try:
            value = Decimal(m.group("int").replace(",", "") + (m.group("dec") or ""))
        except InvalidOperation:
            continue
        if m.group("mult"):
            value *= _MULTIPLIERS[m.group("mult").lower()]
        yield value, m


def _numbers(text: str) -> set[str]:
    """Every number in ``text`` as a normalised string ("forty-eight" → "48", "$1.1 million" → "1100000")."""
    values = {_decimal_key(value) for value, _ in _digit_numbers(text)}
    for m in _FOLD.finditer(text):  # "tenfold", "a twofold change": a factor the reader checks like a number
        values.add(str(_FOLD_WORDS[m.group(1).lower()]))
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


def derivable(value: Decimal, money: bool, pool: Iterable[tuple[Decimal, bool]], limit: int = 80) -> bool:
    """Whether ``value`` is computed from two figures of ``pool`` (each ``(value, is_money)``).

    Answers compute: "$290 in rent and $40 in fees" becomes "$330 owed", "21 days" minus "14 days" becomes
    "7 days past", "two orders at $12.99" becomes "$25.98". Such a figure is grounded although no passage
    prints it. Sums and differences combine figures of one kind (money with money); a product is an amount
    times a count, or two counts; a percentage of an amount counts too. Only the first ``limit`` distinct
    figures are combined, so a number-heavy passage cannot make every figure derivable.
    """
    nums = list(dict.fromkeys((n, m) for n, m in pool if n != 0))[:limit]
    cents = Decimal("0.01")
    target = value.quantize(cents)
    for i, (a, a_money) in enumerate(nums):
        for b, b_money in nums[i:]:
            candidates = []
            if a_money == b_money == money:
                candidates += [a + b, abs(a - b)]
            if not (a_money and b_money) and (a_money or b_money) == money:
                candidates += [a * b]
            if money and (a_money != b_money):
                candidates += [a * b / 100]  # "10% of $1,200"
            for c in candidates:
                try:
                    if c.quantize(cents) == target:
                        return True
                except ArithmeticError:  # an absurd product: not a match
                    continue
    return False


def typed_numbers(text: str) -> list[tuple[Decimal, bool]]:
    """Every number in ``text`` with whether it is an amount of money."""
    out = [(value, m.group(0).lstrip().startswith("$")) for value, m in _digit_numbers(text)]
    out += [(Decimal(n), False) for n in _numbers(_NUMBER.sub(" ", text))]  # number words, "-fold"
    return out


# Acronyms and product or part identifiers: "SSO", "2FA", "HCl", "X2", "NADPH". Roman numerals and
# company suffixes are not claims.
_ACRONYM = re.compile(r"(?<![\w-])(?=[A-Za-z0-9]*[A-Z][A-Za-z0-9]*[A-Z0-9])(?=[A-Za-z0-9]*[A-Za-z])"
                      r"(?:[A-Z][A-Za-z0-9]*|\d+[A-Za-z][A-Za-z0-9]*)(?![\w-])")
_NOT_ACRONYMS = frozenset("inc llc llp lp ltd corp co na pc pllc pa ok am pm usa us uk id tv".split())
_ROMAN = re.compile(r"[IVXLC]+")
_ORDINAL = re.compile(r"\d+(?:st|nd|rd|th|d)", re.IGNORECASE)


def acronyms(text: str) -> set[str]:
    """Tokens with two or more capitals, or letters and digits mixed, in ``text`` (upper-cased)."""
    out = set()
    for m in _ACRONYM.finditer(text):
        token = m.group(0)
        if sum(c.isupper() for c in token) < 2 and not any(c.isdigit() for c in token):
            continue  # "Chrome", "Inbox": a capitalised word, not an acronym
        if _ROMAN.fullmatch(token) or _ORDINAL.fullmatch(token) or token.lower() in _NOT_ACRONYMS:
            continue
        out.add(token.upper())
    return out


def tokens_upper(text: str) -> set[str]:
    return {t.upper() for t in re.findall(r"[A-Za-z0-9]+", text)}
