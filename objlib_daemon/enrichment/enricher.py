"""The enrichment stage the applier calls: upload body header, metadata, version.

`Enricher.for_upload` never fails a file: without an analysis (429, quota,
safety block, malformed answer, no key, budget) the file gets its path-rule
metadata and a *pending* version, `<rules>+ai-pending:<reason>`. That
version differs from the full one, so a forced sync re-uploads the file,
and the sweep (`ready_for_upload`) finds it: once the model answers, the
path is queued as forced and the applier replaces the document the usual
way (new document first, then the old one deleted).

Versions a file can record:
    raw                            --skip-enrichment
    v1-<rules>                     path rules only (AI off)
    v1-<rules>+ai-<ai>             path rules and AI metadata (or no text to analyse)
    v1-<rules>+ai-pending:<reason> path rules only, AI metadata owed
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from objlib_daemon.config import Config, MetadataRule
from objlib_daemon.enrichment import cache
from objlib_daemon.enrichment.analysis import (
    MAX_OUTPUT_TOKENS,
    PROMPT,
    PROMPT_VERSION,
    RESPONSE_SCHEMA,
    Analysis,
)
from objlib_daemon.enrichment.pending import (
    PENDING,
    REASONS,
    EnrichmentFailed,
    waiting_versions,
)
from objlib_daemon.enrichment.text import estimate_tokens, sample, text_of
from objlib_daemon.errors import ConfigurationError
from objlib_daemon.library import paths
from objlib_daemon.library.metadata import MAX_ENTRIES, Enrichment, enrich, enrichment_version
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.models import File, FileState
from objlib_daemon.stores.base import AuthError, MetadataValue

if TYPE_CHECKING:  # the SDK is imported only where a model is really used
    from objlib_daemon.enrichment.model import GeminiAnalyst

log = get_logger("objlibd.enrichment")


@dataclass(frozen=True)
class EnrichmentResult:
    """What one upload carries, and the version the file records once it is uploaded."""

    # For library/payload.py: display name, metadata (path rules and AI), and
    # the header of a text upload (identity lines, then the [AI Analysis] block).
    enrichment: Enrichment
    version: str
    pending_reason: str | None = None  # set: uploaded without AI metadata (REASONS key)


@dataclass
class _Question:
    """The model being asked about one content, and how many uploads want the answer."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0


def ai_version(model: str, max_input_tokens: int) -> str:
    """Changes with the model, the prompt, the schema or the input budget."""
    canonical = json.dumps([model, PROMPT, RESPONSE_SCHEMA, max_input_tokens], sort_keys=True)
    return f"{PROMPT_VERSION}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


class Enricher:
    """Path rules always; AI metadata when `ai` (an analyst, or the reason there is none)."""

    def __init__(
        self,
        db: Any,
        *,
        library_id: str,
        rules: Sequence[MetadataRule] | None,
        skip: bool = False,
        analyst: GeminiAnalyst | None = None,
        unavailable: str | None = None,
        model: str = "",
        max_input_tokens: int = 8000,
        max_daily_tokens: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.library_id = library_id
        self.rules = rules
        self.skip = skip
        self.analyst = analyst
        self.unavailable = unavailable  # AI wanted but impossible: the reason (REASONS key)
        self.ai = not skip and (analyst is not None or unavailable is not None)
        self.max_input_tokens = max_input_tokens
        self.max_daily_tokens = max_daily_tokens
        self.clock = clock
        self.rules_version = enrichment_version(rules, skip=skip)
        # One question per content at a time: copies of a file uploaded by
        # parallel workers wait for the first answer instead of asking again.
        self._asking: dict[str, _Question] = {}
        self._asking_guard = threading.Lock()
        self.ai_version = ai_version(model, max_input_tokens) if self.ai else None

    @property
    def version(self) -> str:
        """What a file records once fully enriched (the planner's `--force` comparison)."""
        if self.ai_version is None:
            return self.rules_version
        return f"{self.rules_version}+ai-{self.ai_version}"

    def current(self, version: str | None) -> bool:
        """A version an upload made now could carry: the full one, or pending its AI part."""
        return version == self.version or (
            self.ai and bool(version) and version.startswith(self.rules_version + PENDING)
        )

    # --- the applier's call -------------------------------------------------------------

    def for_upload(
        self, path: str, sha256: str, data: bytes, text_to_enrich: str | None = None
    ) -> EnrichmentResult:
        """Metadata, header and version for uploading `data` at `path`.

        The text the model reads is extracted only when the cache has no
        analysis of this content (library/extract.py, which payload() runs
        again for the upload: a cost paid once per new content, beside the
        model's). A caller that holds the text already passes it as
        `text_to_enrich`.
        """
        base = enrich(
            path, library_id=self.library_id, sha256=sha256, rules=self.rules, skip=self.skip
        )
        if not self.ai:
            return EnrichmentResult(base, self.version)

        def read() -> str | None:
            return text_to_enrich if text_to_enrich is not None else text_of(path, data)

        analysis, reason = self.analysis(sha256, read)
        version = self.version if reason is None else f"{self.rules_version}{PENDING}{reason}"
        if analysis is None:  # no text to analyse (version complete), or pending
            return EnrichmentResult(base, version, reason)
        ai = analysis.metadata()
        # Identity first, then as many path-rule keys as leave room for the AI keys.
        kept = list(base.metadata.items())[: MAX_ENTRIES - len(ai)]
        metadata: dict[str, MetadataValue] = dict(kept) | ai
        header = base.header + analysis.block() if base.header else None
        return EnrichmentResult(Enrichment(base.display_name, metadata, header), version, reason)

    def analysis(
        self, sha256: str, read: Callable[[], str | None]
    ) -> tuple[Analysis | None, str | None]:
        """(analysis, pending reason): the cached one, else the model's, else a fallback.

        `read` gives the text, called only on a cache miss; (None, None) when
        it has none (nothing to analyse). A failure still returns the newest
        analysis of this content under an older version when there is one
        (stored metadata is never thrown away), with the reason that makes the
        file pending.
        """
        assert self.ai_version is not None
        with self._asking_guard:
            question = self._asking.setdefault(sha256, _Question())
            question.waiting += 1
        try:
            with question.lock:
                return self._cached_or_asked(sha256, read)
        finally:
            with self._asking_guard:
                question.waiting -= 1
                if not question.waiting:
                    del self._asking[sha256]

    def _cached_or_asked(
        self, sha256: str, read: Callable[[], str | None]
    ) -> tuple[Analysis | None, str | None]:
        assert self.ai_version is not None
        with self.db.reading() as s:  # a snapshot: no writer waits on a cache hit
            cached = cache.lookup(s, sha256, self.ai_version)
        if cached is not None:
            return cached, None
        text = read()
        if not text:
            return None, None
        try:
            analysis = self._ask(sha256, text)
        except EnrichmentFailed as exc:
            now = self.clock()
            with self.db.session() as s:
                cache.record_failure(
                    s,
                    sha256,
                    self.ai_version,
                    exc.reason,
                    str(exc),
                    retry_after=exc.retry_after,
                    now=now,
                )
                fallback = cache.latest_done(s, sha256)
            log.warning(
                "enrichment postponed", sha256=sha256[:12], reason=exc.reason, error=str(exc)
            )
            return fallback, exc.reason
        return analysis, None

    def _ask(self, sha256: str, text: str) -> Analysis:
        assert self.ai_version is not None
        if self.analyst is None:
            reason = self.unavailable or "no_key"
            raise EnrichmentFailed(reason, REASONS[reason])
        cut = sample(text, self.max_input_tokens)
        if self.max_daily_tokens:
            # Checked before the call with an upper estimate, so a budget is
            # never overrun by more than the estimate's error.
            planned = estimate_tokens(PROMPT + cut) + MAX_OUTPUT_TOKENS
            with self.db.reading() as s:
                spent = cache.spent_today(s, self.clock())
            if spent + planned > self.max_daily_tokens:
                raise EnrichmentFailed(
                    "budget",
                    f"{spent} of {self.max_daily_tokens} tokens spent today; enrichment "
                    "resumes tomorrow (UTC) or with a higher [enrichment] max_daily_tokens",
                )
        analysis, usage = self.analyst.analyse(cut)
        with self.db.session() as s:
            cache.record_done(
                s,
                sha256,
                self.ai_version,
                analysis,
                prompt_tokens=usage.prompt_tokens,
                output_tokens=usage.output_tokens,
                now=self.clock(),
            )
        return analysis

    # --- the sweep ------------------------------------------------------------------------

    def ready_for_upload(self, root: Path, *, respect_backoff: bool = True) -> list[str]:
        """Paths uploaded without their AI metadata whose analysis is now to be had.

        Asks the model again for each waiting content (once per content, not
        per path; due ones only with `respect_backoff`), stopping at the
        budget. The caller queues the returned paths as forced, so the
        applier re-uploads them with the analysis from the cache.
        """
        if not self.ai or self.ai_version is None:
            return []
        with self.db.reading() as s:
            versions = waiting_versions(s)
            if not versions:
                return []
            waiting = s.execute(
                select(File.path, File.upload_sha256).where(
                    File.enrichment_version.in_(versions),
                    File.state == FileState.INDEXED,
                    File.document.is_not(None),
                )
            ).all()
        by_sha: dict[str, list[str]] = {}
        for path, sha in waiting:
            if sha:
                by_sha.setdefault(sha, []).append(path)
        ready: list[str] = []
        now = self.clock()
        for sha, rel_paths in by_sha.items():
            with self.db.reading() as s:
                cached = cache.lookup(s, sha, self.ai_version) is not None
                due = cache.due_at(s, sha, self.ai_version)
            if not cached:
                if respect_backoff and due > now:
                    continue
                # Changed or unreadable (None): the next scan handles the file.
                analysis, reason = self.analysis(
                    sha, lambda rel=rel_paths[0], sha=sha: _current_text(root, rel, sha)
                )
                if reason == "budget":
                    break  # nothing more today; no further calls
                if reason is not None or analysis is None:
                    continue
            ready.extend(rel_paths)
        return ready

    def queue_ready(self, root: Path, *, respect_backoff: bool = True) -> int:
        """Queue `ready_for_upload` paths as forced (re-upload, upload first); how many."""
        ready = self.ready_for_upload(root, respect_backoff=respect_backoff)
        if ready:
            with self.db.session() as s:
                queue.enqueue(s, ((p, queue.FORCE) for p in ready))
        return len(ready)

    def close(self) -> None:
        if self.analyst is not None:
            self.analyst.close()


def _current_text(root: Path, rel_path: str, sha256: str) -> str | None:
    """The file's text if it still holds the content `sha256`, else None."""
    try:
        data = paths.resolve(root, rel_path).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    return text_of(rel_path, data)


# --- building one, and reporting -----------------------------------------------------------


def ai_wanted(config: Config, backend: str) -> bool:
    """On by default with the gemini backend; the local backend only when turned on."""
    setting = config.enrichment.enabled
    if setting == "auto":
        return backend == "gemini"
    return setting == "true"


def open_enricher(
    config: Config,
    db: Any,
    *,
    library_id: str,
    backend: str,
    rules: Sequence[MetadataRule] | None,
    skip: bool,
) -> Enricher:
    """The enricher for one workspace (`rules`: the complete path-rule list).

    The key is resolved as for the store (credentials.py); without one, AI
    enrichment stays wanted and every file waits with reason "no_key".
    """
    settings = config.enrichment
    analyst: GeminiAnalyst | None = None
    unavailable: str | None = None
    if not skip and ai_wanted(config, backend):
        from objlib_daemon.credentials import resolve_api_key
        from objlib_daemon.enrichment.model import GeminiAnalyst

        try:
            analyst = GeminiAnalyst(settings, config.store, resolve_api_key()[0])
        except (ConfigurationError, AuthError):
            unavailable = "no_key"
    return Enricher(
        db,
        library_id=library_id,
        rules=rules,
        skip=skip,
        analyst=analyst,
        unavailable=unavailable,
        model=settings.model,
        max_input_tokens=settings.max_input_tokens,
        max_daily_tokens=settings.max_daily_tokens,
    )
