"""Rebuild the byte-identical original from teadist GGUF shards, verifying every shard and the whole."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teadist.base.fsutil import ensure_free_space
from teadist.base.progress import Reporter
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
                     cache: Any = None, source: str = "local") -> tuple[str, int, bool]:
    """Rebuild the byte-identical original from shards; verify every shard and the whole file.

    Returns (sha256, size, already_present)."""
    from teadist.cache.store import target_lock

    with target_lock(dest):
        return rebuild_original_locked(manifest, shards_dir, dest, reporter, cache, source)


def rebuild_original_locked(manifest: Manifest, shards_dir: Path, dest: Path, reporter: Reporter,
                            cache: Any = None, source: str = "local") -> tuple[str, int, bool]:
    """``rebuild_original`` for a caller that already holds ``target_lock(dest)``."""
    from teadist.base.fsutil import commit_file, remove_quietly, temp_path_for
    from teadist.pipelines.assemble import existing_is_verified

    pieces = check_recipe(manifest)
    sha256, size = manifest.file.sha256, manifest.file.size
    assert sha256 is not None and size is not None
    if existing_is_verified(dest, sha256, size, cache, reporter):
        if cache is not None and cache.contains(dest):
            cache.record_install(dest.name, manifest.reference, sha256, size, source)
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
    tmp = temp_path_for(dest)
    task = reporter.task(f"rebuild {dest.name}", size)
    try:
        with open(tmp, "wb") as out:
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
        if whole.hexdigest() != sha256:
            raise IntegrityError(f"rebuilt {dest.name} does not match the original's sha256")
        commit_file(tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        task.close()
        for reader in readers:
            reader.close()
    if cache is not None and cache.contains(dest):
        cache.record_install(dest.name, manifest.reference, sha256, size, source)
    return sha256, size, False

