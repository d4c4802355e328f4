"""GGUF byte layout for llama.cpp's split format: where each region of a file lies, how shards
are planned (tensors never cut, alignment kept) and what each shard's header holds."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from teadist.errors import UsageError

DEFAULT_SHARD_SIZE = 512_000_000  # wllama's recommendation
SHARD_LIMIT = 2**31  # no shard may reach 2 GiB (browsers, GitHub, ftell())
MAX_SHARDS = 2**16 - 1  # split.count is a u16 in llama.cpp's split format
MAX_SPLIT_TENSORS = 2**31 - 1  # split.tensors.count is an i32

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
    split_keys: list[str] = field(default_factory=list)  # split.* keys: the file is already a shard


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
    """Byte positions of every region of a GGUF, read with the bounded header reader (which refuses
    what llama.cpp refuses)."""
    from teadist.formats.gguf_header import read_header

    header = read_header(path, tensors=True)
    with open(path, "rb") as fh:
        fh.seek(header.kv_end)
        infos = fh.read(header.info_end - header.kv_end)  # the tensor-info table, once
    tensors = [TensorInfo(t.name, infos[t.info_start - header.kv_end:t.offset_at - header.kv_end],
                          header.data_offset + t.offset, t.n_bytes) for t in header.tensors]
    return GGUFLayout(version=header.version, alignment=header.alignment,
                      custom_alignment="general.alignment" in header.kv, kv_start=24, kv_end=header.kv_end,
                      kv_count=len(header.kv), info_end=header.info_end, data_offset=header.data_offset,
                      size=header.size, tensors=sorted(tensors, key=lambda t: t.data_offset),
                      split_keys=[k for k in header.kv if k.startswith("split.")])


def _kv(key: str, vtype: int, fmt: str, value: int) -> bytes:
    raw = key.encode()
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + struct.pack(fmt, value)


def plan_shards(layout: GGUFLayout, kv_bytes: int, shard_size: int) -> list[ShardPlan]:
    """Tensors in order into shards of at most ``shard_size`` bytes (one pass: sizes kept running)."""
    if len(layout.tensors) > MAX_SPLIT_TENSORS:
        raise UsageError(f"{len(layout.tensors)} tensors: llama.cpp's split format counts at most {MAX_SPLIT_TENSORS}")
    split_bytes = [len(split_kvs(layout, 0, 1, 0)), len(split_kvs(layout, 0, 1, 1))]

    def shard_bytes(index: int, infos: int, data: int) -> int:
        raw = 24 + (kv_bytes if index == 0 else 0) + split_bytes[min(index, 1)] + infos
        return raw + pad_to(raw, layout.alignment) + data

    shards = [ShardPlan()]
    infos = data = 0  # the current shard's tensor-info bytes and data bytes so far
    for tensor in layout.tensors:
        info = len(tensor.info) + 8
        grown = data + pad_to(data, layout.alignment) + tensor.n_bytes
        size = shard_bytes(len(shards) - 1, infos + info, grown)
        if shards[-1].tensors and size > shard_size:
            if len(shards) == MAX_SHARDS:
                raise UsageError(f"--shard-size {shard_size} would need more than {MAX_SHARDS} shards "
                                 "(llama.cpp's split format counts at most that many)",
                                 hint="choose a larger --shard-size")
            shards.append(ShardPlan())
            infos, grown = 0, tensor.n_bytes
            size = shard_bytes(len(shards) - 1, info, grown)
        shards[-1].tensors.append(tensor)
        infos, data = infos + info, grown
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
        parts: list[bytes] = []
        rel = 0
        relative_offsets = []
        for t in shard.tensors:
            rel += pad_to(rel, layout.alignment)
            relative_offsets.append(rel)
            rel += t.n_bytes
        for t, off in zip(shard.tensors, relative_offsets, strict=True):
            parts += (t.info, struct.pack("<Q", off))
        raw = b"GGUF" + struct.pack("<IQQ", layout.version, len(shard.tensors), n_kv) + kvs + b"".join(parts)
        shard.header = raw + b"\0" * pad_to(len(raw), layout.alignment)
        shard.data_positions = [len(shard.header) + off for off in relative_offsets]
        shard.size = len(shard.header) + rel

