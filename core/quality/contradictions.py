"""Contradictions an embedding cannot see: flipped outcomes and flipped negations."""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Iterable


from core.quality.lexical import _STOPWORDS, _stem


# Pairs whose swap flips a claim. Words with everyday senses ("lost profits", "including") are left out.
_OPPOSITES = [("affirmed", "reversed"), ("affirm", "reverse"), ("granted", "denied"), ("grant", "deny"),
              ("enforceable", "unenforceable"), ("valid", "invalid"), ("reasonable", "unreasonable"),
              ("lawful", "unlawful"), ("constitutional", "unconstitutional"), ("permitted", "prohibited"),
              ("allowed", "disallowed"), ("timely", "untimely"), ("unanimous", "dissenting"),
              ("guilty", "acquitted"), ("upheld", "overturned"), ("increased", "reduced"),
              ("increased", "decreased"), ("liable", "immune")]
# Everyday opposites, for answers outside legal English (support, tutoring): swapping one for the other in
# a sentence that otherwise matches a passage reverses what it says.
_OPPOSITES += [("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"), ("higher", "lower"),
               ("more", "less"), ("more", "fewer"), ("above", "below"), ("before", "after"),
               ("earlier", "later"), ("faster", "slower"), ("cheaper", "costlier"), ("gain", "lose"),
               ("win", "lose"), ("strengthen", "weaken"), ("stronger", "weaker"), ("strong", "weak"),
               ("accept", "reject"), ("allow", "prohibit"), ("allow", "forbid"), ("allow", "block"),
               ("permit", "prohibit"), ("enable", "disable"), ("include", "exclude"), ("required", "optional"),
               ("mandatory", "optional"), ("always", "never"), ("maximum", "minimum"), ("floor", "ceiling"),
               ("surplus", "shortage"), ("completely", "partly"), ("completely", "partially"),
               ("complete", "partial"), ("full", "partial"), ("public", "private"), ("open", "closed"),
               ("online", "offline"), ("first", "last"), ("true", "false"), ("success", "failure"),
               ("positive", "negative"), ("acidic", "basic"), ("absorb", "release"),
               ("import", "export"), ("internal", "external"), ("inside", "outside"), ("add", "remove"),
               ("same", "different"), ("single", "multiple"), ("temporary", "permanent"), ("buy", "sell"),
               ("lend", "borrow"), ("credit", "debit"), ("donate", "accept"), ("expand", "contract"),
               ("heat", "cool"), ("warm", "cold"), ("hot", "cold"), ("largest", "smallest"),
               ("larger", "smaller"), ("longer", "shorter"), ("oldest", "newest"), ("upper", "lower"),
               ("north", "south"), ("east", "west"), ("left", "right"), ("input", "output"),
               ("start", "stop"), ("weaken", "strengthen"), ("lost", "gained"), ("rise", "fall")]
_OPPOSITE_STEMS = [(_stem(a), _stem(b)) for a, b in _OPPOSITES]
# Negating prefixes: "mutable" against "immutable", "refundable" against "non-refundable".
_PREFIXES = ("un", "in", "im", "ir", "il", "non", "dis")
# Outcomes: a claim of one that the passages never make, while they make the other, is a contradiction
# wherever in the passages it is ("The Court of Appeals reversed" against a disposition "Affirmed").
_OUTCOMES = [("affirmed", "reversed"), ("affirm", "reverse"), ("granted", "denied"), ("grant", "deny"),
             ("enforceable", "unenforceable"), ("valid", "invalid"), ("constitutional", "unconstitutional"),
             ("guilty", "acquitted"), ("upheld", "overturned"), ("lawful", "unlawful")]
_OUTCOME_STEMS = [(_stem(a), _stem(b)) for a, b in _OUTCOMES]
_OUTCOME_SET = frozenset(_OUTCOME_STEMS)
# Legal predicates whose negation flips a holding ("was not willful", "is not liable").
# ("timely" is not among them: its stem is the noun "time"'s, and "time lost to congestion" is no holding.)
_PREDICATES = frozenset(_stem(w) for w in """liable willful negligent guilty entitled enforceable valid
proper permitted allowed necessary required voluntary responsible binding admissible unconscionable waived
preempted reasonable lawful""".split())
_NEGATIONS = frozenset("not no never nothing none nobody nowhere cannot can't don't doesn't didn't isn't wasn't "
                       "aren't weren't won't neither nor without".split())
_CLAUSE_END = re.compile(r"[.;:!?]")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’]*|[.;:!?]")
_AUXILIARIES = frozenset("be been being is are was were am do does did have has had a an the any to also "
                         "ever even really actually necessarily".split())


def _has_root(stems: Iterable[str], root: str) -> bool:
    if isinstance(stems, frozenset) and root in _ROOTS:
        return root in _roots_in(stems)
    return any(s.startswith(root) for s in stems)


# The opposites' and outcomes' stems, looked up as prefixes of a word set's stems many times per turn (each claim
# against each window and against all the turn's passages): which of them a set has is worked out once per set.
_ROOTS = frozenset(r for pair in (*_OPPOSITE_STEMS, *_OUTCOME_STEMS) for r in pair)
_ROOT_LENGTHS = sorted({len(r) for r in _ROOTS})


@lru_cache(maxsize=8192)
def _roots_in(stems: frozenset[str]) -> frozenset[str]:
    """The roots of :data:`_ROOTS` that some stem of ``stems`` starts with (memoised: the sets recur)."""
    return frozenset(s[:n] for s in stems for n in _ROOT_LENGTHS if n <= len(s) and s[:n] in _ROOTS)


# A condition states no fact ("If it still won't sync, …", "If you have no backup codes left, …"): its words
# are neither negated nor plain claims. "rather than X" and "instead of X" deny X, as "not X" does.
_CONDITION = re.compile(r"\b(?:if|unless|whether|in case)\b[^,.;:!?]*,", re.IGNORECASE)
# "failure to deliver", "fails to state", "lack of notice", "absence of consent" deny as "not" does.
_DENIAL = re.compile(r"\b(?:rather than|instead of|fail(?:s|ed|ing|ure)?\s+(?:to|of)|lack(?:s|ed|ing)?(?:\s+of)?|"
                     r"absence\s+of)\b", re.IGNORECASE)
# "dismissal with and without prejudice" names both; neither side is denied.
_BOTH = re.compile(r"\bwith\s+(?:and|or)\s+without\b", re.IGNORECASE)
# A question states nothing ("Is the clause enforceable?" in an opinion's statement of the issue): its words
# are neither claims nor denials.
_QUESTION = re.compile(r"[^.!?\n]*\?")


def _statements(text: str) -> str:
    """``text`` with what states no fact taken out: questions, conditions; denials written as "not"."""
    text = _BOTH.sub("with", _QUESTION.sub(" ", text))
    return _DENIAL.sub(" not ", _CONDITION.sub(" ", text))


@lru_cache(maxsize=8192)  # the same passage windows are read against every claim of every answer that saw them
def _negated_and_plain(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """Stems that follow a negation ("was not willful" → willful) and stems that occur un-negated."""
    negated: set[str] = set()
    plain: set[str] = set()
    pending = False
    text = _statements(text)
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
    return frozenset(negated), frozenset(plain)


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


def _contradiction(sentence: str, window: str, negation: bool = True,
                   passages_plain: set[str] = frozenset()) -> str | None:
    """Why ``sentence`` contradicts a closely matching ``window``, or None (opposites and negating prefixes;
    with ``negation``, also a claim negated on one side only). ``passages_plain``: what the turn's passages
    state anywhere; an outcome they state elsewhere is no contradiction (an opinion affirms in part and
    reverses in part, in different sentences)."""
    s_neg, s_plain = _negated_and_plain(sentence)
    w_neg, w_plain = _negated_and_plain(window)
    w_all = w_neg | w_plain
    for a, b in _OPPOSITE_STEMS:
        for x, y in ((a, b), (b, a)):
            # A plain "affirmed" against a passage that says "reversed" and never "affirmed".
            if _has_root(s_plain, x) and _has_root(w_plain, y) and not _has_root(w_all, x):
                if (a, b) in _OUTCOME_SET and _has_root(passages_plain, x):
                    continue
                return f"says '{x}…' where the passage says '{y}…'"
    for x in sorted(s_plain):
        if len(x) < 4:
            continue
        for prefix in _PREFIXES:
            # "mutable" against a passage that says "immutable" and never "mutable", and the other way round.
            if prefix + x in w_plain and x not in w_all:
                return f"says '{x}…' where the passage says '{prefix + x}…'"
            if x.startswith(prefix) and x[len(prefix):] in w_plain and x not in w_all and len(x) - len(prefix) >= 4:
                return f"says '{x}…' where the passage says '{x[len(prefix):]}…'"
    # Negation scope is guessed (the next content word), so only a negative statement against a
    # wholly positive window counts, and the other way round: "contains no necessity requirement"
    # against "Nothing in the statute adds a necessity requirement" is agreement, not a flip.
    if not negation:
        return None
    w_neg, w_plain = _negated_and_plain(_closest_clause(sentence, window))
    if not w_neg:
        for stem in sorted(s_neg & w_plain):
            return f"negates '{stem}…', which the passage affirms"
    if not s_neg:
        for stem in sorted(w_neg & s_plain):
            return f"affirms '{stem}…', which the passage negates"
    return None


def _has_negation(text: str) -> bool:
    text = _statements(text)
    return any(t.lower() in _NEGATIONS or t.lower().endswith("n't") for t in _TOKEN.findall(text))


def _polarity_flip(sentence: str, window: str) -> str | None:
    """A sentence stated plainly where the passage sentence it matches best is negated ("We do not ship to
    P.O. boxes" answered with "We can deliver to P.O. boxes"): the words differ, the meaning is reversed."""
    if _has_negation(sentence) or not _has_negation(window):
        return None
    window = _closest_clause(sentence, window)
    if not _has_negation(window):
        return None
    negated, _ = _negated_and_plain(window)
    # The sentence must speak of what the negation denies ("We can deliver to P.O. boxes" against "We do not
    # ship to P.O. boxes"): a sentence sharing none of the denied words restates the rest of the passage
    # ("… is a deterrent" from "… is not an estimate of loss; it is a deterrent").
    _, s_plain = _negated_and_plain(sentence)
    denied = _denied_words(window)
    if not any(_same_root(d, w) for d in denied for w in s_plain):
        return None
    what = ", ".join(sorted(negated)[:3])
    return f"says it without the negation the passage has ({what}…)" if what else None


def _same_root(a: str, b: str) -> bool:
    """One word's stem begins the other's ("refund" and "refundable"), four letters at least."""
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and long_.startswith(short) or a == b


def _denied_words(text: str, reach: int = 4) -> set[str]:
    """Stems of the first ``reach`` content words after each negation in ``text`` (its guessed scope)."""
    out: set[str] = set()
    left = 0
    for token in _TOKEN.findall(_statements(text).replace("-", " ")):
        if _CLAUSE_END.fullmatch(token):
            left = 0
            continue
        w = token.lower().replace("’", "'")
        if w in _NEGATIONS or w.endswith("n't"):
            left = reach
            continue
        if left and w not in _AUXILIARIES and w not in _STOPWORDS:
            out.add(_stem(w))
            left -= 1
    return out


_CLAUSES = re.compile(r"(?<=[.!?])\s+|[;:]\s+|,\s+(?:and|but|while|whereas|although)\s+")


def _closest_clause(sentence: str, window: str) -> str:
    """The sentence or clause of ``window`` that shares most words with ``sentence``.

    A window may hold two sentences, and a sentence two clauses ("requires wages paid at once, and the
    statute contains no exception"): a negation belongs to its own clause, not to its neighbour's claim.
    """
    mine = {_stem(w) for w in _TOKEN.findall(sentence.lower()) if w not in _STOPWORDS}
    parts = [p for p in _CLAUSES.split(window) if p.strip()] or [window]
    return max(parts, key=lambda p: len(mine & {_stem(w) for w in _TOKEN.findall(p.lower())}))
