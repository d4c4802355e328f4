"""Rebuild the byte-identical original from teadist GGUF shards, verified by the whole file's sha256
(a shard that does not match its own is named when the whole fails).

The output grows in a stable partial named by the destination's work files, under the target's
lock; an interrupted rebuild resumes after the last block the manifest's block map of the original
proves (the recipe's pieces before it are skipped), as ``assemble`` does. Only a file whose whole
sha256 matches is renamed into place; bytes it rejects are not kept."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from teadist.base.blocks import BLOCK_SIZE, BlockHasher
from teadist.base.fsutil import PwriteSink, ensure_free_space, is_disk_full
from teadist.base.hashing import BUFFER_SIZE, PipelinedCopier, Sink, TruncatedInput
from teadist.base.progress import Reporter
from teadist.cache.layout import Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError
from teadist.formats.gguf_recipe import COPY_BLOCK, check_recipe, piece_length, replay
from teadist.formats.manifest import ChunkRecord, Manifest


def _no_shard(index: int) -> BinaryIO:
    raise AssertionError("zeros and literals never read a shard")


class _Shard:
    """One shard, read by descriptor through the shared copier (no stall between pieces)."""

    def __init__(self, path: Path, record: ChunkRecord, copier: PipelinedCopier) -> None:
        self.path = path
        self.record = record
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.copier = copier

    def read(self, offset: int, length: int, out: list[Sink], advance: Callable[[int], None]) -> None:
        try:
            self.copier.copy_file_range(self.fd, offset, length, out, advance, drain=False)
        except TruncatedInput:
            raise IntegrityError(f"shard {self.record.name} is truncated", hint="download that shard again") from None

    def close(self) -> None:
        os.close(self.fd)


def _bad_shards(readers: list[_Shard]) -> list[str]:
    """The shards that do not match their sha256 (asked only once the rebuilt file failed its own)."""
    from concurrent.futures import ThreadPoolExecutor

    from teadist.base.hashing import hash_range, usable_cores

    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        digests = list(pool.map(lambda r: hash_range(r.path)[0], readers))
    return [r.record.name for r, d in zip(readers, digests, strict=True) if d != r.record.sha256]


def _skip(_: memoryview) -> None:
    """A sink position that does not take this range."""


def _open_partial(target: Target, manifest: Manifest, reporter: Reporter) -> tuple[int, Path, int, int]:
    """The rebuild's partial (a stable name, so an interrupted rebuild resumes), open, cut back to the
    whole blocks the manifest's model map proves (checked on every core); (fd, path, kept bytes, kept
    blocks).
    Bytes after them are rebuilt, never trusted; the whole sha256 still reads the kept ones."""
    from teadist.base.fsutil import create_exclusive, open_own_file
    from teadist.base.hashing import proven_blocks

    sha256, size = manifest.file.sha256, manifest.file.size
    assert sha256 is not None and size is not None
    files = target.files
    files.ensure_folder()
    partial = files.partial(sha256, kind="rebuild")
    fd = open_own_file(partial)
    resumed = proven = 0
    if fd is not None:
        listed = manifest.file.blocks
        if listed is not None and listed.block_size == BLOCK_SIZE:
            proven = proven_blocks(fd, listed.hashes, BLOCK_SIZE, size, os.fstat(fd).st_size)
            resumed = min(size, proven * BLOCK_SIZE)
        if resumed:
            reporter.info(f"resuming {target.final.name} after {resumed} proven bytes")
    try:
        ensure_free_space(target.final.parent, size - resumed, target.final.name)
        if fd is None:
            fd = create_exclusive(partial)
        os.ftruncate(fd, resumed)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return fd, partial, resumed, proven


def rebuild_original(manifest: Manifest, shards_dir: Path, dest: Path, reporter: Reporter,
                     cache: ModelCache | None = None, source: str = "local") -> tuple[str, int, bool]:
    """Rebuild the byte-identical original from shards; verify the whole file (naming a bad shard).

    Returns (sha256, size, already_present)."""
    from teadist.pipelines.assemble import target_for

    target = target_for(dest, cache)
    with target.lock(on_wait=reporter.info):
        return rebuild_original_locked(manifest, shards_dir, target, reporter, cache, source)


def rebuild_original_locked(manifest: Manifest, shards_dir: Path, target: Target, reporter: Reporter,
                            cache: ModelCache | None = None, source: str = "local",
                            origin: dict[str, str | None] | None = None) -> tuple[str, int, bool]:
    """``rebuild_original`` for a caller that already holds ``target``'s lock."""
    from teadist.base.fsutil import commit_fd, remove_quietly
    from teadist.pipelines.assemble import check_block_map, existing_is_verified, record_in_cache

    pieces = check_recipe(manifest)
    sha256, size = manifest.file.sha256, manifest.file.size
    assert sha256 is not None and size is not None
    dest = target.final
    if existing_is_verified(dest, sha256, size, cache, reporter):
        if cache is not None and cache.contains(dest):
            record_in_cache(cache, dest, manifest, source, origin)
        return sha256, size, True
    for chunk in manifest.chunks:
        path = shards_dir / chunk.name
        if not path.is_file():
            raise IntegrityError(f"shard {chunk.name} is missing from {shards_dir}")
        if path.stat().st_size != chunk.size:
            raise IntegrityError(f"shard {chunk.name} has {path.stat().st_size} bytes, the manifest says "
                                 f"{chunk.size}", hint="download that shard again")
    fd, tmp, resumed, proven = _open_partial(target, manifest, reporter)
    whole = hashlib.sha256()
    blocks = BlockHasher(BLOCK_SIZE, manifest.file.blocks.hashes[:proven] if manifest.file.blocks else ())
    task = reporter.task(f"rebuild {dest.name}", size)
    readers: list[_Shard] = []
    try:
        # One pass: the writer, the whole-file sha256 and the block map, each on its own thread. The
        # shards' own sha256 are not needed for an exact result (the whole file's vouches for it);
        # they are checked only to name the culprit when the whole does not match. A resumed prefix
        # (whole proven blocks) is read back for the whole sha256 only.
        with PipelinedCopier(n_sinks=3, buffer_size=min(COPY_BLOCK, BUFFER_SIZE)) as copier:
            copier.copy_file_range(fd, 0, resumed, [_skip, whole.update], task.advance, drain=False)
            readers = [_Shard(shards_dir / c.name, c, copier) for c in manifest.chunks]
            out: list[Sink] = [PwriteSink(fd, resumed), whole.update, blocks]

            def literal(data: bytes) -> None:
                copier.feed(data, out)
                task.advance(len(data))

            at = 0  # where the current piece starts in the original
            for piece in pieces:
                length = piece_length(piece)
                skip = min(length, max(0, resumed - at))  # its bytes already in the kept prefix
                at += length
                if skip == length:
                    continue
                if "shard" in piece:
                    readers[int(piece["shard"])].read(int(piece["offset"]) + skip, length - skip, out, task.advance)
                elif "zeros" in piece:
                    replay([{"zeros": length - skip}], _no_shard, [literal])
                else:
                    literal(base64.b64decode(piece["literal"])[skip:])
            copier.flush()
        if whole.hexdigest() != sha256:
            bad = _bad_shards(readers)
            if bad:
                raise IntegrityError(f"shard {bad[0]} does not match its sha256 in the manifest"
                                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                                     hint="download that shard again")
            raise IntegrityError(f"rebuilt {dest.name} does not match the original's sha256")
        block_map = blocks.finish()
        check_block_map(manifest, block_map)
        commit_fd(fd, tmp, dest)
    except IntegrityError:
        remove_quietly(tmp)  # bytes the whole sha256 rejected: nothing of it is kept
        raise
    except OSError as exc:
        if is_disk_full(exc):
            remove_quietly(tmp)  # give the space back; another interruption keeps the partial to resume
        raise
    finally:
        os.close(fd)
        task.close()
        for reader in readers:
            reader.close()
    if cache is not None and cache.contains(dest):
        record_in_cache(cache, dest, manifest, source, origin, block_map)
    return sha256, size, False

