"""Lossless GGUF shards: llama.cpp loads them as they are, and they rebuild the exact original.

``split_gguf`` writes ``<stem>-00001-of-0000N.gguf`` in llama.cpp's split format (``split.no``,
``split.count``, ``split.tensors.count``; all metadata and the tokenizer in shard 1; tensors never
cut; the file's alignment kept). Every byte of the original that a shard holds verbatim — the
metadata block, each tensor's data — is written so that it can be found again, and the manifest's
``rebuild`` lists the original as pieces in order: a range of a shard, a run of zeros, or a small
literal (the 24-byte preamble, the tensor-info table with its original offsets, any non-zero
padding). Split replays the pieces against the original's SHA-256 before it writes the manifest,
so a file that would not rebuild exactly is noticed at split time, never later.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from teadist.errors import IntegrityError, ManifestError, TeadistError, UsageError
from teadist.fsutil import atomic_write, ensure_free_space, require_plain_filename
from teadist.manifest import ChunkRecord, FileRecord, Manifest, manifest_filename, write_manifest
from teadist.progress import Reporter

DEFAULT_SHARD_SIZE = 512_000_000  # wllama's recommendation
SHARD_LIMIT = 2**31  # no shard may reach 2 GiB (browsers, GitHub, ftell())
MAX_LITERAL_BYTES = 8 * 1024 * 1024
COPY_BLOCK = 8 * 1024 * 1024
_UINT16, _UINT32, _INT32 = 2, 4, 5


@dataclass
class _Tensor:
    name: str
    info: bytes  # name, n_dims, dims, type: everything but the u64 offset
    data_offset: int  # absolute, in the original
    n_bytes: int


@dataclass
class _Layout:
    version: int
    alignment: int
    custom_alignment: bool
    kv_start: int
    kv_end: int
    kv_count: int
    info_end: int
    data_offset: int
    size: int
    tensors: list[_Tensor]


@dataclass
class _Shard:
    tensors: list[_Tensor] = field(default_factory=list)
    header: bytes = b""
    data_positions: list[int] = field(default_factory=list)  # where each tensor's data sits in the shard
    size: int = 0


def shard_names(stem: str, count: int) -> list[str]:
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _pad(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


def read_layout(path: Path) -> _Layout:
    """Byte positions of every region of a GGUF, read with the gguf package."""
    from teadist.ggufinfo import InvalidGGUFError, open_reader

    reader = open_reader(path)
    if reader.byte_order != "I":
        raise UsageError(f"{path.name}: big-endian GGUF files are not supported for sharding")
    size = path.stat().st_size
    real = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    kv_start = 24
    kv_end = kv_start
    if real:
        last = real[-1]
        kv_end = last.offset + sum(int(p.nbytes) for p in last.parts)
    tensors = []
    for t in reader.tensors:
        info_len = sum(int(p.nbytes) for p in t.field.parts)
        info = bytes(reader.data[t.field.offset:t.field.offset + info_len - 8])
        tensors.append(_Tensor(t.name, info, int(t.data_offset), int(t.n_bytes)))
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise InvalidGGUFError(f"{path.name}: tensor {t.name!r} lies past the end of the file")
    info_end = kv_end + sum(len(t.info) + 8 for t in tensors)
    version = int(reader.fields["GGUF.version"].parts[0][0])
    return _Layout(version=version, alignment=int(reader.alignment),
                   custom_alignment="general.alignment" in reader.fields, kv_start=kv_start, kv_end=kv_end,
                   kv_count=len(real), info_end=info_end, data_offset=int(reader.data_offset), size=size,
                   tensors=sorted(tensors, key=lambda t: t.data_offset))


def _kv(key: str, vtype: int, fmt: str, value: int) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + struct.pack(fmt, value)


def _plan_shards(layout: _Layout, kv_bytes: int, shard_size: int) -> list[_Shard]:
    def header_size(shard_index: int, tensors: list[_Tensor]) -> int:
        kvs = (kv_bytes if shard_index == 0 else 0) + len(_split_kvs(layout, 0, 1, shard_index))
        raw = 24 + kvs + sum(len(t.info) + 8 for t in tensors)
        return raw + _pad(raw, layout.alignment)

    def data_size(tensors: list[_Tensor]) -> int:
        total = 0
        for t in tensors:
            total += _pad(total, layout.alignment) + t.n_bytes
        return total

    shards = [_Shard()]
    for tensor in layout.tensors:
        current = shards[-1]
        candidate = [*current.tensors, tensor]
        size = header_size(len(shards) - 1, candidate) + data_size(candidate)
        if current.tensors and size > shard_size:
            shards.append(_Shard(tensors=[tensor]))
            candidate = [tensor]
            size = header_size(len(shards) - 1, candidate) + data_size(candidate)
        else:
            current.tensors = candidate
        if size >= SHARD_LIMIT:
            raise UsageError(f"tensor {tensor.name!r} ({tensor.n_bytes} bytes) does not fit in a shard under 2 GiB",
                             hint="this model cannot be served as browser shards")
    return shards


def _split_kvs(layout: _Layout, no: int, count: int, shard_index: int) -> bytes:
    out = (_kv("split.no", _UINT16, "<H", no) + _kv("split.count", _UINT16, "<H", count)
           + _kv("split.tensors.count", _INT32, "<i", len(layout.tensors)))
    if shard_index > 0 and layout.custom_alignment:
        out += _kv("general.alignment", _UINT32, "<I", layout.alignment)
    return out


def _build_headers(layout: _Layout, kv_block: bytes, shards: list[_Shard]) -> None:
    count = len(shards)
    for index, shard in enumerate(shards):
        kvs = (kv_block if index == 0 else b"") + _split_kvs(layout, index, count, index)
        n_kv = (layout.kv_count if index == 0 else 0) + (4 if index > 0 and layout.custom_alignment else 3)
        infos = b""
        rel = 0
        relative_offsets = []
        for t in shard.tensors:
            rel += _pad(rel, layout.alignment)
            relative_offsets.append(rel)
            rel += t.n_bytes
        for t, off in zip(shard.tensors, relative_offsets, strict=True):
            infos += t.info + struct.pack("<Q", off)
        raw = b"GGUF" + struct.pack("<IQQ", layout.version, len(shard.tensors), n_kv) + kvs + infos
        shard.header = raw + b"\0" * _pad(len(raw), layout.alignment)
        shard.data_positions = [len(shard.header) + off for off in relative_offsets]
        shard.size = len(shard.header) + rel


# -- the rebuild recipe -------------------------------------------------------------------------
Piece = dict[str, Any]


def _recipe(layout: _Layout, original: BinaryIO, shards: list[_Shard]) -> list[Piece]:
    pieces: list[Piece] = []

    def literal(start: int, end: int) -> None:
        if end <= start:
            return
        original.seek(start)
        data = original.read(end - start)
        if data.count(0) == len(data):
            if pieces and "zeros" in pieces[-1]:
                pieces[-1]["zeros"] += len(data)
            else:
                pieces.append({"zeros": len(data)})
        else:
            pieces.append({"literal": base64.b64encode(data).decode()})

    literal(0, layout.kv_start)
    if layout.kv_end > layout.kv_start:
        pieces.append({"shard": 0, "offset": 24, "length": layout.kv_end - layout.kv_start})
    literal(layout.kv_end, layout.data_offset)  # tensor infos (original offsets) + padding
    pos = layout.data_offset
    for index, shard in enumerate(shards):
        for tensor, at in zip(shard.tensors, shard.data_positions, strict=True):
            literal(pos, tensor.data_offset)
            if tensor.n_bytes:
                pieces.append({"shard": index, "offset": at, "length": tensor.n_bytes})
            pos = tensor.data_offset + tensor.n_bytes
    literal(pos, layout.size)
    return pieces


def piece_length(piece: Piece) -> int:
    if "zeros" in piece:
        return int(piece["zeros"])
    if "literal" in piece:
        return len(base64.b64decode(piece["literal"]))
    return int(piece["length"])


def check_recipe(manifest: Manifest) -> list[Piece]:
    """The rebuild pieces of a ``gguf`` manifest, checked against its shards and file size."""
    rebuild = manifest.rebuild or {}
    pieces = rebuild.get("pieces")
    if not isinstance(pieces, list) or not pieces:
        raise ManifestError("manifest field rebuild.pieces: missing")
    total = 0
    literal_bytes = 0
    last_end = [0] * len(manifest.chunks)
    for i, piece in enumerate(pieces):
        if not isinstance(piece, dict):
            raise ManifestError(f"manifest field rebuild.pieces[{i}]: not an object")
        keys = set(piece)
        try:
            if keys == {"zeros"} and isinstance(piece["zeros"], int) and piece["zeros"] > 0:
                total += piece["zeros"]
            elif keys == {"literal"} and isinstance(piece["literal"], str):
                n = len(base64.b64decode(piece["literal"], validate=True))
                literal_bytes += n
                total += n
            elif keys == {"shard", "offset", "length"} and all(isinstance(piece[k], int) for k in keys):
                shard, offset, length = piece["shard"], piece["offset"], piece["length"]
                if not 0 <= shard < len(manifest.chunks) or offset < last_end[shard] or length <= 0 \
                        or offset + length > manifest.chunks[shard].size:
                    raise ValueError("range outside its shard or out of order")
                last_end[shard] = offset + length
                total += length
            else:
                raise ValueError("not a zeros, literal or shard piece")
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"manifest field rebuild.pieces[{i}]: {exc}") from None
    if literal_bytes > MAX_LITERAL_BYTES:
        raise ManifestError(f"manifest field rebuild.pieces: {literal_bytes} literal bytes "
                            f"(at most {MAX_LITERAL_BYTES})")
    if total != manifest.file.size:
        raise ManifestError(f"manifest field rebuild.pieces: add up to {total} bytes, "
                            f"file.size is {manifest.file.size}")
    return pieces


def replay(pieces: list[Piece], open_shard: Callable[[int], BinaryIO], sinks: list[Callable[[bytes], Any]]) -> None:
    """Feed the original's bytes, piece by piece, to ``sinks``."""
    for piece in pieces:
        if "zeros" in piece:
            left = int(piece["zeros"])
            while left:
                n = min(left, COPY_BLOCK)
                block = bytes(n)
                for sink in sinks:
                    sink(block)
                left -= n
        elif "literal" in piece:
            data = base64.b64decode(piece["literal"])
            for sink in sinks:
                sink(data)
        else:
            fh = open_shard(int(piece["shard"]))
            fh.seek(int(piece["offset"]))
            left = int(piece["length"])
            while left:
                block = fh.read(min(left, COPY_BLOCK))
                if not block:
                    raise IntegrityError(f"shard {int(piece['shard']) + 1} ended early")
                for sink in sinks:
                    sink(block)
                left -= len(block)


# -- split --------------------------------------------------------------------------------------
@dataclass
class ShardResult:
    manifest: Manifest
    manifest_path: Path


def split_gguf(src: Path, out_dir: Path, reporter: Reporter, shard_size: int = DEFAULT_SHARD_SIZE,
               name: str | None = None, base_url: str | None = None) -> ShardResult:
    from urllib.parse import quote

    from teadist.hashing import hash_range
    from teadist.split import default_model_name, describe_model

    if shard_size <= 0 or shard_size >= SHARD_LIMIT:
        raise UsageError(f"shard size {shard_size} must be positive and below 2 GiB")
    file_name = require_plain_filename(src.name, "input file name")
    if not file_name.endswith(".gguf"):
        raise UsageError(f"{file_name}: --format gguf needs a .gguf file")
    layout = read_layout(src)
    from concurrent.futures import ThreadPoolExecutor

    hasher = ThreadPoolExecutor(max_workers=1)  # the original's sha256, on the other core meanwhile
    original_sha_future = hasher.submit(hash_range, src)
    with open(src, "rb") as fh:
        fh.seek(layout.kv_start)
        kv_block = fh.read(layout.kv_end - layout.kv_start)
    shards = _plan_shards(layout, len(kv_block), shard_size)
    _build_headers(layout, kv_block, shards)
    names = shard_names(file_name.removesuffix(".gguf"), len(shards))
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / manifest_filename(file_name)
    manifest_path.unlink(missing_ok=True)
    ensure_free_space(out_dir, sum(s.size for s in shards), "the shards")
    with open(src, "rb") as original:
        pieces = _recipe(layout, original, shards)
        literal_bytes = sum(piece_length(p) for p in pieces if "literal" in p)
        if literal_bytes > MAX_LITERAL_BYTES:
            raise UsageError(f"{file_name}: {literal_bytes} bytes would have to be stored in the manifest")
        records = []
        task = reporter.task(f"shard {file_name}", sum(s.size for s in shards))
        try:
            for shard, shard_name in zip(shards, names, strict=True):
                digest = hashlib.sha256()
                with atomic_write(out_dir / shard_name) as out:
                    def emit(data: bytes, out: BinaryIO = out, digest: Any = digest) -> None:
                        out.write(data)
                        digest.update(data)
                        task.advance(len(data))

                    emit(shard.header)
                    pos = len(shard.header)
                    for tensor, at in zip(shard.tensors, shard.data_positions, strict=True):
                        emit(bytes(at - pos))
                        original.seek(tensor.data_offset)
                        left = tensor.n_bytes
                        while left:
                            block = original.read(min(left, COPY_BLOCK))
                            emit(block)
                            left -= len(block)
                        pos = at + tensor.n_bytes
                url = (base_url.rstrip("/") + "/" + quote(shard_name),) if base_url else ()
                records.append(ChunkRecord(shard_name, shard.size, digest.hexdigest(), None, url))
        finally:
            task.close()
    original_sha = original_sha_future.result()[0]
    hasher.shutdown()
    manifest = Manifest(name=name or default_model_name(file_name),
                        file=FileRecord(file_name, layout.size, original_sha), format="gguf", chunks=records,
                        rebuild={"method": "pieces-v1", "pieces": pieces}, model=describe_model(src, reporter))
    check_recipe(manifest)
    _prove_rebuild(manifest, out_dir, names)
    write_manifest(manifest, manifest_path)
    return ShardResult(manifest, manifest_path)


def _prove_rebuild(manifest: Manifest, folder: Path, names: list[str]) -> None:
    """Replay the recipe against the shards just written: it must give the original's sha256."""
    digest = hashlib.sha256()
    handles: dict[int, BinaryIO] = {}
    try:
        replay(check_recipe(manifest), lambda i: handles.setdefault(i, open(folder / names[i], "rb")),  # noqa: SIM115
               [digest.update])
    finally:
        for fh in handles.values():
            fh.close()
    if digest.hexdigest() != manifest.file.sha256:
        raise TeadistError(f"{manifest.file.name}: the shards would not rebuild the original exactly; refusing "
                           "to write a manifest that cannot vouch for it")


# -- rebuild ------------------------------------------------------------------------------------
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
    from teadist.cache import target_lock

    with target_lock(dest):
        return rebuild_original_locked(manifest, shards_dir, dest, reporter, cache, source)


def rebuild_original_locked(manifest: Manifest, shards_dir: Path, dest: Path, reporter: Reporter,
                            cache: Any = None, source: str = "local") -> tuple[str, int, bool]:
    """``rebuild_original`` for a caller that already holds ``target_lock(dest)``."""
    from teadist.assemble import existing_is_verified
    from teadist.fsutil import commit_file, remove_quietly, temp_path_for

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


# -- foreign shards (llama-gguf-split, gguf-py) ------------------------------------------------------
_SHARD_NAME = __import__("re").compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def is_shard_name(name: str) -> bool:
    return _SHARD_NAME.match(name) is not None


def merge_foreign_shards(first: Path, dest: Path, reporter: Reporter) -> tuple[str, int]:
    """Merge shards that came without a teadist manifest (``llama-gguf-split``, gguf-py) into one GGUF.

    Without a rebuild recipe the original's exact bytes are unknown: the result is a *merge* —
    the same metadata (minus ``split.*``) and the same tensors, in shard order — whose sha256
    need not match any published one. Returns (sha256, size)."""
    from teadist.fsutil import commit_file, remove_quietly, temp_path_for
    from teadist.ggufinfo import field_value, open_reader

    match = _SHARD_NAME.match(first.name)
    if match is None or int(match.group("no")) != 1:
        raise UsageError(f"{first.name} is not the first shard of a split GGUF (<name>-00001-of-0000N.gguf)")
    count = int(match.group("count"))
    paths = [first.parent / f"{match.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    for path in paths:
        if not path.is_file():
            raise IntegrityError(f"shard {path.name} is missing")
    readers = [open_reader(p) for p in paths]
    for index, reader in enumerate(readers):
        if field_value(reader, "split.no") != index or field_value(reader, "split.count") != count:
            raise IntegrityError(f"{paths[index].name}: split.no/split.count do not say shard {index + 1} of {count}")
    head = readers[0]
    alignment = int(head.alignment)
    kv = b""
    n_kv = 0
    for fld in head.fields.values():
        if fld.name.startswith("GGUF.") or fld.name.startswith("split."):
            continue
        kv += bytes(head.data[fld.offset:fld.offset + sum(int(p.nbytes) for p in fld.parts)])
        n_kv += 1
    tensors: list[tuple[Any, Any]] = [(reader, t) for reader in readers for t in reader.tensors]
    expected = field_value(head, "split.tensors.count")
    if isinstance(expected, int) and expected != len(tensors):
        raise IntegrityError(f"the shards hold {len(tensors)} tensors, split.tensors.count says {expected}")
    infos = b""
    rel = 0
    offsets = []
    for reader, t in tensors:
        rel += _pad(rel, alignment)
        offsets.append(rel)
        info_len = sum(int(p.nbytes) for p in t.field.parts) - 8
        infos += bytes(reader.data[t.field.offset:t.field.offset + info_len]) + struct.pack("<Q", rel)
        rel += int(t.n_bytes)
    version = int(head.fields["GGUF.version"].parts[0][0])
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv + infos
    header += b"\0" * _pad(len(header), alignment)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(dest.parent, len(header) + rel, dest.name)
    tmp = temp_path_for(dest)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            out.write(header)
            digest.update(header)
            pos = 0
            for (reader, t), off in zip(tensors, offsets, strict=True):
                gap = bytes(off - pos)
                out.write(gap)
                digest.update(gap)
                data = bytes(reader.data[int(t.data_offset):int(t.data_offset) + int(t.n_bytes)])
                out.write(data)
                digest.update(data)
                pos = off + int(t.n_bytes)
        commit_file(tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise
    reporter.warn(f"merged {count} shards without a teadist manifest into {dest.name}: this is a merge "
                  "(same metadata and tensors), not a verified copy of any original file")
    return digest.hexdigest(), len(header) + rel
