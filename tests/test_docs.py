"""The docs cannot drift from the code: every config key is documented and in the example.

The config's fields are the single source (`config.settings()`): each key's
row in docs/configuration.md shows its default (the first `literal` in the
default column, read as the key reads it; "none" or "required" for keys
without one), config.example.toml holds each one commented out with its
default, and neither names a key the code does not have. "Uncommenting" the example is defined
here: a line `# key = value` or `# [section]` / `# [[metadata.rules]]` loses
its `# `; prose comments never start with `word =` or `[`, so they stay.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from objlib_daemon import config
from objlib_daemon.library.metadata import enrich, validate_rules
from objlib_daemon.state.models import FileState, JournalAction, QueueState
from objlib_daemon.sync.outcome import Outcome

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"
CONFIG_DOC = REPO / "docs" / "configuration.md"
JSON_DOC = REPO / "docs" / "json.md"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

COMMENTED_SETTING = re.compile(r"^#\s?(\[\[?[a-z_.]+\]\]?|[a-z_]+\s*=.*)$")


def uncomment(text: str) -> str:
    return "\n".join(COMMENTED_SETTING.sub(r"\1", line) for line in text.splitlines()) + "\n"


def flatten(data: dict, prefix: str = "") -> set[str]:
    """`section.key` for tables, `section.list.key` for arrays of tables."""
    keys: set[str] = set()
    for name, value in data.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and not (prefix and name == "fields"):
            keys |= flatten(value, dotted + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                keys |= flatten(item, dotted + ".")
        else:
            keys.add(dotted)
    return keys


@pytest.fixture(scope="module")
def example() -> dict:
    return tomllib.loads(uncomment(EXAMPLE.read_text(encoding="utf-8")))


# A row of a key table: | `section.key` | default | effect |
KEY_ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+) \|", re.MULTILINE)


def names() -> set[str]:
    return {s.name for s in config.settings()}


def test_every_key_is_documented_with_its_default() -> None:
    rows = dict(KEY_ROW.findall(CONFIG_DOC.read_text(encoding="utf-8")))
    wrong = [(s.name, rows.get(s.name)) for s in config.settings() if not shows_default(s, rows)]
    assert not wrong, f"docs/configuration.md: rows missing or defaults wrong: {wrong}"


def shows_default(setting: config.Setting, rows: dict[str, str]) -> bool:
    cell = rows.get(setting.name)
    if cell is None:
        return False
    if setting.default is config.REQUIRED:
        return "required" in cell
    if setting.default is None:
        return cell.startswith("none")
    literal = re.search(r"`([^`]+)`", cell)
    if not literal:
        return False
    return setting.read(tomllib.loads(f"v = {literal[1]}")["v"]) == setting.default


def test_the_default_check_sees_a_wrong_default() -> None:
    """The row check reads what the docs say (else the test above passes vacuously)."""
    retry_max = next(s for s in config.settings() if s.name == "sync.retry_max")
    assert shows_default(retry_max, {"sync.retry_max": '`"6h"`'})
    assert not shows_default(retry_max, {"sync.retry_max": '`"5h"`'})
    assert not shows_default(retry_max, {"sync.retry_max": "six hours"})
    assert not shows_default(retry_max, {})


def test_no_documented_key_is_unknown() -> None:
    """A key removed from the code must leave the docs too."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    tables = "|".join({name.split(".")[0] for name in names()})
    named = set(re.findall(rf"`((?:{tables})\.[a-z_.]+)`", text))
    assert named <= names(), named - names()


def test_every_key_is_in_the_example(example: dict) -> None:
    assert flatten(example) == names()


def test_example_parses_as_shipped() -> None:
    """Everything commented out: the file loads and every value is the default."""
    cfg = config.load(EXAMPLE)
    assert cfg == config.Config(source=EXAMPLE.resolve())


def test_example_validates_uncommented(example: dict, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(uncomment(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    cfg = config.load(path)
    assert cfg == config.from_dict(example, source=path.resolve())
    assert cfg.library.root is not None and cfg.metadata_rules


def test_example_values_are_the_defaults(example: dict) -> None:
    """`# key = value` shows the default (keys whose default is "none" show a sample)."""
    cfg = config.from_dict(example)
    for setting in config.settings():
        if setting.table in config.SECTIONS and setting.default is not None:
            value = getattr(getattr(cfg, setting.table), setting.key)
            assert value == setting.default, setting.name


def test_example_metadata_rule_works(example: dict) -> None:
    rules = config.from_dict(example).metadata_rules
    assert rules is not None
    validate_rules(rules)
    got = enrich("Lectures/Jane_Doe/On_Reason.txt", library_id="x", sha256="0", rules=rules)
    assert got.metadata["speaker"] == "Jane Doe"
    assert got.metadata["title"] == "On Reason"


def test_configuration_doc_states_the_lookup_orders() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    for needle in ("--config", "OBJLIBD_CONFIG", "OBJLIBD_STATE_DIR", "OBJLIBD_RUNTIME_DIR"):
        assert needle in text
    assert text.index("`--config FILE`") < text.index("`$OBJLIBD_CONFIG`")


def test_operations_doc_covers_the_issue() -> None:
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    for needle in (
        "objlibd service install",
        "objlibd service uninstall",
        "loginctl enable-linger",
        "journalctl --user -u objlibd",
        "~/Library/Logs/objlibd/",
        "BindsTo=",
        "StartOnMount",
        "TCC",
        "NAME 1",
        "First sync",
        "unplugged",
        "Upgrading",
    ):
        assert needle in text, needle


def test_the_json_doc_names_every_action_and_state() -> None:
    """The values a reader of `--json` meets: each file's action, the file states
    `status` counts, a queue row's state, a journal entry's action (the
    enumerations are their source)."""
    text = JSON_DOC.read_text(encoding="utf-8")
    sections = {
        "## `objlibd sync`\n": [o for o in Outcome if o.acted],
        "## `objlibd status`\n": list(FileState),
        "## `objlibd queue`\n": list(QueueState),
        "## `objlibd why PATH`\n": list(JournalAction),
    }
    for heading, values in sections.items():
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        missing = [v.value for v in values if f"`{v.value}`" not in section]
        assert not missing, f"docs/json.md {heading.strip()} lacks {missing}"
