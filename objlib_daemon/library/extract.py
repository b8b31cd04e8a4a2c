"""Plain text out of every eligible format: one function, bounded memory.

The local store indexes this text, EPUB books reach Gemini as this text (File
Search refuses EPUB), a document without any is reported as needing OCR
(a scanned PDF would otherwise upload "successfully" and never be found), and
AI enrichment reads it for formats that are not plain text. So there is one
extractor, `extract(data, name)`, and `extract_text(path)` for callers that
hold a path rather than the bytes.

Memory stays bounded whatever the file: PDF pages are read one at a time and
pypdf's object cache is dropped between pages; DOCX and EPUB members are
streamed out of the zip (never read whole) into incremental parsers; and the
text kept is capped at MAX_TEXT_CHARS. pypdf loads only when a PDF is
extracted (`objlibd status` must stay fast); the other formats need only the
standard library. A malformed, encrypted or truncated file raises
ExtractError with a message that tells the user what is wrong with that file.
"""

from __future__ import annotations

import codecs
import io
import logging
import posixpath
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote
from xml.etree import ElementTree

# About 10,000 pages of prose (the largest real transcript is 3.5 MB). Past it
# the text is cut: a str this long is 20-80 MB, and its UTF-8 upload stays
# well inside Gemini's 100 MB per document.
MAX_TEXT_CHARS = 20_000_000
# A zip member is read this much at a time; a member whose inflated size is
# past MAX_MEMBER_BYTES is not read at all (a zip bomb inflates 1000:1).
_CHUNK = 1 << 16
MAX_MEMBER_BYTES = 256 << 20
MAX_PACKAGE_BYTES = 16 << 20  # EPUB container and OPF, parsed as whole trees

PLAIN_FORMATS = frozenset({"txt", "md"})
FORMATS = frozenset({"txt", "md", "html", "pdf", "docx", "epub"})
_SUFFIX_FORMAT = {".htm": "html", ".markdown": "md"}


class ExtractError(Exception):
    """The file cannot be read as its format says (corrupt, encrypted, truncated)."""


@dataclass(frozen=True)
class Section:
    """A page (PDF), chapter (EPUB spine item) or heading's part (DOCX) of `text`."""

    label: str
    start: int
    end: int


@dataclass(frozen=True)
class Extracted:
    """The text of one document, its sections as offsets into it, and its format.

    `has_text` is False for a document with nothing readable in it (a scanned
    PDF, an image-only EPUB): it needs OCR to be found by its words.
    """

    source_format: str
    text: str
    sections: tuple[Section, ...] = ()
    truncated: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.text)  # sections are stripped, and empty ones dropped


def source_format(name: str) -> str:
    """The format of a file by its name's extension ("pdf", "epub", ...; "" if none)."""
    suffix = PurePosixPath(name).suffix.lower()
    return _SUFFIX_FORMAT.get(suffix, suffix.removeprefix("."))


def extract_text(path: Path | str) -> Extracted:
    """The text of the file at `path` (for callers without the bytes in hand)."""
    return extract(Path(path).read_bytes(), str(path))


def extract(data: bytes, name: str) -> Extracted:
    """The text of `data`, a file called `name` (its extension picks the format).

    Raises ExtractError for a file its format's reader refuses, and for a
    format we have no reader for.
    """
    fmt = source_format(name)
    reader = _READERS.get(fmt)
    if reader is None:
        raise ExtractError(f"no text extractor for .{fmt or '(no extension)'} files")
    text = _Text()
    try:
        for label, part in reader(data):
            text.add(label, part)
            if text.full:
                break
    except ExtractError:
        raise
    except (zipfile.BadZipFile, ElementTree.ParseError, EOFError) as exc:
        raise ExtractError(f"not a readable .{fmt} file ({exc})") from None
    except Exception as exc:  # a reader's own error type, or its bug on odd input
        raise ExtractError(f"cannot read this .{fmt} file: {type(exc).__name__}: {exc}") from None
    return text.result(fmt)


class _Text:
    """Sections joined by blank lines, cut at MAX_TEXT_CHARS."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[Section] = []
        self.size = 0
        self.full = False

    def add(self, label: str, part: str) -> None:
        part = part.strip()
        if not part:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.size += 2
        room = MAX_TEXT_CHARS - self.size
        if len(part) >= room:
            part, self.full = part[:room], True
        self.parts.append(part)
        self.sections.append(Section(label, self.size, self.size + len(part)))
        self.size += len(part)

    def result(self, fmt: str) -> Extracted:
        return Extracted(fmt, "".join(self.parts), tuple(self.sections), self.full)


# --- plain text and HTML ------------------------------------------------------------


def _plain(data: bytes) -> Iterator[tuple[str, str]]:
    yield "text", data.decode("utf-8-sig", errors="replace")


def _html(data: bytes) -> Iterator[tuple[str, str]]:
    parser = HtmlText(keep_title=True)
    _feed(parser, io.BytesIO(data), _html_encoding(data[:2048]))
    yield "page", parser.text()


class HtmlText(HTMLParser):
    """Visible text of HTML/XHTML, fed in pieces: no scripts, styles or markup.

    Block elements end a line, so words of adjacent paragraphs never run
    together; whitespace is collapsed as a browser would. The <title> is kept
    aside in `title`, and in the text only with `keep_title` (a web page's
    title is its name; an EPUB chapter's repeats its heading, and would make
    a book of scanned pages look as if it had text).
    """

    _SKIP = frozenset({"script", "style", "template", "noscript", "head"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "td", "th", "dt", "dd", "hr", "pre", "title"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "blockquote"}
    )

    def __init__(self, *, keep_title: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.keep_title = keep_title
        self.parts: list[str] = []
        self.title = ""
        self.size = 0
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skipping += 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skipping:
            self._skipping -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = " ".join((self.title + data).split())[:200]
            if not self.keep_title:
                return
        elif self._skipping:
            return
        if self.size < MAX_TEXT_CHARS:
            self.parts.append(data)
            self.size += len(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")


def _html_encoding(head: bytes) -> str:
    """The encoding a page declares (BOM, XML declaration, meta charset), else UTF-8."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    for pattern in (_XML_ENCODING, _CHARSET):
        match = pattern.search(head)
        if match:
            try:
                return codecs.lookup(match.group(1).decode("ascii")).name
            except LookupError:
                break
    return "utf-8"


def _feed(parser: HTMLParser, stream: IO[bytes], encoding: str) -> None:
    """Decode and parse `stream` a chunk at a time, never holding it whole."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    read = 0
    while chunk := stream.read(_CHUNK):
        read += len(chunk)
        if read > MAX_MEMBER_BYTES:
            raise ExtractError(f"a part of this file inflates past {MAX_MEMBER_BYTES} bytes")
        parser.feed(decoder.decode(chunk))
    parser.feed(decoder.decode(b"", final=True))
    parser.close()


# --- PDF -------------------------------------------------------------------------


def _pdf(data: bytes) -> Iterator[tuple[str, str]]:
    from pypdf import PdfReader  # ~150 ms to import: only when a PDF is read
    from pypdf.errors import DependencyError, FileNotDecryptedError

    # pypdf logs what it repairs ("EOF marker not found") bare on stderr; a file
    # it cannot read raises, and that is reported with the file's name.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    reader = PdfReader(io.BufferedReader(_View(data)))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # an owner password alone still opens
        except DependencyError as exc:
            raise ExtractError(f"encrypted PDF needing a crypto library: {exc}") from None
        if not opened:
            raise ExtractError(
                "password-protected PDF: save a copy without the password to index it"
            )
    try:
        count = len(reader.pages)
    except FileNotDecryptedError:
        raise ExtractError("password-protected PDF: cannot be opened") from None
    for number in range(count):
        page_text = reader.pages[number].extract_text() or ""
        # pypdf keeps every object it resolved (content streams, fonts, images)
        # for the reader's life: a 100 MB PDF would end up all in memory
        # (bench/extract.py: 98 → 76 MB peak for 21 MB; shared fonts are re-read).
        reader.resolved_objects.clear()
        yield f"page {number + 1}", page_text


class _View(io.RawIOBase):
    """Bytes as a read-only stream that never copies them: pypdf sizes a BytesIO
    by `getbuffer()`, which copies the bytes it shares (+100 MB for a 100 MB PDF)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), len(self.view) - self.pos))
        buffer[:n] = self.view[self.pos : self.pos + n]
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.view)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos


# --- DOCX ------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx(data: bytes) -> Iterator[tuple[str, str]]:
    """word/document.xml streamed: paragraphs as lines, a heading starts a section."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            info = zf.getinfo("word/document.xml")
        except KeyError:
            raise ExtractError("not a Word document: word/document.xml is missing") from None
        _check_size(info)
        label, lines, para, heading = "document", [], [], False
        with zf.open(info) as stream:
            for event, elem in ElementTree.iterparse(stream, events=("start", "end")):
                tag = elem.tag
                if event == "start":
                    if tag == f"{_W}p":
                        para, heading = [], False
                    continue
                if tag == f"{_W}t":
                    para.append(elem.text or "")
                elif tag in (f"{_W}tab", f"{_W}br", f"{_W}cr"):
                    para.append(" " if tag == f"{_W}tab" else "\n")
                elif tag == f"{_W}pStyle":
                    style = elem.get(f"{_W}val", "").lower()
                    heading = style.startswith(("heading", "title"))
                elif tag == f"{_W}p":
                    line = "".join(para)
                    if heading and line.strip():
                        yield label, "\n".join(lines)
                        label, lines = line.strip()[:200], []
                    lines.append(line)
                    elem.clear()  # keep the tree from growing with the document
        yield label, "\n".join(lines)


# --- EPUB ------------------------------------------------------------------------

_OPF_NS = "{http://www.idpf.org/2007/opf}"
_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_XHTML_TYPES = frozenset({"application/xhtml+xml", "text/html"})


def _epub(data: bytes) -> Iterator[tuple[str, str]]:
    """The spine's documents in reading order (OPF), each through HtmlText."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for href in _spine(zf):
            try:
                info = zf.getinfo(href)
            except KeyError:
                continue  # a spine entry the book does not ship: skip, as readers do
            _check_size(info)
            parser = HtmlText(keep_title=False)
            with zf.open(info) as stream:
                head = stream.read(2048)
                _feed(parser, _Prefixed(head, stream), _html_encoding(head))
            yield parser.title or href, parser.text()


def _spine(zf: zipfile.ZipFile) -> list[str]:
    """Zip paths of the spine's XHTML items, in order (META-INF/container.xml → OPF)."""
    try:
        container = ElementTree.fromstring(_small(zf, "META-INF/container.xml"))
    except KeyError:
        raise ExtractError("not an EPUB: META-INF/container.xml is missing") from None
    rootfile = container.find(f".//{_CONTAINER_NS}rootfile")
    opf_path = rootfile.get("full-path") if rootfile is not None else None
    if not opf_path:
        raise ExtractError("not an EPUB: container.xml names no package document")
    try:
        opf = ElementTree.fromstring(_small(zf, opf_path))
    except KeyError:
        raise ExtractError(f"not an EPUB: its package document {opf_path} is missing") from None
    base = posixpath.dirname(opf_path)
    manifest = {
        item.get("id"): item
        for item in opf.iter(f"{_OPF_NS}item")
        if item.get("media-type") in _XHTML_TYPES and item.get("href")
    }
    hrefs = []
    for ref in opf.iter(f"{_OPF_NS}itemref"):
        item = manifest.get(ref.get("idref"))
        if item is not None:
            href = unquote(item.get("href", "").split("#", 1)[0])
            hrefs.append(posixpath.normpath(posixpath.join(base, href)))
    return hrefs


def _small(zf: zipfile.ZipFile, name: str) -> bytes:
    """A package file parsed whole (container, OPF): a few KB in a real book."""
    info = zf.getinfo(name)
    _check_size(info, MAX_PACKAGE_BYTES)
    return zf.read(info)


def _check_size(info: zipfile.ZipInfo, limit: int = MAX_MEMBER_BYTES) -> None:
    if info.file_size > limit:
        raise ExtractError(f"{info.filename} inflates to {info.file_size} bytes (over {limit})")


class _Prefixed(io.RawIOBase):
    """`head` (already read to sniff the encoding), then the rest of `stream`."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.stream.read(size)


_READERS = {
    "txt": _plain,
    "md": _plain,
    "html": _html,
    "pdf": _pdf,
    "docx": _docx,
    "epub": _epub,
}
