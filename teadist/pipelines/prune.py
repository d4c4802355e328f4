"""Cache care: evict least recently used models, remove stale partial downloads."""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

from teadist.base.fsutil import remove_quietly
from teadist.cache.store import ModelCache, lock_path_for

_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8,16}\.part(\.json(\.tmp)?)?$")


def _unlocked(dest: Path) -> bool:
    """True when no teadist holds the lock of ``dest`` (so its partials are stale)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path_for(dest)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def prune_partials(cache: ModelCache) -> list[Path]:
    removed: list[Path] = []
    if not cache.root.is_dir():
        return removed
    for path in sorted(cache.root.iterdir()):
        match = _PARTIAL_RE.match(path.name)
        if match and path.is_file() and _unlocked(cache.root / match.group("name")):
            remove_quietly(path)
            removed.append(path)
    staging = cache.meta / "staging"
    if staging.is_dir():
        for folder in sorted(staging.iterdir()):
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


def prune_lru(cache: ModelCache, max_size: int) -> list[Path]:
    records = cache.records()
    total = sum(cache.path_for(r.filename).stat().st_size for r in records)
    removed: list[Path] = []
    for record in sorted(records, key=lambda r: r.last_used or r.installed_at):
        if total <= max_size:
            break
        size = cache.path_for(record.filename).stat().st_size
        removed += cache.remove(record)
        total -= size
    return removed
