"""Shared pytest fixtures."""

from collections.abc import Iterator

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
