"""Quantities with units ("8 kg", "48 hours", "two full days"): a figure is checked against the passages'
figures of the same kind, in a common unit.

A bare-number check lets "a cabin bag of up to 10 kg" pass beside a passage that says "8 kg" as long as a
10 appears anywhere (or can be computed from any two figures, as 40 − 30 cm); and it flags "two full days"
beside "48 hours". Comparing quantities of one dimension (time, mass, length, temperature, share, money in
one currency) in a base unit catches the first and accepts the second, in any domain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from core.quality.lexical import _TEENS, _TENS, _UNITS

# unit word → (dimension, factor to the dimension's base unit)
_TIME = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "hr": 3600, "h": 3600, "day": 86400,
         "week": 7 * 86400, "fortnight": 14 * 86400, "month": 30 * 86400, "year": 365 * 86400}
_MASS = {"mg": Decimal("0.001"), "milligram": Decimal("0.001"), "g": 1, "gram": 1, "kg": 1000, "kilogram": 1000,
         "lb": Decimal("453.6"), "pound": Decimal("453.6")}
_LENGTH = {"mm": Decimal("0.1"), "millimetre": Decimal("0.1"), "millimeter": Decimal("0.1"), "cm": 1,
           "centimetre": 1, "centimeter": 1, "m": 100, "metre": 100, "meter": 100, "km": 100000,
           "kilometre": 100000, "kilometer": 100000, "inch": Decimal("2.54"), "in": None, "mile": 160934}
_VOLUME = {"ml": 1, "millilitre": 1, "milliliter": 1, "l": 1000, "litre": 1000, "liter": 1000}
_SHARE = {"%": 1, "percent": 1, "per cent": 1, "percentage point": 1}
_TEMPERATURE = {"c": 1, "°c": 1, "degree": 1, "degrees celsius": 1, "celsius": 1}
_CURRENCY = {"eur": "EUR", "euro": "EUR", "€": "EUR", "usd": "USD", "dollar": "USD", "$": "USD", "gbp": "GBP",
             "pound sterling": "GBP", "£": "GBP"}

_DIMENSIONS: dict[str, tuple[str, Decimal]] = {}
for _dim, _table in (("time", _TIME), ("mass", _MASS), ("length", _LENGTH), ("volume", _VOLUME),
                     ("share", _SHARE), ("temperature", _TEMPERATURE)):
    for _word, _factor in _table.items():
        if _factor is not None:
            _DIMENSIONS[_word] = (_dim, Decimal(str(_factor)))
for _word, _code in _CURRENCY.items():
    _DIMENSIONS[_word] = ("money:" + _code, Decimal(1))

# "a"/"an" are left out ("twice a day" is a rate, not one day), except before "fortnight" (see _FORTNIGHT).
_WORD_VALUES = {**_UNITS, **_TEENS, **_TENS, "one": 1, "a single": 1, "half a": Decimal("0.5"),
                "a couple of": 2, "a dozen": 12, "a hundred": 100}
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _DIMENSIONS if u not in ("$", "€", "£")), key=len, reverse=True))
_NUMBER_ALT = (r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|"
               + "|".join(sorted((re.escape(w) for w in _WORD_VALUES), key=len, reverse=True)))
# A number, at most one word between ("two full days", "48 business hours"), then a unit (plural allowed).
_AFTER = re.compile(r"(?<![\w.])(?P<num>" + _NUMBER_ALT + r")(?:[\s-]+(?P<tens_unit>"
                    + "|".join(_UNITS) + r"))?(?:\s*|-)(?:[a-z]+\s+)?(?P<unit>" + _UNIT_ALT
                    + r")(?:e?s)?(?![\w])", re.IGNORECASE)
_VAGUE = re.compile(r"(?i)^(?:a|an|half a|a single)\s+(?:few|couple|number|lot|bit|little|several|many|couple of)\b")
# A currency sign before the number: "€40", "$1,200".
_BEFORE = re.compile(r"(?P<unit>[$€£])\s?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Quantity:
    text: str
    dimension: str
    value: Decimal  # in the dimension's base unit
    start: int
    end: int


def _number(text: str, tens_unit: str | None) -> Decimal | None:
    word = " ".join(text.lower().split())
    if word in _WORD_VALUES:
        value = Decimal(str(_WORD_VALUES[word]))
        if tens_unit and word in _TENS:
            value += _UNITS[tens_unit.lower()]
        return value
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def quantities(text: str) -> list[Quantity]:
    """Every quantity with a unit in ``text``, its value in its dimension's base unit."""
    out: list[Quantity] = []
    for m in _AFTER.finditer(text):
        unit = m.group("unit").lower()
        value = _number(m.group("num"), m.group("tens_unit"))
        # "a m", "in" and similar one-letter readings are too ambiguous without a digit in front.
        if value is None or (not m.group("num")[0].isdigit() and len(unit) <= 2) or _VAGUE.match(m.group(0)):
            continue  # "a few hours" states no figure
        dimension, factor = _DIMENSIONS[unit]
        out.append(Quantity(m.group(0), dimension, value * factor, m.start(), m.end()))
    for m in re.finditer(r"\b(?:a|one)\s+fortnight\b", text, flags=re.IGNORECASE):
        out.append(Quantity(m.group(0), "time", Decimal(14 * 86400), m.start(), m.end()))
    for m in _BEFORE.finditer(text):
        value = _number(m.group("num"), None)
        if value is not None and not any(q.start <= m.start() < q.end for q in out):
            dimension, factor = _DIMENSIONS[m.group("unit")]
            out.append(Quantity(m.group(0), dimension, value * factor, m.start(), m.end()))
    return out


def _derived(value: Decimal, same: list[Decimal]) -> bool:
    """A sum or difference of two different figures of one currency ("$290 + $40" stated as "$330")."""
    for i, a in enumerate(same):
        for b in same[i + 1:]:
            if value in (a + b, abs(a - b)):
                return True
    return False


def unsupported_quantities(sentence: str, sources: str | Sequence[Quantity]) -> list[tuple[Quantity, list[Quantity]]]:
    """The sentence's quantities that no quantity of the same dimension in ``sources`` states or adds up
    to (amounts of money only), each with what the sources do say. A dimension the sources never mention is
    not judged here. ``sources``: the text, or its :func:`quantities` when a caller checks many sentences."""
    known = quantities(sources) if isinstance(sources, str) else list(sources)
    out = []
    mine = quantities(sentence)
    for q in mine:
        same = [k for k in known if k.dimension == q.dimension]
        if not same:
            continue
        values = [k.value for k in same]
        # Only money is computed from: "four weeks" beside "two weeks" and "seven days" is a changed figure,
        # not two fortnights, while "$330 owed" is the rent plus the fee.
        if q.value in values or (q.dimension.startswith("money:") and _derived(q.value, values)):
            continue
        # A sentence that shows its work ("Three weeks is 21 days, so you are 7 days past the 14-day window")
        # computes from a figure of its own and one of the sources.
        shown = [o.value for o in mine if o is not q and o.dimension == q.dimension]
        if any(q.value in (a + b, abs(a - b)) for a in shown for b in values):
            continue
        out.append((q, same))
    return out
