"""Chunking invariants on realistic and pathological text, the wordpiece estimate, and stable ids."""

from __future__ import annotations

import hashlib
import random
import re
import uuid

import pytest

from core.corpus.chunking import MODEL_MAX_WORDPIECES, Chunk, chunk_text, estimate_wordpieces, would_truncate
from core.ids import chunk_id, content_hash, document_id, normalise_source

WORDS = ["the", "pump", "valve", "pressure", "operator", "manual", "should", "check", "filter", "before",
         "starting", "each", "shift", "and", "record", "readings", "in", "logbook", "maintenance", "seal"]


def sentence(rng: random.Random, low: int = 5, high: int = 14) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def prose(seed: int, paragraphs: int, sentences: tuple[int, int] = (2, 6)) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(paragraphs))


def assert_invariants(text: str, chunks: list[Chunk], size: int, overlap: int) -> None:
    """What every chunking must satisfy, whatever the text."""
    assert chunks, "non-blank text must give chunks"
    for index, chunk in enumerate(chunks):
        assert chunk.position == index
        assert 0 <= chunk.start < chunk.end <= len(text)
        assert chunk.text == text[chunk.start:chunk.end] == text[chunk.start:chunk.end].strip()
        assert 0 < len(chunk.text) <= size
    for previous, current in zip(chunks, chunks[1:]):
        # Strictly forward: every chunk adds text the previous one did not have.
        assert previous.start < current.start and previous.end < current.end
        shared = previous.end - current.start
        assert shared <= overlap
        if shared < 0:
            assert text[previous.end:current.start].strip() == "", "only whitespace may fall between chunks"
    # Coverage: from the first to the last non-space character, nothing is left out.
    assert chunks[0].start == len(text) - len(text.lstrip())
    assert chunks[-1].end == len(text.rstrip())


def test_blank_text_gives_no_chunks():
    assert chunk_text("") == []
    assert chunk_text(" \n\t\n  ") == []


def test_short_text_is_one_trimmed_chunk():
    assert chunk_text("\n  Hello there.  \n", size=100, overlap=10) == [Chunk(0, 3, 15, "Hello there.")]


@pytest.mark.parametrize(("size", "overlap"), [(1000, 150), (400, 60), (200, 0), (120, 50)])
def test_invariants_on_prose(size, overlap):
    text = prose(seed=size, paragraphs=80)
    chunks = chunk_text(text, size=size, overlap=overlap)
    assert_invariants(text, chunks, size, overlap)
    # Aim close to size: cuts fall in the second half of the window, so the average is well above half.
    average = sum(len(c.text) for c in chunks[:-1]) / (len(chunks) - 1)
    assert average > 0.6 * size


def test_neighbours_overlap_by_about_the_overlap_at_word_boundaries():
    text = prose(seed=1, paragraphs=60)
    chunks = chunk_text(text, size=500, overlap=120)
    assert len(chunks) > 10
    for previous, current in zip(chunks, chunks[1:]):
        shared = previous.end - current.start
        # At least half the overlap (a sentence start is worth giving up that much), at most all of it.
        assert 60 <= shared <= 120, (previous, current)
        assert previous.text.endswith(text[current.start:previous.end])
        # The shared part starts at a word: never in the middle of one.
        assert text[current.start - 1].isspace()


def test_overlap_zero_leaves_only_whitespace_between_chunks():
    text = prose(seed=2, paragraphs=40)
    chunks = chunk_text(text, size=300, overlap=0)
    assert_invariants(text, chunks, 300, 0)
    assert all(current.start >= previous.end for previous, current in zip(chunks, chunks[1:]))
    # Joining the chunks restores every word of the text in order.
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_prefers_paragraph_boundaries():
    rng = random.Random(3)
    # Paragraphs of 150-250 characters: several fit in a 1,000 character window.
    paragraphs = []
    for _ in range(40):
        paragraph = sentence(rng)
        while len(paragraph) < 150:
            paragraph += " " + sentence(rng)
        paragraphs.append(paragraph[:250].rsplit(" ", 1)[0] + ".")
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, size=1000, overlap=0)
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert text[chunk.end:chunk.end + 2] == "\n\n", chunk.text[-40:]
    for chunk in chunks[1:]:
        assert text[chunk.start - 2:chunk.start] == "\n\n"


def test_prefers_sentence_boundaries_without_paragraphs():
    rng = random.Random(9)
    # Sentences of at most 73 characters, so any 75-character stretch holds a sentence start.
    text = " ".join(sentence(rng, 3, 6) for _ in range(600))
    chunks = chunk_text(text, size=600, overlap=150)
    assert_invariants(text, chunks, 600, 150)
    assert len(chunks) > 10
    for chunk in chunks[:-1]:
        assert chunk.text[-1] in ".?!", chunk.text[-30:]
    # The overlap begins at a sentence start too, found in its window [end - 150, end - 75].
    for chunk in chunks[1:]:
        assert chunk.text[0].isupper() and text[chunk.start - 2] in ".?!", chunk.text[:30]


def test_line_breaks_count_as_sentence_boundaries():
    lines = [f"- item number {i} in the list without a full stop" for i in range(200)]
    text = "\n".join(lines)
    chunks = chunk_text(text, size=500, overlap=0)
    assert_invariants(text, chunks, 500, 0)
    assert all(chunk.text in lines or "\n" in chunk.text for chunk in chunks)
    assert all(chunk.text.split("\n")[-1] in lines for chunk in chunks)


def test_falls_back_to_words_without_punctuation():
    rng = random.Random(4)
    text = " ".join(rng.choice(WORDS) for _ in range(3000))
    chunks = chunk_text(text, size=300, overlap=40)
    assert_invariants(text, chunks, 300, 40)
    vocabulary = set(WORDS)
    for chunk in chunks:
        # Every chunk starts and ends on whole words.
        assert set(chunk.text.split()) <= vocabulary


def test_hard_cuts_text_without_spaces():
    text = "".join(random.Random(5).choice("abcdef0123456789") for _ in range(5000))
    chunks = chunk_text(text, size=1000, overlap=150)
    assert_invariants(text, chunks, 1000, 150)
    assert [len(c.text) for c in chunks[:-1]] == [1000] * (len(chunks) - 1)
    assert all(prev.end - cur.start == 150 for prev, cur in zip(chunks, chunks[1:]))


def test_cjk_text_cuts_after_sentence_marks():
    text = "这是第一个测试句子，用来检查切分。" * 200
    chunks = chunk_text(text, size=200, overlap=30)
    assert_invariants(text, chunks, 200, 30)
    assert all(chunk.text.endswith("。") for chunk in chunks)


def test_long_whitespace_runs_do_not_make_redundant_chunks():
    text = ("word " * 150 + " " * 3000 + "\n") * 20 + "end"
    chunks = chunk_text(text, size=1000, overlap=150)
    assert_invariants(text, chunks, 1000, 150)
    assert len(chunks) == 21
    assert chunks[-1].text == "end"


def test_deterministic():
    text = prose(seed=6, paragraphs=50)
    assert chunk_text(text, 700, 100) == chunk_text(text, 700, 100)


def test_rejects_sizes_that_cannot_work():
    with pytest.raises(ValueError, match="size must be at least 1"):
        chunk_text("text", size=0)
    with pytest.raises(ValueError, match="overlap must be between 0 and 499"):
        chunk_text("text", size=1000, overlap=500)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("text", size=1000, overlap=-1)


@pytest.mark.timeout(120)  # linear is well under a second; a quadratic cut search would take hours
def test_five_megabytes_of_mixed_text():
    rng = random.Random(7)
    pieces = []
    while sum(map(len, pieces)) < 5_000_000:
        kind = rng.random()
        if kind < 0.8:
            pieces.append(prose(seed=rng.randrange(10**9), paragraphs=20))
        elif kind < 0.9:
            pieces.append("x" * rng.randint(500, 5000))  # base64-like blobs
        else:
            pieces.append(" " * rng.randint(100, 3000))
    text = "\n\n".join(pieces)
    chunks = chunk_text(text)
    assert_invariants(text, chunks, 1000, 150)
    assert len(text) // 1000 < len(chunks) < len(text) // 400


def test_estimate_wordpieces():
    assert estimate_wordpieces("") == 0
    assert estimate_wordpieces("Hello, world!") == 5  # ceil(1.3 * 2) + 2 punctuation marks
    assert estimate_wordpieces("数据") == 2
    assert estimate_wordpieces("one two three four five six seven eight nine ten") == 13


def test_would_truncate():
    assert MODEL_MAX_WORDPIECES == 256
    assert not would_truncate("A short sentence.")
    assert would_truncate("word " * 200)  # 260 estimated
    assert not would_truncate("word " * 195)  # ceil(253.5) + 2 markers = 256: exactly fits
    assert would_truncate("word " * 196)  # ceil(254.8) + 2 markers = 257
    assert not would_truncate("word " * 10, max_wordpieces=15)
    assert would_truncate("word " * 10, max_wordpieces=14)


def test_default_chunks_of_plain_prose_fit_the_model():
    text = prose(seed=8, paragraphs=100)
    chunks = chunk_text(text)
    assert sum(would_truncate(c.text) for c in chunks) == 0


# ---------------------------------------------------------------------------------------------------
# Ids


def test_document_id_is_stable_and_hex():
    first = document_id("corpus", "docs/a.md", "Some text.")
    assert first == document_id("corpus", "docs/a.md", "Some text.")
    assert re.fullmatch(r"[0-9a-f]{32}", first)


def test_document_id_normalises_the_source_path():
    expected = document_id("c", "docs/a.md", "T")
    assert document_id("c", "docs\\a.md", "T") == expected
    assert document_id("c", "./docs/a.md", "T") == expected
    assert document_id("c", "docs//a.md", "T") == expected
    assert document_id("c", "docs/cafe\u0301.md", "T") == document_id("c", "docs/café.md", "T")
    assert normalise_source("a\\b\\c.txt") == "a/b/c.txt"


def test_document_id_changes_with_every_part():
    base = document_id("c", "a.md", "text")
    others = {document_id("d", "a.md", "text"), document_id("c", "b.md", "text"), document_id("c", "a.md", "text!"),
              # Shifting characters between the parts must not give the same id.
              document_id("ca", ".md", "text"), document_id("c", "a.mdt", "ext")}
    assert base not in others and len(others) == 5


def test_chunk_id_is_a_uuid_distinct_per_document_and_position():
    boilerplate = "All rights reserved."
    doc_a = document_id("c", "a.md", "A " + boilerplate)
    doc_b = document_id("c", "b.md", "B " + boilerplate)
    id_a = chunk_id(doc_a, 3, boilerplate)
    assert str(uuid.UUID(id_a)) == id_a and uuid.UUID(id_a).version == 5
    assert id_a == chunk_id(doc_a, 3, boilerplate)
    assert len({id_a, chunk_id(doc_b, 3, boilerplate), chunk_id(doc_a, 4, boilerplate),
                chunk_id(doc_a, 3, boilerplate + " ")}) == 4


def test_content_hash_is_sha256_and_accepts_lone_surrogates():
    assert content_hash("abc") == hashlib.sha256(b"abc").hexdigest()
    assert content_hash("x\ud800") != content_hash("x")
    assert re.fullmatch(r"[0-9a-f]{32}", document_id("c", "a", "bad \ud800 half pair"))
