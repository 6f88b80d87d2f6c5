"""Loaders on real files of every supported format, and on every kind of bad input they must explain."""

from __future__ import annotations

import io
import json
from pathlib import Path

import docx
import pytest
from pypdf import PdfReader, PdfWriter

from core.corpus import loaders
from core.errors import IngestError
from core.corpus.loaders import (
    MAX_DOCUMENT_BYTES,
    SUPPORTED_EXTENSIONS,
    LoadedDocument,
    load_file,
    load_files,
    load_path,
    safe_upload_name,
)


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal but valid PDF with one Helvetica text stream per page (lines split on "\\n")."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * index for index in range(len(pages))]
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, text in zip(page_ids, pages):
        operators = " ".join(f"({escape(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {operators} ET".encode()
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>").encode()
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info_id = max(objects) + 1
    if title:
        objects[info_id] = f"<< /Title ({escape(title)}) >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    info = f" /Info {info_id} 0 R" if title else ""
    out += f"trailer\n<< /Size {size} /Root 1 0 R{info} >>\nstartxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    return write(path, "\n".join(json.dumps(row) for row in rows) + "\n")


def only(documents: list[LoadedDocument]) -> LoadedDocument:
    assert len(documents) == 1, documents
    return documents[0]


# ---------------------------------------------------------------------------------------------------
# Every format


def test_supported_extensions_cover_every_format():
    assert SUPPORTED_EXTENSIONS == {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl", ".csv"}


def test_txt_keeps_text_and_titles_from_first_non_empty_line(tmp_path):
    path = write(tmp_path / "notes.txt",
                 "\n\n  Shipping policy  \r\nWe ship on Mondays.\r\n\r\nReturns take 30 days.\n")
    document = only(load_file(path))
    assert document.title == "Shipping policy"
    # Windows line endings are unified so paragraph breaks are recognised when chunking.
    assert document.text == "Shipping policy  \nWe ship on Mondays.\n\nReturns take 30 days."
    assert document.source_path == "notes.txt"
    assert document.metadata == {"format": "txt", "encoding": "UTF-8"}


def test_markdown_title_is_first_h1_outside_code_fences(tmp_path):
    text = "Intro line\n\n```python\n# not a heading\n```\n\n## Sub\n\n# Real Title\n\nBody text.\n"
    document = only(load_file(write(tmp_path / "guide.md", text)))
    assert document.title == "Real Title"
    assert document.text == text.strip()
    assert document.metadata["format"] == "md"


def test_markdown_without_heading_uses_first_line_or_front_matter(tmp_path):
    plain = only(load_file(write(tmp_path / "a.markdown", "## Setup steps\n\nRun it.")))
    assert plain.title == "Setup steps"
    front = only(load_file(write(tmp_path / "b.md", "---\ntitle: \"From Front Matter\"\ntags: x\n---\nBody only.")))
    assert front.title == "From Front Matter"


def test_bare_hash_line_is_not_a_title(tmp_path):
    # Only a lone "#" on the first line: no heading text, so the first real line wins.
    assert only(load_file(write(tmp_path / "c.md", "#\n\nActual words"))).title == "Actual words"


def test_html_drops_scripts_keeps_inline_text_together_and_separates_blocks(tmp_path):
    html = """<html><head><title>Return Policy</title><style>p {color: red}</style>
    <script>var secret = 1;</script></head><body><h1>Returns</h1>
    <p>Items can be <b>returned</b> within <a href="#">30 days</a>.</p>
    <div>Second block<br>next line</div><ul><li>one</li><li>two</li></ul>
    <table><tr><td>cell a</td><td>cell b</td></tr></table><script>alert(1)</script></body></html>"""
    document = only(load_file(write(tmp_path / "policy.html", html)))
    assert document.title == "Return Policy"
    assert document.text == ("Returns\n\nItems can be returned within 30 days.\n\nSecond block\nnext line\n\n"
                             "one\ntwo\n\ncell a cell b")
    assert "secret" not in document.text and "color" not in document.text and "alert" not in document.text
    assert document.metadata["format"] == "html"


def test_html_title_falls_back_to_h1_then_file_name(tmp_path):
    assert only(load_file(write(tmp_path / "a.htm", "<body><h1>Big  Heading</h1><p>x</p></body>"))).title == \
        "Big Heading"
    assert only(load_file(write(tmp_path / "b.html", "<p>Just a paragraph.</p>"))).title == "b.html"


def test_pdf_pages_are_joined_with_blank_lines_and_counted(tmp_path):
    path = write(tmp_path / "manual.pdf", make_pdf(["Page one says hello.\nSecond line.", "Page two says bye."]))
    document = only(load_file(path))
    assert document.text == "Page one says hello.\nSecond line.\n\nPage two says bye."
    assert document.metadata == {"format": "pdf", "pages": 2}
    assert document.title == "manual.pdf"


def test_pdf_title_comes_from_its_metadata(tmp_path):
    path = write(tmp_path / "t.pdf", make_pdf(["Body."], title="Operator Manual"))
    assert only(load_file(path)).title == "Operator Manual"


def test_docx_paragraphs_and_tables_in_order(tmp_path):
    document = docx.Document()
    document.add_heading("Warranty Terms", level=1)
    document.add_paragraph("The warranty lasts two years.")
    document.add_paragraph("")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Part"
    table.rows[0].cells[1].text = "Years"
    document.add_paragraph("Batteries are excluded.")
    path = tmp_path / "warranty.docx"
    document.save(str(path))

    loaded = only(load_file(path))
    assert loaded.title == "Warranty Terms"
    assert loaded.text == "Warranty Terms\n\nThe warranty lasts two years.\n\nPart | Years\n\nBatteries are excluded."
    assert loaded.metadata == {"format": "docx"}


def test_docx_title_prefers_core_properties(tmp_path):
    document = docx.Document()
    document.core_properties.title = "Official Title"
    document.add_paragraph("Some text.")
    path = tmp_path / "p.docx"
    document.save(str(path))
    assert only(load_file(path)).title == "Official Title"


def test_jsonl_one_document_per_line_with_scalar_metadata(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [
        {"id": 7, "title": "Opening hours", "text": "We open at nine.", "score": 0.5, "tags": ["a"], "ok": True},
        {"name": "Parking", "text": "Parking is free.", "extra": {"nested": 1}},
        {"text": "No title here.", "format": "markdown"},
    ])
    documents = load_file(path)
    assert [d.title for d in documents] == ["Opening hours", "Parking", "faq.jsonl line 3"]
    assert [d.text for d in documents] == ["We open at nine.", "Parking is free.", "No title here."]
    assert documents[0].metadata == {"format": "jsonl", "line": 1, "id": 7, "title": "Opening hours",
                                     "score": 0.5, "ok": True}
    assert documents[1].metadata == {"format": "jsonl", "line": 2, "name": "Parking"}
    # A record's own "format" field must not overwrite (or be overwritten by) the loader's.
    assert documents[2].metadata == {"format": "jsonl", "line": 3, "field_format": "markdown"}
    assert all(d.source_path == "faq.jsonl" for d in documents)


def test_jsonl_with_a_chosen_text_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "Alpha.", "text": "not this"}, {"body": "Beta."}])
    documents = load_file(path, text_field="body")
    assert [d.text for d in documents] == ["Alpha.", "Beta."]
    assert documents[0].metadata["text"] == "not this"


def test_csv_one_document_per_row(tmp_path):
    path = write(tmp_path / "kb.csv", 'id,Title,text\n1,First,"Hello, world."\n2,,"Line one\nline two"\n')
    documents = load_file(path)
    assert [d.text for d in documents] == ["Hello, world.", "Line one\nline two"]
    assert [d.title for d in documents] == ["First", "kb.csv line 3"]
    assert documents[0].metadata == {"format": "csv", "line": 2, "id": "1", "Title": "First"}
    # Row two spans lines 3-4 (a quoted newline); it is named by the line it starts on.
    assert documents[1].metadata["line"] == 3


def test_csv_semicolon_delimiter_and_fields_longer_than_csv_default_limit(tmp_path):
    long_text = "word " * 40_000  # 200 KB: over the csv module's default 128 KiB field limit
    path = write(tmp_path / "eu.csv", f"name;text\nLong;{long_text}\nShort;kurz\n")
    documents = load_file(path)
    assert [d.title for d in documents] == ["Long", "Short"]
    assert documents[0].text == long_text.strip()
    assert documents[1].text == "kurz"


def test_encodings_utf8_bom_utf16_bom_and_cp1252_fallback(tmp_path):
    text = "Café crème – “quoted” naïve"
    assert only(load_file(write(tmp_path / "bom8.txt", b"\xef\xbb\xbf" + text.encode()))).text == text
    utf16 = only(load_file(write(tmp_path / "u16.txt", text.encode("utf-16"))))
    assert (utf16.text, utf16.metadata["encoding"]) == (text, "UTF-16")
    legacy = only(load_file(write(tmp_path / "legacy.txt", text.encode("cp1252"))))
    assert (legacy.text, legacy.metadata["encoding"]) == (text, "Windows-1252")


def test_display_name_names_the_document_and_its_errors(tmp_path):
    stored = write(tmp_path / "upload_1.md", "# Hi\n\nThere")
    assert only(load_file(stored, display_name="team/Original Name.md")).source_path == "team/Original Name.md"
    empty = write(tmp_path / "upload_2.md", "")
    with pytest.raises(IngestError, match=r"^My Notes\.md is empty"):
        load_file(empty, display_name="My Notes.md")


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name", ["e.txt", "e.md", "e.html", "e.jsonl", "e.csv", "e.pdf", "e.docx"])
def test_empty_file_of_any_format(tmp_path, name):
    with pytest.raises(IngestError, match=rf"^{name} is empty: nothing to index"):
        load_file(write(tmp_path / name, b""))


@pytest.mark.parametrize("name", ["w.txt", "w.md", "w.jsonl", "w.csv"])
def test_whitespace_only_file(tmp_path, name):
    with pytest.raises(IngestError, match=rf"^{name} is empty: nothing to index"):
        load_file(write(tmp_path / name, " \n\t\r\n  \n"))


def test_html_with_only_scripts_is_empty(tmp_path):
    with pytest.raises(IngestError, match=r"^s\.html is empty"):
        load_file(write(tmp_path / "s.html", "<html><script>x()</script><style>a{}</style></html>"))


def test_binary_file_with_text_extension(tmp_path):
    with pytest.raises(IngestError, match=r"^blob\.txt looks binary.*NUL bytes"):
        load_file(write(tmp_path / "blob.txt", b"hello\x00\x01\x02world" * 20))
    # No NUL, but full of control characters.
    with pytest.raises(IngestError, match=r"^ctrl\.md looks binary.*control characters"):
        load_file(write(tmp_path / "ctrl.md", b"ab\x01\x02\x03\x04\x05\x06\x07\x08cd" * 50))
    with pytest.raises(IngestError, match=r"^renamed\.txt looks binary, not text: it is a PDF; give it the \.pdf"):
        load_file(write(tmp_path / "renamed.txt", make_pdf(["hi"])))
    with pytest.raises(IngestError, match=r"^rows\.jsonl looks binary"):
        load_file(write(tmp_path / "rows.jsonl", b"\x00\x01" * 100))


def test_undecodable_encoding_suggests_converting_to_utf8(tmp_path):
    # 0x81 and 0x8d are invalid UTF-8 starts and unassigned in Windows-1252.
    path = write(tmp_path / "weird.txt", b"plain start \x81\x8d bytes")
    with pytest.raises(IngestError) as caught:
        load_file(path)
    message = str(caught.value)
    assert message.startswith("weird.txt is not UTF-8 (invalid byte 0x81 at offset 12)")
    assert "Windows-1252" in message and "convert it to UTF-8" in message


def test_cp1252_that_decodes_but_does_not_read_as_text_is_refused(tmp_path):
    # Every byte is a valid Windows-1252 letter, but no real text is all accented letters.
    path = write(tmp_path / "noise.txt", bytes(range(0xC0, 0x100)) * 20)
    with pytest.raises(IngestError, match=r"^noise\.txt is not UTF-8 .* does not read as Windows-1252"):
        load_file(path)


def test_broken_utf16_after_bom(tmp_path):
    path = write(tmp_path / "half.txt", b"\xff\xfe" + "ok".encode("utf-16-le") + b"\x00")
    with pytest.raises(IngestError, match=r"^half\.txt starts with a UTF-16 byte-order mark but is not valid UTF-16"):
        load_file(path)


def test_malformed_jsonl_line_is_a_problem_not_a_failure(tmp_path):
    path = write(tmp_path / "mixed.jsonl",
                 '{"text": "good one"}\n{"text": "broken",\n\n["a list"]\n{"text": "good two"}\n')
    problems: list[str] = []
    documents = load_file(path, problems=problems)
    assert [d.text for d in documents] == ["good one", "good two"]
    assert [d.metadata["line"] for d in documents] == [1, 5]
    assert len(problems) == 2
    assert problems[0].startswith("mixed.jsonl line 2: not valid JSON (")
    assert problems[1].startswith('mixed.jsonl line 4: expected a JSON object with a "text" field, got a list')


def test_jsonl_without_any_valid_line_fails(tmp_path):
    with pytest.raises(IngestError, match=r"^bad\.jsonl has no valid JSON line \(first error: bad\.jsonl line 1: "
                                          r"not valid JSON"):
        load_file(write(tmp_path / "bad.jsonl", "{oops\nnot json either\n"))


def test_rows_without_the_text_field_name_it_and_list_existing_fields(tmp_path):
    path = write_jsonl(tmp_path / "some.jsonl", [{"text": "has it"}, {"body": "x", "id": 1}, {"body": "y"}])
    problems: list[str] = []
    assert [d.text for d in load_file(path, problems=problems)] == ["has it"]
    assert problems == ['some.jsonl: 2 line(s) without a "text" field were skipped (line 2, 3); fields found: '
                        '"text", "body", "id": choose one with --content-key / the Text field box.']


def test_no_row_with_the_text_field_raises_with_the_fields_that_exist(tmp_path):
    path = write_jsonl(tmp_path / "none.jsonl", [{"body": "x", "id": 1}, {"content": "y"}])
    with pytest.raises(IngestError) as caught:
        load_file(path)
    assert str(caught.value) == ('none.jsonl has no "text" field in any line; fields found: "body", "id", '
                                 '"content": choose one with --content-key / the Text field box.')
    csv_path = write(tmp_path / "none.csv", "id,body\n1,hello\n")
    with pytest.raises(IngestError, match=r'^none\.csv has no "text" field in any row; fields found: "id", "body"'):
        load_file(csv_path)


def test_empty_text_values_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "gaps.jsonl", [{"text": "real"}, {"text": ""}, {"text": "   "}, {"text": None}])
    problems: list[str] = []
    assert [d.text for d in load_file(path, problems=problems)] == ["real"]
    assert problems == ['gaps.jsonl: 3 line(s) with an empty "text" were skipped (line 2, 3, 4).']
    csv_path = write(tmp_path / "gaps.csv", "text,id\nhello,1\n,2\n")
    csv_problems: list[str] = []
    assert [d.text for d in load_file(csv_path, problems=csv_problems)] == ["hello"]
    assert csv_problems == ['gaps.csv: 1 row(s) with an empty "text" were skipped (line 3).']


def test_all_text_values_empty_raises(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(IngestError, match=r'^blank\.jsonl has no line with text in "text": nothing to index'):
        load_file(path)


def test_non_text_value_in_text_field_is_a_problem(tmp_path):
    # Only strings are text: a number or true/false is skipped with its line, like an object (issue #16).
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": {"a": 1}}, {"text": 12345}, {"text": "A lease case."},
                                             {"text": True}, {"text": 1.5}])
    problems: list[str] = []
    assert [d.text for d in load_file(path, problems=problems)] == ["A lease case."]
    hint = "not text; skipped: choose one with --content-key / the Text field box that holds plain text."
    assert problems == [f'n.jsonl line 1: "text" is an object, {hint}',
                        f'n.jsonl line 2: "text" is a number (12345), {hint}',
                        f'n.jsonl line 4: "text" is true/false (true), {hint}',
                        f'n.jsonl line 5: "text" is a number (1.5), {hint}']


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as handle:
        # Sparse and all NUL bytes: reading it would report "binary", so the size message proves
        # the size was checked first.
        handle.truncate(MAX_DOCUMENT_BYTES + 5 * 1024 * 1024)
    with pytest.raises(IngestError) as caught:
        load_file(path)
    assert str(caught.value) == ("huge.txt is 25 MB, over the 20 MB limit for one document: "
                                 "split it into smaller files.")


def test_oversized_extracted_text_and_records(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "MAX_DOCUMENT_BYTES", 50)
    with pytest.raises(IngestError, match=r"^long\.txt is 61 bytes, over the 50 bytes limit for one document: split"):
        load_file(write(tmp_path / "long.txt", "x" * 61))
    with pytest.raises(IngestError, match=r"^long\.pdf has 60 bytes of text, over the 50 bytes limit .* split"):
        load_file(write(tmp_path / "long.pdf", make_pdf(["y" * 60])))
    problems: list[str] = []
    records = write_jsonl(tmp_path / "r.jsonl", [{"text": "short"}, {"text": "z" * 51}])
    assert [d.text for d in load_file(records, problems=problems)] == ["short"]
    assert problems == ["r.jsonl line 2: the text is 51 bytes, over the 50 bytes limit for one document; "
                        "split it into smaller records."]


def test_corrupted_pdf(tmp_path):
    with pytest.raises(IngestError, match=r"^junk\.pdf is not a readable PDF \(.+\): it may be damaged"):
        load_file(write(tmp_path / "junk.pdf", b"this is not a pdf at all, just words"))
    truncated = make_pdf(["Some text here."])[:60]
    with pytest.raises(IngestError, match=r"^cut\.pdf is not a readable PDF"):
        load_file(write(tmp_path / "cut.pdf", truncated))


def test_pdf_without_text_suggests_ocr(tmp_path):
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(IngestError, match=r"^scan\.pdf has no extractable text \(a scanned PDF\?\): run OCR"):
        load_file(write(tmp_path / "scan.pdf", buffer.getvalue()))


def test_password_protected_pdf(tmp_path):
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    assert PdfReader(io.BytesIO(buffer.getvalue())).is_encrypted
    with pytest.raises(IngestError, match=r"^locked\.pdf is password-protected"):
        load_file(write(tmp_path / "locked.pdf", buffer.getvalue()))


def test_corrupted_docx(tmp_path):
    with pytest.raises(IngestError, match=r"^fake\.docx is not a readable \.docx file \(.+\): open it in Word"):
        load_file(write(tmp_path / "fake.docx", b"plain text pretending to be a docx"))
    real = tmp_path / "real.docx"
    document = docx.Document()
    document.add_paragraph("hello")
    document.save(str(real))
    with pytest.raises(IngestError, match=r"^half\.docx is not a readable \.docx file"):
        load_file(write(tmp_path / "half.docx", real.read_bytes()[:400]))


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(IngestError, match=r"^data\.xlsx: unsupported file type \.xlsx; use one of \.csv, \.docx"):
        load_file(write(tmp_path / "data.xlsx", b"x"))
    with pytest.raises(IngestError, match=r"^gone\.txt does not exist"):
        load_file(tmp_path / "gone.txt")
    with pytest.raises(IngestError, match=r"does not exist"):
        load_path(tmp_path / "no_such_folder")


# ---------------------------------------------------------------------------------------------------
# Folders, batches and duplicates


def test_directory_walk_with_one_bad_file_among_good_ones(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "Bravo text.")
    write(root / "a.md", "# Alpha\n\nAlpha text.")
    write(root / "sub" / "c.html", "<title>Charlie</title><p>Charlie text.</p>")
    write(root / "sub" / "deeper" / "d.jsonl", '{"text": "Delta text."}\n')
    write(root / "broken.pdf", b"garbage")
    write(root / "image.png", b"\x89PNG....")
    write(root / "README", "no extension")
    write(root / ".hidden.md", "Hidden file text.")
    write(root / ".git" / "config.txt", "Hidden folder text.")
    write(root / "~$lock.docx", b"lock file")

    result = load_path(root)
    assert [d.source_path for d in result.documents] == ["a.md", "b.txt", "sub/c.html", "sub/deeper/d.jsonl"]
    assert [d.text for d in result.documents] == ["# Alpha\n\nAlpha text.", "Bravo text.", "Charlie text.",
                                                  "Delta text."]
    # Titles use the bare file name, never the folders above it.
    assert [d.title for d in result.documents] == ["Alpha", "Bravo text.", "Charlie", "d.jsonl line 1"]
    assert len(result.problems) == 1 and result.problems[0].startswith("broken.pdf is not a readable PDF")
    assert result.skipped == ["README", "image.png"]
    assert result.duplicates == []


def test_record_level_problems_reach_the_load_result_in_file_order(tmp_path):
    write(tmp_path / "a.jsonl", '{"text": "fine"}\nnot json\n')
    write(tmp_path / "b.jsonl", '[1]\n{"text": "also fine"}\n{"body": "no text field"}\n')
    result = load_path(tmp_path)
    assert [d.text for d in result.documents] == ["fine", "also fine"]
    assert [problem.split(":")[0] for problem in result.problems] == ["a.jsonl line 2", "b.jsonl line 1", "b.jsonl"]
    assert result.problems[0] == ("a.jsonl line 2: not valid JSON (Expecting value at column 1); "
                                  "fix or remove that line.")


def test_record_level_problems_are_logged_when_no_list_is_given(tmp_path, caplog):
    path = write(tmp_path / "rows.jsonl", '{"text": "fine"}\nnot json\n')
    with caplog.at_level("WARNING", logger="core.corpus.loaders"):
        assert [d.text for d in load_file(path)] == ["fine"]
    assert [record.getMessage() for record in caplog.records] == [
        "rows.jsonl line 2: not valid JSON (Expecting value at column 1); fix or remove that line."]


def test_a_file_that_fails_whole_reports_only_its_reason(tmp_path):
    write(tmp_path / "x.jsonl", 'oops\n{"body": "no text"}\n')
    result = load_path(tmp_path)
    assert result.documents == []
    assert result.problems == ['x.jsonl has no "text" field in any line; fields found: "body": '
                               'choose one with --content-key / the Text field box.']


def test_load_path_on_a_single_file(tmp_path):
    result = load_path(write(tmp_path / "one.txt", "Only one."))
    assert [(d.source_path, d.text) for d in result.documents] == [("one.txt", "Only one.")]
    assert load_path(write(tmp_path / "x.bin", b"1")).skipped == ["x.bin"]


def test_exact_duplicates_are_dropped_and_reported(tmp_path):
    write(tmp_path / "a.txt", "Same words.\n")
    write(tmp_path / "b.md", "Same words.")
    write(tmp_path / "c.txt", "Different words.")
    write_jsonl(tmp_path / "d.jsonl", [{"text": "Row one."}, {"text": "Same words."}, {"text": "Row one."}])
    result = load_path(tmp_path)
    assert [d.text for d in result.documents] == ["Same words.", "Different words.", "Row one."]
    assert result.duplicates == [("a.txt", "b.md"), ("a.txt", "d.jsonl line 2"), ("d.jsonl line 1", "d.jsonl line 3")]


def test_load_files_uses_upload_names(tmp_path):
    first = write(tmp_path / "u1.txt", "First upload.")
    second = write(tmp_path / "u2.txt", "")
    result = load_files([first, second], ["My First.txt", "Empty One.txt"])
    assert [d.source_path for d in result.documents] == ["My First.txt"]
    assert result.problems == ["Empty One.txt is empty: nothing to index."]


@pytest.mark.parametrize(("hostile", "expected"), [
    ("../../etc/passwd", "passwd"),
    ("/abs/x.txt", "x.txt"),
    ("a\x00b.md", "ab.md"),
    ("..\\..\\win.txt", "win.txt"),
    ("C:\\Users\\me\\report.pdf", "report.pdf"),
    ("..", "upload"),
    ("", "upload"),
    ("/", "upload"),
    ("../.bashrc", "bashrc"),
    ("\x1b[31mred\x07.md", "[31mred.md"),
    ("notes\u202etxt.exe", "notestxt.exe"),
    ("con.txt", "_con.txt"),
    ('what?<is>"this".txt', 'what__is__this_.txt'),
])
def test_safe_upload_name_stays_inside_the_uploads_folder(tmp_path, hostile, expected):
    safe = safe_upload_name(hostile)
    assert safe == expected
    uploads = tmp_path / "uploads"
    assert (uploads / safe).resolve().parent == uploads.resolve()


def test_safe_upload_name_shortens_long_names_keeping_the_extension():
    safe = safe_upload_name("é" * 300 + ".docx")
    assert safe.endswith(".docx") and len(safe.encode("utf-8")) <= 200
    assert safe_upload_name("report final.v2.md") == "report final.v2.md"
