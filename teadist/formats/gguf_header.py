"""A bounded GGUF header reader that refuses what llama.cpp's loader refuses.

Every count in a header is checked against the bytes that remain before anything is read for it,
so memory and time are bounded by what the file can hold (a 2 MB file cannot make us build a
quarter million objects, a 30 MB one cannot take minutes). Values are decoded only when asked
for; arrays are walked, never materialised. The rules are llama.cpp's (``ggml/src/gguf.cpp`` and
the model loader, llama-cpp-python 0.3.36): magic and version 2 or 3; string lengths and array
sizes within the file (and at most 2**30); no arrays of arrays, no unknown types, no empty or
duplicate keys; ``general.alignment`` a u32 power of two; tensor names shorter than 64 bytes and
unique; at most 4 dimensions, none negative, their product representable; a known tensor type
whose block divides the row; every tensor's offset exactly where the previous one ends (padded to
the alignment) — so tensors cannot overlap, leave gaps, be misaligned or wrap past 2**64 — and
every tensor's data inside the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teadist.errors import IntegrityError, NotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_STRING = 1024**3  # GGUF_MAX_STRING_LENGTH
MAX_ARRAY = 1024**3  # GGUF_MAX_ARRAY_ELEMENTS
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name must be shorter
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
           I64: "<q", F64: "<d"}
_SCALAR_SIZE = {t: struct.calcsize(f) for t, f in _SCALAR.items()}

# ggml types llama.cpp (0.3.36) can load: id -> (name, block size, bytes per block). Ids it has
# removed (4, 5, 31-33, 36-38) have block size 0 there and are refused, as are unknown ids. The
# sizes are ggml's (ggml-common.h): they equal gguf-py's GGML_QUANT_SIZES except Q8_1, whose block
# is two halves and 32 quants (36 bytes) — gguf-py 0.19 still has the old float layout (40).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}
# llama.cpp's llama_ftype (general.file_type) names.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0", 1024: "GUESSED",
}
_MIN_KV = 8 + 1 + 4 + 1  # key length, a 1-byte key, type, the smallest value
_MIN_TENSOR = 8 + 4 + 4 + 8  # name length (empty name), n_dims 0, type, offset


class InvalidGGUFError(IntegrityError):
    """The file is not a GGUF llama.cpp would load (bad magic, version, header or tensor layout)."""


MAX_DECODED_STRING = 4 * 1024 * 1024  # longer string values are checked but not kept
MAX_NAME_BYTES = 64 * 1024  # a key is a name: longer ones are refused from their length field
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class KeyValue:
    key: str
    type: int  # the value's type; ARRAY for arrays
    start: int  # where the key's length field starts
    end: int  # where the value ends
    value: Any = None  # scalars and strings decoded; a numeric array's first item; else None
    item_type: int | None = None
    count: int | None = None  # arrays: number of items


@dataclass
class TensorEntry:
    name: str
    info_start: int  # the tensor-info record: name .. type, then the u64 offset at ``offset_at``
    offset_at: int
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section
    n_bytes: int
    n_elements: int


@dataclass
class GGUFHeader:
    path: Path
    size: int
    version: int
    n_tensors: int
    kv: dict[str, KeyValue]
    kv_end: int
    info_end: int
    alignment: int
    data_offset: int
    parameters: int = 0
    elements_by_type: dict[int, int] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)  # only when read with ``tensors=True``

    def value(self, key: str) -> Any:
        """A scalar or string value; for a numeric array, its first item; None when absent."""
        kv = self.kv.get(key)
        return None if kv is None else kv.value


class _Reader:
    """Positions in a read-only mapping, every read checked against the bytes that remain."""

    def __init__(self, view: Any, size: int, path: Path) -> None:
        self.view, self.size, self.path, self.pos = view, size, path, 0

    def fail(self, message: str) -> InvalidGGUFError:
        return InvalidGGUFError(f"{self.path}: {message}"[:400])

    def remain(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.remain():
            raise self.fail(f"{what} needs {n} bytes, only {self.remain()} remain: truncated or corrupt header")

    def scalar(self, vtype: int, what: str) -> Any:
        self.need(_SCALAR_SIZE[vtype], what)
        (value,) = struct.unpack_from(_SCALAR[vtype], self.view, self.pos)
        self.pos += _SCALAR_SIZE[vtype]
        return value

    def string(self, what: str, keep: bool = True) -> bytes:
        length = self.scalar(U64, what)
        if length > MAX_STRING:
            raise self.fail(f"{what}: a string of {length} bytes (llama.cpp's limit is {MAX_STRING})")
        self.need(length, what)
        data = bytes(self.view[self.pos:self.pos + length]) if keep else b""
        self.pos += length
        return data

    def value(self, vtype: int, what: str) -> tuple[Any, int | None, int | None]:
        """Read (scalars, short strings) or step over a value: (value, array item type, array count)."""
        if vtype in _SCALAR:
            return self.scalar(vtype, what), None, None
        if vtype == STRING:
            length = self.peek_length(what)
            data = self.string(what, keep=length <= MAX_DECODED_STRING)
            return (data.decode("utf-8", "replace") if length <= MAX_DECODED_STRING else None), None, None
        if vtype != ARRAY:
            raise self.fail(f"{what} has the unknown value type {vtype}")
        item = self.scalar(U32, what)
        count = self.scalar(U64, what)
        if count > MAX_ARRAY:
            raise self.fail(f"{what}: an array of {count} items (llama.cpp's limit is {MAX_ARRAY})")
        first = None
        if item in _SCALAR:
            self.need(count * _SCALAR_SIZE[item], what)
            if count:
                (first,) = struct.unpack_from(_SCALAR[item], self.view, self.pos)
            self.pos += count * _SCALAR_SIZE[item]
        elif item == STRING:
            self.need(count * 8, what)  # each string has at least its 8-byte length
            for _ in range(count):
                self.string(what, keep=False)
        else:
            raise self.fail(f"{what}: an array of type {item} (arrays of arrays or unknown types are refused)")
        return first, item, count

    def name(self, what: str) -> str:
        """A key or tensor name: UTF-8 text without NUL or control characters (it is printed, put
        in JSON and handed to C code as a C string). Refused from its length, before it is read."""
        if (length := self.peek_length(what)) > MAX_NAME_BYTES:
            raise self.fail(f"{what} is {length} bytes long (a name takes at most {MAX_NAME_BYTES})")
        raw = self.string(what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8 ({raw[:40]!r})") from None
        if _CONTROL.search(text):
            raise self.fail(f"{what} contains NUL or a control character ({raw[:40]!r})")
        return text

    def peek_length(self, what: str) -> int:
        self.need(8, what)
        return int(struct.unpack_from("<Q", self.view, self.pos)[0])


def _pad(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def read_header(path: Path, tensors: bool = False) -> GGUFHeader:
    """Read and check a GGUF header; keep the tensor list only when ``tensors`` (for sharding)."""
    try:  # O_NONBLOCK: a FIFO given for a model is refused at once, never waited on
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise NotFoundError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise NotFoundError(f"{path} is a folder, not a GGUF file") from None
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EACCES, errno.EPERM, errno.ELOOP):
            raise InvalidGGUFError(f"{path}: cannot be read as a file ({exc.strerror})") from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotFoundError(f"{path} is a folder, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidGGUFError(f"{path}: not a regular file (a FIFO, socket or device is not a model)")
        size = st.st_size
        if size < 4:
            raise InvalidGGUFError(f"{path}: not a GGUF file ({size} bytes)")
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapping:
            view = memoryview(mapping)
            try:
                return _parse(_Reader(view, size, path), tensors)
            finally:
                view.release()
    finally:
        os.close(fd)


def _parse(r: _Reader, keep_tensors: bool) -> GGUFHeader:
    if bytes(r.view[:4]) != GGUF_MAGIC:
        raise r.fail(f"not a GGUF file (bad magic {bytes(r.view[:4])!r})")
    r.pos = 4
    version = r.scalar(U32, "the version")
    if version & 0xFFFF == 0 and version:
        raise r.fail(f"version {version:#x}: a big-endian GGUF (not supported)")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors = r.scalar(I64, "the tensor count")
    n_kv = r.scalar(I64, "the key count")
    if not 0 <= n_kv <= r.remain() // _MIN_KV:
        raise r.fail(f"claims {n_kv} keys; the file has room for at most {r.remain() // _MIN_KV}")
    kv: dict[str, KeyValue] = {}
    raw_keys: set[bytes] = set()
    for i in range(n_kv):
        start = r.pos
        key = r.name(f"key {i}")
        raw_key = key.encode("utf-8")
        if not raw_key:
            raise r.fail(f"key {i} is empty")
        if raw_key in raw_keys or key in kv:
            raise r.fail(f"duplicate key {key[:60]!r}")
        raw_keys.add(raw_key)
        vtype = r.scalar(U32, f"key {key[:60]!r}")
        value, item, count = r.value(vtype, f"key {key[:60]!r}")
        kv[key] = KeyValue(key, vtype, start, r.pos, value, item, count)
    kv_end = r.pos
    header = GGUFHeader(r.path, r.size, version, n_tensors, kv, kv_end, kv_end, DEFAULT_ALIGNMENT, kv_end)
    alignment = kv.get("general.alignment")
    if alignment is not None:
        if alignment.type != U32:
            raise r.fail("general.alignment is not a u32")
        header.alignment = header.value("general.alignment")
        if header.alignment == 0 or header.alignment & (header.alignment - 1):
            raise r.fail(f"alignment {header.alignment} is not a power of 2")
    if not 0 <= n_tensors <= r.remain() // _MIN_TENSOR:
        raise r.fail(f"claims {n_tensors} tensors; the file has room for at most {r.remain() // _MIN_TENSOR}")
    names: set[bytes] = set()
    expected = last_end = 0  # where the next tensor's data must start, relative to the data section
    entries = []
    for i in range(n_tensors):
        info_start = r.pos
        name = r.name(f"the name of tensor {i}").encode("utf-8")
        if len(name) >= MAX_NAME:
            raise r.fail(f"tensor {i}'s name is {len(name)} bytes (llama.cpp allows fewer than {MAX_NAME})")
        if name in names:
            raise r.fail(f"duplicate tensor name {name[:60]!r}")
        names.add(name)
        label = f"tensor {name.decode('utf-8', 'replace')!r}"
        n_dims = r.scalar(U32, label)
        if n_dims > MAX_DIMS:
            raise r.fail(f"{label} has {n_dims} dimensions (llama.cpp allows {MAX_DIMS})")
        dims = tuple(r.scalar(I64, label) for _ in range(n_dims))
        if any(d < 0 for d in dims):
            raise r.fail(f"{label} has a negative dimension {dims}")
        elements = 1
        for d in dims:
            elements *= d
        if elements > INT64_MAX:
            raise r.fail(f"{label}: shape {dims} overflows")
        ggml_type = r.scalar(I32, label)
        known = GGML_TYPES.get(ggml_type)
        if known is None:
            raise r.fail(f"{label} has the unknown or removed ggml type {ggml_type}")
        _, block, type_size = known
        if (dims[0] if dims else 1) % block:
            raise r.fail(f"{label}: rows of {dims[0] if dims else 1} elements are not a multiple of the "
                         f"{known[0]} block ({block})")
        n_bytes = elements // block * type_size
        offset_at = r.pos
        offset = r.scalar(U64, label)
        if offset != expected:
            raise r.fail(f"{label} has data offset {offset}, llama.cpp expects {expected} (tensors must follow "
                         "each other in order, aligned, without overlap or gaps)")
        expected = _pad(offset + n_bytes, header.alignment)
        if expected > UINT64_MAX:
            raise r.fail(f"{label}: the data section would pass 2**64 bytes")
        header.parameters += elements
        header.elements_by_type[ggml_type] = header.elements_by_type.get(ggml_type, 0) + elements
        if keep_tensors:
            entries.append(TensorEntry(name.decode("utf-8", "replace"), info_start, offset_at, dims, ggml_type,
                                       offset, n_bytes, elements))
        last_end = offset + n_bytes
        if n_bytes and last_end > r.size:  # cheap early exit; the exact check follows with the data offset
            raise r.fail(f"{label} ends at byte {last_end} of the data section, past the end of the file "
                         f"({r.size} bytes): truncated download?")
    header.info_end = r.pos
    header.data_offset = _pad(r.pos, header.alignment) if n_tensors else r.pos
    if header.data_offset > r.size:
        raise r.fail("the data section starts past the end of the file: truncated download?")
    header.tensors = entries
    # every tensor's data inside the file (llama.cpp's model loader); the last one ends the furthest
    if n_tensors and header.data_offset + last_end > r.size:
        raise r.fail(f"tensor data ends at byte {header.data_offset + last_end}, past the end of the file "
                     f"({r.size} bytes): truncated download?")
    return header
