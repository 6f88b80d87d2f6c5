"""What a conversation is about: the documents its briefing and its answers drew on, and where a follow-up points.

A passage that was merely retrieved at turn 1 is no evidence that the conversation is about its document:
retrieval returns neighbours on purpose. So a conversation's *anchor* is the briefing's documents plus the
documents of passages an answer actually used (named by id or title, or drawn on word for word). Follow-ups
are searched within the anchor, and only used passages are carried into later turns.

A follow-up may leave the anchor: when its words name another document's title ("the case it relied on,
Voss v. Keller") the turn is about that document; when it only points away ("in the other case…") the
turn is searched without the anchor. No model call is needed for any of this, so it works with every
provider, the offline one included.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.corpus.collection import Passage
from core.corpus.lexical import query_terms
from core.generation.standalone_query import strip_noise
from core.generation.turn_context import estimate_tokens

ANCHOR_LIMIT = 6  # documents a conversation may be about at once; more is no longer "the conversation"
# A title word used in the text of more documents than this (and this share of the corpus) is vocabulary,
# not a name: the state every opinion is decided in, the brand on every manual of one maker.
NAME_MAX_DOCUMENTS = 3
NAME_MAX_SHARE = 0.1

# A word an answer shares with a passage counts by how few of the turn's passages have it: a word every
# passage has (the shared vocabulary of sibling documents) says nothing about which one was used.
USED_MIN_WEIGHT = 2.0
USED_MIN_WEIGHT_BEST = 1.0  # the best-matching passage, when no passage reaches USED_MIN_WEIGHT

# Words of a title that name nothing in particular: parties' forms, document kinds, courts.
_GENERIC_TITLE_WORDS = frozenset("""
v vs versus inc llc ltd co corp corporation company companies group holdings the of and for in on at to a an
re matter estate people state states united city county court appeals opinion decision case cases policy
policies manual user guide handbook handbooks document documents plan plans terms conditions wording
insurance insurer home travel section chapter part notes note summary overview introduction faq article
line row
""".split())
_FILE_TITLE = re.compile(r"\.(?:jsonl|json|csv|tsv|txt|md|markdown|html?|pdf|docx)\b", re.I)
_NAME_TOKEN = re.compile(r"[^\W_](?:[\w\-']*[^\W_])?", re.UNICODE)

# A follow-up that turns away from what the conversation has been about, without saying where to.
_ELSEWHERE = re.compile(
    r"\b(?:(?:the\s+)?other|another|a\s+different|the\s+second|a\s+second|a\s+similar|"
    r"(?:a|the|that|an|any|which|what)\s+(?:later|earlier|prior|older|federal|appellate|lower[- ]court))\s+"
    r"(?:case|cases|opinion|decision|court|ruling|judgment|policy|company|employer|insurer|manual|product|"
    r"device|model|router|thermostat|document|article|source|plan|contract|brand|vendor)\b"
    r"|\b(?:case|decision|opinion|authority)\s+(?:it|they|she|he|the\s+court|the\s+judge)\s+(?:cited|relied\s+on|"
    r"followed|distinguished)\b"
    r"|\b(?:relied|cited|followed)\s+(?:on\s+)?(?:it|this|that)\b|\bcited\s+(?:a|an)\b|\brelied\s+on\s+(?:a|an)\b"
    r"|\bcompared?\s+(?:it|this|that)\s+(?:to|with)\b", re.I)


def _terms(text: str) -> set[str]:
    """Content terms for overlap: words of 4+ letters cut to 6 (inflections match), numbers and identifiers whole."""
    out = set()
    for t in query_terms(text):
        if any(c.isdigit() for c in t):
            out.add(t)
        elif len(t) >= 4:
            out.add(t[:6])
    return out


def used_passages(answer: str, shown: Sequence[Passage]) -> list[Passage]:
    """The passages an answer drew on, in the order shown.

    A passage is used when the answer cites its id, or names its document's title and shares words
    with it, or shares enough distinctive words with it (words few of the shown passages have). When
    none passes, the best-matching passage does if it clears a lower bar; an answer that says the
    passages do not cover the question uses none.
    """
    if not answer or not answer.strip() or not shown:
        return []
    low = answer.lower()
    answer_terms = _terms(answer)
    passage_terms = [_terms(p.text) for p in shown]
    df = Counter(t for terms in passage_terms for t in terms)
    weights = []
    for p, terms in zip(shown, passage_terms):
        w = 0.0
        for t in terms & answer_terms:
            w += 1.0 if df[t] == 1 else 0.5 if df[t] == 2 else 0.25
        weights.append(w)
    used = []
    for i, p in enumerate(shown):
        cited = bool(p.id) and p.id.lower() in low
        named = any(len(n) >= 4 and n in low for n in title_names(p.title))
        if cited or weights[i] >= USED_MIN_WEIGHT or (named and weights[i] >= USED_MIN_WEIGHT_BEST):
            used.append(i)
    if not used:
        best = max(range(len(shown)), key=lambda i: weights[i])
        if weights[best] >= USED_MIN_WEIGHT_BEST:
            used = [best]
    return [shown[i] for i in used]


def anchor_documents(briefing_documents: Sequence[str], used_by_turn: Sequence[Sequence[Passage]],
                     limit: int = ANCHOR_LIMIT) -> list[str]:
    """The conversation's documents: its briefing's, then those its answers used, newest turn first."""
    docs: dict[str, None] = dict.fromkeys(d for d in briefing_documents if d)
    for used in reversed(used_by_turn):
        for p in used:
            if p.document_id:
                docs.setdefault(p.document_id, None)
    return list(docs)[:limit]


def evidence_to_carry(used_by_turn: Sequence[Sequence[Passage]], new: Sequence[Passage],
                      budget_tokens: int) -> list[Passage]:
    """Passages earlier answers used, newest turn first, none twice nor one of this turn's, within the budget.

    Each keeps the turn it was first retrieved for (``from_turn``), so "carried from turn 1" stays true when
    a passage is used again at turn 2 and carried on to turn 3.
    """
    seen = {p.id for p in new}
    out: list[Passage] = []
    spent = 0
    for turn in range(len(used_by_turn) - 1, -1, -1):
        for p in used_by_turn[turn]:
            if p.id in seen:
                continue
            cost = estimate_tokens(p.text)
            if spent + cost > budget_tokens:
                continue  # a shorter passage further back may still fit
            seen.add(p.id)
            spent += cost
            out.append(replace(p, carried=True, from_turn=p.from_turn if p.carried and p.from_turn else turn + 1,
                               ranks={}))
    return out


def is_file_title(title: str) -> bool:
    """A title that is only a file name (the loader's last resort): it names no subject."""
    return bool(_FILE_TITLE.search(title or ""))


def title_names(title: str) -> list[str]:
    """The words of a title that name its document: proper names, numbers and model codes, lower-cased."""
    if not title or is_file_title(title):
        return []
    out: dict[str, None] = {}
    for token in _NAME_TOKEN.findall(title):
        low = token.lower().strip("'")
        if low in _GENERIC_TITLE_WORDS or len(low) < 2:
            continue
        if token[0].isupper() or any(c.isdigit() for c in token):
            out.setdefault(low, None)
    return list(out)


@dataclass
class TitleIndex:
    """Which documents a piece of text names, by the distinctive words of their titles.

    A title word names its document only if few documents' *text* uses it: "Columbia" in "Abernathy v.
    Columbia Department of Motor Vehicles" is the state every opinion is decided in, not a name for one.
    """

    names: dict[str, list[str]]  # document id -> its title's name words
    df: Counter  # name word -> how many titles have it
    text_df: Callable[[str], int] | None = None  # name word -> how many documents' text uses it
    n_documents: int = 0
    _text_df_cache: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, titles: Mapping[str, str], text_df: Callable[[str], int] | None = None) -> "TitleIndex":
        names = {doc: title_names(title) for doc, title in titles.items()}
        names = {doc: words for doc, words in names.items() if words}
        return cls(names, Counter(w for words in names.values() for w in set(words)), text_df, len(titles))

    def _common_in_text(self, word: str) -> bool:
        if self.text_df is None:
            return False
        if word not in self._text_df_cache:
            self._text_df_cache[word] = self.text_df(word)
        return self._text_df_cache[word] > max(NAME_MAX_DOCUMENTS, NAME_MAX_SHARE * self.n_documents)

    def named(self, text: str) -> list[str]:
        """Documents whose title ``text`` names: one word only that title has, or two words of it.

        Only words written as names count (capitalised, or with digits), so the everyday sense of a
        title word ("summit", "harbor") names nothing.
        """
        if not text or not self.names:
            return []
        said = {t.lower().strip("'") for t in _NAME_TOKEN.findall(text)
                if t[0].isupper() or any(c.isdigit() for c in t)}
        if not said:
            return []
        rare_limit = max(1, len(self.names) // 20)  # a word in more than 5% of titles names a family, not one
        out = []
        for doc, words in self.names.items():
            hits = [w for w in words if w in said and not self._common_in_text(w)]
            if not hits:
                continue
            unique = [w for w in hits if self.df[w] == 1]
            rare = [w for w in hits if self.df[w] <= rare_limit]
            if unique or len(rare) >= 2 or (len(hits) >= 2 and len(hits) == len(words)):
                out.append(doc)
        return out


def points_elsewhere(text: str) -> bool:
    """The message turns to another document without naming it ("in the other case", "compare it with")."""
    return bool(_ELSEWHERE.search(text or ""))


@dataclass
class Focus:
    """What a turn is searched within: its documents (None: the whole corpus) and what titles name them."""

    documents: list[str] | None
    anchored: bool  # the turn is about these documents: no other document is pushed in for variety
    subject: list[str]  # titles of the focus documents, for the standalone query
    reason: str  # anchor | named | elsewhere | open


def turn_focus(message: str, proposed_query: str, anchor: Sequence[str], titles: Mapping[str, str],
               index: TitleIndex | None) -> Focus:
    """Where a follow-up is searched: the anchor, another document it names, or (pointing away) anywhere."""
    # A passage header copied into the model's query names its title: markup is not the user naming it.
    text = f"{message}\n{strip_noise(proposed_query or '')}"
    named = index.named(text) if index is not None else []
    outside = [d for d in named if d not in anchor]
    if outside:
        docs = outside[:ANCHOR_LIMIT]
        return Focus(docs, True, _subject(docs, titles), "named")
    if points_elsewhere(message):
        return Focus(None, False, [], "elsewhere")
    if not anchor:
        return Focus(None, False, [], "open")
    docs = list(anchor)
    if named:  # the message names one of the anchor's documents: that one leads
        docs = [d for d in named if d in anchor] + [d for d in docs if d not in named]
    return Focus(docs, True, _subject(docs, titles), "anchor")


def _subject(documents: Iterable[str], titles: Mapping[str, str], limit: int = 2) -> list[str]:
    out = []
    for d in documents:
        title = titles.get(d, "")
        if title and not is_file_title(title) and title not in out:
            out.append(title)
        if len(out) >= limit:
            break
    return out
