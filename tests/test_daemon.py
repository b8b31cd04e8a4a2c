"""The daemon end to end: `objlibd run` as a subprocess on real folders, real watchdog.

Each test waits for conditions with a deadline (daemon_helpers.wait_until),
and "converged" is read from the store itself. The in-process tests at the
end cover what a subprocess cannot show: the overflow hook, the worker's kick logic,
the watcher's filtering.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import Env, atomic_write, bind_mount_works, wait_until, write

from objlib_daemon.config import LibraryConfig
from objlib_daemon.daemon import answers
from objlib_daemon.daemon import scheduler as sched
from objlib_daemon.daemon.runner import Daemon
from objlib_daemon.daemon.watcher import OverflowHook, Watcher, WatchReport, check_watches
from objlib_daemon.daemon.worker import Worker
from objlib_daemon.library.eligibility import Eligibility
from objlib_daemon.timefmt import utc_iso


def _gemini_usable() -> bool:
    try:
        from objlib_daemon.stores.gemini import GeminiStore  # noqa: F401
    except Exception:
        return False
    return (Path(__file__).parent / "emulator.py").exists()


BACKENDS = [
    "local",
    pytest.param(
        "gemini",
        marks=pytest.mark.skipif(
            not _gemini_usable(), reason="gemini backend or tests/emulator.py not available yet"
        ),
    ),
]


@pytest.fixture
def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    envs: list[Env] = []

    def make(backend: str = "local", extra_config: str = "", name: str = "lib") -> Env:
        emulator = request.getfixturevalue("emulator") if backend == "gemini" else None
        env = Env(tmp_path / name, backend=backend, emulator=emulator, extra_config=extra_config)
        env.apply_env(monkeypatch)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


# --- convergence ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_kind_of_change_converges(make_env, backend: str) -> None:
    env = make_env(backend)
    write(env.root / "a.txt", "alpha")
    write(env.root / "notes" / "b.md", "beta")
    write(env.root / "tiny.txt", "too small to track", size=10)
    write(env.root / ".hidden" / "skip.txt", "excluded folder")
    env.init()
    env.start()
    env.wait_converged()
    breaker = env.status()["daemon"]["breaker"]  # the store's own health, each backend
    if backend == "local":
        assert breaker is None
    else:
        assert breaker["state"] == "closed"

    write(env.root / "c.txt", "gamma")  # create
    env.wait_converged()
    write(env.root / "a.txt", "alpha, edited in place")  # modify
    env.wait_converged()
    atomic_write(env.root / "notes" / "b.md", "beta, saved atomically")  # temp + rename
    env.wait_converged()
    assert "notes/b.md.tmp" not in env.file_states()

    os.rename(env.root / "c.txt", env.root / "c-renamed.txt")  # rename: a move, not a loss
    env.wait_converged()
    wait_until(lambda: "c.txt" not in env.file_states(), what="the old name forgotten")

    write(env.root / "dir" / "x.txt", "x in dir")
    write(env.root / "dir" / "sub" / "y.txt", "y in dir/sub")
    (env.root / "elsewhere").mkdir()
    env.wait_converged()
    os.rename(env.root / "dir", env.root / "elsewhere" / "dir2")  # move a folder
    env.wait_converged()
    wait_until(
        lambda: not any(p.startswith("dir/") for p in env.file_states()),
        what="the folder's old paths forgotten",
    )
    assert {"elsewhere/dir2/x.txt", "elsewhere/dir2/sub/y.txt"} <= set(env.file_states())

    (env.root / "a.txt").unlink()  # delete: marked missing, document kept until prune
    wait_until(lambda: env.file_states().get("a.txt") == "missing", what="a.txt missing")
    env.wait_converged()
    assert [d for d in env.documents() if d.get("path") == "a.txt"], "missing is not deleted"
    assert env.stop() == 0, env.log()


def test_burst_of_5000_files_and_sigterm_mid_drain(make_env) -> None:
    env = make_env()
    env.init()
    env.start()
    wait_until(lambda: env.status()["daemon"]["state"] == "running", what="running")
    paths = []
    for i in range(5000):
        path = env.root / "burst" / f"d{i % 10}" / f"f{i:04}.txt"
        write(path, f"burst file {i}", size=1100)
        paths.append(path.relative_to(env.root).as_posix())

    samples = []

    def drain_under_way() -> bool:
        (rows, distinct) = env.db("SELECT COUNT(*), COUNT(DISTINCT path) FROM pending_changes")[0]
        samples.append((rows, distinct))
        (indexed,) = env.db("SELECT COUNT(*) FROM files WHERE state = 'indexed'")[0]
        # Every event has reached the queue (under load the watcher may lag the
        # writes; what it had not read yet is the start reconcile's job, not this test's).
        (known,) = env.db(
            "SELECT COUNT(*) FROM (SELECT path FROM files WHERE state = 'indexed'"
            " UNION SELECT path FROM pending_changes)"
        )[0]
        return 100 <= indexed <= 4000 and known == 5000

    wait_until(drain_under_way, timeout=60, interval=0.02, what="the drain under way")
    assert all(rows == distinct and rows <= 5000 for rows, distinct in samples), samples
    stopped = time.monotonic()
    assert env.stop(timeout=30) == 0, env.log()
    assert time.monotonic() - stopped < 20, "stop took longer than shutdown_timeout"
    assert env.db("SELECT COUNT(*) FROM pending_changes WHERE state = 'inflight'")[0][0] == 0
    known = {p for (p,) in env.db("SELECT path FROM files WHERE state = 'indexed'")}
    known |= {p for (p,) in env.db("SELECT path FROM pending_changes")}
    assert set(paths) <= known, f"{len(set(paths) - known)} changes were lost at stop"

    env.start()
    env.wait_converged(timeout=120)
    assert env.db("SELECT COUNT(*) FROM files WHERE state = 'indexed'")[0][0] == 5000
    assert env.stop() == 0


def test_kill_9_during_drain_then_restart_converges(make_env) -> None:
    rng = random.Random(9)
    env = make_env()
    names = [env.root / "k" / f"d{i % 8}" / f"doc{i:03}.md" for i in range(300)]
    for i, path in enumerate(names):
        write(path, f"document {i}", size=rng.randrange(1100, 6000))
    env.init()
    for round_ in range(4):
        env.start(wait=False)
        journal = env.db("SELECT COUNT(*) FROM journal")[0][0] if round_ else 0
        wait_until(
            lambda j=journal: env.db("SELECT COUNT(*) FROM journal")[0][0] > j,
            timeout=30,
            interval=0.01,
            what="the first change applied",
        )
        time.sleep(rng.uniform(0.0, 0.25))  # a random moment inside the drain
        env.kill()
        # Changes while the daemon is dead must not be lost.
        for path in rng.sample(names, 40):
            write(path, f"edited in round {round_} {rng.random()}", size=rng.randrange(1100, 6000))
        for j in range(5):
            write(env.root / "k" / "new" / f"r{round_}-{j}.txt", f"new {round_} {j}")
        victim = rng.choice([p for p in names if p.exists()])
        os.rename(victim, victim.with_name(f"renamed-{round_}-{victim.name}"))
    env.start()
    env.wait_converged(timeout=60)
    docs = env.documents()
    paths = [d["path"] for d in docs]
    assert len(paths) == len(set(paths)), "a path has more than one document"
    assert env.stop() == 0


# --- unplug / replug ---------------------------------------------------------------------


def test_unplug_and_replug_with_a_bind_mount(make_env, tmp_path: Path) -> None:
    reason = bind_mount_works(tmp_path)
    if reason:
        pytest.skip(reason)
    env = make_env()
    drive = tmp_path / "drive"  # what the stick holds; env.root is its mount point
    write(drive / "keep.txt", "stays")
    write(drive / "edit.txt", "before unplug")
    write(drive / "gone.txt", "deleted while unplugged")
    subprocess.run(["mount", "--bind", drive, env.root], check=True)
    try:
        env.init()
        env.start()
        env.wait_converged()

        subprocess.run(["umount", env.root], check=True)
        status = wait_until(
            lambda: (s := env.status())["daemon"]["state"] == "volume unavailable" and s,
            timeout=6,
            what="the unmount noticed",
        )
        assert status["library"]["available"] is False
        write(drive / "edit.txt", "edited while unplugged")
        write(drive / "new.txt", "created while unplugged")
        (drive / "gone.txt").unlink()
        answer = env.cli("reconcile", "--wait", "--json")
        assert answer.returncode == 3, answer.stdout + answer.stderr  # VolumeUnavailable
        # Nothing may be marked missing while the volume is away (over a while).
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert "missing" not in env.file_states().values()
            time.sleep(0.1)

        mounted = time.time()
        subprocess.run(["mount", "--bind", drive, env.root], check=True)
        started = wait_until(
            lambda: (
                (
                    ((env.status()["daemon"]["last_reconcile"] or {}).get("started_at") or 0)
                    > mounted
                )
                and env.status()["daemon"]["last_reconcile"]["started_at"]
            ),
            timeout=10,
            interval=0.02,
            what="the reconcile after the mount",
        )
        latency = started - mounted
        print(f"mount -> reconcile started: {latency * 1000:.0f} ms")
        assert latency < 5.0
        env.wait_converged()
        states = env.file_states()
        assert states["gone.txt"] == "missing" and states["new.txt"] == "indexed"
        assert env.stop() == 0
    finally:
        env.close()
        subprocess.run(["umount", "-l", env.root], capture_output=True)


# --- the control socket, the lock, signals ----------------------------------------------


def test_control_socket_lock_cli_and_signals(make_env, tmp_path: Path) -> None:
    env = make_env()
    write(env.root / "one.txt", "one")
    env.init()

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    messages: list[str] = []

    def listen() -> None:  # what systemd does: read every datagram
        while True:
            try:
                messages.extend(notify.recv(4096).decode().splitlines())
            except OSError:
                return

    threading.Thread(target=listen, daemon=True).start()

    def received(prefix: str) -> bool:
        return any(m.startswith(prefix) for m in list(messages))

    proc = env.start(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000")
    wait_until(lambda: received("READY=1"), timeout=10, what="READY=1")
    wait_until(lambda: received("WATCHDOG=1"), timeout=10, what="WATCHDOG=1")
    assert any(m.startswith("STATUS=") for m in messages)
    env.wait_converged()

    # Private socket and folder.
    sock = env.socket()
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

    # One daemon per library.
    second = env.cli("run", timeout=30)
    assert second.returncode == 75  # busy: another objlibd holds the library
    assert f"pid {proc.pid}" in second.stderr, second.stderr

    # Status through the socket: the database's view plus the daemon's.
    live = env.cli_json("status")
    for key in ("library", "store", "files", "queue", "orphans", "missing", "last_sync"):
        assert key in live
    daemon = live["daemon"]
    assert daemon["state"] == "running"
    for key in ("activity", "inflight", "last_reconcile", "next_reconcile", "last_errors"):
        assert key in daemon

    # reconcile --force --wait returns after the pass (and its drain).
    before = time.time()
    answer = env.cli_json("reconcile", "--force", "--wait")
    assert answer["ok"] and answer["reconcile"]["outcome"] == "ok"
    assert answer["reconcile"]["force"] is True
    # Times in --json are ISO 8601 UTC (docs/json.md): they sort as they compare.
    assert utc_iso(int(before)) <= answer["reconcile"]["started_at"]
    assert answer["reconcile"]["started_at"] <= answer["reconcile"]["finished_at"]
    assert answer["drain"]["started_at"] >= answer["reconcile"]["finished_at"]
    assert env.status()["daemon"]["last_reconcile"]["finished_at"] <= time.time()

    # pause: changes wait in the queue; resume applies them.
    assert env.cli_json("pause")["state"] == "paused"
    write(env.root / "while-paused.txt", "queued, not applied")
    wait_until(
        lambda: env.db("SELECT 1 FROM pending_changes WHERE path = 'while-paused.txt'"),
        what="the change queued",
    )
    queued = env.cli_json("queue")["changes"]
    assert [c["path"] for c in queued] == ["while-paused.txt"]
    assert {"reason", "age", "attempts", "next_attempt_at", "last_error"} <= set(queued[0])
    assert "while-paused.txt" not in env.file_states()
    assert env.cli_json("resume")["state"] == "running"
    env.wait_converged()

    # SIGHUP: a bad config is refused and the running one kept; a good one applies.
    good = env.config_path.read_text()
    env.config_path.write_text(good.replace('settle_seconds = "0.3s"', 'settle_seconds = "soon"'))
    env.signal(signal.SIGHUP)
    wait_until(
        lambda: any(e["where"] == "reload" for e in env.status()["daemon"]["last_errors"]),
        what="the reload refused",
    )
    write(env.root / "after-bad-reload.txt", "still syncing")
    env.wait_converged()
    env.config_path.write_text(good.replace('settle_seconds = "0.3s"', 'settle_seconds = "0.2s"'))
    env.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in env.log(), what="the reload applied")

    # SIGTERM: STOPPING=1, exit 0, and the socket is gone.
    assert env.stop() == 0, env.log()
    wait_until(lambda: received("STOPPING=1"), timeout=5, what="STOPPING=1")
    assert not sock.exists()
    notify.shutdown(socket.SHUT_RDWR)
    notify.close()

    # Not on a terminal, the log is JSON lines (stdlib loggers' records too).
    events = [json.loads(line)["event"] for line in env.log().splitlines() if line.strip()]
    assert {"daemon started", "configuration reloaded", "stopped"} <= set(events)

    # Without a daemon: status from the database, reconcile inline, pause refused.
    assert env.cli_json("status")["daemon"] is None
    write(env.root / "inline.txt", "synced by the inline reconcile")
    inline = env.cli_json("reconcile", "--wait")
    assert inline["inline"] and inline["ok"]
    assert env.file_states()["inline.txt"] == "indexed"
    refused = env.cli("pause")
    assert refused.returncode == 7 and "no objlibd daemon is running" in refused.stderr


# --- in-process: overflow, kicks, watcher --------------------------------------------------


def test_overflow_warning_requests_a_reconcile() -> None:
    calls: list[int] = []
    hook = OverflowHook(lambda: calls.append(1)).install()
    try:
        logging.getLogger("watchdog.observers.inotify_buffer").warning(
            "Inotify event queue overflowed"
        )
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        logging.getLogger("watchdog.observers.inotify").warning("something else")
    finally:
        hook.remove()
    assert calls == [1, 1]


def test_overflow_in_a_running_daemon_reconciles_the_lost_changes(make_env) -> None:
    env = make_env()
    write(env.root / "seen.txt", "seen")
    env.init()
    daemon = Daemon(env.config(), answers.handle)
    daemon.start()
    try:
        wait_until(
            lambda: (daemon.state.last_reconcile or {}).get("outcome") == "ok", what="reconcile"
        )
        env.wait_converged()
        daemon.watcher.stop()  # from here on events are lost, as in an overflow
        write(env.root / "lost.txt", "no event ever reported this file")
        logging.getLogger("watchdog.observers.inotify_buffer").warning(
            "Inotify event queue overflowed"
        )
        wait_until(
            lambda: "overflow" in (daemon.state.last_reconcile or {}).get("why", []),
            what="a reconcile for the overflow",
        )
        env.wait_converged()
        assert answers.live_status(daemon)["daemon"]["watcher"]["overflows"] >= 1

        # The weekly audit job (report only by default).
        daemon.audit()
        assert daemon.state.last_audit["clean"] is True
        daemon.ws.store.delete(next(d["_name"] for d in env.documents()))  # behind our back
        daemon.audit()
        assert (
            daemon.state.last_audit["clean"] is False and daemon.state.last_audit["repair"] is None
        )
        assert answers.live_status(daemon)["daemon"]["last_audit"]["counts"]
    finally:
        assert daemon.stop(10)


def test_a_kick_is_never_lost() -> None:
    started: list[float] = []

    def body(_options: dict) -> None:
        started.append(time.monotonic())
        time.sleep(random.uniform(0, 0.004))

    worker = Worker("drain", body)
    worker.start()
    try:
        tickets: list[int] = []

        def kicker() -> None:
            for _ in range(50):
                tickets.append(worker.kick())
                time.sleep(random.uniform(0, 0.003))

        threads = [threading.Thread(target=kicker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for ticket in tickets:
            assert worker.wait(ticket, timeout=5), f"kick {ticket} never got its pass"
        # Passes coalesce kicks: far fewer passes than kicks, and no overlap.
        assert 1 <= len(started) <= len(tickets)
    finally:
        worker.close()
        assert worker.join(5)


def test_kicks_during_a_pass_cause_exactly_one_more_pass() -> None:
    in_pass, release = threading.Event(), threading.Event()
    passes: list[dict] = []

    def body(options: dict) -> None:
        passes.append(options)
        in_pass.set()
        assert release.wait(5)

    worker = Worker("reconcile", body)
    worker.start()
    try:
        worker.kick(why={"first"})
        assert in_pass.wait(5)
        last = max(worker.kick(force=True, why={w}) for w in ("a", "b", "c"))
        release.set()
        assert worker.wait(last, timeout=5), "a kick during a pass was lost"
        worker.close()
        assert worker.join(5)
        # One more pass for the three kicks, with their options merged.
        assert passes == [{"why": {"first"}}, {"force": True, "why": {"a", "b", "c"}}]
    finally:
        release.set()
        worker.close()


def test_a_worker_wakes_when_its_pass_said_it_is_due() -> None:
    """The drain's schedule is the queue's next due time: no kick needed then."""
    passes: list[float] = []

    def body(_options: dict) -> float | None:
        passes.append(time.time())
        return time.time() + 0.2 if len(passes) == 1 else None

    worker = Worker("drain", body)
    worker.start()
    try:
        worker.kick(at=time.time() + 0.1)  # a due time, not a kick now
        wait_until(lambda: len(passes) == 2, timeout=5, what="the pass at its due time")
    finally:
        worker.close()
        assert worker.join(5)


def test_socket_path_fits_sockaddr_un(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from objlib_daemon.config import Config
    from objlib_daemon.daemon.control import MAX_SOCKET_PATH, socket_path

    monkeypatch.setenv("OBJLIBD_RUNTIME_DIR", str(tmp_path / "run"))
    assert socket_path(Config()) == tmp_path / "run" / "objlibd.sock"
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    monkeypatch.setenv("OBJLIBD_RUNTIME_DIR", str(deep))
    path = socket_path(Config())
    assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
    assert path == socket_path(Config()), "server and client must agree"


class _Collect:
    def __init__(self) -> None:
        self.paths: dict[str, str] = {}
        self.folders: list[str] = []

    def add(self, path: str, reason: str = "event") -> None:
        self.paths[path] = reason

    def add_folder(self, folder: str) -> None:
        self.folders.append(folder)


# watchdog warns when `mkdir -p` races its own recursive watch setup; harmless.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_watcher_keys_filters_and_never_raises(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    collect = _Collect()
    gone: list[int] = []
    watcher = Watcher(
        root,
        Eligibility.from_config(LibraryConfig()),
        collect,  # type: ignore[arg-type]
        on_root_gone=lambda: gone.append(1),
    )
    watcher.start()
    try:
        write(root / "a.txt", "a")
        write(root / ".git" / "objects" / "x.txt", "inside an excluded folder")
        write(root / "pic.jpg", "not an included type")
        atomic_write(root / "b.md", "atomic")
        (root / "d").mkdir()
        write(root / "d" / "in.txt", "in d")
        wait_until(lambda: {"a.txt", "b.md", "d/in.txt"} <= set(collect.paths), what="events")
        os.rename(root / "d", root / "e")
        wait_until(lambda: {"d", "e"} <= set(collect.folders), what="both ends of the rename")
        wait_until(lambda: collect.paths.get("d/in.txt") == "moved_from", what="move source")
        assert not any(p.startswith(".git") or p.endswith(".jpg") for p in collect.paths)
        assert "b.md.tmp" not in collect.paths

        def boom(*_a: object, **_k: object) -> None:
            raise RuntimeError("handler bug")

        collect.add = boom  # type: ignore[method-assign]
        write(root / "c.txt", "c")
        wait_until(lambda: watcher.errors >= 1, what="the error counted")
        assert watcher.is_alive(), "an exception in the handler must not stop delivery"
        collect.add = _Collect.add.__get__(collect)  # type: ignore[method-assign]
        write(root / "after.txt", "after the error")
        wait_until(lambda: "after.txt" in collect.paths, what="delivery after an error")

        report = check_watches(root)
        assert report.watches == report.directories and not report.short
        assert "sysctl fs.inotify.max_user_watches" in report.advice()

        shutil.rmtree(root)  # the root itself going away is for the volume monitor
        wait_until(lambda: gone, what="the root's disappearance reported")
    finally:
        watcher.stop()


def test_supervisor_rebuilds_a_dead_watcher_and_a_watch_shortfall_is_reported(
    make_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from objlib_daemon.daemon import supervisor

    short = WatchReport(watches=3, directories=40, limit=8192)
    monkeypatch.setattr(supervisor, "check_watches", lambda _root: short)
    env = make_env()
    env.init()
    daemon = Daemon(env.config(), answers.handle)
    daemon.start()
    try:
        wait_until(
            lambda: (daemon.state.last_reconcile or {}).get("outcome") == "ok", what="reconcile"
        )
        wait_until(
            lambda: any("max_user_watches" in e["error"] for e in daemon.state.errors.entries()),
            what="the watch shortfall reported",
        )
        next_run = daemon.next_reconcile()
        assert next_run is not None and next_run <= time.time() + sched.LIMITED_RECONCILE_INTERVAL

        # An observer that died (as after an exception in watchdog) is rebuilt.
        observer = daemon.watcher._observer
        observer.stop()
        observer.join(5)
        assert not daemon.watcher.is_alive()
        daemon.supervise()
        assert daemon.watcher.is_alive()
        wait_until(
            lambda: "watcher restarted" in (daemon.state.last_reconcile or {}).get("why", []),
            what="a reconcile after the rebuild",
        )
        write(env.root / "after-rebuild.txt", "seen by the new observer")
        env.wait_converged()
    finally:
        assert daemon.stop(10)
