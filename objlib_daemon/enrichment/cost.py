"""What a sync would spend, before it spends it: tokens and dollars for `sync --dry-run`.

Enrichment input is the texts that are not in the cache, as they would be
sent (sampled to the budget), estimated offline by the rule of text.py (4
characters per token): a dry run calls nothing. With `count` (`sync
--dry-run --count-tokens`) the model's countTokens counts them instead
(free, batched), falling back to the estimate when it cannot (no key,
offline). The answer is estimated at OUTPUT_TOKENS_PER_FILE. Indexing counts
the whole text of every document to upload (as library/extract.py reads it),
scaled by the ratio countTokens found on the samples when it was asked (the
full texts are too large to send only to count them); documents without
text (a scanned PDF) are listed as not estimated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from objlib_daemon.config import EnrichmentConfig
from objlib_daemon.enrichment import cache
from objlib_daemon.enrichment.analysis import PROMPT
from objlib_daemon.enrichment.enricher import Enricher
from objlib_daemon.enrichment.model import EnrichmentFailed
from objlib_daemon.enrichment.text import estimate_tokens, sample, text_of
from objlib_daemon.library import paths

# A filled-in answer of the schema is 150-300 tokens; the upper end is assumed.
OUTPUT_TOKENS_PER_FILE = 300
COUNT_BATCH = 50  # texts per countTokens request


@dataclass
class CostEstimate:
    files_to_enrich: int = 0
    enrichment_input_tokens: int = 0
    enrichment_output_tokens: int = 0
    enrichment_cost: float = 0.0
    files_to_index: int = 0
    indexing_tokens: int = 0
    indexing_cost: float = 0.0
    not_estimated: int = 0  # uploads without text to count (a scanned PDF)
    counted_by: str = "offline estimate (4 characters per token)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    enricher: Enricher,
    settings: EnrichmentConfig,
    root: Path,
    uploads: Iterable[str],
    *,
    count: bool = False,
) -> CostEstimate:
    """Tokens and cost of enriching and indexing the files at `uploads` (relative paths)."""
    out = CostEstimate()
    to_enrich: list[str] = []
    index_chars = 0
    for rel in uploads:
        try:
            data = paths.resolve(root, rel).read_bytes()
        except OSError:
            continue
        text = text_of(rel, data)
        if text is None:
            out.not_estimated += 1
            continue
        out.files_to_index += 1
        index_chars += len(text)
        if enricher.ai_version is None:
            continue
        sha = hashlib.sha256(data).hexdigest()
        with enricher.db.reading() as s:
            if cache.lookup(s, sha, enricher.ai_version) is not None:
                continue
        to_enrich.append(sample(text, enricher.max_input_tokens))
    offline = sum(estimate_tokens(PROMPT + t) for t in to_enrich)
    ratio = 1.0
    counted = offline
    if count and to_enrich and enricher.analyst is not None:
        try:
            counted = sum(
                enricher.analyst.count_tokens(to_enrich[i : i + COUNT_BATCH])
                for i in range(0, len(to_enrich), COUNT_BATCH)
            )
            ratio = counted / offline if offline else 1.0
            out.counted_by = f"countTokens of {enricher.analyst.model}"
        except EnrichmentFailed:
            counted = offline
    out.files_to_enrich = len(to_enrich)
    out.enrichment_input_tokens = counted
    out.enrichment_output_tokens = OUTPUT_TOKENS_PER_FILE * len(to_enrich)
    out.enrichment_cost = round(
        (counted * settings.input_price + out.enrichment_output_tokens * settings.output_price)
        / 1e6,
        4,
    )
    out.indexing_tokens = round(index_chars / 4 * ratio)
    out.indexing_cost = round(out.indexing_tokens * settings.indexing_price / 1e6, 4)
    return out
