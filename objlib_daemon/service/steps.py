"""What install and uninstall do, as data: a Plan of Steps, and the one function that applies it.

Why plans: a dry run, an unreachable manager and a real install must do the
same thing up to the point of running commands. Building the steps first and
applying them in one place makes the dry run print exactly what would happen,
and lets an install write its files but only list the commands it cannot run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command with a timeout (a hung bus must not hang us)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


@dataclass
class Step:
    """One thing install/uninstall does: write or remove a file, or run a command."""

    kind: str  # "write" | "remove" | "mkdir" | "run"
    path: Path | None = None
    content: str = ""
    mode: int = 0o644
    argv: list[str] = field(default_factory=list)
    may_fail: bool = False  # e.g. unloading an agent that was not loaded

    def describe(self) -> str:
        if self.kind == "write":
            return f"write {self.path}"
        if self.kind == "remove":
            return f"remove {self.path}"
        if self.kind == "mkdir":
            return f"create {self.path}/"
        return " ".join(_shell_quote(a) for a in self.argv)


@dataclass
class Plan:
    manager: str
    steps: list[Step]
    notes: list[str] = field(default_factory=list)

    @property
    def commands(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "run"]


def _shell_quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


@dataclass
class Outcome:
    """What applying a plan did: files touched, commands run (with results) or to run."""

    done: list[str] = field(default_factory=list)
    to_run: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def apply(plan: Plan, *, run: bool, runner: Runner = run_command) -> Outcome:
    """Write/remove the files; run the commands when `run`, else list them for the user."""
    outcome = Outcome()
    for step in plan.steps:
        if step.kind == "write":
            assert step.path is not None
            step.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = step.path.with_name(step.path.name + ".tmp")
            tmp.write_text(step.content, encoding="utf-8")
            os.chmod(tmp, step.mode)
            os.replace(tmp, step.path)
            outcome.done.append(step.describe())
        elif step.kind == "remove":
            assert step.path is not None
            step.path.unlink(missing_ok=True)
            _prune_empty(step.path.parent)
            outcome.done.append(step.describe())
        elif step.kind == "mkdir":
            assert step.path is not None
            if not step.path.is_dir():
                step.path.mkdir(parents=True, mode=0o700)
                outcome.done.append(step.describe())
        elif not run:
            outcome.to_run.append(step.describe())
        else:
            result = runner(step.argv)
            if result.returncode == 0 or step.may_fail:
                outcome.done.append(step.describe())
            else:
                detail = (result.stderr or result.stdout or "").strip().splitlines()
                outcome.failed.append(
                    f"{step.describe()} (exit {result.returncode}"
                    + (f": {detail[-1]}" if detail else "")
                    + ")"
                )
    return outcome


def _prune_empty(directory: Path) -> None:
    """Remove a drop-in dir we emptied (objlibd.service.d), nothing above it."""
    if directory.name.endswith(".d") or directory.name.endswith(".wants"):
        with contextlib.suppress(OSError):
            directory.rmdir()
