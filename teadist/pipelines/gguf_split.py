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
from dataclasses import dataclass
from pathlib import Path

from teadist.base.fsutil import WriteSink, atomic_write, ensure_free_space
from teadist.base.hashing import BUFFER_SIZE, PipelinedCopier, Sink, TruncatedInput
from teadist.base.progress import Reporter
from teadist.errors import TeadistError, UsageError
from teadist.formats.gguf_layout import (
    DEFAULT_SHARD_SIZE,
    SHARD_LIMIT,
    build_headers,
    plan_shards,
    read_layout,
    shard_names,
)
from teadist.formats.gguf_recipe import COPY_BLOCK, MAX_LITERAL_BYTES, check_recipe, make_recipe, piece_length
from teadist.formats.manifest import ChunkRecord, FileRecord, Manifest, manifest_filename, write_manifest


# -- split --------------------------------------------------------------------------------------
@dataclass
class ShardResult:
    manifest: Manifest
    manifest_path: Path


def split_gguf(src: Path, out_dir: Path, reporter: Reporter, shard_size: int = DEFAULT_SHARD_SIZE,
               name: str | None = None, base_url: str | None = None) -> ShardResult:
    from urllib.parse import quote

    from teadist.base.hashing import hash_range
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
    from concurrent.futures import ThreadPoolExecutor

    from teadist.base.blocks import BLOCK_SIZE, BlockHasher

    original_blocks = BlockHasher(BLOCK_SIZE)
    hasher = ThreadPoolExecutor(max_workers=1)  # the original's sha256 and block map, on the other core meanwhile
    original_sha_future = hasher.submit(hash_range, src, extra_sinks=[original_blocks])
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
        records = []
        task = reporter.task(f"shard {file_name}", sum(s.size for s in shards))
        # Reads, the shard's hashes and the write overlap: one thread per sink, a bounded ring of buffers.
        try:
            with PipelinedCopier(n_sinks=3, buffer_size=min(COPY_BLOCK, BUFFER_SIZE)) as copier:
                for shard, shard_name in zip(shards, names, strict=True):
                    digest = hashlib.sha256()
                    blocks = BlockHasher(BLOCK_SIZE)
                    with atomic_write(out_dir / shard_name) as out:
                        sinks: list[Sink] = [digest.update, WriteSink(out), blocks]
                        copier.feed(shard.header, sinks)
                        task.advance(len(shard.header))
                        pos = len(shard.header)
                        for tensor, at in zip(shard.tensors, shard.data_positions, strict=True):
                            copier.feed(bytes(at - pos), sinks)
                            task.advance(at - pos)
                            copier.copy_file_range(original.fileno(), tensor.data_offset, tensor.n_bytes, sinks,
                                                   task.advance, drain=False)
                            pos = at + tensor.n_bytes
                        copier.flush()
                    url = (base_url.rstrip("/") + "/" + quote(shard_name),) if base_url else ()
                    records.append(ChunkRecord(shard_name, shard.size, digest.hexdigest(), None, url, blocks.finish()))
        except TruncatedInput:
            raise TeadistError(f"{src} shrank while it was being split; run split again") from None
        finally:
            task.close()
    original_sha = original_sha_future.result()[0]
    hasher.shutdown()
    manifest = Manifest(name=name or default_model_name(file_name),
                        file=FileRecord(file_name, layout.size, original_sha, original_blocks.finish()),
                        format="gguf", chunks=records,
                        rebuild={"method": "pieces-v1", "pieces": pieces}, model=describe_model(src, reporter))
    _prove_rebuild(manifest, out_dir, names)
    write_manifest(manifest, manifest_path)
    return ShardResult(manifest, manifest_path)


def _prove_rebuild(manifest: Manifest, folder: Path, names: list[str]) -> None:
    """Replay the recipe against the shards just written: every block it gives must hash to the
    original's block map (computed in the same pass as the original's sha256), so the shards
    rebuild the original exactly. Blocks are independent, so this runs on every core."""
    import bisect
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from teadist.base.hashing import READ_PIECE, usable_cores

    pieces = check_recipe(manifest)
    original = manifest.file.blocks
    size = manifest.file.size
    assert original is not None and size is not None
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += piece_length(piece)
    if pos != size:
        raise TeadistError(f"{manifest.file.name}: the rebuild recipe gives {pos} bytes, not {size}")
    literals = {i: base64.b64decode(p["literal"]) for i, p in enumerate(pieces) if "literal" in p}
    zeros = memoryview(bytes(READ_PIECE))
    local = threading.local()
    fds = [os.open(folder / name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)) for name in names]

    def block(index: int) -> str:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(READ_PIECE))
        start, end = original.span(index, size)
        digest = hashlib.sha256()
        k = bisect.bisect_right(starts, start) - 1
        at = start
        while at < end:
            piece, lo = pieces[k], at - starts[k]
            n = min(end, starts[k] + piece_length(piece)) - at
            if "shard" in piece:
                done = 0
                while done < n:
                    got = os.preadv(fds[int(piece["shard"])], [buf[:min(len(buf), n - done)]],
                                    int(piece["offset"]) + lo + done)
                    if not got:
                        raise TeadistError(f"{manifest.file.name}: shard {int(piece['shard']) + 1} ended early")
                    digest.update(buf[:got])
                    done += got
            elif "zeros" in piece:
                for part in range(0, n, len(zeros)):
                    digest.update(zeros[:min(len(zeros), n - part)])
            else:
                digest.update(literals[k][lo:lo + n])
            at += n
            k += 1
        return digest.hexdigest()

    try:
        with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
            rebuilt = list(pool.map(block, range(len(original.hashes))))
    finally:
        for fd in fds:
            os.close(fd)
    if tuple(rebuilt) != original.hashes:
        raise TeadistError(f"{manifest.file.name}: the shards would not rebuild the original exactly; refusing "
                           "to write a manifest that cannot vouch for it")
