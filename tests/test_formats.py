"""Every format searchable (issue 14): PDF, DOCX, HTML, EPUB, text, on both stores.

The files are real ones made by tests/documents.py; the Gemini side is the
real SDK against tests/emulator.py, which refuses EPUB as the API does, so a
synced book proves the conversion to text.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import documents
import pytest
from harness import Harness

from objlib_daemon.errors import SOME_FAILED
from objlib_daemon.library.extract import ExtractError, extract, extract_text
from objlib_daemon.library.metadata import Enrichment
from objlib_daemon.library.payload import NO_TEXT, payload
from objlib_daemon.stores import base

# One word that occurs only inside each file (never in a path or a header).
WORDS = {
    "Books/Galt Speech.pdf": "zanzibarpdf",
    "Notes/Course Outline.docx": "quetzaldocx",
    "Essays/Harmony.html": "axolotlhtml",
    "Books/The Fountainhead.epub": "narwhalepub",
    "Courses/Induction - Lesson 01 - Concepts.txt": "wombattext",
    "Notes/Reading List.md": "okapimarkdown",
}


def prose(word: str) -> str:
    """~1.5 KB of text with `word` once in the middle (files under 1 KiB are ineligible)."""
    filler = "Reason is man's only means of knowledge and his basic tool of survival. "
    return filler * 10 + f"\nThe {word} appears here once.\n" + filler * 10


def make(rel: str, word: str) -> bytes:
    text = prose(word)
    if rel.endswith(".pdf"):
        return documents.pdf(textwrap.wrap(text, 90)[:20] + [f"Closing {word} page"])
    if rel.endswith(".docx"):
        return documents.docx([("Title", "Course Outline"), *text.split("\n")])
    if rel.endswith(".html"):
        return documents.html("Harmony", text)
    if rel.endswith(".epub"):
        return documents.epub([("Chapter One", prose("opening")), ("Chapter Two", text)])
    return text.encode()


def write_every_format(h: Harness) -> None:
    for rel, word in WORDS.items():
        h.write(rel, make(rel, word))


# --- the extractor --------------------------------------------------------------------


def test_each_format_gives_its_text_with_sections(tmp_path) -> None:
    pdf = extract(documents.pdf(["first page text", "second page text"]), "a.pdf")
    assert pdf.text == "first page text\n\nsecond page text"
    assert [(s.label, pdf.text[s.start : s.end]) for s in pdf.sections] == [
        ("page 1", "first page text"),
        ("page 2", "second page text"),
    ]
    docx = extract(
        documents.docx(["intro line", ("Heading1", "Part Two"), "body of part two"]), "b.docx"
    )
    assert [(s.label, docx.text[s.start : s.end]) for s in docx.sections] == [
        ("document", "intro line"),
        ("Part Two", "Part Two\nbody of part two"),
    ]
    # The zip holds the chapters in reverse: the spine's order wins.
    book = extract(documents.epub([("One", "alpha"), ("Two", "beta")]), "c.EPUB")
    assert [s.label for s in book.sections] == ["One", "Two"]
    assert book.text == "One\nalpha\n\nTwo\nbeta"
    assert book.source_format == "epub" and book.has_text
    page = extract(documents.html("Title Here", "visible words"), "d.htm")
    assert page.text == "Title Here\nvisible words"  # no script, no style, no markup
    path = tmp_path / "e.md"
    path.write_bytes("\ufeff# Notes\n\ncafé".encode())
    assert extract_text(path).text == "# Notes\n\ncafé"


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "cannot read this .pdf file"),
        ("locked.pdf", documents.encrypted_pdf(["secret words"]), "password-protected PDF"),
        ("broken.epub", b"PK\x03\x04 not really a zip" * 50, "not a readable .epub file"),
        ("empty.epub", documents.docx(["a Word file named .epub"]), "container.xml is missing"),
        ("broken.docx", documents.epub([("x", "y")]), "word/document.xml is missing"),
        ("data.bin", b"\x00" * 2000, "no text extractor for .bin files"),
    ],
)
def test_unreadable_files_raise_with_a_reason(name: str, data: bytes, says: str) -> None:
    with pytest.raises(ExtractError, match=says):
        extract(data, name)


def test_scans_have_no_text() -> None:
    assert not extract(documents.pdf(["ignored"] * 3, image_only=True), "scan.pdf").has_text
    assert not extract(documents.epub([("Cover", "")], images_only=True), "comic.epub").has_text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_extraction_memory_is_bounded(tmp_path) -> None:
    """A 40 MB PDF (text on 800 pages, an incompressible image on each) is
    extracted in a fresh interpreter whose peak RSS, less the file's own bytes,
    stays small: pages are read one at a time and nothing is copied whole.
    bench/extract.py measures 100 MB (docs/benchmarks.md)."""
    path = tmp_path / "large.pdf"
    path.write_bytes(documents.pdf([f"page {i} of the book" for i in range(800)], filler=48_000))
    size_mb = path.stat().st_size / 2**20
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking
    # parent (pytest, hundreds of MB by now) across exec.
    probe = (
        "import re, sys\n"
        "from objlib_daemon.library.extract import extract_text\n"
        "result = extract_text(sys.argv[1])\n"
        "status = open('/proc/self/status').read()\n"
        "print(len(result.sections), re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    )
    pages, peak_kib = map(int, out.stdout.split())
    assert pages == 800
    assert size_mb > 35
    # 39 MB measured over the file; 76-78 MB with either fix undone.
    assert peak_kib / 1024 - size_mb < 60, (peak_kib / 1024, size_mb)


def test_a_book_uploads_as_text_within_the_metadata_limit() -> None:
    identity = {"library_id": "lib", "path": "Books/b.epub", "sha256": "abc"}
    full = identity | {f"key{i:02}": "v" for i in range(17)}  # 20: Gemini's limit
    enr = Enrichment("b.epub", full, "Title: B\n\n")
    book = documents.epub([("One", "the words of the book")])
    sent = payload("Books/b.epub", book, enr, no_text="upload")
    assert sent.mime_type == "text/plain" and sent.note is None
    assert sent.body == b"Title: B\n\nOne\nthe words of the book"
    assert sent.text == "One\nthe words of the book"  # no header: snippets quote the book
    assert len(sent.metadata) == 20 and sent.metadata["source_format"] == "epub"
    assert "key16" not in sent.metadata and identity.items() <= sent.metadata.items()
    pdf = documents.pdf(["page words"])
    as_is = payload("a.pdf", pdf, Enrichment("a.pdf", dict(identity), None), no_text="hold")
    assert (as_is.body, as_is.mime_type, as_is.text) == (pdf, "application/pdf", "page words")
    assert "source_format" not in as_is.metadata


# --- the emulator refuses what the API refuses --------------------------------------------


def test_emulator_refuses_epub_uploads(emulator) -> None:
    from objlib_daemon.config import StoreConfig
    from objlib_daemon.connect import remote_settings
    from objlib_daemon.stores.gemini import GeminiStore

    cfg = StoreConfig(backend="gemini", base_url=emulator.url, retry_attempts=1)
    store = GeminiStore(emulator.api_key, emulator.create_store("formats"), remote_settings(cfg))
    with pytest.raises(base.PermanentError) as raised:
        store.upload(
            io.BytesIO(documents.epub([("One", "text")])),
            display_name="book.epub",
            metadata={"path": "book.epub"},
            mime_type="application/epub+zip",
        )
    assert raised.value.code == 400


# --- a library of every format, synced --------------------------------------------------------


def test_every_format_reaches_the_store(h: Harness) -> None:
    write_every_format(h)
    summary = h.sync()
    assert summary["new"] == len(WORDS) and summary["failed"] == 0, summary
    h.converged()
    docs = {doc.metadata["path"]: doc for doc in h.docs()}
    book = docs["Books/The Fountainhead.epub"]
    assert book.metadata["source_format"] == "epub"
    body = h.content(book.name).decode()
    assert "narwhalepub" in body and body.startswith("Title: The Fountainhead")
    assert [k for d in docs.values() for k in d.metadata if k == "source_format"] == [
        "source_format"
    ]  # only the converted one says so; the others are their own format
    pdf = docs["Books/Galt Speech.pdf"]
    assert h.content(pdf.name) == (h.root / "Books/Galt Speech.pdf").read_bytes()
    if h.backend == "gemini":
        mimes = {
            h.emulator.metadata(doc)["path"]: doc["mimeType"]
            for doc in h.emulator.documents(h.store_resource)
        }
        assert mimes["Books/The Fountainhead.epub"] == "text/plain"
        assert mimes["Books/Galt Speech.pdf"] == "application/pdf"
        assert mimes["Notes/Course Outline.docx"].endswith("wordprocessingml.document")
        assert mimes["Essays/Harmony.html"] == "text/html"
        return
    for rel, word in WORDS.items():
        found = json.loads(h.run("search", "--json", word).stdout)["hits"]
        assert [hit["path"] for hit in found] == [rel], (word, found)
        assert word in found[0]["snippet"]
    # Snippets quote the document, never the identity header we put before text.
    hit = json.loads(h.run("search", "--json", "Concepts").stdout)["hits"][0]
    assert hit["path"] == "Courses/Induction - Lesson 01 - Concepts.txt"
    assert hit["snippet"].startswith("Reason is man's only means"), hit
    for hidden in ("scriptonlyword", "stylewordonly"):
        assert json.loads(h.run("search", "--json", hidden).stdout)["hits"] == []


def test_unreadable_files_fail_alone(h: Harness) -> None:
    write_every_format(h)
    broken = {
        "Books/Broken.pdf": b"%PDF-1.4\n" + b"garbage " * 300,
        "Books/Locked.pdf": documents.encrypted_pdf([prose("lockedword")]),
        "Books/Broken.epub": b"PK\x03\x04" + b"garbage " * 300,
    }
    for rel, data in broken.items():
        h.write(rel, data)
    summary = h.sync(code=SOME_FAILED)
    assert summary["failed"] == 3 and summary["new"] == len(WORDS), summary
    notes = "\n".join(summary["problems"])
    assert "Books/Locked.pdf: cannot extract its text: password-protected PDF" in notes
    assert "Books/Broken.pdf: cannot extract its text" in notes
    assert "Books/Broken.epub: cannot extract its text: not a readable .epub file" in notes
    assert set(h.docs_by_path()) == set(WORDS)
    status = h.run("status").stdout
    for rel in broken:
        assert f"failed:    {rel}: cannot extract its text" in status
    # Not retried until the file changes (or `sync --retry-failed`, a settings
    # change, [sync] retry_failed_after); every sync says so (exit 6), as does status.
    assert h.sync(code=SOME_FAILED)["uploaded"] == 0
    assert h.run("status").stdout.count("cannot extract its text") == 3


@pytest.mark.parametrize("policy", ["upload", "hold"])
def test_a_scan_is_reported_as_needing_ocr(h: Harness, policy: str) -> None:
    config = h.config_path.read_text(encoding="utf-8")
    h.config_path.write_text(config.replace("[library]\n", f'[library]\nno_text = "{policy}"\n'))
    h.write("Books/Scanned.pdf", documents.pdf(["x"] * 3, image_only=True, filler=900))
    h.write("Books/Comic.epub", documents.epub([("Panel", "")] * 8, images_only=True))
    h.write("Notes/plain.txt", prose("plainword").encode())
    scans = ("Books/Scanned.pdf", "Books/Comic.epub")
    if policy == "upload":
        summary = h.sync()
        assert summary["uploaded"] == 3
        assert set(h.docs_by_path()) == {*scans, "Notes/plain.txt"}
    else:
        summary = h.sync(code=SOME_FAILED)
        assert summary["failed"] == 2 and summary["uploaded"] == 1
        assert set(h.docs_by_path()) == {"Notes/plain.txt"}
    status = h.run("status").stdout
    for rel in scans:
        assert any(p.startswith(f"{rel}: {NO_TEXT}") for p in summary["problems"]), summary
        assert f"{rel}: {NO_TEXT}" in status, status
    assert "plain.txt" not in "".join(summary["problems"]) + status
