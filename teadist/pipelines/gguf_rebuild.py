"""Rebuild the byte-identical original from teadist GGUF shards, verifying every shard and the whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teadist.base.fsutil import ensure_free_space
from teadist.base.progress import Reporter
from teadist.cache.layout import Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError
from teadist.formats.gguf_recipe import COPY_BLOCK, check_recipe, replay
from teadist.formats.manifest import ChunkRecord, Manifest


class _VerifiedShard:
    """Reads ranges of one shard in ascending order while hashing every byte of it, skipped or not."""

    def __init__(self, path: Path, record: ChunkRecord) -> None:
        self.path = path
        self.record = record
        self.fh = open(path, "rb")  # noqa: SIM115 - closed by finish()/close()
        self.digest = hashlib.sha256()
        self.pos = 0

    def _advance_to(self, offset: int) -> None:
        while self.pos < offset:
            block = self.fh.read(min(COPY_BLOCK, offset - self.pos))
            if not block:
                raise IntegrityError(f"shard {self.record.name} is truncated")
            self.digest.update(block)
            self.pos += len(block)

    def read(self, offset: int, length: int, sinks: list[Callable[[bytes], Any]]) -> None:
        self._advance_to(offset)
        left = length
        while left:
            block = self.fh.read(min(COPY_BLOCK, left))
            if not block:
                raise IntegrityError(f"shard {self.record.name} is truncated")
            self.digest.update(block)
            for sink in sinks:
                sink(block)
            left -= len(block)
            self.pos += len(block)

    def finish(self) -> None:
        self._advance_to(self.record.size)
        if self.fh.read(1):
            raise IntegrityError(f"shard {self.record.name} is longer than the manifest says")
        if self.digest.hexdigest() != self.record.sha256:
            raise IntegrityError(f"shard {self.record.name} does not match its sha256 in the manifest",
                                 hint="download that shard again")

    def close(self) -> None:
        self.fh.close()


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
    from teadist.pipelines.assemble import existing_is_verified, record_in_cache

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
    readers = [_VerifiedShard(shards_dir / c.name, c) for c in manifest.chunks]
    whole = hashlib.sha256()
    fd, tmp = target.files.new_temp()
    task = reporter.task(f"rebuild {dest.name}", size)
    try:
        with os.fdopen(fd, "wb") as out:
            def write(data: bytes) -> None:
                out.write(data)
                whole.update(data)
                task.advance(len(data))

            for piece in pieces:
                if "shard" in piece:
                    readers[int(piece["shard"])].read(int(piece["offset"]), int(piece["length"]), [write])
                else:
                    replay([piece], lambda i: readers[i].fh, [write])
            for reader in readers:
                reader.finish()
            out.flush()
            if whole.hexdigest() != sha256:
                raise IntegrityError(f"rebuilt {dest.name} does not match the original's sha256")
            commit_fd(out.fileno(), tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        task.close()
        for reader in readers:
            reader.close()
    if cache is not None and cache.contains(dest):
        record_in_cache(cache, dest, manifest, source, origin)
    return sha256, size, False

