"""Write GGUF files byte by byte, including ones no honest writer would produce (for the header
checks): any key/value, any tensor offset, any count."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
F32_TYPE = 0


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return gstr(key) + struct.pack("<II", U32, value)


def kv_str(key: str, value: str) -> bytes:
    return gstr(key) + struct.pack("<I", STRING) + gstr(value)


def kv_string_array(key: str, count: int, item: bytes = b"") -> bytes:
    """An array of ``count`` equal strings (``item``), 8 + len(item) bytes each."""
    return gstr(key) + struct.pack("<IIQ", ARRAY, STRING, count) + gstr(item) * count


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]
    offset: int  # relative to the data section
    ggml_type: int = F32_TYPE


@dataclass
class Crafted:
    kvs: list[bytes] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    data: bytes = b""
    alignment: int = 32
    n_tensors: int | None = None  # lie about the count
    n_kv: int | None = None

    def header(self) -> bytes:
        out = b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors) if self.n_tensors is None else self.n_tensors,
                                    len(self.kvs) if self.n_kv is None else self.n_kv)
        parts = [out, *self.kvs]
        for t in self.tensors:
            parts += (gstr(t.name), struct.pack("<I", len(t.dims)), *(struct.pack("<q", d) for d in t.dims),
                      struct.pack("<IQ", t.ggml_type, t.offset))
        out = b"".join(parts)
        return out + b"\0" * (-len(out) % self.alignment)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.header() + self.data)
        return path


def good_two_tensors() -> Crafted:
    """A small valid GGUF: two f32 tensors of 8 elements, laid out as llama.cpp expects."""
    return Crafted(kvs=[kv_str("general.architecture", "llama")],
                   tensors=[Tensor("a", (8,), 0), Tensor("b", (8,), 32)], data=bytes(range(64)))
