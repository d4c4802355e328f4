"""Cache care: evict least recently used models, remove stale partial downloads.

Everything goes through the cache layout, target by target, and only with the target's lock:
prune takes each lock without waiting and leaves alone whatever another teadist is working on.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from teadist.base.fsutil import remove_foreign
from teadist.cache.layout import CacheTarget
from teadist.cache.lock import held_if_free
from teadist.cache.store import CachedModel, ModelCache
from teadist.cache.undo import settle_undo
from teadist.errors import TeadistError

LEGACY_STAGING_IDLE = 3600.0  # an older teadist's shared staging folder had no lock: leave recent ones


def model_bytes(cache: ModelCache, model: CachedModel) -> int:
    """Bytes the model's files take now (kept shards included; missing files count 0)."""
    total = 0
    for name in model.filenames:
        try:
            st = os.lstat(cache.path_for(name))
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def in_flight(cache: ModelCache) -> list[tuple[str, int]]:
    """(what, bytes) of everything in flight: each target's work folder and older teadist's partials."""
    layout = cache.layout
    out = [(name, _bytes(layout.work_dir / name)) for name in layout.work_names()]
    out += [(path.name, _bytes(path)) for _, path in layout.legacy_partials()]
    out += [(path.name, _bytes(path)) for path in layout.legacy_staging()]
    return out


def prune_partials(cache: ModelCache) -> list[Path]:
    """Remove what is in flight for targets nobody is working on; return what was removed."""
    layout = cache.layout
    removed: list[Path] = []
    for name in layout.work_names():
        target = _target_or_none(cache, name)
        if target is None:  # not a name teadist would ever give a target: not ours to keep
            remove_foreign(layout.work_dir / name)
            removed.append(layout.work_dir / name)
            continue
        with target.lock_if_free() as free:
            if free:
                # A killed repair's undo log is settled (old bytes put back where nothing proved the
                # new ones), never just deleted.
                settle_undo(target, cache.read_record(name))
                removed += target.clear_work()
    removed += _prune_legacy(cache)
    for record_temp in layout.record_files():
        if record_temp.name.startswith(".") and ".tmp." in record_temp.name:
            owner = _target_or_none(cache, record_temp.name[1:record_temp.name.rindex(".tmp.")])
            if owner is not None:
                with owner.lock_if_free() as free:
                    if free:
                        remove_foreign(record_temp)
                        removed.append(record_temp)
    for name in layout.lock_names():  # left by a killed teadist: taking and releasing removes it
        with held_if_free(layout.locks_dir / f"{name}.lock"):
            pass
    return removed


def _prune_legacy(cache: ModelCache) -> list[Path]:
    """Partials, locks and staging an older teadist left beside the models."""
    layout = cache.layout
    removed: list[Path] = []
    for name, path in layout.legacy_partials():
        with held_if_free(layout.root / f".{name}.lock") as free:
            if free:
                remove_foreign(path)
                removed.append(path)
    for _, path in layout.legacy_locks():
        with held_if_free(path):
            pass
    for folder in layout.legacy_staging():
        if time.time() - _newest_mtime(folder) > LEGACY_STAGING_IDLE:
            remove_foreign(folder)
            removed.append(folder)
    return removed


def prune_lru(cache: ModelCache, max_size: int) -> list[Path]:
    """Evict least recently used models (all their files) until the models fit in ``max_size``;
    a model another teadist is working on is skipped."""
    models = cache.scan().models
    sizes = {m.head.filename: model_bytes(cache, m) for m in models}
    total = sum(sizes.values())
    removed: list[Path] = []
    for model in sorted(models, key=lambda m: m.head.last_use_ns()):
        if total <= max_size:
            break
        gone = cache.remove(model, wait=False)
        if gone is None:
            continue
        removed += gone
        total -= sizes[model.head.filename]
    return removed


def _target_or_none(cache: ModelCache, name: str) -> CacheTarget | None:
    try:
        return cache.target(name)
    except TeadistError:
        return None


def _bytes(path: Path) -> int:
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISDIR(st.st_mode):
        for dirpath, _, files in os.walk(path):
            for file in files:
                try:
                    fst = os.lstat(os.path.join(dirpath, file))
                except FileNotFoundError:
                    continue
                total += fst.st_size if stat.S_ISREG(fst.st_mode) else 0
    return total


def _newest_mtime(path: Path) -> float:
    newest = os.lstat(path).st_mtime
    for dirpath, _, files in os.walk(path):
        for file in files:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, file)).st_mtime)
            except FileNotFoundError:
                continue
    return newest
