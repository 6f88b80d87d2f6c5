"""Turn files (text, Markdown, HTML, PDF, Word, JSONL, CSV) into documents, reporting every bad file clearly."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import IngestError
from core.ids import content_hash

log = logging.getLogger(__name__)
# pypdf reports what it repairs in a damaged file ("incorrect startxref pointer", "Cannot find /Root") as
# logging warnings, which Python prints bare on stderr ahead of the loader's own one-line problem: keep them out.
logging.getLogger("pypdf").setLevel(logging.ERROR)

SUPPORTED_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl", ".csv"})

# The largest text one document may have. Checked on the file before reading it for plain text
# formats, and on the extracted text for PDF, Word and each JSONL/CSV record.
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
# The largest PDF/Word container or JSONL/CSV file: images make containers bigger than their text,
# and a record file holds many documents. Same as Streamlit's default upload limit.
MAX_FILE_BYTES = 200 * 1024 * 1024

_TEXT_EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})
# Fields that name a record, in order: the first present and non-empty is its title ("case_name" for court
# opinion dumps, "heading"/"subject" for notes and mail). A file name is the title only when none is there.
_TITLE_FIELDS = ("title", "name", "case_name", "heading", "subject")
_MAX_TITLE_CHARS = 200
# Provenance keys the loader sets in metadata; a record field of the same name is kept as "field_<name>".
_RESERVED_METADATA = frozenset({"format", "line", "pages", "encoding"})

# Bytes that never occur in text (tab, newlines, vertical tab, form feed and ESC excepted).
_CONTROL_BYTES = bytes([b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)] + [127])
_MAX_CONTROL_SHARE = 0.05
# Windows-1252 decodes almost any byte string, so accept it only when the result reads like text.
_MAX_NON_ASCII_SHARE = 0.3
_ADD_TEXT_HINT = "add documents as .txt, .md, .html, .pdf, .docx, .jsonl or .csv"
_BINARY_SIGNATURES = {  # start of file -> (what it is, what to do)
    b"%PDF-": ("a PDF", "give it the .pdf extension"),
    b"PK\x03\x04": ("a ZIP archive (a .docx is one)", "give it its real extension, or unpack it"),
    b"\x89PNG": ("a PNG image", _ADD_TEXT_HINT),
    b"\xff\xd8\xff": ("a JPEG image", _ADD_TEXT_HINT),
    b"GIF8": ("a GIF image", _ADD_TEXT_HINT),
    b"\x7fELF": ("a program", _ADD_TEXT_HINT),
    b"\xd0\xcf\x11\xe0": ("an old Office file (.doc/.xls)", "save it as .docx, .csv or .txt"),
}
_BOMS = (  # UTF-32 first: its little-endian BOM begins with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
_CONVERT_HINT = "convert it to UTF-8 (e.g. `iconv -f <its encoding> -t UTF-8`, or Save As UTF-8) and add it again"
_FIELD_HINT = "choose one with --content-key / the Text field box"

# "title" too: without a <head> it would otherwise repeat as the first line of the text.
_HTML_DROP = ["script", "style", "noscript", "template", "head", "title", "svg", "iframe"]
_HTML_BLOCKS = ["p", "div", "section", "article", "main", "aside", "header", "footer", "nav", "h1", "h2", "h3",
                "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre", "figure", "figcaption",
                "form", "fieldset", "address", "hr", "details", "summary"]
_HTML_LINES = ["li", "tr", "dt", "dd", "caption"]
_HTML_CELLS = ["td", "th"]

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_MAX_NAME_BYTES = 200


@dataclass
class LoadedDocument:
    """One document read from a file: a whole file, or one JSONL line / CSV row."""

    title: str
    text: str
    source_path: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    """Everything a load produced: the documents, and what could not be loaded or was left out."""

    documents: list[LoadedDocument] = field(default_factory=list)
    # One line each, naming the file (and line) and what to do.
    problems: list[str] = field(default_factory=list)
    # Files of unsupported types, as paths relative to the loaded folder.
    skipped: list[str] = field(default_factory=list)
    # (kept, dropped) locations of documents whose text was identical.
    duplicates: list[tuple[str, str]] = field(default_factory=list)


def load_file(path: Path, text_field: str = "text", display_name: str | None = None, *,
              problems: list[str] | None = None, title_key: str | None = None) -> list[LoadedDocument]:
    """Read one file into documents.

    Args:
        path: The file on disk.
        text_field: For JSONL and CSV, the field holding each document's text.
        title_key: For JSONL and CSV, the field holding each document's title, tried before the usual
            ones (``title``, ``name``, ``case_name``, ``heading``, ``subject``).
        display_name: How the user knows the file (its path relative to the loaded folder, or an
            upload's original name); used in messages, titles and ``source_path``. Defaults to
            the file name.
        problems: If given, receives one line per record-level problem (a bad JSONL line, rows
            without text) that did not stop the file; otherwise those are logged as warnings.

    Returns:
        One document, or one per JSONL line / CSV row with text.

    Raises:
        IngestError: The file cannot give any document; the message says why and what to do.
    """
    path = Path(path)
    name = display_name or path.name
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS and display_name:
        extension = PurePosixPath(display_name.replace("\\", "/")).suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise IngestError(f"{name}: unsupported file type {extension or '(no extension)'}; "
                          f"use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}.")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IngestError(f"{name} does not exist: check the path.") from None
    except OSError as exc:
        raise IngestError(f"{name} could not be read ({exc.strerror}): check its permissions.") from None
    if not path.is_file():
        raise IngestError(f"{name} is not a file: pass a file or a folder of files.")
    if size == 0:
        raise IngestError(f"{name} is empty: nothing to index.")
    limit = MAX_DOCUMENT_BYTES if extension in _TEXT_EXTENSIONS else MAX_FILE_BYTES
    if size > limit:
        raise IngestError(f"{name} is {_format_size(size)}, over the {_format_size(limit)} limit for one "
                          f"{'file' if limit == MAX_FILE_BYTES else 'document'}: split it into smaller files.")

    notes: list[str] = [] if problems is None else problems
    source = display_name or path.name
    try:
        if extension in (".txt", ".md", ".markdown"):
            text, encoding = _decode(_read_bytes(path, name), name)
            text = _require_text(_clean(text), name)
            documents = [LoadedDocument(_text_title(text, _base_name(name)), text, source,
                                        {"format": extension.lstrip("."), "encoding": encoding})]
        elif extension in (".html", ".htm"):
            documents = [_load_html(path, name, source)]
        elif extension == ".pdf":
            documents = [_load_pdf(path, name, source, notes)]
        elif extension == ".docx":
            documents = [_load_docx(path, name, source)]
        elif extension == ".jsonl":
            documents = _load_jsonl(path, name, source, text_field, notes, title_key)
        else:
            documents = _load_csv(path, name, source, text_field, notes, title_key)
    except MemoryError:
        raise IngestError(f"{name} is too large to load into memory: split it into smaller files.") from None
    if problems is None:
        for note in notes:
            log.warning("%s", note)
    return documents


def load_path(path: Path, text_field: str = "text", title_key: str | None = None) -> LoadResult:
    """Load a file, or every supported file under a folder, without letting one bad file stop the rest.

    Folders are walked recursively in sorted order; hidden files and folders (and Office lock
    files ``~$...``) are ignored, files of unsupported types are listed in ``skipped``. Documents
    are named by their path relative to the folder. Exact duplicates are dropped and listed.

    Args:
        path: A file or a folder.
        text_field: For JSONL and CSV, the field holding each document's text.

    Returns:
        The documents, one line per problem, skipped files and duplicates.

    Raises:
        IngestError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path} does not exist: check the path.")
    if path.is_file():
        return load_files([path], [path.name], text_field=text_field, title_key=title_key)

    files: list[Path] = []
    names: list[str] = []
    walk_problems: list[str] = []

    def on_walk_error(exc: OSError) -> None:
        walk_problems.append(f"{exc.filename or path}: could not be read ({exc.strerror}); check its permissions.")

    for folder, subfolders, filenames in os.walk(path, onerror=on_walk_error):
        subfolders[:] = sorted(d for d in subfolders if not _is_hidden(d))
        for filename in sorted(filenames):
            if not _is_hidden(filename):
                file = Path(folder) / filename
                files.append(file)
                names.append(file.relative_to(path).as_posix())
    result = load_files(files, names, text_field=text_field, title_key=title_key)
    result.problems[:0] = walk_problems
    return result


def load_files(paths: Sequence[Path], display_names: Sequence[str] | None = None,
               text_field: str = "text", title_key: str | None = None) -> LoadResult:
    """Load several files (e.g. one batch of uploads) as :func:`load_path` loads a folder.

    Args:
        paths: The files on disk.
        display_names: How the user knows each file (defaults to the file names).
        text_field: For JSONL and CSV, the field holding each document's text.

    Returns:
        The documents, one line per problem, files of unsupported types, and duplicates.
    """
    names = list(display_names) if display_names is not None else [Path(p).name for p in paths]
    result = LoadResult()
    for file, name in zip(paths, names, strict=True):
        if Path(file).suffix.lower() not in SUPPORTED_EXTENSIONS and \
                PurePosixPath(name).suffix.lower() not in SUPPORTED_EXTENSIONS:
            result.skipped.append(name)
            continue
        try:
            result.documents.extend(load_file(Path(file), text_field, name, problems=result.problems,
                                              title_key=title_key))
        except IngestError as exc:
            result.problems.append(str(exc))
        except OSError as exc:
            result.problems.append(f"{name} could not be read ({exc.strerror or exc}): check that it is readable.")
        except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not stop the others
            log.exception("Unexpected error loading %s", file)
            result.problems.append(f"{name} could not be loaded ({type(exc).__name__}: {_short(exc)}); "
                                   f"check the file, or report this as a bug.")
    result.documents, result.duplicates = drop_duplicates(result.documents)
    return result


def drop_duplicates(documents: Iterable[LoadedDocument]) -> tuple[list[LoadedDocument], list[tuple[str, str]]]:
    """Keep the first of several documents with exactly the same text.

    Args:
        documents: Documents in load order.

    Returns:
        The kept documents, and (kept location, dropped location) for each dropped one, where a
        location is the source path plus ``line N`` for JSONL/CSV records.
    """
    first_seen: dict[str, str] = {}
    kept: list[LoadedDocument] = []
    duplicates: list[tuple[str, str]] = []
    for document in documents:
        key = content_hash(document.text)
        if key in first_seen:
            duplicates.append((first_seen[key], _locate(document)))
        else:
            first_seen[key] = _locate(document)
            kept.append(document)
    return kept, duplicates


def safe_upload_name(name: str) -> str:
    """A file name for an upload that can only ever land inside the uploads folder.

    Drops directories (``/`` and ``\\``), drive letters, ``..``, leading dots (which would hide the
    file from folder loads), NUL, control and invisible format characters, and characters Windows
    forbids; shortens very long names, keeping the extension.

    Args:
        name: The name the browser or user supplied.

    Returns:
        A plain file name; ``"upload"`` if nothing usable is left.
    """
    name = unicodedata.normalize("NFC", name)
    # Cc: control characters incl. NUL; Cf: invisible ones such as the right-to-left override
    # that can disguise "txt.exe" as "exe.txt".
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if ch in '<>:"|?*' else ch for ch in name)
    name = name.strip().lstrip(".").rstrip(". ")
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    if stem.upper() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    if len(extension.encode("utf-8")) > _MAX_NAME_BYTES // 2:
        extension = ""
    while stem and len(stem.encode("utf-8")) + len(extension.encode("utf-8")) + 1 > _MAX_NAME_BYTES:
        stem = stem[:-1]
    name = f"{stem}.{extension}" if stem and extension else (stem or extension)
    return name.strip() or "upload"


# ---------------------------------------------------------------------------------------------------
# Decoding and checks shared by the text formats


def _read_bytes(path: Path, name: str) -> bytes:
    data = path.read_bytes()
    if not data.strip():
        raise IngestError(f"{name} is empty: nothing to index.")
    return data


def _decode(data: bytes, name: str) -> tuple[str, str]:
    """Decode file bytes to text, returning (text, encoding name); refuse binary and unknown encodings."""
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise IngestError(f"{name} starts with a {label} byte-order mark but is not valid {label} "
                                  f"({exc.reason} at byte {exc.start}): {_CONVERT_HINT}.") from None
            if _control_share(text.encode("utf-8", "surrogatepass")) > _MAX_CONTROL_SHARE:
                raise IngestError(f"{name} looks binary, not text (many control characters): {_ADD_TEXT_HINT}.")
            return text, label
    for signature, (what, hint) in _BINARY_SIGNATURES.items():
        if data.startswith(signature):
            raise IngestError(f"{name} looks binary, not text: it is {what}; {hint}.")
    if b"\x00" in data:
        raise IngestError(f"{name} looks binary, not text (it contains NUL bytes): {_ADD_TEXT_HINT}; "
                          f"if it is UTF-16 text without a byte-order mark, save it as UTF-8.")
    if _control_share(data[:65536]) > _MAX_CONTROL_SHARE:
        raise IngestError(f"{name} looks binary, not text (many control characters): {_ADD_TEXT_HINT}.")
    try:
        return data.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError as exc:
        utf8_error = f"invalid byte 0x{data[exc.start]:02x} at offset {exc.start}"
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = None
    if text is not None and _reads_like_text(text):
        return text, "Windows-1252"
    raise IngestError(f"{name} is not UTF-8 ({utf8_error}) and does not read as Windows-1252 either: "
                      f"{_CONVERT_HINT}.")


def _control_share(data: bytes) -> float:
    return (len(data) - len(data.translate(None, _CONTROL_BYTES))) / len(data) if data else 0.0


def _reads_like_text(text: str) -> bool:
    sample = text[:65536]
    non_ascii = sum(1 for ch in sample if ord(ch) > 127)
    return non_ascii <= _MAX_NON_ASCII_SHARE * len(sample)


def _clean(text: str) -> str:
    """Unify line endings, drop NULs and lone surrogates, trim the ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON may escape half a surrogate pair; SQLite and Qdrant would refuse the text later.
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text.strip()


def _require_text(text: str, name: str) -> str:
    if not text:
        raise IngestError(f"{name} is empty: nothing to index.")
    text_bytes = len(text.encode("utf-8"))
    if text_bytes > MAX_DOCUMENT_BYTES:
        raise IngestError(f"{name} has {_format_size(text_bytes)} of text, over the "
                          f"{_format_size(MAX_DOCUMENT_BYTES)} limit for one document: split it into smaller files.")
    return text


# ---------------------------------------------------------------------------------------------------
# One loader per format


def _text_title(text: str, fallback: str) -> str:
    """The first ``# `` heading outside code fences, else a front-matter title, else the first line."""
    lines = text.split("\n")
    body_start = 0
    front_title = ""
    if lines[0].strip() == "---":
        # YAML front matter (Jekyll, Hugo, Obsidian): its lines are not the document's first line.
        for index in range(1, len(lines)):
            if lines[index].strip() in ("---", "..."):
                body_start = index + 1
                break
            key, _, value = lines[index].partition(":")
            if key.strip().lower() == "title" and not front_title:
                front_title = value.strip().strip("\"'")
    first_line = ""
    field_title = ""
    in_fence = False
    for number, line in enumerate(lines[body_start:]):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("# ") and line[2:].strip():
            return _shorten(line[2:].strip().rstrip("#").strip() or line[2:].strip())
        if number < 12 and not field_title and (m := _TITLE_LINE.match(stripped)):
            field_title = m.group(1).strip()
        if not first_line and stripped and not _BOILERPLATE_LINE.search(stripped):
            first_line = stripped.lstrip("#").strip()
    return _shorten(front_title or field_title or first_line or fallback)


# A first line that is a notice, not a title: a disclaimer, a copyright or confidentiality line.
_BOILERPLATE_LINE = re.compile(r"(?i)©|\b(?:disclaimer|not a real|legal advice|fictional|copyright|all rights reserved|"
                               r"confidential|do not distribute|generated (?:by|with))\b")
# "Title: …", "Case: …", "Subject: …" near the top of a plain-text file names it better than its first line.
_TITLE_LINE = re.compile(r"(?i)^(?:title|case|subject|re)\s*:\s*(\S.{2,})$")


def _load_html(path: Path, name: str, source: str) -> LoadedDocument:
    from bs4 import BeautifulSoup

    html, encoding = _decode(_read_bytes(path, name), name)
    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    if not title and (heading := soup.find("h1")):
        title = heading.get_text(" ", strip=True)
    # get_text("\n") would also break lines inside a sentence at every <a> or <b>; mark blocks instead.
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    for tag in soup.find_all(_HTML_LINES):
        # Only before: a break after as well would leave a blank line between list items.
        tag.insert_before("\n")
    for tag in soup.find_all(_HTML_CELLS):
        tag.insert_after(" ")
    text = _require_text(_clean(_tidy_lines(soup.get_text())), name)
    return LoadedDocument(_shorten(title) or _base_name(name), text, source, {"format": "html", "encoding": encoding})


def _tidy_lines(text: str) -> str:
    """Collapse spaces inside lines and runs of blank lines, so blocks end up one blank line apart."""
    lines: list[str] = []
    for raw in text.split("\n"):
        line = " ".join(raw.split())
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines)


def _load_pdf(path: Path, name: str, source: str, problems: list[str]) -> LoadedDocument:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except Exception:  # noqa: BLE001 - unsupported cipher or missing crypto library: same advice
                unlocked = 0
            if not unlocked:
                raise IngestError(f"{name} is password-protected: save an unprotected copy and add that.")
        pages = list(reader.pages)
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for damaged files
        raise IngestError(f"{name} is not a readable PDF ({_short(exc)}): it may be damaged or incomplete; "
                          f"open it and save or print it to a new PDF, then add that.") from None
    try:
        pdf_title = str(reader.metadata.title or "").strip() if reader.metadata else ""
    except Exception:  # noqa: BLE001 - a damaged info dictionary only costs the title
        pdf_title = ""
    page_texts: list[str] = []
    failed_pages: list[int] = []
    for number, page in enumerate(pages, start=1):
        try:
            page_text = _clean(page.extract_text() or "")
        except Exception:  # noqa: BLE001 - one damaged page should not lose the rest
            failed_pages.append(number)
            continue
        if page_text:
            page_texts.append(page_text)
    if failed_pages and len(failed_pages) == len(pages):
        raise IngestError(f"{name}: no page could be read; the PDF may be damaged: "
                          f"save or print it to a new PDF, then add that.")
    if not page_texts:
        raise IngestError(f"{name} has no extractable text (a scanned PDF?): run OCR on it first "
                          f"(e.g. `ocrmypdf --force-ocr in.pdf out.pdf`) and add the result.")
    if failed_pages:
        problems.append(f"{name}: pages {_list_numbers(failed_pages)} could not be read and were left out; "
                        f"save or print it to a new PDF to recover them.")
    text = _require_text("\n\n".join(page_texts), name)
    metadata: dict[str, Any] = {"format": "pdf", "pages": len(pages)}
    return LoadedDocument(_shorten(pdf_title) or _base_name(name), text, source, metadata)


def _load_docx(path: Path, name: str, source: str) -> LoadedDocument:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(str(path))
        blocks: list[str] = []
        heading = ""
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                blocks.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows)
                continue
            paragraph_text = item.text.strip()
            if paragraph_text:
                blocks.append(paragraph_text)
                style = item.style.name if item.style is not None else ""
                if not heading and style in ("Title", "Heading 1"):
                    heading = paragraph_text
        core_title = (document.core_properties.title or "").strip()
    except Exception as exc:  # noqa: BLE001 - zipfile, lxml and python-docx each raise their own types
        raise IngestError(f"{name} is not a readable .docx file ({_short(exc)}): open it in Word or LibreOffice "
                          f"and save it again as .docx (old .doc files must be converted).") from None
    text = _require_text(_clean("\n\n".join(block for block in blocks if block.strip(" |"))), name)
    return LoadedDocument(_shorten(core_title or heading) or _base_name(name), text, source, {"format": "docx"})


def _load_jsonl(path: Path, name: str, source: str, text_field: str,
                problems: list[str], title_key: str | None = None) -> list[LoadedDocument]:
    text, _ = _decode(_read_bytes(path, name), name)
    records: list[tuple[int, dict[str, Any]]] = []
    bad_lines: list[str] = []  # "<file> line N: <what is wrong>"
    # split("\n"), not splitlines(): U+2028 and friends may legally sit unescaped inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad_lines.append(f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            bad_lines.append(f"{name} line {number}: expected a JSON object with a \"{text_field}\" field, "
                             f"got {_json_type(record)}")
            continue
        records.append((number, record))
    if not records:
        if bad_lines:
            raise IngestError(f"{name} has no valid JSON line (first error: {bad_lines[0]}); "
                              f"each line must be one JSON object.")
        raise IngestError(f"{name} is empty: nothing to index.")
    record_notes: list[str] = []
    documents = _records_to_documents(records, name, source, "jsonl", text_field, record_notes, title_key)
    # Only now, so a file that fails as a whole reports just its reason.
    problems.extend(f"{bad_line}; fix or remove that line." for bad_line in bad_lines)
    problems.extend(record_notes)
    return documents


def _load_csv(path: Path, name: str, source: str, text_field: str,
              problems: list[str], title_key: str | None = None) -> list[LoadedDocument]:
    text, _ = _decode(_read_bytes(path, name), name)
    # The csv module refuses fields over 128 KiB by default; one document may be far longer.
    if csv.field_size_limit() < MAX_DOCUMENT_BYTES + 1:
        csv.field_size_limit(MAX_DOCUMENT_BYTES + 1)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_guess_delimiter(text))
    records: list[tuple[int, dict[str, Any]]] = []
    try:
        # Reading the header here also makes line_num count it before the first row.
        if not reader.fieldnames:
            raise IngestError(f"{name} is empty: nothing to index.")
        while True:
            # Name a row by the line it starts on: a quoted newline makes it span several.
            first_line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            # Extra cells land under the key None, missing ones are None: neither is a field.
            fields = {key.strip(): value for key, value in row.items() if isinstance(key, str) and key.strip()}
            records.append((first_line, {k: v for k, v in fields.items() if v is not None}))
    except csv.Error as exc:
        message = f"{name} line {reader.line_num}: malformed CSV ({_short(exc)}); fix the quoting on that line"
        if not records:
            raise IngestError(message + ".") from None
        problems.append(message + "; the rows after it were left out.")
    if not records:
        raise IngestError(f"{name} has a header but no rows: nothing to index.")
    return _records_to_documents(records, name, source, "csv", text_field, problems, title_key)


def _guess_delimiter(text: str) -> str:
    """The delimiter the header line uses most: comma, semicolon (European Excel), tab or pipe."""
    header = text.split("\n", 1)[0]
    counts = {delimiter: header.count(delimiter) for delimiter in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _records_to_documents(records: list[tuple[int, dict[str, Any]]], name: str, source: str, file_format: str,
                          text_field: str, problems: list[str], title_key: str | None = None
                          ) -> list[LoadedDocument]:
    """Documents from (line number, record) pairs; records without usable text become problems."""
    documents: list[LoadedDocument] = []
    notes: list[str] = []
    missing: list[int] = []
    empty: list[int] = []
    fields_seen: dict[str, None] = {}  # a dict keeps first-seen order, unlike a set
    record_word = "line" if file_format == "jsonl" else "row"
    for number, record in records:
        fields_seen.update(dict.fromkeys(record))
        if text_field not in record:
            missing.append(number)
            continue
        value = record[text_field]
        # Only a string is text. A number or true/false (an id column picked by mistake, a stray 12345) would
        # otherwise be indexed as a one-word document that ranks first for queries it shares nothing with.
        if value is not None and not isinstance(value, str):
            shown = f" ({json.dumps(value)[:40]})" if not isinstance(value, (dict, list)) else ""
            notes.append(f"{name} line {number}: \"{text_field}\" is {_json_type(value)}{shown}, not text; "
                         f"skipped: {_FIELD_HINT} that holds plain text.")
            continue
        text = _clean("" if value is None else str(value))
        if not text:
            empty.append(number)
            continue
        text_bytes = len(text.encode("utf-8"))
        if text_bytes > MAX_DOCUMENT_BYTES:
            notes.append(f"{name} line {number}: the text is {_format_size(text_bytes)}, over the "
                         f"{_format_size(MAX_DOCUMENT_BYTES)} limit for one document; split it into smaller records.")
            continue
        metadata: dict[str, Any] = {"format": file_format, "line": number}
        for key, item in record.items():
            if key != text_field and _is_scalar(item):
                metadata[f"field_{key}" if key in _RESERVED_METADATA else key] = item
        title = next((str(record[key]).strip() for key in _record_title_keys(record, title_key)
                      if str(record[key]).strip()), "")
        documents.append(LoadedDocument(_shorten(title) or f"{_base_name(name)} line {number}", text, source, metadata))

    fields_list = ", ".join(f'"{key}"' for key in fields_seen) or "none"
    if len(missing) == len(records):
        raise IngestError(f"{name} has no \"{text_field}\" field in any {record_word}; fields found: "
                          f"{fields_list}: {_FIELD_HINT}.")
    if missing:
        notes.append(f"{name}: {len(missing)} {record_word}(s) without a \"{text_field}\" field were skipped "
                     f"(line {_list_numbers(missing)}); fields found: {fields_list}: {_FIELD_HINT}.")
    if empty:
        notes.append(f"{name}: {len(empty)} {record_word}(s) with an empty \"{text_field}\" were skipped "
                     f"(line {_list_numbers(empty)}).")
    if not documents:
        first_note = f" ({notes[0].rstrip('.')})" if notes else ""
        raise IngestError(f"{name} has no {record_word} with text in \"{text_field}\": nothing to index{first_note}.")
    problems.extend(notes)
    return documents


def _record_title_keys(record: dict[str, Any], title_key: str | None = None) -> list[str]:
    """Keys naming the record: ``title_key`` first, then ``_TITLE_FIELDS`` in order, matched case-insensitively."""
    by_lower = {key.lower(): key for key in reversed(list(record))}
    wanted = [title_key.lower()] if title_key else []
    wanted += [k for k in _TITLE_FIELDS if k not in wanted]
    return [by_lower[key] for key in wanted if key in by_lower and _is_scalar(record[by_lower[key]])
            and record[by_lower[key]] is not None]


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _base_name(name: str) -> str:
    """The file name without folders, for titles."""
    return PurePosixPath(name.replace("\\", "/")).name or name


def _is_hidden(name: str) -> bool:
    # "~$report.docx" is the lock file Word leaves next to an open document, not a document.
    return name.startswith((".", "~$"))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _locate(document: LoadedDocument) -> str:
    line = document.metadata.get("line")
    return f"{document.source_path} line {line}" if line is not None else document.source_path


def _list_numbers(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _shorten(text: str, limit: int = _MAX_TITLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _short(exc: BaseException) -> str:
    message = str(exc).strip().split("\n", 1)[0]
    return _shorten(message, 160) if message else type(exc).__name__


def _format_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB".replace(".0 MB", " MB")
    if size >= 1024:
        return f"{size / 1024:.1f} KB".replace(".0 KB", " KB")
    return f"{size} bytes"
