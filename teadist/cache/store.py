"""The TEA model cache: models at ``<root>/<upstream filename>``, teadist's records beside them.

The TEA runtimes search ``~/.cache/tea/models/`` for upstream file names, so models live there
directly. teadist keeps one JSON record per installed file (sha256, size, where it came from,
installed / verified / used times) under ``<root>/.teadist/records/`` (see ``layout``). Kept
llama.cpp shards are one record per shard, tied together by ``group`` (the first shard's name).

Records are input too: one that does not parse is reported as damaged (and can be removed), never
a crash for the whole cache; one whose model file is gone is listed, verified as MISSING and
removable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from teadist.base import jsonin
from teadist.base.blocks import BlockMap
from teadist.base.fsutil import UnsafePathError, plain_filename_problem, remove_quietly, write_bytes_atomic
from teadist.cache.layout import RECORD_SUFFIX, CacheLayout, CacheTarget, first_shard, kept_shards
from teadist.cache.lock import LOCK_TIMEOUT
from teadist.errors import TeadistError

MAX_RECORD_BYTES = 4 * 1024 * 1024  # block maps: ~70 bytes per 8 MiB block
MAX_SIZE = 2**60
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RecordProblem(ValueError):
    """A record file that does not describe an installed file; the message says why."""


@dataclass
class CacheRecord:
    """What teadist knows about one installed file (a model, or one kept shard of it)."""

    filename: str
    name: str
    sha256: str
    size: int
    source: str
    origin: dict[str, str | None] | None = None  # the content's identity at its source (see fetch)
    installed_at: str = field(default_factory=now_iso)
    verified_at: str | None = None
    last_used: str | None = None
    # When it was last used (or installed), in ns since the epoch: the order ``prune`` evicts in. The
    # shown times are kept to the second, and two uses within one second must not tie.
    used_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None  # with the inode: a change that puts the mtime back is still seen
    inode: int | None = None
    group: str | None = None  # kept shards: the first shard's file name, on every shard
    shards: list[str] = field(default_factory=list)  # on the first shard: the other shards, in order
    shard_sha256: dict[str, str] = field(default_factory=dict)  # records of older teadist: shards' sha256
    # The SHA-256 of each block, computed from bytes whose whole sha256 matched the source's; records
    # of older teadist have none until their next full verify.
    block_size: int | None = None
    blocks: list[str] = field(default_factory=list)
    repairing: bool = False  # blocks are being rewritten in place: nothing vouches for the file now
    # A digest of (sha256, block_size, blocks), written only by teadist when the whole sha256 matched
    # the bytes the map was computed from: a map edited by hand no longer matches it and is not trusted.
    map_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def last_use_ns(self) -> int:
        """When it was last used or installed (ns since the epoch), for least-recently-used order;
        from the shown time (to the second) for a record of an older teadist; 0 when unreadable."""
        if self.used_ns is not None:
            return self.used_ns
        try:
            return int(datetime.fromisoformat(self.last_used or self.installed_at).timestamp()) * 1_000_000_000
        except ValueError:
            return 0

    def _map_digest(self) -> str:
        return hashlib.sha256(f"{self.sha256}:{self.block_size}:{','.join(self.blocks)}".encode()).hexdigest()

    def _listed_map(self) -> BlockMap | None:
        if self.block_size is None:
            return None
        blocks = BlockMap(self.block_size, tuple(self.blocks))
        return blocks if blocks.problem(self.size) is None else None

    @property
    def block_map(self) -> BlockMap | None:
        """The block map to verify with: the proven one, but not while a repair is under way (nothing
        vouches for the file then: it is hashed whole)."""
        return None if self.repairing else self.proven_map

    @property
    def proven_map(self) -> BlockMap | None:
        """The block map, only if it was proven against the whole sha256 when it was recorded (its
        digest matches); else None."""
        blocks = self._listed_map()
        if blocks is None or self.map_sha256 != self._map_digest():
            return None
        if len(blocks.hashes) == 1 and blocks.hashes[0] != self.sha256:
            return None  # one block is the whole file: its hash must be the file's
        return blocks

    def set_blocks(self, blocks: BlockMap | None) -> None:
        """Keep ``blocks`` as proven: call only with a map of bytes whose whole sha256 matched."""
        self.block_size = blocks.block_size if blocks is not None else None
        self.blocks = list(blocks.hashes) if blocks is not None else []
        self.map_sha256 = self._map_digest() if blocks is not None else None

    @classmethod
    def parse(cls, raw: bytes, filename: str) -> CacheRecord:
        """The record for ``filename`` from its JSON, or RecordProblem naming what is wrong."""
        try:
            data = jsonin.loads(raw)
        except jsonin.JsonInputError as exc:
            raise RecordProblem(str(exc)) from None
        if not isinstance(data, dict):
            raise RecordProblem("not a JSON object")

        def text(key: str, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or len(value) > 4096:
                raise RecordProblem(f"{key} is not a string")
            return value

        def whole(key: str, optional: bool = False, most: int = MAX_SIZE) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if type(value) is not int or not 0 <= value <= most:
                raise RecordProblem(f"{key} is not a whole number in range")
            return value

        def file_name(value: object, key: str) -> str:
            problem = plain_filename_problem(value)
            if problem is not None or not isinstance(value, str) or value.startswith("."):
                raise RecordProblem(f"{key} {str(value)[:60]!r} is not a plain file name")
            return value

        if file_name(data.get("filename"), "filename") != filename:
            raise RecordProblem(f"filename {data.get('filename')!r} does not match the record's name")
        sha256 = text("sha256")
        if not _SHA256.match(sha256):
            raise RecordProblem("sha256 is not 64 lower-case hex digits")
        origin = data.get("origin")
        if origin is not None and not (isinstance(origin, dict) and all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in origin.items())):
            raise RecordProblem("origin is not an object of strings")
        shards = data.get("shards", [])
        if not isinstance(shards, list):
            raise RecordProblem("shards is not a list")
        shard_sha = data.get("shard_sha256", {})
        if not isinstance(shard_sha, dict) or not all(isinstance(v, str) and _SHA256.match(v)
                                                      for v in shard_sha.values()):
            raise RecordProblem("shard_sha256 is not an object of sha256 values")
        group = data.get("group")
        if group is not None and group != filename and group != first_shard(filename):
            raise RecordProblem(f"group {str(group)[:60]!r} is not the first shard of {filename}")
        own = kept_shards(filename) or []
        if shards and shards != own:
            raise RecordProblem(f"shards are not the other shards of {filename} (a record lists only its own)")
        if not set(shard_sha) <= set(own):
            raise RecordProblem(f"shard_sha256 names files that are not shards of {filename}")
        blocks = data.get("blocks", [])
        if not isinstance(blocks, list) or not all(isinstance(v, str) and _SHA256.match(v) for v in blocks):
            raise RecordProblem("blocks is not a list of sha256 values")
        repairing = data.get("repairing", False)
        if type(repairing) is not bool:
            raise RecordProblem("repairing is not true or false")
        record = cls(
            filename=filename, name=text("name"), sha256=sha256, size=whole("size"), source=text("source"),
            origin=origin, installed_at=text("installed_at"), verified_at=text("verified_at", True),
            last_used=text("last_used", True), used_ns=whole("used_ns", True, 2**63 - 1),
            mtime_ns=whole("mtime_ns", True, 2**63 - 1),
            ctime_ns=whole("ctime_ns", True, 2**63 - 1), inode=whole("inode", True, 2**64 - 1),
            group=None if group is None else file_name(group, "group"),
            shards=[file_name(s, "shards") for s in shards],
            shard_sha256={file_name(k, "shard_sha256"): v for k, v in shard_sha.items()},
            block_size=whole("block_size", True, 2**40), blocks=blocks, repairing=repairing,
            map_sha256=text("map_sha256", True),
        )
        if record.block_size is not None and record._listed_map() is None:
            raise RecordProblem("blocks do not describe a file of its size")
        return record


@dataclass(frozen=True)
class FileIdentity:
    """Which file a path names, and whether it changed: two equal identities taken around a pass over
    the bytes mean the pass read this very file, unchanged (a rename or a write moves the ctime)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        """The identity of the plain file at ``path``; None when there is none (or a symlink)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Member:
    """One file of a cached model: the model itself, or one of its kept shards."""

    filename: str
    sha256: str | None  # None: listed by the model, but its record is gone
    size: int | None  # None: an older teadist recorded only the shard's hash
    record: CacheRecord | None


@dataclass
class CachedModel:
    head: CacheRecord
    members: list[Member]  # the head first

    @property
    def filenames(self) -> list[str]:
        return [m.filename for m in self.members]


@dataclass
class DamagedRecord:
    path: Path
    problem: str

    @property
    def filename(self) -> str:
        return self.path.name.removesuffix(RECORD_SUFFIX)


@dataclass
class CacheScan:
    models: list[CachedModel]
    damaged: list[DamagedRecord]
    unrecorded: list[Path]


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = CacheLayout(root)

    # -- names ----------------------------------------------------------------------------
    def target(self, filename: str) -> CacheTarget:
        return self.layout.target(filename)

    def path_for(self, filename: str) -> Path:
        return self.target(filename).final

    def contains(self, dest: Path) -> bool:
        return self.layout.contains(dest)

    # -- records --------------------------------------------------------------------------
    def _load(self, path: Path, filename: str) -> CacheRecord:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise RecordProblem(f"cannot be read ({exc.strerror})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a folder (perhaps with folders inside) is never descended into
            os.close(fd)
            raise RecordProblem("is a folder, not a record file" if stat.S_ISDIR(mode) else "is not a regular file")
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise RecordProblem(f"is larger than {MAX_RECORD_BYTES} bytes")
        return CacheRecord.parse(raw, filename)

    def read_record(self, filename: str) -> CacheRecord | None:
        """The record of ``filename``; None when there is none or it is damaged."""
        target = self.target(filename)
        if not target.record_readable():
            return None
        try:
            return self._load(target.record, filename)
        except (FileNotFoundError, RecordProblem):
            return None

    def write_record(self, record: CacheRecord) -> None:
        """Write atomically (temp created exclusively, then renamed). Hold the target's lock."""
        import json

        target = self.target(record.filename)
        folder = self.layout.ensure_records_dir()
        payload = json.dumps(record.to_dict(), indent=2).encode("utf-8")
        write_bytes_atomic(target.record, payload, folder=folder, stem=f".{record.filename}.")

    def scan(self) -> CacheScan:
        """Every record (damaged ones apart), grouped into models; files nobody recorded."""
        records: dict[str, CacheRecord] = {}
        damaged: list[DamagedRecord] = []
        for path in self.layout.record_files():
            filename = path.name.removesuffix(RECORD_SUFFIX)
            if path.name.startswith("."):
                continue  # a record being written (temp file)
            try:
                records[filename] = self._load(path, filename)
            except FileNotFoundError:
                continue
            except RecordProblem as exc:
                damaged.append(DamagedRecord(path, str(exc)))
        heads = [r for r in records.values() if r.group in (None, r.filename) or r.group not in records]
        head_names = {r.filename for r in heads}  # a set: `record in heads` compared whole records, n² times
        claimed: set[str] = set()
        models = []
        for record in heads:
            members = [Member(record.filename, record.sha256, record.size, record)]
            for name in record.shards:
                shard = records.get(name)
                if shard is not None and shard.group == record.filename:
                    members.append(Member(name, shard.sha256, shard.size, shard))
                else:
                    members.append(Member(name, record.shard_sha256.get(name), None, None))
                claimed.add(name)
            models.append(CachedModel(record, members))
        for record in records.values():  # shards their first shard does not list (yet): on their own
            if record.filename not in head_names and record.filename not in claimed:
                models.append(CachedModel(record, [Member(record.filename, record.sha256, record.size, record)]))
        known = set(records) | {d.filename for d in damaged} | claimed
        unrecorded = [p for p in sorted(self.root.glob("*.gguf")) if p.name not in known and _is_file(p)] \
            if self.root.is_dir() else []
        return CacheScan(sorted(models, key=lambda m: m.head.filename), damaged, unrecorded)

    def find(self, name: str) -> CachedModel | None:
        """A model by its name (``phi-4-mini``, ``phi-4-mini:q4_k_m``) or by any of its file names."""
        models = self.scan().models
        for model in models:
            if name in model.filenames:
                return model
        return next((m for m in models if m.head.name == name), None)

    def find_damaged(self, name: str) -> DamagedRecord | None:
        return next((d for d in self.scan().damaged if name in (d.filename, d.path.name)), None)

    def is_current(self, record: CacheRecord) -> bool:
        """True when the file on disk is still the one the record vouches for (size and mtime)."""
        try:
            st = os.lstat(self.path_for(record.filename))
        except FileNotFoundError:
            return False
        return (not record.repairing and stat.S_ISREG(st.st_mode) and st.st_size == record.size
                and record.mtime_ns == st.st_mtime_ns
                and record.ctime_ns in (None, st.st_ctime_ns) and record.inode in (None, st.st_ino))

    def record_install(self, filename: str, name: str, sha256: str, size: int, source: str,
                       origin: dict[str, str | None] | None = None, group: str | None = None,
                       shards: list[str] | None = None, blocks: BlockMap | None = None) -> CacheRecord:
        """Record a file just installed and verified (``blocks``: its block map, computed from the
        bytes whose sha256 matched). Hold the target's lock."""
        st = os.lstat(self.path_for(filename))
        stamp = now_iso()
        record = CacheRecord(filename=filename, name=name, sha256=sha256, size=size, source=source, origin=origin,
                             installed_at=stamp, verified_at=stamp, last_used=stamp, used_ns=time.time_ns(),
                             mtime_ns=st.st_mtime_ns,
                             ctime_ns=st.st_ctime_ns, inode=st.st_ino,
                             group=group, shards=shards or [])
        record.set_blocks(blocks)
        self.write_record(record)
        return record

    def touch(self, record: CacheRecord) -> None:
        """Note a use (fetch hit, path lookup): ``prune`` evicts least recently used. Hold the lock."""
        record.last_used, record.used_ns = now_iso(), time.time_ns()
        self.write_record(record)

    def mark_verified(self, record: CacheRecord, blocks: BlockMap | None = None,
                      hashed: FileIdentity | None = None) -> None:
        """Stamp a record verified — only if nobody changed it or its file meanwhile; ``blocks`` (from
        the pass whose whole sha256 just matched) fills in a block map the record lacks. ``hashed`` is
        the file's identity when that pass began: the record is stamped only while the file still has
        it (checked under the lock), so a file swapped in or written to meanwhile is never vouched for."""
        target = self.target(record.filename)
        with target.lock_if_free() as got:
            current = self.read_record(record.filename) if got else None
            now = FileIdentity.of(self.path_for(record.filename)) if current is not None else None
            if now is None or (hashed is not None and now != hashed):
                return
            if current is not None and current.sha256 == record.sha256 and current.repairing and blocks is not None:
                # A whole-hash pass matched a file left mid-repair: it is the source's file again —
                # if it is still the file that pass hashed.
                if hashed is not None and now.size == current.size:
                    current.repairing = False
                    current.mtime_ns, current.ctime_ns, current.inode = now.mtime_ns, now.ctime_ns, now.inode
                    current.verified_at = now_iso()
                    current.set_blocks(blocks)
                    self.write_record(current)
            elif current is not None and current.sha256 == record.sha256 and current.mtime_ns == record.mtime_ns \
                    and self.is_current(current):
                current.verified_at = now_iso()
                if blocks is not None and current.block_map is None and blocks.problem(current.size) is None:
                    current.set_blocks(blocks)
                self.write_record(current)

    # -- removal --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, filenames: list[str], wait: bool) -> Iterator[bool]:
        """Hold the locks of ``filenames`` (in name order, so two removers never deadlock)."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(filenames)):
                target = self.target(name)
                if wait:
                    stack.enter_context(target.lock(timeout=LOCK_TIMEOUT))
                elif not stack.enter_context(target.lock_if_free()):
                    yield False
                    return
            yield True

    def remove(self, model: CachedModel, wait: bool = True) -> list[Path] | None:
        """Remove a model's files, records and work folders; None if busy (``wait`` False).

        Order: shard files, their records, the first file, its record last — so a removal cut
        short leaves the first record, listing what is left, for the next ``rm`` to finish."""
        removed: list[Path] = []
        with self._locked(model.filenames, wait) as got:
            if not got:
                return None
            for member in [*model.members[1:], model.members[0]]:
                target = self.target(member.filename)
                if _is_file(target.final) or os.path.islink(target.final):
                    remove_quietly(target.final)
                    removed.append(target.final)
                target.clear_work()
                if member is not model.members[0]:
                    remove_quietly(target.record)
            remove_quietly(self.target(model.head.filename).record)
        return removed

    def remove_damaged(self, damaged: DamagedRecord) -> list[Path]:
        """Remove a damaged record and the file it stood for (teadist installed it)."""
        removed = []
        if os.path.isdir(damaged.path) and not os.path.islink(damaged.path):
            raise UnsafePathError(f"{damaged.path} is a folder where teadist keeps a record; teadist does not "
                                  "remove folders it did not make", hint="look inside, then remove it yourself")
        try:
            target = self.target(damaged.filename)
        except TeadistError:  # not even a valid file name: only the record file goes
            remove_quietly(damaged.path)
            return [damaged.path]
        with target.lock():
            if _is_file(target.final):
                remove_quietly(target.final)
                removed.append(target.final)
            target.clear_work()
            remove_quietly(damaged.path)
        return [*removed, damaged.path]


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
