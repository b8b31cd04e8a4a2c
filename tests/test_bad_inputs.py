"""Bad inputs (issue 6): each gets a clear message, the rest of the library syncs, nothing is lost.

Through the one-shot CLI (tests/harness.py, in process, on both backends) and,
where the watcher meets them first, the daemon (tests/daemon_helpers.py).
test_core.py has the scanner-level unit tests (non-UTF-8 names, symlinks, a
FIFO, a locked folder, NFD names, a corrupt database file, two config
errors); these take the same inputs the whole way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CLI, Env, write
from harness import Harness, filler
from test_sync import make_due

from objlib_daemon import config as config_module
from objlib_daemon.library.files import NotSettled
from objlib_daemon.stores.gemini import GeminiStore
from objlib_daemon.stores.local import LocalStore
from objlib_daemon.sync import applier as applier_module

NOBODY = 65534


def docs_by_path(h) -> dict[str, list[str]]:
    return {path: [d.name for d in docs] for path, docs in h.docs_by_path().items()}


# --- unreadable files and folders ------------------------------------------------------


def _nobody_reason() -> str | None:
    if os.geteuid() != 0:
        return "root cannot be kept from reading a file; not root, test_core covers it"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + [sys.executable, "-c", "import objlib_daemon"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    if probe.returncode != 0:
        return f"this interpreter cannot run as an unprivileged user: {probe.stderr[-200:]}"
    return None


def test_unreadable_file_and_folder_as_an_unprivileged_user() -> None:
    """As root nothing is unreadable, so the syncs run as `nobody` (setpriv).

    An unreadable file is reported (fix its permissions) and retried once
    fixed; an unreadable folder is reported and its tracked files are not
    marked missing; everything else syncs.
    """
    reason = _nobody_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="objlibd-nobody-"))  # pytest's tmp is 0700 root
    try:
        os.chmod(base, 0o755)
        root, state = base / "library", base / "state"
        for rel in ("u/Fine.txt", "u/Locked.txt", "Private/Kept.txt", "Private/Also.md"):
            write(root / rel, f"text of {rel}")
        for folder in (root, root / "u", root / "Private"):
            os.chown(folder, NOBODY, NOBODY)  # nobody writes the marker, renames nothing
        state.mkdir()
        os.chown(state, NOBODY, NOBODY)
        config = base / "config.toml"
        config.write_text(f'[library]\nroot = "{root}"\n[sync]\nretry_base = "1s"\n')
        env = dict(os.environ)
        env.update(
            OBJLIBD_CONFIG=str(config),
            OBJLIBD_STATE_DIR=str(state),
            OBJLIBD_RUNTIME_DIR=str(state / "run"),
            HOME=str(base),
        )

        def objlibd(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
                + [*CLI, *args],
                env=env,
                capture_output=True,
                text=True,
                cwd=base,
                timeout=120,
            )

        def rows() -> dict[str, tuple[str, str | None]]:
            with sqlite3.connect(f"file:{state / 'objlibd.db'}?mode=ro", uri=True) as conn:
                return {
                    p: (s, e)
                    for p, s, e in conn.execute("SELECT path, state, last_error FROM files")
                }

        assert objlibd("init", "--library", str(root)).returncode == 0
        (root / "u" / "Locked.txt").chmod(0o600)  # root's own file: nobody cannot read it
        first = objlibd("sync", "--json")
        assert first.returncode == 6, first.stderr  # some failed
        summary = json.loads(first.stdout)
        assert summary["uploaded"] == 3 and summary["failed"] + summary["retrying"] == 1
        state_, error = rows()["u/Locked.txt"]
        assert state_ == "failed" and "Permission denied; fix its permissions" in error
        status = objlibd("status")
        assert "u/Locked.txt" in status.stdout and "fix its permissions" in status.stdout

        # A folder that becomes unreadable: reported, and its files are not missing.
        (root / "Private").chmod(0o700)
        os.chown(root / "Private", 0, 0)
        second = objlibd("sync", "--json")
        summary = json.loads(second.stdout)
        assert any("Private: cannot list folder" in p for p in summary["problems"])
        assert summary["missing"] == 0
        assert {rows()[p][0] for p in ("Private/Kept.txt", "Private/Also.md")} == {"indexed"}

        # Fixed: everything syncs, nothing was lost on the way.
        (root / "u" / "Locked.txt").chmod(0o644)
        (root / "Private").chmod(0o755)
        third = objlibd("sync", "--json")
        assert third.returncode == 0, third.stdout + third.stderr
        assert {s for s, _ in rows().values()} == {"indexed"}
        store = LocalStore(state / "local-store")
        try:
            paths = sorted(str(d.metadata["path"]) for d in store.list())
        finally:
            store.close()
        assert paths == ["Private/Also.md", "Private/Kept.txt", "u/Fine.txt", "u/Locked.txt"]
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", base], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# --- files that change under the applier -----------------------------------------------


def test_file_deleted_between_scan_and_read(h, monkeypatch) -> None:
    h.write("d/Tracked.txt")
    h.write("d/Other.txt")
    h.sync()
    tracked_doc = h.row("d/Tracked.txt")["document"]
    h.write("d/Tracked.txt", size=3000)  # changed: read by the applier
    h.write("d/New.txt")
    h.write("d/Also new.txt")
    real = applier_module.read_file

    def deleted_first(path: Path):
        if path.name in ("Tracked.txt", "New.txt"):
            path.unlink(missing_ok=True)  # gone between the scan and the read
        return real(path)

    monkeypatch.setattr(applier_module, "read_file", deleted_first)
    summary = h.sync(code=6)
    assert (summary["retrying"], summary["failed"], summary["uploaded"]) == (2, 0, 1)
    monkeypatch.undo()
    make_due(h)
    summary = h.sync()
    assert summary["missing"] == 1 and summary["failed"] == 0
    row = h.row("d/Tracked.txt")
    assert (row["state"], row["document"]) == ("missing", tracked_doc)  # missing, not deleted
    assert h.row("d/New.txt") is None  # never there for long enough to upload
    assert sorted(docs_by_path(h)) == ["d/Also new.txt", "d/Other.txt", "d/Tracked.txt"]


def test_file_growing_while_it_is_uploaded(h, monkeypatch) -> None:
    """The bytes uploaded are the ones hashed; the growth is the next change."""
    rel = "g/Growing.txt"
    first = filler(rel, 2000)
    path = h.write(rel, first)
    h.write("g/Steady.txt")
    store_class = LocalStore if h.backend == "local" else GeminiStore
    real = store_class.upload
    grown: list[bytes] = []

    def upload(self, data, **kwargs):
        if kwargs["display_name"] == "Growing.txt" and not grown:
            grown.append(b"appended while the upload runs\n" * 40)
            with open(path, "ab") as fh:
                fh.write(grown[0])
        return real(self, data, **kwargs)

    monkeypatch.setattr(store_class, "upload", upload)
    summary = h.sync()
    # The hashed bytes went up first; the growth, seen when that upload was
    # recorded, is queued and uploaded in the same run (upload first).
    assert (summary["uploaded"], summary["new"], summary["modified"]) == (3, 2, 1)
    journal = h.db().execute(
        "SELECT detail FROM journal WHERE path = ? AND action IN ('uploaded', 'replaced')"
        " ORDER BY id",
        (rel,),
    ).fetchall()
    assert [r[0] for r in journal] == [
        hashlib.sha256(first).hexdigest(),
        hashlib.sha256(first + grown[0]).hexdigest(),
    ]
    h.converged()
    [doc] = h.docs_by_path()[rel]
    assert h.content(doc.name).endswith(first + grown[0])  # after the identity header
    assert h.row(rel)["size"] == len(first) + len(grown[0])


def test_file_changing_while_it_is_read_is_retried_when_settled(h, monkeypatch) -> None:
    rel = "g/Being written.txt"
    path = h.write(rel)
    real = applier_module.read_file
    calls: list[Path] = []

    def written_during_read(p: Path):
        calls.append(p)
        if len(calls) == 1:  # another program is still writing it: what read_file detects
            with open(p, "ab") as fh:
                fh.write(b"more\n" * 100)
            raise NotSettled(f"{p.name} changed while it was read")
        return real(p)

    monkeypatch.setattr(applier_module, "read_file", written_during_read)
    summary = h.sync(code=6)
    assert summary["retrying"] == 1 and summary["failed"] == 0
    make_due(h)
    assert h.sync()["uploaded"] == 1
    assert path.read_bytes() == h.content(h.docs_by_path()[rel][0].name)[-path.stat().st_size :]
    h.converged()


# --- size bounds --------------------------------------------------------------------------


def test_files_at_and_around_the_size_bounds(h) -> None:
    """1 KiB and 100 MB are in, one byte less or more is not (sparse files)."""
    sizes = {"s/1023.txt": 1023, "s/1024.txt": 1024, "s/100MB.txt": 100_000_000}
    sizes["s/100MB+1.txt"] = 100_000_001
    for rel, size in sizes.items():
        p = h.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(f"{rel} starts with a line of text\n".encode())
            fh.truncate(size)
    summary = h.sync()
    assert (summary["uploaded"], summary["failed"], summary["retrying"]) == (2, 0, 0)
    by_path = h.docs_by_path()
    assert sorted(by_path) == ["s/100MB.txt", "s/1024.txt"]
    # At the limit the identity header is left out: header + 100 MB would be refused.
    big = by_path["s/100MB.txt"][0]
    assert (
        big.metadata["sha256"] == hashlib.sha256((h.root / "s/100MB.txt").read_bytes()).hexdigest()
    )
    assert set(h.rows()) == {"s/1024.txt", "s/100MB.txt"}  # the others are not tracked
    # A tracked file that shrinks below the bound keeps its document, and says why.
    doc = h.row("s/1024.txt")["document"]
    os.truncate(h.root / "s/1024.txt", 1023)
    summary = h.sync(code=6)
    assert summary["failed"] == 1
    row = h.row("s/1024.txt")
    assert row["document"] == doc and "min_size" in row["last_error"]


# --- names ------------------------------------------------------------------------------


def test_odd_names_the_whole_way(h) -> None:
    """Non-UTF-8 bytes are reported and skipped; 255-byte names and NFD/NFC sync."""
    bad = os.fsdecode(b"n/bad-\xff\xfe name.txt")
    (h.root / "n").mkdir()
    (h.root / bad).write_bytes(filler("bad", 2000))
    ascii_255 = "n/" + "a" * 251 + ".txt"
    multi_255 = "n/" + "é" * 125 + "x.txt"  # 250 + 5 bytes
    assert len(ascii_255.split("/")[1].encode()) == len(multi_255.split("/")[1].encode()) == 255
    nfc = unicodedata.normalize("NFC", "n/Café Ré.txt")
    for rel in (ascii_255, multi_255, "n/plain.txt"):
        h.write(rel)
    h.write(unicodedata.normalize("NFD", nfc))  # as macOS writes it
    summary = h.sync()
    assert summary["uploaded"] == 4 and summary["failed"] == 0
    assert any("not valid UTF-8; rename the file" in p for p in summary["problems"])
    assert set(docs_by_path(h)) == {ascii_255, multi_255, "n/plain.txt", nfc}

    # The same name in both forms side by side: one is synced, the other reported.
    h.write(nfc, filler(nfc, 2100, "the NFC twin"))
    summary = h.sync()
    assert any("normalise to the same path" in p for p in summary["problems"])
    assert len(docs_by_path(h)[nfc]) == 1
    # NFD renamed to NFC (same key): nothing to upload, nothing missing.
    os.unlink(h.root / unicodedata.normalize("NFD", nfc))
    summary = h.sync()
    assert summary["missing"] == 0 and summary["failed"] == 0
    [doc] = h.docs_by_path()[nfc]
    assert doc.metadata["sha256"] == hashlib.sha256((h.root / nfc).read_bytes()).hexdigest()
    # The bad name renamed to a good one: synced.
    os.rename(h.root / bad, h.root / "n/renamed.txt")
    assert h.sync()["uploaded"] == 1


def test_symlinks_are_never_followed(h) -> None:
    h.write("l/real.txt")
    os.symlink(h.root, h.root / "l" / "loop")  # a folder loop
    os.symlink("loop", h.root / "l" / "loop2")
    os.symlink("/etc/hostname", h.root / "l" / "outside.txt")  # out of the library
    outside = h.tmp / "outside-dir"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(filler("secret", 2000))
    os.symlink(outside, h.root / "l" / "outdir")
    os.symlink("real.txt", h.root / "l" / "alias.txt")  # inside: still not followed
    os.symlink("nowhere.txt", h.root / "l" / "dangling.txt")
    summary = h.sync()
    assert summary["uploaded"] == 1 and summary["failed"] == 0
    links = [p for p in summary["problems"] if "symbolic link not followed" in p]
    assert {p.split(":")[0] for p in links} >= {
        "l/loop",
        "l/outside.txt",
        "l/outdir",
        "l/alias.txt",
        "l/dangling.txt",
    }
    assert sorted(docs_by_path(h)) == ["l/real.txt"]
    # A tracked file replaced by a link is gone as a file: missing, document kept.
    doc = h.row("l/real.txt")["document"]
    os.rename(h.root / "l/real.txt", h.root / "l/real-moved.txt")
    os.symlink("real-moved.txt", h.root / "l/real.txt")
    summary = h.sync()
    assert summary["moved"] == 1 and doc not in {
        n for names in docs_by_path(h).values() for n in names
    }
    assert sorted(docs_by_path(h)) == ["l/real-moved.txt"]


def test_fifos_sockets_and_an_empty_library_in_the_daemon(tmp_path: Path, monkeypatch) -> None:
    """The daemon starts on an empty library, and a FIFO or a socket named like a
    document (an event for it, then a reconcile) is never opened: reading a
    FIFO would block the applier for good."""
    env = Env(tmp_path / "lib")
    env.apply_env(monkeypatch)
    try:
        env.init()
        assert env.cli_json("sync")["outcome"] == "ok"  # empty: nothing to do, all fine
        env.start()
        answer = env.cli_json("reconcile", "--wait")
        assert answer["ok"] and answer["reconcile"]["candidates"] == 0
        os.mkfifo(env.root / "pipe.txt")
        server = socket.socket(socket.AF_UNIX)
        server.bind(os.fspath(env.root / "sock.md"))
        (env.root / "sub").mkdir()
        os.mkfifo(env.root / "sub" / "pipe2.txt")
        write(env.root / "real.txt", "a real document")
        env.wait_converged()
        answer = env.cli_json("reconcile", "--force", "--wait")
        assert answer["ok"], answer
        assert set(env.file_states()) == {"real.txt"}
        # The FIFO replaced by a file with content: synced like any other.
        os.unlink(env.root / "pipe.txt")
        write(env.root / "pipe.txt", "now a regular file")
        env.wait_converged()
        assert env.status()["daemon"]["state"] == "running"
        assert env.stop() == 0, env.log()
        server.close()
    finally:
        env.close()


def test_empty_library_syncs_to_nothing(h) -> None:
    summary = h.sync()
    assert summary["outcome"] == "ok" and summary["uploaded"] == 0 and summary["problems"] == []
    status = json.loads(h.run("status", "--json").stdout)
    assert status["library"]["available"] is True and status["files"].get("indexed", 0) == 0
    assert h.run("verify").exit_code == 0
    h.write("first.txt")
    assert h.sync()["uploaded"] == 1
    h.converged()


# --- the state database ---------------------------------------------------------------


def _corrupt(db: Path, how: str, other: Path) -> None:
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    if how == "garbage":
        db.write_bytes(os.urandom(8192))
    elif how == "truncated":
        db.write_bytes(db.read_bytes()[:2048])
    elif how == "garbage in the middle":  # the first pages open fine; later reads fail
        data = db.read_bytes()
        half = len(data) // 2 // 4096 * 4096
        db.write_bytes(data[:half] + os.urandom(len(data) - half))
    elif how == "foreign sqlite":
        db.unlink()
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
    elif how == "zero bytes":
        db.write_bytes(b"")
    elif how == "another library's":
        shutil.copy(other, db)


@pytest.mark.parametrize(
    ("how", "code", "says"),
    [
        ("garbage", 78, "objlibd init --rebuild"),
        ("truncated", 78, "objlibd init --rebuild"),
        ("garbage in the middle", 78, "objlibd init --rebuild"),
        ("foreign sqlite", 78, "not an objlibd database"),
        ("zero bytes", 78, "is empty: run `objlibd init --rebuild`"),
        ("another library's", 4, "the database records"),
    ],
)
def test_corrupt_or_foreign_database_stops_every_command(h, tmp_path, how, code, says) -> None:
    """sync, status, verify and the daemon all stop with one clear line; the
    library and the store are left exactly as they were."""
    h.write("c/One.txt")
    h.sync()
    before = docs_by_path(h)
    db = h.state_dir / "objlibd.db"
    (tmp_path / "other").mkdir()
    other = Harness(tmp_path / "other", "local")
    assert other.init().exit_code == 0
    _corrupt(db, how, other.state_dir / "objlibd.db")
    env = {k: v for k, v in h.env.items() if v is not None}
    for args in (["sync"], ["status"], ["verify"], ["run"]):
        result = subprocess.run(
            [*CLI, *args], env=os.environ | env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
    assert docs_by_path(h) == before
    assert (h.root / "c/One.txt").exists()


# --- configuration ----------------------------------------------------------------------

# A value of the wrong TOML type for each kind of key.
WRONG_TYPE = {
    "int": "many",
    "size": "5 parsecs",
    "float": "half",
    "bool": "yes",
    "auto-bool": "sometimes",
    "str": 5,
    "path": 5,
    "duration": "soon",
    "globs": "**/*.txt",
    "choice": "nonsense",
}
# Values of the right type that cannot work.
WRONG_VALUE: dict[str, list[Any]] = {
    "library.root": [""],
    "library.include": [[], [""]],
    "library.exclude": [[""]],
    "library.min_size": [0, -1, "0 KiB", 1.5, "1.5.0MB"],
    "library.max_size": [0, 100_000_001, "101MB", "1 XB"],
    "store.base_url": ["localhost:8080", "ftp://example.com"],
    "store.max_requests_per_minute": [-1],
    "store.concurrency": [0, 1000],
    "store.operation_timeout": [0, "-5s"],
    "store.breaker_threshold": [0],
    "store.breaker_cooldown": [0],
    "store.retry_attempts": [0],
    "store.retry_initial": [0],
    "sync.max_missing_count": [-1],
    "sync.max_missing_fraction": [0, 1.5],
    "sync.prune_after": ["-1d"],
    "sync.retry_base": [0],
    "sync.retry_max": [0],
    "sync.retry_failed_after": [0],
    "daemon.settle_seconds": ["-1s"],
    "daemon.volume_check_interval": [0],
    "paths.state_dir": [""],
    "paths.runtime_dir": [""],
}


def _toml(data: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    out = []
    for section, keys in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(out) + "\n"


def _section_settings() -> list[config_module.Setting]:
    return [s for s in config_module.settings() if s.table in config_module.SECTIONS]


def _cases() -> list[tuple[str, Any]]:
    cases = []
    for setting in _section_settings():
        cases.append((setting.name, WRONG_TYPE[setting.kind.name]))
        cases += [(setting.name, v) for v in WRONG_VALUE.get(setting.name, [])]
    return cases


@pytest.mark.parametrize("backend", ["local"])
@pytest.mark.parametrize(("key", "value"), _cases(), ids=lambda x: repr(x)[:40])
def test_each_config_key_with_a_wrong_type_or_value(h, key, value) -> None:
    """Exit 78 naming the key; the library's state is not touched."""
    h.write("k/One.txt")
    h.sync()
    db = h.state_dir / "objlibd.db"
    good = h.config_path.read_text()
    data = tomllib.loads(good)
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value
    h.config_path.write_text(_toml(data))
    rows_before = sqlite3.connect(db).execute("SELECT * FROM files").fetchall()
    for command in (["status"], ["sync"]):
        result = h.run(*command)
        assert result.exit_code == 78, (command, result.output)
        assert key in result.stderr, result.stderr
    assert sqlite3.connect(db).execute("SELECT * FROM files").fetchall() == rows_before
    h.config_path.write_text(good)
    assert h.run("sync").exit_code == 0


def test_every_schema_key_has_a_wrong_type_case() -> None:
    assert {s.kind.name for s in _section_settings()} <= set(WRONG_TYPE)
    assert set(WRONG_VALUE) <= {s.name for s in _section_settings()}


def test_every_default_passes_its_own_checks() -> None:
    for setting in config_module.settings():
        if setting.default not in (None, config_module.REQUIRED):
            assert all(check.ok(setting.default) for check in setting.checks), setting.name


def test_config_limits_match_the_store() -> None:
    from objlib_daemon.stores import base

    assert base.MAX_DOCUMENT_BYTES == config_module.MAX_DOCUMENT_BYTES == 100_000_000
    assert config_module.LibraryConfig().max_size == base.MAX_DOCUMENT_BYTES


@pytest.mark.parametrize("backend", ["local"])
@pytest.mark.parametrize(
    ("fields", "says"),
    [('{ title = "{lesson|loud}" }', "loud"), ('{ title = "{nosuchgroup}" }', "nosuchgroup")],
)
def test_a_metadata_rule_naming_no_group_or_filter_stops_before_any_file(h, fields, says) -> None:
    """Exit 78 naming the bad placeholder, before a file is looked at (it
    failed each upload one by one before)."""
    h.write("k/One.txt")
    h.config_path.write_text(
        h.config_path.read_text()
        + f'\n[[metadata.rules]]\npattern = "^k/(?P<lesson>.+)$"\nfields = {fields}\n'
    )
    result = h.run("sync")
    assert result.exit_code == 78, result.output
    assert "[[metadata.rules]]" in result.stderr and says in result.stderr, result.stderr
    db = sqlite3.connect(h.state_dir / "objlibd.db")
    assert db.execute("SELECT count(*) FROM files").fetchone() == (0,)
