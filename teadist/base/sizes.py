"""Parse and format byte sizes: ``512M``, ``1.9G``, ``1GiB``, ``1900000000``."""

from __future__ import annotations

import re

from teadist.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE | re.ASCII)  # ASCII: "١٢k" is no size
_MAX_TEXT = 64


def parse_size(text: str) -> int:
    """Return the number of bytes ``text`` names; decimal units (M, G) and binary ones (MiB, GiB)."""
    match = _SIZE_RE.match(text) if len(text) <= _MAX_TEXT else None
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
        raise UsageError(
            f"invalid size {shown!r}",
            hint="use bytes or a number with a unit, e.g. 512M, 1.9G, 1GiB",
        )
    number: str = match.group(1)
    multiplier: int = _UNITS[unit]
    if "." in number:
        whole, frac = number.split(".")
        scale = int("1" + "0" * len(frac))
        value = int(whole) * multiplier + int(frac) * multiplier // scale
    else:
        value = int(number) * multiplier
    return value


def format_size(n: int | None) -> str:
    """Human-readable size in decimal units, e.g. ``1.90 GB``."""
    if n is None:
        return "unknown"
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.2f} {unit}"
    return f"{value / 1000:.2f} TB"
