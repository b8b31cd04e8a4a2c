"""Local HTTP emulator of the Gemini File Search REST API, for offline tests.

The real google-genai SDK talks to it unchanged:

    emu = GeminiEmulator().start()
    client = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=emu.url, api_version="v1beta"),
    )

It implements what docs/gemini-file-search.md documents: stores, the
resumable upload protocol (start / 8 MiB chunks / finalize), upload operations,
documents (list / get / delete with force), a term-overlap `generateContent`
with the `fileSearch` tool, the API's validation rules and error shapes, an
injectable clock for indexing delay, fault injection by rule and a request log.
Standard library only; it binds 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import logging
import mimetypes
import random
import re
import socket
import string
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Fault", "GeminiEmulator", "RequestRecord"]

log = logging.getLogger("tests.emulator")

# Documented limits (docs/gemini-file-search.md, "Limits").
MAX_DOCUMENT_BYTES = 100_000_000
MAX_DISPLAY_NAME = 512
MAX_CUSTOM_METADATA = 20
# Types File Search refuses at upload start ("Formats", docs/gemini-file-search.md).
UNSUPPORTED_MIME_TYPES = frozenset({"application/epub+zip"})
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 20
# The SDK reads and sends 8 MiB per chunk request; the real server announces it.
UPLOAD_CHUNK_GRANULARITY = 8 * 1024 * 1024

OPERATION_RESPONSE_TYPE = (
    "type.googleapis.com/google.ai.generativelanguage.v1main.UploadToFileSearchStoreResponse"
)
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
LOCALIZED_MESSAGE_TYPE = "type.googleapis.com/google.rpc.LocalizedMessage"

RATE_LIMIT_MESSAGE = "You exceeded your current quota, please check your plan and billing details."
CAPTIVE_PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in to the network</title></head>"
    b"<body><h1>Welcome</h1><p>Accept the terms to continue.</p></body></html>"
)

UNREGISTERED_CALLER_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."

_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGE = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    408: "Request timed out.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    502: "Bad gateway.",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}

FAULT_KINDS = frozenset(
    {
        "error",
        "retry_info",
        "reset",
        "latency",
        "never_done",
        "finalize_then_503",
        "not_found",
        # Extensions beyond the brief:
        "operation_error",  # the upload's operation ends done + error, document STATE_FAILED
        "bare_ids",  # operation response carries bare ids instead of full resource names
        # A document DELETE answered 404 NOT_FOUND while the document stays: a
        # server (or proxy) that lies. The API documents 404 as "already
        # gone", so a client that trusts it blindly forgets a live document.
        "spurious_404_delete",
        # A document DELETE that happens, but whose answer is a 404: what a
        # client sees when an earlier attempt's 200 was lost and it asks again.
        "delete_then_404",
        # A 200 whose body is an HTML page (a proxy or captive portal). On an
        # upload's finalize the upload happens first (the page replaced the
        # real answer); anywhere else the request never reaches the service.
        "html_200",
        # 429 "Corpus has reached the storage limit", whatever is stored.
        "storage_quota",
        # generateContent answers for structured output (responseSchema /
        # responseJsonSchema): blocked by the safety filter, either on the
        # prompt (promptFeedback.blockReason, no candidates) or on the answer
        # (finishReason SAFETY, no content); text that is not JSON; an answer
        # cut off at the token limit (finishReason MAX_TOKENS, truncated JSON).
        "prompt_blocked",
        "safety",
        "malformed_json",
        "max_tokens",
    }
)
# Kinds that end the request with a fault answer; the first matching one wins.
_TERMINAL_KINDS = frozenset(
    {
        "error",
        "html_200",
        "storage_quota",
        "retry_info",
        "reset",
        "not_found",
        "finalize_then_503",
        "spurious_404_delete",
        "delete_then_404",
    }
)
# Kinds that only apply to a DELETE of a document, whatever `method`/`path` say.
_DELETE_KINDS = frozenset({"spurious_404_delete", "delete_then_404"})
# Kinds that only make sense for an upload (or, for some, an operations GET).
_UPLOAD_FLAG_KINDS = frozenset({"never_done", "operation_error", "bare_ids"})
# Kinds that shape a generateContent answer, whatever `method`/`path` say.
_GENERATE_FLAG_KINDS = frozenset({"prompt_blocked", "safety", "malformed_json", "max_tokens"})


# --------------------------------------------------------------------------- public types


@dataclass
class Fault:
    """A fault-injection rule. All set criteria must match; `times` bounds the hits."""

    method: str | None = None
    path: str | None = None
    phase: str | None = None
    match_display_name: str | None = None
    kind: str = "error"
    status: int = 503
    message: str = ""
    grpc_status: str | None = None
    retry_delay: float = 1.0
    latency: float = 0.0
    times: int | None = 1
    hits: int = 0
    # X-Goog-Upload-Status sent with a fault answer to an upload byte request
    # (phase chunk/finalize). The SDK re-sends a chunk up to 3 times, sleeping
    # 1 s, 2 s, 4 s, when this header is missing; None exercises that loop.
    upload_status: str | None = "final"
    # google.rpc code of an `operation_error` (13 INTERNAL, as the real
    # "Failed to count tokens"; 14 UNAVAILABLE, 3 INVALID_ARGUMENT, ...).
    rpc_code: int = 13

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if self.phase not in (None, "start", "chunk", "finalize"):
            raise ValueError(f"unknown phase {self.phase!r}")
        if self.method is not None:
            self.method = self.method.upper()

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class RequestRecord:
    """One request as the emulator saw it, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    phase: str | None
    status: int | None  # None: connection reset by a "reset" fault, no answer sent
    api_version: str | None  # "v1" / "v1beta" (None for unrouted paths)
    body_size: int = 0
    fault: str | None = None  # kind of the fault that shaped the answer, if any
    time: float = 0.0  # emulator clock when the request arrived


# --------------------------------------------------------------------------- internal state


class _ApiError(Exception):
    def __init__(
        self,
        code: int,
        message: str | None = None,
        status: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or "")
        self.code = code
        self.message = message or _DEFAULT_MESSAGE.get(code, "Error")
        self.status = status or _GRPC_STATUS.get(code, "UNKNOWN")
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


@dataclass
class _Store:
    name: str
    display_name: str
    create_time: float
    update_time: float


@dataclass
class _Doc:
    name: str
    store: str
    display_name: str
    mime_type: str
    content: bytes
    custom_metadata: list[dict[str, Any]]
    create_time: float
    update_time: float
    ready_at: float
    seq: int
    forced_state: str | None = None
    failed: bool = False

    def state(self, now: float) -> str:
        if self.forced_state:
            return self.forced_state
        if now < self.ready_at:
            return "STATE_PENDING"
        return "STATE_FAILED" if self.failed else "STATE_ACTIVE"


@dataclass
class _Op:
    name: str
    store: str
    document_name: str
    display_name: str
    mime_type: str
    size: int
    ready_at: float
    never_done: bool = False
    error: dict[str, Any] | None = None
    bare_ids: bool = False


@dataclass
class _Session:
    upload_id: str
    store: str
    api_version: str
    display_name: str
    mime_type: str
    declared_size: int
    custom_metadata: list[dict[str, Any]]
    received: bytearray = field(default_factory=bytearray)
    terminated: bool = False
    op_name: str | None = None
    never_done: bool = False
    operation_error: str | None = None
    operation_error_code: int = 13
    bare_ids: bool = False


@dataclass
class _Ctx:
    """What a request is about, for fault matching and logging."""

    method: str
    path: str
    phase: str | None = None
    display_name: str | None = None
    kind: str = "other"  # "upload", "operation", "document", "store", "generate", "other"


@dataclass
class _Reply:
    status: int
    body: Any = None  # dict → JSON; bytes → raw; None → empty
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    content_type: str | None = None  # None: by the body's type


# --------------------------------------------------------------------------- helpers


def _rfc3339(ts: float) -> str:
    return (
        _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat(timespec="microseconds").split("+")[0]
        + "Z"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())[:40]


def _duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def _first(d: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    return None


def _normalise_metadata(entries: Any) -> list[dict[str, Any]]:
    """customMetadata from a request (snake or camel case) → camelCase REST entries."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise _ApiError(400, "customMetadata must be a list.")
    if len(entries) > MAX_CUSTOM_METADATA:
        raise _ApiError(
            400,
            f"Too many custom metadata entries: {len(entries)} (at most "
            f"{MAX_CUSTOM_METADATA} are allowed).",
        )
    out: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _ApiError(400, "Each customMetadata entry must be an object.")
        key = entry.get("key")
        if not isinstance(key, str) or not key:
            raise _ApiError(400, "customMetadata.key is required.")
        kinds: list[tuple[str, Any]] = []
        sv = _first(entry, "stringValue", "string_value")
        if sv is not None:
            if not isinstance(sv, str):
                raise _ApiError(400, f"customMetadata {key!r}: stringValue must be a string.")
            kinds.append(("stringValue", sv))
        nv = _first(entry, "numericValue", "numeric_value")
        if nv is not None:
            if isinstance(nv, bool) or not isinstance(nv, int | float):
                raise _ApiError(400, f"customMetadata {key!r}: numericValue must be a number.")
            kinds.append(("numericValue", nv))
        lv = _first(entry, "stringListValue", "string_list_value")
        if lv is not None:
            values = lv.get("values") if isinstance(lv, dict) else None
            if values is None:
                values = []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _ApiError(
                    400, f"customMetadata {key!r}: stringListValue.values must be strings."
                )
            kinds.append(("stringListValue", {"values": list(values)} if values else {}))
        if len(kinds) != 1:
            raise _ApiError(
                400,
                f"customMetadata {key!r} must have exactly one of stringValue, "
                f"stringListValue, numericValue (got {len(kinds)}).",
            )
        out.append({"key": key, kinds[0][0]: kinds[0][1]})
    return out


def _metadata_from_dict(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for key, value in metadata.items():
        if isinstance(value, str):
            entries.append({"key": key, "stringValue": value})
        elif isinstance(value, bool):
            raise ValueError(f"metadata {key!r}: booleans are not a File Search value kind")
        elif isinstance(value, int | float):
            entries.append({"key": key, "numericValue": value})
        elif isinstance(value, list | tuple):
            entries.append({"key": key, "stringListValue": {"values": [str(v) for v in value]}})
        else:
            raise ValueError(f"metadata {key!r}: unsupported value {value!r}")
    return _normalise_metadata(entries)


def _metadata_dict(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        key = entry.get("key")
        if "stringValue" in entry:
            out[key] = entry["stringValue"]
        elif "numericValue" in entry:
            out[key] = entry["numericValue"]
        elif "stringListValue" in entry:
            out[key] = list((entry["stringListValue"] or {}).get("values", []))
        elif "string_value" in entry:
            out[key] = entry["string_value"]
        elif "numeric_value" in entry:
            out[key] = entry["numeric_value"]
        elif "string_list_value" in entry:
            out[key] = list((entry["string_list_value"] or {}).get("values", []))
    return out


def _quota_details(retry_delay: float) -> list[dict[str, Any]]:
    """The details of a rate-limit 429: which quota, and when to retry."""
    return [
        {
            "@type": QUOTA_FAILURE_TYPE,
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/requests",
                    "quotaId": "RequestsPerMinutePerProject",
                }
            ],
        },
        {"@type": RETRY_INFO_TYPE, "retryDelay": _duration(retry_delay)},
    ]


def _storage_message(limit: int) -> str:
    # The real service's words (docs/gemini-file-search.md, "More facts").
    return f"Corpus has reached the storage limit of {limit} bytes."


def _html_page(headers: dict[str, str]) -> _Reply:
    return _Reply(200, CAPTIVE_PORTAL_PAGE, dict(headers), content_type="text/html; charset=utf-8")


def _grpc_code(http_status: int) -> int:
    """HTTP status → google.rpc.Code number (for Operation.error)."""
    return {
        400: 3,
        403: 7,
        404: 5,
        409: 10,
        429: 8,
        499: 1,
        500: 13,
        501: 12,
        503: 14,
        504: 4,
    }.get(http_status, 2)


# --------------------------------------------------------------------------- metadata filter

_FILTER_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lp>\() | (?P<rp>\)) |
        (?P<op><=|>=|!=|=|<|>|:) |
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
        (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])) |
        (?P<word>[A-Za-z_][\w.\-/]*)
    )""",
    re.VERBOSE,
)


def _parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A subset of the AIP-160 filter syntax used by `metadata_filter`.

    key op value, with op one of = != < <= > >= : (list contains), values quoted
    strings, numbers or bare words; combined with AND, OR, NOT and parentheses.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _FILTER_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _ApiError(400, f"Invalid metadata filter near {text[pos : pos + 20]!r}.")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    idx = 0

    def peek() -> tuple[str, str] | None:
        return tokens[idx] if idx < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal idx
        if idx >= len(tokens):
            raise _ApiError(400, "Invalid metadata filter: unexpected end.")
        idx += 1
        return tokens[idx - 1]

    def is_kw(tok: tuple[str, str] | None, kw: str) -> bool:
        return tok is not None and tok[0] == "word" and tok[1].upper() == kw

    def expr() -> Callable[[dict[str, Any]], bool]:
        left = term()
        while is_kw(peek(), "OR"):
            take()
            right = term()
            left = (lambda a, b: lambda md: a(md) or b(md))(left, right)
        return left

    def term() -> Callable[[dict[str, Any]], bool]:
        left = factor()
        while is_kw(peek(), "AND"):
            take()
            right = factor()
            left = (lambda a, b: lambda md: a(md) and b(md))(left, right)
        return left

    def factor() -> Callable[[dict[str, Any]], bool]:
        tok = peek()
        if is_kw(tok, "NOT"):
            take()
            inner = factor()
            return lambda md: not inner(md)
        if tok is not None and tok[0] == "lp":
            take()
            inner = expr()
            if take()[0] != "rp":
                raise _ApiError(400, "Invalid metadata filter: missing ')'.")
            return inner
        key_tok = take()
        if key_tok[0] not in ("word", "str"):
            raise _ApiError(400, f"Invalid metadata filter: expected a key, got {key_tok[1]!r}.")
        key = key_tok[1].strip("\"'") if key_tok[0] == "str" else key_tok[1]
        op_tok = take()
        if op_tok[0] != "op":
            raise _ApiError(400, f"Invalid metadata filter: expected an operator after {key!r}.")
        val_tok = take()
        value: Any
        if val_tok[0] == "str":
            value = bytes(val_tok[1][1:-1], "utf-8").decode("unicode_escape")
        elif val_tok[0] == "num":
            value = float(val_tok[1])
        elif val_tok[0] == "word":
            value = val_tok[1]
        else:
            raise _ApiError(400, f"Invalid metadata filter: bad value {val_tok[1]!r}.")
        return _comparison(key, op_tok[1], value)

    predicate = expr()
    if idx != len(tokens):
        raise _ApiError(400, f"Invalid metadata filter: unexpected {tokens[idx][1]!r}.")
    return predicate


def _comparison(key: str, op: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    def check(md: dict[str, Any]) -> bool:
        if key not in md:
            return op == "!="
        have = md[key]
        if isinstance(have, list):
            contained = str(value) in have
            return (not contained) if op == "!=" else (contained and op in ("=", ":"))
        if isinstance(have, int | float) and not isinstance(value, str):
            a, b = float(have), float(value)
        elif isinstance(have, int | float):
            try:
                a, b = float(have), float(value)
            except ValueError:
                return op == "!="
        else:
            a, b = str(have), str(value) if not isinstance(value, float) else _num_text(value)
        return {
            "=": a == b,
            ":": a == b,
            "!=": a != b,
            "<": a < b,
            "<=": a <= b,
            ">": a > b,
            ">=": a >= b,
        }[op]

    return check


def _num_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


# --------------------------------------------------------------------------- search

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    {
        *("the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "is", "are", "was"),
        *("were", "be", "by", "with", "what", "which", "who", "how", "does", "do", "did"),
        *("this", "that", "from", "at", "as", "it", "its", "about", "tell", "me"),
    }
)
_CHUNK_CHARS = 800


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOPWORDS]


def _chunks(text: str) -> list[str]:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out: list[str] = []
    current = ""
    for para in paragraphs:
        while len(para) > _CHUNK_CHARS:
            cut = para.rfind(" ", 0, _CHUNK_CHARS)
            cut = cut if cut > 0 else _CHUNK_CHARS
            if current:
                out.append(current)
                current = ""
            out.append(para[:cut].strip())
            para = para[cut:].strip()
        if current and len(current) + len(para) + 2 > _CHUNK_CHARS:
            out.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        out.append(current)
    return out


def _token_estimate(text: str) -> int:
    """About 4 characters per token, as Google documents for its models."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _fill_schema(schema: Any, text: str) -> Any:
    """A value of `schema` (JSON Schema, or the API's OpenAPI subset) made from `text`."""
    schema = schema if isinstance(schema, dict) else {}
    kind = str(schema.get("type", "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {key: _fill_schema(sub, text) for key, sub in props.items()}
    if kind == "array":
        count = int(_first(schema, "maxItems", "max_items") or 5)
        item = schema.get("items") or {}
        limit = _first(item, "maxLength", "max_length")
        counts: dict[str, int] = {}
        for term in _terms(text):
            if not term.isdigit():
                counts[term] = counts.get(term, 0) + 1
        top = sorted(counts, key=lambda t: (-counts[t], t))[:count]
        return [t[: int(limit)] if limit else t for t in top]
    if kind in ("integer", "number"):
        return len(text.split())
    if kind == "boolean":
        return bool(text)
    enum = schema.get("enum")
    if enum:
        return enum[min(len(enum) - 1, len(text) // 20_000)]
    limit = _first(schema, "maxLength", "max_length")
    sentence = _first_sentence(text)
    return sentence[: int(limit)] if limit else sentence


def _first_sentence(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    m = re.search(r"[.!?](\s|$)", flat)
    sentence = flat[: m.start() + 1] if m else flat
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + "…"
    return sentence


# --------------------------------------------------------------------------- the emulator


class GeminiEmulator:
    """An in-process Gemini File Search server speaking the REST API the SDK uses."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        clock: Callable[[], float] | None = None,
        indexing_delay: float = 0.0,
        storage_limit: int | None = None,
        storage_factor: float = 1.0,
        listing_delay: float = 0.0,
        search_delay: float = 0.0,
        grounding_extras: bool = True,
        hang_on_leading_space: bool = True,
        seed: int | None = None,
        request_latency: float = 0.0,
        rate_limit: float | None = None,
        generation_latency: float = 0.0,
    ) -> None:
        """
        api_key: the one key accepted on JSON calls.
        clock: seconds since the epoch; default an internal fake clock that only
            moves on advance(). advance() also shifts an injected clock.
        indexing_delay: seconds from finalize until a document is STATE_ACTIVE
            and its operation done (0 = done in the finalize answer).
        storage_limit: project quota in bytes over all stores; stored bytes are
            counted as size × storage_factor (the real service counts ~3×).
        listing_delay / search_delay: extra seconds after indexing before a
            document appears in documents.list / in generateContent results
            (the real service lags 0.25–1.5 s / 7–44 s).
        grounding_extras: also put the document name in retrievedContext.uri and
            .documentName (the real Gemini API documents neither for File Search;
            turn off to see the minimal shape: title, text, fileSearchStore,
            customMetadata; and groundingSupports without confidenceScores, as
            newer models answer).
        hang_on_leading_space: a display name starting with whitespace leaves its
            operation pending forever (observed on the real service).
        request_latency: real seconds every request waits before it is
            handled (the network and the service; 0 = none). Unlike a latency
            fault it needs no rule and shows in no log entry.
        rate_limit: API requests per second (on the emulator clock) above
            which requests are answered 429 RESOURCE_EXHAUSTED with a RetryInfo
            saying when the next one would be accepted, like the real API's
            per-project quotas. A token bucket holding one second's worth, so
            a short burst passes. Upload byte requests (to an upload session
            URL, with no key) are not API calls and are not counted. None = no
            limit.
        generation_latency: real seconds a structured-output generateContent
            (AI enrichment's question) takes beyond `request_latency`: the
            model reading a document and writing its answer, seconds for real.
        """
        self.api_key = api_key
        self._clock = clock
        self._fake_now = time.time()
        self._offset = 0.0
        self.indexing_delay = indexing_delay
        self.storage_limit = storage_limit
        self.storage_factor = storage_factor
        self.listing_delay = listing_delay
        self.search_delay = search_delay
        self.grounding_extras = grounding_extras
        self.hang_on_leading_space = hang_on_leading_space
        self.request_latency = request_latency
        self.rate_limit = rate_limit
        self.generation_latency = generation_latency
        # Requests being handled at once, by kind ("upload", "generate", ...), and
        # the most seen: how many the client really had in flight.
        self._in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()
        self._tokens: float | None = None  # rate-limit bucket; None: full
        self._tokens_at = 0.0
        self._rng = random.Random(seed)

        self._lock = threading.RLock()
        self._stores: dict[str, _Store] = {}
        self._docs: dict[str, _Doc] = {}
        self._ops: dict[str, _Op] = {}
        self._sessions: dict[str, _Session] = {}
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._seq = 0
        self.server_errors: list[str] = []  # tracebacks of handler exceptions (answered 500)

        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GeminiEmulator:
        if self._server is not None:
            return self
        emulator = self

        class Handler(_Handler):
            emu = emulator

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._stopping.clear()
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"gemini-emulator-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes latency faults
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> GeminiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        base = self._clock() if self._clock is not None else self._fake_now
        return base + self._offset

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (works on top of an injected clock too)."""
        with self._lock:
            self._offset += seconds

    # ------------------------------------------------------------------ test-side state API

    def _new_id(self, display_name: str) -> str:
        rand = "".join(self._rng.choice(string.ascii_lowercase + string.digits) for _ in range(12))
        slug = _slug(display_name)
        return f"{slug}-{rand}" if slug else rand

    def create_store(self, display_name: str) -> str:
        with self._lock:
            return self._create_store(display_name).name

    def _create_store(self, display_name: str) -> _Store:
        now = self.now()
        name = f"fileSearchStores/{self._new_id(display_name)}"
        store = _Store(name=name, display_name=display_name, create_time=now, update_time=now)
        self._stores[name] = store
        return store

    def stores(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._store_json(s) for s in self._stores.values()]

    def documents(self, store: str | None = None) -> list[dict[str, Any]]:
        """Every stored document (also pending, failed, not yet listable), REST JSON shape."""
        with self._lock:
            now = self.now()
            return [
                self._doc_json(d, now)
                for d in self._sorted_docs()
                if store is None or d.store == store
            ]

    def document(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._docs.get(name)
            return None if doc is None else self._doc_json(doc, self.now())

    @staticmethod
    def metadata(doc: dict[str, Any]) -> dict[str, Any]:
        """customMetadata list → {key: str | number | list[str]}."""
        return _metadata_dict(doc.get("customMetadata") or doc.get("custom_metadata") or [])

    def content(self, document_name: str) -> bytes:
        with self._lock:
            return self._docs[document_name].content

    def add_document(
        self,
        store: str,
        display_name: str,
        metadata: dict[str, Any],
        content: bytes,
        state: str = "STATE_ACTIVE",
        *,
        mime_type: str | None = None,
    ) -> str:
        """Inject a document behind the client's back; `state` is fixed (never changes)."""
        if state not in ("STATE_ACTIVE", "STATE_PENDING", "STATE_FAILED"):
            raise ValueError(f"bad state {state!r}")
        with self._lock:
            if store not in self._stores:
                raise KeyError(store)
            mime = mime_type or mimetypes.guess_type(display_name)[0] or "text/plain"
            doc = self._store_doc(
                store, display_name, mime, content, _metadata_from_dict(metadata), 0.0
            )
            doc.forced_state = state
            return doc.name

    def remove_document(self, name: str) -> None:
        """Delete a document behind the client's back (KeyError if absent)."""
        with self._lock:
            del self._docs[name]

    def set_state(self, name: str, state: str | None) -> None:
        """Pin a document's state (None: back to clock-driven)."""
        with self._lock:
            self._docs[name].forced_state = state

    def operations(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.now()
            return [self._op_json(op, now) for op in self._ops.values()]

    def storage_used(self) -> int:
        with self._lock:
            return self._storage_used()

    def _storage_used(self) -> int:
        return int(sum(len(d.content) for d in self._docs.values()) * self.storage_factor)

    # ------------------------------------------------------------------ log and faults

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (oldest first)."""
        with self._lock:
            return list(self._log)

    def find_requests(
        self,
        method: str | None = None,
        path: str | None = None,
        phase: str | None = None,
    ) -> list[RequestRecord]:
        """Log entries filtered like a Fault: method, regex searched in path, phase."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path))
            and (phase is None or r.phase == phase)
        ]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
            self.peak_in_flight.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _match_faults(self, ctx: _Ctx) -> tuple[Fault | None, list[Fault], list[Fault]]:
        """(terminal fault, latency faults, flag faults) that apply, hits counted."""
        terminal: Fault | None = None
        latencies: list[Fault] = []
        flags: list[Fault] = []
        with self._lock:
            for f in self._faults:
                if f.exhausted or not self._fault_matches(f, ctx):
                    continue
                if f.kind in _TERMINAL_KINDS:
                    if terminal is not None:
                        continue
                    terminal = f
                elif f.kind == "latency":
                    latencies.append(f)
                else:
                    flags.append(f)
                f.hits += 1
        return terminal, latencies, flags

    @staticmethod
    def _fault_matches(f: Fault, ctx: _Ctx) -> bool:
        if f.method is not None and f.method != ctx.method:
            return False
        if f.path is not None and not re.search(f.path, ctx.path):
            return False
        if f.phase is not None and f.phase != ctx.phase:
            return False
        if f.match_display_name is not None and f.match_display_name != ctx.display_name:
            return False
        if f.kind == "finalize_then_503":
            return ctx.phase == "finalize"
        if f.kind in _DELETE_KINDS:
            return ctx.method == "DELETE" and ctx.kind == "document"
        if f.kind in _GENERATE_FLAG_KINDS:
            return ctx.kind == "generate"
        if f.kind in _UPLOAD_FLAG_KINDS:
            if ctx.kind == "upload":
                return True
            return f.kind in ("never_done", "bare_ids") and ctx.kind == "operation"
        return True

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # ------------------------------------------------------------------ JSON shapes

    def _sorted_docs(self) -> list[_Doc]:
        return sorted(self._docs.values(), key=lambda d: (d.create_time, d.seq))

    def _store_json(self, store: _Store) -> dict[str, Any]:
        now = self.now()
        counts = {"STATE_ACTIVE": 0, "STATE_PENDING": 0, "STATE_FAILED": 0}
        size = 0
        for d in self._docs.values():
            if d.store == store.name:
                counts[d.state(now)] += 1
                size += len(d.content)
        out: dict[str, Any] = {"name": store.name}
        if store.display_name:
            out["displayName"] = store.display_name
        out["createTime"] = _rfc3339(store.create_time)
        out["updateTime"] = _rfc3339(store.update_time)
        for key, state in (
            ("activeDocumentsCount", "STATE_ACTIVE"),
            ("pendingDocumentsCount", "STATE_PENDING"),
            ("failedDocumentsCount", "STATE_FAILED"),
        ):
            if counts[state]:
                out[key] = str(counts[state])
        if size:
            out["sizeBytes"] = str(size)
        return out

    def _doc_json(self, doc: _Doc, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"name": doc.name}
        if doc.display_name:
            out["displayName"] = doc.display_name
        if doc.custom_metadata:
            out["customMetadata"] = json.loads(json.dumps(doc.custom_metadata))
        out["updateTime"] = _rfc3339(doc.update_time)
        out["createTime"] = _rfc3339(doc.create_time)
        out["state"] = doc.state(now)
        if doc.content:
            out["sizeBytes"] = str(len(doc.content))
        if doc.mime_type:
            out["mimeType"] = doc.mime_type
        return out

    def _op_json(self, op: _Op, now: float, *, bare: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name}
        if op.never_done or now < op.ready_at:
            return out
        out["done"] = True
        if op.error is not None:
            out["error"] = dict(op.error)
            return out
        bare = bare or op.bare_ids
        response: dict[str, Any] = {
            "@type": OPERATION_RESPONSE_TYPE,
            "parent": op.store.rsplit("/", 1)[-1] if bare else op.store,
            "documentName": op.document_name.rsplit("/", 1)[-1] if bare else op.document_name,
        }
        if op.mime_type:
            response["mimeType"] = op.mime_type
        if op.size:
            response["sizeBytes"] = str(op.size)
        out["response"] = response
        return out

    def _store_doc(
        self,
        store: str,
        display_name: str,
        mime_type: str,
        content: bytes,
        custom_metadata: list[dict[str, Any]],
        delay: float,
    ) -> _Doc:
        now = self.now()
        self._seq += 1
        name = f"{store}/documents/{self._new_id(display_name)}"
        doc = _Doc(
            name=name,
            store=store,
            display_name=display_name,
            mime_type=mime_type,
            content=bytes(content),
            custom_metadata=custom_metadata,
            create_time=now,
            update_time=now,
            ready_at=now + delay,
            seq=self._seq,
        )
        self._docs[name] = doc
        return doc

    # ------------------------------------------------------------------ request handling

    def _handle(self, h: _Handler) -> None:
        """Entry point from the HTTP handler thread: never raises."""
        split = urlsplit(h.path)
        path = split.path
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        arrived = self.now()
        record = RequestRecord(
            method=h.command,
            path=path,
            query=query,
            headers=headers,
            json=None,
            phase=None,
            status=None,
            api_version=None,
        )
        record.time = arrived
        try:
            body = h.read_body()
            record.body_size = len(body)
            reply = self._dispatch(h.command, path, query, headers, body, record)
        except _ApiError as e:
            reply = _Reply(e.code, e.body(), dict(e.headers))
        except Exception:  # the server must survive anything: answer 500, keep serving
            tb = traceback.format_exc()
            log.error("emulator handler failed:\n%s", tb)
            with self._lock:
                self.server_errors.append(tb)
            reply = _Reply(500, _ApiError(500).body())
        record.status = None if reply.reset else reply.status
        self._record(record)  # before answering: a test sees the record once the SDK returns
        if reply.reset:
            h.close_connection = True
            return
        h.send(reply)

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        record: RequestRecord,
    ) -> _Reply:
        ctx = _Ctx(method=method, path=path)
        m = re.fullmatch(r"/(upload/)?(v1|v1beta)/(.*)", path)
        if not m:
            raise _ApiError(404, f"Unknown path {path}.")
        is_upload, version, rest = bool(m.group(1)), m.group(2), m.group(3)
        record.api_version = version

        session: _Session | None = None
        payload: Any = None
        if is_upload and "upload_id" in query:
            command = headers.get("x-goog-upload-command", "")
            ctx.kind = "upload"
            ctx.phase = "finalize" if "finalize" in command else "chunk"
            with self._lock:
                session = self._sessions.get(query["upload_id"])
            if session is not None:
                ctx.display_name = session.display_name
        else:
            if body:
                try:
                    payload = json.loads(body)
                except ValueError as e:
                    raise _ApiError(400, f"Invalid JSON payload received. {e}") from None
            record.json = payload
            if is_upload:
                ctx.kind = "upload"
                ctx.phase = "start"
                if isinstance(payload, dict):
                    ctx.display_name = payload.get("displayName", payload.get("display_name"))
            else:
                self._describe(ctx, rest)
        record.phase = ctx.phase
        with self._counted(ctx.kind):
            self._sleep(self.request_latency)
            if not (is_upload and "upload_id" in query):
                self._take_rate_token(record)

            terminal, latencies, flags = self._match_faults(ctx)
            for f in latencies:
                self._sleep(f.latency)
            if terminal is not None:
                record.fault = terminal.kind
                reply = self._fault_reply(terminal, ctx, session, headers, body, flags)
                if reply is not None:
                    return reply
            elif flags:
                record.fault = ",".join(f.kind for f in flags)

            if is_upload and "upload_id" in query:
                return self._upload_bytes(query["upload_id"], session, headers, body, ctx, flags)

            self._check_key(headers, query)
            if is_upload:
                return self._upload_start(version, rest, headers, payload, flags)
            return self._route(method, rest, query, payload, flags)

    @contextlib.contextmanager
    def _counted(self, kind: str) -> Iterator[None]:
        """Count requests of `kind` being handled at once (`peak_in_flight`)."""
        with self._lock:
            self._in_flight[kind] += 1
            self.peak_in_flight[kind] = max(self.peak_in_flight[kind], self._in_flight[kind])
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[kind] -= 1

    def _take_rate_token(self, record: RequestRecord) -> None:
        """Spend one request of `rate_limit`, or raise the real API's 429."""
        if self.rate_limit is None:
            return
        with self._lock:
            now = self.now()
            capacity = max(1.0, self.rate_limit)
            if self._tokens is None:
                self._tokens = capacity
            self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * self.rate_limit)
            self._tokens_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            wait = (1.0 - self._tokens) / self.rate_limit
        record.fault = "rate_limit"
        raise _ApiError(429, RATE_LIMIT_MESSAGE, "RESOURCE_EXHAUSTED", _quota_details(wait))

    def _describe(self, ctx: _Ctx, rest: str) -> None:
        """Classify a JSON request and find the display name it concerns."""
        with self._lock:
            if "/operations/" in rest:
                ctx.kind = "operation"
                op = self._ops.get(rest)
                ctx.display_name = op.display_name if op else None
            elif "/documents/" in rest:
                ctx.kind = "document"
                doc = self._docs.get(rest)
                ctx.display_name = doc.display_name if doc else None
            elif rest.startswith("fileSearchStores"):
                ctx.kind = "store"
            elif ":generateContent" in rest:
                ctx.kind = "generate"
            elif ":countTokens" in rest:
                ctx.kind = "count"

    def _check_key(self, headers: dict[str, str], query: dict[str, str]) -> None:
        key = headers.get("x-goog-api-key") or query.get("key")
        if not key:
            raise _ApiError(403, UNREGISTERED_CALLER_MESSAGE, "PERMISSION_DENIED")
        if key != self.api_key:
            raise _ApiError(
                400,
                INVALID_KEY_MESSAGE,
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": ERROR_INFO_TYPE,
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": LOCALIZED_MESSAGE_TYPE,
                        "locale": "en-US",
                        "message": INVALID_KEY_MESSAGE,
                    },
                ],
            )

    # ------------------------------------------------------------------ faults

    def _fault_reply(
        self,
        f: Fault,
        ctx: _Ctx,
        session: _Session | None,
        headers: dict[str, str],
        body: bytes,
        flags: list[Fault],
    ) -> _Reply | None:
        byte_phase = ctx.phase in ("chunk", "finalize")
        upload_headers = (
            {"X-Goog-Upload-Status": f.upload_status} if byte_phase and f.upload_status else {}
        )
        if f.kind == "reset":
            return _Reply(0, reset=True)
        if f.kind in ("finalize_then_503", "html_200") and ctx.phase == "finalize":
            if session is None:
                return None  # unknown session: answer as the real server would
            reply = self._upload_bytes(session.upload_id, session, headers, body, ctx, flags)
            if reply.status != 200:
                return reply
            if f.kind == "html_200":
                return _html_page(upload_headers)
            err = _ApiError(f.status, f.message or None, f.grpc_status)
            return _Reply(err.code, err.body(), upload_headers)
        if f.kind == "html_200":
            return _html_page(upload_headers)
        if f.kind == "storage_quota":
            limit = self.storage_limit or 1_073_741_824  # the free tier's 1 GB
            err = _ApiError(429, _storage_message(limit), "RESOURCE_EXHAUSTED")
            return _Reply(429, err.body(), upload_headers)
        if byte_phase and session is not None and f.upload_status == "final":
            with self._lock:
                session.terminated = True
        if f.kind == "delete_then_404":
            with self._lock:
                self._docs.pop(ctx.path.split("/", 2)[-1], None)  # /v1beta/<name>
        if f.kind in ("not_found", "spurious_404_delete", "delete_then_404"):
            err = _ApiError(404, f.message or None, f.grpc_status or "NOT_FOUND")
            return _Reply(404, err.body(), upload_headers)
        if f.kind == "retry_info":
            status = f.status if f.status != 503 else 429
            err = _ApiError(
                status,
                f.message or RATE_LIMIT_MESSAGE,
                f.grpc_status,
                _quota_details(f.retry_delay),
            )
            return _Reply(status, err.body(), upload_headers)
        err = _ApiError(f.status, f.message or None, f.grpc_status)
        return _Reply(f.status, err.body(), upload_headers)

    # ------------------------------------------------------------------ uploads

    def _upload_start(
        self,
        version: str,
        rest: str,
        headers: dict[str, str],
        payload: Any,
        flags: list[Fault],
    ) -> _Reply:
        m = re.fullmatch(r"(fileSearchStores/[^/:]+):uploadToFileSearchStore", rest)
        if not m:
            raise _ApiError(404, f"Unknown upload path {rest}.")
        if headers.get("x-goog-upload-protocol", "").lower() != "resumable":
            raise _ApiError(400, "Only X-Goog-Upload-Protocol: resumable is supported.")
        if headers.get("x-goog-upload-command", "").strip().lower() != "start":
            raise _ApiError(400, "Expected X-Goog-Upload-Command: start.")
        store = m.group(1)
        payload = payload if isinstance(payload, dict) else {}
        display_name = payload.get("displayName", payload.get("display_name")) or ""
        if not isinstance(display_name, str):
            raise _ApiError(400, "displayName must be a string.")
        if len(display_name) > MAX_DISPLAY_NAME:
            raise _ApiError(
                400,
                f"Display name is too long: {len(display_name)} characters "
                f"(at most {MAX_DISPLAY_NAME}).",
            )
        metadata = _normalise_metadata(
            payload.get("customMetadata", payload.get("custom_metadata"))
        )
        try:
            size = int(headers.get("x-goog-upload-header-content-length", ""))
        except ValueError:
            raise _ApiError(400, "X-Goog-Upload-Header-Content-Length is required.") from None
        if size < 0:
            raise _ApiError(400, "Negative content length.")
        if size > MAX_DOCUMENT_BYTES:
            raise _ApiError(
                400,
                f"File size {size} bytes exceeds the maximum of {MAX_DOCUMENT_BYTES} bytes "
                "(100 MB) per document.",
            )
        mime = (
            payload.get("mimeType")
            or payload.get("mime_type")
            or headers.get("x-goog-upload-header-content-type")
            or "application/octet-stream"
        )
        if mime.split(";", 1)[0].strip().lower() in UNSUPPORTED_MIME_TYPES:
            raise _ApiError(400, f"Unsupported MIME type: {mime}")
        with self._lock:
            if store not in self._stores:
                raise _ApiError(404, f"File search store {store} not found.")
            self._check_quota(size)
            upload_id = uuid.uuid4().hex
            session = _Session(
                upload_id=upload_id,
                store=store,
                api_version=version,
                display_name=display_name,
                mime_type=mime,
                declared_size=size,
                custom_metadata=metadata,
            )
            self._apply_flags(session, flags)
            self._sessions[upload_id] = session
        url = (
            f"{self.url}/upload/{version}/{store}:uploadToFileSearchStore"
            f"?upload_id={upload_id}&upload_protocol=resumable"
        )
        return _Reply(
            200,
            None,
            {
                "X-Goog-Upload-URL": url,
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-Chunk-Granularity": str(UPLOAD_CHUNK_GRANULARITY),
            },
        )

    @staticmethod
    def _apply_flags(session: _Session, flags: list[Fault]) -> None:
        for f in flags:
            if f.kind == "never_done":
                session.never_done = True
            elif f.kind == "bare_ids":
                session.bare_ids = True
            elif f.kind == "operation_error":
                session.operation_error = f.message or "Failed to count tokens."
                session.operation_error_code = f.rpc_code

    def _check_quota(self, incoming: int) -> None:
        if self.storage_limit is None:
            return
        needed = self._storage_used() + int(incoming * self.storage_factor)
        if needed > self.storage_limit:
            raise _ApiError(429, _storage_message(self.storage_limit), "RESOURCE_EXHAUSTED")

    def _upload_bytes(
        self,
        upload_id: str,
        session: _Session | None,
        headers: dict[str, str],
        body: bytes,
        ctx: _Ctx,
        flags: list[Fault],
    ) -> _Reply:
        final = {"X-Goog-Upload-Status": "final"}
        if session is None:
            raise _ApiError(404, "No upload session with this upload_id.", headers=final)
        with self._lock:
            if session.op_name is not None:
                # A finalize re-sent after the upload completed: same answer again.
                op = self._ops[session.op_name]
                return _Reply(200, self._op_json(op, self.now()), final)
            if session.terminated:
                raise _ApiError(400, "Upload has already been terminated.", headers=final)
            self._apply_flags(session, flags)
            try:
                offset = int(headers.get("x-goog-upload-offset", ""))
            except ValueError:
                session.terminated = True
                raise _ApiError(400, "X-Goog-Upload-Offset is required.", headers=final) from None
            if offset != len(session.received):
                session.terminated = True
                raise _ApiError(
                    400,
                    f"Upload offset {offset} does not match the {len(session.received)} "
                    "bytes received.",
                    headers=final,
                )
            session.received += body
            if ctx.phase != "finalize":
                if len(session.received) > session.declared_size:
                    session.terminated = True
                    raise _ApiError(400, "More bytes than declared.", headers=final)
                return _Reply(
                    200,
                    None,
                    {
                        "X-Goog-Upload-Status": "active",
                        "X-Goog-Upload-Size-Received": str(len(session.received)),
                    },
                )
            if len(session.received) != session.declared_size:
                session.terminated = True
                raise _ApiError(
                    400,
                    f"Received {len(session.received)} bytes, but "
                    f"X-Goog-Upload-Header-Content-Length said {session.declared_size}.",
                    headers=final,
                )
            if session.store not in self._stores:
                session.terminated = True
                raise _ApiError(404, f"File search store {session.store} not found.", headers=final)
            try:
                self._check_quota(len(session.received))
            except _ApiError as e:
                session.terminated = True
                e.headers.update(final)
                raise
            op = self._finish_upload(session)
            return _Reply(200, self._op_json(op, self.now()), final)

    def _finish_upload(self, session: _Session) -> _Op:
        delay = self.indexing_delay
        doc = self._store_doc(
            session.store,
            session.display_name,
            session.mime_type,
            bytes(session.received),
            session.custom_metadata,
            delay,
        )
        never_done = session.never_done or (
            self.hang_on_leading_space and session.display_name[:1].isspace()
        )
        if never_done and not session.never_done:
            doc.forced_state = "STATE_PENDING"  # the import hangs entirely
        error = None
        if session.operation_error is not None:
            doc.failed = True
            error = {"code": session.operation_error_code, "message": session.operation_error}
        op_name = f"{session.store}/upload/operations/{doc.name.rsplit('/', 1)[-1]}"
        op = _Op(
            name=op_name,
            store=session.store,
            document_name=doc.name,
            display_name=session.display_name,
            mime_type=session.mime_type,
            size=len(doc.content),
            ready_at=doc.ready_at,
            never_done=never_done,
            error=error,
            bare_ids=session.bare_ids,
        )
        self._ops[op_name] = op
        session.op_name = op_name
        session.received = bytearray()  # the document holds the bytes now
        return op

    # ------------------------------------------------------------------ JSON routes

    def _route(
        self,
        method: str,
        rest: str,
        query: dict[str, str],
        payload: Any,
        flags: list[Fault],
    ) -> _Reply:
        if rest == "fileSearchStores":
            if method == "POST":
                return self._create_store_call(payload)
            if method == "GET":
                return self._list_stores(query)
        m = re.fullmatch(r"(fileSearchStores/[^/:]+)", rest)
        if m:
            if method == "GET":
                return self._get_store(m.group(1))
            if method == "DELETE":
                return self._delete_store(m.group(1), query)
        m = re.fullmatch(r"(fileSearchStores/[^/:]+)/documents", rest)
        if m and method == "GET":
            return self._list_documents(m.group(1), query)
        m = re.fullmatch(r"fileSearchStores/[^/:]+/documents/[^/:]+", rest)
        if m:
            if method == "GET":
                return self._get_document(rest)
            if method == "DELETE":
                return self._delete_document(rest, query)
        m = re.fullmatch(r"fileSearchStores/[^/:]+/(upload/)?operations/[^/:]+", rest)
        if m and method == "GET":
            return self._get_operation(rest, flags)
        m = re.fullmatch(r"models/([^/:]+):generateContent", rest)
        if m and method == "POST":
            return self._generate(m.group(1), payload, flags)
        m = re.fullmatch(r"models/([^/:]+):countTokens", rest)
        if m and method == "POST":
            return self._count_tokens(payload)
        raise _ApiError(404, f"Method not found: {method} {rest}.")

    def _create_store_call(self, payload: Any) -> _Reply:
        payload = payload if isinstance(payload, dict) else {}
        display_name = payload.get("displayName", payload.get("display_name")) or ""
        if not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME:
            raise _ApiError(400, "Invalid display name.")
        with self._lock:
            return _Reply(200, self._store_json(self._create_store(display_name)))

    def _get_store(self, name: str) -> _Reply:
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                raise _ApiError(404, f"File search store {name} not found.")
            return _Reply(200, self._store_json(store))

    def _page(self, query: dict[str, str]) -> tuple[int, int]:
        """(page size, sequence number after which the page starts)."""
        try:
            size = int(query.get("pageSize") or DEFAULT_PAGE_SIZE)
        except ValueError:
            raise _ApiError(400, "Invalid pageSize.") from None
        if size < 0:
            raise _ApiError(400, "pageSize must not be negative.")
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        token = query.get("pageToken") or ""
        after = 0
        if token:
            try:
                after = int(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[1])
            except (ValueError, IndexError):
                raise _ApiError(400, "Invalid page token.") from None
        return size, after

    @staticmethod
    def _token(kind: str, seq: int) -> str:
        return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode()

    def _list_stores(self, query: dict[str, str]) -> _Reply:
        size, after = self._page(query)
        with self._lock:
            stores = list(self._stores.values())
            indexed = list(enumerate(stores, start=1))[after:]
            page = indexed[:size]
            out: dict[str, Any] = {}
            if page:
                out["fileSearchStores"] = [self._store_json(s) for _, s in page]
            if len(indexed) > size:
                out["nextPageToken"] = self._token("s", page[-1][0])
            return _Reply(200, out)

    def _delete_store(self, name: str, query: dict[str, str]) -> _Reply:
        with self._lock:
            if name not in self._stores:
                raise _ApiError(404, f"File search store {name} not found.")
            docs = [d for d in self._docs.values() if d.store == name]
            if docs and not _truthy(query.get("force")):
                raise _ApiError(
                    400,
                    f"File search store {name} has {len(docs)} documents; "
                    "set force=true to delete it with its documents.",
                    "FAILED_PRECONDITION",
                )
            for d in docs:
                del self._docs[d.name]
            del self._stores[name]
            return _Reply(200, {})

    def _list_documents(self, store: str, query: dict[str, str]) -> _Reply:
        size, after = self._page(query)
        with self._lock:
            if store not in self._stores:
                raise _ApiError(404, f"File search store {store} not found.")
            now = self.now()
            visible = [
                d
                for d in self._sorted_docs()
                if d.store == store
                and d.seq > after
                and (d.forced_state is not None or now >= d.ready_at + self.listing_delay)
            ]
            page = visible[:size]
            out: dict[str, Any] = {}
            if page:
                out["documents"] = [self._doc_json(d, now) for d in page]
            if len(visible) > size:
                out["nextPageToken"] = self._token("d", page[-1].seq)
            return _Reply(200, out)

    def _get_document(self, name: str) -> _Reply:
        with self._lock:
            doc = self._docs.get(name)
            if doc is None:
                raise _ApiError(404, f"Document {name} not found.")
            return _Reply(200, self._doc_json(doc, self.now()))

    def _delete_document(self, name: str, query: dict[str, str]) -> _Reply:
        with self._lock:
            doc = self._docs.get(name)
            if doc is None:
                raise _ApiError(404, f"Document {name} not found.")
            if doc.content and not _truthy(query.get("force")):
                raise _ApiError(
                    400,
                    f"Document {name} has chunks; set force=true to delete it.",
                    "FAILED_PRECONDITION",
                )
            del self._docs[name]
            return _Reply(200, {})

    def _get_operation(self, name: str, flags: list[Fault]) -> _Reply:
        with self._lock:
            op = self._ops.get(name)
            if op is None or op.store not in self._stores:  # gone with its store
                raise _ApiError(404, f"Operation {name} not found.")
            if any(f.kind == "never_done" for f in flags):
                return _Reply(200, {"name": op.name})
            bare = any(f.kind == "bare_ids" for f in flags)
            return _Reply(200, self._op_json(op, self.now(), bare=bare))

    # ------------------------------------------------------------------ generateContent

    def _generate(self, model: str, payload: Any, flags: list[Fault]) -> _Reply:
        payload = payload if isinstance(payload, dict) else {}
        question = self._question(payload.get("contents"))
        config = _first(payload, "generationConfig", "generation_config") or {}
        schema = _first(
            config,
            "responseJsonSchema",
            "responseSchema",
            "response_json_schema",
            "response_schema",
        )
        if schema is not None:
            mime = _first(config, "responseMimeType", "response_mime_type")
            if mime != "application/json":
                raise _ApiError(
                    400,
                    "* GenerateContentRequest.generation_config.response_mime_type: "
                    "response_schema requires response_mime_type to be application/json",
                )
            self._sleep(self.generation_latency)
            return self._structured(model, question, schema, flags)
        stores, top_k, predicate = self._file_search_tool(payload.get("tools"))
        hits: list[tuple[_Doc, str]] = []
        if stores is not None:
            with self._lock:
                for store in stores:
                    if store not in self._stores:
                        raise _ApiError(404, f"File search store {store} not found.")
                hits = self._search(question, stores, top_k, predicate)
        if hits:
            sentences = [f"{doc.display_name}: {_first_sentence(text)}" for doc, text in hits]
        else:
            sentences = ["I could not find anything about that in the provided documents."]
        answer = ""
        supports: list[dict[str, Any]] = []
        for i, sentence in enumerate(sentences):
            if answer:
                answer += "\n"
            start = len(answer.encode("utf-8"))
            answer += sentence
            if hits:
                segment: dict[str, Any] = {
                    "endIndex": len(answer.encode("utf-8")),
                    "text": sentence,
                }
                if start:
                    segment["startIndex"] = start
                support: dict[str, Any] = {"segment": segment, "groundingChunkIndices": [i]}
                if self.grounding_extras:
                    support["confidenceScores"] = [0.9]
                supports.append(support)
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": answer}], "role": "model"},
            "finishReason": "STOP",
        }
        if hits:
            candidate["groundingMetadata"] = {
                "groundingChunks": [
                    {"retrievedContext": self._retrieved_context(doc, text)} for doc, text in hits
                ],
                "groundingSupports": supports,
            }
        prompt_tokens = max(1, len(question.split()))
        answer_tokens = max(1, len(answer.split()))
        return _Reply(
            200,
            {
                "candidates": [candidate],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": answer_tokens,
                    "totalTokenCount": prompt_tokens + answer_tokens,
                },
                "modelVersion": model,
                "responseId": uuid.uuid4().hex[:22],
            },
        )

    def _structured(self, model: str, text: str, schema: Any, flags: list[Fault]) -> _Reply:
        """A JSON answer that fits `schema`, derived only from `text` (so: deterministic).

        Arrays hold the text's most frequent non-stopword terms, a string with
        an enum the first value for short texts, the second for longer ones and
        so on, any other string the text's first sentence.
        """
        kinds = {f.kind for f in flags}
        prompt_tokens = _token_estimate(text)
        usage: dict[str, Any] = {"promptTokenCount": prompt_tokens}
        base = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
        if "prompt_blocked" in kinds:
            usage["totalTokenCount"] = prompt_tokens
            body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}
            return _Reply(200, body | base)
        if "safety" in kinds:
            usage["totalTokenCount"] = prompt_tokens
            candidate = {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ],
            }
            return _Reply(200, {"candidates": [candidate], "usageMetadata": usage} | base)
        answer = json.dumps(_fill_schema(schema, text), ensure_ascii=False)
        finish = "STOP"
        if "malformed_json" in kinds:
            answer = "Here is the analysis you asked for: " + answer[: len(answer) // 2]
        elif "max_tokens" in kinds:
            answer, finish = answer[: len(answer) // 2], "MAX_TOKENS"
        output_tokens = _token_estimate(answer)
        usage["candidatesTokenCount"] = output_tokens
        usage["totalTokenCount"] = prompt_tokens + output_tokens
        candidate = {
            "content": {"parts": [{"text": answer}], "role": "model"},
            "finishReason": finish,
            "index": 0,
        }
        return _Reply(200, {"candidates": [candidate], "usageMetadata": usage} | base)

    def _count_tokens(self, payload: Any) -> _Reply:
        """`{"totalTokens": N}` for the contents (or a wrapped generateContentRequest)."""
        payload = payload if isinstance(payload, dict) else {}
        inner = _first(payload, "generateContentRequest", "generate_content_request")
        contents = (inner or payload).get("contents") or []
        if isinstance(contents, dict):
            contents = [contents]
        total = 0
        for content in contents:
            for part in (content or {}).get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += _token_estimate(part["text"])
        return _Reply(200, {"totalTokens": total})

    @staticmethod
    def _question(contents: Any) -> str:
        if isinstance(contents, dict):
            contents = [contents]
        if not isinstance(contents, list):
            return ""
        for content in reversed(contents):
            if not isinstance(content, dict) or content.get("role", "user") != "user":
                continue
            parts = content.get("parts") or []
            return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
        return ""

    @staticmethod
    def _file_search_tool(
        tools: Any,
    ) -> tuple[list[str] | None, int, Callable[[dict[str, Any]], bool] | None]:
        for tool in tools or []:
            if not isinstance(tool, dict):
                continue
            fs = _first(tool, "fileSearch", "file_search")
            if not isinstance(fs, dict):
                continue
            names = _first(fs, "fileSearchStoreNames", "file_search_store_names") or []
            if not isinstance(names, list) or not names:
                raise _ApiError(400, "fileSearch.fileSearchStoreNames must not be empty.")
            top_k = _first(fs, "topK", "top_k") or 5
            flt = _first(fs, "metadataFilter", "metadata_filter")
            predicate = _parse_filter(flt) if flt else None
            return [str(n) for n in names], int(top_k), predicate
        return None, 0, None

    def _search(
        self,
        question: str,
        stores: list[str],
        top_k: int,
        predicate: Callable[[dict[str, Any]], bool] | None,
    ) -> list[tuple[_Doc, str]]:
        wanted = set(_terms(question))
        if not wanted:
            return []
        now = self.now()
        scored: list[tuple[int, int, int, _Doc, str]] = []
        for doc in self._sorted_docs():
            if doc.store not in stores or doc.state(now) != "STATE_ACTIVE":
                continue
            if doc.forced_state is None and now < doc.ready_at + self.search_delay:
                continue
            if predicate is not None and not predicate(_metadata_dict(doc.custom_metadata)):
                continue
            text = doc.content.decode("utf-8", errors="ignore")
            for chunk in _chunks(text):
                words = _terms(chunk)
                distinct = len(wanted.intersection(words))
                if distinct:
                    tf = sum(1 for w in words if w in wanted)
                    scored.append((distinct, tf, -doc.seq, doc, chunk))
        scored.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
        return [(doc, chunk) for _, _, _, doc, chunk in scored[:top_k]]

    def _retrieved_context(self, doc: _Doc, text: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        if self.grounding_extras:
            ctx["uri"] = doc.name
        ctx["title"] = doc.display_name
        ctx["text"] = text
        ctx["fileSearchStore"] = doc.store
        if doc.custom_metadata:
            ctx["customMetadata"] = json.loads(json.dumps(doc.custom_metadata))
        if self.grounding_extras:
            ctx["documentName"] = doc.name
        return ctx


# --------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    emu: GeminiEmulator
    protocol_version = "HTTP/1.1"  # keep-alive, like the real front end
    server_version = "ESF"
    sys_version = ""
    timeout = 60  # seconds a connection may sit idle or half-sent before the thread gives up

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle plus
        # delayed ACK adds ~45 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.emu._lock:
            self.emu._connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.emu._lock:
            self.emu._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, reply: _Reply) -> None:
        if isinstance(reply.body, bytes):
            data = reply.body
            ctype = reply.content_type or "application/octet-stream"
        elif reply.body is None:
            data = b""
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(reply.body, ensure_ascii=False).encode("utf-8")
            ctype = "application/json; charset=UTF-8"
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client went away (e.g. it timed out during a latency fault)
            self.close_connection = True

    def _any(self) -> None:
        try:
            self.emu._handle(self)
        except OSError:
            self.close_connection = True

    # BaseHTTPRequestHandler dispatches on these names.
    do_GET = _any
    do_POST = _any
    do_DELETE = _any
    do_PATCH = _any
    do_PUT = _any
