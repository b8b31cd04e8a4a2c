"""Enrichment: ordered path rules → custom metadata, display name, identity header.

The library's naming conventions (docs/library-facts.md) are expressed as data —
regexes with named groups and field templates — not as code branches, so
another library can bring its own rules in the config and the defaults here
are just the first such rule set.

Rule semantics: each rule's `pattern` is `re.search`ed against the NFC,
POSIX relative path; on a match every `fields` entry is a template whose
`{group}` placeholders take the named groups (`{{`/`}}` are literal braces).
A field whose placeholder group did not participate, or whose value is empty,
sets nothing. Later rules override earlier rules' keys; `stop = true` on a
matching rule ends the list. A placeholder may pipe through filters:

    {g|spaces}  `_` → space (the library writes `_` for `:` `?` `'`)
    {g|dashes}  `-` → space (MOTM topics are Dash-Separated-Words)
    {g|pad2}    zero-pad a number to two digits (dates)
    {g|text}    keep as a string (ids, class numbers)

A field that is exactly one unfiltered placeholder and holds an integer
becomes a number (Gemini's numeric_value), so year/week/episode compare as
numbers in metadata filters. Identity keys are always present and never
overridden by a rule; a `title` is always set (file stem as a fallback).

`rules` is the complete list (`None` means DEFAULT_RULES). Rules from the
config extend the defaults (`with_defaults`): they run after them, so they
override a built-in's keys and add their own, and a library that follows
these conventions only partly loses nothing by adding one rule. Gemini takes
at most 20 entries: past that, rule keys are dropped last-first-set, identity
kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from objlib_daemon.config import MetadataRule
from objlib_daemon.library.mime import is_text

ENRICHER_VERSION = 1  # bump when the code's output changes for the same rules

IDENTITY_KEYS = ("library_id", "path", "sha256")
MAX_ENTRIES = 20  # Gemini's limit per document, identity keys included
MAX_VALUE_CHARS = 256  # rule-produced strings; identity values are never cut
MAX_DISPLAY_NAME = 512  # Gemini's limit

# Patterns end with `\.\w{1,8}$` (the extension) and start a file name at
# `(?:^|/)`, so they match the base name wherever the folder is.
DEFAULT_RULES: tuple[MetadataRule, ...] = (
    # category from the first folder; anything else is "other"
    MetadataRule(r"^", {"category": "other"}),
    MetadataRule(r"^Courses/", {"category": "course"}),
    MetadataRule(r"^Books/", {"category": "book"}),
    MetadataRule(r"^MOTM/", {"category": "motm"}),
    MetadataRule(r"^(?:Podcasts|Peikoff Podcast)/", {"category": "podcast"}),
    # every file: title = file stem with `_` → space
    MetadataRule(r"(?:^|/)(?P<stem>[^/]+?)(?:\.\w{1,8})?$", {"title": "{stem|spaces}"}),
    # Courses/<Course>/…
    MetadataRule(r"^Courses/(?P<course>[^/]+)/", {"course": "{course}"}),
    # …/Year<N>/Q<N>/…
    MetadataRule(
        r"(?:^|/)Year ?(?P<year>\d+)/Q(?P<quarter>\d+)/",
        {"year": "{year}", "quarter": "{quarter}"},
    ),
    # <course> - Year <N> - Q<N> - Week <N> - <topic>.txt
    MetadataRule(
        r"(?:^|/)(?P<course>[^/]+?) - Year (?P<year>\d+) - Q(?P<quarter>\d+)"
        r" - Week (?P<week>\d+)(?: - (?P<topic>[^/]*?))?\.\w{1,8}$",
        {
            "course": "{course}",
            "year": "{year}",
            "quarter": "{quarter}",
            "week": "{week}",
            "topic": "{topic|spaces}",
        },
    ),
    # <course> - Week <N>.txt (before Lesson: "… - Lesson 01 - Week 1" keeps its course)
    MetadataRule(
        r"(?:^|/)(?P<course>[^/]+?) - Week (?P<week>\d+)\.\w{1,8}$",
        {"course": "{course}", "week": "{week}"},
    ),
    # <course> - Lesson <NN> - <topic>.txt (a few have no topic)
    MetadataRule(
        r"(?:^|/)(?P<course>[^/]+?) - Lesson (?P<lesson>\d+)(?: - (?P<topic>[^/]*?))?\.\w{1,8}$",
        {"course": "{course}", "lesson": "{lesson}", "topic": "{topic|spaces}"},
    ),
    # <course> - Class <NN>-<NN>[ <suffix>].txt; real names also have " - <suffix>"
    # and a plain "Class <NN>"; class stays a string ("09-02")
    MetadataRule(
        r"(?:^|/)(?P<course>[^/]+?) - Class (?P<class>\d+(?:-\d+)?)"
        r"(?:(?: - | )(?P<topic>[^/]*?))?\.\w{1,8}$",
        {"course": "{course}", "class": "{class|text}", "topic": "{topic|spaces}"},
    ),
    # MOTM_YYYY-MM-DD_Topic-With-Dashes.txt
    MetadataRule(
        r"(?:^|/)MOTM_(?P<date>(?P<year>\d{4})-\d{2}-\d{2})_(?P<topic>[^/]+?)\.\w{1,8}$",
        {"series": "MOTM", "date": "{date}", "year": "{year}", "topic": "{topic|dashes|spaces}"},
    ),
    # Episode <N> – <M⧸D⧸YYYY> [<id>].txt and Episode <N> [<id>].txt
    # (en dash, U+29F8 for "/"; one file really is spelled "Epsiode")
    MetadataRule(
        r"(?:^|/)Ep(?:isode|siode) (?P<episode>\d+)"
        r"(?: [–-] (?P<month>\d{1,2})[⧸/](?P<day>\d{1,2})[⧸/](?P<year>\d{4}))?"
        r" \[(?P<episode_id>[^\]/]+)\]\.\w{1,8}$",
        {
            "series": "Peikoff Podcast",
            "episode": "{episode}",
            "date": "{year}-{month|pad2}-{day|pad2}",
            "episode_id": "{episode_id|text}",
        },
    ),
)

# Identity header lines for text uploads, in order; only keys present are written.
_HEADER = (
    ("Title", "title"),
    ("Course", "course"),
    ("Class", "class"),
    ("Lesson", "lesson"),
    ("Topic", "topic"),
)


@dataclass(frozen=True)
class Enrichment:
    display_name: str
    metadata: dict[str, str | float | list[str]]
    header: str | None


def with_defaults(configured: Sequence[MetadataRule] | None) -> tuple[MetadataRule, ...] | None:
    """The rule list for configured rules: the built-in ones first, then the configured.

    (Until issue 13 any configured rule replaced every built-in one, so one
    extra rule silently dropped category, course, lesson and the rest.) A
    configured `stop` rule ends the list from where it sits, after the defaults.
    """
    return None if configured is None else (*DEFAULT_RULES, *configured)


def enrichment_version(rules: Sequence[MetadataRule] | None, *, skip: bool) -> str:
    """Short, stable: changes when ENRICHER_VERSION or the rules change; "raw" when skip."""
    if skip:
        return "raw"
    fingerprint = _fingerprint(DEFAULT_RULES if rules is None else rules)
    return f"v{ENRICHER_VERSION}-{fingerprint[:10]}"


def enrich(
    rel_path: str,
    *,
    library_id: str,
    sha256: str,
    rules: Sequence[MetadataRule] | None = None,
    skip: bool = False,
) -> Enrichment:
    """Metadata, display name and header for one file (`rel_path` is the POSIX key)."""
    path = unicodedata.normalize("NFC", rel_path)
    display = display_name(path)
    identity: dict[str, str | float | list[str]] = {
        "library_id": library_id,
        "path": rel_path,
        "sha256": sha256,
    }
    if skip:
        return Enrichment(display_name=display, metadata=identity, header=None)

    derived: dict[str, str | float] = {}
    for rule in _compile(DEFAULT_RULES if rules is None else rules):
        match = rule.regex.search(path)
        if match is None:
            continue
        for key, template in rule.fields:
            value = template.render(match)
            if value is not None and key not in identity:
                derived[key] = value
        if rule.stop:
            break
    if not isinstance(derived.get("title"), str) or not derived["title"]:
        derived["title"] = _clip(_spaces(PurePosixPath(display).stem) or display)

    room = MAX_ENTRIES - len(identity)
    metadata = identity | dict(list(derived.items())[:room])
    header = _header(metadata) if is_text(path) else None
    return Enrichment(display_name=display, metadata=metadata, header=header)


def display_name(rel_path: str) -> str:
    """The file name, stripped, ≤ 512 characters (cut before the extension)."""
    name = rel_path.rsplit("/", 1)[-1].strip() or "untitled"
    if len(name) <= MAX_DISPLAY_NAME:
        return name
    suffix = PurePosixPath(name).suffix
    if len(suffix) > 16:
        suffix = ""
    return name[: MAX_DISPLAY_NAME - len(suffix)].rstrip() + suffix


def validate_rules(rules: Sequence[MetadataRule]) -> None:
    """Raise ValueError naming the first bad rule (regex, unknown group or filter)."""
    _compile(rules)


# --- internals -----------------------------------------------------------------------

_FILTERS: dict[str, Callable[[str], str]] = {
    "text": lambda v: v,
    "spaces": lambda v: _spaces(v),
    "dashes": lambda v: " ".join(v.replace("-", " ").split()),
    "pad2": lambda v: v.zfill(2),
}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)((?:\|\w+)*)\}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,15}")


def _spaces(value: str) -> str:
    return " ".join(value.replace("_", " ").split())


def _clip(value: str) -> str:
    return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS].rstrip()


@dataclass(frozen=True)
class _Template:
    # literal text and (group, filters) pieces, in order
    parts: tuple[str | tuple[str, tuple[str, ...]], ...]
    numeric: bool  # exactly one unfiltered placeholder: integers become numbers

    def render(self, match: re.Match[str]) -> str | float | None:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            group, filters = part
            value = match.group(group)
            if value is None:
                return None  # a group that did not participate sets no key
            for name in filters:
                value = _FILTERS[name](value)
            out.append(value)
        text = "".join(out).strip()
        if not text:
            return None
        if self.numeric and _INTEGER.fullmatch(text):
            return float(int(text))
        return _clip(text)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    fields: tuple[tuple[str, _Template], ...]
    stop: bool


def _parse_template(template: str, groups: set[str], where: str) -> _Template:
    parts: list[str | tuple[str, tuple[str, ...]]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        pos = m.end()
        if m.group(1) is None:  # escaped brace
            parts.append(m.group(0)[0])
            continue
        group = m.group(1)
        filters = tuple(f for f in m.group(2).split("|") if f)
        if group not in groups:
            raise ValueError(f"{where}: {{{group}}} is not a named group of the pattern")
        unknown = [f for f in filters if f not in _FILTERS]
        if unknown:
            raise ValueError(
                f"{where}: unknown filter {unknown[0]!r} (known: {', '.join(_FILTERS)})"
            )
        parts.append((group, filters))
    if pos < len(template):
        parts.append(template[pos:])
    numeric = len(parts) == 1 and isinstance(parts[0], tuple) and not parts[0][1]
    return _Template(parts=tuple(parts), numeric=numeric)


def _canonical(rules: Sequence[MetadataRule]) -> str:
    # Field order is kept: it decides key order and so which keys a cap drops.
    return json.dumps(
        [[r.pattern, list(r.fields.items()), r.stop] for r in rules],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _fingerprint(rules: Sequence[MetadataRule]) -> str:
    return hashlib.sha256(_canonical(rules).encode("utf-8")).hexdigest()


_compiled: dict[str, tuple[_Rule, ...]] = {}


def _compile(rules: Sequence[MetadataRule]) -> tuple[_Rule, ...]:
    # MetadataRule holds a dict (unhashable), so cache by the rules' content.
    key = _canonical(rules)
    cached = _compiled.get(key)
    if cached is not None:
        return cached
    compiled = []
    for i, rule in enumerate(rules):
        where = f"metadata rule {i} ({rule.pattern!r})"
        try:
            regex = re.compile(rule.pattern)
        except re.error as exc:
            raise ValueError(f"{where}: not a valid regex: {exc}") from None
        groups = set(regex.groupindex)
        fields = tuple(
            (key_, _parse_template(tmpl, groups, f"{where} field {key_!r}"))
            for key_, tmpl in rule.fields.items()
        )
        compiled.append(_Rule(regex=regex, fields=fields, stop=rule.stop))
    result = tuple(compiled)
    if len(_compiled) > 64:  # rule sets change rarely; bound it anyway
        _compiled.clear()
    _compiled[key] = result
    return result


def _header(metadata: dict[str, str | float | list[str]]) -> str | None:
    lines = []
    for label, key in _HEADER:
        value = metadata.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        elif isinstance(value, list):
            text = ", ".join(value)
        else:
            text = str(value)
        lines.append(f"{label}: {' '.join(text.split())}")  # one line, whatever the name
    return "\n".join(lines) + "\n\n" if lines else None


_HEADER_LINE = re.compile(r"^(?:" + "|".join(label for label, _ in _HEADER) + r"): .*$")


def strip_header(text: str) -> str:
    """`text` without a leading identity header (`_header`): a search snippet
    should show the document's words, not the header objlibd put in front."""
    lines = text.lstrip("\n").split("\n")
    skip = 0
    while skip < len(lines) and _HEADER_LINE.match(lines[skip]):
        skip += 1
    return "\n".join(lines[skip:]).strip() if skip else text
