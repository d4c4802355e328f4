"""Rebuild the original file from byte chunks, verifying each chunk while it is copied.

The output grows in a stable partial file named by the destination's work files (in the cache:
its target's work folder), under the target's lock; an interrupted run resumes after the last
proven block (with the manifest's block map; else after the last complete, re-verified chunk).
The file's block map is computed in the same pass and recorded with it. Only a file whose whole
SHA-256 matches is renamed into place: on any mismatch or missing chunk nothing is left at the
destination.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from teadist.base.blocks import BLOCK_SIZE, BlockHasher, BlockMap
from teadist.base.fsutil import (
    PwriteSink,
    commit_fd,
    create_exclusive,
    ensure_free_space,
    is_disk_full,
    open_own_file,
    remove_quietly,
)
from teadist.base.hashing import PipelinedCopier, TruncatedInput, hash_range, proven_blocks
from teadist.base.progress import Reporter
from teadist.cache.layout import OutsideTarget, Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError, TeadistError, UsageError
from teadist.formats.manifest import Manifest

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


def _resume_point(fd: int, manifest: Manifest) -> tuple[int, int]:
    """(bytes, blocks) of the partial open as ``fd`` a resume may keep: up to the last block proven
    by the manifest's block map (checked on every core), or further up to the last chunk that
    re-verifies, whichever ends later. Bytes after it are written again, never trusted."""
    have = os.fstat(fd).st_size
    size = manifest.file.size
    assert size is not None
    blocks = manifest.file.blocks
    proven = kept = 0
    if blocks is not None and blocks.block_size == BLOCK_SIZE:
        proven = proven_blocks(fd, blocks.hashes, blocks.block_size, size, have)
        kept = min(size, proven * BLOCK_SIZE)
    end = 0
    for chunk in manifest.chunks:
        if end + chunk.size > have:
            break
        if end + chunk.size > kept:  # not already proven by its blocks
            digest = hashlib.sha256()
            with PipelinedCopier(n_sinks=1, depth=2) as copier:
                copier.copy_file_range(fd, end, chunk.size, [digest.update])
            if digest.hexdigest() != chunk.sha256:
                break
        end += chunk.size
    return max(kept, end), proven


def check_block_map(manifest: Manifest, computed: BlockMap) -> None:
    """A manifest's block map must be the one of the file its sha256 vouches for (just matched)."""
    listed = manifest.file.blocks
    if listed is None or listed.block_size != computed.block_size:
        return
    for index, (want, have) in enumerate(zip(listed.hashes, computed.hashes, strict=True)):
        if want != have:
            start, end = listed.span(index, manifest.file.size or 0)
            raise IntegrityError(f"the manifest's block hash {index} (bytes {start}-{end - 1}) of "
                                 f"{manifest.file.name} is not the one of the file its sha256 vouches for",
                                 hint="the manifest was altered; get it again from its source")


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
    resumed = known_blocks = 0
    if fd is not None:
        resumed, known_blocks = _resume_point(fd, manifest)
        if resumed:
            reporter.info(f"resuming {dest.name} after {resumed} proven bytes")
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
        # The kept prefix is proven; the whole hash (and the block map, past the blocks the manifest's
        # map proved) still need its bytes once.
        known = manifest.file.blocks.hashes[:known_blocks] if manifest.file.blocks is not None else ()
        blocks = BlockHasher(BLOCK_SIZE, known)
        known_end = min(resumed, len(known) * BLOCK_SIZE)
        verified_end = resumed
        try:
            sink = PwriteSink(fd, resumed)
            with PipelinedCopier(n_sinks=4) as copier:
                copier.copy_file_range(fd, 0, known_end, [whole.update], task.advance)
                copier.copy_file_range(fd, known_end, resumed - known_end, [whole.update, blocks], task.advance)
                for chunk in manifest.chunks:
                    start = chunk.offset or 0
                    if start + chunk.size <= resumed:
                        continue
                    digest = hashlib.sha256()
                    inside = max(0, resumed - start)  # the chunk's bytes already kept in the partial
                    if inside:
                        copier.copy_file_range(fd, start, inside, [_skip, digest.update])
                    with open(chunks_dir / chunk.name, "rb", buffering=0) as fin:
                        copier.copy_file_range(fin.fileno(), inside, chunk.size - inside,
                                               [whole.update, digest.update, sink, blocks], task.advance)
                    if digest.hexdigest() != chunk.sha256:
                        raise IntegrityError(
                            f"chunk {chunk.name} does not match its sha256 in the manifest "
                            f"(got {digest.hexdigest()[:16]}…, expected {chunk.sha256[:16]}…)",
                            hint="download that chunk again")
                    verified_end = start + chunk.size
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
        block_map = blocks.finish()
        check_block_map(manifest, block_map)
        commit_fd(fd, partial, dest)
    finally:
        if fd >= 0:
            os.close(fd)
    if cache is not None and cache.contains(dest):
        record_in_cache(cache, dest, manifest, source, origin, block_map)
    return AssembleResult(dest, sha256, size, already_present=False, resumed_bytes=resumed)


def record_in_cache(cache: ModelCache, dest: Path, manifest: Manifest, source: str, origin: Origin | None,
                    blocks: BlockMap | None = None) -> None:
    """Record ``dest`` (just verified; ``blocks`` computed from the bytes that matched)."""
    assert manifest.file.sha256 is not None and manifest.file.size is not None
    existing = cache.read_record(dest.name)
    if existing is not None and existing.sha256 == manifest.file.sha256 and cache.is_current(existing):
        if blocks is not None and existing.block_map is None:
            existing.set_blocks(blocks)
        cache.touch(existing)
        return
    cache.record_install(dest.name, manifest.reference, manifest.file.sha256, manifest.file.size, source, origin,
                         blocks=blocks)


def _skip(_: memoryview) -> None:
    """A sink position that does not take this range."""
