"""Rebuild the byte-identical original from teadist GGUF shards, verifying every shard and the whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from teadist.base.blocks import BLOCK_SIZE, BlockHasher
from teadist.base.fsutil import PwriteSink, ensure_free_space
from teadist.base.hashing import BUFFER_SIZE, PipelinedCopier, Sink, TruncatedInput
from teadist.base.progress import Reporter
from teadist.cache.layout import Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError
from teadist.formats.gguf_recipe import COPY_BLOCK, check_recipe, replay
from teadist.formats.manifest import ChunkRecord, Manifest


def _no_shard(index: int) -> BinaryIO:
    raise AssertionError("zeros and literals never read a shard")


def _skip(_: memoryview) -> None:
    """A sink position that does not take this piece."""


class _VerifiedShard:
    """Reads ranges of one shard in ascending order while hashing every byte of it, skipped or not.

    The bytes go through the shared copier: the shard's digest is the last sink position, so the
    rebuild's writer, whole-file hash and block map (positions 0-2) run beside it on other threads."""

    def __init__(self, path: Path, record: ChunkRecord, copier: PipelinedCopier) -> None:
        self.path = path
        self.record = record
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.digest = hashlib.sha256()
        self.copier = copier
        self.pos = 0

    def _copy(self, offset: int, length: int, sinks: list[Callable[[memoryview], Any]],
              advance: Callable[[int], None] | None = None) -> None:
        try:
            self.copier.copy_file_range(self.fd, offset, length, sinks, advance)
        except TruncatedInput:
            raise IntegrityError(f"shard {self.record.name} is truncated", hint="download that shard again") from None
        self.pos = offset + length

    def read(self, offset: int, length: int, out: list[Callable[[memoryview], Any]],
             advance: Callable[[int], None]) -> None:
        if offset < self.pos:
            raise IntegrityError(f"the rebuild recipe reads shard {self.record.name} out of order")
        if offset > self.pos:
            self._copy(self.pos, offset - self.pos, [_skip, _skip, _skip, self.digest.update])
        self._copy(offset, length, [*out, self.digest.update], advance)

    def finish(self) -> None:
        if self.pos < self.record.size:
            self._copy(self.pos, self.record.size - self.pos, [_skip, _skip, _skip, self.digest.update])
        if os.fstat(self.fd).st_size != self.record.size:
            raise IntegrityError(f"shard {self.record.name} is longer than the manifest says")
        if self.digest.hexdigest() != self.record.sha256:
            raise IntegrityError(f"shard {self.record.name} does not match its sha256 in the manifest",
                                 hint="download that shard again")

    def close(self) -> None:
        os.close(self.fd)


def rebuild_original(manifest: Manifest, shards_dir: Path, dest: Path, reporter: Reporter,
                     cache: ModelCache | None = None, source: str = "local") -> tuple[str, int, bool]:
    """Rebuild the byte-identical original from shards; verify every shard and the whole file.

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
    ensure_free_space(dest.parent, size, dest.name)
    whole = hashlib.sha256()
    blocks = BlockHasher(BLOCK_SIZE)
    fd, tmp = target.files.new_temp()
    task = reporter.task(f"rebuild {dest.name}", size)
    readers: list[_VerifiedShard] = []
    try:
        with PipelinedCopier(n_sinks=4, buffer_size=min(COPY_BLOCK, BUFFER_SIZE)) as copier:
            readers = [_VerifiedShard(shards_dir / c.name, c, copier) for c in manifest.chunks]
            out: list[Sink] = [PwriteSink(fd, 0), whole.update, blocks]

            def literal(data: bytes) -> None:
                copier.feed(data, out)
                task.advance(len(data))

            for piece in pieces:
                if "shard" in piece:
                    readers[int(piece["shard"])].read(int(piece["offset"]), int(piece["length"]), out, task.advance)
                else:
                    replay([piece], _no_shard, [literal])
            for reader in readers:
                reader.finish()
            copier.flush()
        if whole.hexdigest() != sha256:
            raise IntegrityError(f"rebuilt {dest.name} does not match the original's sha256")
        block_map = blocks.finish()
        check_block_map(manifest, block_map)
        commit_fd(fd, tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        os.close(fd)
        task.close()
        for reader in readers:
            reader.close()
    if cache is not None and cache.contains(dest):
        record_in_cache(cache, dest, manifest, source, origin, block_map)
    return sha256, size, False

