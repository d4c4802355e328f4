"""Check files against a manifest or the cache's record: per item OK / MISSING / MISMATCH.

The sha256 from the source is the final word; a block map only narrows a mismatch to damaged
ranges. A cached file whose record holds a *proven* block map (one teadist recorded, with its digest,
when the whole sha256 matched) is checked block by block on every core the process may use — a
check against that proven map. Any other cached file (no map, an edited map, a record left mid-repair)
is hashed whole, learning its map in the same pass. Against a manifest, each file or chunk is hashed
whole (several at once) against its sha256; its block map names the damaged ranges on a mismatch,
and a map that disagrees with bytes whose sha256 matched fails (the manifest contradicts itself).
The exact size is always checked.

A manifest is checked as a whole too: matching chunks (or blocks) only vouch for what ``assemble``
would build if the manifest's own whole-file sha256 (and, for GGUF shards, its rebuild recipe) is
true, so the original's bytes — the chunks in order, or the recipe replayed over the shards — are
hashed once more, beside the other checks, against ``file.sha256``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from teadist.base.blocks import BlockHasher, BlockMap, damaged_ranges, describe_ranges
from teadist.base.fsutil import is_plain_file
from teadist.base.hashing import bad_blocks, hash_blocks, hash_range, usable_cores
from teadist.base.progress import Reporter
from teadist.cache.store import CachedModel, DamagedRecord, FileIdentity, ModelCache
from teadist.errors import IntegrityError, ManifestError, NotFoundError, UsageError
from teadist.formats.manifest import ChunkRecord, Manifest

OK, MISSING, MISMATCH, DAMAGED = "OK", "MISSING", "MISMATCH", "DAMAGED"


@dataclass
class CheckRow:
    name: str
    status: str
    detail: str = ""
    ranges: list[tuple[int, int]] = field(default_factory=list)  # damaged bytes [start, end), when known
    learned: BlockMap | None = field(default=None, repr=False)  # a block map computed while it matched
    hashed: FileIdentity | None = field(default=None, repr=False)  # the file's identity when its hash began

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.ranges:
            out["damaged"] = [{"start": a, "end": b} for a, b in self.ranges]
        return out


@dataclass
class VerifyReport:
    target: str
    rows: list[CheckRow]

    @property
    def ok(self) -> bool:
        return all(row.status == OK for row in self.rows)

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "ok": self.ok, "items": [r.to_dict() for r in self.rows]}


@dataclass
class _Job:
    name: str
    path: Path
    offset: int
    length: int | None
    sha256: str
    whole: bool = True  # the job covers the whole file: its size must still be ``length`` afterwards
    blocks: BlockMap | None = None  # check block by block
    learn: bool = False  # no block map yet: compute one while hashing the whole file
    narrow: tuple[BlockMap, int] | None = None  # (the file's map, its size): on a mismatch, name damaged blocks
    claimed: BlockMap | None = None  # a manifest's map of these bytes: must agree with them once the sha256 matched


def _check_blocks(job: _Job, advance: Callable[[int], None]) -> CheckRow:
    """Block by block on every core; damaged ranges are given in the file's own offsets."""
    assert job.blocks is not None and job.length is not None
    hashed = FileIdentity.of(job.path)
    bad = bad_blocks(job.path, job.blocks.block_size, job.blocks.hashes, job.length, advance, base=job.offset)
    now = job.path.stat().st_size
    if bad:
        ranges = [(a + job.offset, b + job.offset) for a, b in damaged_ranges(bad, job.blocks.block_size, job.length)]
        return CheckRow(job.name, MISMATCH, f"{len(bad)} of {len(job.blocks.hashes)} blocks damaged: "
                        f"{describe_ranges(ranges)}", ranges)
    if job.whole and now != job.length:
        return CheckRow(job.name, MISMATCH, f"size {now}, expected {job.length}")
    return CheckRow(job.name, OK, hashed=hashed)


def _check_whole(job: _Job, advance: Callable[[int], None]) -> CheckRow:
    learner = BlockHasher(job.claimed.block_size) if job.claimed is not None else BlockHasher() if job.learn else None
    hashed = FileIdentity.of(job.path)  # what a record may be stamped for: the file as hashing began
    digest, read = hash_range(job.path, job.offset, job.length, advance,
                              extra_sinks=[learner] if learner is not None else [])
    if job.length is not None and read != job.length:
        return CheckRow(job.name, MISMATCH, f"only {read} of {job.length} bytes present")
    if digest != job.sha256:
        if job.narrow is not None:
            return _narrowed(job, *job.narrow)
        return CheckRow(job.name, MISMATCH, f"sha256 {digest[:16]}…, expected {job.sha256[:16]}…")
    if job.whole and job.length is not None and (now := job.path.stat().st_size) != job.length:
        return CheckRow(job.name, MISMATCH, f"size {now}, expected {job.length}")
    learned = learner.finish() if learner is not None else None
    if job.claimed is not None and learned is not None and learned.hashes != job.claimed.hashes:
        return CheckRow(job.name, MISMATCH, "sha256 matches, but the manifest's block map does not describe "
                                            "these bytes (the manifest contradicts itself)")
    return CheckRow(job.name, OK, learned=learned if job.learn else None, hashed=hashed)


def _narrowed(job: _Job, blocks: BlockMap, size: int) -> CheckRow:
    """A range of a file (of ``size`` bytes) that failed its hash: which of the file's blocks
    overlapping it are damaged."""
    assert job.length is not None
    first = job.offset // blocks.block_size
    last = min(len(blocks.hashes) - 1, (job.offset + max(1, job.length) - 1) // blocks.block_size)
    indices = list(range(first, last + 1))
    got = hash_blocks(job.path, blocks.block_size, indices, size)
    bad = [i for i, digest in zip(indices, got, strict=True) if digest != blocks.hashes[i]]
    if not bad:
        return CheckRow(job.name, MISMATCH, f"sha256 does not match, expected {job.sha256[:16]}…")
    ranges = damaged_ranges(bad, blocks.block_size, size)
    return CheckRow(job.name, MISMATCH, f"sha256 does not match; damaged: {describe_ranges(ranges)}", ranges)


@dataclass
class _WholeJob:
    """The original file a manifest describes, as ``feed`` produces it, against ``file.sha256``."""

    name: str
    length: int
    sha256: str
    feed: Callable[[Callable[[bytes], object]], None]
    claimed: BlockMap | None = None  # the manifest's map of the original


_READ_BLOCK = 8 * 1024 * 1024


def _feed_files(parts: list[Path]) -> Callable[[Callable[[bytes], object]], None]:
    """The files ``parts`` one after another (a bytes manifest's chunks in order)."""

    def feed(sink: Callable[[bytes], object]) -> None:
        for part in parts:
            with open(part, "rb", buffering=0) as fh:
                while block := fh.read(_READ_BLOCK):
                    sink(block)

    return feed


def _feed_recipe(manifest: Manifest, folder: Path) -> Callable[[Callable[[bytes], object]], None]:
    """The original rebuilt from GGUF shards by the manifest's recipe (nothing written)."""
    from teadist.formats.gguf_recipe import check_recipe, replay

    pieces = check_recipe(manifest)

    def feed(sink: Callable[[bytes], object]) -> None:
        handles: dict[int, BinaryIO] = {}
        try:
            def open_shard(index: int) -> BinaryIO:
                if index not in handles:
                    handles[index] = open(folder / manifest.chunks[index].name, "rb")  # noqa: SIM115
                return handles[index]

            replay(pieces, open_shard, [sink])
        finally:
            for fh in handles.values():
                fh.close()

    return feed


def _run_whole(job: _WholeJob, advance: Callable[[int], None]) -> CheckRow:
    """The original's bytes as ``job.feed`` gives them, against ``file.sha256`` (and the manifest's map):
    the sha256, the block map and the count each on their own thread, taking the same pieces."""
    from teadist.base.hashing import PipelinedCopier

    digest = hashlib.sha256()
    seen = 0
    learner = BlockHasher(job.claimed.block_size) if job.claimed is not None else None

    def count(view: memoryview) -> None:
        nonlocal seen
        seen += len(view)
        advance(len(view))

    # Depth 4: at most four pieces (8 MiB each) in flight, whatever the file size.
    with PipelinedCopier(n_sinks=3, depth=4) as copier:
        def sink(block: bytes) -> None:
            copier.feed(block, [digest.update, learner, count])

        try:
            job.feed(sink)
            copier.flush()
        except (IntegrityError, ManifestError) as exc:
            return CheckRow(job.name, MISMATCH, f"whole file: {exc.message}")
    if seen != job.length:
        return CheckRow(job.name, MISMATCH, f"whole file: {seen} bytes, the manifest says {job.length}")
    if digest.hexdigest() != job.sha256:
        return CheckRow(job.name, MISMATCH, f"whole file: sha256 {digest.hexdigest()[:16]}…, "
                                            f"the manifest says {job.sha256[:16]}…")
    if learner is not None and job.claimed is not None and learner.finish().hashes != job.claimed.hashes:
        return CheckRow(job.name, MISMATCH, "whole file: sha256 matches, but the manifest's block map does not "
                                            "describe these bytes (the manifest contradicts itself)")
    return CheckRow(job.name, OK, "whole file")


def _whole_of(manifest: Manifest, feed: Callable[[Callable[[bytes], object]], None]) -> _WholeJob | None:
    size, sha256 = manifest.file.size, manifest.file.sha256
    if size is None or sha256 is None:
        return None
    return _WholeJob(manifest.file.name, size, sha256, feed, manifest.file.blocks)


def _run_jobs(jobs: list[_Job], reporter: Reporter, label: str,
              whole: _WholeJob | None = None) -> list[CheckRow]:
    """Rows in job order; with ``whole``, its row last — left out when a job is already bad (the
    whole is then bad for a reason those rows name). Block-mapped files one after another, each
    on every core; the others hashed whole, as many at once as there are cores; ``whole`` beside them."""
    total = sum(j.length if j.length is not None else j.path.stat().st_size for j in jobs)
    total += whole.length if whole is not None else 0
    task = reporter.task(label, total)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            task.advance(n)

    rows: dict[int, CheckRow] = {}
    try:
        with ThreadPoolExecutor(max_workers=1) as beside:
            whole_row = beside.submit(_run_whole, whole, advance) if whole is not None else None
            plain = [i for i, job in enumerate(jobs) if job.blocks is None]
            if plain:
                with ThreadPoolExecutor(max_workers=min(len(plain), usable_cores())) as pool:
                    for i, row in zip(plain, pool.map(lambda i: _check_whole(jobs[i], advance), plain),
                                      strict=True):
                        rows[i] = row
            for i, job in enumerate(jobs):
                if job.blocks is not None:
                    rows[i] = _check_blocks(job, advance)
            out = [rows[i] for i in range(len(jobs))]
            if whole_row is not None and all(row.status == OK for row in out):
                out.append(whole_row.result())
            return out
    finally:
        task.close()


def verify_chunk_folder(folder: Path, manifest: Manifest, reporter: Reporter) -> VerifyReport:
    rows: dict[str, CheckRow] = {}
    jobs = []
    for chunk in manifest.chunks:
        path = folder / chunk.name
        if not path.is_file():
            rows[chunk.name] = CheckRow(chunk.name, MISSING)
        elif (actual := path.stat().st_size) != chunk.size:
            rows[chunk.name] = CheckRow(chunk.name, MISMATCH, f"size {actual}, expected {chunk.size}")
        else:
            # The chunk's sha256 is the word; its block map narrows a mismatch and must agree with it.
            jobs.append(_Job(chunk.name, path, 0, chunk.size, chunk.sha256, claimed=chunk.blocks,
                             narrow=(chunk.blocks, chunk.size) if chunk.blocks is not None else None))
    whole = None
    if len(jobs) == len(manifest.chunks) and manifest.format != "single":
        paths = [folder / c.name for c in manifest.chunks]
        whole = _whole_of(manifest, _feed_recipe(manifest, folder) if manifest.format == "gguf"
                          else _feed_files(paths))
    checked = _run_jobs(jobs, reporter, f"verify {folder.name or folder}", whole)
    for row in checked[:len(jobs)]:
        rows[row.name] = row
    extra = checked[len(jobs):]
    return VerifyReport(str(folder), [rows[c.name] for c in manifest.chunks] + extra)


def verify_file_against_manifest(path: Path, manifest: Manifest, reporter: Reporter) -> VerifyReport:
    size, sha256 = manifest.file.size, manifest.file.sha256
    if size is None or sha256 is None:
        raise UsageError(f"manifest for {manifest.name} has no size/sha256 to verify against")
    if not path.is_file():
        return VerifyReport(str(path), [CheckRow(path.name, MISSING)])
    actual = path.stat().st_size
    rows: list[CheckRow] = []
    if actual != size:
        rows.append(CheckRow(path.name, MISMATCH, f"size {actual}, expected {size}"))
    if manifest.format == "bytes":
        # Each chunk is a byte range of the original: equal ranges prove the file equals the chunks;
        # the whole hash proves the chunks are the original the manifest names.
        narrow = (manifest.file.blocks, size) if manifest.file.blocks is not None else None
        only = manifest.chunks[0] if len(manifest.chunks) == 1 else None
        if only is not None and (only.offset or 0) == 0 and only.size == size == actual:
            return VerifyReport(str(path), _one_chunk(path, manifest, only, reporter))
        jobs = [_Job(c.name, path, c.offset or 0, c.size, c.sha256, whole=False, claimed=c.blocks, narrow=narrow)
                for c in manifest.chunks]
        whole = _whole_of(manifest, _feed_files([path])) if actual == size else None
        rows += _run_jobs(jobs, reporter, f"verify {path.name}", whole)
    elif actual == size:
        # The whole sha256 is the word; the manifest's block map names damaged ranges on a mismatch
        # and must agree with the bytes once the sha256 matched.
        blocks = manifest.file.blocks
        narrow_by = (blocks, size) if blocks is not None else None
        job = _Job(path.name, path, 0, size, sha256, claimed=blocks, narrow=narrow_by)
        rows += _run_jobs([job], reporter, f"verify {path.name}")
    return VerifyReport(str(path), rows)


def _one_chunk(path: Path, manifest: Manifest, chunk: ChunkRecord, reporter: Reporter) -> list[CheckRow]:
    """A bytes manifest whose only chunk is the whole file: the chunk's sha256 and the file's are of
    the same bytes, so one read gives both rows; the manifest's block maps are learned in that pass,
    each on its own thread. Rows as ``_run_jobs`` gives them: the whole file's left out when the
    chunk is already bad."""
    size, sha256, file_map = manifest.file.size, manifest.file.sha256, manifest.file.blocks
    assert size is not None and sha256 is not None
    learners: dict[int, BlockHasher] = {}
    for claimed in (file_map, chunk.blocks):
        if claimed is not None:
            learners.setdefault(claimed.block_size, BlockHasher(claimed.block_size))
    task = reporter.task(f"verify {path.name}", size)
    try:
        digest, read = hash_range(path, 0, size, task.advance, extra_sinks=list(learners.values()))
    finally:
        task.close()
    learned = {block_size: hasher.finish() for block_size, hasher in learners.items()}
    if read != size:
        return [CheckRow(chunk.name, MISMATCH, f"only {read} of {size} bytes present")]
    if digest != chunk.sha256:
        if file_map is not None:
            return [_narrowed(_Job(chunk.name, path, 0, size, chunk.sha256, whole=False), file_map, size)]
        return [CheckRow(chunk.name, MISMATCH, f"sha256 {digest[:16]}…, expected {chunk.sha256[:16]}…")]
    if chunk.blocks is not None and learned[chunk.blocks.block_size].hashes != chunk.blocks.hashes:
        return [CheckRow(chunk.name, MISMATCH, "sha256 matches, but the manifest's block map does not describe "
                                               "these bytes (the manifest contradicts itself)")]
    rows = [CheckRow(chunk.name, OK)]
    if digest != sha256:
        rows.append(CheckRow(manifest.file.name, MISMATCH, f"whole file: sha256 {digest[:16]}…, "
                                                           f"the manifest says {sha256[:16]}…"))
    elif file_map is not None and learned[file_map.block_size].hashes != file_map.hashes:
        rows.append(CheckRow(manifest.file.name, MISMATCH, "whole file: sha256 matches, but the manifest's block "
                                                           "map does not describe these bytes (the manifest "
                                                           "contradicts itself)"))
    else:
        rows.append(CheckRow(manifest.file.name, OK, "whole file"))
    return rows


def _model_checks(cache: ModelCache, model: CachedModel, full: bool = False) -> tuple[list[_Job], list[CheckRow]]:
    """Everything a cached model's records vouch for — its file, or each kept shard — as hash jobs of
    exactly the recorded size, plus rows for what is already known bad (missing, other size). A proven
    block map makes it a block check; ``full`` (or no proven map) hashes the whole file against the
    recorded sha256, the map then only naming damaged ranges."""
    jobs, rows = [], []
    for member in model.members:
        path = cache.path_for(member.filename)
        if member.sha256 is None:
            rows.append(CheckRow(member.filename, MISSING, "its record is gone"))
        elif not is_plain_file(path):
            rows.append(CheckRow(member.filename, MISSING, "" if not os.path.lexists(path) else "not a regular file"))
        elif member.size is not None and (actual := path.stat().st_size) != member.size:
            rows.append(CheckRow(member.filename, MISMATCH, f"size {actual}, expected {member.size}"))
        else:
            blocks = member.record.block_map if member.record is not None else None
            size = member.size
            narrow = (blocks, size) if blocks is not None and size is not None else None
            jobs.append(_Job(member.filename, path, 0, size, member.sha256, blocks=None if full else blocks,
                             learn=blocks is None and member.record is not None, narrow=narrow if full else None))
    return jobs, rows


def _damaged_row(damaged: DamagedRecord) -> CheckRow:
    return CheckRow(damaged.path.name, DAMAGED, f"record: {damaged.problem}")


def verify_cached(cache: ModelCache, name: str, reporter: Reporter, full: bool = False) -> VerifyReport:
    model = cache.find(name)
    if model is None:
        damaged = cache.find_damaged(name)
        if damaged is not None:
            return VerifyReport(str(damaged.path), [_damaged_row(damaged)])
        raise NotFoundError(f"no cached model or cache record named {name!r}",
                            hint="pass a manifest with --manifest, or see `teadist list`")
    jobs, rows = _model_checks(cache, model, full)
    rows += _run_jobs(jobs, reporter, f"verify {model.head.filename}")
    report = VerifyReport(str(cache.path_for(model.head.filename)), rows)
    if report.ok:
        _mark(cache, model, rows)
    return report


def verify_whole_cache(cache: ModelCache, reporter: Reporter, full: bool = False) -> VerifyReport:
    """Every record, shards included, hashed in one parallel batch; damaged records reported."""
    scan = cache.scan()
    checks = [_model_checks(cache, m, full) for m in scan.models]
    results = iter(_run_jobs([job for jobs, _ in checks for job in jobs], reporter, "verify cache"))
    rows: list[CheckRow] = []
    for model, (jobs, known) in zip(scan.models, checks, strict=True):
        own = known + [next(results) for _ in jobs]
        if all(row.status == OK for row in own):
            _mark(cache, model, own)
        rows += own
    rows += [_damaged_row(d) for d in scan.damaged]
    return VerifyReport(str(cache.root), rows)


def _mark(cache: ModelCache, model: CachedModel, rows: list[CheckRow]) -> None:
    """Stamp the records verified (with any block map learned) — best effort: a read-only cache keeps
    its stamps, the report stands."""
    by_name = {row.name: row for row in rows}
    for member in model.members:
        if member.record is not None:
            row = by_name.get(member.filename)
            try:
                cache.mark_verified(member.record, row.learned if row else None, row.hashed if row else None)
            except OSError:
                return
