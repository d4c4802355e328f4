"""One-pass copying with SHA-256, and parallel hashing of file ranges.

Copying overlaps reading, hashing and writing: the main thread reads into a small ring of fixed
buffers while one thread per sink (each hash, the writer) consumes them in order. Memory stays at
``depth * buffer_size`` whatever the file size, and each byte is read once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

BUFFER_SIZE = 8 * 1024 * 1024
PIPELINE_DEPTH = 4
HASH_WORKERS = 2

Sink = Callable[[memoryview], object]


class TruncatedInput(Exception):
    """The source ended before the expected number of bytes (``copied`` tells how many)."""

    def __init__(self, copied: int) -> None:
        super().__init__(f"input ended after {copied} bytes")
        self.copied = copied


class PipelinedCopier:
    """Feed ranges of a stream to several sinks at once (hashers, a file), each in order.

    Sinks in the same position across ``copy`` calls share a worker thread, so ordering within
    a position holds; every call drains before returning, so callers may close files after it.
    """

    def __init__(self, n_sinks: int, buffer_size: int = BUFFER_SIZE, depth: int = PIPELINE_DEPTH) -> None:
        self._executors = [ThreadPoolExecutor(max_workers=1) for _ in range(n_sinks)]
        self._buffers = [bytearray(buffer_size) for _ in range(depth)]
        self._pending: list[list[Future[object]]] = [[] for _ in range(depth)]
        self._slot = 0

    def __enter__(self) -> PipelinedCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)

    def _drain(self, slot: int) -> None:
        futures, self._pending[slot] = self._pending[slot], []
        for fut in futures:
            fut.result()  # re-raises a sink's failure (e.g. disk full) in the caller

    def copy(
        self,
        src: BinaryIO,
        length: int,
        sinks: Sequence[Sink],
        advance: Callable[[int], None] | None = None,
    ) -> int:
        """Read exactly ``length`` bytes from ``src`` into every sink; raise TruncatedInput if short."""
        if len(sinks) > len(self._executors):
            raise ValueError("more sinks than the copier was built for")
        copied = 0
        try:
            while copied < length:
                slot = self._slot
                self._drain(slot)
                buf = self._buffers[slot]
                want = min(len(buf), length - copied)
                view = memoryview(buf)[:want]
                got = src.readinto(view)  # type: ignore[attr-defined]
                if not got:
                    break
                chunk = view[:got]
                self._pending[slot] = [
                    ex.submit(sink, chunk) for ex, sink in zip(self._executors, sinks, strict=False)
                ]
                self._slot = (slot + 1) % len(self._buffers)
                copied += got
                if advance is not None:
                    advance(got)
        finally:
            for slot in range(len(self._buffers)):
                self._drain(slot)
        if copied < length:
            raise TruncatedInput(copied)
        return copied


def hash_range(path: Path, offset: int = 0, length: int | None = None,
               advance: Callable[[int], None] | None = None) -> tuple[str, int]:
    """SHA-256 of ``length`` bytes of ``path`` from ``offset`` (to EOF if None): (hex, bytes read)."""
    digest = hashlib.sha256()
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    read = 0
    with open(path, "rb", buffering=0) as fh:
        if offset:
            fh.seek(offset)
        with_fadvise(fh.fileno(), offset, length or 0)
        while length is None or read < length:
            want = len(buf) if length is None else min(len(buf), length - read)
            got = fh.readinto(view[:want])
            if not got:
                break
            digest.update(view[:got])
            read += got
            if advance is not None:
                advance(got)
    return digest.hexdigest(), read


def with_fadvise(fd: int, offset: int, length: int) -> None:
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
