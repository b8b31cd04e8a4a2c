"""Issue 15, what was left: findings 10, 11, 14 and the rest of 15.

Credentials are tested with keyring's own fail backend, selected the way a
headless machine gets it (`PYTHON_KEYRING_BACKEND`), in a real `objlibd`
process with a private HOME: nothing of ours is mocked.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import keyring
import keyring.backends.fail
import keyring.core
import pytest
from harness import Harness
from test_ux import gemini_harness

from objlib_daemon import config as config_module

REPO = Path(__file__).resolve().parents[1]
KEY = "AIzaLEFTOVER-0000000000000000000000001"
OTHER = "AIzaENVWINS-00000000000000000000000002"


def objlibd(
    home: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`objlibd ARGS` as its own process on a machine without a keyring backend."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    environ.update(
        HOME=str(home),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        OBJLIBD_CONFIG=str(home / "none.toml"),
        **env,
    )
    environ.pop("XDG_CONFIG_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "objlib_daemon", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_auth_set_without_a_keyring_writes_the_service_env_file(tmp_path):
    """Finding 14: with no keyring backend `auth set` failed and could not write
    the 0600 env file the service reads."""
    env_file = tmp_path / ".config" / "objlibd" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text("OBJLIBD_KEEP=1\nGEMINI_API_KEY=AIzaOLD\n", encoding="utf-8")
    env_file.chmod(0o644)

    result = objlibd(tmp_path, "auth", "set", "--stdin", stdin=f"{KEY}\n")
    assert result.returncode == 0, result.stderr
    assert str(env_file) in result.stdout and "no system keyring" in result.stdout
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text(encoding="utf-8") == f"OBJLIBD_KEEP=1\nGEMINI_API_KEY={KEY}\n"

    status = objlibd(tmp_path, "auth", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["source"] == "env_file"

    cleared = objlibd(tmp_path, "auth", "clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert env_file.read_text(encoding="utf-8") == "OBJLIBD_KEEP=1\n"
    for run in (result, status, cleared):
        assert KEY not in run.stdout + run.stderr and KEY[-6:] not in run.stdout + run.stderr


def test_an_environment_key_that_wins_is_named_with_how_to_unset_it(tmp_path):
    """Finding 14: with a wrong GEMINI_API_KEY set, `auth set` could not help
    and nothing said the variable wins."""
    result = objlibd(tmp_path, "auth", "set", "--stdin", stdin=f"{KEY}\n", GEMINI_API_KEY=OTHER)
    assert result.returncode == 0, result.stderr
    status = objlibd(tmp_path, "auth", "status", GEMINI_API_KEY=OTHER)
    assert status.returncode == 0, status.stderr
    for run in (result, status):
        assert "GEMINI_API_KEY is set in this environment and takes precedence" in run.stderr
        assert "`unset GEMINI_API_KEY`" in run.stderr
        assert OTHER not in run.stdout + run.stderr and KEY not in run.stdout + run.stderr


def test_gemini_hits_name_their_document_and_have_a_score(tmp_path, emulator):
    """Finding 11: Gemini search hits had `document: ""` and `score: null` (the
    documented grounding shape names no document; newer models give no confidence)."""
    emulator.grounding_extras = False
    h = gemini_harness(tmp_path, emulator)
    h.write("Courses/Volition.txt", b"Volition is the choice to focus. " * 80)
    h.write("Courses/Focus.txt", b"To focus is a choice; volition again. " * 60)
    h.sync()
    data = json.loads(h.run("search", "volition focus choice", "--json").stdout)
    documents = {path: row["document"] for path, row in h.rows().items()}
    assert {hit["path"] for hit in data["hits"]} == set(documents)
    for rank, hit in enumerate(data["hits"], 1):
        assert hit["document"] == documents[hit["path"]]
        assert hit["document"].startswith("fileSearchStores/")
        assert hit["score"] == pytest.approx(1 / rank)


def test_status_v_lists_every_waiting_file_with_attempts(tmp_path, emulator):
    """Finding 15: `status -v` was a usage error; status shows ten waiting rows."""
    from emulator import Fault

    h = gemini_harness(tmp_path, emulator, "breaker_threshold = 2\nbreaker_cooldown = 600\n")
    for i in range(13):
        h.write(f"w/File {i:02}.txt")
    emulator.add_fault(Fault(phase="start", status=503, times=None))
    assert h.run("sync").exit_code == 6
    short = h.run("status").stdout
    assert len(re.findall(r"^waiting:", short, re.M)) == 10 and "3 more" in short
    result = h.run("status", "-v")
    assert result.exit_code == 0, result.output
    waiting = re.findall(r"^waiting: .*\(attempts \d+, next .*\)$", result.stdout, re.M)
    assert len(waiting) == 13 and "more in" not in result.stdout
    data = json.loads(h.run("status", "-v", "--json").stdout)
    assert len(data["queue"]["waiting"]) == 13


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_is_documented_and_produced(tmp_path, shell):
    """Finding 15: completion worked only through an undocumented variable."""
    line = f"_OBJLIBD_COMPLETE={shell}_source objlibd"
    assert line in (REPO / "README.md").read_text(encoding="utf-8")
    result = objlibd(tmp_path, **{"_OBJLIBD_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, result.stderr
    assert "_OBJLIBD_COMPLETE" in result.stdout and "objlibd" in result.stdout


def test_sizes_take_units_and_a_wrong_unit_names_the_key(tmp_path):
    """Finding 15: sizes did not take units (`100MB`)."""
    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    text = h.config_path.read_text()
    h.config_path.write_text(text.replace("[library]\n", '[library]\nmin_size = "1 KiB"\n', 1))
    values = json.loads(h.run("config", "show", "--json").stdout)["values"]
    assert values["library.min_size"] == {"value": 1024, "source": "file"}
    h.write("small.txt", size=1023)
    h.write("big-enough.txt", size=1024)
    assert h.sync()["new"] == 1
    for size, expected in [("100MB", 100_000_000), ("2.5M", 2_500_000), ("1 KiB", 1024)]:
        parsed = config_module.from_dict({"library": {"max_size": size}})
        assert parsed.library.max_size == expected
    h.config_path.write_text(text.replace("[library]\n", '[library]\nmax_size = "5 parsecs"\n', 1))
    result = h.run("status")
    assert result.exit_code == 78
    assert "library.max_size" in result.stderr and "100MB" in result.stderr


def test_store_list_on_the_local_backend_needs_no_gemini_key(tmp_path, monkeypatch):
    """Finding 15: `store list` on the local backend asked for a Gemini key."""
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(keyring.backends.fail.Keyring())
    monkeypatch.setenv("HOME", str(tmp_path))
    h = Harness(tmp_path, "local")
    h.env["GEMINI_API_KEY"] = None
    assert h.init().exit_code == 0
    h.write("a.txt")
    h.sync()
    result = h.run("store", "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": "localStores/local", "display_name": "local", "documents": 1}
    ]
    assert "localStores/local" in h.run("store", "list").stdout
    gemini = h.run("store", "list", "--gemini")
    assert gemini.exit_code == 78 and "objlibd auth set" in gemini.stderr


def test_the_written_config_points_at_an_installed_example(tmp_path):
    """Finding 15: the written config pointed at `config.example.toml`, which the
    package did not install."""
    h = Harness(tmp_path, "local")
    h.config_path.unlink(missing_ok=True)
    assert h.run("init", "--library", str(h.root)).exit_code == 0
    first = h.config_path.read_text().splitlines()[0]
    path = Path(first.rsplit(" in ", 1)[1])
    assert path.is_file() and path == config_module.EXAMPLE
    assert path.parent == Path(config_module.__file__).parent  # inside the package
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "config.example.toml" in pyproject["tool"]["setuptools"]["package-data"][
        "objlib_daemon"
    ]
    assert (REPO / "config.example.toml").read_text() == path.read_text()
    assert "objlibd config show" in h.config_path.read_text()


def test_docs_link_nothing_outside_the_repository():
    """Finding 15: the README linked a file outside the repository."""
    reference = re.compile(r"\]\(([^)\s]+)\)|`([^`\s]+\.md)`")
    outside = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for match in reference.finditer(doc.read_text(encoding="utf-8")):
            target = (match.group(1) or match.group(2)).split("#")[0]
            if not target or re.match(r"^[a-z]+://", target):
                continue
            resolved = (doc.parent / target).resolve()
            if target.startswith("/") or not resolved.is_relative_to(REPO):
                outside.append(f"{doc.name}: {target}")
    assert outside == []
