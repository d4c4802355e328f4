"""Check files against a manifest or the cache's record: per chunk OK / MISSING / MISMATCH.

Chunks (or chunk-sized ranges of an assembled file) are hashed in parallel so both cores work;
matching chunk hashes of a bytes manifest vouch for the whole file, so no second sequential pass
over it is needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from teadist.base.hashing import hash_range
from teadist.base.progress import Reporter
from teadist.cache.store import CacheRecord, ModelCache
from teadist.errors import NotFoundError, UsageError
from teadist.formats.manifest import Manifest

VERIFY_WORKERS = 2
OK, MISSING, MISMATCH = "OK", "MISSING", "MISMATCH"


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
        jobs = [_Job(c.name, path, c.offset or 0, c.size, c.sha256) for c in manifest.chunks]
        rows += _run_jobs(jobs, reporter, f"verify {path.name}")
    elif actual == size:
        rows += _run_jobs([_Job(path.name, path, 0, size, sha256)], reporter, f"verify {path.name}")
    return VerifyReport(str(path), rows)


def _record_checks(cache: ModelCache, record: CacheRecord) -> tuple[list[_Job], list[CheckRow]]:
    """Everything a cache record vouches for — the model file and any kept shards — as hash jobs,
    plus MISSING rows for what is gone."""
    jobs, missing = [], []
    for name, sha, size in [(record.filename, record.sha256, record.size),
                            *((n, s, None) for n, s in record.shard_sha256.items())]:
        if cache.path_for(name).is_file():
            jobs.append(_Job(name, cache.path_for(name), 0, size, sha))
        else:
            missing.append(CheckRow(name, MISSING))
    return jobs, missing


def verify_cached(cache: ModelCache, name: str, reporter: Reporter) -> VerifyReport:
    record = cache.find(name)
    if record is None:
        raise NotFoundError(f"no cached model or cache record named {name!r}",
                            hint="pass a manifest with --manifest, or see `teadist list`")
    jobs, rows = _record_checks(cache, record)
    rows += _run_jobs(jobs, reporter, f"verify {record.filename}")
    report = VerifyReport(str(cache.path_for(record.filename)), rows)
    if report.ok:
        cache.mark_verified(record)
    return report


def verify_whole_cache(cache: ModelCache, reporter: Reporter) -> VerifyReport:
    """Every record, shards included, hashed in one parallel batch."""
    records = cache.records()
    checks = [_record_checks(cache, r) for r in records]
    results = iter(_run_jobs([job for jobs, _ in checks for job in jobs], reporter, "verify cache"))
    rows: list[CheckRow] = []
    for record, (jobs, missing) in zip(records, checks, strict=True):
        own = missing + [next(results) for _ in jobs]
        if all(row.status == OK for row in own):
            cache.mark_verified(record)
        rows += own
    return VerifyReport(str(cache.root), rows)
