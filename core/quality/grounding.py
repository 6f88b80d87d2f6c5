"""Per-sentence grounding of an answer against the passages shown for its turn (the offline verifier)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from core.corpus.embeddings import Embedder
from core.quality.common import GROUNDING_METHOD, text_hash
from core.quality.spans import locate
from core.quality.verdicts import FLAG_BAND, SentenceVerdict, TurnVerdict, band_score
from core.quality.sentences import _ABBREVIATIONS, Sentence, sentence_kind, split_sentences
from core.quality.lexical import (_blank, _compounds, _content_words, _decimal_key, _digit_numbers, _names, _numbers,
                                  _stem, _words, acronyms,
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

    supported: float = 0.66  # at or above: supported; below: not checked offline (neutral), never a flag
    similarity_weight: float = 0.5
    contradiction_gate: float = 0.6  # only a window this similar can be contradicted by a flipped word
    polarity_gate: float = 0.75  # a plain sentence this close to a negated passage sentence reverses it
    # A negation judged by its guessed scope ("not willful") counts only against a window this close: below it,
    # the negation is as often about something else in the sentence (measured on the development sets).
    negation_gate: float = 0.75
    restates_question: float = 0.8  # a sentence this close to the user's own message restates it


DEFAULT_THRESHOLDS = GroundingThresholds()
# Conversation score under which it is flagged, until reviewers' labels fit another (core.quality.reviewer_fit):
# below it, a check that shows its evidence flagged a sentence (see core.quality.verdicts.band_score).
WEAKLY_GROUNDED_BELOW = FLAG_BAND
# Windows of 1 and 2 sentences (a 2-sentence window's vector is built from its sentences'; see _windows_from).
WINDOW_SIZES = (1, 2)


@dataclass
class SentenceScore:
    text: str
    start: int
    end: int
    kind: str  # supported | not_checked | unsupported | contradicted | abstention | neutral | restates_question
    support: float | None = None
    similarity: float | None = None
    overlap: float | None = None
    passage_id: str | None = None  # the passage holding the closest window
    evidence: str | None = None  # the closest window, so a reviewer sees what the sentence was matched to
    reasons: list[str] = field(default_factory=list)  # e.g. "not in the passages: $1,810"
    check: str = ""  # which kind of check spoke (core.quality.verdicts.CHECKS); "" for no claim

    @property
    def scored(self) -> bool:
        """A claim the checks looked at (a not-checked one keeps its passage match score, for ranking)."""
        return self.kind in ("supported", "not_checked", "unsupported", "contradicted")

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

    def checks(self) -> dict[str, int]:
        """How many sentences each kind of check spoke for (the Review badge says which)."""
        out: dict[str, int] = defaultdict(int)
        for s in self.sentences:
            if s.check:
                out[s.check] += 1
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        return {"method": GROUNDING_METHOD, "score": self.score, "counts": self.counts(),
                "checks": self.checks(),
                "sentences": [asdict(s) | {"verdict": VERDICT_OF_KIND[s.kind]} for s in self.sentences],
                "citations": [c.to_json() for c in self.citations]}

    def to_verdict(self, turn: int | None = None) -> TurnVerdict:
        """The same result in the verifier-neutral shape (see :mod:`core.quality.verdicts`)."""
        return TurnVerdict(self.score, GROUNDING_METHOD, [
            SentenceVerdict(s.text, VERDICT_OF_KIND[s.kind], s.passage_id if s.scored else None,
                            s.evidence if s.scored else None, s.start, s.end, s.confidence, list(s.reasons),
                            s.check)
            for s in self.sentences], turn if turn is not None else self.idx)


# A claim the offline checks cannot decide is neutral ("not checked offline"), never a flag: flags are kept
# for what a check can show (see _score_turn).
VERDICT_OF_KIND = {"supported": "supported", "not_checked": "neutral", "unsupported": "unsupported",
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
    # Passages shown at earlier turns of the conversation: a name, figure or identifier they stated is
    # established for the turns after (the carried context the respondent sees), though not a match window.
    earlier: list[dict[str, Any]] = field(default_factory=list)


def conversation_inputs(turns: Iterable[tuple[str, str, list[dict[str, Any]] | None, int | None, int | None]]
                        ) -> list[TurnInput]:
    """One TurnInput per graded assistant turn of a conversation, with the user's messages so far and the
    passages shown at earlier turns. ``turns``: (role, content, passages — None for an answer not to grade —,
    turn id, index), in order."""
    inputs: list[TurnInput] = []
    said: list[str] = []
    shown: list[dict[str, Any]] = []
    for role, content, passages, turn_id, idx in turns:
        if role == "user":
            said.append(content or "")
        elif role == "assistant" and passages is not None:
            inputs.append(TurnInput(content or "", list(passages), list(said), turn_id, idx, earlier=list(shown)))
            shown += passages
    return inputs


@dataclass
class _Windows:
    texts: list[str]
    passage_ids: list[str | None]
    vectors: np.ndarray | None = None


class WindowCache:
    """Sentence text → its unit vector, least recently used dropped first; thread-safe.

    One per embedding model is shared by every checker in the process (:func:`shared_window_cache`), so a
    run embeds each passage sentence once although many conversations retrieve its chunk, and the review
    page re-scoring an edited turn embeds nothing of its passages again. With a ``store`` (a
    :class:`VectorStore` in the data dir) vectors outlive the process: ``grade`` and Review reuse what a
    run embedded.
    """

    def __init__(self, max_sentences: int = 50_000, store: VectorStore | None = None):  # 1.5 KB each: ~75 MB
        self.max_sentences = max_sentences
        self.store = store
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in texts:
                hit = self._entries.get(t)
                if hit is not None:
                    self._entries.move_to_end(t)
                    found[t] = hit
        missing = [t for t in texts if t not in found]
        if missing and self.store is not None:
            stored = self.store.get_many(missing)
            if stored:
                self._remember(stored)
                found.update(stored)
        return found

    def fill(self, texts: Sequence[str], encode) -> tuple[dict[str, np.ndarray], int]:
        """Unit vectors of ``texts``: cached ones looked up, the rest encoded by ``encode`` in one call and cached;
        and how many had to be encoded."""
        found = self.get_many(texts)
        missing = [t for t in texts if t not in found]
        if missing:
            encoded = encode(missing)
            fresh = {t: np.asarray(encoded[i], dtype=np.float32) for i, t in enumerate(missing)}
            self.put_many(fresh)
            found.update(fresh)
        return found, len(missing)

    def put_many(self, vectors: dict[str, np.ndarray], persist: bool = True) -> None:
        self._remember(vectors)
        if persist and self.store is not None and vectors:
            self.store.put_many(vectors)

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            for t, v in vectors.items():
                self._entries[t] = v
                self._entries.move_to_end(t)
            while len(self._entries) > self.max_sentences:
                self._entries.popitem(last=False)


class VectorStore:
    """Sentence vectors kept in the data dir by a hash of model and text (``grounding-vectors.sqlite``).

    A file of its own, not a table of the workbench database: it is a cache (deleting it loses nothing but
    time), it never holds secrets, and it grows without touching the database the reviewers write to.
    Vectors are stored as float16 (384 dimensions: 768 bytes a sentence). A store that cannot be written
    (a read-only data dir) serves what it has and keeps the rest in memory. Each read or write opens its own
    short connection (a millisecond), so no connection outlives it: an idle data dir holds no ``-wal`` or
    ``-shm`` file of this cache, and a copy of the data dir taken meanwhile is whole.
    """

    FILE = "grounding-vectors.sqlite"

    def __init__(self, data_dir: Path, model_name: str):
        self.model_name = model_name
        self.path = Path(data_dir) / self.FILE
        self._lock = threading.Lock()
        self._writable = True
        self._closed = False

    def _connect(self, write: bool):
        import sqlite3

        if write:
            conn = sqlite3.connect(str(self.path), timeout=5)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
            return conn
        if not self.path.is_file():
            return None
        # Read-write where allowed: the last connection to close then folds the WAL back and removes it (a
        # read-only one cannot, and would leave -wal and -shm behind).
        mode = "rw" if os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK) else "ro"
        return sqlite3.connect(f"file:{self.path}?mode={mode}", uri=True, timeout=5)

    def _key(self, text: str) -> str:
        return text_hash(self.model_name + "\x00" + text)

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        import sqlite3

        if self._closed or not texts:
            return {}
        keys = {self._key(t): t for t in texts}
        out: dict[str, np.ndarray] = {}
        items = list(keys)
        try:
            with self._lock:
                conn = self._connect(write=False)
                if conn is None:
                    return {}
                try:
                    for i in range(0, len(items), 500):
                        part = items[i:i + 500]
                        rows = conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})",
                                            part).fetchall()
                        for key, blob in rows:
                            out[keys[key]] = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
                finally:
                    conn.close()
        except sqlite3.Error:
            return out
        return out

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        import sqlite3

        if self._closed or not self._writable or not vectors:
            return
        rows = [(self._key(t), np.asarray(v, dtype=np.float16).tobytes()) for t, v in vectors.items()]
        try:
            with self._lock:
                conn = self._connect(write=True)
                try:
                    conn.executemany("INSERT OR IGNORE INTO vectors (key, vec) VALUES (?, ?)", rows)
                    conn.commit()
                finally:
                    conn.close()
        except sqlite3.Error:
            self._writable = False  # a full disk or a read-only dir: keep grading from memory

    def close(self) -> None:
        self._closed = True


_SHARED_CACHES: dict[tuple[str, str], WindowCache] = {}
_SHARED_CACHES_LOCK = threading.Lock()


def shared_window_cache(model_name: str, data_dir: Path | None = None) -> WindowCache:
    """The process-wide sentence-vector cache of a model (backed by the data dir's store, when given)."""
    key = (model_name, str(Path(data_dir).resolve()) if data_dir else "")
    with _SHARED_CACHES_LOCK:
        cache = _SHARED_CACHES.get(key)
        if cache is None:
            store = VectorStore(Path(data_dir), model_name) if data_dir and Path(data_dir).is_dir() else None
            cache = _SHARED_CACHES[key] = WindowCache(store=store)
        return cache


class GroundingChecker:
    """Scores answers against their passages with an already loaded :class:`Embedder`.

    Args:
        embedder: the workbench's embedder (``encode`` returns unit vectors).
        thresholds: where support scores are cut.
        cache: sentence vectors already embedded; default: the process-wide cache of this model.
        data_dir: keep sentence vectors in this data dir too (see :class:`VectorStore`), when no ``cache``
            is given.
    """

    def __init__(self, embedder: Embedder, thresholds: GroundingThresholds = DEFAULT_THRESHOLDS,
                 cache: WindowCache | None = None, data_dir: Path | None = None):
        self.embedder = embedder
        self.thresholds = thresholds
        self.cache = cache if cache is not None else shared_window_cache(embedder.model_name, data_dir)

    def score_answer(self, answer: str, passages: Sequence[dict[str, Any]], context: Sequence[str] = ()
                     ) -> TurnGrounding:
        """Grounding of one answer against its passages (see :meth:`score_turns`)."""
        return self.score_turns([TurnInput(answer, list(passages), list(context))])[0]

    def score_turns(self, turns: Sequence[TurnInput]) -> list[TurnGrounding]:
        """Grounding of several turns (a conversation, or many) with at most one ``encode`` call.

        Each sentence is compared only with windows of its own turn's passages. Only sentences are encoded,
        never single words: the claims, the user's sentences, and the passage sentences that share a word
        with some claim (the few a claim can match; see :func:`_candidates`) and are not cached yet. A
        two-sentence window's vector is the normalised sum of its sentences'.
        """
        prepared = []
        needed: dict[str, None] = {}
        for turn in turns:
            sentences = split_sentences(turn.answer)
            kinds = [sentence_kind(s.text) for s in sentences]
            claims = [s.text for s, k in zip(sentences, kinds) if k == "claim"]
            context_windows = [s.text for c in turn.context for s in split_sentences(c)]
            split = [(p.get("id"), _passage_sentences(p.get("text") or "")) for p in turn.passages]
            chosen = _candidates(claims, split)
            for text in claims + context_windows:
                needed[text] = None
            for (_, (texts, _)), picked in zip(split, chosen):
                for i in picked:
                    needed[texts[i]] = None
            prepared.append((turn, sentences, kinds, split, chosen, context_windows))
        vector_of = self._vectors(list(needed))
        results = []
        for turn, sentences, kinds, split, chosen, context_windows in prepared:
            windows = _Windows([], [])
            blocks = []
            for (pid, (texts, _)), picked in zip(split, chosen):
                wtexts, wvecs = _windows_from([texts[i] for i in picked], picked, vector_of)
                if wtexts:
                    windows.texts.extend(wtexts)
                    windows.passage_ids.extend([pid] * len(wtexts))
                    blocks.append(wvecs)
            windows.vectors = np.vstack(blocks) if blocks else None
            context_vectors = (np.array([vector_of[c] for c in context_windows], dtype=np.float32)
                               if context_windows else None)
            results.append(self._score_turn(turn, sentences, kinds, windows, context_vectors, vector_of))
        return results

    def _vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Unit vectors of ``texts``: cached ones looked up, the rest encoded in one call and cached."""
        return self.cache.fill(texts, self.embedder.encode)[0]

    # -- internals ---------------------------------------------------------------------------
    def _score_turn(self, turn: TurnInput, sentences: list[Sentence], kinds: list[str], windows: _Windows,
                    context_vectors: np.ndarray | None, vector_of: dict[str, np.ndarray]) -> TurnGrounding:
        t = self.thresholds
        sources = _source_texts([*turn.passages, *turn.earlier], turn.context)
        pool = IdentifierPool(sources)
        source_text = "\n".join(sources)
        vocabulary = {_stem(w) for w in _content_words(source_text)}
        numbers = _numbers(_blank(source_text, [(m.start(), m.end()) for m in _compounds(source_text)]))
        names = {w for w in _words(source_text)}
        tokens = tokens_upper(source_text)
        passages_negated, passages_plain = _negated_and_plain("\n".join(p.get("text") or "" for p in turn.passages))
        passage_text = {p.get("id"): p.get("text") or "" for p in turn.passages}
        source_quantities = quantities(source_text)  # once per turn, not once per sentence
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
            overlap = (sum(w in vocabulary for w in words) / len(words)) if words else 1.0
            support = t.similarity_weight * similarity + (1 - t.similarity_weight) * overlap
            # Figures a sentence computes come from the passage text it draws on, not from anywhere in five
            # passages full of amounts (where some pair adds up to almost any number).
            near = [windows.texts[i] for i in np.argsort(-sims)[:3]] if sims is not None else []
            values = typed_numbers(" ".join(near + list(turn.context)))
            facts = _missing_facts(sentence.text, pool, numbers, names, values, tokens, source_quantities)
            reasons = [why for _, why in facts]
            check = facts[0][0] if facts else ""
            contradicted = False
            if turn.passages and not reasons and sims is not None and _contradicts_passages(
                    sentence.text, passages_negated, passages_plain):
                # An outcome the passages never state, while they state its opposite: flagged only with the
                # matched passage sentence that states the opposite, as the evidence a reviewer sees.
                for i in np.argsort(-sims)[:3]:
                    why = _contradicts_passages(sentence.text, *_negated_and_plain(windows.texts[i]))
                    if why:
                        reasons.append(why)
                        best, contradicted, check = int(i), True, "polarity"
                        break
            if sims is not None and not reasons:
                # A flipped outcome or negation keeps a high similarity: look at the closest windows.
                for rank, i in enumerate(np.argsort(-sims)[:3]):
                    if sims[i] < t.contradiction_gate:
                        break
                    # A negation is judged against the closest window only: the runner-up is often about
                    # something else ("Monthly plans are not refundable" beside a claim about annual plans).
                    why = _contradiction(sentence.text, windows.texts[i],
                                         negation=rank == 0 and sims[i] >= t.negation_gate,
                                         passages_plain=passages_plain)
                    if why:
                        reasons.append(why)
                        best, contradicted, check = int(i), True, "polarity"
                        break
            if sims is not None and not reasons and similarity >= t.polarity_gate:
                why = _polarity_flip(sentence.text, windows.texts[best])
                if why:
                    reasons.append(why)
                    contradicted, check = True, "polarity"
            # Precision first: only a check that shows its evidence flags. A low passage match alone is not
            # evidence (paraphrases score low, and so do answers drawing on two passages at once): it is
            # "not checked offline", and the LLM verifier is the path for a verdict on it.
            if contradicted:
                verdict = "contradicted"
            elif reasons:
                verdict = "unsupported"
            elif support >= t.supported:
                verdict, check = "supported", "similarity"
            else:
                verdict, check = "not_checked", "none"
            if verdict not in ("supported", "unsupported", "contradicted") and context_vectors is not None:
                # "Your landlord kept $500 for cleaning" repeats the user's own facts: not a grounding failure.
                if float(np.max(context_vectors @ vec)) >= t.restates_question:
                    verdict, check = "restates_question", ""
            scored.append(SentenceScore(
                sentence.text, sentence.start, sentence.end, verdict, round(support, 4), round(similarity, 4),
                round(overlap, 4), windows.passage_ids[best] if best >= 0 else None,
                _exact_span(windows.texts[best], passage_text.get(windows.passage_ids[best]))
                if best >= 0 else None, reasons, check))
        claims = [s for s in scored if s.scored]
        flagged = sum(s.kind in ("unsupported", "contradicted") for s in claims)
        confidences = [s.confidence for s in claims if s.confidence is not None]
        score = band_score(flagged, len(claims), min(confidences) if confidences else None)
        # An amount the sentence computes from the passages' figures ("$17.60 per hour" for 8 hours stated as
        # "$140.80 per day") was judged grounded above: it is no unverified identifier either.
        citations = [f for f in _citation_flags(turn.answer, sentences, pool)
                     if f.type != "amount" or _amount_missing(f, scored)]
        return TurnGrounding(score, scored, citations, turn.turn_id, turn.idx)



def _exact_span(window: str, passage: str | None) -> str:
    """The passage's own text of a window (windows are sentences re-joined, markdown dropped)."""
    return (locate(window, passage) if passage else None) or window


_SPLIT_CACHE: OrderedDict[str, tuple[list[str], list[frozenset[str]]]] = OrderedDict()
_SPLIT_LOCK = threading.Lock()
CANDIDATES_PER_CLAIM = 3  # passage sentences a claim is compared with (by shared words), before the model
NEIGHBOURS = False  # also each pick's next sentence (for two-sentence windows)


def _window_sentences(passage: str) -> list[str]:
    """The sentences of a passage that windows are made of; headings and fragments are left out."""
    # Headings ("Procedural History") are not evidence; a short holding ("The retention was willful.") is.
    return [s.text for s in split_sentences(passage)
            if len(_content_words(s.text)) >= 2 and (s.text[-1] in ".!?\"”')" or len(s.text.split()) >= 6)]


def _passage_sentences(passage: str) -> tuple[list[str], list[frozenset[str]]]:
    """A passage's window sentences and each one's word stems; memoised (a run retrieves chunks again)."""
    key = text_hash(passage)
    with _SPLIT_LOCK:
        hit = _SPLIT_CACHE.get(key)
        if hit is not None:
            _SPLIT_CACHE.move_to_end(key)
            return hit
    texts = _window_sentences(passage)
    entry = (texts, [frozenset(_stem(w) for w in _content_words(t)) for t in texts])
    with _SPLIT_LOCK:
        _SPLIT_CACHE[key] = entry
        while len(_SPLIT_CACHE) > 4096:
            _SPLIT_CACHE.popitem(last=False)
    return entry


def _candidates(claims: Sequence[str], split: Sequence[tuple[Any, tuple[list[str], list[frozenset[str]]]]],
                per_claim: int = CANDIDATES_PER_CLAIM) -> list[list[int]]:
    """For each passage, the indices of its sentences that some claim shares the most rare words with.

    A claim can only be supported or contradicted by a passage sentence about the same things, and such a
    sentence shares words with it (names, figures, the topic's nouns). Ranking by shared words weighted by
    rarity among the turn's passage sentences picks those few before any model time is spent, so the
    encoder sees a handful of sentences per claim instead of every sentence of five chunks. Each pick
    brings its next sentence along, so the two-sentence window of a claim spanning both exists.
    """
    all_stems = [stems for _, (_, per) in split for stems in per]
    df: dict[str, int] = defaultdict(int)
    for stems in all_stems:
        for w in stems:
            df[w] += 1
    n = max(len(all_stems), 1)
    picked: list[set[int]] = [set() for _ in split]
    for claim in claims:
        mine = {_stem(w) for w in _content_words(claim)}
        ranked = []
        for p, (_, (_, per)) in enumerate(split):
            for i, stems in enumerate(per):
                shared = mine & stems
                if shared:
                    ranked.append((sum(np.log1p(n / df[w]) for w in shared), p, i))
        ranked.sort(reverse=True)
        for _, p, i in ranked[:per_claim]:
            picked[p].add(i)
            if NEIGHBOURS and i + 1 < len(split[p][1][0]):
                picked[p].add(i + 1)
    return [sorted(x) for x in picked]


def _windows_from(sentences: list[str], positions: Sequence[int], vector_of: dict[str, np.ndarray]
                  ) -> tuple[list[str], np.ndarray | None]:
    """Windows of 1 and 2 sentences (neighbours in the passage) and their vectors, from the sentences' alone.

    A two-sentence window's vector is the normalised sum of its sentences' unit vectors: it ranks windows
    as encoding the pair would (mean pooling makes the pair's embedding close to that average) for none of
    the model time, which was half of all the encoding the checks did.
    """
    texts: dict[str, np.ndarray] = {}
    for k, sentence in enumerate(sentences):
        texts.setdefault(sentence, vector_of[sentence])
        if k + 1 < len(sentences) and positions[k + 1] == positions[k] + 1:
            pair = vector_of[sentence] + vector_of[sentences[k + 1]]
            norm = float(np.linalg.norm(pair))
            texts.setdefault(sentence + " " + sentences[k + 1], pair / norm if norm else pair)
    if not texts:
        return [], None
    return list(texts), np.array(list(texts.values()), dtype=np.float32)


_CHECK_OF_TYPE = {"amount": "figure", "date": "date", "case": "citation", "docket": "citation", "statute": "citation"}


def _amount_missing(flag: CitationFlag, scored: Sequence[SentenceScore]) -> bool:
    """Whether the sentence checks found ``flag``'s amount missing (a claim's reasons name it); a sentence the
    checks did not look at keeps the flag."""
    sentence = next((c for c in scored if c.start <= flag.start < c.end), None)
    if sentence is None or not sentence.scored:
        return True
    return any(flag.text in r for r in sentence.reasons)


def _missing_facts(sentence: str, pool: IdentifierPool, numbers: set[str], names: set[str],
                   values: Sequence[tuple[Decimal, bool]] = (), tokens: set[str] = frozenset(),
                   sources: Sequence[Quantity] = ()) -> list[tuple[str, str]]:
    """Identifiers, numbers, names and acronyms in a claim that the passages (and the user) never mention,
    each as ``(check, reason)``: which kind of check found it (figure, date, name, identifier, citation).

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
        reasons.append((_CHECK_OF_TYPE.get(i.type, "identifier"), f"{i.type} not in the passages: {i.text}"))
    # Numbers inside identifiers and dates were judged above; the rest are checked one by one.
    spans = [(i.start, i.end) for i in idents if i.type in ("date", "docket", "statute", "case")]
    for m in _compounds(sentence):
        if not any(s <= m.start() < e for s, e in spans) and m.group(0).upper() not in pool.dockets:
            reasons.append(("identifier", f"not in the passages: {m.group(0)}"))
    spans += [(m.start(), m.end()) for m in _compounds(sentence)]
    # A figure with a unit is judged against the passages' figures of its dimension, in a common unit, so
    # "10 kg" beside "8 kg" is caught although a 10 appears elsewhere, and "two days" matches "48 hours".
    amount_spans = [(i.start, i.end) for i in idents if i.type == "amount"]
    if sources:
        known_dimensions = {q.dimension for q in sources}
        wrong = unsupported_quantities(sentence, sources)
        for q, said in wrong:
            if not any(s <= q.start < e for s, e in amount_spans):
                reasons.append(("figure", f"not in the passages: {q.text.strip()} (they say "
                                          f"{', '.join(k.text.strip() for k in said[:3])})"))
        spans += [(q.start, q.end) for q in quantities(sentence) if q.dimension in known_dimensions]
    amounts = {i.key for i in idents if i.type == "amount"}
    # Figures in digits only: "for two reasons", "three options" count what the answer itself lists; a number
    # word with a unit ("sixteen weeks") was judged with the quantities above.
    digits = {_decimal_key(value) for value, _ in _digit_numbers(_blank(sentence, spans))}
    for n in sorted(digits - numbers - amounts):
        if not computed(n, False):
            reasons.append(("figure", f"number not in the passages: {n}"))
    for name in sorted(_names(sentence) - names - _ABBREVIATIONS):  # "Civ." in "Columbia Civ. Code"
        # "Europe" beside "European cities", "Canada" beside "Canadian": the same name in another form.
        if len(name) >= 5 and any(w.startswith(name[:len(name) - 1]) for w in names):
            continue
        reasons.append(("name", f"name not in the passages: {name.title()}"))
    if tokens:
        for token in sorted(acronyms(_blank(sentence, spans)) - tokens):
            reasons.append(("identifier", f"identifier not in the passages: {token}"))
    return reasons


class OfflineVerifier:
    """The offline verifier behind :class:`core.quality.verdicts.Verifier`: a :class:`GroundingChecker`."""

    method = GROUNDING_METHOD

    def __init__(self, embedder: Embedder, thresholds: GroundingThresholds = DEFAULT_THRESHOLDS,
                 data_dir: Path | None = None):
        self.checker = GroundingChecker(embedder, thresholds, data_dir=data_dir)

    def verify_turns(self, turns: Sequence[TurnInput]) -> list[TurnVerdict]:
        return [g.to_verdict(t.idx) for g, t in zip(self.checker.score_turns(turns), turns)]
