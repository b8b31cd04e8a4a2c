"""Shared pieces of the benchmarks: trees, libraries, timing, process accounting.

Every benchmark reports RATIOS against a baseline measured in the same run
(absolute times drift on shared machines), as medians of several runs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
for _p in (str(REPO), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from daemon_helpers import Dirs, wait_until  # noqa: E402, F401 - tests/ is on the path now

PYTHON = sys.executable
CLI = [PYTHON, "-c", "from objlib_daemon.cli import main; main()"]
CHILD = [PYTHON, str(Path(__file__).resolve().parent / "child.py")]

# Bump when make_tree's output changes: a cached tree is rebuilt then.
TREE_VERSION = 1


# --- results ---------------------------------------------------------------------------------


@dataclass
class Metric:
    """One row of the results table."""

    bench: str  # "1 warm reconcile"
    name: str  # what was measured
    value: float | None
    unit: str = ""
    baseline: float | None = None  # the baseline's value, same unit
    baseline_name: str = ""
    ratio: float | None = None  # value / baseline (or as `ratio_note` says)
    target: str = ""  # e.g. "<= 2.5x"
    met: bool | None = None  # None: informational
    note: str = ""
    correctness: bool = False  # checked in the quick mode too (never a speed target)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Results:
    quick: bool
    metrics: list[Metric] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        shown = "-" if metric.value is None else f"{metric.value:.4g} {metric.unit}"
        ratio = "" if metric.ratio is None else f"  ratio {metric.ratio:.3g}"
        verdict = "" if metric.met is None else ("  MET" if metric.met else "  MISSED")
        target = f"  target {metric.target}" if metric.target else ""
        print(f"  [{metric.bench}] {metric.name}: {shown}{ratio}{target}{verdict}", flush=True)
        return metric


def check(quick: bool, ok: bool) -> bool | None:
    """A target verdict; the quick mode asserts nothing about speed."""
    return None if quick else ok


# --- timing ----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_shell(cmd: str, *, cwd: Path | None = None) -> float:
    """Wall time of a shell pipeline (output discarded); raises if it fails."""
    t0 = time.perf_counter()
    subprocess.run(
        cmd, shell=True, check=True, cwd=cwd, stdout=subprocess.DEVNULL, executable="/bin/bash"
    )
    return time.perf_counter() - t0


def child(*args: str, env: dict[str, str] | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run bench/child.py in a fresh interpreter; it prints one JSON object."""
    proc = subprocess.run([*CHILD, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def maxrss_mb() -> float:
    """Peak RSS of this process in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- trees -----------------------------------------------------------------------------------

_LINE = b"%06d the virtue of reason and the nature of concepts; identity, causality.\n"


def content(i: int, salt: int = 0) -> bytes:
    """1-4 KiB of text, distinct per file index (and salt)."""
    size = 1024 + (i * 7919) % 3072
    line = _LINE % ((i + salt * 1_000_003) % 1_000_000)
    return (line * (size // len(line) + 1))[:size]


def tree_paths(files: int, dirs: int) -> Iterator[tuple[str, int]]:
    """(relative path, index) for `files` files spread over `dirs` leaf folders, 2 levels."""
    top = max(1, int(dirs**0.5))
    for i in range(files):
        d = i % dirs
        ext = "md" if i % 5 == 0 else "txt"
        yield f"area{d % top:02d}/topic{d:03d}/doc{i:06d}.{ext}", i


def make_tree(root: Path, files: int, dirs: int, *, prefix: str = "") -> float:
    """Write the tree; returns seconds taken."""
    t0 = time.perf_counter()
    made: set[str] = set()
    for rel, i in tree_paths(files, dirs):
        path = root / prefix / rel if prefix else root / rel
        parent = str(path.parent)
        if parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(parent)
        with open(path, "wb") as fh:
            fh.write(content(i))
    return time.perf_counter() - t0


# --- a library with its config and state dir -------------------------------------------------


@dataclass
class Lib(Dirs):
    """A library folder, config file, state and runtime dirs under `base`."""

    backend: str = "local"
    store: str = ""  # gemini: store resource name
    base_url: str = ""
    extra: str = ""  # more TOML appended to the config
    store_extra: str = ""  # more keys for the [store] table
    # gemini: a ceiling far above any benchmark's demand, so the fixed-rate
    # benchmarks measure the drain, not the limiter; None writes no ceiling
    # (the shipped default: adaptive pacing from its slow start).
    max_requests_per_minute: int | None = 600_000
    # gemini: AI enrichment (on by default with a key) adds a model call per
    # new content, paced by the model's own limits; the sync benchmarks
    # measure the pipeline, so it is off unless a benchmark turns it on.
    enrichment: bool = False

    def write_config(self) -> None:
        store = '[store]\nbackend = "local"\n'
        if self.backend == "gemini":
            store = (
                f'[store]\nbackend = "gemini"\nname = "{self.store}"\n'
                f'base_url = "{self.base_url}"\n'
            )
            if self.max_requests_per_minute is not None:
                store += f"max_requests_per_minute = {self.max_requests_per_minute}\n"
        enrichment = "" if self.enrichment else "[enrichment]\nenabled = false\n\n"
        self.config_path.write_text(
            f'[library]\nroot = "{self.root}"\n\n{enrichment}{store}{self.store_extra}\n'
            f"{self.extra}",
            encoding="utf-8",
        )

    def init(self) -> None:
        self.write_config()
        args = ["init", "--library", str(self.root)]
        if self.backend == "gemini":
            args += ["--store-backend", "gemini", "--store", self.store]
        self.inproc(*args)

    def cli(self, *args: str, timeout: float = 7200) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"objlibd {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def sync_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.cli("sync", "--json", *args).stdout)

    def inproc(self, *args: str) -> str:
        """Run the CLI code in this process (no interpreter start); its stdout."""
        from click.testing import CliRunner

        from objlib_daemon.cli import cli

        result = CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=False)
        if result.exit_code != 0:
            raise RuntimeError(
                f"objlibd {' '.join(args)} exited {result.exit_code}: {result.output[-3000:]}"
            )
        return result.stdout

    def sync_inproc(self, *args: str) -> dict[str, Any]:
        """`objlibd sync --json` through the CLI code in this process."""
        return json.loads(self.inproc("sync", "--json", *args))

    @contextmanager
    def applied_env(self) -> Iterator[None]:
        """This process resolves the same config/state/runtime dirs (for in-process use)."""
        keys = ("OBJLIBD_CONFIG", "OBJLIBD_STATE_DIR", "OBJLIBD_RUNTIME_DIR", "GEMINI_API_KEY")
        saved = {k: os.environ.get(k) for k in keys}
        env = self.env
        os.environ.update({k: env[k] for k in keys})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def config(self) -> Any:
        from objlib_daemon.config import load

        return load(self.config_path)


def drop_page_cache_hint() -> str:
    return "warm cache: every timed run is preceded by an untimed walk of the same tree"


# --- processes -------------------------------------------------------------------------------


def proc_threads(pid: int) -> dict[int, dict[str, int]]:
    """Per-thread counters from /proc: utime/stime ticks, context switches, name."""
    out: dict[int, dict[str, Any]] = {}
    for tid_s in os.listdir(f"/proc/{pid}/task"):
        tid = int(tid_s)
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        info: dict[str, Any] = {"utime": int(fields[11]), "stime": int(fields[12])}
        for line in status.splitlines():
            k, _, v = line.partition(":")
            if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                info[k] = int(v)
            elif k == "Name":
                info["name"] = v.strip()
        out[tid] = info
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB, and the process's own utime+stime ticks."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            out[k] = int(v.split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    out["ticks"] = int(fields[11]) + int(fields[12])
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """CPU, cores, RAM, kernel, Python, SQLite and package versions."""
    import platform
    import sqlite3
    from importlib import metadata

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    pkgs = {}
    for name in (
        "objlibd",
        "SQLAlchemy",
        "watchdog",
        "APScheduler",
        "google-genai",
        "structlog",
        "tenacity",
        "click",
    ):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = "-"
    try:
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", "/tmp"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        fs = "?"
    try:
        coreutils = subprocess.run(
            ["sha256sum", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    except (OSError, IndexError):
        coreutils = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem": fs,
        "coreutils": coreutils,
        "packages": json.dumps(pkgs),
    }
