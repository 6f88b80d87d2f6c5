"""Contradictions an embedding cannot see: flipped outcomes and flipped negations."""

from __future__ import annotations

import re
from collections.abc import Iterable


from core.quality.lexical import _STOPWORDS, _stem


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
