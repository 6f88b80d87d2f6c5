"""Per-sentence grounding of an answer against the passages shown for its turn (the offline verifier)."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from core.embeddings import Embedder
from core.quality.common import GROUNDING_METHOD, text_hash
from core.quality.spans import locate
from core.quality.verdicts import SentenceVerdict, TurnVerdict
from core.quality.sentences import Sentence, sentence_kind, split_sentences
from core.quality.lexical import (_blank, _compounds, _content_words, _names, _numbers, _stem, _words, acronyms,
                                  derivable, tokens_upper, typed_numbers)
from core.quality.quantities import Quantity, quantities, unsupported_quantities
from core.quality.citations import CitationFlag, IdentifierPool, _citation_flags, _source_texts, extract_identifiers
from core.quality.contradictions import _contradiction, _contradicts_passages, _negated_and_plain, _polarity_flip


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
    polarity_gate: float = 0.7  # a plain sentence this close to a negated passage sentence reverses it
    restates_question: float = 0.8  # a sentence this close to the user's own message restates it
    weak_credit: float = 0.5  # a weak sentence counts this much towards the turn score


DEFAULT_THRESHOLDS = GroundingThresholds()
WEAKLY_GROUNDED_BELOW = 0.7  # conversation score under which the review page lists it as weakly grounded
# 3-sentence windows measured the same precision and recall on the labelled set for a third more encoding.
WINDOW_SIZES = (1, 2)
# A word the passages do not use counts towards the overlap by its similarity to the closest passage word
# when that is at least this ("soak" for "water", "fortnight" for "weeks"): paraphrases keep their support.
SOFT_WORD = 0.6


@dataclass
class SentenceScore:
    text: str
    start: int
    end: int
    kind: str  # supported | weak | unsupported | contradicted | abstention | neutral | restates_question
    support: float | None = None
    similarity: float | None = None
    overlap: float | None = None
    passage_id: str | None = None  # the passage holding the closest window
    evidence: str | None = None  # the closest window, so a reviewer sees what the sentence was matched to
    reasons: list[str] = field(default_factory=list)  # e.g. "not in the passages: $1,810"

    @property
    def scored(self) -> bool:
        return self.kind in ("supported", "weak", "unsupported", "contradicted")

    @property
    def confidence(self) -> float | None:
        """How well supported, 0..1: the support score, cut to a quarter when a check found a reason."""
        if not self.scored or self.support is None:
            return None
        return round(max(0.0, min(1.0, self.support * (0.25 if self.reasons else 1.0))), 4)


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
                "sentences": [asdict(s) | {"verdict": VERDICT_OF_KIND[s.kind]} for s in self.sentences],
                "citations": [c.to_json() for c in self.citations]}

    def to_verdict(self, turn: int | None = None) -> TurnVerdict:
        """The same result in the verifier-neutral shape (see :mod:`core.quality.verdicts`)."""
        return TurnVerdict(self.score, GROUNDING_METHOD, [
            SentenceVerdict(s.text, VERDICT_OF_KIND[s.kind], s.passage_id if s.scored else None,
                            s.evidence if s.scored else None, s.start, s.end, s.confidence, list(s.reasons))
            for s in self.sentences], turn if turn is not None else self.idx)


# A weak sentence is not flagged: it counts half towards the turn score, and the review page colours it.
VERDICT_OF_KIND = {"supported": "supported", "weak": "supported", "unsupported": "unsupported",
                   "contradicted": "contradicted", "abstention": "neutral", "neutral": "neutral",
                   "restates_question": "neutral"}


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
        key = text_hash(text)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, text: str, windows: list[str], vectors: np.ndarray | None) -> tuple[list[str], np.ndarray]:
        entry = (windows, vectors if vectors is not None else np.zeros((0, 1), dtype=np.float32))
        with self._lock:
            self._entries[text_hash(text)] = entry
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
        self._word_cache: dict[str, np.ndarray] = {}  # single words → vectors (a vocabulary: stays small)

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
            # Single words, for the credit a paraphrased word gets (see SOFT_WORD): encoded in the same call.
            source_text = "\n".join(_source_texts(turn.passages, turn.context))
            for w in [*(w for c in claims for w in _content_words(c)), *_content_words(source_text)]:
                if not w.isdigit() and w not in self._word_cache:
                    to_encode[w] = None
            prepared.append((turn, sentences, kinds, passage_windows, context_windows))
        texts = list(to_encode)
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
        vector_of = {t: vectors[i] for i, t in enumerate(texts)}
        if len(self._word_cache) > 50_000:  # ~75 MB of vectors: start over rather than grow with every corpus
            self._word_cache.clear()
        for t, v in vector_of.items():
            if " " not in t and t not in self._word_cache:
                self._word_cache[t] = v
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
    def _soft_credit(self, word: str, source_words: Sequence[str], matrix: list[np.ndarray]) -> float:
        """Credit for a word the passages do not use: its closest passage word's similarity, if close."""
        if not source_words or word.isdigit():
            return 0.0
        vector = self._word_cache.get(word)
        if vector is None:
            return 0.0
        if not matrix:
            matrix.append(np.array([self._word_cache[w] for w in source_words if w in self._word_cache],
                                   dtype=np.float32))
        if not len(matrix[0]):
            return 0.0
        sims = matrix[0] @ vector
        best = float(np.max(sims))
        return best if best >= SOFT_WORD else 0.0

    def _score_turn(self, turn: TurnInput, sentences: list[Sentence], kinds: list[str], windows: _Windows,
                    context_vectors: np.ndarray | None, vector_of: dict[str, np.ndarray]) -> TurnGrounding:
        t = self.thresholds
        sources = _source_texts(turn.passages, turn.context)
        pool = IdentifierPool(sources)
        source_text = "\n".join(sources)
        vocabulary = {_stem(w) for w in _content_words(source_text)}
        numbers = _numbers(_blank(source_text, [(m.start(), m.end()) for m in _compounds(source_text)]))
        names = {w for w in _words(source_text)}
        tokens = tokens_upper(source_text)
        passages_negated, passages_plain = _negated_and_plain("\n".join(p.get("text") or "" for p in turn.passages))
        passage_text = {p.get("id"): p.get("text") or "" for p in turn.passages}
        source_words = sorted({w for w in _content_words(source_text) if not w.isdigit()})
        source_quantities = quantities(source_text)  # once per turn, not once per sentence
        source_matrix: list[np.ndarray] = []  # their vectors, encoded when a sentence first needs them
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
            raw = _content_words(sentence.text)
            words = [_stem(w) for w in raw]
            overlap = (sum(1.0 if w in vocabulary else self._soft_credit(r, source_words, source_matrix)
                           for w, r in zip(words, raw)) / len(words)) if words else 1.0
            support = t.similarity_weight * similarity + (1 - t.similarity_weight) * overlap
            # Figures a sentence computes come from the passage text it draws on, not from anywhere in five
            # passages full of amounts (where some pair adds up to almost any number).
            near = [windows.texts[i] for i in np.argsort(-sims)[:3]] if sims is not None else []
            values = typed_numbers(" ".join(near + list(turn.context)))
            reasons = _missing_facts(sentence.text, pool, numbers, names, values, tokens, source_quantities)
            contradicted = False
            if turn.passages and not reasons:
                why = _contradicts_passages(sentence.text, passages_negated, passages_plain)
                if why:
                    reasons.append(why)
                    contradicted = True
            if sims is not None and not reasons:
                # A flipped outcome or negation keeps a high similarity: look at the closest windows.
                for rank, i in enumerate(np.argsort(-sims)[:3]):
                    if sims[i] < t.contradiction_gate:
                        break
                    # A negation is judged against the closest window only: the runner-up is often about
                    # something else ("Monthly plans are not refundable" beside a claim about annual plans).
                    why = _contradiction(sentence.text, windows.texts[i], negation=rank == 0)
                    if why:
                        reasons.append(why)
                        best, contradicted = int(i), True
                        break
            if sims is not None and not reasons and similarity >= t.polarity_gate:
                why = _polarity_flip(sentence.text, windows.texts[best])
                if why:
                    reasons.append(why)
                    contradicted = True
            if contradicted:
                verdict = "contradicted"
            elif reasons:
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
                _exact_span(windows.texts[best], passage_text.get(windows.passage_ids[best]))
                if best >= 0 else None, reasons))
        checked = [s for s in scored if s.scored]
        score = None
        if checked:
            credit = {"supported": 1.0, "weak": t.weak_credit, "unsupported": 0.0, "contradicted": 0.0}
            score = round(sum(credit[s.kind] for s in checked) / len(checked), 4)
        citations = _citation_flags(turn.answer, sentences, pool)
        return TurnGrounding(score, scored, citations, turn.turn_id, turn.idx)



def _exact_span(window: str, passage: str | None) -> str:
    """The passage's own text of a window (windows are sentences re-joined, markdown dropped)."""
    return (locate(window, passage) if passage else None) or window


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


def _missing_facts(sentence: str, pool: IdentifierPool, numbers: set[str], names: set[str],
                   values: Sequence[tuple[Decimal, bool]] = (), tokens: set[str] = frozenset(),
                   sources: Sequence[Quantity] = ()) -> list[str]:
    """Identifiers, numbers, names and acronyms in a claim that the passages (and the user) never mention.

    A figure that is the sum, difference, product, ratio or percentage of two figures of the passages,
    the user's messages or the sentence itself ("$290 + $40" stated as "$330") is not missing.
    """
    reasons = []
    own = typed_numbers(sentence)

    def computed(key: str, money: bool) -> bool:
        try:
            value = Decimal(key)
        except (InvalidOperation, ValueError):
            return False
        if not money and value == value.to_integral() and 1900 <= value <= 2100:
            return False  # a year is stated, not computed
        digits = sorted(str(value.normalize()))
        if any(sorted(str(v.normalize())) == digits for v, _ in values):
            return False  # "$4,560" beside "$4,650": swapped digits, not arithmetic
        return derivable(value, money, [*values, *(v for v in own if v[0] != value)])

    idents = extract_identifiers(sentence)
    missing = [i for i in idents if not pool.contains(i) and not (i.type == "amount" and computed(i.key, True))]
    for i in missing:
        reasons.append(f"{i.type} not in the passages: {i.text}")
    # Numbers inside identifiers and dates were judged above; the rest are checked one by one.
    spans = [(i.start, i.end) for i in idents if i.type in ("date", "docket", "statute", "case")]
    for m in _compounds(sentence):
        if not any(s <= m.start() < e for s, e in spans) and m.group(0).upper() not in pool.dockets:
            reasons.append(f"not in the passages: {m.group(0)}")
    spans += [(m.start(), m.end()) for m in _compounds(sentence)]
    # A figure with a unit is judged against the passages' figures of its dimension, in a common unit, so
    # "10 kg" beside "8 kg" is caught although a 10 appears elsewhere, and "two days" matches "48 hours".
    amount_spans = [(i.start, i.end) for i in idents if i.type == "amount"]
    if sources:
        known_dimensions = {q.dimension for q in sources}
        wrong = unsupported_quantities(sentence, sources)
        for q, said in wrong:
            if not any(s <= q.start < e for s, e in amount_spans):
                reasons.append(f"not in the passages: {q.text.strip()} (they say {', '.join(k.text.strip() for k in said[:3])})")
        spans += [(q.start, q.end) for q in quantities(sentence) if q.dimension in known_dimensions]
    amounts = {i.key for i in idents if i.type == "amount"}
    for n in sorted(_numbers(_blank(sentence, spans)) - numbers - amounts):
        if not computed(n, False):
            reasons.append(f"number not in the passages: {n}")
    for name in sorted(_names(sentence) - names):
        # "Europe" beside "European cities", "Canada" beside "Canadian": the same name in another form.
        if len(name) >= 5 and any(w.startswith(name[:len(name) - 1]) for w in names):
            continue
        reasons.append(f"name not in the passages: {name.title()}")
    if tokens:
        for token in sorted(acronyms(_blank(sentence, spans)) - tokens):
            reasons.append(f"identifier not in the passages: {token}")
    return reasons


class OfflineVerifier:
    """The offline verifier behind :class:`core.quality.verdicts.Verifier`: a :class:`GroundingChecker`."""

    method = GROUNDING_METHOD

    def __init__(self, embedder: Embedder, thresholds: GroundingThresholds = DEFAULT_THRESHOLDS):
        self.checker = GroundingChecker(embedder, thresholds)

    def verify_turns(self, turns: Sequence[TurnInput]) -> list[TurnVerdict]:
        return [g.to_verdict(t.idx) for g, t in zip(self.checker.score_turns(turns), turns)]
