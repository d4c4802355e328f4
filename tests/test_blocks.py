"""Block maps: the hasher, parallel block checks, manifest 1.1, and reading without mmap."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teadist.base.blocks import BlockHasher, BlockMap, damaged_ranges, describe_ranges
from teadist.base.hashing import bad_blocks, hash_blocks, hash_blocks_fd, usable_cores
from teadist.base.progress import NullReporter
from teadist.errors import ManifestError
from teadist.formats.manifest import load_manifest, parse_manifest
from teadist.pipelines.split import split_file
from tests.helpers import Result, write_random

BS = 64 * 1024


def _blocks_of(data: bytes, bs: int) -> list[str]:
    return [hashlib.sha256(data[i:i + bs]).hexdigest() for i in range(0, len(data), bs)]


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 5 * BS + 17])
def test_block_hasher_matches_hashing_each_block_whatever_the_pieces(size: int) -> None:
    data = os.urandom(size)
    for piece in (1000, BS, 3 * BS + 5):
        hasher = BlockHasher(BS)
        for i in range(0, len(data), piece):
            hasher(memoryview(data[i:i + piece]))
        assert hasher.finish() == BlockMap(BS, tuple(_blocks_of(data, BS)))
        assert hasher.finish().problem(size) is None


def test_block_hasher_resumes_after_known_blocks_and_reports_its_tail() -> None:
    data = os.urandom(3 * BS + 100)
    known = _blocks_of(data, BS)[:2]
    hasher = BlockHasher(BS, known)
    hasher(data[2 * BS:3 * BS + 50])
    assert hasher.tail() == (50, hashlib.sha256(data[3 * BS:3 * BS + 50]).hexdigest())
    hasher(data[3 * BS + 50:])
    assert list(hasher.finish().hashes) == _blocks_of(data, BS)


def test_parallel_block_check_names_each_damaged_block(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytearray(os.urandom(10 * BS + 3))
    expected = _blocks_of(bytes(data), BS)
    for offset in (5, 3 * BS, 4 * BS - 1, 10 * BS + 2):
        data[offset] ^= 1
    path.write_bytes(bytes(data))
    bad = bad_blocks(path, BS, expected, len(data), threads=4)
    assert bad == [0, 3, 10]
    assert damaged_ranges(bad, BS, len(data)) == [(0, BS), (3 * BS, 4 * BS), (10 * BS, 10 * BS + 3)]
    assert describe_ranges(damaged_ranges([1, 2, 4], BS, len(data))) == \
        f"bytes {BS}-{3 * BS - 1}, {4 * BS}-{5 * BS - 1}"
    assert hash_blocks(path, BS, [1], len(data)) == [expected[1]]
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_copier_feeds_two_streams_that_share_some_reads(tmp_path: Path) -> None:
    """A ``None`` sink leaves its position out of that call: the original's digest and a shard's take
    the bytes they share from one read, each stream the rest alone, each in its own order."""
    from teadist.base.hashing import PipelinedCopier

    src = tmp_path / "src.bin"
    data = os.urandom(5 * 65536 + 123)
    src.write_bytes(data)
    original, shard = hashlib.sha256(), hashlib.sha256()
    fd = os.open(src, os.O_RDONLY)
    try:
        with PipelinedCopier(n_sinks=2, buffer_size=65536, depth=3) as copier:
            copier.feed(b"shard header", [None, shard.update])
            copier.copy_file_range(fd, 0, 1000, [original.update, None], drain=False)
            copier.copy_file_range(fd, 1000, len(data) - 1000, [original.update, shard.update], drain=False)
            copier.feed(b"pad", [None, shard.update])
            copier.flush()
    finally:
        os.close(fd)
    assert original.hexdigest() == hashlib.sha256(data).hexdigest()
    assert shard.hexdigest() == hashlib.sha256(b"shard header" + data[1000:] + b"pad").hexdigest()


def test_a_file_truncated_while_it_is_read_is_a_short_read_not_a_crash(tmp_path: Path) -> None:
    """A file mapped with mmap and truncated meanwhile kills the process with SIGBUS on the next
    access; reads into private buffers see a short file instead."""
    path = tmp_path / "victim"
    path.write_bytes(os.urandom(4 * 1024 * 1024))
    code = f"""
import os, sys
from teadist.base.hashing import PipelinedCopier, TruncatedInput
path = {str(path)!r}
fd = os.open(path, os.O_RDONLY)
state = {{"cut": False}}
def cut(view):
    if not state["cut"]:
        state["cut"] = True
        os.truncate(path, 0)  # someone else truncates the file while it is being read
    bytes(view[-1:])  # a sink touches the bytes it was given
try:
    with PipelinedCopier(n_sinks=1, buffer_size=64 * 1024, depth=8) as copier:
        copier.copy_file_range(fd, 0, 4 * 1024 * 1024, [cut])
except TruncatedInput as exc:
    print("short", exc.copied)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.startswith("short")


# -- manifest 1.1 -------------------------------------------------------------------------------
def test_split_writes_the_file_block_map_and_chunk_maps_when_chunks_fall_on_block_boundaries(tmp_path: Path) -> None:
    from teadist.base.blocks import BLOCK_SIZE

    src = tmp_path / "m.bin"
    data = os.urandom(BLOCK_SIZE * 4 + 1000)
    src.write_bytes(data)
    unaligned = load_manifest(split_file(src, tmp_path / "a", NullReporter(), chunk_size=BLOCK_SIZE + 7).manifest_path)
    assert unaligned.schema_version == "1.1"
    assert unaligned.file.blocks == BlockMap(BLOCK_SIZE, tuple(_blocks_of(data, BLOCK_SIZE)))
    assert all(chunk.blocks is None for chunk in unaligned.chunks)  # covered by the file's map
    aligned = load_manifest(split_file(src, tmp_path / "b", NullReporter(), chunk_size=2 * BLOCK_SIZE).manifest_path)
    assert aligned.file.blocks == unaligned.file.blocks
    for chunk in aligned.chunks:
        offset = chunk.offset or 0
        assert chunk.blocks == BlockMap(BLOCK_SIZE, tuple(_blocks_of(data[offset:offset + chunk.size], BLOCK_SIZE)))


def test_a_damaged_chunk_range_without_its_own_map_is_narrowed_by_the_file_map(tmp_path: Path,
                                                                              cli: Callable[..., Result]) -> None:
    from teadist.base.blocks import BLOCK_SIZE

    src = tmp_path / "n.bin"
    with open(src, "wb") as fh:
        fh.write(os.urandom(3 * BLOCK_SIZE))
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE + BLOCK_SIZE // 2)
    with open(src, "r+b") as fh:
        fh.seek(BLOCK_SIZE + 10)
        fh.write(b"\xff\x00")
    checked = cli("verify", src, "--manifest", result.manifest_path, "--json")
    assert checked.code == 3
    items = json.loads(checked.out)["items"]
    assert [i["status"] for i in items] == ["MISMATCH", "OK"]
    assert items[0]["damaged"] == [{"start": BLOCK_SIZE, "end": 2 * BLOCK_SIZE}]


def _main_manifest(tmp_path: Path) -> tuple[Path, bytes]:
    """A manifest exactly as today's main writes it: schema 1.0, no block maps."""
    src = tmp_path / "old.gguf"
    data = write_random(src, 30_000, seed=3)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=10_000)
    raw = json.loads(result.manifest_path.read_text())
    raw["schema_version"] = "1.0"
    for item in [raw["file"], *raw["chunks"]]:
        item.pop("block_size", None)
        item.pop("blocks", None)
    result.manifest_path.write_text(json.dumps(raw))
    return result.manifest_path, data


def test_a_manifest_from_main_without_block_maps_still_reads_assembles_and_verifies(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    manifest_path, data = _main_manifest(tmp_path)
    manifest = load_manifest(manifest_path)
    assert manifest.file.blocks is None and all(c.blocks is None for c in manifest.chunks)
    assert cli("verify", manifest_path).code == 0
    assert cli("assemble", manifest_path).code == 0
    assert (models_dir / "old.gguf").read_bytes() == data
    record = json.loads((models_dir / ".teadist" / "records" / "old.gguf.json").read_text())
    assert record["blocks"] == [hashlib.sha256(data).hexdigest()]  # computed while assembling
    assert cli("verify", "old.gguf").code == 0


def test_block_maps_that_cannot_describe_the_file_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    write_random(src, 3000)
    result = split_file(src, tmp_path / "out", NullReporter(), chunk_size=1000)
    good = json.loads(result.manifest_path.read_text())

    def refused(change: Callable[[dict[str, Any]], None], words: str) -> None:
        raw = json.loads(json.dumps(good))
        change(raw)
        with pytest.raises(ManifestError, match=words):
            parse_manifest(json.dumps(raw).encode(), "m.json")

    refused(lambda r: r["file"].update(blocks=r["file"]["blocks"] * 2), "block hashes for 3000 bytes")
    refused(lambda r: r["file"].pop("block_size"), "block_size and blocks go together")
    refused(lambda r: r["file"].update(block_size=3 * 65536), "power of two")
    refused(lambda r: r["chunks"][0].update(blocks=["A" * 64]), "chunks")


def test_an_altered_block_hash_is_refused_at_assembly_and_fails_verification_as_a_self_contradicting_manifest(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    from teadist.base.blocks import BLOCK_SIZE

    src = tmp_path / "a.bin"
    with open(src, "wb") as fh:
        fh.write(os.urandom(3 * BLOCK_SIZE + 5))
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=2 * BLOCK_SIZE)
    raw = json.loads(result.manifest_path.read_text())
    raw["file"]["blocks"][1] = "0" * 64
    raw["chunks"][1]["blocks"][0] = "0" * 64  # the chunk's block 0: file bytes 2*BS…3*BS-1
    result.manifest_path.write_text(json.dumps(raw))
    assembled = cli("assemble", result.manifest_path)
    assert assembled.code == 3
    assert "block hash 1" in assembled.err and f"bytes {BLOCK_SIZE}-{2 * BLOCK_SIZE - 1}" in assembled.err
    assert not (models_dir / "a.bin").exists()
    checked = cli("verify", src, "--manifest", result.manifest_path, "--json")
    assert checked.code == 3
    items = {i["name"]: i for i in json.loads(checked.out)["items"]}
    assert items["a.bin.part-00001-of-00002"]["status"] == "OK"
    # the bytes match the chunk's sha256 (the final word); the altered map contradicts it
    second = items["a.bin.part-00002-of-00002"]
    assert second["status"] == "MISMATCH" and "block map" in second["detail"] and "damaged" not in second


@pytest.mark.parametrize("block_size", [0, 1, 2**70, 8388608.0, 3 * 65536, True, -65536, 2**27])
def test_absurd_block_sizes_are_refused(block_size: object) -> None:
    problem = BlockMap(block_size, ()).problem(0)  # type: ignore[arg-type]
    assert problem is not None


def test_hashing_many_blocks_keeps_memory_to_the_hashes_themselves(tmp_path: Path) -> None:
    """A 1 GiB sparse file in 64 KiB blocks: 16384 hashes (about 2 MB of strings) — the work queue
    must not add a pending task per block on top (30 MB before: every block submitted at once)."""
    import tracemalloc

    block, count = 65536, 16384
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate(block * count)
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        try:
            got = hash_blocks_fd(fd, block, range(count), block * count, threads=2)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        os.close(fd)
    assert got == [hashlib.sha256(bytes(block)).hexdigest()] * count
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for {count} blocks"
