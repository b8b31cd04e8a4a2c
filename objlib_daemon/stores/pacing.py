"""Pacing for remote calls: error classification, retries, rate limit, circuit breaker.

The SDK retries nothing by default and its own retry ignores `RetryInfo` and
dropped connections (docs/gemini-file-search.md, rule 6), so every remote call made
by a backend goes through one `Pacer`: breaker check → adaptive rate limiter →
call → `classify` → tenacity retry on transient errors only. The limiter
learns the rate the service allows from its 429s (none is published); the
breaker is for outages (5xx storms, a dead network) and ignores 429s. Nothing here knows about
File Search resources; `gemini.py` decides which calls are safe to repeat.

Secrets: SDK and transport exceptions can carry request URLs, headers or whole
response bodies. `classify` scrubs every message it produces, and the
resulting error is raised with no `__cause__`/`__context__`, so a traceback
printed by a caller cannot resurrect the original text either.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import tenacity

from objlib_daemon.logging import get_logger
from objlib_daemon.stores.base import (
    AuthError,
    CircuitOpen,
    PermanentError,
    QuotaExhausted,
    StoreError,
    TransientError,
)
from objlib_daemon.units import parse_duration

try:  # The SDK's transport: httpx2 in google-genai 3.4, httpx in older releases.
    import httpx2 as _httpx2
except ImportError:  # pragma: no cover - depends on the installed SDK
    _httpx2 = None  # type: ignore[assignment]
try:
    import httpx as _httpx
except ImportError:  # pragma: no cover - httpx is not installed with SDK 3.4
    _httpx = None  # type: ignore[assignment]

from google.genai import errors as genai_errors

log = get_logger(__name__)

T = TypeVar("T")

# Statuses worth repeating as they are (docs/gemini-file-search.md, rule 6).
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# google.rpc.Code values in an operation's `error` that a later re-upload can
# fix: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE
# (the codes google.rpc documents as retryable). INTERNAL (13) was once left
# out because the known per-document failures ("Failed to count tokens")
# arrive as 13 and a blind retry would hot-loop; the caller's queue now backs
# off exponentially per file, so a 13 that never clears costs a retry every
# few hours, while one that does clear (an indexing hiccup) no longer turns
# the file into a permanent failure (issue 12, F3).
TRANSIENT_RPC = frozenset({4, 8, 10, 13, 14})
# How long to wait before trying again after "storage limit reached": space
# comes back only when documents are deleted or the tier is raised, an
# outside cause measured in minutes to days, never a verdict on the file.
STORAGE_RETRY_AFTER = 600.0

_REDACTED = "[REDACTED]"
# Defence in depth beyond the exact key: any Google API key shape, and any
# value following an api-key header or a `key=` query parameter.
_GENERIC_SECRETS = (
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"(?i)([?&]key=)[^&\s'\"]+"),
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret (and anything shaped like an API key) redacted."""
    for secret in secrets:
        # A 1-3 character "secret" would shred ordinary words; real keys are long.
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    for pattern in _GENERIC_SECRETS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.re.groups else "") + _REDACTED,
            text,
        )
    return text


# --- classification ------------------------------------------------------------


def _error_body(exc: genai_errors.APIError) -> dict[str, Any]:
    """The `error` object of the response (the SDK stores the whole JSON body)."""
    body = exc.details
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return {}
    inner = body.get("error")
    return inner if isinstance(inner, dict) else body


def _detail_list(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    details = _error_body(exc).get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict)]


def retry_delay(exc: genai_errors.APIError) -> float | None:
    """The server's advice on when to retry: `RetryInfo.retryDelay`, else `Retry-After`."""
    for detail in _detail_list(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            # A protobuf Duration in its JSON form ("1.5s"); a malformed one is no advice.
            with contextlib.suppress(ValueError):
                return parse_duration(detail.get("retryDelay"))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        try:
            value = headers.get("retry-after")
        except Exception:  # a foreign response type; the advice is optional
            value = None
        if value:  # seconds; the HTTP-date form is no advice here
            with contextlib.suppress(ValueError):
                return parse_duration(value)
    return None


def _reasons(exc: genai_errors.APIError) -> set[str]:
    return {str(d.get("reason", "")) for d in _detail_list(exc) if d.get("reason")}


def _api_error(exc: genai_errors.APIError, secrets: Iterable[str]) -> StoreError:
    code = exc.code if isinstance(exc.code, int) else None
    status = exc.status or ""
    message = scrub(str(exc.message or "").strip() or status or "no message", secrets)
    text = f"{code} {status}: {message}" if status else f"{code}: {message}"
    lowered = message.lower()
    reasons = _reasons(exc)

    if (
        code == 401
        or any(r.startswith("API_KEY_") for r in reasons)
        or (code == 400 and "api key" in lowered)
    ):
        return AuthError(
            f"the Gemini API rejected the API key ({text}); set a valid key with "
            "`objlibd auth set` or export GEMINI_API_KEY",
            code=code,
        )
    if code == 403 and ("unregistered callers" in lowered or "api key" in lowered):
        return AuthError(
            f"the Gemini API received no usable API key ({text}); set one with "
            "`objlibd auth set` or export GEMINI_API_KEY",
            code=code,
        )
    if code == 429 and ("storage" in lowered and "limit" in lowered):
        # Not a rate signal and not the file's fault: retried much later.
        return QuotaExhausted(
            f"the project's File Search storage quota is full ({text}); delete documents "
            "or raise the quota; retrying later",
            code=code,
            retry_after=max(STORAGE_RETRY_AFTER, retry_delay(exc) or 0.0),
        )
    if code in TRANSIENT_HTTP:
        return TransientError(text, code=code, retry_after=retry_delay(exc))
    if code == 400 and "failed to create file" in lowered:
        # Observed to succeed on a plain retry (docs/gemini-file-search.md, limits).
        return TransientError(text, code=code, retry_after=retry_delay(exc))
    if code is not None and code >= 500:
        return TransientError(text, code=code, retry_after=retry_delay(exc))
    return PermanentError(text, code=code)


def _transport_types(*names: str) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module in (_httpx2, _httpx):
        if module is None:
            continue
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


# Timeouts, connect/read/write failures and a peer that hung up mid-response
# (`RemoteProtocolError`, what a connection reset looks like through httpx).
_TRANSIENT_TRANSPORT = _transport_types(
    "TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError"
)
_PERMANENT_TRANSPORT = _transport_types(
    "UnsupportedProtocol", "LocalProtocolError", "InvalidURL", "TooManyRedirects"
)


def classify(exc: BaseException, secrets: Iterable[str] = ()) -> StoreError:
    """Map any exception from the SDK or its transport onto the store's error types.

    Messages are scrubbed of `secrets` and of anything shaped like an API key.
    """
    secrets = tuple(secrets)
    if isinstance(exc, StoreError):
        clean = scrub(str(exc), secrets)
        if clean != str(exc):
            exc.args = (clean,)
        return exc
    if isinstance(exc, genai_errors.APIError):
        return _api_error(exc, secrets)
    if isinstance(exc, genai_errors.UnknownApiResponseError | json.JSONDecodeError):
        # A 200 whose body is not JSON (an HTML page from a proxy or captive
        # portal, a truncated answer) says nothing about the request's effect:
        # transient, and the caller looks before sending again. The raw body
        # (in the SDK's message) is left out: a page is noise, and may echo
        # the request.
        return TransientError(
            f"the answer was not the API's JSON ({type(exc).__name__}); a proxy or captive "
            "portal may be in the way"
        )
    detail = scrub(f"{type(exc).__name__}: {exc}", secrets)
    if _PERMANENT_TRANSPORT and isinstance(exc, _PERMANENT_TRANSPORT):
        return PermanentError(f"request could not be sent ({detail})")
    if _TRANSIENT_TRANSPORT and isinstance(exc, _TRANSIENT_TRANSPORT):
        return TransientError(f"connection problem ({detail})")
    if isinstance(exc, TimeoutError | ConnectionError):
        return TransientError(f"connection problem ({detail})")
    if isinstance(exc, ValueError) and "upload status is not finalized" in str(exc).lower():
        # The SDK's chunk loop gave up on an interrupted upload session.
        return TransientError(f"upload interrupted ({detail})")
    if isinstance(exc, KeyError) and "upload url" in str(exc).lower():
        return TransientError(f"upload was not accepted ({detail})")
    if isinstance(exc, UnicodeError):
        return PermanentError(f"cannot encode the request ({detail})")
    if isinstance(exc, RuntimeError) and "client has been closed" in str(exc):
        return PermanentError(f"the API client was closed ({detail})")
    return PermanentError(f"unexpected error from the Gemini client ({detail})")


# --- rate limiter --------------------------------------------------------------

# Where the limiter starts without a ceiling: the fixed rate objlibd used
# before (120 a minute), which the service has always accepted.
START_PER_MINUTE = 120.0
# The lowest rate a run of 429s can push it to: still one call every 10 s, so
# polls and deletes keep moving while the service recovers.
FLOOR_PER_MINUTE = 6.0
# Slow start, until the first 429: each success adds half a request per
# second, so the rate doubles about every 1.4 s and reaches whatever the
# service allows within seconds, not minutes.
SLOW_START_STEP = 0.5
# After a 429, additive increase: the rate grows by this fraction of the rate
# at the last cut per second of successes (dr/dt = gain x cut rate), so a cut
# of 30 % is won back in about 6 s whatever the absolute rate is.
ADDITIVE_GAIN = 0.05
# Multiplicative decrease on a 429. 0.7 (as TCP CUBIC) rather than 0.5: the
# sawtooth between 0.7 R and R averages about 85 % of the limit R.
DECREASE = 0.7
# Raise the rate only while it is what holds requests back (a request waited
# within this many seconds): a rate far above the demand would take many 429s
# to come down from when the demand finally rises.
BINDING_WINDOW = 1.0


class AdaptiveLimiter:
    """AIMD pacing: find the request rate the service allows instead of guessing it.

    File Search publishes no request rate, so the limiter starts at a known
    safe rate (or at the configured ceiling: the user's own knowledge of the
    quota), raises it while requests succeed (slow start, then additive) and
    cuts it by `DECREASE` on a 429, never above `ceiling`. A 429's RetryInfo
    delay holds every request until it has passed. Requests are spaced
    evenly (no burst): a burst is what trips a rate limit.

    Thread-safe: a caller takes the next send time under the lock when it has
    come, else sleeps (outside the lock) until it and looks again. Nobody
    books a time far ahead, so a rate raised while many wait applies to all of
    them at once (with slots booked in advance, 16 waiters at the starting
    2/s were spaced 0.5 s apart whatever the rate became meanwhile).
    `acquire` returns a ticket; the outcome is reported with it, so that the
    429s of requests admitted before a cut, which arrive together, cut once.
    """

    def __init__(
        self,
        *,
        ceiling_per_minute: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ceiling_per_minute < 0:
            raise ValueError("the ceiling must not be negative (0: none)")
        self.ceiling = ceiling_per_minute / 60.0 if ceiling_per_minute else math.inf
        self.floor = min(FLOOR_PER_MINUTE / 60.0, self.ceiling)
        self.rate = min(START_PER_MINUTE / 60.0, self.ceiling)
        if ceiling_per_minute:
            self.rate = self.ceiling
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()  # the earliest time the next request may go out
        self._cut_rate: float | None = None  # rate after the last cut; None: slow start
        self._generation = 0  # bumped by every cut
        self._binding_at = -math.inf
        self.throttled_count = 0

    def acquire(self) -> int:
        """Block until a request may be sent; return its ticket for `succeeded`/`throttled`."""
        while True:
            with self._lock:
                now = self._clock()
                wait = self._next - now
                if wait <= 0:
                    self._next = now + 1.0 / self.rate
                    return self._generation
                self._binding_at = now
            self._sleep(wait)

    def succeeded(self, ticket: int) -> None:
        """A request admitted with `ticket` was accepted: raise the rate if it is binding."""
        with self._lock:
            if self._clock() - self._binding_at > BINDING_WINDOW:
                return
            if self._cut_rate is None:
                self.rate += SLOW_START_STEP
            else:
                self.rate += ADDITIVE_GAIN * self._cut_rate / self.rate
            self.rate = min(self.rate, self.ceiling)

    def throttled(self, ticket: int, retry_after: float | None) -> None:
        """A request was answered 429: hold for its RetryInfo, and cut (once per generation)."""
        with self._lock:
            now = self._clock()
            self.throttled_count += 1
            if retry_after:
                self._next = max(self._next, now + retry_after)
            if ticket != self._generation:
                return  # admitted before the last cut: that cut already answered it
            self._generation += 1
            self.rate = max(self.floor, self.rate * DECREASE)
            self._cut_rate = self.rate
            log.info("store.rate_cut", per_minute=round(self.rate * 60, 1), retry_after=retry_after)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "per_minute": round(self.rate * 60, 1),
                "ceiling_per_minute": None if math.isinf(self.ceiling) else self.ceiling * 60,
                "throttled": self.throttled_count,
            }


# --- circuit breaker -----------------------------------------------------------

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """Stop calling a remote that keeps failing, then let one trial through.

    Opens after `threshold` consecutive transient failures; while open every
    call fails fast with `CircuitOpen(retry_after=...)`. After `cooldown` one
    trial call is allowed (half-open): success closes the breaker, another
    transient failure re-opens it for a full cooldown. Permanent errors prove
    the remote is answering, so they count as successes here.
    """

    def __init__(
        self, threshold: int, cooldown: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._trial_running = False
        self.opened_at: float | None = None
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        with self._lock:
            return self._current_state()

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _current_state(self) -> str:
        if (
            self._state == OPEN
            and self.opened_at is not None
            and self._clock() - self.opened_at >= self.cooldown
        ):
            return HALF_OPEN
        return self._state

    def before_call(self) -> bool:
        """Raise CircuitOpen unless a call may go out now; True if it is the trial."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return False
            if state == OPEN:
                assert self.opened_at is not None
                wait = max(0.0, self.opened_at + self.cooldown - self._clock())
                raise CircuitOpen(
                    f"remote calls paused after {self._failures} consecutive transient "
                    f"failures (last: {self.last_error}); next attempt in {wait:.0f}s",
                    retry_after=wait,
                    opened_at=self.opened_at,
                )
            # Half-open: exactly one trial at a time.
            if self._trial_running:
                raise CircuitOpen(
                    "remote calls paused: a trial call is in progress", retry_after=1.0
                )
            self._state = HALF_OPEN
            self._trial_running = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_running = False
            self._state = CLOSED
            self.opened_at = None

    def record_failure(self, error: str | None = None) -> None:
        with self._lock:
            self._failures += 1
            self.last_error = error
            trial = self._trial_running
            self._trial_running = False
            if trial or self._state == HALF_OPEN or self._failures >= self.threshold:
                if self._state != OPEN or trial:
                    log.warning(
                        "store.breaker_open",
                        failures=self._failures,
                        cooldown=self.cooldown,
                        error=error,
                    )
                self._state = OPEN
                self.opened_at = self._clock()

    def release_trial(self) -> None:
        """A trial call ended without a verdict (e.g. an unexpected exception)."""
        with self._lock:
            self._trial_running = False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._current_state()
            return {
                "state": state,
                "consecutive_failures": self._failures,
                "opened_at": self.opened_at,
                "retry_in": (
                    max(0.0, self.opened_at + self.cooldown - self._clock())
                    if state == OPEN and self.opened_at is not None
                    else 0.0
                ),
                "last_error": self.last_error,
            }


# --- the wrapper ---------------------------------------------------------------


def backoff(attempt: int, *, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    Full jitter can pick ~0 s, which against a 503 storm is a hot loop; half
    fixed keeps a floor while still spreading concurrent retries apart.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + rng() * ceiling / 2


class Pacer:
    """Runs remote calls through breaker, rate limiter, classification and retries."""

    def __init__(
        self,
        *,
        limiter: AdaptiveLimiter | None = None,
        breaker: CircuitBreaker | None = None,
        attempts: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_retry_after: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        secrets: Iterable[str] = (),
    ) -> None:
        self.limiter = limiter
        self.breaker = breaker
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        # A server asking for more than this is treated as "later", not "wait
        # in this thread": the error goes up with its retry_after instead.
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.rng = rng
        self.secrets = tuple(s for s in secrets if s)

    def add_secret(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets = (*self.secrets, secret)

    def classify(self, exc: BaseException) -> StoreError:
        return classify(exc, self.secrets)

    def _once(self, what: str, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        # The send slot first, then the breaker: a wait for the slot can be
        # long, and the breaker's answer is wanted at the moment of sending.
        ticket = self.limiter.acquire() if self.limiter is not None else 0
        trial = self.breaker.before_call() if self.breaker is not None else False
        error: StoreError | None = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # every failure is classified, none escapes raw
            error = self.classify(exc)
        except BaseException:
            # KeyboardInterrupt and the like: never leave the breaker waiting
            # for a trial that will not report back.
            if trial and self.breaker is not None:
                self.breaker.release_trial()
            raise
        throttled = (
            error is not None and error.code == 429 and not isinstance(error, QuotaExhausted)
        )
        if self.limiter is not None:
            # Any answer but a 429 (a 404 too) shows the service took the request at this rate.
            if error is None or not (throttled or error.transient):
                self.limiter.succeeded(ticket)
            elif throttled:
                self.limiter.throttled(ticket, getattr(error, "retry_after", None))
        if error is None:
            if self.breaker is not None:
                self.breaker.record_success()
            return result
        if self.breaker is not None:
            # A 429 is the service answering "slower", not an outage: the
            # limiter deals with it, and it must not open the breaker.
            if error.transient and not throttled:
                self.breaker.record_failure(f"{what}: {error}")
            else:
                self.breaker.record_success()
        # Raised outside the `except` block: no __context__ pointing at the raw
        # SDK exception (whose text may hold request details).
        raise error

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        advised = getattr(exc, "retry_after", None)
        if advised is not None:
            return float(advised)
        return backoff(state.attempt_number, base=self.base_delay, cap=self.max_delay, rng=self.rng)

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, TransientError) or isinstance(exc, CircuitOpen):
            return False
        advised = exc.retry_after
        return advised is None or advised <= self.max_retry_after

    def _before_sleep(self, what: str) -> Callable[[tenacity.RetryCallState], None]:
        def hook(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "store.retry",
                call=what,
                attempt=state.attempt_number,
                delay=round(state.upcoming_sleep, 3),
                error=str(exc),
            )

        return hook

    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        attempts: int | None = None,
        **kwargs: Any,
    ) -> T:
        """Call `fn(*args, **kwargs)`; retry transient failures; raise StoreError.

        `attempts=1` is for calls that are not safe to repeat blindly.
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts or self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._should_retry),
            sleep=self.sleep,
            before_sleep=self._before_sleep(what),
            reraise=True,
        )
        return retrying(self._once, what, fn, args, kwargs)
