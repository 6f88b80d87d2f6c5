"""Split document text into overlapping chunks that fit the embedding model, cutting at natural boundaries."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

# all-MiniLM-L6-v2 reads at most 256 wordpieces; anything beyond is silently dropped from the embedding.
MODEL_MAX_WORDPIECES = 256

# A cut is a position c where text[c - 1] is not whitespace: the chunk ends at c, and the next chunk
# starts at the first non-space character at or after c. Every pattern matches *at* the cut
# (match.start() is the cut) and begins with a lookbehind or a fixed character, so a failed attempt
# costs O(1) and scanning a window stays linear even in long runs of spaces.
_PARAGRAPH_CUT = re.compile(r"(?<=\S)[^\S\n]*\n[^\S\n]*\n")
_SENTENCE_CUT = re.compile(
    r"(?<=[.!?…])\s"  # "end. Next"
    r"|(?<=[.!?…][\"'”’»)\]])\s"  # 'he said "no." Next'
    r"|(?<=[。！？])"  # CJK sentences are not followed by a space
    r"|(?<=\S)[^\S\n]*\n"  # a line break ends a heading, a list item or a table row
)
_WORD_CUT = re.compile(r"(?<=\S)\s")
_NON_SPACE = re.compile(r"\S")
# Any character some cut pattern needs; without one in the window only a hard cut is possible.
_BREAKABLE = re.compile(r"[\s。！？]")
# How far past a window a separator may need to be read (e.g. "\n   \n") to be recognised.
_LOOKAHEAD = 64

_CJK_CHAR = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[^\W{_CJK_CHAR}]+")
_CJK = re.compile(rf"[{_CJK_CHAR}]")
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass
class Chunk:
    """One piece of a document: ``text == document_text[start:end]``, never empty."""

    position: int
    start: int
    end: int
    text: str
    tokens: int = 0  # the embedding tokenizer's count, when chunked to fit it (0: not counted)


def chunk_text(text: str, size: int = 1000, overlap: int = 150) -> list[Chunk]:
    """Split text into chunks of at most ``size`` characters that overlap their neighbours.

    A chunk ends at the last paragraph break in the second half of its window; failing that at
    the last sentence end, then the last space, and only for text without any whitespace at
    exactly ``size`` characters. The next chunk starts about ``overlap`` characters before the
    previous end, at a sentence start if one is close enough, else at a word start. Edges never
    carry whitespace, so ``chunk.text == text[chunk.start:chunk.end] == that.strip()``. Runs in
    time linear in the text.

    Args:
        text: The document text.
        size: The largest chunk, in characters (at least 1).
        overlap: Characters neighbouring chunks share; less than half of ``size``.

    Returns:
        The chunks in document order, positions 0, 1, 2, ...; empty for blank text.

    Raises:
        ValueError: If ``size`` or ``overlap`` is out of range.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 character, got {size}")
    # Each chunk fills at least half its window, so an overlap below that guarantees progress.
    min_fill = max(1, size // 2)
    if not 0 <= overlap < min_fill:
        raise ValueError(f"chunk overlap must be between 0 and {min_fill - 1} for size {size}, got {overlap}")

    text_end = len(text.rstrip())
    first = _skip_space(text, 0)
    if first >= text_end:
        return []

    chunks: list[Chunk] = []
    start, end = first, _chunk_end(text, first, text_end, size, min_fill)
    while True:
        chunks.append(Chunk(position=len(chunks), start=start, end=end, text=text[start:end]))
        if end >= text_end:
            return chunks
        next_start = _overlap_start(text, start, end, overlap)
        next_end = _chunk_end(text, next_start, text_end, size, min_fill)
        if next_end <= end:
            # Only when a long run of whitespace straddles the window: overlapping would give a
            # chunk that adds nothing, so continue after this chunk instead.
            next_start = _skip_space(text, end)
            next_end = _chunk_end(text, next_start, text_end, size, min_fill)
        start, end = next_start, next_end


def _skip_space(text: str, pos: int) -> int:
    """The first non-space position at or after ``pos`` (``len(text)`` if none)."""
    match = _NON_SPACE.search(text, pos)
    return match.start() if match else len(text)


def _chunk_end(text: str, start: int, text_end: int, size: int, min_fill: int) -> int:
    """Where the chunk beginning at ``start`` ends: the best cut in its window's second half."""
    if text_end - start <= size:
        return text_end
    low, high = start + min_fill, start + size
    # One quick scan spares three slower ones on text without spaces (base64, URLs, long tokens).
    if _BREAKABLE.search(text, low, high + 1):
        for pattern in (_PARAGRAPH_CUT, _SENTENCE_CUT, _WORD_CUT):
            cut = _last_cut(pattern, text, low, high)
            if cut >= 0:
                return cut
    # No whitespace in the second half of the window (a URL, base64, CJK without punctuation):
    # cut hard, trimming any whitespace the cut happens to land after.
    return start + len(text[start:high].rstrip())


def _last_cut(pattern: re.Pattern[str], text: str, low: int, high: int) -> int:
    """The latest cut of ``pattern`` in ``[low, high]``, or -1."""
    last = -1
    for match in pattern.finditer(text, low, min(len(text), high + _LOOKAHEAD)):
        if match.start() > high:
            break
        last = match.start()
    return last


def _first_cut(pattern: re.Pattern[str], text: str, low: int, high: int) -> int:
    """The earliest cut of ``pattern`` in ``[low, high)``, or -1."""
    match = pattern.search(text, low, min(len(text), high + _LOOKAHEAD))
    return match.start() if match and match.start() < high else -1


def _overlap_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the chunk after ``text[start:end]`` begins so that the two share about ``overlap`` characters."""
    if overlap == 0:
        return _skip_space(text, end)
    low = max(start + 1, end - overlap)
    # A sentence start gives the next chunk a readable beginning, worth giving up to half the overlap.
    cut = _first_cut(_SENTENCE_CUT, text, low, end)
    if cut >= 0:
        sentence_start = _skip_space(text, cut)
        if sentence_start <= end - overlap // 2:
            return sentence_start
    cut = _first_cut(_WORD_CUT, text, low, end)
    if cut >= 0:
        return _skip_space(text, cut)
    return low


def estimate_wordpieces(text: str) -> int:
    """A cheap estimate of how many wordpieces a BERT-style tokenizer makes of ``text``.

    About 1.3 pieces per word (long and rare words split), one per punctuation mark and one per
    CJK character. Good enough to warn, not to count exactly.

    Args:
        text: Any text.

    Returns:
        The estimated number of wordpieces, without the [CLS] and [SEP] markers.
    """
    words = len(_WORD.findall(text))
    return math.ceil(1.3 * words) + len(_PUNCTUATION.findall(text)) + len(_CJK.findall(text))


def would_truncate(text: str, max_wordpieces: int = MODEL_MAX_WORDPIECES) -> bool:
    """Whether the embedding model would probably cut ``text`` short.

    Args:
        text: A chunk's text.
        max_wordpieces: The model's input limit, including its two marker tokens.

    Returns:
        True when the estimate plus the [CLS] and [SEP] markers exceeds the limit.
    """
    return estimate_wordpieces(text) + 2 > max_wordpieces


# Bumped whenever chunk boundaries change, so documents chunked the old way are re-chunked on the next index.
CHUNKER_VERSION = "fit-tokens-1"


def chunk_to_fit(text: str, size: int, overlap: int, count: Callable[[list[str]], list[int]],
                 limit: int) -> list[Chunk]:
    """``chunk_text``, then every chunk the embedding model would cut short is split again, smaller.

    Characters are a poor proxy for wordpieces: legal citations, numbers and rare names take several
    pieces per word, so a 1,000-character chunk can run past a 256-wordpiece model and its end is then
    invisible to search. Each chunk is counted with the model's own tokenizer; one over ``limit`` is
    re-chunked (at natural boundaries, with a proportionally smaller size) until every piece fits.

    Args:
        text: the document text.
        size, overlap: characters, as for :func:`chunk_text`.
        count: the tokenizer's count for each text, special tokens included.
        limit: the most tokens the model reads (all-MiniLM-L6-v2: 256).

    Returns:
        Chunks in document order, positions renumbered, each ``text[start:end]`` and within ``limit``.
    """
    pending = chunk_text(text, size, overlap)
    done: list[Chunk] = []
    while pending:
        counts = count([c.text for c in pending])
        again: list[Chunk] = []
        for chunk, tokens in zip(pending, counts):
            if tokens <= limit:
                chunk.tokens = tokens
                done.append(chunk)
                continue
            # Aim 10% under the limit; the count is exact but boundaries move to the nearest break.
            smaller = max(20, int(len(chunk.text) * limit / tokens * 0.9))
            if smaller >= len(chunk.text):
                smaller = len(chunk.text) - 1
            if smaller < 20:  # a pathological run (one huge token sequence): keep it rather than loop
                chunk.tokens = tokens
                done.append(chunk)
                continue
            sub_overlap = min(overlap, max(0, smaller // 2 - 1), smaller // 5)
            again.extend(Chunk(0, chunk.start + p.start, chunk.start + p.end, p.text)
                         for p in chunk_text(chunk.text, smaller, sub_overlap))
        pending = again
    # Pieces of two overlapping oversized chunks can cover the same span: keep none that another contains.
    done.sort(key=lambda c: (c.start, -c.end))
    kept: list[Chunk] = []
    for c in done:
        if not kept or c.end > kept[-1].end:
            kept.append(c)
    return [Chunk(i, c.start, c.end, c.text, c.tokens) for i, c in enumerate(kept)]
