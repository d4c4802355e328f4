"""The TEA model cache: models at ``<root>/<upstream filename>``, teadist's records beside them.

The TEA runtimes search ``~/.cache/tea/models/`` for upstream file names, so models live there
directly. teadist keeps one JSON record per model (sha256, size, source, installed / verified /
used times) in the hidden folder ``<root>/.teadist/records/``; locks and partial downloads are
hidden files that no runtime will mistake for a model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teadist.base.fsutil import PART_SUFFIX, require_plain_filename, write_bytes_atomic
from teadist.errors import NotFoundError, TeadistError

META_DIR = ".teadist"
LOCK_TIMEOUT = 6 * 3600.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class CacheRecord:
    """What teadist knows about one installed model file."""

    filename: str
    name: str
    sha256: str
    size: int
    source: str
    installed_at: str = field(default_factory=now_iso)
    verified_at: str | None = None
    last_used: str | None = None
    mtime_ns: int | None = None
    shards: list[str] = field(default_factory=list)
    shard_sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / META_DIR
        self.records_dir = self.meta / "records"

    # -- paths ----------------------------------------------------------------------------
    def path_for(self, filename: str) -> Path:
        return self.root / require_plain_filename(filename, "model file name")

    def record_path(self, filename: str) -> Path:
        return self.records_dir / (require_plain_filename(filename, "model file name") + ".json")

    def contains(self, dest: Path) -> bool:
        return dest.parent.resolve() == self.root.resolve()

    # -- records --------------------------------------------------------------------------
    def read_record(self, filename: str) -> CacheRecord | None:
        try:
            data = json.loads(self.record_path(filename).read_text("utf-8"))
            return CacheRecord(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def write_record(self, record: CacheRecord) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(record.to_dict(), indent=2).encode("utf-8")
        write_bytes_atomic(self.record_path(record.filename), payload)

    def records(self) -> list[CacheRecord]:
        """Records whose model file is present, sorted by file name."""
        out = []
        if self.records_dir.is_dir():
            for entry in sorted(self.records_dir.glob("*.json")):
                record = self.read_record(entry.name.removesuffix(".json"))
                if record is not None and self.path_for(record.filename).exists():
                    out.append(record)
        return out

    def unrecorded_models(self) -> list[Path]:
        """GGUF files in the cache that teadist did not install (copied by hand, other tools)."""
        known = {r.filename for r in self.records()}
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.gguf") if p.is_file() and p.name not in known)

    def find(self, name: str) -> CacheRecord | None:
        """A record by model name (``phi-4-mini``, ``phi-4-mini:q4_k_m``) or by file name."""
        records = self.records()
        for record in records:
            if name in (record.filename, record.name):
                return record
        return None

    def is_current(self, record: CacheRecord, sha256: str, size: int) -> bool:
        """True when the file on disk is the one the record vouches for and matches sha256/size."""
        path = self.path_for(record.filename)
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return (record.sha256 == sha256 and record.size == size == st.st_size
                and record.mtime_ns == st.st_mtime_ns)

    def record_install(self, filename: str, name: str, sha256: str, size: int, source: str,
                       shards: list[str] | None = None, shard_sha256: dict[str, str] | None = None) -> CacheRecord:
        st = self.path_for(filename).stat()
        stamp = now_iso()
        record = CacheRecord(filename=filename, name=name, sha256=sha256, size=size, source=source,
                             installed_at=stamp, verified_at=stamp, last_used=stamp,
                             mtime_ns=st.st_mtime_ns, shards=shards or [], shard_sha256=shard_sha256 or {})
        self.write_record(record)
        return record

    def touch(self, record: CacheRecord) -> None:
        """Note a use (install, fetch hit, path lookup): ``prune`` evicts least recently used."""
        record.last_used = now_iso()
        self.write_record(record)

    def mark_verified(self, record: CacheRecord) -> None:
        record.verified_at = now_iso()
        self.write_record(record)

    def remove(self, record: CacheRecord) -> list[Path]:
        removed = []
        for filename in [record.filename, *record.shards]:
            path = self.path_for(filename)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        with contextlib.suppress(FileNotFoundError):
            self.record_path(record.filename).unlink()
        return removed

    def partials(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob(f".*{PART_SUFFIX}") if p.is_file())


def lock_path_for(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


@contextlib.contextmanager
def target_lock(dest: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock that serialises every writer of ``dest`` (across processes)."""
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path_for(dest)), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise TeadistError(
            f"timed out waiting for another teadist working on {dest.name}",
            hint=f"if no other teadist is running, remove {lock_path_for(dest)}",
        ) from None
    try:
        yield
    finally:
        lock.release()


def runtime_model_path(filename: str, cache: ModelCache, tea_model_path: str | None,
                       appdir: str | None) -> tuple[Path, str]:
    """The path the TEA runtimes would load, in their order: TEA_MODEL_PATH, $APPDIR, the cache."""
    if tea_model_path:
        candidate = Path(tea_model_path)
        if candidate.is_file():
            return candidate, "TEA_MODEL_PATH"
    if appdir:
        candidate = Path(appdir) / "usr" / "share" / "models" / filename
        if candidate.is_file():
            return candidate, "APPDIR"
    candidate = cache.path_for(filename)
    if candidate.is_file():
        return candidate, "cache"
    raise NotFoundError(f"model file {filename} is not installed",
                        hint=f"run `teadist fetch` for it, or place it in {cache.root}")

