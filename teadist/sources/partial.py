"""A partial download and its sidecar: the only bytes a re-run may keep, and the proof of them.

The partial is opened once, by descriptor (created exclusively, never through a symlink), and all
writes and reads go through that descriptor. The sidecar says how the partial was being filled —
``stream`` (a prefix) or ``segments`` (byte ranges written in place, with each range's progress) —
which validator (ETag) its bytes came from, and for which expected file (``key``) and size. A
partial without a sidecar that matches is not proof of anything and is discarded: a sparse
segmented partial is never read as a prefix, whatever ``--jobs`` a re-run uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teadist.base.fsutil import (
    commit_fd,
    create_exclusive,
    is_disk_full,
    open_own_file,
    remove_quietly,
    write_bytes_atomic,
)
from teadist.errors import DiskSpaceError

SIDECAR_VERSION = 2
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

    @classmethod
    def open(cls, path: Path, sidecar: Path, key: str, size: int | None) -> Partial:
        """Resume what the sidecar proves, or start an empty partial (discarding anything unproven)."""
        state = read_sidecar(sidecar)
        fd = open_own_file(path)
        if fd is not None:
            have = os.fstat(fd).st_size
            mode = state.get("mode")
            etag = state.get("etag")
            ok = (state.get("v") == SIDECAR_VERSION and state.get("key") == key and state.get("size") == size
                  and (etag is None or isinstance(etag, str)))
            if ok and mode == STREAM and (size is None or have <= size):
                return cls(path, sidecar, key, size, fd, STREAM, etag)
            if ok and mode == SEGMENTS and size is not None and have == size:
                segments = _valid_segments(state.get("segments"), size)
                if segments is not None:
                    return cls(path, sidecar, key, size, fd, SEGMENTS, etag, segments)
            os.close(fd)  # bytes nobody can vouch for: start again
            remove_quietly(path)
        remove_quietly(sidecar)
        return cls(path, sidecar, key, size, create_exclusive(path))

    @property
    def length(self) -> int:
        return os.fstat(self.fd).st_size

    def done_bytes(self) -> int:
        if self.mode == SEGMENTS:
            return sum(done - start for start, _, done in self.segments)
        return self.length if self.mode == STREAM else 0

    def save(self) -> None:
        """Write the sidecar (temp created exclusively, then renamed; no fsync: a sidecar lost to a
        power cut costs a re-download, and the final hash still guards the file)."""
        data: dict[str, Any] = {"v": SIDECAR_VERSION, "key": self.key, "size": self.size, "mode": self.mode,
                                "etag": self.etag}
        if self.mode == SEGMENTS:
            data["segments"] = self.segments
        write_bytes_atomic(self.sidecar, json.dumps(data).encode(), stem=".")  # short: names near 255 bytes

    def start(self, mode: str, etag: str | None, segments: list[list[int]] | None = None) -> None:
        """Begin filling the (empty or truncated) partial in ``mode`` from the file with ``etag``."""
        self.mode, self.etag, self.segments = mode, etag, segments or []
        if mode == SEGMENTS:
            assert self.size is not None
            os.ftruncate(self.fd, self.size)
        self.save()

    def keep_prefix(self, length: int, etag: str | None) -> None:
        """Keep only the first ``length`` bytes, as a stream partial (the rest is not proven)."""
        os.ftruncate(self.fd, length)
        self.mode, self.etag, self.segments = STREAM, etag, []
        self.save()

    def reset(self) -> None:
        """Nothing kept: empty the partial and forget its sidecar."""
        os.ftruncate(self.fd, 0)
        self.mode, self.etag, self.segments = None, None, []
        remove_quietly(self.sidecar)

    def discard(self) -> None:
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
