"""Durations and sizes as people and servers write them: "7d", "1.5s", "100MB".

Why one module: the config, the CLI's `--older-than` and Google's `RetryInfo`
(whose `retryDelay` is a protobuf Duration in its JSON form, "1.5s") all
write durations; one parser reads them all, so a unit means the same
everywhere. It imports nothing of objlibd, so `stores/` can use it without
depending on the config.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float) -> float:
    """'7d', '6h', '90s', '1.5s', '15m', '2w' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 6h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: str | int) -> int:
    """'100MB', '1 KiB', '2.5M' or a number of bytes → bytes.

    Why both bases: File Search states its limit in decimal MB while file
    managers often show binary units, so `MB`/`M` are powers of 1000 and
    `MiB`/`Mi` powers of 1024; a plain integer is bytes, as it always was.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match or (match.group(3) and not match.group(2)):
        raise ValueError(
            f"not a size: {value!r} (use bytes as an integer, or e.g. 100MB, 512 KiB, 2.5M)"
        )
    number, prefix, binary = match.group(1), match.group(2).lower(), match.group(3)
    return int(float(number) * (1024 if binary else 1000) ** _SIZE_POWERS[prefix])
