"""Lossless GGUF shards: llama.cpp loads them as they are, and they rebuild the exact original.

``split_gguf`` writes ``<stem>-00001-of-0000N.gguf`` in llama.cpp's split format (``split.no``,
``split.count``, ``split.tensors.count``; all metadata and the tokenizer in shard 1; tensors never
cut; the file's alignment kept). Every byte of the original that a shard holds verbatim — the
metadata block, each tensor's data — is written so that it can be found again, and the manifest's
``rebuild`` lists the original as pieces in order: a range of a shard, a run of zeros, or a small
literal (the 24-byte preamble, the tensor-info table with its original offsets, any non-zero
padding). The recipe drives the one pass that reads the original, hashes it and writes the
shards: each tensor piece must be where the shard plan put that tensor, every other piece must
equal the original's bytes as read, so a file that would not rebuild exactly is noticed at split
time, never later — without reading the shards back.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teadist.base.blocks import BLOCK_SIZE, BlockHasher, BlockMap
from teadist.base.fsutil import WriteSink, atomic_write, ensure_free_space
from teadist.base.hashing import BUFFER_SIZE, PipelinedCopier, Sink, TruncatedInput
from teadist.base.progress import Reporter
from teadist.errors import TeadistError, UsageError
from teadist.formats.gguf_layout import (
    DEFAULT_SHARD_SIZE,
    SHARD_LIMIT,
    ShardPlan,
    build_headers,
    plan_shards,
    read_layout,
    shard_names,
)
from teadist.formats.gguf_recipe import COPY_BLOCK, MAX_LITERAL_BYTES, Piece, make_recipe, piece_length
from teadist.formats.manifest import ChunkRecord, FileRecord, Manifest, manifest_filename, write_manifest


# -- split --------------------------------------------------------------------------------------
@dataclass
class ShardResult:
    manifest: Manifest
    manifest_path: Path


def split_gguf(src: Path, out_dir: Path, reporter: Reporter, shard_size: int = DEFAULT_SHARD_SIZE,
               name: str | None = None, base_url: str | None = None) -> ShardResult:
    from teadist.pipelines.split import default_model_name, describe_model

    if shard_size <= 0 or shard_size >= SHARD_LIMIT:
        raise UsageError(f"shard size {shard_size} must be positive and below 2 GiB")
    from teadist.pipelines.split import ensure_out_dir, require_input_file, usable_input_name

    require_input_file(src)
    file_name = usable_input_name(src)
    if not file_name.endswith(".gguf"):
        raise UsageError(f"{file_name}: --format gguf needs a .gguf file")
    from teadist.formats.gguf_header import read_header

    header = read_header(src)  # bounded: no per-tensor objects yet
    if header.info_end - header.kv_end > MAX_LITERAL_BYTES:  # the tensor-info table goes into the recipe
        raise UsageError(f"{file_name}: its tensor-info table ({header.info_end - header.kv_end} bytes) would have "
                         f"to be stored in the manifest (at most {MAX_LITERAL_BYTES})")
    layout = read_layout(src)
    if layout.split_keys:
        raise UsageError(f"{file_name} is already a shard ({', '.join(layout.split_keys)}); splitting it again would "
                         "write those keys twice", hint="assemble the shards first, then split the whole model")
    with open(src, "rb") as fh:
        fh.seek(layout.kv_start)
        kv_block = fh.read(layout.kv_end - layout.kv_start)
    shards = plan_shards(layout, len(kv_block), shard_size)
    build_headers(layout, kv_block, shards)
    oversize = sum(1 for s in shards if s.size > shard_size)
    if oversize:  # tensors are never cut (llama.cpp's rule): one larger than the size gets a shard of its own
        reporter.warn(f"{oversize} of {len(shards)} shards are larger than --shard-size {shard_size}: "
                      "they hold a tensor (or the metadata) that is larger on its own")
    names = shard_names(file_name.removesuffix(".gguf"), len(shards))
    usable_input_name(src, longest=names[-1])
    ensure_out_dir(out_dir)
    manifest_path = out_dir / manifest_filename(file_name)
    manifest_path.unlink(missing_ok=True)
    ensure_free_space(out_dir, sum(s.size for s in shards), "the shards")
    with open(src, "rb", buffering=0) as original:
        pieces = make_recipe(layout, original, shards)
        literal_bytes = sum(piece_length(p) for p in pieces if "literal" in p)
        if literal_bytes > MAX_LITERAL_BYTES:
            raise UsageError(f"{file_name}: {literal_bytes} bytes would have to be stored in the manifest")
        task = reporter.task(f"shard {file_name}", sum(s.size for s in shards))
        try:
            whole, original_blocks, records = _write_shards(original.fileno(), layout.size, pieces, shards, names,
                                                            out_dir, base_url, task.advance)
        except TruncatedInput:
            raise TeadistError(f"{src} shrank while it was being split; run split again") from None
        finally:
            task.close()
        if os.fstat(original.fileno()).st_size != layout.size:
            raise TeadistError(f"{src} changed size while it was being split; run split again")
    manifest = Manifest(name=name or default_model_name(file_name),
                        file=FileRecord(file_name, layout.size, whole, original_blocks),
                        format="gguf", chunks=records,
                        rebuild={"method": "pieces-v1", "pieces": pieces}, model=describe_model(src, reporter))
    write_manifest(manifest, manifest_path)
    return ShardResult(manifest, manifest_path)


@dataclass(frozen=True)
class _Step:
    """One recipe piece at ``start`` in the original: bytes the original holds verbatim (``expected``:
    a literal, zeros, a slice of a shard's header) or a tensor's data copied to ``offset`` of ``shard``."""

    start: int
    length: int
    shard: int = -1
    offset: int = 0
    expected: bytes | None = None  # None with shard -1: zeros


def _steps(pieces: list[Piece], shards: list[ShardPlan], size: int) -> list[_Step]:
    """The recipe checked against the shard plan, piece by piece: every tensor piece is a tensor the
    plan puts at exactly that place of that shard (each once), every other piece names bytes known
    here (checked against the original as the pass reads them). So the pass that hashes the original
    and writes the shards proves, without another read, that the shards rebuild the original."""
    placed = [{at: t for t, at in zip(s.tensors, s.data_positions, strict=True) if t.n_bytes} for s in shards]
    steps: list[_Step] = []
    pos, shard_now, cursor = 0, 0, 0
    for piece in pieces:
        n = piece_length(piece)
        if "zeros" in piece:
            steps.append(_Step(pos, n))
        elif "literal" in piece:
            steps.append(_Step(pos, n, expected=base64.b64decode(piece["literal"])))
        else:
            k, off = int(piece["shard"]), int(piece["offset"])
            header = shards[k].header
            if off + n <= len(header):
                steps.append(_Step(pos, n, expected=header[off:off + n]))
            else:
                tensor = placed[k].pop(off, None)
                if tensor is None or tensor.data_offset != pos or tensor.n_bytes != n or (k, off) < (shard_now, cursor):
                    raise _unprovable()
                steps.append(_Step(pos, n, shard=k, offset=off))
                shard_now, cursor = k, off + n
        pos += n
    if pos != size or any(placed):
        raise _unprovable()
    return steps


def _unprovable() -> TeadistError:
    return TeadistError("the shards would not rebuild the original exactly; refusing to write a manifest that "
                        "cannot vouch for it")


def _write_shards(fd: int, size: int, pieces: list[Piece], shards: list[ShardPlan], names: list[str],
                  out_dir: Path, base_url: str | None,
                  advance: Callable[[int], None]) -> tuple[str, BlockMap, list[ChunkRecord]]:
    """Write every shard and hash everything in one pass over the original, each byte read once.

    The recipe drives the pass: it walks the original in order, so the original's sha256 and block
    map take every byte read, and each tensor's bytes, read once into the copier's ring of buffers,
    also go to their shard's sha256, block map and file — five sinks, each on its own thread, the
    reads overlapping them. Bytes the recipe gives itself (the preamble, the tensor-info table,
    padding, the metadata held in shard 1's header) must equal the original's as read: a recipe that
    would not rebuild the original fails here, before any manifest is written."""
    from urllib.parse import quote

    whole = hashlib.sha256()
    whole_blocks = BlockHasher(BLOCK_SIZE)
    steps = _steps(pieces, shards, size)
    records: list[ChunkRecord] = []
    model_only: list[Sink | None] = [whole.update, whole_blocks, None, None, None]
    at = 0

    def original_bytes(step: _Step) -> None:
        data = os.pread(fd, step.length, step.start)
        if len(data) < step.length:
            raise TruncatedInput(step.start + len(data))
        same = data == step.expected if step.expected is not None else data.count(0) == len(data)
        if not same:
            raise _unprovable()
        copier.feed(data, model_only)

    with PipelinedCopier(n_sinks=5, buffer_size=min(COPY_BLOCK, BUFFER_SIZE)) as copier:
        for k, (shard, shard_name) in enumerate(zip(shards, names, strict=True)):
            digest = hashlib.sha256()
            blocks = BlockHasher(BLOCK_SIZE)
            with atomic_write(out_dir / shard_name) as out:
                shard_only: list[Sink | None] = [None, None, digest.update, blocks, WriteSink(out)]
                both: list[Sink | None] = [whole.update, whole_blocks, digest.update, blocks, shard_only[4]]
                copier.feed(shard.header, shard_only)
                advance(len(shard.header))
                cursor = len(shard.header)
                while at < len(steps) and steps[at].shard in (-1, k):
                    step = steps[at]
                    at += 1
                    if step.shard < 0:
                        original_bytes(step)
                        continue
                    copier.feed(bytes(step.offset - cursor), shard_only)
                    advance(step.offset - cursor)
                    copier.copy_file_range(fd, step.start, step.length, both, advance, drain=False)
                    cursor = step.offset + step.length
                copier.feed(bytes(shard.size - cursor), shard_only)
                advance(shard.size - cursor)
                copier.flush()
            url = (base_url.rstrip("/") + "/" + quote(shard_name),) if base_url else ()
            records.append(ChunkRecord(shard_name, shard.size, digest.hexdigest(), None, url, blocks.finish()))
        for step in steps[at:]:
            original_bytes(step)
        copier.flush()
    return whole.hexdigest(), whole_blocks.finish(), records
