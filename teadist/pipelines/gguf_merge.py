"""Merge llama.cpp shards that came without a teadist manifest into one GGUF (a merge, not a copy)."""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

from teadist.base.fsutil import ensure_free_space
from teadist.base.progress import Reporter
from teadist.cache.layout import Target
from teadist.cache.store import ModelCache
from teadist.errors import IntegrityError, UsageError
from teadist.formats.gguf_layout import pad_to

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def is_shard_name(name: str) -> bool:
    return _SHARD_NAME.match(name) is not None


def merge_foreign_shards(first: Path, target: Target, reporter: Reporter,
                         cache: ModelCache | None = None) -> tuple[str, int]:
    """Merge shards that came without a teadist manifest (``llama-gguf-split``, gguf-py) into one GGUF.

    Without a rebuild recipe the original's exact bytes are unknown: the result is a *merge* —
    the same metadata (minus ``split.*``) and the same tensors, in shard order — whose sha256
    need not match any published one. Written under ``target``'s lock. Returns (sha256, size).

    Nothing vouches for a merge, so it is never recorded as verified: when it lands in ``cache``
    over a recorded file, that file's record goes (before the file is replaced)."""
    with target.lock(on_wait=reporter.info):
        return _merge_locked(first, target, reporter, cache)


def _merge_locked(first: Path, target: Target, reporter: Reporter,
                  cache: ModelCache | None) -> tuple[str, int]:
    from teadist.base.fsutil import commit_fd, remove_quietly
    from teadist.formats.gguf_header import GGUFHeader, read_header
    from teadist.formats.gguf_recipe import COPY_BLOCK

    match = _SHARD_NAME.match(first.name)
    if match is None or int(match.group("no")) != 1:
        raise UsageError(f"{first.name} is not the first shard of a split GGUF (<name>-00001-of-0000N.gguf)")
    count = int(match.group("count"))
    paths = [first.parent / f"{match.group('prefix')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    for path in paths:
        if not path.is_file():
            raise IntegrityError(f"shard {path.name} is missing")
    headers: list[GGUFHeader] = [read_header(p, tensors=True) for p in paths]  # llama.cpp's checks on each
    for index, header in enumerate(headers):
        if header.value("split.no") != index or header.value("split.count") != count:
            raise IntegrityError(f"{paths[index].name}: split.no/split.count do not say shard {index + 1} of {count}")
    head = headers[0]
    alignment = head.alignment
    kept = [kv for kv in head.kv.values() if not kv.key.startswith("split.")]
    tensors = [(path, header, t) for path, header in zip(paths, headers, strict=True) for t in header.tensors]
    expected = head.value("split.tensors.count")
    if type(expected) is int and expected != len(tensors):
        raise IntegrityError(f"the shards hold {len(tensors)} tensors, split.tensors.count says {expected}")
    if len({t.name for _, _, t in tensors}) != len(tensors):
        raise IntegrityError("the shards hold a tensor name twice")
    with open(first, "rb") as fh:
        kv = b"".join(_span(fh, k.start, k.end) for k in kept)
    infos: list[bytes] = []
    rel = 0
    offsets = []
    for path, _, t in tensors:
        rel += pad_to(rel, alignment)
        offsets.append(rel)
        with open(path, "rb") as fh:
            infos.append(_span(fh, t.info_start, t.offset_at) + struct.pack("<Q", rel))
        rel += t.n_bytes
    version = head.version
    header_bytes = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kept)) + kv + b"".join(infos)
    header_bytes += b"\0" * pad_to(len(header_bytes), alignment)
    dest = target.final
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(dest.parent, len(header_bytes) + rel, dest.name)
    fd, tmp = target.files.new_temp()
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            def emit(data: bytes) -> None:
                out.write(data)
                digest.update(data)

            emit(header_bytes)
            pos = 0
            for (path, header, t), off in zip(tensors, offsets, strict=True):
                emit(bytes(off - pos))
                with open(path, "rb") as fh:  # streamed in fixed blocks, never a whole tensor in memory
                    fh.seek(header.data_offset + t.offset)
                    left = t.n_bytes
                    while left:
                        block = fh.read(min(COPY_BLOCK, left))
                        if not block:
                            raise IntegrityError(f"{path.name} ended inside tensor {t.name!r}")
                        emit(block)
                        left -= len(block)
                pos = off + t.n_bytes
            out.flush()
            if cache is not None and cache.contains(dest):
                remove_quietly(cache.target(dest.name).record)  # it vouched for the file replaced now
            commit_fd(out.fileno(), tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise
    reporter.warn(f"{dest.name}: merged, not verified against a source hash — {count} shards without a "
                  "teadist manifest; this is a merge (same metadata and tensors), not a copy of any "
                  "original file")
    return digest.hexdigest(), len(header_bytes) + rel


def _span(fh: BinaryIO, start: int, end: int) -> bytes:
    fh.seek(start)
    data = fh.read(end - start)
    if len(data) != end - start:
        raise IntegrityError(f"{getattr(fh, 'name', 'a shard')} changed while it was being merged")
    return data
