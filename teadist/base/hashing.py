"""One-pass copying with SHA-256, and parallel hashing of file ranges.

Copying overlaps reading, hashing and writing: the main thread reads into a small ring of fixed
buffers while one thread per sink (each hash, the writer) consumes them in order. Memory stays at
``depth * buffer_size`` whatever the file size, and each byte is read once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from teadist.base.blocks import BLOCK_SIZE, BlockHasher, BlockMap

# Many small windows smooth over the writer's bursts (dirty-page throttling) at fixed memory.
BUFFER_SIZE = 2 * 1024 * 1024
PIPELINE_DEPTH = 16
HASH_BUFFER_SIZE = 8 * 1024 * 1024

Sink = Callable[[memoryview], object]


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class TruncatedInput(Exception):
    """The source ended before the expected number of bytes (``copied`` tells how many)."""

    def __init__(self, copied: int) -> None:
        super().__init__(f"input ended after {copied} bytes")
        self.copied = copied


class PipelinedCopier:
    """Feed ranges of a file or stream to several sinks at once (hashers, a file), each in order.

    Sinks in the same position across calls share a worker thread, so ordering within a
    position holds; a ``None`` sink leaves its position out of that call (two streams — the
    original and a shard — each fed only what belongs to it, the bytes they share read once).
    Every call drains before returning unless told not to, so callers may close files after it.
    Files and streams alike are read into a ring of private, reused buffers (``depth *
    buffer_size`` bytes whatever the file size). Never mmap: a file truncated by someone else
    while mapped kills the process with SIGBUS, and a mapping shows later changes to bytes
    already checked; a read copies the bytes once, and what was hashed is what gets written.
    """

    def __init__(self, n_sinks: int, buffer_size: int = BUFFER_SIZE, depth: int = PIPELINE_DEPTH) -> None:
        self._executors = [ThreadPoolExecutor(max_workers=1) for _ in range(n_sinks)]
        self._buffer_size = buffer_size
        self._buffers: list[bytearray] = []
        self._depth = depth
        self._pending: list[list[Future[object]]] = [[] for _ in range(depth)]
        self._slot = 0

    def __enter__(self) -> PipelinedCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for slot in range(self._depth):
            with contextlib.suppress(Exception):
                self._drain(slot)
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)

    def _drain(self, slot: int) -> None:
        futures, self._pending[slot] = self._pending[slot], []
        try:
            for fut in futures:
                fut.result()  # re-raises a sink's failure (e.g. disk full) in the caller
        finally:
            wait(futures)

    def _drain_all(self) -> None:
        for slot in range(self._depth):
            self._drain(slot)

    def _buffer(self, slot: int) -> bytearray:
        if not self._buffers:
            self._buffers = [bytearray(self._buffer_size) for _ in range(self._depth)]
        return self._buffers[slot]

    def _submit(self, slot: int, view: memoryview, sinks: Sequence[Sink | None]) -> None:
        if len(sinks) > len(self._executors):
            raise ValueError("more sinks than the copier was built for")
        self._pending[slot] = [ex.submit(sink, view) for ex, sink in zip(self._executors, sinks, strict=False)
                               if sink is not None]
        self._slot = (slot + 1) % self._depth

    def feed(self, data: bytes, sinks: Sequence[Sink | None]) -> None:
        """Feed a small immutable piece (a header, padding) in order with the ranges around it."""
        if data:
            slot = self._slot
            self._drain(slot)
            self._submit(slot, memoryview(data), sinks)

    def flush(self) -> None:
        """Wait until every sink has taken everything fed so far (re-raising a sink's failure)."""
        self._drain_all()

    def copy_file_range(
        self,
        fd: int,
        offset: int,
        length: int,
        sinks: Sequence[Sink | None],
        advance: Callable[[int], None] | None = None,
        drain: bool = True,
    ) -> int:
        """Feed ``length`` bytes of file ``fd`` from ``offset``; raise TruncatedInput if it is shorter.
        ``drain=False`` returns while sinks still work on the last buffers (the next call continues
        the pipeline without a stall; ``flush`` before the sinks' files are closed)."""
        pos, end = offset, offset + length
        try:
            while pos < end:
                slot = self._slot
                self._drain(slot)
                view = memoryview(self._buffer(slot))[:min(self._buffer_size, end - pos)]
                got = os.preadv(fd, [view], pos)
                if not got:
                    break
                self._submit(slot, view[:got], sinks)
                pos += got
                if advance is not None:
                    advance(got)
        except BaseException:
            self._drain_all()
            raise
        if drain or pos < end:
            self._drain_all()
        if pos < end:
            raise TruncatedInput(pos - offset)
        return length

    def copy(
        self,
        src: Readable,
        length: int,
        sinks: Sequence[Sink],
        advance: Callable[[int], None] | None = None,
    ) -> int:
        """Read exactly ``length`` bytes from stream ``src`` into every sink; raise TruncatedInput if short."""
        copied = 0
        try:
            while copied < length:
                slot = self._slot
                self._drain(slot)
                buf = self._buffer(slot)
                want = min(len(buf), length - copied)
                view = memoryview(buf)[:want]
                got = src.readinto(view)
                if not got:
                    break
                self._submit(slot, view[:got], sinks)
                copied += got
                if advance is not None:
                    advance(got)
        finally:
            self._drain_all()
        if copied < length:
            raise TruncatedInput(copied)
        return copied


def hash_range(path: Path, offset: int = 0, length: int | None = None,
               advance: Callable[[int], None] | None = None,
               extra_sinks: Sequence[Sink] = ()) -> tuple[str, int]:
    """SHA-256 of ``length`` bytes of ``path`` from ``offset`` (to EOF if None): (hex, bytes read).

    Reading and hashing overlap (a one-sink pipeline), so this runs at hashing speed;
    ``extra_sinks`` (a block hasher) get the same bytes in the same pass, each on its own thread.
    """
    digest = hashlib.sha256()
    # Depth 2 suffices for one sink (read the next buffer while hashing this one) and keeps
    # resident memory low.
    with (open(path, "rb", buffering=0) as fh,
          PipelinedCopier(n_sinks=1 + len(extra_sinks), buffer_size=HASH_BUFFER_SIZE, depth=2) as copier):
        if length is None:
            length = max(0, os.fstat(fh.fileno()).st_size - offset)
        with_fadvise(fh.fileno(), offset, length)
        try:
            read = copier.copy_file_range(fh.fileno(), offset, length, [digest.update, *extra_sinks], advance)
        except TruncatedInput as exc:
            read = exc.copied
    return digest.hexdigest(), read


# Each block-hashing thread reads its block in pieces of this size into its own reused buffer:
# memory is ``threads * READ_PIECE``, whatever the block size or the number of cores.
READ_PIECE = 2 * 1024 * 1024


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def hash_blocks(path: Path, block_size: int, indices: Sequence[int], size: int,
                advance: Callable[[int], None] | None = None, threads: int | None = None,
                base: int = 0) -> list[str]:
    """SHA-256 of each listed block of ``path`` (a file of ``size`` bytes, or a ``size``-byte region
    of it from ``base``), on every usable core.

    hashlib releases the GIL on large buffers, so threads hash in parallel; each reads with
    ``preadv`` into its own buffer. A block the file no longer fully holds hashes what is there
    (it then fails to match)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return hash_blocks_fd(fd, block_size, indices, size, advance, threads, base)
    finally:
        os.close(fd)


def hash_blocks_fd(fd: int, block_size: int, indices: Sequence[int], size: int,
                   advance: Callable[[int], None] | None = None, threads: int | None = None,
                   base: int = 0) -> list[str]:
    """``hash_blocks`` on an open descriptor (a partial file held by descriptor)."""
    import threading

    local = threading.local()
    lock = threading.Lock()

    def one(index: int) -> str:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(min(READ_PIECE, block_size)))
        digest = hashlib.sha256()
        pos = base + index * block_size
        end = base + min(size, index * block_size + block_size)
        while pos < end:
            got = os.preadv(fd, [buf[:min(len(buf), end - pos)]], pos)
            if not got:
                break
            digest.update(buf[:got])
            pos += got
            if advance is not None:
                with lock:
                    advance(got)
        return digest.hexdigest()

    with_fadvise(fd, base, size)
    workers = max(1, min(threads or usable_cores(), len(indices)))
    if workers == 1:
        return [one(i) for i in indices]
    # A fixed set of workers pulls the next index: memory holds the hashes, not a task per block.
    out = [""] * len(indices)
    taken = iter(range(len(indices)))
    take = threading.Lock()

    def work() -> None:
        nonlocal taken
        while True:
            with take:
                k = next(taken, None)
            if k is None:
                return
            try:
                out[k] = one(indices[k])
            except BaseException:
                with take:
                    taken = iter(())  # the others stop at their next block
                raise

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done in [pool.submit(work) for _ in range(workers)]:
            done.result()
    return out


def proven_blocks(fd: int, expected: Sequence[str], block_size: int, size: int, have: int) -> int:
    """How many leading blocks of the file open as ``fd`` (``have`` bytes of a ``size``-byte file)
    match ``expected``: a resume keeps exactly these and refetches the rest."""
    complete = [i for i in range(len(expected)) if min(size, (i + 1) * block_size) <= have]
    got = hash_blocks_fd(fd, block_size, complete, size) if complete else []
    for i, digest in enumerate(got):
        if digest != expected[i]:
            return i
    return len(got)


def bad_blocks(path: Path, block_size: int, hashes: Sequence[str], size: int,
               advance: Callable[[int], None] | None = None, threads: int | None = None,
               base: int = 0) -> list[int]:
    """Indices of the blocks of ``path`` (or of its region from ``base``) whose SHA-256 is not the
    expected one (in parallel)."""
    got = hash_blocks(path, block_size, range(len(hashes)), size, advance, threads, base)
    return [i for i, (have, want) in enumerate(zip(got, hashes, strict=True)) if have != want]


def with_fadvise(fd: int, offset: int, length: int) -> None:
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)



def copy_into(src: Path, fd: int, length: int) -> None:
    """Copy the first ``length`` bytes of ``src`` into the empty file open as ``fd`` (a temp copy
    to be checked afterwards)."""
    from teadist.base.fsutil import PwriteSink

    with open(src, "rb", buffering=0) as fin, PipelinedCopier(n_sinks=1) as copier:
        copier.copy_file_range(fin.fileno(), 0, length, [PwriteSink(fd, 0)])


def copy_verified(src: Path, dest: Path, size: int, sha256: str, label: str, folder: Path | None = None,
                  stem: str | None = None) -> BlockMap:
    """Copy ``src`` to ``dest`` hashing while copying (one pass), temp-then-rename (temp created in
    ``folder`` as ``stem…``); raise IntegrityError naming ``label`` and leave nothing at ``dest``
    when size or sha256 differ. Returns the copy's block map (from the same pass)."""
    from teadist.base.fsutil import WriteSink, atomic_write
    from teadist.errors import IntegrityError

    digest = hashlib.sha256()
    blocks = BlockHasher(BLOCK_SIZE)
    with open(src, "rb", buffering=0) as fin, atomic_write(dest, folder, stem) as out, \
            PipelinedCopier(n_sinks=3) as copier:
        try:
            copier.copy_file_range(fin.fileno(), 0, size, [digest.update, WriteSink(out), blocks])
        except TruncatedInput as exc:
            raise IntegrityError(f"{label} has {exc.copied} bytes, expected {size}") from None
        if os.fstat(fin.fileno()).st_size != size:
            raise IntegrityError(f"{label} is longer than the {size} bytes expected")
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"{label} does not match its sha256 in the manifest",
                                 hint="download it again")
    return blocks.finish()
