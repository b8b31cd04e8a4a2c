"""What goes to the store for one file: body, MIME type, metadata and text.

The applier asks `payload()` once per upload and sends what it gets, so every
decision about formats lives here, on the local side, for both stores:

- text and Markdown go as they are, after the identity header;
- PDF, DOCX and HTML go as they are (File Search reads them itself);
- EPUB, which File Search refuses, goes as its extracted text (`text/plain`,
  header first) and records `source_format = "epub"` in its metadata;
- every document's plain text rides along for stores that index it
  themselves (the local store), without the header: a search snippet then
  quotes the document, never our header;
- a document without any text (a scanned PDF) is uploaded with a note, or
  held back, per `[library] no_text`; a file its format's reader refuses
  (corrupt, password-protected) is not uploaded at all. Both say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from objlib_daemon.config import MAX_DOCUMENT_BYTES
from objlib_daemon.library.extract import (
    FORMATS,
    PLAIN_FORMATS,
    ExtractError,
    extract,
    source_format,
)
from objlib_daemon.library.metadata import IDENTITY_KEYS, MAX_ENTRIES, Enrichment
from objlib_daemon.library.mime import is_text, mime_type, upload_mime_type

MetadataValue = str | float | list[str]

NO_TEXT = "no text layer (needs OCR)"
SOURCE_FORMAT_KEY = "source_format"


class Refused(Exception):
    """This file is not uploaded; the message says why and what to do."""


@dataclass(frozen=True)
class Payload:
    body: bytes
    mime_type: str
    metadata: dict[str, MetadataValue]
    # The document's plain text for stores that index it themselves (None: a
    # format we have no reader for; the store decides from the MIME type).
    text: str | None
    # Worth saying in the sync summary and `status` though it was uploaded.
    note: str | None = None


def payload(path: str, data: bytes, enrichment: Enrichment, *, no_text: str) -> Payload:
    """The upload for the file at library-relative `path` whose bytes are `data`.

    Raises Refused for a file that cannot be read as its format says, and for
    one without text when `no_text` is "hold".
    """
    fmt = source_format(path)
    metadata = dict(enrichment.metadata)
    if fmt not in FORMATS:  # a type the user's globs let in: sent as it is
        return Payload(_with_header(data, enrichment, path), mime_type(path), metadata, None)
    try:
        extracted = extract(data, path)
    except ExtractError as exc:
        raise Refused(f"cannot extract its text: {exc}") from None
    note = None
    if not extracted.has_text and fmt not in PLAIN_FORMATS:
        if no_text == "hold":
            raise Refused(f'{NO_TEXT}: held back (library.no_text = "hold")')
        note = f'{NO_TEXT}: uploaded anyway (library.no_text = "upload")'
    elif extracted.truncated:
        note = f"text cut at {len(extracted.text):,} characters"
    body, mime = data, upload_mime_type(path)
    if mime != mime_type(path):  # converted: the text is the document
        # A book without text still gets a body (its name): an empty one is refused.
        body = extracted.text.encode("utf-8") or enrichment.display_name.encode("utf-8")
        metadata = _with_source_format(metadata, fmt)
    return Payload(_with_header(body, enrichment, path), mime, metadata, extracted.text, note)


def _with_header(body: bytes, enrichment: Enrichment, path: str) -> bytes:
    if not (enrichment.header and is_text(path)):
        return body
    header = enrichment.header.encode("utf-8")
    # The header is a courtesy (the metadata says the same): a file the size
    # bounds let in must not be refused for the header's sake.
    return header + body if len(header) + len(body) <= MAX_DOCUMENT_BYTES else body


def _with_source_format(metadata: dict[str, MetadataValue], fmt: str) -> dict[str, MetadataValue]:
    """Add source_format, dropping the last rule-made key if the 20 entries are full."""
    if len(metadata) >= MAX_ENTRIES:
        derived = [k for k in metadata if k not in IDENTITY_KEYS]
        metadata.pop(derived[-1])
    metadata[SOURCE_FORMAT_KEY] = fmt
    return metadata
