"""Check files against a manifest or the cache's record: per chunk OK / MISSING / MISMATCH.

Chunks (or chunk-sized ranges of an assembled file) are hashed in parallel so both cores work;
matching chunk hashes of a bytes manifest vouch for the whole file, so no second sequential pass
over it is needed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from teadist.base.fsutil import is_plain_file
from teadist.base.hashing import hash_range
from teadist.base.progress import Reporter
from teadist.cache.store import CachedModel, DamagedRecord, ModelCache
from teadist.errors import NotFoundError, UsageError
from teadist.formats.manifest import Manifest

VERIFY_WORKERS = 2
OK, MISSING, MISMATCH, DAMAGED = "OK", "MISSING", "MISMATCH", "DAMAGED"


@dataclass
class CheckRow:
    name: str
    status: str
    detail: str = ""


@dataclass
class VerifyReport:
    target: str
    rows: list[CheckRow]

    @property
    def ok(self) -> bool:
        return all(row.status == OK for row in self.rows)

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "ok": self.ok, "items": [asdict(r) for r in self.rows]}


@dataclass
class _Job:
    name: str
    path: Path
    offset: int
    length: int | None
    sha256: str
    whole: bool = True  # the job covers the whole file: its size must still be ``length`` afterwards


def _run_jobs(jobs: list[_Job], reporter: Reporter, label: str) -> list[CheckRow]:
    total = sum(j.length if j.length is not None else j.path.stat().st_size for j in jobs)
    task = reporter.task(label, total)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            task.advance(n)

    def run(job: _Job, advance: Callable[[int], None] = advance) -> CheckRow:
        digest, read = hash_range(job.path, job.offset, job.length, advance)
        if job.length is not None and read != job.length:
            return CheckRow(job.name, MISMATCH, f"only {read} of {job.length} bytes present")
        if digest != job.sha256:
            return CheckRow(job.name, MISMATCH, f"sha256 {digest[:16]}…, expected {job.sha256[:16]}…")
        if job.whole and job.length is not None and (now := job.path.stat().st_size) != job.length:
            return CheckRow(job.name, MISMATCH, f"size {now}, expected {job.length}")
        return CheckRow(job.name, OK)

    try:
        with ThreadPoolExecutor(max_workers=VERIFY_WORKERS) as pool:
            return list(pool.map(run, jobs))
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
            jobs.append(_Job(chunk.name, path, 0, None, chunk.sha256))
    for row in _run_jobs(jobs, reporter, f"verify {folder.name or folder}"):
        rows[row.name] = row
    return VerifyReport(str(folder), [rows[c.name] for c in manifest.chunks])


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
        # Each chunk is a byte range of the original: equal ranges prove an equal file.
        jobs = [_Job(c.name, path, c.offset or 0, c.size, c.sha256, whole=False) for c in manifest.chunks]
        rows += _run_jobs(jobs, reporter, f"verify {path.name}")
    elif actual == size:
        rows += _run_jobs([_Job(path.name, path, 0, size, sha256)], reporter, f"verify {path.name}")
    return VerifyReport(str(path), rows)


def _model_checks(cache: ModelCache, model: CachedModel) -> tuple[list[_Job], list[CheckRow]]:
    """Everything a cached model's records vouch for — its file, or each kept shard — as hash jobs of
    exactly the recorded size, plus rows for what is already known bad (missing, other size)."""
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
            jobs.append(_Job(member.filename, path, 0, member.size, member.sha256))
    return jobs, rows


def _damaged_row(damaged: DamagedRecord) -> CheckRow:
    return CheckRow(damaged.path.name, DAMAGED, f"record: {damaged.problem}")


def verify_cached(cache: ModelCache, name: str, reporter: Reporter) -> VerifyReport:
    model = cache.find(name)
    if model is None:
        damaged = cache.find_damaged(name)
        if damaged is not None:
            return VerifyReport(str(damaged.path), [_damaged_row(damaged)])
        raise NotFoundError(f"no cached model or cache record named {name!r}",
                            hint="pass a manifest with --manifest, or see `teadist list`")
    jobs, rows = _model_checks(cache, model)
    rows += _run_jobs(jobs, reporter, f"verify {model.head.filename}")
    report = VerifyReport(str(cache.path_for(model.head.filename)), rows)
    if report.ok:
        _mark(cache, model)
    return report


def verify_whole_cache(cache: ModelCache, reporter: Reporter) -> VerifyReport:
    """Every record, shards included, hashed in one parallel batch; damaged records reported."""
    scan = cache.scan()
    checks = [_model_checks(cache, m) for m in scan.models]
    results = iter(_run_jobs([job for jobs, _ in checks for job in jobs], reporter, "verify cache"))
    rows: list[CheckRow] = []
    for model, (jobs, known) in zip(scan.models, checks, strict=True):
        own = known + [next(results) for _ in jobs]
        if all(row.status == OK for row in own):
            _mark(cache, model)
        rows += own
    rows += [_damaged_row(d) for d in scan.damaged]
    return VerifyReport(str(cache.root), rows)


def _mark(cache: ModelCache, model: CachedModel) -> None:
    """Stamp the records verified — best effort: a read-only cache keeps its stamps, the report stands."""
    for member in model.members:
        if member.record is not None:
            try:
                cache.mark_verified(member.record)
            except OSError:
                return
