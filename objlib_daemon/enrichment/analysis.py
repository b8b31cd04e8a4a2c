"""What the model is asked and what it must answer: prompt, response schema, limits.

The prompt and the schema carry PROMPT_VERSION; together with the model and
the input budget they make the AI part of the enrichment version, so
changing any of them re-derives metadata (and `--force` re-uploads) exactly
where it changed. Answers are validated and clipped to the limits here,
whatever the model did with the schema's bounds.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

PROMPT_VERSION = 1  # bump with any change to PROMPT or RESPONSE_SCHEMA

DIFFICULTIES = ("introductory", "intermediate", "advanced")
# Limits of issue 13 (what fits usefully in custom_metadata and a header).
MAX_TOPICS = 8
MAX_ASPECTS = 10
MAX_ASPECT_CHARS = 100
MAX_ENTITIES = 10
MAX_THEMES = 5
MAX_THEME_CHARS = 200
MAX_SUMMARY_SENTENCES = 2
MAX_TERM_CHARS = 100  # topics and entities: names, not sentences
# An answer of about 250 words; the cap keeps a runaway answer cheap.
MAX_OUTPUT_TOKENS = 1024

PROMPT = """You catalogue the documents of a library of lectures, courses, podcasts and books.
Read the document below and describe it for search and filtering:
- summary: what the document is about, at most 2 sentences;
- primary_topics: at most 8 short subject terms (lowercase noun phrases, e.g. "free will");
- aspects: at most 10 specific points it discusses, each at most 100 characters;
- entities: at most 10 people and works it names or discusses;
- key_themes: at most 5 central ideas or arguments, each at most 200 characters;
- difficulty: introductory, intermediate or advanced, for a reader new to the subject.
Answer only from the document. The document:
"""

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "primary_topics": {
            "type": "array",
            "items": {"type": "string"},
            "maxItems": MAX_TOPICS,
        },
        "aspects": {
            "type": "array",
            "items": {"type": "string", "maxLength": MAX_ASPECT_CHARS},
            "maxItems": MAX_ASPECTS,
        },
        "entities": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ENTITIES},
        "key_themes": {
            "type": "array",
            "items": {"type": "string", "maxLength": MAX_THEME_CHARS},
            "maxItems": MAX_THEMES,
        },
        "difficulty": {"type": "string", "enum": list(DIFFICULTIES)},
    },
    "required": ["summary", "primary_topics", "aspects", "entities", "key_themes", "difficulty"],
}


class Malformed(ValueError):
    """The model's answer is not the JSON object the schema asks for."""


@dataclass(frozen=True)
class Analysis:
    """One document's AI metadata, within the limits above."""

    summary: str
    primary_topics: tuple[str, ...]
    aspects: tuple[str, ...]
    entities: tuple[str, ...]
    key_themes: tuple[str, ...]
    difficulty: str

    @classmethod
    def parse(cls, text: str | None) -> Analysis:
        """Validate an answer; clip what is too long, refuse what is not the shape."""
        try:
            data = json.loads(text or "")
        except ValueError as exc:
            raise Malformed(f"the answer is not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise Malformed("the answer is not a JSON object")
        difficulty = str(data.get("difficulty", "")).strip().lower()
        if difficulty not in DIFFICULTIES:
            raise Malformed(f"difficulty {difficulty!r} is not one of {', '.join(DIFFICULTIES)}")
        summary = data.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise Malformed("the answer has no summary")
        topics = _strings(data, "primary_topics", MAX_TOPICS, MAX_TERM_CHARS)
        if not topics:
            raise Malformed("the answer names no topic")
        return cls(
            summary=_sentences(summary, MAX_SUMMARY_SENTENCES),
            primary_topics=topics,
            aspects=_strings(data, "aspects", MAX_ASPECTS, MAX_ASPECT_CHARS),
            entities=_strings(data, "entities", MAX_ENTITIES, MAX_TERM_CHARS),
            key_themes=_strings(data, "key_themes", MAX_THEMES, MAX_THEME_CHARS),
            difficulty=difficulty,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Analysis:
        data = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def metadata(self) -> dict[str, str | list[str]]:
        """The custom_metadata entries (string lists, filterable with `key:"value"`)."""
        entries: dict[str, str | list[str]] = {
            "topics": list(self.primary_topics),
            "difficulty": self.difficulty,
        }
        for key, values in (
            ("entities", self.entities),
            ("themes", self.key_themes),
            ("aspects", self.aspects),
        ):
            if values:
                entries[key] = list(values)
        return entries

    def block(self) -> str:
        """The `[AI Analysis]` block placed between the identity header and the text."""
        lines = ["[AI Analysis]", f"Summary: {self.summary}"]
        for label, values in (
            ("Topics", self.primary_topics),
            ("Entities", self.entities),
        ):
            if values:
                lines.append(f"{label}: {'; '.join(values)}")
        lines.append(f"Difficulty: {self.difficulty}")
        for label, values in (("Key themes", self.key_themes), ("Aspects", self.aspects)):
            if values:
                lines.append(f"{label}:")
                lines += [f"- {v}" for v in values]
        return "\n".join(lines) + "\n\n"


def _one_line(value: str) -> str:
    return " ".join(value.split())


def _strings(data: dict[str, Any], key: str, count: int, chars: int) -> tuple[str, ...]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise Malformed(f"{key} is not a list")
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise Malformed(f"{key} holds a non-string")
        text = _one_line(item)
        if len(text) > chars:
            text = text[: chars - 1].rstrip() + "…"
        if text and text not in out:
            out.append(text)
    return tuple(out[:count])


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str, count: int) -> str:
    return " ".join(_SENTENCE_END.split(_one_line(text))[:count])
