"""The one owner of the model cache's names.

    <root>/<file>                          a model, under its upstream file name (what runtimes load)
    <root>/.teadist/records/<file>.json    teadist's record of it (sha256, size, where it came from)
    <root>/.teadist/locks/<file>.lock      the target's lock (removed when released)
    <root>/.teadist/work/<file>/           everything in flight for it: the download partial with its
                                           sidecar (and, later, block map), temp files, chunks/
                                           (verified chunks or shards waiting to be assembled), and
                                           repair-undo.part (the bytes an in-place repair overwrote,
                                           see ``undo``)

A *target* is one file name in the cache. Its final file, record, lock and work folder are named
here and nowhere else, and all of them are touched only while the target's lock is held. Kept
llama.cpp shards are one target per shard (each its own lock, partial and record), so two fetches
of one model in different modes never share a byte across locks. ``prune``, ``du``, ``list``,
``verify`` and ``rm`` enumerate through this module, so they count and protect exactly what fetch
writes. A destination outside the cache (``assemble --out``) gets the same roles as hidden names
beside it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teadist.base.fsutil import (
    MAX_MODEL_NAME_BYTES,
    UnsafePathError,
    ensure_private_dir,
    remove_foreign,
    require_plain_filename,
)
from teadist.base.workfiles import WorkFiles
from teadist.cache.lock import LOCK_TIMEOUT, held, held_if_free
from teadist.errors import ManifestError

META_DIR = ".teadist"
RECORD_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
# Left by teadist before this layout: partials beside the models (``.<name>.<16 hex>.part`` with a
# JSON sidecar naming the download's host), filelock locks beside them, a shared staging folder.
_LEGACY_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<key>[0-9a-f]{16})\.part(?P<sidecar>\.json(\.tmp)?)?$")
_LEGACY_LOCK = re.compile(r"^\.(?P<name>.+)\.lock$")
_LEGACY_SIDECAR_BYTES = 64 * 1024
_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")  # llama.cpp's shard names


def kept_shards(first: str) -> list[str] | None:
    """The names of the other shards of a model kept as llama.cpp shards whose first shard is
    ``first`` (``<p>-00001-of-0000N.gguf``); None when ``first`` is not a first shard's name. A
    model's record may list these and no others: it never vouches for, or removes, a foreign name."""
    match = _SHARD.match(first)
    if match is None or int(match["no"]) != 1 or int(match["count"]) < 1:
        return None
    count = int(match["count"])
    return [f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(2, count + 1)]


def first_shard(name: str) -> str | None:
    """The first shard's name of the model whose shard ``name`` is; None when it is no shard name."""
    match = _SHARD.match(name)
    if match is None or not 1 <= int(match["no"]) <= int(match["count"]):
        return None
    return f"{match['prefix']}-00001-of-{match['count']}.gguf"


class Target(Protocol):
    """What a writer needs of its destination: the final path, its work files and its lock."""

    @property
    def final(self) -> Path: ...

    @property
    def files(self) -> WorkFiles: ...

    def lock(self, timeout: float = LOCK_TIMEOUT,
             on_wait: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]: ...


def target_name(name: object) -> str:
    """A file name that may be a cache target: plain, and not hidden (hidden names are teadist's own)."""
    checked = require_plain_filename(name, "model file name")
    if checked.startswith("."):
        raise ManifestError(f"model file name: {checked[:80]!r} starts with '.'; hidden names are not models")
    if len(checked.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
        raise ManifestError(f"model file name: {checked[:60]!r}… is longer than {MAX_MODEL_NAME_BYTES} bytes")
    return checked


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / META_DIR

    @property
    def records_dir(self) -> Path:
        return self.meta / "records"

    @property
    def locks_dir(self) -> Path:
        return self.meta / "locks"

    @property
    def work_dir(self) -> Path:
        return self.meta / "work"

    def target(self, name: str) -> CacheTarget:
        return CacheTarget(self, target_name(name))

    def contains(self, path: Path) -> bool:
        return path.parent.resolve() == self.root.resolve()

    def target_for(self, dest: Path) -> Target:
        """The cache target when ``dest`` is in the cache, else a destination of its own."""
        return self.target(dest.name) if self.contains(dest) else OutsideTarget(dest)

    def ensure_records_dir(self) -> Path:
        return ensure_private_dir(self.root, META_DIR, "records")

    @property
    def manifests_dir(self) -> Path:
        return self.meta / "manifests"

    def manifest_copy(self, url: str) -> Path:
        """The last manifest read from ``url``, kept so ``fetch --offline URL`` knows what it names."""
        import hashlib

        return self.manifests_dir / (hashlib.sha256(url.encode("utf-8")).hexdigest()[:32] + ".json")

    def ensure_manifests_dir(self) -> Path:
        return ensure_private_dir(self.root, META_DIR, "manifests")

    # -- enumeration (no symlink inside the layout is ever followed) ----------------------------
    def record_files(self) -> list[Path]:
        return _entries(self.records_dir, RECORD_SUFFIX, below=self.root)

    def work_names(self) -> list[str]:
        return [p.name for p in _entries(self.work_dir, "", below=self.root)]

    def lock_names(self) -> list[str]:
        return [p.name.removesuffix(LOCK_SUFFIX) for p in _entries(self.locks_dir, LOCK_SUFFIX, below=self.root)]

    def legacy_partials(self) -> list[tuple[str, Path]]:
        """(target name, path) of partial files left beside the models by an older teadist.

        Only what that teadist wrote: a plain file named ``.<model name>.<16 hex>.part`` whose
        sidecar (``….part.json``) is a JSON object naming the download's host, or that sidecar.
        A user's ``.notes.<hex>.part`` without one is not teadist's and is never touched."""
        out = []
        for path in _entries(self.root, "", follow=True):
            match = _LEGACY_PARTIAL.match(path.name)
            if match is None or _target_or_none(match["name"]) is None or not _plain(path):
                continue
            sidecar = self.root / f".{match['name']}.{match['key']}.part.json"
            if _legacy_sidecar(sidecar) or (match["sidecar"] and path != sidecar
                                            and _legacy_sidecar(path)):
                out.append((match["name"], path))
        return out

    def legacy_locks(self) -> list[tuple[str, Path]]:
        """Empty ``.<model name>.lock`` files beside a model (or an older partial) of that name:
        an older teadist's filelock locks. A user's file of that shape with content stays."""
        partials = {name for name, _ in self.legacy_partials()}
        out = []
        for path in _entries(self.root, LOCK_SUFFIX, follow=True):
            match = _LEGACY_LOCK.match(path.name)
            if match is None or _target_or_none(match["name"]) is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_nlink == 1 \
                        and (match["name"] in partials or _plain(self.root / match["name"])):
                    out.append((match["name"], path))
        return out

    def legacy_staging(self) -> list[Path]:
        return _entries(self.meta / "staging", "", below=self.root)


@dataclass(frozen=True)
class CacheTarget:
    """One file name in the cache and every name that belongs to it."""

    layout: CacheLayout
    name: str

    @property
    def final(self) -> Path:
        return self.layout.root / self.name

    @property
    def record(self) -> Path:
        return self.layout.records_dir / (self.name + RECORD_SUFFIX)

    def record_readable(self) -> bool:
        """True when the records folder exists as a real folder (raise UnsafePathError when
        ``.teadist`` or ``records`` is a symlink: a record is never read through one)."""
        return real_folder(self.layout.root, self.layout.records_dir)

    @property
    def lock_path(self) -> Path:
        return self.layout.locks_dir / (self.name + LOCK_SUFFIX)

    @property
    def work(self) -> Path:
        return self.layout.work_dir / self.name

    @property
    def files(self) -> WorkFiles:
        return WorkFiles(self.final, self.work, "", self.layout.root)

    @property
    def repair_undo(self) -> Path:
        """The bytes an in-place repair of this target overwrote, kept to be put back (see ``undo``)."""
        return self.work / "repair-undo.part"

    def discard_temps(self) -> list[Path]:
        """Remove the temp files a killed writer left (nobody resumes one); call with the lock held."""
        gone = [e for e in _entries(self.work, "", below=self.layout.root) if e.name.startswith("tmp.")]
        for entry in gone:
            remove_foreign(entry)
        return gone

    def chunks(self, version: str) -> Path:
        """Where verified chunks (or shards) of one published version (the original's sha256) wait
        until they are assembled into this target."""
        return self.work / f"chunks-{version[:16]}"

    def chunk_files(self, version: str, chunk_name: str) -> WorkFiles:
        folder = self.chunks(version)
        return WorkFiles(folder / chunk_name, folder, f".{chunk_name}.", self.layout.root)

    def ensure_chunks(self, version: str) -> Path:
        """The chunk folder of ``version``; chunks of other versions are stale and removed (lock held)."""
        for entry in _entries(self.work, "", below=self.layout.root):
            if entry.name.startswith("chunks-") and entry.name != self.chunks(version).name:
                remove_foreign(entry)
        return ensure_private_dir(self.layout.root, META_DIR, "work", self.name, self.chunks(version).name)

    def discard_stale(self, keep: Path) -> None:
        """Remove what a killed run left that nobody can resume: temp files, and download partials of
        another expected file than ``keep`` (with the lock held, nobody else is using them)."""
        for entry in _entries(self.work, "", below=self.layout.root):
            stale_download = entry.name.startswith("download.") and not entry.name.startswith(keep.name)
            if stale_download or entry.name.startswith(("tmp.", ".")):
                remove_foreign(entry)

    def lock(self, timeout: float = LOCK_TIMEOUT,
             on_wait: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]:
        ensure_private_dir(self.layout.root, META_DIR, "locks")
        return held(self.lock_path, self.name, timeout, on_wait)

    @contextlib.contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        ensure_private_dir(self.layout.root, META_DIR, "locks")  # never a lock through a symlinked folder
        with held_if_free(self.lock_path) as got:
            yield got

    def clear_work(self) -> list[Path]:
        """Remove everything in flight for this target (call with its lock held)."""
        if not real_folder(self.layout.root, self.layout.work_dir) or not os.path.lexists(self.work):
            return []
        entries = [self.work]
        remove_foreign(self.work)
        return entries


@dataclass(frozen=True)
class OutsideTarget:
    """A destination outside the cache: hidden work files and lock beside it."""

    final: Path

    @property
    def files(self) -> WorkFiles:
        return WorkFiles.beside(self.final)

    @property
    def lock_path(self) -> Path:
        return self.final.parent / f".{self.final.name}{LOCK_SUFFIX}"

    def lock(self, timeout: float = LOCK_TIMEOUT,
             on_wait: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager[None]:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        return held(self.lock_path, self.final.name, timeout, on_wait)


def _target_or_none(name: str) -> str | None:
    try:
        return target_name(name)
    except ManifestError:
        return None


def _plain(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _legacy_sidecar(path: Path) -> bool:
    """True when ``path`` is an older teadist's download sidecar: a small JSON object with ``url_host``."""
    from teadist.base import jsonin
    from teadist.base.fsutil import read_small_file

    if not _plain(path):
        return False
    try:
        raw = read_small_file(path, _LEGACY_SIDECAR_BYTES)
        data = jsonin.loads(raw) if len(raw) <= _LEGACY_SIDECAR_BYTES else None
    except (OSError, jsonin.JsonInputError):
        return False
    return isinstance(data, dict) and "url_host" in data


def real_folder(root: Path, folder: Path) -> bool:
    """True when ``folder`` (below ``root``) exists with every step below ``root`` a real folder;
    False when a step is missing. A step that is a symlink or a file raises UnsafePathError: the
    cache root may be a link to another disk, nothing inside it may, and teadist never reads,
    writes, locks or deletes through one."""
    path = root
    for part in folder.relative_to(root).parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"refusing to use {path}: it is a symlink or not a folder, and teadist keeps "
                                  "its own files there", hint="remove it; teadist recreates the folder")
    return True


def _entries(folder: Path, suffix: str, follow: bool = False, below: Path | None = None) -> list[Path]:
    """Entries of ``folder`` ending with ``suffix``; nothing when it is missing. With ``below``
    (teadist's own folders), a symlink at any step from ``below`` to ``folder`` is refused; else
    one at ``folder`` itself gives nothing unless ``follow``."""
    try:
        if below is not None:
            if not real_folder(below, folder):
                return []
        elif not follow and not stat.S_ISDIR(os.lstat(folder).st_mode):
            return []
        return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
    except (FileNotFoundError, NotADirectoryError):
        return []

