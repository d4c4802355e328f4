"""GGUF byte layout for llama.cpp's split format: where each region of a file lies, how shards
are planned (tensors never cut, alignment kept) and what each shard's header holds."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from teadist.errors import UsageError

DEFAULT_SHARD_SIZE = 512_000_000  # wllama's recommendation
SHARD_LIMIT = 2**31  # no shard may reach 2 GiB (browsers, GitHub, ftell())

_UINT16, _UINT32, _INT32 = 2, 4, 5


@dataclass
class TensorInfo:
    name: str
    info: bytes  # name, n_dims, dims, type: everything but the u64 offset
    data_offset: int  # absolute, in the original
    n_bytes: int


@dataclass
class GGUFLayout:
    version: int
    alignment: int
    custom_alignment: bool
    kv_start: int
    kv_end: int
    kv_count: int
    info_end: int
    data_offset: int
    size: int
    tensors: list[TensorInfo]


@dataclass
class ShardPlan:
    tensors: list[TensorInfo] = field(default_factory=list)
    header: bytes = b""
    data_positions: list[int] = field(default_factory=list)  # where each tensor's data sits in the shard
    size: int = 0


def shard_names(stem: str, count: int) -> list[str]:
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def pad_to(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


def read_layout(path: Path) -> GGUFLayout:
    """Byte positions of every region of a GGUF, read with the gguf package."""
    from teadist.formats.gguf_info import InvalidGGUFError, open_reader

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
        tensors.append(TensorInfo(t.name, info, int(t.data_offset), int(t.n_bytes)))
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise InvalidGGUFError(f"{path.name}: tensor {t.name!r} lies past the end of the file")
    info_end = kv_end + sum(len(t.info) + 8 for t in tensors)
    version = int(reader.fields["GGUF.version"].parts[0][0])
    return GGUFLayout(version=version, alignment=int(reader.alignment),
                   custom_alignment="general.alignment" in reader.fields, kv_start=kv_start, kv_end=kv_end,
                   kv_count=len(real), info_end=info_end, data_offset=int(reader.data_offset), size=size,
                   tensors=sorted(tensors, key=lambda t: t.data_offset))


def _kv(key: str, vtype: int, fmt: str, value: int) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + struct.pack(fmt, value)


def plan_shards(layout: GGUFLayout, kv_bytes: int, shard_size: int) -> list[ShardPlan]:
    def header_size(shard_index: int, tensors: list[TensorInfo]) -> int:
        kvs = (kv_bytes if shard_index == 0 else 0) + len(split_kvs(layout, 0, 1, shard_index))
        raw = 24 + kvs + sum(len(t.info) + 8 for t in tensors)
        return raw + pad_to(raw, layout.alignment)

    def data_size(tensors: list[TensorInfo]) -> int:
        total = 0
        for t in tensors:
            total += pad_to(total, layout.alignment) + t.n_bytes
        return total

    shards = [ShardPlan()]
    for tensor in layout.tensors:
        current = shards[-1]
        candidate = [*current.tensors, tensor]
        size = header_size(len(shards) - 1, candidate) + data_size(candidate)
        if current.tensors and size > shard_size:
            shards.append(ShardPlan(tensors=[tensor]))
            candidate = [tensor]
            size = header_size(len(shards) - 1, candidate) + data_size(candidate)
        else:
            current.tensors = candidate
        if size >= SHARD_LIMIT:
            raise UsageError(f"tensor {tensor.name!r} ({tensor.n_bytes} bytes) does not fit in a shard under 2 GiB",
                             hint="this model cannot be served as browser shards")
    return shards


def split_kvs(layout: GGUFLayout, no: int, count: int, shard_index: int) -> bytes:
    out = (_kv("split.no", _UINT16, "<H", no) + _kv("split.count", _UINT16, "<H", count)
           + _kv("split.tensors.count", _INT32, "<i", len(layout.tensors)))
    if shard_index > 0 and layout.custom_alignment:
        out += _kv("general.alignment", _UINT32, "<I", layout.alignment)
    return out


def build_headers(layout: GGUFLayout, kv_block: bytes, shards: list[ShardPlan]) -> None:
    count = len(shards)
    for index, shard in enumerate(shards):
        kvs = (kv_block if index == 0 else b"") + split_kvs(layout, index, count, index)
        n_kv = (layout.kv_count if index == 0 else 0) + (4 if index > 0 and layout.custom_alignment else 3)
        infos = b""
        rel = 0
        relative_offsets = []
        for t in shard.tensors:
            rel += pad_to(rel, layout.alignment)
            relative_offsets.append(rel)
            rel += t.n_bytes
        for t, off in zip(shard.tensors, relative_offsets, strict=True):
            infos += t.info + struct.pack("<Q", off)
        raw = b"GGUF" + struct.pack("<IQQ", layout.version, len(shard.tensors), n_kv) + kvs + infos
        shard.header = raw + b"\0" * pad_to(len(raw), layout.alignment)
        shard.data_positions = [len(shard.header) + off for off in relative_offsets]
        shard.size = len(shard.header) + rel

