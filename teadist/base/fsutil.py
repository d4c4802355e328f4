"""File-system primitives: safe names, atomic writes, free-space checks.

Every file teadist writes goes to a temporary name in the destination folder and is renamed
into place only once complete and verified, so a final path never holds a partial file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from teadist.base.sizes import format_size
from teadist.errors import DiskSpaceError, ManifestError

PART_SUFFIX = ".part"
MAX_NAME_BYTES = 255
_WINDOWS_DEVICES = {
    "con", "prn", "aux", "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_filename_problem(name: object) -> str | None:
    """Why ``name`` is not a safe plain file name, or None when it is."""
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "is empty"
    if _CONTROL.search(name):
        return "contains a control character"
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


def temp_path_for(dest: Path) -> Path:
    """A fresh, unique temporary path beside ``dest`` (same folder, same file system)."""
    return dest.parent / f".{dest.name}.{secrets.token_hex(4)}{PART_SUFFIX}"


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_file(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` to disk and rename it onto ``dest`` atomically."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """Write ``dest`` through a temp file that is renamed into place only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        with open(tmp, "xb") as fh:  # O_CREAT|O_EXCL: never an existing file, never through a symlink
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_write(dest) as fh:
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
    import errno

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

                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                func = libc.sync_file_range
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                cls.func = func
            except (OSError, AttributeError):
                cls.func = None
        if cls.func is not None:
            cls.func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


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
