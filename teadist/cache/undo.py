"""The bytes an in-place repair overwrites, kept so they can be put back — even after a SIGKILL.

``repair`` writes blocks into a cached model in place. Before each write it appends the bytes it is
about to overwrite to the target's undo log (``CacheTarget.repair_undo``, named by the layout) and
fsyncs it, so the log always holds every span the model may have lost. Each entry carries its own
sha256: an entry cut short by a kill was never followed by a write into the model, and reading
stops there.

Whoever next holds the target's lock (a re-run of repair, ``prune --partials``) settles a log left
behind with ``settle_undo``: when the record still says a repair is under way and its block map is
not proven (the written blocks were checked only against a map the source handed out), the old
bytes go back — only the whole sha256 could have accepted the new ones, and the killed run never got
to it; otherwise (the blocks were checked against the record's proven map, or a whole-hash verify
has since proven the file) the log is no longer needed. Either way it is then removed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

from teadist.base.blocks import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from teadist.base.fsutil import (
    UnsafePathError,
    create_exclusive,
    ensure_private_dir,
    open_own_file,
    remove_quietly,
)
from teadist.cache.layout import META_DIR, CacheTarget, real_folder
from teadist.cache.store import CacheRecord

_MAGIC = b"teadist-undo-1\n\0"
_ENTRY = struct.Struct(">QQQ32s")  # file offset, length, the file's size before the first write, sha256
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_all(fd: int, data: bytes, at: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], at + written)


class UndoLog:
    """A fresh undo log for ``target`` (its lock held; any older log settled first)."""

    def __init__(self, target: CacheTarget) -> None:
        ensure_private_dir(target.layout.root, META_DIR, "work", target.name)
        self.path = target.repair_undo
        self.fd = create_exclusive(self.path)
        _write_all(self.fd, _MAGIC, 0)
        self.end = len(_MAGIC)
        self.size: int | None = None  # the model's size before the first write
        self.spans: list[tuple[int, int, int]] = []  # (file offset, length, offset of the bytes in the log)

    def keep(self, fd: int, start: int, length: int) -> None:
        """Keep bytes [start, start+length) of the file open as ``fd`` before they are overwritten."""
        if self.size is None:
            self.size = os.fstat(fd).st_size
        old = os.pread(fd, length, start)  # short where the file is short
        head = _ENTRY.pack(start, len(old), self.size, hashlib.sha256(old).digest())
        _write_all(self.fd, head + old, self.end)
        os.fsync(self.fd)  # on disk before the model's bytes change
        self.spans.append((start, len(old), self.end + _ENTRY.size))
        self.end += _ENTRY.size + len(old)

    def restore(self, fd: int) -> None:
        """Put every kept span back (newest first) and the file's size as it was; fsync."""
        for start, length, at in reversed(self.spans):
            _write_all(fd, os.pread(self.fd, length, at), start)
        if self.size is not None and os.fstat(fd).st_size > self.size:
            os.ftruncate(fd, self.size)
        os.fsync(fd)

    def close(self) -> None:
        os.close(self.fd)
        remove_quietly(self.path)


def _read_entries(fd: int, end: int) -> tuple[list[tuple[int, int, int]], int | None]:
    """The complete, intact entries of a log as (file offset, length, offset in the log), and the
    model's size before the first write; reading stops at the first entry cut short or out of bounds.
    ``end`` is the model's size now: a repair wrote every block whose old bytes it kept, so a kept span
    always lies inside the file (one past its end was never written by a repair of it, and putting it
    back would grow the file — to a sparse terabyte, or an EFBIG that no later run gets past). A repair
    writes the damaged blocks in ascending order, one entry each, so each entry starts at least
    MIN_BLOCK_SIZE after the one before: at most one per 64 KiB of the model, however long the log."""
    if os.pread(fd, len(_MAGIC), 0) != _MAGIC:
        return [], None
    spans: list[tuple[int, int, int]] = []
    size: int | None = None
    at = len(_MAGIC)
    while True:
        head = os.pread(fd, _ENTRY.size, at)
        if len(head) < _ENTRY.size:
            break
        start, length, before, digest = _ENTRY.unpack(head)
        if length > MAX_BLOCK_SIZE or start + length > min(before, end) \
                or (size is not None and before != size) or (spans and start < spans[-1][0] + MIN_BLOCK_SIZE):
            break
        data = os.pread(fd, length, at + _ENTRY.size)
        if len(data) != length or hashlib.sha256(data).digest() != digest:
            break
        spans.append((start, length, at + _ENTRY.size))
        size = before
        at += _ENTRY.size + length
    return spans, size


def _open_repaired(path: Path, record: CacheRecord) -> int | None:
    """The model open for writing — only if it is the very file the repair wrote, and no other name
    shares its bytes (repair never writes such a file in place; the old bytes are not that name's)."""
    try:
        fd = os.open(path, os.O_RDWR | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # gone, a symlink (ELOOP), a folder, a fifo without a writer, ...
        return None
    st = os.fstat(fd)  # of what was opened, not of what a name said a moment before
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (record.inode is not None and st.st_ino != record.inode):
        os.close(fd)
        return None
    return fd


def settle_undo(target: CacheTarget, record: CacheRecord | None) -> bool:
    """Settle the undo log a killed repair left for ``target`` (call with its lock held): put the old
    bytes back when nothing proved the new ones (see the module's note), then remove it. True when
    bytes were put back. A model that is not the file the repair wrote (replaced, a symlink, another
    name linked to it since) is left as it is: the record still says repairing, so nothing vouches for it."""
    try:
        ours = real_folder(target.layout.root, target.work)
    except UnsafePathError:  # a symlink (or a file) at the work folder's name: nothing through it is ours
        ours = False
    if not ours:
        return False
    fd = open_own_file(target.repair_undo)
    if fd is None:
        return False
    restored = False
    try:
        if record is not None and record.repairing and record.proven_map is None:
            out = _open_repaired(target.final, record)
            if out is not None:
                try:
                    spans, size = _read_entries(fd, os.fstat(out).st_size)
                    if spans:
                        for start, length, at in reversed(spans):
                            _write_all(out, os.pread(fd, length, at), start)
                        if size is not None and os.fstat(out).st_size > size:
                            os.ftruncate(out, size)
                        os.fsync(out)
                        restored = True
                finally:
                    os.close(out)
    finally:
        os.close(fd)
    remove_quietly(target.repair_undo)
    return restored
