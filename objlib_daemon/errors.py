"""Exit codes and the errors that carry them (documented in the README)."""

from __future__ import annotations

OK = 0
UNEXPECTED = 1
USAGE = 2
VOLUME_UNAVAILABLE = 3
MISMATCH = 4
SAFETY_ABORT = 5
SOME_FAILED = 6
# `pause`, `resume`: no daemon answers for this library.
NO_DAEMON = 7
# sysexits.h EX_UNAVAILABLE: the store kept failing (5xx, timeouts, quota); the
# same command later will likely succeed.
STORE_UNAVAILABLE = 69
# Another objlibd (a sync, the daemon) holds the library's lock: try again later
# (EX_TEMPFAIL; the systemd unit does not restart on it).
BUSY = 75
CONFIG = 78
# Stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention); the
# summary of what was done is still printed.
INTERRUPTED = 130

# The `kind` of an error in `--json` output, by exit code (docs/json.md).
KINDS = {
    UNEXPECTED: "unexpected",
    USAGE: "usage",
    VOLUME_UNAVAILABLE: "volume_unavailable",
    MISMATCH: "mismatch",
    SAFETY_ABORT: "safety_abort",
    SOME_FAILED: "some_failed",
    NO_DAEMON: "no_daemon",
    STORE_UNAVAILABLE: "store_unavailable",
    BUSY: "busy",
    CONFIG: "config",
    INTERRUPTED: "interrupted",
}


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
