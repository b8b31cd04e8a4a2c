"""The hostile-conditions harness (issue 6): crashes, unplugs, faults and edits, then invariants.

`objlibd run` runs as a subprocess (daemon_helpers.Env) against the Gemini
emulator in this process, on a library generated from the real library's
paths. A seeded schedule of rounds mixes user edits (create, modify in place,
atomic save, rename, folder move, delete) with faults:

- kill -9 at random points, and in two precise windows: between a finished
  upload and its commit (the emulator holds the operation poll of an upload
  whose document already exists, or holds the finalize itself so the
  document lands after the death), and between the upload of a replacement
  and the delete of the old document (the emulator holds the DELETE); also
  during start-up and right after a reconcile request;
- SIGTERM in the middle of a drain (exit 0, nothing lost);
- unplug/replug by bind mount: while idle, just after a reconcile request (in
  the scan), while an upload is held, quick flaps during a drain of deletes and
  edits, another stick mounted in its place, and a daemon started with no drive;
- emulator faults: 429 storms with RetryInfo, 5xx, connection resets, latency
  spikes, an operation that never finishes, a finalize that creates the
  document then answers 503, a 404 on delete (the delete happened, its answer
  was lost), and a spurious 404 on delete (the document stays);
- a watchdog overflow (the daemon is stopped with SIGSTOP while 17,000 files
  appear, so the kernel's inotify queue overflows, with real edits among them).

After every few rounds comes a quiet period (faults cleared, drive in,
daemon up) and the invariants of docs/design.md are checked against the store
itself, the database and this harness's own record of what was on the drive
and when the drive was away:

- every eligible file has exactly one live document of ours whose `sha256`
  matches, and its row says indexed with that document;
- every other document of ours belongs to a file marked missing, or is a
  recorded orphan (those are all that is left to delete);
- no `missing` journal entry names a path that was on the drive at that
  instant, or falls in a window where the drive was away;
- `objlibd verify --json` finds no drift.

Nothing waits a fixed time for the daemon: convergence is polled against a
deadline. The daemon gets no help either: no reconcile is requested in a quiet
period, so a change the watcher lost and the daemon did not find on its own
counts as lost.

`run_soak(SoakOptions(...))` returns `Figures`; `python tests/soak.py --help`
runs it from the command line (`make soak`). The state-dir-disk-full scenario
is `disk_full_scenario` (its own test: it needs a tmpfs as the state dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_helpers import (  # noqa: E402
    USER_NAMESPACE,
    Env,
    bind_mount_works,
    is_mounted,
    library_files,
    mount_bind,
    unmount,
    user_namespace_works,
    wait_until,
)
from emulator import Fault, GeminiEmulator  # noqa: E402
from harness import real_paths  # noqa: E402

from objlib_daemon.daemon.control import request  # noqa: E402
from objlib_daemon.library.volume import write_marker  # noqa: E402

# Where a kill -9 or an unplug is placed (the names in Figures.kill_points and
# .unplug_points). Each kind of these (and of API_FAULTS) is scheduled once, in
# a shuffled order, before the schedule turns random, so that even a short run
# meets every one of them.
KILL_POINTS = (
    "random",
    "upload->commit",
    "upload landing after death",
    "replace->delete",
    "start-up",
    "reconcile",
    "mid-upload",
)
UNPLUG_POINTS = (
    "idle",
    "scan",
    "upload",
    "flaps",
    "other stick",
    "daemon started without the drive",
)
# The API faults added between rounds (Figures.faults), scheduled the same way.
API_FAULTS = (
    "429",
    "5xx",
    "reset",
    "latency",
    "never_done",
    "finalize_then_503",
    "404_delete",
    "spurious_404_delete",
)

# inotify's default queue holds 16,384 events; each new file is at least two
# (create, close), so this many files overflow it while the reader is stopped.
OVERFLOW_FILES = 17_000


def inotify_watches(pid: int) -> int:
    """How many inotify watches process `pid` holds (Linux /proc)."""
    total = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                        total += sum(1 for line in fh if line.startswith("inotify wd:"))
    return total


# --- the emulator, quiet about killed clients -------------------------------------------


class SoakEmulator(GeminiEmulator):
    """The emulator, silent about connections reset by a client killed mid-request."""

    def start(self) -> SoakEmulator:
        super().start()
        # A client killed mid-request resets its connection: expected here, not news.
        assert self._server is not None
        self._server.handle_error = lambda _request, _address: None  # type: ignore[method-assign]
        return self


# --- the user's side: the drive and what was on it when --------------------------------


def content(path: str, version: int, rng: random.Random) -> bytes:
    """A distinct text body per (path, version); mostly small, sometimes large."""
    size = rng.randint(1100, 6000) if rng.random() > 0.04 else rng.randint(100_000, 400_000)
    head = f"{path}\nversion {version} {rng.getrandbits(64):016x}\n".encode()
    line = b"the virtue of reason and the nature of concepts.\n"
    return (head + line * (size // len(line) + 1))[:size]


class UserLibrary:
    """The files on the drive, edited at random; remembers when each path surely existed.

    A path is surely present from just after the operation that made it until
    just before the operation that removed it. A `missing` mark inside such
    an interval is false.
    """

    def __init__(self, drive: Path, names: list[str], rng: random.Random) -> None:
        self.drive = drive
        self.rng = rng
        self.pool = [unicodedata.normalize("NFC", n) for n in names]
        rng.shuffle(self.pool)
        self.files: dict[str, int] = {}  # present path -> version
        self.since: dict[str, float] = {}  # present path -> surely present from
        self.intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.edits: Counter[str] = Counter()
        self.gone: dict[str, bytes] = {}  # deleted path -> its last content
        self._n = 0

    # --- bookkeeping ----------------------------------------------------------------

    def _appeared(self, path: str, at: float) -> None:
        self.since[path] = at

    def _vanished(self, path: str, at: float) -> None:
        start = self.since.pop(path, None)
        if start is not None:
            self.intervals[path].append((start, at))

    def present_at(self, path: str, at: float) -> bool:
        start = self.since.get(path)
        if start is not None and start < at:
            return True
        return any(s < at < e for s, e in self.intervals.get(path, ()))

    def _new_name(self) -> str:
        while self.pool:
            name = self.pool.pop()
            if name not in self.files and not (self.drive / name).exists():
                return name
        self._n += 1
        return f"Extra/Extra note {self._n}.txt"

    def _write(self, path: str, data: bytes) -> None:
        target = self.drive / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    # --- edits ----------------------------------------------------------------------

    def create(self, path: str | None = None) -> str:
        path = path or self._new_name()
        self._write(path, content(path, 1, self.rng))
        self.files[path] = 1
        self._appeared(path, time.time())
        self.edits["create"] += 1
        return path

    def modify(self, path: str) -> None:
        """In place: truncate and rewrite, as most programs save."""
        self.files[path] += 1
        self._write(path, content(path, self.files[path], self.rng))
        self.edits["modify"] += 1

    def atomic_save(self, path: str) -> None:
        """What editors do: a temp file next to it, renamed over the original."""
        self.files[path] += 1
        tmp = self.drive / (path + ".tmp")
        tmp.write_bytes(content(path, self.files[path], self.rng))
        os.replace(tmp, self.drive / path)
        self.edits["atomic_save"] += 1

    def rename(self, path: str) -> str:
        new = self._new_name()
        (self.drive / new).parent.mkdir(parents=True, exist_ok=True)
        before = time.time()
        os.rename(self.drive / path, self.drive / new)
        after = time.time()
        self._vanished(path, before)
        self.files[new] = self.files.pop(path)
        self._appeared(new, after)
        self.edits["rename"] += 1
        return new

    def move_folder(self) -> str | None:
        folders = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        if not folders:
            return None
        folder = self.rng.choice(folders)
        self._n += 1
        parent, _, base = folder.rpartition("/")
        if self.rng.random() < 0.5 or not parent:
            new = f"Moved {self._n}/{base}"  # to another top-level folder
        else:
            new = f"{parent}/Moved {self._n} - {base}"
        if (self.drive / new).exists():
            return None
        (self.drive / new).parent.mkdir(parents=True, exist_ok=True)
        moving = [p for p in self.files if p.startswith(folder + "/")]
        before = time.time()
        os.rename(self.drive / folder, self.drive / new)
        after = time.time()
        for p in moving:
            q = new + p[len(folder) :]
            self._vanished(p, before)
            self.files[q] = self.files.pop(p)
            self._appeared(q, after)
        self.edits["move_folder"] += 1
        return new

    def delete(self, path: str) -> None:
        self.gone[path] = (self.drive / path).read_bytes()
        before = time.time()
        (self.drive / path).unlink()
        self._vanished(path, before)
        del self.files[path]
        self.edits["delete"] += 1

    def restore(self) -> str | None:
        """A deleted file comes back: as it was (restored without upload while
        only missing), or changed; after a prune it is new again."""
        candidates = sorted(p for p in self.gone if p not in self.files)
        if not candidates:
            return None
        path = self.rng.choice(candidates)
        data = self.gone.pop(path)
        if (self.drive / path).exists():
            return None
        self.files[path] = 1
        if self.rng.random() < 0.4:
            data = content(path, 99, self.rng)
        self._write(path, data)
        self._appeared(path, time.time())
        self.edits["restore"] += 1
        return path

    def random_edit(self, *, deletes: bool = True) -> str:
        weights = {
            "create": 20,
            "modify": 25,
            "atomic_save": 20,
            "rename": 12,
            "move_folder": 4,
            "delete": 18 if deletes else 0,
            "restore": 5,
        }
        if len(self.files) < 20:
            weights = {"create": 1}
        kind = self.rng.choices(list(weights), list(weights.values()))[0]
        if kind == "create":
            self.create()
        elif kind == "move_folder":
            if self.move_folder() is None:
                self.create()
        elif kind == "restore":
            if self.restore() is None:
                self.create()
        else:
            path = self.rng.choice(sorted(self.files))
            getattr(self, kind)(path)
        return kind


# --- figures ----------------------------------------------------------------------------


@dataclass
class Figures:
    seed: int = 0
    seconds: float = 0.0
    files_at_start: int = 0
    files_at_end: int = 0
    rounds: int = 0
    runs: int = 0  # daemon starts
    kills: int = 0
    kill_points: Counter[str] = field(default_factory=Counter)
    sigterms: int = 0
    unplugs: int = 0
    unplug_points: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # rules added, by kind
    fault_hits: int = 0  # requests the emulator answered with a fault
    overflows: int = 0  # inotify queue overflows the daemon reported
    prunes: int = 0  # `sync --prune-missing` passes between rounds
    pruned: int = 0  # documents of missing files they deleted
    edits: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    duplicates_left: int = 0
    changes_lost: int = 0
    false_missing_marks: int = 0
    missing_marks: int = 0
    orphans_left: int = 0
    longest_convergence: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data = {k: dict(v) if isinstance(v, Counter) else v for k, v in data.items()}
        data["faults_injected"] = self.faults_injected
        data["edits_applied"] = sum(self.edits.values())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figures:
        """Back from as_dict() (figures.json): how a soak run in another process reports."""
        names = {f.name for f in fields(cls)}
        # Every mapping among the fields is a Counter (as_dict made them dicts).
        values = {
            k: Counter(v) if isinstance(v, dict) else v for k, v in data.items() if k in names
        }
        return cls(**values)

    def summary(self) -> str:
        d = self.as_dict()
        keys = [
            "seconds",
            "runs",
            "kills",
            "sigterms",
            "unplugs",
            "faults_injected",
            "fault_hits",
            "overflows",
            "prunes",
            "pruned",
            "edits_applied",
            "checks",
            "duplicates_left",
            "changes_lost",
            "false_missing_marks",
            "missing_marks",
            "orphans_left",
        ]
        lines = [
            ", ".join(f"{k} {round(d[k], 1) if isinstance(d[k], float) else d[k]}" for k in keys)
        ]
        lines.append(f"violations {len(self.violations)}")
        for name in ("kill_points", "unplug_points", "faults", "edits"):
            lines.append(f"{name}: {dict(sorted(d[name].items()))}")
        lines += [f"  VIOLATION {v}" for v in self.violations[:50]]
        return "\n".join(lines)


@dataclass
class SoakOptions:
    work: Path
    seed: int = 1
    files: int = 120  # initial library size (a sample of the real paths)
    kills: int = 20
    unplugs: int = 10  # 0, or no root: no unplugs
    sigterms: int = 2
    overflows: int = 1
    rounds_per_check: int = 3
    max_seconds: float = 600.0  # no new round after this; the last check still runs
    quiet_timeout: float = 60.0
    verbose: bool = False


# --- the run ----------------------------------------------------------------------------


class SoakEnv(Env):
    """Env with the knobs that keep a soak moving: short retries, timeouts and cooldowns."""

    def config_text(self) -> str:
        text = super().config_text()
        text = text.replace(
            "requests_per_minute = 60000\n",
            "requests_per_minute = 60000\n"
            'operation_timeout = "3s"\n'
            "retry_attempts = 3\n"
            'retry_initial = "0.2s"\n'
            'breaker_cooldown = "2s"\n',
        )
        return text + 'retry_max = "4s"\n'


class Soak:
    def __init__(self, opts: SoakOptions, log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.say = log or (lambda _m: None)
        self.fig = Figures(seed=opts.seed)
        self.t0 = time.monotonic()
        opts.work.mkdir(parents=True, exist_ok=True)
        self.emulator = SoakEmulator(clock=time.time, seed=opts.seed).start()
        self.env = SoakEnv(opts.work / "env", backend="gemini", emulator=self.emulator)
        self.mount_ok = opts.unplugs > 0 and bind_mount_works(opts.work) is None
        self.drive = opts.work / "drive" if self.mount_ok else self.env.root
        self.drive.mkdir(parents=True, exist_ok=True)
        self.user = UserLibrary(self.drive, real_paths(), self.rng)
        self.mounted = False  # the drive is at env.root (always, without mounts)
        self.away_since: float | None = None
        self.away: list[tuple[float, float]] = []  # windows with no drive at the root
        self.journal_seen = 0
        self.rules: list[Fault] = []
        self.overflow_attempts = 0
        self.order: dict[tuple[str, ...], list[str]] = {}  # see pick()
        self._saved_env = {k: os.environ.get(k) for k in self._env_keys()}
        for key in self._env_keys():  # the test side resolves the daemon's socket
            os.environ[key] = self.env.env[key]

    @staticmethod
    def _env_keys() -> tuple[str, ...]:
        return ("OBJLIBD_CONFIG", "OBJLIBD_STATE_DIR", "OBJLIBD_RUNTIME_DIR")

    def log(self, message: str) -> None:
        if self.opts.verbose:
            self.say(f"[{time.monotonic() - self.t0:7.1f}s] {message}")

    def violation(self, message: str) -> None:
        self.fig.violations.append(f"check {self.fig.checks}: {message}")
        self.say(f"VIOLATION: {message}")

    # --- the drive ------------------------------------------------------------------

    def plug(self, source: Path | None = None) -> None:
        if not self.mount_ok or self.mounted:
            return
        before = time.time()
        mount_bind(source or self.drive, self.env.root)
        if source is None:
            self.mounted = True
            if self.away_since is not None:
                self.away.append((self.away_since, before))
                self.away_since = None

    def unplug(self) -> None:
        if not self.mount_ok:
            return
        unmount(self.env.root)
        if self.mounted:
            self.mounted = False
            self.away_since = time.time()

    # --- the daemon -----------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        self.fig.runs += 1
        self.env.start(wait=wait)

    def alive(self) -> bool:
        return self.env.proc is not None and self.env.proc.poll() is None

    def ensure_running(self) -> None:
        if self.env.proc is not None and self.env.proc.poll() not in (None, 0, -9, -15):
            self.violation(f"the daemon exited by itself with {self.env.proc.returncode}")
        if not self.alive():
            self.start()

    def kill(self, point: str) -> None:
        self.env.kill()
        self.fig.kills += 1
        self.fig.kill_points[point] += 1
        self.log(f"kill -9 #{self.fig.kills} ({point})")

    def status(self) -> dict[str, Any]:
        return self.env.status() or {}

    def ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return request(self.env.config(), message, timeout=10)
        except Exception:
            return None

    def pick(self, kinds: tuple[str, ...], seen: Counter[str]) -> str:
        """The first kind not met yet in this run's shuffled order of `kinds`, else any.

        "Not met" is read from the figures, not from what was scheduled: a
        point that fell back (its held request never came, so the kill counted
        as "random") is scheduled again until it really happened.
        """
        if kinds not in self.order:
            self.order[kinds] = self.rng.sample(kinds, len(kinds))
        for kind in self.order[kinds]:
            if not seen[kind]:
                return kind
        return self.rng.choice(kinds)

    # --- faults ---------------------------------------------------------------------

    def add_fault(self, name: str, fault: Fault) -> Fault:
        self.fig.faults[name] += 1
        self.rules.append(fault)
        return self.emulator.add_fault(fault)

    def clear_faults(self) -> None:
        """No new faults; a request still held by a latency fault is let finish first."""
        held = max((f.latency for f in self.rules if f.kind == "latency" and f.hits), default=0)
        self.fig.fault_hits += sum(f.hits for f in self.rules)
        self.rules.clear()
        self.emulator.clear_faults()
        self.emulator.indexing_delay = 0.0
        time.sleep(held)

    def random_fault(self) -> None:
        rng = self.rng
        kind = self.pick(API_FAULTS, self.fig.faults)
        where = rng.choice(
            [
                {"phase": "start"},
                {"phase": "finalize"},
                {"method": "GET"},
                {"method": "DELETE"},
                {},
            ]
        )
        if kind == "429":
            fault = Fault(
                kind="retry_info",
                retry_delay=rng.uniform(0.2, 1.5),
                times=rng.randint(3, 20),
                **where,
            )
        elif kind == "5xx":
            fault = Fault(status=rng.choice([500, 502, 503, 504]), times=rng.randint(1, 8), **where)
        elif kind == "reset":
            fault = Fault(kind="reset", times=rng.randint(1, 3), **where)
        elif kind == "latency":
            fault = Fault(kind="latency", latency=rng.uniform(0.3, 2.0), times=rng.randint(1, 4))
        elif kind == "never_done":
            fault = Fault(phase="start", kind="never_done", times=1)
        elif kind == "finalize_then_503":
            fault = Fault(kind="finalize_then_503", times=1)
        elif kind == "404_delete":  # the delete happened, its answer was lost
            fault = Fault(kind="delete_then_404", times=1)
        else:  # the answer says gone, the document stays
            fault = Fault(kind="spurious_404_delete", times=rng.randint(1, 3))
        self.add_fault(kind, fault)

    # --- edits ----------------------------------------------------------------------

    def edits(self, n: int, *, deletes: bool = True) -> None:
        for _ in range(n):
            self.user.random_edit(deletes=deletes)
            if self.rng.random() < 0.3:
                time.sleep(self.rng.uniform(0.0, 0.4))

    def indexed_path(self) -> str | None:
        rows = self.env.db("SELECT path FROM files WHERE state = 'indexed' ORDER BY path")
        present = [p for (p,) in rows if p in self.user.files]
        return self.rng.choice(present) if present else None

    # --- setup ----------------------------------------------------------------------

    def setup(self) -> None:
        for _ in range(self.opts.files):
            self.user.create()
        self.user.edits.clear()
        self.fig.files_at_start = len(self.user.files)
        if self.mount_ok:
            self.env.root.mkdir(parents=True, exist_ok=True)
            self.plug()
        else:
            self.mounted = True
        self.env.init()
        self.start()
        self.quiet_check("initial sync", timeout=max(self.opts.quiet_timeout, 120.0))

    # --- kill scenarios ----------------------------------------------------------------

    def _await_hit(self, fault: Fault, timeout: float = 8.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fault.hits:
                return True
            if not self.alive():
                return False
            time.sleep(0.01)
        return False

    def kill_scenario(self) -> None:
        rng = self.rng
        point = self.pick(KILL_POINTS, self.fig.kill_points)
        if point == "random":
            self.edits(rng.randint(1, 6))
            time.sleep(rng.uniform(0.0, 1.5))
            self.kill(point)
        elif point == "upload->commit":
            # The document exists (finalize done) but its operation is still
            # being polled: the daemon dies before it can record the result.
            self.emulator.indexing_delay = 0.8
            hold = self.add_fault(
                "latency",
                Fault(method="GET", path="/operations/", kind="latency", latency=1.2, times=1),
            )
            self._edit_for_upload()
            hit = self._await_hit(hold)
            if hit:
                time.sleep(rng.uniform(0.0, 1.0))
            self.kill(point if hit else "random")
            self.emulator.indexing_delay = 0.0
        elif point == "upload landing after death":
            # The finalize is held: the document is created after the daemon died.
            # Held long enough, it lands after the restart's look at the store too.
            held = rng.uniform(0.5, 5.0)
            hold = self.add_fault(
                "latency", Fault(phase="finalize", kind="latency", latency=held, times=1)
            )
            self._edit_for_upload()
            hit = self._await_hit(hold)
            if hit:
                time.sleep(rng.uniform(0.0, min(held, 1.0)))
            self.kill(point if hit else "random")
        elif point == "replace->delete":
            path = self.indexed_path()
            if path is None:
                self.edits(2)
            else:
                (self.user.atomic_save if rng.random() < 0.5 else self.user.modify)(path)
            hold = self.add_fault(
                "latency",
                Fault(method="DELETE", path="/documents/", kind="latency", latency=1.0, times=1),
            )
            if rng.random() < 0.5:  # ... and the delete never reaches the store
                self.add_fault("5xx", Fault(method="DELETE", path="/documents/", times=1))
            hit = self._await_hit(hold)
            if hit:
                time.sleep(rng.uniform(0.0, 0.8))
            self.kill(point if hit else "random")
        elif point == "start-up":
            self.edits(rng.randint(1, 4))
            self.kill("random")
            self.start(wait=False)
            time.sleep(rng.uniform(0.3, 2.0))
            self.kill(point)
        elif point == "reconcile":
            self.edits(rng.randint(0, 3))
            self.ask({"cmd": "reconcile", "force": rng.random() < 0.5})
            time.sleep(rng.uniform(0.0, 0.3))
            self.kill(point)
        else:  # mid-upload: the first request of an upload is held
            hold = self.add_fault(
                "latency", Fault(phase="start", kind="latency", latency=1.0, times=1)
            )
            self._edit_for_upload()
            hit = self._await_hit(hold)
            if hit:
                time.sleep(rng.uniform(0.0, 0.8))
            self.kill(point if hit else "random")
        # Edits while the daemon is down must not be lost either.
        if self.rng.random() < 0.5:
            self.edits(self.rng.randint(1, 4))
        if self.mount_ok and self.rng.random() < 0.15 and self.fig.unplugs < self.opts.unplugs:
            self._start_without_drive()  # ... and it starts with no drive
            self.fig.unplugs += 1
            self.fig.unplug_points["daemon started without the drive"] += 1
        else:
            self.start()

    def _start_without_drive(self) -> None:
        """The daemon (not running) starts with the drive away; it comes a moment later."""
        self.unplug()
        self.start()
        time.sleep(self.rng.uniform(0.3, 1.5))
        self.plug()

    def _edit_for_upload(self) -> None:
        path = self.indexed_path()
        if path is not None and self.rng.random() < 0.6:
            self.user.modify(path)
        else:
            self.user.create()

    # --- SIGTERM mid-drain --------------------------------------------------------------

    def sigterm_scenario(self) -> None:
        (journal_before,) = self.env.db("SELECT COALESCE(MAX(id), 0) FROM journal")[0]
        burst = [self.user.create() for _ in range(self.rng.randint(15, 40))]
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: (
                    self.env.db("SELECT COALESCE(MAX(id), 0) FROM journal")[0][0] > journal_before
                ),
                timeout=15,
                interval=0.02,
                what="the drain under way",
            )
        time.sleep(self.rng.uniform(0.0, 0.3))
        assert self.env.proc is not None
        stopped = time.monotonic()
        self.env.proc.send_signal(signal.SIGTERM)
        try:
            code = self.env.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.violation("SIGTERM: the daemon did not stop within 40 s")
            self.env.kill()
            code = None
        self.fig.sigterms += 1
        self.log(f"SIGTERM #{self.fig.sigterms}: exit {code} in {time.monotonic() - stopped:.1f}s")
        if code != 0:
            self.violation(f"SIGTERM mid-drain: exit code {code}, expected 0")
        inflight = self.env.db("SELECT COUNT(*) FROM pending_changes WHERE state = 'inflight'")
        if inflight[0][0]:
            self.violation(f"SIGTERM left {inflight[0][0]} queue rows in flight")
        lost = self.env.unknown(p for p in burst if p in self.user.files)
        if lost:
            self.violation(f"SIGTERM lost {len(lost)} changes, e.g. {lost[0]}")
        self.start()

    # --- unplug scenarios ---------------------------------------------------------------

    def unplug_scenario(self) -> None:
        rng = self.rng
        point = self.pick(UNPLUG_POINTS, self.fig.unplug_points)
        if point == "daemon started without the drive":
            # Stopped cleanly here (a kill -9 before it is kill_scenario's case).
            code = self.env.stop(timeout=60)
            if code != 0:
                self.violation(f"SIGTERM before an unplugged start: exit code {code}")
            self._start_without_drive()
        elif point == "idle":
            self.unplug()
            self._away_edits()
            self.plug()
        elif point == "scan":
            self.edits(rng.randint(0, 2), deletes=False)
            self.ask({"cmd": "reconcile", "force": rng.random() < 0.5})
            time.sleep(rng.uniform(0.0, 0.06))
            self.unplug()
            self._away_edits()
            self.plug()
        elif point == "upload":
            hold = self.add_fault(
                "latency",
                Fault(
                    phase=rng.choice(["start", "finalize"]), kind="latency", latency=1.0, times=1
                ),
            )
            self._edit_for_upload()
            if self._await_hit(hold):
                time.sleep(rng.uniform(0.0, 0.8))
            else:
                point = "idle"
            self.unplug()
            self._away_edits()
            self.plug()
        elif point == "flaps":
            # A drain of deletes and edits, and the drive gone and back again
            # and again under it: a file seen absent only because the drive
            # was away for a moment must not be marked missing.
            self.edits(rng.randint(8, 20))
            time.sleep(rng.uniform(0.3, 0.8))
            flaps = rng.randint(2, 4)
            for _ in range(flaps):
                self.unplug()
                time.sleep(rng.uniform(0.0, 0.05))
                self.plug()
                time.sleep(rng.uniform(0.0, 0.15))
            self.fig.unplugs += flaps - 1
            self.fig.unplug_points[point] += flaps - 1
        else:  # another stick (no marker of ours) mounted where the library was
            other = self.opts.work / "other-stick"
            if not other.exists():
                other.mkdir()
                write_marker(other)  # another library's id
                for i in range(5):
                    (other / f"Other {i}.txt").write_bytes(os.urandom(2000).hex().encode())
            self.unplug()
            self.plug(other)
            self._away_edits()
            unmount(self.env.root)
            self.plug()
        self.fig.unplugs += 1
        self.fig.unplug_points[point] += 1
        self.log(f"unplug #{self.fig.unplugs} ({point})")

    def _away_edits(self) -> None:
        """The drive is used elsewhere meanwhile (or just sits in a drawer)."""
        if self.rng.random() < 0.6:
            self.edits(self.rng.randint(1, 5))
        time.sleep(self.rng.uniform(0.1, 1.2))

    # --- watchdog overflow ------------------------------------------------------------

    def overflow_scenario(self) -> None:
        st = self.status().get("daemon") or {}
        if not (self.mounted and (st.get("watcher") or {}).get("alive")):
            return
        before = st["watcher"]["overflows"]
        assert self.env.proc is not None
        scratch = self.drive / f"zz-overflow-{self.fig.rounds}"
        watches = inotify_watches(self.env.proc.pid)
        scratch.mkdir()
        # Stop the daemon only once it watches the new folder: events in an
        # unwatched folder are never queued, so they could not overflow anything.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: inotify_watches(self.env.proc.pid) > watches,
                timeout=5,
                what="the new folder watched",
            )
        os.kill(self.env.proc.pid, signal.SIGSTOP)
        try:
            for i in range(OVERFLOW_FILES):  # not eligible (.dat): only queue pressure
                os.close(os.open(scratch / f"{i}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
            self.edits(self.rng.randint(2, 5))  # real changes whose events are lost
        finally:
            os.kill(self.env.proc.pid, signal.SIGCONT)
        try:
            wait_until(
                lambda: (self.status().get("daemon") or {})["watcher"]["overflows"] > before,
                timeout=20,
                what="the overflow reported",
            )
            self.fig.overflows += 1
            self.fig.faults["watchdog overflow"] += 1
            self.log("watchdog overflow")
        except AssertionError:
            self.log("no overflow was reported (the kernel queue held?)")
        shutil.rmtree(scratch)

    # --- prune ----------------------------------------------------------------------

    def prune(self) -> None:
        """The daemon stopped, a one-shot `sync --prune-missing` deletes the documents of
        every missing file, the daemon started again: pruned paths must keep no
        document, and one that comes back later is uploaded anew."""
        code = self.env.stop(timeout=60)
        if code != 0:
            self.violation(f"SIGTERM before a prune: exit code {code}")
        result = self.env.cli(
            "sync", "--prune-missing", "--older-than", "0s", "--json", timeout=300
        )
        if result.returncode not in (0, 6):
            self.violation(
                f"sync --prune-missing exited {result.returncode}: {result.stderr[-300:]}"
            )
        else:
            self.fig.prunes += 1
            self.fig.pruned += json.loads(result.stdout).get("pruned", 0)
            self.log(f"prune: {json.loads(result.stdout).get('pruned', 0)} documents")
        self.start()

    # --- the invariants -------------------------------------------------------------

    def _documents(self) -> list[dict[str, Any]]:
        return self.env.documents()

    def problems(self) -> dict[str, list[str]]:
        """What keeps store and database from mirroring the drive, by kind (empty: converged)."""
        disk = library_files(self.drive)
        docs = self._documents()
        rows = {
            p: (state, doc)
            for p, state, doc in self.env.db("SELECT path, state, document FROM files")
        }
        orphans = {d for (d,) in self.env.db("SELECT document FROM orphans")}
        by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
        names = set()
        for d in docs:
            names.add(d["_name"])
            if d["_name"] not in orphans:
                by_path[str(d.get("path"))].append(d)
        out: dict[str, list[str]] = defaultdict(list)
        for path, sha in disk.items():
            live = by_path.get(path, [])
            matching = [d for d in live if d.get("sha256") == sha]
            if not matching:
                out["lost"].append(
                    f"{path}: on disk {sha[:8]}, store {[str(d.get('sha256'))[:8] for d in live]}"
                )
            elif len(live) > 1:
                out["duplicate"].append(f"{path}: {len(live)} live documents")
            elif rows.get(path) != ("indexed", matching[0]["_name"]):
                out["row"].append(f"{path}: row {rows.get(path)} vs {matching[0]['_name']}")
        for path, live in by_path.items():
            if path in disk:
                continue
            state, doc = rows.get(path, (None, None))
            if state != "missing" or [d["_name"] for d in live] != [doc]:
                out["stray"].append(f"{path}: {len(live)} document(s), the row says {state}")
        for path, (state, doc) in rows.items():
            if state in ("indexed", "missing") and doc and doc not in names:
                out["absent"].append(f"{path}: {state} with document {doc} not in the store")
        return dict(out)

    def verify(self) -> dict[str, Any]:
        result = self.env.cli("verify", "--json", timeout=120)
        try:
            return json.loads(result.stdout)
        except ValueError:
            return {"clean": False, "error": result.stderr[-500:]}

    def check_missing_marks(self) -> None:
        rows = self.env.db(
            "SELECT id, at, path FROM journal WHERE action = 'missing' AND id > ? ORDER BY id",
            self.journal_seen,
        )
        for jid, at, path in rows:
            self.journal_seen = max(self.journal_seen, jid)
            self.fig.missing_marks += 1
            if self.user.present_at(path, at):
                self.fig.false_missing_marks += 1
                self.violation(f"{path} was marked missing at {at:.3f} while on the drive")
            elif any(s < at < e for s, e in self.away):
                self.fig.false_missing_marks += 1
                self.violation(f"{path} was marked missing at {at:.3f} while the drive was away")

    def quiet_check(self, why: str, timeout: float | None = None) -> None:
        """Faults off, drive in, daemon up: wait for convergence, then check everything."""
        self.clear_faults()
        if self.mount_ok and not self.mounted:
            self.plug()
        self.ensure_running()
        began = time.monotonic()
        deadline = began + (timeout or self.opts.quiet_timeout)
        problems: dict[str, list[str]] = {}
        while True:
            try:
                problems = self.problems()
            except Exception as exc:  # e.g. the database busy for a moment
                problems = {"check": [repr(exc)]}
            if not problems or time.monotonic() > deadline:
                break
            if not self.alive():
                self.ensure_running()
            time.sleep(0.3)
        took = time.monotonic() - began
        self.fig.checks += 1
        self.fig.longest_convergence = max(self.fig.longest_convergence, took)
        self.log(
            f"check #{self.fig.checks} ({why}): {'ok' if not problems else 'FAILED'} in {took:.1f}s"
        )
        for kind, items in problems.items():
            if kind == "lost":
                self.fig.changes_lost += len(items)
            elif kind in ("duplicate", "stray"):
                self.fig.duplicates_left += len(items)
            for item in items[:10]:
                self.violation(f"not converged after {took:.0f}s ({why}): {kind}: {item}")
        if not problems:
            report: dict[str, Any] = {}
            for _ in range(3):  # an orphan deleted mid-audit looks like drift once
                report = self.verify()
                if report.get("clean"):
                    break
                time.sleep(1.0)
            if not report.get("clean"):
                drift = [f for f in report.get("findings", []) if f.get("kind") != "foreign"]
                self.violation(f"verify reports drift ({why}): {drift[:5] or report}")
        self.check_missing_marks()

    # --- the schedule -----------------------------------------------------------------

    def needs(self) -> dict[str, int]:
        o, f = self.opts, self.fig
        need = {
            "kill": o.kills - f.kills,
            "unplug": (o.unplugs - f.unplugs) if self.mount_ok else 0,
            "sigterm": o.sigterms - f.sigterms,
            "overflow": o.overflows - self.overflow_attempts,
        }
        return {k: v for k, v in need.items() if v > 0}

    def round(self) -> None:
        self.fig.rounds += 1
        if self.rng.random() < 0.5:
            self.random_fault()
        self.edits(self.rng.randint(1, 5))
        need = self.needs()
        what = self.rng.choices(list(need), list(need.values()))[0]
        self.ensure_running()
        if what == "kill":
            self.kill_scenario()
        elif what == "unplug":
            self.unplug_scenario()
        elif what == "sigterm":
            self.sigterm_scenario()
        else:
            self.overflow_attempts += 1
            self.overflow_scenario()

    def run(self) -> Figures:
        self.setup()
        while self.needs() and time.monotonic() - self.t0 < self.opts.max_seconds:
            self.round()
            if self.fig.rounds % self.opts.rounds_per_check == 0:
                self.quiet_check(f"after round {self.fig.rounds}")
                if self.fig.checks % 4 == 0:
                    self.prune()
        self.quiet_check("final")
        self.finish()
        return self.fig

    def finish(self) -> None:
        """Stop cleanly, delete every recorded orphan, and count what is left."""
        code = self.env.stop(timeout=60)
        if code != 0:
            self.violation(f"final SIGTERM: exit code {code}")
        result = self.env.cli("sync", "--cleanup-orphans", "--json", timeout=300)
        if result.returncode != 0:
            self.violation(f"final sync exited {result.returncode}: {result.stderr[-300:]}")
        self.fig.orphans_left = self.env.db("SELECT COUNT(*) FROM orphans")[0][0]
        disk = library_files(self.drive)
        missing = {
            p: doc
            for p, doc in self.env.db("SELECT path, document FROM files WHERE state='missing'")
        }
        per_path = Counter(str(d.get("path")) for d in self._documents())
        extra = sum(n - 1 for n in per_path.values() if n > 1)
        extra += sum(n for p, n in per_path.items() if p not in disk and p not in missing)
        self.fig.duplicates_left += extra
        if extra:
            self.violation(f"{extra} documents beyond one per file are left in the store")
        lost = [p for p in disk if per_path.get(p) != 1]
        if lost:
            self.fig.changes_lost += len(lost)
            self.violation(f"{len(lost)} files without exactly one document, e.g. {lost[0]}")
        self.fig.files_at_end = len(disk)
        self.fig.edits = self.user.edits
        self.fig.fault_hits += sum(f.hits for f in self.rules)

    def close(self) -> None:
        self.fig.seconds = time.monotonic() - self.t0
        with contextlib.suppress(Exception):
            self.env.close()
        if self.mount_ok:
            for _ in range(3):  # the other stick may be stacked on the drive
                if not is_mounted(self.env.root):
                    break
                subprocess.run(["umount", "-l", self.env.root], capture_output=True)
        self.emulator.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_soak(opts: SoakOptions, log: Callable[[str], None] | None = print) -> Figures:
    soak = Soak(opts, log)
    try:
        soak.run()
    finally:
        soak.close()
        (opts.work / "figures.json").write_text(json.dumps(soak.fig.as_dict(), indent=2))
    return soak.fig


# --- the state directory's disk full ---------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


def fill(path: Path) -> None:
    """Fill the filesystem holding `path` to the last byte (files filler-*)."""
    for name, chunk in (("filler-1", 1 << 16), ("filler-2", 1)):
        with contextlib.suppress(OSError), open(path / name, "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * chunk)


def disk_full_scenario(work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The daemon's state dir on a small tmpfs that fills up while files change.

    While full, edits keep coming; the daemon must not crash, lose a change or
    corrupt its database. Once space is freed, everything converges. (8 MB:
    SQLite lets the WAL grow to ~4 MB before its first checkpoint.)
    """
    emulator = SoakEmulator(clock=time.time).start()
    env = SoakEnv(work / "env", backend="gemini", emulator=emulator)
    saved = {k: os.environ.get(k) for k in Soak._env_keys()}
    rng = random.Random(7)
    user = UserLibrary(env.root, real_paths(), rng)
    out: dict[str, Any] = {"violations": []}
    try:
        with tmpfs(env.state_dir, "8m"):
            for key in Soak._env_keys():
                os.environ[key] = env.env[key]
            for _ in range(40):
                user.create()
            env.init()
            env.start()
            env.wait_converged(timeout=60)
            fill(env.state_dir)
            log("state dir full")
            changed = []
            for _ in range(30):
                changed.append(user.random_edit())
                time.sleep(0.05)
            for _ in range(10):  # a while of full disk: drains and flushes fail and retry
                time.sleep(0.5)
                if env.proc is not None and env.proc.poll() is not None:
                    out["violations"].append(f"daemon exited with {env.proc.returncode}")
                    break
            out["errors_seen"] = [
                e["error"] for e in (env.status() or {}).get("daemon", {}).get("last_errors", [])
            ][-5:]
            for name in ("filler-1", "filler-2"):
                (env.state_dir / name).unlink(missing_ok=True)
            log("space freed")
            env.wait_converged(timeout=60)
            out["edits"] = len(changed)
            integrity = env.db("PRAGMA integrity_check")[0][0]
            if integrity != "ok":
                out["violations"].append(f"integrity_check: {integrity}")
            verify = env.cli("verify", "--json")
            if verify.returncode != 0:
                out["violations"].append(f"verify: {verify.stdout[-500:]}")
            code = env.stop()
            if code != 0:
                out["violations"].append(f"exit code {code}")
            out["log"] = env.log()
    finally:
        env.close()
        emulator.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return out


# --- command line (make soak) -------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--unplugs", type=int, default=100)
    parser.add_argument("--sigterms", type=int, default=20)
    parser.add_argument("--overflows", type=int, default=5)
    parser.add_argument("--rounds-per-check", type=int, default=3)
    parser.add_argument("--max-minutes", type=float, default=120)
    parser.add_argument("--quiet-timeout", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--disk-full", action="store_true", help="also run the disk-full test")
    parser.add_argument("--only-disk-full", action="store_true", help="the disk-full test alone")
    parser.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help="write {figures, disk_full} here (for a caller in another namespace)",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0 and (args.unplugs or args.disk_full or args.only_disk_full):
        with tempfile.TemporaryDirectory() as probe:
            why_not = user_namespace_works(Path(probe))
        if why_not is None:  # root in a namespace of its own: mounts without privileges
            os.execvp(USER_NAMESPACE[0], [*USER_NAMESPACE, sys.executable, *sys.argv])
        print(f"no mounts as this user ({why_not}): no unplugs, no disk-full test", flush=True)
        if args.only_disk_full:
            return 1
        args.disk_full = False

    work = args.work or Path(tempfile.mkdtemp(prefix="objlibd-soak-"))
    out: dict[str, Any] = {"figures": None, "disk_full": None}
    bad = 0
    if not args.only_disk_full:
        opts = SoakOptions(
            work=work,
            seed=args.seed,
            files=args.files,
            kills=args.kills,
            unplugs=args.unplugs,
            sigterms=args.sigterms,
            overflows=args.overflows,
            rounds_per_check=args.rounds_per_check,
            max_seconds=args.max_minutes * 60,
            quiet_timeout=args.quiet_timeout,
            verbose=not args.quiet,
        )
        print(f"soak: seed {args.seed}, work dir {work}", flush=True)
        fig = run_soak(opts, log=lambda m: print(m, flush=True))
        print(fig.summary())
        print(f"figures: {work / 'figures.json'}")
        out["figures"] = fig.as_dict()
        bad += len(fig.violations)
    if args.disk_full or args.only_disk_full:
        result = disk_full_scenario(work / "disk-full")
        print(f"disk full: {result.get('edits')} edits, violations {result['violations']}")
        out["disk_full"] = result
        bad += len(result["violations"])
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(out, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
