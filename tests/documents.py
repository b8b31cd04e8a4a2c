"""Real documents of every format, made by the tests (no binary fixtures).

PDFs are written by a tiny writer (text pages with a standard font, or image
pages with no text layer, as a scanner makes); pypdf encrypts one. DOCX and
EPUB are zip packages with the parts Word and e-readers require.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

from pypdf import PdfReader, PdfWriter


def pdf(pages: Sequence[str], *, image_only: bool = False, filler: int = 0) -> bytes:
    """A PDF with one page per string (Helvetica text), or image-only pages.

    `filler` adds that many bytes of incompressible image data per page, to
    make large files whose text is small (memory benchmarks).
    """
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(header: str, data: bytes) -> int:
        return add(f"<< {header} /Length {len(data)} >>\nstream\n".encode() + data + b"\nendstream")

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids = []
    for text in pages:
        if image_only:
            size = max(8, int((filler or 64) ** 0.5))
            image = stream(
                f"/Type /XObject /Subtype /Image /Width {size} /Height {size} "
                "/ColorSpace /DeviceGray /BitsPerComponent 8",
                os.urandom(size * size),
            )
            content = stream("", b"q 500 0 0 700 50 50 cm /Im1 Do Q")
            resources = f"<< /XObject << /Im1 {image} 0 R >> >>"
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            lines = escaped.split("\n")
            ops = "BT /F1 11 Tf 14 TL 50 760 Td " + " ".join(f"({ln}) '" for ln in lines) + " ET"
            extra = ""
            if filler:
                junk = stream(
                    f"/Type /XObject /Subtype /Image /Width {filler} /Height 1 "
                    "/ColorSpace /DeviceGray /BitsPerComponent 8",
                    os.urandom(filler),
                )
                ops += " q 1 0 0 1 0 0 cm /Im1 Do Q"
                extra = f" /XObject << /Im1 {junk} 0 R >>"
            content = stream("", ops.encode("latin-1"))
            resources = f"<< /Font << /F1 {font} 0 R >>{extra} >>"
        kids.append(
            add(
                f"<< /Type /Page /Parent {{pages}} 0 R /MediaBox [0 0 612 792] "
                f"/Resources {resources} /Contents {content} 0 R >>".encode()
            )
        )
    refs = " ".join(f"{k} 0 R" for k in kids)
    pages_id = add(f"<< /Type /Pages /Kids [{refs}] /Count {len(kids)} >>".encode())
    catalog = add(f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode())
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        body = body.replace(b"{pages}", str(pages_id).encode())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def encrypted_pdf(pages: Sequence[str], password: str = "secret") -> bytes:
    """A PDF that opens only with `password` (AES-256, as current tools write)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(pages))))
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def docx(paragraphs: Sequence[str | tuple[str, str]]) -> bytes:
    """A Word document; a (style, text) item is a styled paragraph (e.g. Heading1)."""
    body = []
    for item in paragraphs:
        style, text = item if isinstance(item, tuple) else ("", item)
        ppr = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
        body.append(f'<w:p>{ppr}<w:r><w:t xml:space="preserve">{_xml(text)}</w:t></w:r></w:p>')
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="{_W}">'
        f"<w:body>{''.join(body)}</w:body></w:document>"
    )
    return _zip(
        {
            "[Content_Types].xml": (
                '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats'
                '.org/package/2006/content-types"><Default Extension="rels" ContentType="applica'
                'tion/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
                'ContentType="application/xml"/><Override PartName="/word/document.xml" ContentT'
                'ype="application/vnd.openxmlformats-officedocument.wordprocessingml.document.ma'
                'in+xml"/></Types>'
            ),
            "_rels/.rels": (
                '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.open'
                'xmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http:/'
                "/schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" "
                'Target="word/document.xml"/></Relationships>'
            ),
            "word/document.xml": document,
        }
    )


def epub(chapters: Sequence[tuple[str, str]], *, images_only: bool = False) -> bytes:
    """An EPUB 3 book: (title, text) chapters in spine order (reversed in the zip,
    so a reader that follows zip order instead of the spine gets them wrong)."""
    files: dict[str, str | bytes] = {
        "META-INF/container.xml": (
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:'
            'opendocument:xmlns:container"><rootfiles><rootfile full-path="OEBPS/content.opf" '
            'media-type="application/oebps-package+xml"/></rootfiles></container>'
        ),
    }
    items, refs = [], []
    for i, (title, text) in enumerate(chapters, 1):
        body = (
            '<p><img src="scan.png" alt=""/></p>'
            if images_only
            else f"<h1>{_xml(title)}</h1>" + "".join(f"<p>{_xml(p)}</p>" for p in text.split("\n"))
        )
        files[f"OEBPS/text/ch{i}.xhtml"] = (
            '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml">'
            f"<head><title>{_xml(title)}</title><style>p {{ margin: 0 }}</style></head>"
            f"<body>{body}</body></html>"
        )
        items.append(
            f'<item id="c{i}" href="text/ch{i}.xhtml" media-type="application/xhtml+xml"/>'
        )
        refs.append(f'<itemref idref="c{i}"/>')
    files["OEBPS/content.opf"] = (
        '<?xml version="1.0" encoding="utf-8"?><package xmlns="http://www.idpf.org/2007/opf" '
        'version="3.0" unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/'
        '1.1/"><dc:identifier id="id">urn:uuid:0</dc:identifier><dc:title>Book</dc:title>'
        f"</metadata><manifest>{''.join(items)}</manifest><spine>{''.join(refs)}</spine>"
        "</package>"
    )
    ordered = dict(reversed(list(files.items())))
    return _zip({"mimetype": "application/epub+zip", **ordered})


def html(title: str, text: str) -> bytes:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_xml(title)}</title>"
        "<script>var scriptonlyword = 1;</script><style>.stylewordonly{}</style></head><body>"
        + "".join(f"<p>{_xml(p)}</p>" for p in text.split("\n"))
        + "</body></html>"
    ).encode()


def _zip(files: dict[str, str | bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
