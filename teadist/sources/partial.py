"""A partial download and its sidecar: the only bytes a re-run may keep, and the proof of them.

The partial is opened once, by descriptor (created exclusively, never through a symlink), and all
writes and reads go through that descriptor. The sidecar says how the partial was being filled —
``stream`` (a prefix) or ``segments`` (byte ranges written in place, with each range's progress) —
which validator (ETag) its bytes came from, and for which expected file (``key``) and size. A
partial without a sidecar that matches is not proof of anything and is discarded: a sparse
segmented partial is never read as a prefix, whatever ``--jobs`` a re-run uses.

A stream partial resumes at the last proven block: the sidecar lists the SHA-256 of each complete
block written so far (or the source's block map is known, from a manifest), the prefix is checked
against them on every core, and everything after the last block that matches is cut off and
fetched again — never trusted.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teadist.base.blocks import BLOCK_SIZE, BlockMap
from teadist.base.fsutil import (
    UnsafePathError,
    commit_fd,
    create_exclusive,
    create_temp,
    is_disk_full,
    open_own_file,
    remove_quietly,
)
from teadist.errors import DiskSpaceError

SIDECAR_VERSION = 3  # 3: stream partials carry the block hashes that prove their prefix
MAX_SIDECAR_BYTES = 1024 * 1024
STREAM, SEGMENTS = "stream", "segments"


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's content, or {} when it is missing, unreadable, not ours or not a JSON object."""
    fd = open_own_file(path)
    if fd is None:
        return {}
    try:
        raw = os.pread(fd, MAX_SIDECAR_BYTES + 1, 0)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= MAX_SIDECAR_BYTES else None
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_segments(value: object, size: int) -> list[list[int]] | None:
    """Ranges that tile [0, size) in order, each with its progress inside it; None otherwise."""
    if not isinstance(value, list) or not value:
        return None
    out, expected = [], 0
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and all(type(v) is int for v in item)):
            return None
        start, end, done = item
        if start != expected or not start <= done <= end or end <= start:
            return None
        out.append([start, end, done])
        expected = end
    return out if expected == size else None


@dataclass
class Partial:
    """An open partial file, its sidecar's state, and the operations that keep them consistent."""

    path: Path
    sidecar: Path
    key: str
    size: int | None
    fd: int
    mode: str | None = None  # None: fresh, nothing proven yet
    etag: str | None = None
    segments: list[list[int]] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # stream: SHA-256 of each complete block written
    tail: tuple[int, str] | None = None  # stream: (bytes, SHA-256) of the incomplete block after them
    dropped: int = 0  # bytes of the partial cut off on open because no block hash proved them
    # sidecar writes: one at a time, and never an older state after a newer one
    _save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _taken: int = field(default=0, repr=False, compare=False)  # states snapshotted so far
    _written: int = field(default=0, repr=False, compare=False)  # the newest state on disk

    @classmethod
    def open(cls, path: Path, sidecar: Path, key: str, size: int | None,
             expected: BlockMap | None = None) -> Partial:
        """Resume what the sidecar proves, or start an empty partial (discarding anything unproven).
        ``expected``: the source's block map, when known; it proves a stream prefix instead of the
        sidecar's own block hashes."""
        state = read_sidecar(sidecar)
        fd = open_own_file(path)
        if fd is not None:
            have = os.fstat(fd).st_size
            mode = state.get("mode")
            etag = state.get("etag")
            ok = (state.get("v") == SIDECAR_VERSION and state.get("key") == key and state.get("size") == size
                  and (etag is None or isinstance(etag, str)))
            if ok and mode == STREAM and (size is None or have <= size):
                partial = cls(path, sidecar, key, size, fd, STREAM, etag)
                partial._keep_proven(state.get("blocks"), state.get("tail"), expected)
                return partial
            if ok and mode == SEGMENTS and size is not None and have == size:
                segments = _valid_segments(state.get("segments"), size)
                if segments is not None:
                    return cls(path, sidecar, key, size, fd, SEGMENTS, etag, segments)
            os.close(fd)  # bytes nobody can vouch for: start again
            remove_quietly(path)
        remove_quietly(sidecar)
        return cls(path, sidecar, key, size, create_exclusive(path))

    def _keep_proven(self, listed: object, tail: object, expected: BlockMap | None) -> None:
        """Cut the stream prefix back to the end of its last block whose hash matches: the source's
        map if known, else the hashes (and the hash of the incomplete last block) this sidecar
        recorded as the bytes were written."""
        import hashlib

        from teadist.base.hashing import PipelinedCopier, proven_blocks

        have = self.length
        own = isinstance(listed, list) and all(isinstance(h, str) for h in listed)
        if expected is not None and expected.block_size == BLOCK_SIZE:
            hashes = list(expected.hashes)
        else:
            hashes = list(listed) if isinstance(listed, list) and own else []
        size = self.size if self.size is not None else have
        proven = proven_blocks(self.fd, hashes, BLOCK_SIZE, size, have) if hashes else 0
        keep = min(have, proven * BLOCK_SIZE)
        if own and expected is None and proven == len(hashes) and isinstance(tail, list) and len(tail) == 2 \
                and type(tail[0]) is int and 0 < tail[0] < BLOCK_SIZE and keep + tail[0] <= have:
            digest = hashlib.sha256()
            with PipelinedCopier(n_sinks=1, depth=2) as copier:
                copier.copy_file_range(self.fd, keep, tail[0], [digest.update])
            if digest.hexdigest() == tail[1]:
                keep += tail[0]
        self.blocks = list(hashes[:proven])
        self.dropped = have - keep
        if self.dropped:
            os.ftruncate(self.fd, keep)
            self.save()

    @property
    def length(self) -> int:
        return os.fstat(self.fd).st_size

    def done_bytes(self) -> int:
        if self.mode == SEGMENTS:
            return sum(done - start for start, _, done in self.segments)
        return self.length if self.mode == STREAM else 0

    def save(self) -> None:
        """Write the sidecar now (see ``write``)."""
        self.write(self.snapshot())

    def snapshot(self) -> tuple[int, bytes]:
        """The sidecar's content for the state now, numbered (taken under whatever lock guards the
        state: ``segments`` are changed by several connections)."""
        data: dict[str, Any] = {"v": SIDECAR_VERSION, "key": self.key, "size": self.size, "mode": self.mode,
                                "etag": self.etag}
        if self.mode == SEGMENTS:
            data["segments"] = self.segments
        elif self.mode == STREAM:
            data["blocks"] = self.blocks
            if self.tail is not None:
                data["tail"] = list(self.tail)
        with self._save_lock:
            self._taken += 1
            return self._taken, json.dumps(data).encode()

    def write(self, state: tuple[int, bytes]) -> None:
        """Write a ``snapshot`` as the sidecar, unless a newer one is already there (connections
        write theirs outside the state's lock, so they may arrive out of order; every snapshot
        claims only bytes written before it was taken, so skipping an older one loses nothing).

        Temp created exclusively, then renamed; no fsync: a sidecar lost to a power cut costs a
        re-download, and the final hash still guards the file (an fsync per save made every
        connection wait on the disk, 128 times per GiB)."""
        number, content = state
        with self._save_lock:
            if number <= self._written:
                return
            self._written = number
            folder = self.sidecar.parent
            fd, tmp = create_temp(folder, ".")  # short: names near 255 bytes
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                st, now = os.fstat(fd), os.lstat(tmp)
                if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                    raise UnsafePathError(f"{tmp} was replaced while teadist was writing it",
                                          hint="another program writes into teadist's folders; run the command again")
                os.replace(tmp, self.sidecar)
            except BaseException:
                remove_quietly(tmp)
                raise
            finally:
                os.close(fd)

    def _forget_snapshots(self) -> None:
        """Snapshots taken before now must not be written any more (the state was replaced)."""
        with self._save_lock:
            self._written = self._taken = self._taken + 1

    def start(self, mode: str, etag: str | None, segments: list[list[int]] | None = None) -> None:
        """Begin filling the (empty or truncated) partial in ``mode`` from the file with ``etag``."""
        self.mode, self.etag, self.segments = mode, etag, segments or []
        if mode != STREAM or self.length < len(self.blocks) * BLOCK_SIZE:
            self.blocks = []
        self.tail = None
        if mode == SEGMENTS:
            assert self.size is not None
            os.ftruncate(self.fd, self.size)
        self.save()

    def keep_prefix(self, length: int, etag: str | None) -> None:
        """Keep only the first ``length`` bytes, as a stream partial (the rest is not proven)."""
        os.ftruncate(self.fd, length)
        self.mode, self.etag, self.segments, self.blocks, self.tail = STREAM, etag, [], [], None
        self.save()

    def proven_blocks(self, hashes: list[str], tail: tuple[int, str] | None = None) -> None:
        """Record the hashes of the blocks written so far (stream mode; ``tail``: the incomplete one
        after them); a resume keeps the bytes they still prove."""
        self.blocks, self.tail = hashes, tail if tail is not None and tail[0] else None
        self.save()

    def reset(self) -> None:
        """Nothing kept: empty the partial and forget its sidecar."""
        os.ftruncate(self.fd, 0)
        self.mode, self.etag, self.segments, self.blocks, self.tail = None, None, [], [], None
        self._forget_snapshots()
        remove_quietly(self.sidecar)

    def discard(self) -> None:
        self._forget_snapshots()
        os.close(self.fd)
        remove_quietly(self.path)
        remove_quietly(self.sidecar)

    def close(self) -> None:
        os.close(self.fd)

    def commit(self, final: Path) -> None:
        """Rename the verified partial onto ``final`` (if the path still names our file)."""
        try:
            commit_fd(self.fd, self.path, final)
        finally:
            os.close(self.fd)
        self._forget_snapshots()
        remove_quietly(self.sidecar)


def raise_if_disk_full(exc: OSError, partial: Partial, label: str) -> None:
    if is_disk_full(exc):
        partial.discard()
        raise DiskSpaceError(f"disk full while downloading {label} to {partial.path.parent}",
                             hint=f"free at least {partial.size or 'the model size'} bytes") from None


def bytes_done(path: Path, sidecar: Path) -> int:
    """Bytes a resume would keep (for the free-space check before a download starts)."""
    state = read_sidecar(sidecar)
    segments = state.get("segments")
    size = state.get("size")
    if state.get("mode") == SEGMENTS and isinstance(size, int):
        valid = _valid_segments(segments, size)
        return sum(d - s for s, _, d in valid) if valid else 0
    try:
        return os.lstat(path).st_size if state.get("mode") == STREAM else 0
    except FileNotFoundError:
        return 0


def partial_path_for(dest: Path, key: str) -> Path:
    """The download partial of a destination outside the cache (cache targets: see cache.layout)."""
    from teadist.base.workfiles import WorkFiles

    return WorkFiles.beside(dest).partial(key)
