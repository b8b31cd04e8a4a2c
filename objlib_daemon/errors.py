"""Exit codes and the errors that carry them (documented in the README)."""

from __future__ import annotations

OK = 0
UNEXPECTED = 1
USAGE = 2
VOLUME_UNAVAILABLE = 3
MISMATCH = 4
SAFETY_ABORT = 5
SOME_FAILED = 6
# sysexits.h EX_TEMPFAIL: the store kept failing (5xx, timeouts, quota); the
# same command later will likely succeed. Far from our small codes on purpose.
STORE_UNAVAILABLE = 75
CONFIG = 78


class ObjlibError(Exception):
    """An error with a message that says what to do, and the exit code to use."""

    exit_code = UNEXPECTED


class VolumeUnavailable(ObjlibError):
    exit_code = VOLUME_UNAVAILABLE


class Mismatch(ObjlibError):
    """The configured store or library is not the one recorded in the database."""

    exit_code = MISMATCH


class SafetyAbort(ObjlibError):
    exit_code = SAFETY_ABORT


class ConfigurationError(ObjlibError):
    """Missing or invalid config or credentials (EX_CONFIG)."""

    exit_code = CONFIG
