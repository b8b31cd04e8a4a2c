"""Our own extension → MIME map (the `mimetypes` module differs between OSes)."""

from __future__ import annotations

from pathlib import PurePosixPath

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


def mime_type(path: str) -> str:
    return MIME_TYPES.get(PurePosixPath(path).suffix.lower(), "application/octet-stream")


def is_text(path: str) -> bool:
    """Text uploads get the identity header prepended; other formats go as they are."""
    return mime_type(path) in TEXT_TYPES
