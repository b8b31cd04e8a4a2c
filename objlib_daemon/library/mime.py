"""Our own extension → MIME map (the `mimetypes` module differs between OSes)."""

from __future__ import annotations

import posixpath

MIME_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".epub": "application/epub+zip",
    ".json": "application/json",
    ".csv": "text/csv",
}
TEXT_TYPES = frozenset({"text/plain", "text/markdown"})
# Formats File Search refuses (docs/gemini-file-search.md): they are uploaded as
# their extracted text instead (library/payload.py), on every store alike.
CONVERTED = frozenset({".epub"})


def _suffix(path: str) -> str:
    # posixpath, not PurePosixPath(path).suffix: the same for every name the map
    # holds, at a tenth of the cost (it runs several times per uploaded file).
    return posixpath.splitext(path)[1].lower()


def mime_type(path: str) -> str:
    """The file's own type."""
    return MIME_TYPES.get(_suffix(path), "application/octet-stream")


def upload_mime_type(path: str) -> str:
    """The type its document is uploaded as: its own, or text/plain when converted."""
    return "text/plain" if _suffix(path) in CONVERTED else mime_type(path)


def is_text(path: str) -> bool:
    """Text uploads (converted ones too) get the identity header prepended; other
    formats go as they are."""
    return upload_mime_type(path) in TEXT_TYPES
