"""Shared pytest fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator import GeminiEmulator


@pytest.fixture
def emulator() -> Iterator[GeminiEmulator]:
    """A started Gemini File Search emulator (see tests/emulator.py), stopped afterwards."""
    emu = GeminiEmulator().start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(params=["local", "gemini"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each behavioural test runs on the embedded store and on Gemini (emulated)."""
    return request.param


@pytest.fixture
def h(backend: str, tmp_path, request: pytest.FixtureRequest):
    """An initialised library on `backend` (see tests/harness.py)."""
    from harness import Harness

    emu = request.getfixturevalue("emulator") if backend == "gemini" else None
    harness = Harness(tmp_path, backend, emu)
    if emu is not None:
        harness.env["GEMINI_API_KEY"] = emu.api_key
    result = harness.init()
    assert result.exit_code == 0, result.output
    return harness


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An open Workspace on a synced local-store library holding `r/Kept.txt`;
    its Harness is `ws.harness`."""
    from harness import Harness

    from objlib_daemon.config import load
    from objlib_daemon.workspace import open_workspace

    h = Harness(tmp_path, "local")
    assert h.init().exit_code == 0
    h.apply_env(monkeypatch)
    h.write("r/Kept.txt")
    h.sync()
    workspace = open_workspace(load(h.config_path))
    workspace.harness = h  # type: ignore[attr-defined]
    try:
        yield workspace
    finally:
        workspace.close()
