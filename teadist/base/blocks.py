"""Block maps: the SHA-256 of each fixed-size block of a file, in order (the last block short).

A block map is kept beside a whole-file SHA-256, never instead of it: it is computed in the pass
that already reads the bytes (split, download, assemble, rebuild) and kept only once the whole
hash has matched the source's, so the chain of trust stays the source's hash. With it a file is
verified on every core, a mismatch names the damaged byte ranges, a resume keeps exactly the
proven blocks and a repair re-fetches only the bad ones — BitTorrent's piece map, for one file.

Why 8 MiB: see the manifest schema's description (``manifests/schema/manifest-v1.schema.json``),
which carries the measurements.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

BLOCK_SIZE = 8 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024  # small enough for tests and tiny files, large enough to stay a short list
MAX_BLOCK_SIZE = 64 * 1024 * 1024  # a browser holds one block in memory to digest it (model-cache.js: the same bounds)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_size_problem(block_size: object) -> str | None:
    """Why ``block_size`` is not usable (None when it is): a power of two in the allowed range."""
    if type(block_size) is not int or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        return f"must be a whole number from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
    if block_size & (block_size - 1):
        return "must be a power of two"
    return None


@dataclass(frozen=True)
class BlockMap:
    """The ordered SHA-256 of each ``block_size`` block of a file of ``size`` bytes."""

    block_size: int
    hashes: tuple[str, ...]

    def problem(self, size: int) -> str | None:
        """Why this map cannot describe a file of ``size`` bytes (None when it can)."""
        bad = block_size_problem(self.block_size)
        if bad is not None:
            return f"block_size {bad}"
        if len(self.hashes) != block_count(size, self.block_size):
            return (f"{len(self.hashes)} block hashes for {size} bytes in blocks of {self.block_size} "
                    f"(expected {block_count(size, self.block_size)})")
        if not all(isinstance(h, str) and _SHA256.match(h) for h in self.hashes):
            return "a block hash is not 64 lower-case hex digits"
        return None

    def span(self, index: int, size: int) -> tuple[int, int]:
        """Byte range [start, end) of block ``index`` in a file of ``size`` bytes."""
        start = index * self.block_size
        return start, min(size, start + self.block_size)

    def to_dict(self) -> dict[str, object]:
        return {"block_size": self.block_size, "blocks": list(self.hashes)}


def damaged_ranges(bad: Sequence[int], block_size: int, size: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covered by the ``bad`` block indices, adjacent blocks merged."""
    ranges: list[tuple[int, int]] = []
    for index in sorted(set(bad)):
        start, end = index * block_size, min(size, (index + 1) * block_size)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def describe_ranges(ranges: Sequence[tuple[int, int]], most: int = 8) -> str:
    """``bytes 8388608-16777215, 41943040-50331647`` (inclusive, like HTTP ranges); long lists cut."""
    shown = [f"{start}-{end - 1}" for start, end in ranges[:most]]
    more = f" and {len(ranges) - most} more" if len(ranges) > most else ""
    return "bytes " + ", ".join(shown) + more


class BlockHasher:
    """A sink for the bytes of a file in order: the SHA-256 of each block as it completes.

    ``known`` are the hashes of the blocks before the first byte fed (a resume at a block boundary).
    """

    def __init__(self, block_size: int = BLOCK_SIZE, known: Sequence[str] = ()) -> None:
        self.block_size = block_size
        self.hashes: list[str] = list(known)
        self._current = hashlib.sha256()
        self._fill = 0

    def __call__(self, view: memoryview | bytes) -> None:
        pos, n = 0, len(view)
        while pos < n:
            take = min(n - pos, self.block_size - self._fill)
            self._current.update(view[pos:pos + take])
            self._fill += take
            pos += take
            if self._fill == self.block_size:
                self.hashes.append(self._current.hexdigest())
                self._current = hashlib.sha256()
                self._fill = 0

    def tail(self) -> tuple[int, str]:
        """(bytes, SHA-256) of the block in progress: proof of a partial's last, incomplete block."""
        return self._fill, self._current.copy().hexdigest()

    def finish(self) -> BlockMap:
        """The map of everything fed (the last block may be short)."""
        if self._fill:
            self.hashes.append(self._current.hexdigest())
            self._current = hashlib.sha256()
            self._fill = 0
        return BlockMap(self.block_size, tuple(self.hashes))
