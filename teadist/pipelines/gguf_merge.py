"""Merge llama.cpp shards that came without a teadist manifest into one GGUF (a merge, not a copy)."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import Any

from teadist.base.fsutil import ensure_free_space
from teadist.base.progress import Reporter
from teadist.errors import IntegrityError, UsageError
from teadist.formats.gguf_layout import pad_to

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def is_shard_name(name: str) -> bool:
    return _SHARD_NAME.match(name) is not None


def merge_foreign_shards(first: Path, dest: Path, reporter: Reporter) -> tuple[str, int]:
    """Merge shards that came without a teadist manifest (``llama-gguf-split``, gguf-py) into one GGUF.

    Without a rebuild recipe the original's exact bytes are unknown: the result is a *merge* —
    the same metadata (minus ``split.*``) and the same tensors, in shard order — whose sha256
    need not match any published one. Returns (sha256, size)."""
    from teadist.base.fsutil import commit_file, remove_quietly, temp_path_for
    from teadist.formats.gguf_info import field_value, open_reader

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
        rel += pad_to(rel, alignment)
        offsets.append(rel)
        info_len = sum(int(p.nbytes) for p in t.field.parts) - 8
        infos += bytes(reader.data[t.field.offset:t.field.offset + info_len]) + struct.pack("<Q", rel)
        rel += int(t.n_bytes)
    version = int(head.fields["GGUF.version"].parts[0][0])
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv + infos
    header += b"\0" * pad_to(len(header), alignment)
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
