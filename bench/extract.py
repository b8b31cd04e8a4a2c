"""Benchmark: peak memory and time of text extraction for large PDFs and EPUBs.

The target (issue 14): extracting a 100 MB PDF or a large EPUB keeps the
process well under 500 MB. Each file is extracted the way the applier does it
(the whole file's bytes in hand, as read and hashed for upload) in a fresh
interpreter, so the peak RSS measured is that extraction's own; the bytes
themselves count in it. Run it directly:

    .venv/bin/python bench/extract.py [--pdf-mb 100] [--epub-mb 60] [--keep DIR]

It is not part of `make bench`: building the files takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from common import PYTHON  # puts the repository and tests/ on sys.path
from documents import epub, pdf

_CHILD = r"""
import json, re, resource, sys, time
from pathlib import Path

def peak_kib():
    # VmHWM where there is /proc: Linux carries ru_maxrss over from the parent
    # across exec, so ru_maxrss can be the parent's peak, not ours.
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # macOS: bytes
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
data = Path(sys.argv[1]).read_bytes()
start = time.perf_counter()
from objlib_daemon.library.extract import extract
result = extract(data, sys.argv[1])
print(json.dumps({
    "seconds": round(time.perf_counter() - start, 2),
    "peak_rss_mb": round(peak_kib() / 1024, 1),
    "file_mb": round(len(data) / 1e6, 1),
    "text_chars": len(result.text),
    "sections": len(result.sections),
    "truncated": result.truncated,
}))
"""

_PARAGRAPH = (
    "Reason is the faculty that identifies and integrates the material provided by "
    "man's senses; page {page}, line {line}. "
)


def make_pdf(path: Path, megabytes: int) -> None:
    """Text on every page plus an incompressible image, ~50 KB a page."""
    pages = megabytes * 20
    text = [
        "\n".join(_PARAGRAPH.format(page=p, line=n) for n in range(40)) for p in range(pages)
    ]
    path.write_bytes(pdf(text, filler=48_000))


def make_epub(path: Path, megabytes: int) -> None:
    """Chapters of ~1 MB of prose (EPUB text compresses about 10:1 in the zip)."""
    chapters = []
    for c in range(megabytes * 10):
        lines = "\n".join(_PARAGRAPH.format(page=c, line=n) for n in range(8000))
        chapters.append((f"Chapter {c}", lines))
    path.write_bytes(epub(chapters))


def measure(path: Path) -> dict[str, object]:
    out = subprocess.run(
        [PYTHON, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdf-mb", type=int, default=100)
    ap.add_argument("--epub-mb", type=int, default=6, help="zipped size; text is ~10x")
    ap.add_argument("--keep", type=Path, help="build the files here (and keep them)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        big_pdf, big_epub = where / "large.pdf", where / "large.epub"
        if not big_pdf.exists():
            make_pdf(big_pdf, args.pdf_mb)
        if not big_epub.exists():
            make_epub(big_epub, args.epub_mb)
        for path in (big_pdf, big_epub):
            print(path.suffix, json.dumps(measure(path)))


if __name__ == "__main__":
    main()
