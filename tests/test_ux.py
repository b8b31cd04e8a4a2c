"""What a user sees (issue 15): failures, previews, explanations, progress, one interface."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from harness import Harness


def gemini_harness(tmp_path, emulator, store_extra: str = "") -> Harness:
    """An initialised library on the emulated Gemini store, with extra [store] keys."""
    h = Harness(tmp_path, "gemini", emulator)
    h.env["GEMINI_API_KEY"] = emulator.api_key
    assert h.init().exit_code == 0
    text = h.config_path.read_text()
    h.config_path.write_text(text.replace("[store]\n", "[store]\n" + store_extra, 1))
    return h


def test_failed_init_writes_nothing_and_a_retry_works(tmp_path):
    """Finding 1: a bad path left the config with that root; every later sync exited 4."""
    h = Harness(tmp_path, "local")
    result = h.run("init", "--library", str(tmp_path / "no such folder"))
    assert result.exit_code == 78, result.output
    assert not h.config_path.exists()
    assert not h.state_dir.exists()
    result = h.run("init", "--library", str(h.root))
    assert result.exit_code == 0, result.output
    assert str(h.root) in h.config_path.read_text()
    h.write("a.txt")
    assert h.sync()["new"] == 1


def test_breaker_storm_says_why_rows_wait_and_how_many_were_never_tried(tmp_path, emulator):
    """Finding 3: after a 503 storm the queue showed `attempts 0, last_error null`
    and the summary did not say most files were never tried."""
    from emulator import Fault

    h = gemini_harness(tmp_path, emulator, "breaker_threshold = 2\nbreaker_cooldown = 600\n")
    for i in range(6):
        h.write(f"b/File {i}.txt")
    emulator.add_fault(Fault(phase="start", status=503, times=None))
    result = h.run("sync", "--json")
    assert result.exit_code == 6, result.output
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "incomplete"
    assert summary["not_tried"] >= 4
    queue = json.loads(h.run("queue", "--json").stdout)["changes"]
    untried = [c for c in queue if c["attempts"] == 0]
    assert len(untried) == summary["not_tried"]
    assert all(c["last_error"].startswith("not tried: breaker open since 20") for c in untried)
    text = h.run("queue").stdout
    assert "waiting: not tried: breaker open since" in text
    status = h.run("status").stdout
    assert "not tried: breaker open since" in status
    assert "sync incomplete" in h.run("sync").stdout.splitlines()[0]


def test_status_names_a_running_one_shot_sync(tmp_path):
    """Finding 4: during a one-shot sync `status` said only `daemon: not running`."""
    from objlib_daemon.state.lock import library_lock

    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    assert "running (pid" not in h.run("status").stdout
    with library_lock(h.state_dir, "sync"):
        result = h.run("status")
        data = json.loads(h.run("status", "--json").stdout)
        busy = h.run("sync")
    assert f"daemon:    not running; sync running (pid {os.getpid()})" in result.stdout
    assert data["lock_holder"] == {"pid": os.getpid(), "what": "sync"}
    assert busy.exit_code == 75 and "sync, pid" in busy.stderr


def test_status_under_the_daemon_shows_its_drains(tmp_path, monkeypatch):
    """Finding 4: `last sync: never` after 300 uploads; old `error:` lines stayed."""
    from daemon_helpers import Env, wait_until

    env = Env(tmp_path / "d")
    env.apply_env(monkeypatch)
    env.init()
    env.start()
    try:
        (env.root / "one.txt").write_bytes(b"x" * 2000)
        wait_until(
            lambda: (env.status() or {}).get("files", {}).get("indexed") == 1,
            timeout=30,
            what="the file indexed",
        )
        wait_until(
            lambda: ((env.status() or {})["daemon"].get("last_drain") or {}).get("counts"),
            timeout=30,
            what="a drain that did something",
        )
        text = env.cli("status", check=True).stdout
        assert "last sync: never" not in text
        assert "last drain:" in text and "new 1" in text
    finally:
        assert env.stop() == 0
        env.close()


def test_a_clean_run_retires_the_errors_of_its_job():
    from objlib_daemon.daemon.state import ErrorLog

    errors = ErrorLog()
    errors.record("drain", "503 storm")
    errors.record("apply", "a.txt: refused")
    errors.record("reconcile", "volume gone")
    errors.clear("drain", "apply")
    assert [e["where"] for e in errors.entries()] == ["reconcile"]


def test_prune_is_previewed_and_reported_path_by_path(h):
    """Finding 5: the dry run said nothing about pruning, the real run printed only
    `pruned 1`, and --older-than without --prune-missing was ignored."""
    h.write("gone/Old Lecture.txt")
    h.write("kept.txt")
    h.sync()
    (h.root / "gone/Old Lecture.txt").unlink()
    assert h.sync()["missing"] == 1
    result = h.run("sync", "--older-than", "1s")
    assert result.exit_code == 2 and "--prune-missing" in result.output
    preview = h.run("sync", "--prune-missing", "--older-than", "0s", "--dry-run", "-v")
    assert preview.exit_code == 0, preview.output
    assert "pruned 1" in preview.stdout
    assert "  pruned     gone/Old Lecture.txt" in preview.stdout
    assert h.row("gone/Old Lecture.txt")["state"] == "missing"  # a preview changes nothing
    data = json.loads(
        h.run("sync", "--prune-missing", "--older-than", "0s", "--dry-run", "--json").stdout
    )
    assert {"outcome", "problems", "files"} <= set(data)
    assert {
        "path": "gone/Old Lecture.txt",
        "action": "pruned",
        "error": None,
        "moved_from": None,
    } in data["files"]
    real = h.run("sync", "--prune-missing", "--older-than", "0s", "-v")
    assert real.exit_code == 0, real.output
    assert "  pruned     gone/Old Lecture.txt" in real.stdout
    assert h.row("gone/Old Lecture.txt")["state"] == "pruned"


def test_a_rename_reads_old_to_new_in_dry_run_and_sync(h):
    """Finding 7: a rename showed as `new` + `moved` lines (dry run), `moved NEW` (sync)."""
    h.write("a/Talk.txt")
    h.sync()
    (h.root / "a/Talk.txt").rename(h.root / "a/Talk (2019).txt")
    preview = h.run("sync", "--dry-run", "-v").stdout
    assert "new 0, modified 0, moved 1" in preview
    assert "  moved      a/Talk.txt → a/Talk (2019).txt" in preview
    real = h.run("sync", "-v")
    assert real.exit_code == 0, real.output
    assert "  moved      a/Talk.txt → a/Talk (2019).txt" in real.stdout


def test_untracked_files_are_counted_with_a_pointer_to_why(h):
    """Finding 6: a too-small note, a .jpg, ~$lock.docx and .DS_Store appeared nowhere."""
    h.write("ok.txt")
    h.write("tiny.txt", b"too small")
    h.write("photo.jpg", size=4096)
    h.write("~$lock.docx", size=4096)
    h.write(".DS_Store", size=4096)
    summary = h.sync()
    assert summary["untracked"] == 4 and summary["new"] == 1
    text = h.run("sync").stdout
    assert "untracked 4" in text and "`objlibd why PATH`" in text
    assert json.loads(h.run("sync", "--dry-run", "--json").stdout)["untracked"] == 4


def test_why_explains_untracked_tracked_moved_and_queued_files(h):
    """Finding 6 and 8: why a file is not tracked, and the journal read back."""
    h.write("tiny.txt", b"too small")
    h.write("photo.jpg", size=4096)
    h.write("~$lock.docx", size=4096)
    h.write(".DS_Store", size=4096)
    h.write(".git/config.txt", size=4096)
    h.write("a/Talk.txt")
    h.sync()
    expected = {
        "tiny.txt": "smaller than library.min_size",
        "photo.jpg": "not a tracked format",
        "~$lock.docx": "excluded by library.exclude '**/~$*' (hidden file or OS litter)",
        ".DS_Store": "(hidden file or OS litter)",
        ".git/config.txt": "in folder .git/",
    }
    for rel, reason in expected.items():
        result = h.run("why", rel)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{rel}: not tracked: ") and reason in result.stdout
    (h.root / "a/Talk.txt").rename(h.root / "a/Talk (2019).txt")
    h.sync()
    data = json.loads(h.run("why", str(h.root / "a/Talk (2019).txt"), "--json").stdout)
    assert data["eligible"] and data["file"]["state"] == "indexed"
    assert data["verdict"].startswith("indexed: document ")
    history = {e["action"]: e for e in data["history"]}  # one transaction: either order
    assert set(history) == {"uploaded", "moved"}
    assert history["moved"]["detail"] == "from a/Talk.txt"
    assert data["history"][0]["at"].endswith("Z")
    old = h.run("why", "a/Talk.txt").stdout
    assert old.startswith("a/Talk.txt: no longer tracked: moved to a/Talk (2019).txt at 20")
    h.write("c/Queued.txt")
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(
            "INSERT INTO pending_changes (path, reason, gen, first_seen, last_seen, state,"
            " attempts, next_attempt_at, last_error, lane) VALUES"
            " ('c/Queued.txt', 'event', 1, 0, 0, 'queued', 2, 0, '503 Service Unavailable', 0)"
        )
    queued = h.run("why", "c/Queued.txt").stdout
    assert "in the queue (event, queued)" in queued and "waiting: 503 Service Unavailable" in queued
    assert h.run("why", "/elsewhere/x.txt").exit_code == 2


def test_the_journal_is_trimmed_to_its_documented_bound(h):
    from objlib_daemon.state.db import Database
    from objlib_daemon.state.models import JOURNAL_KEEP_DAYS

    h.write("a.txt")
    h.sync()
    with sqlite3.connect(h.state_dir / "objlibd.db") as conn:
        conn.execute(
            "INSERT INTO journal (at, path, action) VALUES (?, 'old.txt', 'uploaded')",
            (time.time() - (JOURNAL_KEEP_DAYS + 1) * 86400,),
        )
    h.sync()  # a sync trims
    with h.db() as conn:
        paths = {r[0] for r in conn.execute("SELECT path FROM journal")}
    assert paths == {"a.txt"}
    db = Database(h.state_dir / "objlibd.db")
    try:
        for i in range(5):
            h.write(f"n{i}.txt")
        h.sync()
        assert db.trim_journal(max_rows=3) > 0
        with h.db() as conn:
            assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 3
    finally:
        db.close()


def test_busy_and_no_daemon_have_their_own_exit_codes_and_json_errors(tmp_path):
    """Finding 10/11: exit 1 for expected cases; errors were plain text under --json."""
    from objlib_daemon.state.lock import library_lock

    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    with library_lock(h.state_dir, "daemon"):
        busy = h.run("sync", "--json")
    assert busy.exit_code == 75
    error = json.loads(busy.stdout)["error"]
    assert (error["code"], error["kind"]) == (75, "busy") and "pid" in error["message"]
    paused = h.run("pause")
    assert paused.exit_code == 7 and "no objlibd daemon" in paused.stderr
    error = json.loads(h.run("pause", "--json").stdout)["error"]
    assert (error["code"], error["kind"]) == (7, "no_daemon")
    usage = h.run("sync", "--json", "--older-than", "1d")
    assert usage.exit_code == 2 and json.loads(usage.stdout)["error"]["kind"] == "usage"


def test_a_sigtermed_sync_prints_its_summary_and_exits_130(tmp_path, emulator):
    """Finding 10: SIGTERM during `sync` exited 143 with no summary; Ctrl-C said `Aborted!`."""
    from daemon_helpers import CLI, wait_until
    from emulator import Fault

    h = gemini_harness(tmp_path, emulator, "concurrency = 1\n")
    for i in range(6):
        h.write(f"slow/File {i}.txt")
    emulator.add_fault(Fault(kind="latency", latency=0.5, phase="start", times=None))
    env = {**os.environ, **{k: v for k, v in h.env.items() if v is not None}}
    env.pop("GOOGLE_API_KEY", None)
    proc = subprocess.Popen(
        [*CLI, "sync", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_until(
        lambda: any(r.phase == "start" for r in emulator.requests), timeout=30, what="an upload"
    )
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    summary = json.loads(out)
    assert summary["outcome"] == "interrupted"
    assert summary["not_tried"] >= 1 and summary["uploaded"] < 6
    assert b"stopping after the files in flight" in err


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run objlibd with stderr on a real pseudo-terminal; (exit code, stdout, terminal)."""
    from daemon_helpers import CLI

    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


def test_progress_on_a_terminal_counts_rate_and_eta_and_is_quiet_otherwise(h):
    """Finding 9: only the upload phase had a bar; scan, verify, the dry run showed nothing."""
    for i in range(6):
        h.write(f"p/File {i}.txt")
    env = {**os.environ, **{k: v for k, v in h.env.items() if v is not None}}
    env.pop("GOOGLE_API_KEY", None)
    code, out, tty = run_on_a_terminal(["sync"], env)
    assert code == 0, (out, tty)
    assert "\rscanning: " in tty and "\rsyncing: 6/6 files, " in tty
    assert "/s, " in tty and ", ETA " in tty  # rate and ETA while it runs
    assert out.startswith("sync ok: new 6")  # the summary stays on stdout
    code, _, tty = run_on_a_terminal(["sync", "--dry-run"], env)
    assert code == 0 and "looking (dry run): " in tty
    code, _, tty = run_on_a_terminal(["verify"], env)
    assert code == 0 and "verifying (listing the store): " in tty
    code, out, tty = run_on_a_terminal(["-q", "sync"], env)
    assert code == 0 and out == "" and "syncing" not in tty
    piped = h.run("sync")  # not a terminal: the summary only
    assert "syncing" not in piped.stderr and "scanning" not in piped.stderr


def test_config_show_says_where_each_value_came_from_and_typos_get_a_guess(tmp_path):
    """Finding 15: no `config show`; a mistyped key got no "did you mean"."""
    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    data = json.loads(h.run("config", "show", "--json").stdout)["values"]
    assert data["sync.retry_base"] == {"value": 1.0, "source": "file"}
    assert data["sync.retry_max"]["source"] == "default"
    assert data["paths.state_dir"] == {
        "value": str(h.state_dir),
        "source": "env OBJLIBD_STATE_DIR",
    }
    text = h.run("config", "show").stdout
    assert "library.root" in text and "(file)" in text and "(default)" in text
    h.config_path.write_text(h.config_path.read_text().replace("retry_base", "retry_bse"))
    result = h.run("status")
    assert result.exit_code == 78
    assert "did you mean: retry_bse → retry_base?" in result.stderr


def test_status_watch_redraws_until_ctrl_c(tmp_path):
    """Finding 9: no live view of a running daemon (`status --watch`)."""
    from daemon_helpers import CLI

    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    env = {**os.environ, **{k: v for k, v in h.env.items() if v is not None}}
    proc = subprocess.Popen(
        [*CLI, "status", "--watch", "0.1"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    looks = 0
    for line in proc.stdout:
        looks += line.startswith("daemon:")
        if looks == 3:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert looks == 3 and proc.returncode == 0


JSON_DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def documented_shapes() -> dict[str, set[str]]:
    """`## `objlibd CMD`` heading → the keys its `Keys:` line lists."""
    shapes: dict[str, set[str]] = {}
    command = None
    for line in JSON_DOC.read_text().splitlines():
        if heading := re.match(r"^## `objlibd ([^`]+)`", line):
            command = heading.group(1)
        elif line.startswith("Keys: ") and command:
            shapes[command] = set(re.findall(r"`([^`]+)`", line))
    return shapes


def times_of(data: object, key: str = "") -> list[object]:
    """Every value the contract says is a time (by key), anywhere in `data`."""
    from objlib_daemon.cli.common import TIME_KEYS

    if isinstance(data, dict):
        return [t for k, v in data.items() for t in times_of(v, k)]
    if isinstance(data, list):
        return [t for v in data for t in times_of(v, key)]
    return [data] if key.endswith("_at") or key in TIME_KEYS else []


def test_every_json_shape_is_the_documented_one(tmp_path):
    """Finding 11: `--json` differed by command and mode, times were epoch floats,
    errors were text, seven commands had `--json` with no help."""
    import click

    from objlib_daemon.cli import cli

    h = Harness(tmp_path, "local")
    h.write("Notes/Free Will.txt", b"free will and volition " * 100)
    h.write("gone.txt")
    shapes = documented_shapes()
    args = {name: name.split() for name in shapes}
    args["init"] = ["init", "--library", str(h.root)]
    args["why PATH"] = ["why", "Notes/Free Will.txt"]
    args["search QUERY"] = ["search", "volition"]
    h.config_path.write_text(f'[library]\nroot = "{h.root}"\n[sync]\nretry_base = "1s"\n')
    order = ["init", "sync", *[name for name in shapes if name not in ("init", "sync")]]
    for name in order:
        if name == "sync --dry-run":
            (h.root / "gone.txt").unlink(missing_ok=True)
        result = h.run(*args[name], "--json")
        assert result.exit_code in (0, 1), (name, result.output)  # doctor: 1 on findings
        data = json.loads(result.stdout)
        assert set(data) == shapes[name], (name, set(data) ^ shapes[name])
        for value in times_of(data):
            assert value is None or ISO.match(str(value)), (name, value)
    status = json.loads(h.run("status", "--json").stdout)
    assert ISO.match(status["generated_at"]) and ISO.match(status["last_sync"]["at"])
    for failing in (["pause"], ["resume"], ["sync", "--bogus"]):
        result = h.run(*failing, "--json")
        error = json.loads(result.stdout)["error"]
        assert set(error) == {"code", "kind", "message"} and error["code"] == result.exit_code
    ctx = click.Context(cli)
    missing_help = []
    stack: list[tuple[str, click.Command]] = [("objlibd", cli)]
    while stack:
        name, command = stack.pop()
        if isinstance(command, click.Group):
            subs = command.list_commands(ctx)
            stack += [(f"{name} {s}", command.get_command(ctx, s)) for s in subs]
        elif any("--json" in p.opts and not getattr(p, "help", None) for p in command.params):
            missing_help.append(name)
    assert missing_help == []


def test_search_reads_well_with_claims_tied_to_numbered_hits(h):
    """Finding 12: snippets showed the injected header, no scores, no `[1]` markers;
    `search ""` printed `no matches` and exited 0."""
    rel = "Courses/OPAR/OPAR - Lesson 03 - Volition.txt"
    h.write(rel, b"Volition is the choice to focus. " * 80)
    h.sync()
    result = h.run("search", "volition")
    assert result.exit_code == 0, result.output
    text = result.stdout
    hits = text.split("\n\n", 1)[-1]  # after the answer (the emulator's quotes anything)
    assert f"[1] {rel}  (score " in hits
    assert "Title:" not in hits and "Course:" not in hits
    snippet = next(
        line for line in hits.splitlines() if line.startswith("    ") and "topics:" not in line
    )
    assert snippet.startswith("    Volition is the choice") and snippet.endswith("…")
    assert "**" not in text
    data = json.loads(h.run("search", "volition", "--json").stdout)
    assert data["hits"][0]["score"] is not None
    if h.backend == "gemini":  # the answer's claims carry the numbers of their hits
        assert data["citations"] and data["citations"][0]["hits"] == [1]
        assert text.splitlines()[0].endswith("[1]")
    empty = h.run("search", "  ")
    assert empty.exit_code == 2 and "say what to look for" in empty.output


def test_a_suggested_store_command_works_when_pasted(emulator):
    """Finding 13: `objlibd store create My Library` (unquoted) was suggested."""
    from objlib_daemon.stores.base import StoreNotFound
    from objlib_daemon.stores.gemini import GeminiAdmin

    try:
        GeminiAdmin(emulator.api_key, emulator.url).resolve("My Library")
    except StoreNotFound as exc:
        assert "`objlibd store create 'My Library'`" in str(exc)
    else:
        raise AssertionError("no such store")
