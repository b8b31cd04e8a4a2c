"""Metadata filters in AIP-160 syntax, evaluated locally (the `local` store's `--where`).

Gemini evaluates File Search's `metadata_filter` on the server; the local
store answers the same expressions here so `objlibd search --where` means
the same on both backends. The subset: `key op value` with op one of
`= != < <= > >=` and `:` (a string list contains the value, or equality),
values quoted strings, numbers or bare words, combined with AND, OR, NOT
and parentheses (AND binds tighter than OR).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op><=|>=|!=|=|<|>|:)
    |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<num>-?\d+(?:\.\d+)?(?![\w.]))|(?P<word>[^\s()<>=!:"']+))""",
    re.VERBOSE,
)
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class FilterError(ValueError):
    """The expression is not in the supported syntax; the message says where."""


def parse(text: str) -> Predicate:
    tokens: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"cannot read the filter at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    parser = _Parser(tokens)
    predicate = parser.expr()
    if parser.i != len(tokens):
        raise FilterError(f"unexpected {tokens[parser.i][1]!r} in the filter")
    return predicate


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek_word(self, word: str) -> bool:
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        return tok is not None and tok[0] == "word" and tok[1].upper() == word

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise FilterError("the filter ends too early")
        self.i += 1
        return self.tokens[self.i - 1]

    def expr(self) -> Predicate:
        parts = [self.term()]
        while self.peek_word("OR"):
            self.take()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda md: any(p(md) for p in parts))

    def term(self) -> Predicate:
        parts = [self.factor()]
        while self.peek_word("AND"):
            self.take()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda md: all(p(md) for p in parts))

    def factor(self) -> Predicate:
        if self.peek_word("NOT"):
            self.take()
            inner = self.factor()
            return lambda md: not inner(md)
        kind, value = self.take()
        if kind == "lp":
            inner = self.expr()
            if self.take()[0] != "rp":
                raise FilterError("a '(' is not closed")
            return inner
        if kind not in ("word", "str"):
            raise FilterError(f"expected a metadata key, got {value!r}")
        key = _unquote(value) if kind == "str" else value
        op_kind, op = self.take()
        if op_kind != "op":
            raise FilterError(f"expected an operator after {key!r}")
        val_kind, raw = self.take()
        if val_kind not in ("str", "num", "word"):
            raise FilterError(f"expected a value after {key} {op}")
        wanted: str | float = float(raw) if val_kind == "num" else raw
        if val_kind == "str":
            wanted = _unquote(raw)
        return _comparison(key, op, wanted)


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _comparison(key: str, op: str, wanted: str | float) -> Predicate:
    def check(md: Mapping[str, Any]) -> bool:
        have = md.get(key)
        if have is None:
            return op == "!="
        if isinstance(have, list):
            contains = str(wanted) in have
            return not contains if op == "!=" else contains and op in ("=", ":")
        if isinstance(have, int | float) and not isinstance(have, bool):
            try:
                a, b = float(have), float(wanted)
            except ValueError:
                return op == "!="
        else:
            a, b = str(have), _text(wanted)
        if op in ("=", ":"):
            return a == b
        if op == "!=":
            return a != b
        return _ORDER[op](a, b)

    return check


def _text(value: str | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
