"""The shipped service templates and what fills them: one Context per install.

Why a module of its own: systemd and launchd render different formats from the
same facts (the interpreter, the config file, the state dir, the stop timeout)
and the same `@NAME@` placeholders; resolving those facts once, here, keeps
the two renderers from drifting apart.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from objlib_daemon.config import Config
from objlib_daemon.errors import ConfigurationError

# Above the worst drain: [daemon] shutdown_timeout plus a minute for closing
# the store and the database; never below two minutes.
MIN_STOP_TIMEOUT = 120
STOP_MARGIN = 60


def read_template(folder: str, name: str) -> str:
    """A template shipped in the source tree (systemd/ or launchd/ next to the package)."""
    package = Path(__file__).resolve().parents[1]
    path = package.parent / folder / name
    if not path.is_file():
        raise ConfigurationError(
            f"service template {name} not found next to {package}: install objlibd from "
            "a source checkout (`pip install -e .`), or copy it from the repository's "
            f"{folder}/ folder"
        )
    return path.read_text(encoding="utf-8")


def program_argv() -> list[str]:
    """How a service starts objlibd: the running interpreter, never a PATH lookup.

    The interpreter is the thing a macOS TCC grant is given to, and the one
    whose site-packages hold this objlibd; `-m` needs a `__main__` module, so
    fall back to importing the CLI's entry point directly.
    """
    python = sys.executable or shutil.which("python3") or "python3"
    for module in ("objlib_daemon", "objlib_daemon.cli"):
        try:
            if importlib.util.find_spec(f"{module}.__main__") is not None:
                return [python, "-m", module]
        except ModuleNotFoundError:
            continue
    return [python, "-c", "from objlib_daemon.cli import main; main()"]


@dataclass(frozen=True)
class Context:
    """Everything a template needs, resolved once from the config and the environment."""

    argv: tuple[str, ...]
    config_path: Path
    state_dir: Path
    runtime_dir: Path | None
    home: Path
    stop_timeout: int

    @property
    def log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "objlibd"

    @property
    def environment(self) -> dict[str, str]:
        env = {"OBJLIBD_STATE_DIR": str(self.state_dir)}
        if self.runtime_dir is not None:
            env["OBJLIBD_RUNTIME_DIR"] = str(self.runtime_dir)
        return env


def context_for(config: Config, config_path: Path, *, home: Path | None = None) -> Context:
    """Pin the paths the CLI resolves now, so the service sees the same library.

    The state dir is always pinned (the service's environment may lack the
    variable or XDG dirs the user's shell has); the runtime dir only when the
    environment overrides it, because otherwise the daemon derives it from the
    config exactly as the CLI does.
    """
    runtime = os.environ.get("OBJLIBD_RUNTIME_DIR")
    stop = max(MIN_STOP_TIMEOUT, int(config.daemon.shutdown_timeout) + STOP_MARGIN)
    return Context(
        argv=tuple(program_argv()),
        config_path=config_path.expanduser().absolute(),
        state_dir=config.state_dir.expanduser().absolute(),
        runtime_dir=Path(runtime).expanduser().absolute() if runtime else None,
        home=(home or Path.home()).absolute(),
        stop_timeout=stop,
    )


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each `@KEY@`; a placeholder left outside comments is a bug in the template."""
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", _strip_comments(text))
    if left:
        raise AssertionError(f"unfilled placeholder(s) {sorted(set(left))}")
    return text


def _strip_comments(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"^\s*#.*$", "", text, flags=re.M)
