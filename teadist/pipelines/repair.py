"""``teadist repair``: re-fetch only the damaged blocks of a cached model, from where it came from.

The record's block map (computed from bytes whose whole sha256 matched the source's) names the
blocks that no longer match. Each is fetched with ``Range`` from the model's recorded source —
the Hub file at its commit, a mirror URL, or the chunks or shards of the manifest it was installed
from (their URLs in order, falling back as fetch does; a local manifest's own folder needs no
network) — and checked against its block hash before it is written. Writes happen under the
target's lock: in place with the record marked ``repairing`` (so nothing vouches for the file
until the whole sha256 matches again), or through a temp copy when the file has other hard links
(they must keep their bytes). Every span overwritten in place is first kept in the target's undo
log (``cache.undo``). A run that is cut short leaves the blocks it already rewrote and its undo log:
the next run (or ``prune --partials``) settles the log first — when the blocks were checked against
the record's proven map they stay, the next run finds them proven and fetches only the rest; when
only a map from the source guided them, the old bytes go back, since only the whole sha256 could
accept the new ones. Without a source it says so and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teadist.base.blocks import BlockHasher, BlockMap, damaged_ranges, describe_ranges
from teadist.base.fsutil import commit_fd, is_plain_file, remove_quietly
from teadist.base.hashing import PipelinedCopier, bad_blocks, hash_range
from teadist.base.progress import Reporter
from teadist.cache.store import CachedModel, CacheRecord, ModelCache
from teadist.cache.undo import UndoLog, settle_undo
from teadist.errors import IntegrityError, NotFoundError, OfflineError, SourceError, TeadistError
from teadist.formats.manifest import HfSource, Manifest
from teadist.sources.download import Downloader
from teadist.sources.http import Auth

# (length, fetch) pieces of the original, in order: ``fetch(offset, n)`` gives n bytes of the piece.
Reader = Callable[[int, int], bytes]


@dataclass
class FileRepair:
    filename: str
    blocks_total: int
    blocks_bad: int = 0
    blocks_refetched: int = 0
    bytes_fetched: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"file": self.filename, "blocks": self.blocks_total, "blocks_bad": self.blocks_bad,
                "blocks_refetched": self.blocks_refetched, "bytes_fetched": self.bytes_fetched,
                "damaged": [{"start": a, "end": b} for a, b in self.ranges]}


@dataclass
class RepairResult:
    name: str
    path: Path
    files: list[FileRepair]

    @property
    def blocks_bad(self) -> int:
        return sum(f.blocks_bad for f in self.files)

    @property
    def blocks_refetched(self) -> int:
        return sum(f.blocks_refetched for f in self.files)

    @property
    def bytes_fetched(self) -> int:
        return sum(f.bytes_fetched for f in self.files)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path), "blocks_bad": self.blocks_bad,
                "blocks_refetched": self.blocks_refetched, "bytes_fetched": self.bytes_fetched,
                "files": [f.to_dict() for f in self.files]}


@dataclass
class RepairOptions:
    endpoint: str
    token: str | None = None
    offline: bool = False


class _Source:
    """Where a file's bytes come from again: ``candidates`` alternatives, each able to read any
    range of the file (through the pieces the file is made of)."""

    def __init__(self, describe: str, readers: list[list[tuple[int, Reader]]]) -> None:
        self.describe = describe
        self.readers = readers  # per candidate: the file's pieces in order, (length, read)
        self.fetched = 0

    def read(self, candidate: int, start: int, length: int) -> bytes:
        out = bytearray()
        pos = 0
        for piece_len, read in self.readers[candidate]:
            lo, hi = max(start, pos), min(start + length, pos + piece_len)
            if lo < hi:
                out += read(lo - pos, hi - lo)
            pos += piece_len
            if pos >= start + length:
                break
        if len(out) != length:
            raise IntegrityError(f"{self.describe} does not hold bytes {start}-{start + length - 1}")
        return bytes(out)


def _network(downloader: Downloader, counter: _Source, url: str, auth: Auth | None, label: str) -> Reader:
    def read(offset: int, n: int) -> bytes:
        data = downloader.get_range(url, offset, n, auth, label)
        counter.fetched += len(data)
        return data
    return read


def _local(path: Path) -> Reader:
    def read(offset: int, n: int) -> bytes:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(n)
        if len(data) != n:
            raise IntegrityError(f"{path} is shorter than its manifest says")
        return data
    return read


def _constant(data: bytes) -> Reader:
    return lambda offset, n: data[offset:offset + n]


def _zeros(offset: int, n: int) -> bytes:
    return bytes(n)


def _hub_source(record: CacheRecord, options: RepairOptions, downloader: Downloader) -> _Source:
    from teadist.sources import hub

    seen = record.origin or {}
    repo, path = seen.get("repo"), seen.get("path")
    if not repo or not path:
        raise SourceError(f"{record.filename}: its record names no Hub file")
    source = HfSource(repo, path, seen.get("commit") or seen.get("revision"), seen.get("endpoint"))
    remote = hub.resolve(source, options.endpoint, options.token, downloader.policy.stall_timeout,
                         retrying=downloader.retrying)
    if remote.sha256 is not None and remote.sha256 != record.sha256:
        raise IntegrityError(f"the Hub's {repo}/{path} is now another file (sha256 {remote.sha256[:16]}…); "
                             "its blocks cannot repair this one", hint=f"fetch it again: teadist rm {record.filename}")
    auth = Auth(remote.token_origin, f"Bearer {options.token}") \
        if remote.token_origin is not None and options.token else None
    out = _Source(f"hf://{repo}/{path}", [])
    out.readers = [[(record.size, _network(downloader, out, remote.url, auth, record.filename))]]
    return out


def _manifest_source(record: CacheRecord, spec: str, downloader: Downloader) -> tuple[_Source, BlockMap | None]:
    """The pieces of ``record``'s file in the manifest it was installed from, and that manifest's
    block map of it (for a record without one)."""
    from teadist.formats.gguf_recipe import check_recipe
    from teadist.pipelines.fetch import _chunk_places, resolve_target

    target = resolve_target(spec, downloader, offline=False)
    manifest: Manifest = target.manifest
    out = _Source(spec, [])
    chunk_index = {c.name: i for i, c in enumerate(manifest.chunks)}
    if manifest.file.name == record.filename and manifest.file.sha256 == record.sha256:
        blocks = manifest.file.blocks
        if manifest.format == "bytes":
            layout: list[dict[str, Any]] = [{"shard": i, "offset": 0, "length": c.size}
                                            for i, c in enumerate(manifest.chunks)]
        elif manifest.format == "gguf":
            layout = check_recipe(manifest)
        else:
            raise SourceError(f"{spec} lists {record.filename} as a single file; its record has no URL for it")
    elif record.filename in chunk_index and manifest.chunks[chunk_index[record.filename]].sha256 == record.sha256:
        chunk = manifest.chunks[chunk_index[record.filename]]
        blocks = chunk.blocks
        layout = [{"shard": chunk_index[record.filename], "offset": 0, "length": chunk.size}]
    else:
        raise SourceError(f"{spec} no longer lists {record.filename} with the sha256 it was installed with")

    def candidates(i: int) -> list[Reader]:
        chunk = manifest.chunks[i]
        local = target.base_dir / chunk.name if target.base_dir is not None else None
        if local is not None and is_plain_file(local):
            return [_local(local)]
        urls = _chunk_places(target, chunk, None)[1]
        if not urls:
            raise SourceError(f"{spec}: {chunk.name} is neither a plain file beside it nor at any URL")
        return [_network(downloader, out, url, None, chunk.name) for url in urls]

    per_chunk = {int(p["shard"]): candidates(int(p["shard"])) for p in layout if "shard" in p}
    count = max((len(c) for c in per_chunk.values()), default=1)
    for k in range(count):
        pieces: list[tuple[int, Reader]] = []
        for piece in layout:
            if "shard" in piece:
                options = per_chunk[int(piece["shard"])]
                read = options[min(k, len(options) - 1)]
                pieces.append((int(piece["length"]), _shifted(read, int(piece["offset"]))))
            elif "zeros" in piece:
                pieces.append((int(piece["zeros"]), _zeros))
            else:
                data = base64.b64decode(piece["literal"])
                pieces.append((len(data), _constant(data)))
        out.readers.append(pieces)
    return out, blocks


def _shifted(read: Reader, base: int) -> Reader:
    return lambda offset, n: read(base + offset, n)


def _source_for(record: CacheRecord, options: RepairOptions,
                downloader: Downloader) -> tuple[_Source, BlockMap | None]:
    """The record's source, or SourceError/OfflineError saying there is none to use."""
    seen = record.origin or {}
    kind = seen.get("kind")
    if kind is None and record.source.startswith("manifest:"):
        kind, seen = "manifest", {"origin": record.source.removeprefix("manifest:")}
    if kind not in ("hf", "url", "manifest"):
        raise SourceError(f"{record.filename} has no recorded source to repair it from (installed from "
                          f"{record.source})", hint=f"fetch it again: teadist rm {record.filename}, then fetch")
    spec = seen.get("origin") or ""
    local = kind == "manifest" and not spec.startswith(("http://", "https://")) and not spec.startswith("registry:")
    if options.offline and not local:
        raise OfflineError(f"offline: cannot reach the source of {record.filename} ({record.source})")
    if kind == "hf":
        return _hub_source(record, options, downloader), None
    if kind == "url":
        url = seen.get("url") or ""
        out = _Source(url, [])
        out.readers = [[(record.size, _network(downloader, out, url, None, record.filename))]]
        return out, None
    if local and not Path(spec).is_file():
        raise SourceError(f"{record.filename} was installed from the manifest {spec}, which is gone",
                          hint="point teadist at the chunks again: teadist assemble MANIFEST")
    return _manifest_source(record, spec.removeprefix("registry:"), downloader)


def repair_file(cache: ModelCache, record: CacheRecord, options: RepairOptions, reporter: Reporter,
                downloader: Downloader) -> FileRepair:
    """Repair one cached file (its target's lock held by the caller).

    The whole sha256 is the final word: a file without a proven block map is hashed whole first (a
    match needs no repair and gives it its map); a map borrowed from the source is only a guide, so
    every block overwritten in place is kept first in a temp file beside it and put back when the
    whole sha256 then fails — the file is never left worse than it was."""
    path = cache.path_for(record.filename)
    # What a killed run of this target left: its undo log (old bytes go back unless its blocks were
    # proven) and any temp copy.
    target = cache.target(record.filename)
    if settle_undo(target, record):
        reporter.info(f"{record.filename}: put back the bytes an interrupted repair had overwritten")
    target.discard_temps()
    if not is_plain_file(path):
        raise NotFoundError(f"{record.filename} is not in the cache (its record is)",
                            hint=f"fetch it again, or remove the record: teadist rm {record.filename}")
    if record.inode is not None and os.stat(path).st_ino != record.inode:
        raise IntegrityError(f"{record.filename} was replaced by another file since teadist installed it; "
                             "repair will not rewrite it",
                             hint=f"keep it under another name, or fetch it again: teadist rm {record.filename}")
    size = record.size
    blocks = record.proven_map
    source: _Source | None = None
    bad: list[int] | None = None
    if blocks is None:
        learner = BlockHasher()
        task = reporter.task(f"check {record.filename}", size)
        try:
            whole_hex, read = hash_range(path, 0, size, task.advance, extra_sinks=[learner])
        finally:
            task.close()
        if read == size and whole_hex == record.sha256:
            blocks, bad = learner.finish(), []  # intact: its map is proven now
        else:
            source, listed = _source_for(record, options, downloader)
            if listed is None or listed.problem(size) is not None:
                raise IntegrityError(f"{record.filename} has no block map (installed by an older teadist and not "
                                     "verified since), so its damaged blocks cannot be told apart",
                                     hint=f"fetch it again: teadist rm {record.filename}, then fetch")
            blocks = listed
    if bad is None:
        task = reporter.task(f"check {record.filename}", size)
        try:
            bad = bad_blocks(path, blocks.block_size, blocks.hashes, size, task.advance)
        finally:
            task.close()
    too_long = path.stat().st_size > size
    result = FileRepair(record.filename, len(blocks.hashes), len(bad),
                        ranges=damaged_ranges(bad, blocks.block_size, size))
    if not bad and not too_long and not record.repairing and record.proven_map is not None:
        return result
    if bad:
        reporter.info(f"{record.filename}: {len(bad)} of {len(blocks.hashes)} blocks damaged "
                      f"({describe_ranges(result.ranges)}); fetching them again")
    if bad and source is None:
        source, _ = _source_for(record, options, downloader)
    temp: Path | None = None
    backup: UndoLog | None = None
    if os.stat(path).st_nlink > 1:
        # Another name shares these bytes: they must not change under it. Repair a copy instead.
        from teadist.base.hashing import copy_into

        fd, temp = target.files.new_temp()
        try:
            copy_into(path, fd, min(size, path.stat().st_size))
        except BaseException:
            os.close(fd)
            remove_quietly(temp)
            raise
    else:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        if bad:
            backup = UndoLog(cache.target(record.filename))
            record.repairing = True  # from the first write on, nothing vouches for the file
            # The file it writes, named for whoever settles the undo log after a kill (a record of an
            # older teadist names none: the old bytes must never go into a file put in its place).
            record.inode = os.fstat(fd).st_ino
            cache.write_record(record)
    rejected = False  # the whole sha256 rejected what the block map led to
    try:
        try:
            for index in bad:
                assert source is not None
                start, end = blocks.span(index, size)
                data = _fetch_block(source, blocks.hashes[index], start, end - start, record.filename, reporter)
                if backup is not None:
                    backup.keep(fd, start, end - start)
                written = 0
                while written < len(data):
                    written += os.pwrite(fd, data[written:], start + written)
                result.blocks_refetched += 1
            os.fsync(fd)
            digest = hashlib.sha256()
            task = reporter.task(f"verify {record.filename}", size)
            try:
                with PipelinedCopier(n_sinks=1, depth=2) as copier:
                    copier.copy_file_range(fd, 0, size, [digest.update], task.advance)
            finally:
                task.close()
            if digest.hexdigest() != record.sha256 or os.fstat(fd).st_size < size:
                rejected = True
                raise IntegrityError(f"{record.filename}: every block matches its hash after the repair, but the "
                                     "whole file's sha256 does not; its block map cannot be trusted "
                                     "(the file is left as it was)",
                                     hint=f"fetch it again: teadist rm {record.filename}, then fetch")
        except Exception:
            if backup is not None:
                backup.restore(fd)
                # The file is as it was; a map that led to bytes the sha256 rejects is not to be trusted.
                record.repairing = False
                if rejected:
                    record.set_blocks(None)
                cache.write_record(record)
            raise
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
            os.fsync(fd)
        if temp is not None:
            commit_fd(fd, temp, path)
            temp = None
    finally:
        os.close(fd)
        if temp is not None:
            remove_quietly(temp)
        if backup is not None:
            backup.close()
        result.bytes_fetched = source.fetched if source is not None else 0
    cache.record_install(record.filename, record.name, record.sha256, size, record.source, record.origin,
                         group=record.group, shards=record.shards, blocks=blocks)
    return result


def _fetch_block(source: _Source, expected: str, start: int, length: int, filename: str,
                 reporter: Reporter) -> bytes:
    """One block from the first of the source's candidates that gives bytes with its hash."""
    problem: TeadistError | None = None
    for candidate in range(len(source.readers)):
        try:
            data = source.read(candidate, start, length)
        except (SourceError, IntegrityError) as exc:
            problem = exc
        else:
            if hashlib.sha256(data).hexdigest() == expected:
                return data
            problem = IntegrityError(f"{source.describe} sent other bytes for {filename} {start}-{start + length - 1} "
                                     "than its block hash")
        if candidate + 1 < len(source.readers):
            reporter.warn(f"{problem.message}; trying the next source")
    assert problem is not None
    raise problem


def repair_cached(cache: ModelCache, name: str, options: RepairOptions, reporter: Reporter,
                  downloader: Downloader | None = None) -> RepairResult:
    """Verify a cached model (each kept shard too) and re-fetch only its damaged blocks."""
    downloader = downloader or Downloader(reporter)
    model: CachedModel | None = cache.find(name)
    if model is None:
        raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
    results = []
    for member in model.members:
        if member.record is None:
            raise NotFoundError(f"{member.filename}: its record is gone, so nothing says what it should hold",
                                hint=f"fetch the model again: teadist rm {model.head.filename}, then fetch")
        target = cache.target(member.filename)
        with target.lock(on_wait=reporter.info):
            record = cache.read_record(member.filename)
            if record is None:
                raise NotFoundError(f"{member.filename}: its record disappeared meanwhile")
            results.append(repair_file(cache, record, options, reporter, downloader))
    return RepairResult(model.head.name, cache.path_for(model.head.filename), results)
