"""The model call: structured output through google-genai, paced and classified.

The client comes from stores/gemini.py's `make_client` (v1beta, timeout,
explicit key) and every call goes through a stores/pacing.py `Pacer` (rate
limit, circuit breaker, error classification, secret scrubbing), with one
attempt only: a failed enrichment must not hold up the upload it belongs to.
The file is uploaded with its path-rule metadata instead and the model is
asked again by the sweep (enricher.py), at the pace of its own backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.genai import types

from objlib_daemon.config import EnrichmentConfig, StoreConfig
from objlib_daemon.enrichment.analysis import (
    MAX_OUTPUT_TOKENS,
    PROMPT,
    RESPONSE_SCHEMA,
    Analysis,
    Malformed,
)
from objlib_daemon.enrichment.pending import EnrichmentFailed
from objlib_daemon.stores.base import AuthError, CircuitOpen, StoreError, TransientError
from objlib_daemon.stores.gemini import make_client
from objlib_daemon.stores.pacing import AdaptiveLimiter, CircuitBreaker, Pacer


class _SkippingLimiter(AdaptiveLimiter):
    """The store's adaptive pacing, except for a 429's RetryInfo.

    AdaptiveLimiter holds every later request until the RetryInfo delay has
    passed, sleeping in the caller; here the caller is an upload worker, so
    the delay is noted in `hold_until` instead and nothing is asked until
    then: uploads go on without AI metadata (the sweep catches up). A request
    already waiting for its send slot when the 429 came is not sent either.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_until = 0.0  # time.monotonic()

    def acquire(self) -> int:
        self.check_hold()
        ticket = super().acquire()
        self.check_hold()
        return ticket

    def check_hold(self) -> None:
        held = self.hold_until - time.monotonic()
        if held > 0:
            raise EnrichmentFailed(
                "rate_limited",
                f"the model service asked to wait {held:.0f}s more (RetryInfo)",
                retry_after=held,
            )

    def throttled(self, ticket: int, retry_after: float | None) -> None:
        if retry_after:
            self.hold_until = max(self.hold_until, time.monotonic() + retry_after)
        super().throttled(ticket, None)  # the rate is still cut


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    output_tokens: int


class GeminiAnalyst:
    """Asks a Gemini model for a document's Analysis, and counts tokens."""

    def __init__(
        self,
        settings: EnrichmentConfig,
        store_config: StoreConfig,
        api_key: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = settings.model
        self.client = make_client(api_key, store_config.base_url)  # AuthError without a key
        self.limiter = _SkippingLimiter(
            ceiling_per_minute=settings.max_requests_per_minute, sleep=sleep
        )
        self.pacer = Pacer(
            limiter=self.limiter,
            breaker=CircuitBreaker(store_config.breaker_threshold, store_config.breaker_cooldown),
            attempts=1,
            sleep=sleep,
            secrets=(api_key.strip(),),
        )

    def analyse(self, text: str) -> tuple[Analysis, Usage]:
        """One structured-output request; raises EnrichmentFailed on any failure."""
        try:
            response = self.pacer.call(
                "models.generate_content",
                self.client.models.generate_content,
                model=self.model,
                contents=text,
                config=types.GenerateContentConfig(
                    system_instruction=PROMPT,
                    response_mime_type="application/json",
                    response_json_schema=RESPONSE_SCHEMA,
                    max_output_tokens=MAX_OUTPUT_TOKENS,
                    temperature=0.0,  # the same text should get the same metadata
                ),
            )
        except StoreError as exc:
            raise _failure(exc) from None
        meta = response.usage_metadata
        usage = Usage(
            prompt_tokens=(meta.prompt_token_count or 0) if meta else 0,
            output_tokens=(meta.candidates_token_count or 0) if meta else 0,
        )
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise EnrichmentFailed("safety", f"prompt blocked: {_name(feedback.block_reason)}")
        candidates = response.candidates or []
        if not candidates:
            raise EnrichmentFailed("malformed", "the model returned no candidate")
        finish = _name(candidates[0].finish_reason)
        if finish in ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"):
            raise EnrichmentFailed("safety", f"answer blocked: {finish}")
        if finish not in ("STOP", ""):
            raise EnrichmentFailed("malformed", f"the answer stopped early: {finish}")
        content = candidates[0].content
        parts = content.parts if content is not None else None
        answer = "".join(p.text for p in parts or [] if p.text and not p.thought)
        try:
            return Analysis.parse(answer), usage
        except Malformed as exc:
            raise EnrichmentFailed("malformed", str(exc)) from None

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens of `texts`, each with the prompt, as the model counts them: one request.

        (countTokens on the Gemini API takes no system instruction, so the
        prompt is counted as text: the same tokens.)"""
        try:
            answer = self.pacer.call(
                "models.count_tokens",
                self.client.models.count_tokens,
                model=self.model,
                contents=[PROMPT + t for t in texts],
            )
        except StoreError as exc:
            raise _failure(exc) from None
        return int(answer.total_tokens or 0)

    def close(self) -> None:
        self.client.close()


def _name(value: object) -> str:
    return str(getattr(value, "value", value) or "")


def _failure(exc: StoreError) -> EnrichmentFailed:
    """Map the pacer's classified error (already scrubbed) onto a pending reason."""
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, AuthError):
        reason = "no_key"
    elif isinstance(exc, CircuitOpen):
        reason = "unavailable"
    elif exc.code == 429:
        reason = "rate_limited"
    elif isinstance(exc, TransientError):
        reason = "server_error" if exc.code else "unavailable"
    else:
        reason = "error"
    return EnrichmentFailed(reason, str(exc), retry_after=retry_after)
