"""Rebuild the original file from byte chunks, verifying each chunk while it is copied.

The output grows in a stable partial file named by the destination's work files (in the cache:
its target's work folder), under the target's lock; an interrupted run resumes after the last
complete, re-verified chunk. Only a file whose whole SHA-256 matches is renamed into place: on any
mismatch or missing chunk nothing is left at the destination.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from teadist.base.fsutil import (
    PwriteSink,
    commit_fd,
    create_exclusive,
    ensure_free_space,
    is_disk_full,
    open_own_file,
    remove_quietly,
)
from teadist.base.hashing import PipelinedCopier, TruncatedInput, hash_range
from teadist.base.progress import Reporter
from teadist.cache.layout import OutsideTarget, Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError, TeadistError, UsageError
from teadist.formats.manifest import ChunkRecord, Manifest

Origin = dict[str, str | None]


@dataclass
class AssembleResult:
    path: Path
    sha256: str
    size: int
    already_present: bool
    resumed_bytes: int = 0


def target_for(dest: Path, cache: ModelCache | None) -> Target:
    """The cache target when ``dest`` is in ``cache``, else a destination of its own."""
    return cache.layout.target_for(dest) if cache is not None else OutsideTarget(dest)


def existing_is_verified(dest: Path, sha256: str, size: int, cache: ModelCache | None,
                         reporter: Reporter) -> bool:
    """True when ``dest`` already holds the expected file (cache record, else a hash)."""
    if not dest.is_file() or dest.is_symlink() or dest.stat().st_size != size:
        return False
    if cache is not None and cache.contains(dest):
        record = cache.read_record(dest.name)
        if record is not None and record.sha256 == sha256 and record.size == size and cache.is_current(record):
            return True
    task = reporter.task(f"check existing {dest.name}", size)
    try:
        return hash_range(dest, advance=task.advance)[0] == sha256
    finally:
        task.close()


def _check_chunks_present(manifest: Manifest, chunks_dir: Path) -> None:
    for chunk in manifest.chunks:
        path = chunks_dir / chunk.name
        if not path.is_file():
            raise IntegrityError(f"chunk {chunk.name} is missing from {chunks_dir}",
                                 hint="download it again or point --chunks at the right folder")
        actual = path.stat().st_size
        if actual != chunk.size:
            raise IntegrityError(
                f"chunk {chunk.name} has {actual} bytes, the manifest says {chunk.size} "
                f"({'truncated' if actual < chunk.size else 'too long'})",
                hint="download that chunk again")


def _resume_point(fd: int, chunks: list[ChunkRecord], whole: hashlib._Hash) -> tuple[int, int]:
    """Re-verify the chunks already in the partial open as ``fd``; return (chunks kept, bytes kept)."""
    have = os.fstat(fd).st_size
    kept_chunks = kept_bytes = 0
    for chunk in chunks:
        if kept_bytes + chunk.size > have:
            break
        digest = hashlib.sha256()
        with PipelinedCopier(n_sinks=2) as copier:
            copier.copy_file_range(fd, kept_bytes, chunk.size, [whole.update, digest.update])
        if digest.hexdigest() != chunk.sha256:
            break
        kept_chunks += 1
        kept_bytes += chunk.size
    return kept_chunks, kept_bytes


def assemble_chunks(manifest: Manifest, chunks_dir: Path, dest: Path, reporter: Reporter,
                    cache: ModelCache | None = None, source: str = "local") -> AssembleResult:
    """Rebuild ``dest`` from ``chunks_dir`` under the destination's lock."""
    if manifest.format != "bytes":
        raise UsageError(f"manifest format {manifest.format!r} cannot be assembled from byte chunks")
    target = target_for(dest, cache)
    with target.lock(on_wait=reporter.info):
        return assemble_chunks_locked(manifest, chunks_dir, target, reporter, cache, source)


def assemble_chunks_locked(manifest: Manifest, chunks_dir: Path, target: Target, reporter: Reporter,
                           cache: ModelCache | None = None, source: str = "local",
                           origin: Origin | None = None) -> AssembleResult:
    """``assemble_chunks`` for a caller that already holds ``target``'s lock."""
    if manifest.format != "bytes":
        raise UsageError(f"manifest format {manifest.format!r} cannot be assembled from byte chunks")
    sha256, size = manifest.file.sha256, manifest.file.size
    assert sha256 is not None and size is not None  # guaranteed by the manifest loader
    dest = target.final
    if existing_is_verified(dest, sha256, size, cache, reporter):
        if cache is not None and cache.contains(dest):
            record_in_cache(cache, dest, manifest, source, origin)
        return AssembleResult(dest, sha256, size, already_present=True)
    _check_chunks_present(manifest, chunks_dir)
    files = target.files
    files.ensure_folder()
    partial = files.partial(sha256, kind="assemble")
    fd = open_own_file(partial)
    whole = hashlib.sha256()
    start_chunk = resumed = 0
    if fd is not None:
        start_chunk, resumed = _resume_point(fd, manifest.chunks, whole)
        if resumed:
            reporter.info(f"resuming {dest.name} after {start_chunk} verified chunks ({resumed} bytes)")
    try:
        ensure_free_space(dest.parent, size - resumed, dest.name)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    if fd is None:
        fd = create_exclusive(partial)
    try:
        os.ftruncate(fd, resumed)
        task = reporter.task(f"assemble {dest.name}", size)
        task.advance(resumed)
        verified_end = resumed
        try:
            sink = PwriteSink(fd, resumed)
            with PipelinedCopier(n_sinks=3) as copier:
                for chunk in manifest.chunks[start_chunk:]:
                    digest = hashlib.sha256()
                    with open(chunks_dir / chunk.name, "rb", buffering=0) as fin:
                        copier.copy_file_range(fin.fileno(), 0, chunk.size,
                                               [whole.update, digest.update, sink], task.advance)
                    if digest.hexdigest() != chunk.sha256:
                        raise IntegrityError(
                            f"chunk {chunk.name} does not match its sha256 in the manifest "
                            f"(got {digest.hexdigest()[:16]}…, expected {chunk.sha256[:16]}…)",
                            hint="download that chunk again")
                    verified_end += chunk.size
        except IntegrityError:
            # The partial now ends in bad bytes; keep only the verified prefix for a re-run.
            os.ftruncate(fd, verified_end)
            raise
        except TruncatedInput as exc:
            raise IntegrityError(f"a chunk shrank while it was being read ({exc})") from None
        except OSError as exc:
            if is_disk_full(exc):
                os.close(fd)
                fd = -1
                remove_quietly(partial)
                raise TeadistError(f"disk full while writing {dest}",
                                   hint=f"free at least {size} bytes in {dest.parent}") from None
            raise
        finally:
            task.close()
        if whole.hexdigest() != sha256:
            os.close(fd)
            fd = -1
            remove_quietly(partial)
            raise IntegrityError(f"assembled {dest.name} does not match the manifest's sha256 "
                                 f"(got {whole.hexdigest()[:16]}…, expected {sha256[:16]}…)")
        commit_fd(fd, partial, dest)
    finally:
        if fd >= 0:
            os.close(fd)
    if cache is not None and cache.contains(dest):
        record_in_cache(cache, dest, manifest, source, origin)
    return AssembleResult(dest, sha256, size, already_present=False, resumed_bytes=resumed)


def record_in_cache(cache: ModelCache, dest: Path, manifest: Manifest, source: str, origin: Origin | None) -> None:
    assert manifest.file.sha256 is not None and manifest.file.size is not None
    existing = cache.read_record(dest.name)
    if existing is not None and existing.sha256 == manifest.file.sha256 and cache.is_current(existing):
        cache.touch(existing)
        return
    cache.record_install(dest.name, manifest.reference, manifest.file.sha256, manifest.file.size, source, origin)
