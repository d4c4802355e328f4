"""File-system primitives: safe names, exclusive creation, atomic writes, free-space checks.

Every file teadist writes goes to a temporary name created exclusively (``O_EXCL``, never through
a symlink) on the destination's file system and is renamed into place only once complete and
verified, so a final path never holds a partial file and a planted symlink is never written through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from teadist.base.sizes import format_size
from teadist.errors import DiskSpaceError, ManifestError, TeadistError

PART_SUFFIX = ".part"
MAX_MODEL_NAME_BYTES = 200  # a model or chunk name leaves room for teadist's own names beside it (255)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
MAX_NAME_BYTES = 255
_WINDOWS_DEVICES = {
    "con", "prn", "aux", "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}
# C0 and C1 controls, DEL, and the invisible format characters that reorder or hide text (bidi
# overrides and isolates, zero-width marks, line/paragraph separators, BOM): a name holding one
# displays as another name.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def plain_filename_problem(name: object) -> str | None:
    """Why ``name`` is not a safe plain file name, or None when it is."""
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "is empty"
    if _CONTROL.search(name):
        return "contains a control or invisible formatting character"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", ".."):
        return "is a relative path component"
    if ":" in name:
        return "contains ':' (drive letter or stream name)"
    if name != name.strip() or name.endswith("."):
        return "has leading/trailing space or a trailing dot"
    if name.split(".")[0].lower() in _WINDOWS_DEVICES:
        return "is a reserved device name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def require_plain_filename(name: object, field: str) -> str:
    """Return ``name`` if it is a plain file name; raise ManifestError naming ``field`` otherwise."""
    problem = plain_filename_problem(name)
    if problem is not None:
        shown = repr(name)[:80]
        raise ManifestError(f"{field}: {shown} {problem}; only plain file names are allowed")
    assert isinstance(name, str)
    return name


class UnsafePathError(TeadistError):
    """A symlink or a non-regular file sits where teadist keeps its own files."""


def create_exclusive(path: Path) -> int:
    """A new, empty file at ``path`` opened for reading and writing; never an existing file and
    never through a symlink (FileExistsError if anything is there)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)


def create_temp(folder: Path, stem: str) -> tuple[int, Path]:
    """A fresh temp file ``<stem>tmp.<random>.part`` in ``folder``, created exclusively."""
    while True:
        path = folder / f"{stem}tmp.{secrets.token_hex(6)}{PART_SUFFIX}"
        try:
            return create_exclusive(path), path
        except FileExistsError:
            continue


def open_own_file(path: Path) -> int | None:
    """Open a file teadist wrote earlier (a partial, a sidecar) for reading and writing.

    None when nothing is there. Anything that is not a plain file — a symlink planted at the
    name, a folder, a fifo — is not ours: it is removed (the link itself, never its target) and
    None returned, so the caller starts afresh with ``create_exclusive``. So is a file with
    another name (``st_nlink > 1``): teadist's own partials have one name, and writing or
    truncating a hard-linked one would change bytes another name shares — only this name goes.
    """
    try:
        fd = os.open(path, os.O_RDWR | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError:  # ELOOP (a symlink), EISDIR, ENXIO (a fifo without a writer), ...
        remove_foreign(path)
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        remove_foreign(path)
        return None
    return fd


def read_small_file(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a regular file (the caller tells "too large" by the extra byte).

    Opened with O_NONBLOCK and checked to be a regular file before reading, so a FIFO or a device
    given where a manifest belongs is refused at once instead of waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            piece = os.read(fd, min(left, 1 << 20))
            if not piece:
                break
            chunks.append(piece)
            left -= len(piece)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_foreign(path: Path) -> None:
    """Remove whatever sits at ``path`` without following it: a link goes, its target stays."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def ensure_private_dir(base: Path, *parts: str) -> Path:
    """``base/part1/part2…`` as real folders, created as needed. ``base`` itself may be a symlink
    (a cache moved to another disk); anything below it that is a symlink or not a folder is refused."""
    path = base
    path.mkdir(parents=True, exist_ok=True)
    for part in parts:
        path = path / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"refusing to use {path}: it is a symlink or not a folder, and teadist keeps "
                                  "its own files there", hint="remove it; teadist recreates the folder")
    return path


def is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_fd(fd: int, tmp: Path, dest: Path) -> None:
    """Flush the file open as ``fd`` and rename it from ``tmp`` onto ``dest`` atomically — only if
    ``tmp`` still names that very file (nobody swapped it while it was written)."""
    os.fsync(fd)
    st, now = os.fstat(fd), os.lstat(tmp)
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
        raise UnsafePathError(f"{tmp} was replaced while teadist was writing it; nothing installed",
                              hint="another program writes into teadist's folders; run the command again")
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def commit_file(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` (a file teadist created) to disk and rename it onto ``dest`` atomically."""
    fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        commit_fd(fd, tmp, dest)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(dest: Path, folder: Path | None = None, stem: str | None = None) -> Iterator[BinaryIO]:
    """Write ``dest`` through a temp file that is renamed into place only if the block succeeds.

    The temp file is created exclusively in ``folder`` (default: beside ``dest``), named from ``stem``.
    """
    folder = folder if folder is not None else dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(folder, stem if stem is not None else f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            commit_fd(fh.fileno(), tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_bytes_atomic(dest: Path, data: bytes, folder: Path | None = None, stem: str | None = None) -> None:
    with atomic_write(dest, folder, stem) as fh:
        fh.write(data)


def free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise DiskSpaceError before starting a write of ``needed`` bytes that cannot fit."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskSpaceError(
            f"not enough free space in {folder} for {what}: need {format_size(needed)}, "
            f"{format_size(free)} free",
            hint="free some space (e.g. `teadist prune`) or choose another destination",
        )


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


_WRITEBACK_STEP = 64 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


class _SyncFileRange:
    """Linux ``sync_file_range``: start writeback of a range without waiting for it."""

    func: Any = None
    loaded = False

    @classmethod
    def call(cls, fd: int, offset: int, length: int) -> None:
        if not cls.loaded:
            cls.loaded = True
            try:
                import ctypes
                import ctypes.util

                try:  # by its usual name first: find_library runs /sbin/ldconfig in a child process
                    libc = ctypes.CDLL("libc.so.6", use_errno=True)
                except OSError:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                func = libc.sync_file_range
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                cls.func = func
            except (OSError, AttributeError):
                cls.func = None
        if cls.func is not None:
            cls.func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing the dirty pages of ``length`` bytes of the file open as ``fd`` from ``offset``
    (0: to its end) to disk, without waiting (Linux; elsewhere nothing): the final fsync is short."""
    _SyncFileRange.call(fd, offset, length)


class WriteSink:
    """Write views to a file, starting writeback every 64 MiB so the final fsync is short.

    The disk then writes while the other sinks still hash, instead of after them.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._fd = fh.fileno()
        self._pos = fh.tell()
        self._flushed = self._pos

    def __call__(self, view: memoryview) -> None:
        self._fh.write(view)
        self._pos += len(view)
        if self._pos - self._flushed >= _WRITEBACK_STEP:
            self._fh.flush()
            _SyncFileRange.call(self._fd, self._flushed, self._pos - self._flushed)
            self._flushed = self._pos


class PwriteSink:
    """Write views at increasing offsets of a file descriptor (``pwrite``), starting writeback every
    64 MiB like ``WriteSink``. Used where a file is held by descriptor, never reopened by name."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._pos = offset
        self._flushed = offset

    @property
    def position(self) -> int:
        return self._pos

    def __call__(self, view: memoryview) -> None:
        written = 0
        while written < len(view):
            written += os.pwrite(self._fd, view[written:], self._pos + written)
        self._pos += len(view)
        if self._pos - self._flushed >= _WRITEBACK_STEP:
            _SyncFileRange.call(self._fd, self._flushed, self._pos - self._flushed)
            self._flushed = self._pos
