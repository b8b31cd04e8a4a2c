"""Configuration: a TOML file → frozen dataclasses, every key defined once.

A key is one dataclass field below, written with `setting()`: its type, its
default, the kind of TOML value it reads (`Kind`) and the checks its value
must pass (`Check`). Reading and validating a file, `objlibd config show` and
the documentation test (docs/configuration.md and config.example.toml must
name every key with its default, and no other; tests/test_docs.py) all read
the fields, so a key cannot exist in one place and not the others. Adding a
key: a field here, a row in docs/configuration.md, a line in the example.

Why dataclasses and not pydantic (installed with google-genai): every
command reads the config, `objlibd status` included, and importing pydantic
and building the models costs over 100 ms; the messages here also say, in
the key's own terms, what it expects and what it got.

Lookup order for the file: `--config`, `$OBJLIBD_CONFIG`, the platform's user
config dir. The state dir: `$OBJLIBD_STATE_DIR`, else `[paths] state_dir`, else
the platform's user state dir.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs

# The largest document the store accepts: a bigger file could never be uploaded.
from objlib_daemon.stores.base import MAX_DOCUMENT_BYTES
from objlib_daemon.units import parse_duration, parse_size

APP = "objlibd"


class ConfigError(Exception):
    """The configuration is missing or invalid; the message says how to fix it."""


# --- how a key reads its TOML value ----------------------------------------------


class Kind(NamedTuple):
    """A kind of value: `read(value, config folder)` returns the setting's
    value, or raises ValueError saying what was expected."""

    name: str
    read: Callable[[Any, Path | None], Any]


def _kind(
    name: str,
    expected: str,
    accepts: Callable[[Any], bool],
    convert: Callable[[Any], Any] | None = None,
) -> Kind:
    """A kind that takes the values `accepts` passes, as `convert` makes them."""

    def read(value: Any, _folder: Path | None) -> Any:
        if not accepts(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return convert(value) if convert else value

    return Kind(name, read)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _path(value: Any, folder: Path | None) -> Path:
    """`~` expanded; relative to the config file's folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path string, got {value!r}")
    path = Path(value).expanduser()
    return folder / path if folder is not None and not path.is_absolute() else path


def _regex(value: Any, _folder: Path | None) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regex: {exc}") from None
    return value


def choice(*options: str) -> Kind:
    return _kind("choice", "one of " + ", ".join(options), lambda v: v in options)


INT = _kind("int", "an integer", lambda v: _is_number(v) and isinstance(v, int))
FLOAT = _kind("float", "a number", _is_number, float)
BOOL = _kind("bool", "true or false", lambda v: isinstance(v, bool))
# true or false, or "auto" (decided where it is used); held as a string.
AUTO_BOOL = _kind(
    "auto-bool",
    'true, false or "auto"',
    lambda v: isinstance(v, bool) or v == "auto",
    lambda v: v if v == "auto" else str(v).lower(),
)
STR = _kind("str", "a string", lambda v: isinstance(v, str))
GLOBS = _kind(
    "globs",
    "a list of glob strings",
    lambda v: isinstance(v, list) and all(isinstance(g, str) and g for g in v),
    tuple,
)
STR_TABLE = _kind(
    "table",
    "a table of strings",
    lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    dict,
)
SIZE = Kind("size", lambda v, _folder: parse_size(v))
DURATION = Kind("duration", lambda v, _folder: parse_duration(v))
PATH = Kind("path", _path)
REGEX = Kind("regex", _regex)


class Check(NamedTuple):
    """A rule a read value must pass; `problem` says what a failing one lacks."""

    ok: Callable[[Any], Any]
    problem: str


# Zero waits and zero attempts turn a failing call or file into a hot loop
# against the API; zero sizes, slots or tokens can do nothing.
POSITIVE = Check(lambda v: v > 0, "must be greater than 0")
NOT_NEGATIVE = Check(lambda v: v >= 0, "must not be negative")
CEILING = Check(NOT_NEGATIVE.ok, "must not be negative (0: no ceiling)")


def at_most(limit: int, why: str = "") -> Check:
    return Check(lambda v: v <= limit, f"at most {limit}{why}")


# A key without a default (a metadata rule's `pattern`).
REQUIRED: Any = MISSING


def setting(default: Any, kind: Kind, *checks: Check, was: str | None = None) -> Any:
    """A config key: a dataclass field with its default, the kind of value it
    reads, the checks the value must pass and the name it was once written
    under (`was`, still read as this key, so an older config keeps working)."""
    metadata = {"kind": kind, "checks": checks, "was": was}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --- the settings ------------------------------------------------------------------

# Uploads at once: each is a thread holding a file in memory.
MAX_CONCURRENCY = 32

DEFAULT_INCLUDE = ("**/*.txt", "**/*.md", "**/*.pdf", "**/*.html", "**/*.docx", "**/*.epub")
# OS litter and volume metadata seen on FAT/exFAT/HFS+ sticks (docs/platform-notes.md).
DEFAULT_EXCLUDE = (
    "**/.*",
    "**/._*",
    "**/.DS_Store",
    "**/.Spotlight-V100/**",
    "**/.fseventsd/**",
    "**/.Trashes/**",
    "**/$RECYCLE.BIN/**",
    "**/System Volume Information/**",
    "**/~$*",
    "**/*.tmp",
    "**/*.swp",
    "**/*~",
)


@dataclass(frozen=True)
class MetadataRule:
    """One enrichment rule (`[[metadata.rules]]`): a regex over the relative path
    with named groups.

    `fields` maps metadata keys to templates (`{group}` placeholders) and
    literal values; a rule matching with `stop = true` ends the rule list.
    """

    pattern: str = setting(REQUIRED, REGEX)
    fields: dict[str, str] = setting({}, STR_TABLE)
    stop: bool = setting(False, BOOL)


@dataclass(frozen=True)
class LibraryConfig:
    root: Path | None = setting(None, PATH)
    include: tuple[str, ...] = setting(
        DEFAULT_INCLUDE,
        GLOBS,
        Check(len, "must list at least one glob (an empty list tracks nothing)"),
    )
    exclude: tuple[str, ...] = setting(DEFAULT_EXCLUDE, GLOBS)
    min_size: int = setting(1024, SIZE, POSITIVE)
    max_size: int = setting(
        MAX_DOCUMENT_BYTES,
        SIZE,
        POSITIVE,
        at_most(MAX_DOCUMENT_BYTES, " (the store's limit per document)"),
    )
    # What to do with a document that has no extractable text (a scanned PDF):
    # upload it anyway or hold it back; either way it is reported.
    no_text: str = setting("upload", choice("upload", "hold"))


@dataclass(frozen=True)
class StoreConfig:
    backend: str = setting("local", choice("local", "gemini"))
    name: str = setting("", STR)
    base_url: str = setting(
        "",
        STR,
        Check(
            lambda v: not v or re.match(r"^https?://[^/\s]+", v),
            "expected an http(s) URL such as https://host:port",
        ),
    )
    model: str = setting("gemini-2.5-flash", STR)
    # 0: no ceiling; the limiter finds the rate from the service's 429s. The
    # old name was a fixed rate; the number is now the ceiling pacing never exceeds.
    max_requests_per_minute: int = setting(0, INT, CEILING, was="requests_per_minute")
    # See docs/configuration.md ("How fast objlibd talks to the store").
    concurrency: int = setting(4, INT, POSITIVE, at_most(MAX_CONCURRENCY))
    operation_timeout: float = setting(300.0, DURATION, POSITIVE)
    breaker_threshold: int = setting(5, INT, POSITIVE)
    breaker_cooldown: float = setting(60.0, DURATION, POSITIVE)
    retry_attempts: int = setting(5, INT, POSITIVE)
    retry_initial: float = setting(1.0, DURATION, POSITIVE)


@dataclass(frozen=True)
class SyncConfig:
    max_missing_count: int = setting(50, INT, NOT_NEGATIVE)
    max_missing_fraction: float = setting(
        0.5, FLOAT, Check(lambda v: 0 < v <= 1, "must be in (0, 1]")
    )
    prune_after: float = setting(7 * 86400.0, DURATION)
    skip_enrichment: bool = setting(False, BOOL)
    retry_base: float = setting(30.0, DURATION, POSITIVE)
    retry_max: float = setting(6 * 3600.0, DURATION, POSITIVE)
    # A file the store refused (too large, unsupported, its import failed) is
    # tried again this long after, in case the cause was outside it: a limit
    # since raised, a service fault. Daily: one upload a day per such file.
    retry_failed_after: float = setting(24 * 3600.0, DURATION, POSITIVE)


@dataclass(frozen=True)
class EnrichmentConfig:
    """AI metadata from a Gemini model (enrichment/): when, which model, what it may cost."""

    # "auto": on when the store backend is gemini and an API key is present.
    enabled: str = setting("auto", AUTO_BOOL)
    # A small fast model: one call per new content, a few hundred output tokens.
    model: str = setting(
        "gemini-2.5-flash-lite",
        STR,
        Check(lambda v: v.strip(), "name a model, e.g. gemini-2.5-flash-lite"),
    )
    # Input cut per document (longer texts are sampled; enrichment/text.py).
    max_input_tokens: int = setting(8000, INT, POSITIVE)
    # Model tokens (prompt + output) per UTC day; 0 = no limit. Reaching it
    # pauses enrichment, never the sync: files upload with path-rule metadata.
    max_daily_tokens: int = setting(20_000_000, INT, CEILING)
    # 0: no ceiling; the adaptive limiter (stores/pacing.py) finds the rate.
    max_requests_per_minute: int = setting(0, INT, CEILING)
    # USD per million tokens, for the estimates of `sync --dry-run` and `status`
    # (gemini-2.5-flash-lite list prices; gemini-embedding-001 for indexing).
    input_price: float = setting(0.10, FLOAT, NOT_NEGATIVE)
    output_price: float = setting(0.40, FLOAT, NOT_NEGATIVE)
    indexing_price: float = setting(0.15, FLOAT, NOT_NEGATIVE)


@dataclass(frozen=True)
class DaemonConfig:
    settle_seconds: float = setting(2.0, DURATION)
    reconcile_interval: float = setting(6 * 3600.0, DURATION)
    orphan_sweep_interval: float = setting(3600.0, DURATION)
    auto_prune: bool = setting(False, BOOL)
    audit_interval: float = setting(7 * 86400.0, DURATION)
    audit_repair: bool = setting(False, BOOL)
    volume_check_interval: float = setting(5.0, DURATION, POSITIVE)
    shutdown_timeout: float = setting(60.0, DURATION)


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path | None = setting(None, PATH)
    runtime_dir: Path | None = setting(None, PATH)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("info", choice("debug", "info", "warning", "error"))
    format: str = setting("auto", choice("auto", "json", "console"))


def _section(cls: type) -> Any:
    """A `[section]` of the file, held as an instance of `cls`."""
    return field(default_factory=cls, metadata={"section": True})


@dataclass(frozen=True)
class Config:
    library: LibraryConfig = _section(LibraryConfig)
    store: StoreConfig = _section(StoreConfig)
    sync: SyncConfig = _section(SyncConfig)
    enrichment: EnrichmentConfig = _section(EnrichmentConfig)
    daemon: DaemonConfig = _section(DaemonConfig)
    paths: PathsConfig = _section(PathsConfig)
    logging: LoggingConfig = _section(LoggingConfig)
    # `[[metadata.rules]]`; None: none configured (the built-in rules alone).
    metadata_rules: tuple[MetadataRule, ...] | None = None
    source: Path | None = None

    @property
    def state_dir(self) -> Path:
        env = os.environ.get("OBJLIBD_STATE_DIR")
        if env:
            return Path(env).expanduser()
        if self.paths.state_dir:
            return self.paths.state_dir
        return Path(platformdirs.user_state_dir(APP))

    @property
    def runtime_dir(self) -> Path:
        env = os.environ.get("OBJLIBD_RUNTIME_DIR")
        if env:
            return Path(env).expanduser()
        if self.paths.runtime_dir:
            return self.paths.runtime_dir
        return self.state_dir / "run"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "objlibd.db"

    def require_root(self) -> Path:
        if self.library.root is None:
            raise ConfigError(
                "no library root configured: set [library] root in the config "
                "or run `objlibd init --library PATH`"
            )
        return self.library.root


# `[section]` → its dataclass, in the file's order.
SECTIONS: dict[str, Any] = {
    f.name: f.default_factory for f in fields(Config) if f.metadata.get("section")
}
# The one list of tables: `[[metadata.rules]]`.
RULES = "metadata.rules"


# --- reading ----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One key of a table, as its field defines it."""

    table: str  # "store", or "metadata.rules[2]" while reading one rule
    key: str
    default: Any  # REQUIRED when it has none
    kind: Kind
    checks: tuple[Check, ...]
    was: str | None

    @property
    def name(self) -> str:
        return f"{self.table}.{self.key}"

    def read(self, value: Any, folder: Path | None = None) -> Any:
        """`value` as written in the file → the setting's value, or a ConfigError
        naming the key, what it expects and what it got."""
        try:
            result = self.kind.read(value, folder)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        for check in self.checks:
            if not check.ok(result):
                raise ConfigError(f"{self.name}: {check.problem}, got {value!r}")
        return result


def _settings(table: str, cls: Any) -> list[Setting]:
    """The keys of `table`, from the fields of `cls`."""
    return [
        Setting(
            table,
            f.name,
            f.default if f.default_factory is MISSING else f.default_factory(),
            **f.metadata,
        )
        for f in fields(cls)
    ]


def settings() -> list[Setting]:
    """Every key the file may hold: each section's, then a metadata rule's."""
    return [s for t, cls in [*SECTIONS.items(), (RULES, MetadataRule)] for s in _settings(t, cls)]


def from_dict(data: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document and build a `Config`."""
    folder = source.parent if source else None
    tables = [*SECTIONS, "metadata"]
    unknown = set(data) - set(tables)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(sorted(unknown))}"
            + _did_you_mean(unknown, tables)
            + "; valid: "
            + ", ".join(sorted(tables))
        )
    sections = {
        name: _read_table(cls, name, data.get(name, {}), folder) for name, cls in SECTIONS.items()
    }
    library = sections["library"]
    if library.min_size > library.max_size:
        raise ConfigError("library.min_size must not exceed library.max_size")
    rules = _read_rules(data["metadata"], folder) if "metadata" in data else None
    return Config(**sections, metadata_rules=rules, source=source)


def _read_table(cls: Any, table: str, raw: Any, folder: Path | None) -> Any:
    """TOML table `table` → `cls`, each key read by its setting; a key not
    written keeps its default, an unknown one is an error with a guess."""
    label = f"[{table}]" if table in SECTIONS else table
    known = _settings(table, cls)
    if not isinstance(raw, dict):
        raise ConfigError(f"{label} must be a table")
    raw = _renamed(raw, known)
    keys = [s.key for s in known]
    unknown = set(raw) - set(keys)
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {', '.join(sorted(unknown))}"
            + _did_you_mean(unknown, keys)
            + f"; valid: {', '.join(keys)}"
        )
    values = {}
    for s in known:
        if s.key in raw:
            values[s.key] = s.read(raw[s.key], folder)
        elif s.default is REQUIRED:
            raise ConfigError(f"{label}: `{s.key}` is required")
    return cls(**values)


def _read_rules(raw: Any, folder: Path | None) -> tuple[MetadataRule, ...]:
    if not isinstance(raw, dict) or set(raw) - {"rules"}:
        raise ConfigError("[metadata]: only `[[metadata.rules]]` tables are allowed")
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("[[metadata.rules]] must be a list of tables")
    return tuple(
        _read_table(MetadataRule, f"{RULES}[{i}]", rule, folder) for i, rule in enumerate(rules)
    )


def _renamed(raw: dict[str, Any], known: list[Setting]) -> dict[str, Any]:
    """`raw` with keys written under an old name (`was`) read as their new name."""
    for s in known:
        if s.was is None or s.was not in raw:
            continue
        if s.key in raw:
            raise ConfigError(f"{s.table}.{s.was} is the old name of {s.name}; set only one")
        raw = {(s.key if key == s.was else key): value for key, value in raw.items()}
    return raw


def _did_you_mean(unknown: set[str], valid: list[str]) -> str:
    """` (did you mean: retry_bse → retry_base?)` for typos close to a valid name, else ``."""
    guesses = [
        f"{bad} → {match[0]}"
        for bad in sorted(unknown)
        if (match := difflib.get_close_matches(bad, valid, n=1, cutoff=0.6))
    ]
    return f" (did you mean: {', '.join(guesses)}?)" if guesses else ""


def effective(path: Path) -> list[tuple[str, Any, str]]:
    """Every `section.key` with the value in force and where it came from:
    `file` (set in `path`), `env` (an OBJLIBD_* variable wins) or `default`.
    For `objlibd config show`."""
    cfg = load(path)
    in_file = tomllib.loads(path.read_text(encoding="utf-8"))
    overrides = {
        "paths.state_dir": ("OBJLIBD_STATE_DIR", cfg.state_dir),
        "paths.runtime_dir": ("OBJLIBD_RUNTIME_DIR", cfg.runtime_dir),
    }
    rows: list[tuple[str, Any, str]] = []
    for name, cls in SECTIONS.items():
        known = _settings(name, cls)
        written = _renamed(in_file.get(name, {}), known)
        for s in known:
            value = getattr(getattr(cfg, name), s.key)
            source = "file" if s.key in written else "default"
            if s.name in overrides:
                env, value = overrides[s.name]
                source = f"env {env}" if os.environ.get(env) else source
            rows.append((s.name, value, source))
    return rows


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def resolve_config_path(explicit: str | Path | None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("OBJLIBD_CONFIG")
    if env:
        return Path(env).expanduser()
    return default_config_path()


def load(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path}: run `objlibd init --library PATH` "
            "or pass --config / set $OBJLIBD_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Config:
    """Validate config `text` as if read from `path` (relative paths resolve
    against its folder): `init` checks the config it will write before writing it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return from_dict(data, source=path.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# Every key with its default, commented out; shipped inside the package (and
# linked from the repository's root) so the path `init` writes into a new
# config exists on every install, not only in a source checkout.
EXAMPLE = Path(__file__).with_name("config.example.toml")


def render_minimal(root: Path, backend: str, store_name: str) -> str:
    """The config `objlibd init` writes when none exists."""
    return (
        f"# objlibd configuration; every key is described in {EXAMPLE}\n"
        "# (`objlibd config show` prints the values in force and where each came from)\n"
        "[library]\n"
        f"root = {_toml_str(str(root))}\n\n"
        "[store]\n"
        f"backend = {_toml_str(backend)}\n"
        f"name = {_toml_str(store_name)}\n"
    )


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
