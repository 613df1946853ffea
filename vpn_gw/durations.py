"""Durations and sizes as written in the configuration, and their human rendering.

Durations follow swanctl: a number with an optional unit ``s``, ``m``, ``h`` or ``d``
(``"30s"``, ``"5m"``, ``"4h"``, ``"1d"``, ``"1.5h"``); a bare TOML integer or float, or a string
holding only a number, is seconds. Sizes (byte counts) take an optional binary suffix
``K``, ``M``, ``G`` or ``T`` (``"500M"`` = 500 * 2**20).
"""
from __future__ import annotations

import math
import re

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Return the duration in seconds (float); ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as \"30s\", \"5m\", \"4h\", \"1d\" or a number "
                         f"of seconds, got {type(value).__name__}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"invalid duration {value!r}: expected a number with an optional unit "
                             f"s, m, h or d, e.g. \"30s\", \"5m\", \"4h\", \"1d\"")
        seconds = float(m.group(1)) * DURATION_UNITS[(m.group(2) or "s").lower()]
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
    return seconds


def parse_size(value: object) -> int:
    """Return a byte count; accepts integers and strings like "500M" (binary units)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a byte count (integer, or a string like \"500M\"), "
                         f"got {type(value).__name__}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"invalid size {value!r}: expected an integer with an optional "
                             f"suffix K, M, G or T, e.g. \"500M\"")
        n = int(m.group(1)) * SIZE_UNITS[m.group(2).lower()]
    if n < 0:
        raise ValueError(f"invalid size {value!r}: must be >= 0")
    return n


def format_duration(seconds: float) -> str:
    """Compact human form: 45s, 5m 3s, 3h 59m, 2d 4h (two most significant units)."""
    if seconds is None or math.isnan(seconds):
        return "?"
    neg = seconds < 0
    s = int(round(abs(seconds)))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            q, s = divmod(s, size)
            parts.append(f"{q}{unit}")
    text = " ".join(parts[:2])
    return f"-{text}" if neg else text


def format_size(n: int) -> str:
    """Human byte count: 512 B, 1.5 KiB, 12.0 MiB."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
