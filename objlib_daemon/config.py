"""Configuration: TOML file → frozen dataclasses with defaults and validation.

One schema (`SCHEMA`) drives parsing, validation, the documentation test and
`config.example.toml`, so a key cannot exist in one place and not the others.
Lookup order for the file: `--config`, `$OBJLIBD_CONFIG`, the platform's user
config dir. The state dir: `$OBJLIBD_STATE_DIR`, else `[paths] state_dir`, else
the platform's user state dir.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

APP = "objlibd"

DEFAULT_INCLUDE = ("**/*.txt", "**/*.md", "**/*.pdf", "**/*.html", "**/*.docx", "**/*.epub")
# What to do with a document that has no extractable text (a scanned PDF):
# upload it anyway (default) or hold it back; either way it is reported.
NO_TEXT_CHOICES = ("upload", "hold")
# OS litter and volume metadata seen on FAT/exFAT/HFS+ sticks (platform-notes.md).
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


class ConfigError(Exception):
    """The configuration is missing or invalid; the message says how to fix it."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float) -> float:
    """'7d', '6h', '90s', '15m', '2w' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 6h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: str | int) -> int:
    """'100MB', '1 KiB', '2.5M' or a number of bytes → bytes.

    Why both bases: File Search states its limit in decimal MB while file
    managers often show binary units, so `MB`/`M` are powers of 1000 and
    `MiB`/`Mi` powers of 1024; a plain integer is bytes, as it always was.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or (match.group(3) and not match.group(2)):
        raise ValueError(
            f"not a size: {value!r} (use bytes as an integer, or e.g. 100MB, 512 KiB, 2.5M)"
        )
    number, prefix, binary = match.group(1), match.group(2).lower(), match.group(3)
    return int(float(number) * (1024 if binary else 1000) ** _SIZE_POWERS[prefix])


@dataclass(frozen=True)
class MetadataRule:
    """One enrichment rule: a regex over the relative path with named groups.

    `fields` maps metadata keys to templates (`{group}` placeholders) and
    literal values; a rule matching with `stop = true` ends the rule list.
    """

    pattern: str
    fields: dict[str, str] = field(default_factory=dict)
    stop: bool = False


@dataclass(frozen=True)
class LibraryConfig:
    root: Path | None = None
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    min_size: int = 1024
    max_size: int = 100 * 1000 * 1000
    no_text: str = "upload"


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "local"
    name: str = ""
    base_url: str = ""
    model: str = "gemini-2.5-flash"
    # 0: no ceiling; the limiter finds the rate from the service's 429s.
    max_requests_per_minute: int = 0
    # See docs/configuration.md ("How fast objlibd talks to the store").
    concurrency: int = 4
    operation_timeout: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0
    retry_attempts: int = 5
    retry_initial: float = 1.0


@dataclass(frozen=True)
class SyncConfig:
    max_missing_count: int = 50
    max_missing_fraction: float = 0.5
    prune_after: float = 7 * 86400.0
    skip_enrichment: bool = False
    retry_base: float = 30.0
    retry_max: float = 6 * 3600.0
    # A file the store refused (too large, unsupported, its import failed) is
    # tried again this long after, in case the cause was outside it: a limit
    # since raised, a service fault. Daily: one upload a day per such file.
    retry_failed_after: float = 24 * 3600.0


@dataclass(frozen=True)
class EnrichmentConfig:
    """AI metadata from a Gemini model (enrichment/): when, which model, what it may cost."""

    # "auto": on when the store backend is gemini and an API key is present.
    enabled: str = "auto"
    # A small fast model: one call per new content, a few hundred output tokens.
    model: str = "gemini-2.5-flash-lite"
    # Input cut per document (longer texts are sampled; enrichment/text.py).
    max_input_tokens: int = 8000
    # Model tokens (prompt + output) per UTC day; 0 = no limit. Reaching it
    # pauses enrichment, never the sync: files upload with path-rule metadata.
    max_daily_tokens: int = 20_000_000
    # 0: no ceiling; the adaptive limiter (stores/pacing.py) finds the rate.
    max_requests_per_minute: int = 0
    # USD per million tokens, for the estimates of `sync --dry-run` and `status`
    # (gemini-2.5-flash-lite list prices; gemini-embedding-001 for indexing).
    input_price: float = 0.10
    output_price: float = 0.40
    indexing_price: float = 0.15


@dataclass(frozen=True)
class DaemonConfig:
    settle_seconds: float = 2.0
    reconcile_interval: float = 6 * 3600.0
    orphan_sweep_interval: float = 3600.0
    auto_prune: bool = False
    audit_interval: float = 7 * 86400.0
    audit_repair: bool = False
    volume_check_interval: float = 5.0
    shutdown_timeout: float = 60.0


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path | None = None
    runtime_dir: Path | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    library: LibraryConfig = field(default_factory=LibraryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    enrichment: EnrichmentConfig = field(default_factory=EnrichmentConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
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


# --- schema: section → key → (kind, validator) ----------------------------------

# "int", "size" (bytes, units allowed), "float", "bool", "auto-bool", "str", "path",
# "duration", "globs", "choice:a|b"
_Kind = str

SCHEMA: dict[str, dict[str, _Kind]] = {
    "library": {
        "root": "path",
        "include": "globs",
        "exclude": "globs",
        "min_size": "size",
        "max_size": "size",
        "no_text": "choice:" + "|".join(NO_TEXT_CHOICES),
    },
    "store": {
        "backend": "choice:local|gemini",
        "name": "str",
        "base_url": "str",
        "model": "str",
        "max_requests_per_minute": "int",
        "concurrency": "int",
        "operation_timeout": "duration",
        "breaker_threshold": "int",
        "breaker_cooldown": "duration",
        "retry_attempts": "int",
        "retry_initial": "duration",
    },
    "sync": {
        "max_missing_count": "int",
        "max_missing_fraction": "float",
        "prune_after": "duration",
        "skip_enrichment": "bool",
        "retry_base": "duration",
        "retry_max": "duration",
        "retry_failed_after": "duration",
    },
    "enrichment": {
        "enabled": "auto-bool",
        "model": "str",
        "max_input_tokens": "int",
        "max_daily_tokens": "int",
        "max_requests_per_minute": "int",
        "input_price": "float",
        "output_price": "float",
        "indexing_price": "float",
    },
    "daemon": {
        "settle_seconds": "duration",
        "reconcile_interval": "duration",
        "orphan_sweep_interval": "duration",
        "auto_prune": "bool",
        "audit_interval": "duration",
        "audit_repair": "bool",
        "volume_check_interval": "duration",
        "shutdown_timeout": "duration",
    },
    "paths": {"state_dir": "path", "runtime_dir": "path"},
    "logging": {"level": "choice:debug|info|warning|error", "format": "choice:auto|json|console"},
}
# Old key names still accepted, each read as its new name, so a config written
# for an older objlibd keeps working; they are not in SCHEMA (not documented
# as keys, only as renamed). `requests_per_minute` was a fixed rate; pacing is
# adaptive now, and the number is the ceiling it never exceeds.
DEPRECATED_KEYS = {("store", "requests_per_minute"): "max_requests_per_minute"}
# `[[metadata.rules]]` is a list of tables, validated separately.
LIST_SECTIONS = {"metadata": {"rules": ("pattern", "fields", "stop")}}

_SECTION_TYPES = {
    "library": LibraryConfig,
    "store": StoreConfig,
    "sync": SyncConfig,
    "enrichment": EnrichmentConfig,
    "daemon": DaemonConfig,
    "paths": PathsConfig,
    "logging": LoggingConfig,
}

_POSITIVE = {
    "min_size",
    "max_size",
    "concurrency",
    "breaker_threshold",
    "retry_attempts",
    "volume_check_interval",
    # Zero waits turn a failing call or file into a hot loop against the API.
    "operation_timeout",
    "breaker_cooldown",
    "retry_initial",
    "retry_base",
    "retry_max",
    "max_input_tokens",
    "retry_failed_after",
}
# The largest document the store accepts (gemini-file-search.md, limits; the
# stores use this number too): a bigger file could never be uploaded.
MAX_DOCUMENT_BYTES = 100 * 1000 * 1000
# Uploads at once: each is a thread holding a file in memory.
MAX_CONCURRENCY = 32


def _coerce(where: str, kind: _Kind, value: Any, base: Path | None) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: expected {expected}, got {value!r}")

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "auto-bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        if value != "auto":
            raise bad('true, false or "auto"')
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise bad("a path string")
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    if kind == "size":
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if kind == "duration":
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if kind == "globs":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad("a list of glob strings")
        return tuple(value)
    if kind.startswith("choice:"):
        choices = kind.removeprefix("choice:").split("|")
        if value not in choices:
            raise bad("one of " + ", ".join(choices))
        return value
    raise AssertionError(kind)


def _parse_rules(raw: Any) -> tuple[MetadataRule, ...]:
    if not isinstance(raw, dict) or set(raw) - {"rules"}:
        raise ConfigError("[metadata]: only `[[metadata.rules]]` tables are allowed")
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("[[metadata.rules]] must be a list of tables")
    parsed = []
    for i, rule in enumerate(rules):
        where = f"metadata.rules[{i}]"
        if not isinstance(rule, dict) or "pattern" not in rule:
            raise ConfigError(f"{where}: each rule needs a `pattern`")
        unknown = set(rule) - {"pattern", "fields", "stop"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            re.compile(rule["pattern"])
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}.pattern: not a valid regex: {exc}") from None
        fields_ = rule.get("fields", {})
        if not isinstance(fields_, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields_.items()
        ):
            raise ConfigError(f"{where}.fields: expected a table of strings")
        stop = rule.get("stop", False)
        if not isinstance(stop, bool):
            raise ConfigError(f"{where}.stop: expected true or false")
        parsed.append(MetadataRule(pattern=rule["pattern"], fields=dict(fields_), stop=stop))
    return tuple(parsed)


def from_dict(data: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document and build a `Config`."""
    base = source.parent if source else None
    unknown = set(data) - set(SCHEMA) - set(LIST_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(sorted(unknown))}"
            + _did_you_mean(unknown, [*SCHEMA, *LIST_SECTIONS])
            + "; valid: "
            + ", ".join(sorted([*SCHEMA, *LIST_SECTIONS]))
        )
    sections: dict[str, Any] = {}
    for name, keys in SCHEMA.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}] must be a table")
        raw = _renamed(name, raw)
        bad_keys = set(raw) - set(keys)
        if bad_keys:
            raise ConfigError(
                f"[{name}]: unknown key(s) {', '.join(sorted(bad_keys))}"
                + _did_you_mean(bad_keys, list(keys))
                + f"; valid: {', '.join(keys)}"
            )
        values = {}
        for key, value in raw.items():
            coerced = _coerce(f"{name}.{key}", keys[key], value, base)
            if key in _POSITIVE and coerced <= 0:
                raise ConfigError(f"{name}.{key}: must be greater than 0, got {value!r}")
            values[key] = coerced
        sections[name] = replace(_SECTION_TYPES[name](), **values)
    cfg = Config(**sections, source=source)
    _check_values(cfg)
    if "metadata" in data:
        cfg = replace(cfg, metadata_rules=_parse_rules(data["metadata"]))
    return cfg


def _did_you_mean(unknown: set[str], valid: list[str]) -> str:
    """` (did you mean retry_base?)` for typos close to a valid name, else ``."""
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
    rows: list[tuple[str, Any, str]] = []
    for section, keys in SCHEMA.items():
        written = _renamed(section, in_file.get(section, {}))
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            rows.append((f"{section}.{key}", value, "file" if key in written else "default"))
    overrides = {
        "paths.state_dir": ("OBJLIBD_STATE_DIR", cfg.state_dir),
        "paths.runtime_dir": ("OBJLIBD_RUNTIME_DIR", cfg.runtime_dir),
    }
    for i, (key, _value, source) in enumerate(rows):
        if key in overrides:
            env, resolved = overrides[key]
            rows[i] = (key, resolved, f"env {env}" if os.environ.get(env) else source)
    return rows


def _renamed(section: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with deprecated key names replaced by their new names."""
    for (where, old), new in DEPRECATED_KEYS.items():
        if where != section or old not in raw:
            continue
        if new in raw:
            raise ConfigError(f"{section}.{old} is the old name of {section}.{new}; set only one")
        raw = {(new if key == old else key): value for key, value in raw.items()}
    return raw


def _check_values(cfg: Config) -> None:
    """Values of the right type that still cannot work, each named with its key."""
    if not cfg.library.include:
        raise ConfigError("library.include: an empty list tracks nothing; list at least one glob")
    if cfg.library.max_size > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            f"library.max_size: at most {MAX_DOCUMENT_BYTES} (the store's limit per document), "
            f"got {cfg.library.max_size}"
        )
    if cfg.library.min_size > cfg.library.max_size:
        raise ConfigError("library.min_size must not exceed library.max_size")
    if cfg.store.max_requests_per_minute < 0:
        raise ConfigError(
            "store.max_requests_per_minute: must not be negative (0: no ceiling), "
            f"got {cfg.store.max_requests_per_minute}"
        )
    if cfg.store.concurrency > MAX_CONCURRENCY:
        raise ConfigError(
            f"store.concurrency: at most {MAX_CONCURRENCY}, got {cfg.store.concurrency}"
        )
    url = cfg.store.base_url
    if url and not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"store.base_url: expected an http(s) URL such as https://host:port, got {url!r}"
        )
    if cfg.sync.max_missing_count < 0:
        raise ConfigError(
            f"sync.max_missing_count: must not be negative, got {cfg.sync.max_missing_count}"
        )
    if not 0 < cfg.sync.max_missing_fraction <= 1:
        raise ConfigError("sync.max_missing_fraction must be in (0, 1]")
    enr = cfg.enrichment
    for key in (
        "max_daily_tokens",
        "max_requests_per_minute",
        "input_price",
        "output_price",
        "indexing_price",
    ):
        if getattr(enr, key) < 0:
            raise ConfigError(f"enrichment.{key}: must not be negative, got {getattr(enr, key)}")
    if not enr.model.strip():
        raise ConfigError("enrichment.model: name a model, e.g. gemini-2.5-flash-lite")


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


def schema_keys() -> list[str]:
    """Every `section.key` the code accepts (the docs test checks each is documented)."""
    keys = [f"{s}.{k}" for s, ks in SCHEMA.items() for k in ks]
    keys += [f"{s}.{k}.{f}" for s, ls in LIST_SECTIONS.items() for k, fs in ls.items() for f in fs]
    return keys


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


def dataclass_defaults() -> dict[str, dict[str, Any]]:
    """Defaults per section, for docs and `doctor`."""
    return {
        name: {f.name: getattr(cls(), f.name) for f in fields(cls)}
        for name, cls in _SECTION_TYPES.items()
    }
