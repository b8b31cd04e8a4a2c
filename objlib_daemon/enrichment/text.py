"""The text a model reads: extracted from the document, cut to a token budget.

Extraction is library/extract.py's (the one extractor: plain text and
Markdown, HTML without markup, PDF, DOCX, EPUB). A document it cannot read,
or without any text (a scanned PDF), has nothing to analyse.

Budget: a token is taken as 4 characters of English prose (Google's own rule
of thumb for Gemini models), so a text longer than `4 × max_input_tokens`
characters is sampled: its beginning (60 % of the budget: title, the
lecture's announced plan), a slice from the middle (20 %) and its end (20 %:
conclusions, Q&A), joined with `[…]` marks. The same rule gives the offline
token estimates of `sync --dry-run`.
"""

from __future__ import annotations

from objlib_daemon.library.extract import FORMATS, ExtractError, extract, source_format

CHARS_PER_TOKEN = 4
_GAP = "\n\n[…]\n\n"


def text_of(path: str, data: bytes) -> str | None:
    """Plain text of the document at `path` whose bytes are `data`; None without any."""
    if source_format(path) not in FORMATS:
        return None
    try:
        text = extract(data, path).text.strip()
    except ExtractError:
        return None  # payload() refuses such a file and says why
    return text or None


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def sample(text: str, max_tokens: int) -> str:
    """`text` if it fits `max_tokens`, else its beginning, a middle slice and its end."""
    budget = max_tokens * CHARS_PER_TOKEN
    if len(text) <= budget:
        return text
    head, middle, tail = budget * 6 // 10, budget // 5, budget // 5
    mid_start = (len(text) - middle) // 2
    return _GAP.join((text[:head], text[mid_start : mid_start + middle], text[len(text) - tail :]))
