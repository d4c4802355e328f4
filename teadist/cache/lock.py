"""One lock per target, across processes: ``flock`` on a lock file that is removed when released.

Removing a lock file is only safe if every locker checks, once it holds the lock, that the path
still names the file it locked: a process that opened the old file and waited would otherwise
hold a lock nobody else can see, beside a second holder of a new file. Every acquisition here
does that check and starts over if the file was replaced or removed, so lock files can be
unlinked at release and never pile up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from teadist.base.fsutil import UnsafePathError
from teadist.errors import TeadistError

LOCK_TIMEOUT = 6 * 3600.0
_POLL = (0.02, 0.05, 0.1, 0.2, 0.25)


class LockTimeoutError(TeadistError):
    """Another teadist held the lock longer than we were willing to wait."""


def _try_acquire(path: Path) -> int | None:
    """The fd of ``path`` locked exclusively, or None if another holder has it (one attempt)."""
    import fcntl  # POSIX: teadist's locks are flock(2) locks

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"refusing the lock {path}: it is a symlink",
                                      hint="remove it; teadist creates its own lock files") from None
            if exc.filename is None:
                exc.filename = str(path)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # the file was removed (or replaced) before we got it: lock the current one


def _release(fd: int, path: Path) -> None:
    """Remove the lock file (if it is still ours), then let go."""
    with contextlib.suppress(OSError):
        held, now = os.fstat(fd), os.lstat(path)
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def held(path: Path, what: str, timeout: float = LOCK_TIMEOUT,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock at ``path`` (waiting up to ``timeout`` seconds for another holder; ``on_wait``
    is told once when that happens)."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while (fd := _try_acquire(path)) is None:
        if attempt == 0 and on_wait is not None:
            on_wait(f"waiting for another teadist working on {what}")
        if time.monotonic() >= deadline:
            raise LockTimeoutError(f"timed out waiting for another teadist working on {what}",
                                   hint="if no other teadist is running, run the command again")
        time.sleep(_POLL[min(attempt, len(_POLL) - 1)])
        attempt += 1
    try:
        yield
    finally:
        _release(fd, path)


@contextlib.contextmanager
def held_if_free(path: Path) -> Iterator[bool]:
    """Hold the lock at ``path`` if nobody does (yields True), else yield False without waiting."""
    fd = _try_acquire(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _release(fd, path)
