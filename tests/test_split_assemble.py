from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teadist.base.progress import NullReporter
from teadist.errors import IntegrityError, UsageError
from teadist.formats.manifest import load_manifest
from teadist.pipelines.assemble import assemble_chunks
from teadist.pipelines.split import DEFAULT_CHUNK_SIZE, chunk_names, split_file
from tests.conftest import TEADIST_BIN
from tests.helpers import Result, files_in, write_random

N = 4096


def roundtrip(tmp_path: Path, size: int, chunk_size: int, tag: str = "") -> tuple[bytes, Path, Path]:
    src = tmp_path / f"in{tag}" / "model.gguf"
    src.parent.mkdir(parents=True, exist_ok=True)
    data = write_random(src, size, seed=size)
    out = tmp_path / f"chunks{tag}"
    result = split_file(src, out, NullReporter(), chunk_size=chunk_size)
    dest = tmp_path / f"rebuilt{tag}" / "model.gguf"
    assemble_chunks(result.manifest, out, dest, NullReporter())
    return data, out, dest


@pytest.mark.parametrize("size", [0, 1, N - 1, N, N + 1, 5 * N + 17])
def test_split_assemble_round_trip_is_byte_identical(tmp_path: Path, size: int) -> None:
    data, out, dest = roundtrip(tmp_path, size, N)
    assert dest.read_bytes() == data
    manifest = load_manifest(out / "model.gguf.manifest.json")
    assert manifest.file.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.file.size == size
    assert len(manifest.chunks) == max(1, -(-size // N))
    for chunk in manifest.chunks:
        piece = (out / chunk.name).read_bytes()
        assert len(piece) == chunk.size <= N
        assert hashlib.sha256(piece).hexdigest() == chunk.sha256
        assert data[chunk.offset or 0:(chunk.offset or 0) + chunk.size] == piece
    assert files_in(dest.parent) == {"model.gguf"}  # the lock file goes with the lock


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 50_000), chunk_size=st.integers(50, 20_000))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, size: int, chunk_size: int) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    data, _, dest = roundtrip(tmp, size, chunk_size)
    assert dest.read_bytes() == data


def test_many_chunks(tmp_path: Path) -> None:
    data, out, dest = roundtrip(tmp_path, 300 * 1000 + 3, 1000)
    assert len(list(out.glob("*.part-*"))) == 301
    assert dest.read_bytes() == data


def test_chunk_names_do_not_look_like_llama_cpp_shards() -> None:
    import re

    names = chunk_names("m.gguf", 3)
    assert names[0] == "m.gguf.part-00001-of-00003"
    assert not any(re.search(r"-(\d{5})-of-(\d{5})\.gguf$", n) for n in names)


@pytest.mark.parametrize("size", ["2GiB", "3G", "0", "2147483648"])
def test_chunk_size_at_or_above_2gib_is_refused(tmp_path: Path, cli: Callable[..., Result], size: str) -> None:
    src = tmp_path / "m.gguf"
    write_random(src, 10)
    result = cli("split", src, "--chunk-size", size, "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert not (tmp_path / "out").exists()


def test_too_many_chunks_is_refused_before_writing(tmp_path: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "m.gguf"
    write_random(src, 10_001)
    result = cli("split", src, "--chunk-size", "1", "--out", tmp_path / "out")
    assert result.code == 2 and "10001 chunks" in result.err
    assert not (tmp_path / "out").exists()


def test_default_chunk_size_is_below_the_github_limit() -> None:
    assert DEFAULT_CHUNK_SIZE == 1_900_000_000 < 2**31


def test_base_url_records_download_urls(tmp_path: Path) -> None:
    src = tmp_path / "m x.gguf"
    write_random(src, 10)
    result = split_file(src, tmp_path / "o", NullReporter(), chunk_size=4, base_url="https://h.example/r/")
    assert result.manifest.chunks[0].urls == ("https://h.example/r/m%20x.gguf.part-00001-of-00003",)


# -- damaged chunks ----------------------------------------------------------------------------
@pytest.fixture
def split_dir(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "src" / "model.gguf"
    src.parent.mkdir()
    data = write_random(src, 10 * N + 5)
    split_file(src, tmp_path / "chunks", NullReporter(), chunk_size=N)
    return tmp_path / "chunks", data


def _assemble_cli(cli: Callable[..., Result], chunks: Path, cache: Path) -> Result:
    return cli("assemble", chunks / "model.gguf.manifest.json", "--cache-dir", cache)


def test_tampered_chunk_exits_3_naming_it_and_leaves_nothing(
        split_dir: tuple[Path, bytes], tmp_path: Path, cli: Callable[..., Result]) -> None:
    chunks, _ = split_dir
    victim = chunks / "model.gguf.part-00004-of-00011"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0x01
    victim.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    result = _assemble_cli(cli, chunks, cache)
    assert result.code == 3
    assert "model.gguf.part-00004-of-00011" in result.err
    assert "model.gguf" not in files_in(cache)


def test_truncated_chunk_is_refused(split_dir: tuple[Path, bytes], tmp_path: Path,
                                    cli: Callable[..., Result]) -> None:
    chunks, _ = split_dir
    victim = chunks / "model.gguf.part-00011-of-00011"
    victim.write_bytes(victim.read_bytes()[:-1])
    result = _assemble_cli(cli, chunks, tmp_path / "cache")
    assert result.code == 3
    assert "part-00011-of-00011" in result.err and "truncated" in result.err
    assert not (tmp_path / "cache" / "model.gguf").exists()


def test_missing_chunk_is_refused(split_dir: tuple[Path, bytes], tmp_path: Path,
                                  cli: Callable[..., Result]) -> None:
    chunks, _ = split_dir
    (chunks / "model.gguf.part-00002-of-00011").unlink()
    result = _assemble_cli(cli, chunks, tmp_path / "cache")
    assert result.code == 3
    assert "part-00002-of-00011 is missing" in result.err
    assert not (tmp_path / "cache" / "model.gguf").exists()


def test_extra_chunks_are_ignored(split_dir: tuple[Path, bytes], tmp_path: Path,
                                  cli: Callable[..., Result]) -> None:
    chunks, data = split_dir
    write_random(chunks / "model.gguf.part-00012-of-00011", 100, seed=9)
    write_random(chunks / "model.gguf.part-00001-of-00002", 100, seed=9)
    result = _assemble_cli(cli, chunks, tmp_path / "cache")
    assert result.code == 0, result.err
    assert (tmp_path / "cache" / "model.gguf").read_bytes() == data


def test_assemble_into_cache_then_again_does_no_work(split_dir: tuple[Path, bytes], tmp_path: Path,
                                                     cli: Callable[..., Result]) -> None:
    chunks, _ = split_dir
    cache = tmp_path / "cache"
    first = _assemble_cli(cli, chunks, cache)
    assert first.code == 0 and first.out.strip() == str(cache / "model.gguf")
    mtime = (cache / "model.gguf").stat().st_mtime_ns
    for chunk in chunks.glob("*.part-*"):
        chunk.unlink()  # no chunk is needed to confirm the cached file
    second = _assemble_cli(cli, chunks, cache)
    assert second.code == 0, second.err
    assert "already there and verified" in second.err
    assert (cache / "model.gguf").stat().st_mtime_ns == mtime


def test_assemble_replaces_a_wrong_file_at_the_destination(split_dir: tuple[Path, bytes], tmp_path: Path,
                                                           cli: Callable[..., Result]) -> None:
    chunks, data = split_dir
    out = tmp_path / "elsewhere" / "model.gguf"
    out.parent.mkdir()
    out.write_bytes(b"x" * len(data))
    result = cli("assemble", chunks / "model.gguf.manifest.json", "--out", out)
    assert result.code == 0, result.err
    assert out.read_bytes() == data


def test_assemble_refuses_a_non_bytes_manifest(tmp_path: Path) -> None:
    from teadist.formats.manifest import FileRecord, Manifest

    manifest = Manifest("x", FileRecord("x.gguf", None, None), "single")
    with pytest.raises(UsageError):  # never the working folder: its lock file once got committed
        assemble_chunks(manifest, tmp_path, tmp_path / "x.gguf", NullReporter())


# -- resume ------------------------------------------------------------------------------------
def test_split_rerun_keeps_good_chunks_and_redoes_bad_ones(split_dir: tuple[Path, bytes], tmp_path: Path) -> None:
    chunks, data = split_dir
    (chunks / "model.gguf.manifest.json").unlink()  # as if interrupted before the manifest
    (chunks / "model.gguf.part-00003-of-00011").unlink()
    bad = chunks / "model.gguf.part-00005-of-00011"
    bad.write_bytes(b"\0" * N)
    (chunks / "model.gguf.part-00007-of-00011").write_bytes(b"short")
    result = split_file(tmp_path / "src" / "model.gguf", chunks, NullReporter(), chunk_size=N)
    assert (result.written, result.reused) == (3, 8)
    assert bad.read_bytes() == data[4 * N:5 * N]
    dest = tmp_path / "out.gguf"
    assemble_chunks(result.manifest, chunks, dest, NullReporter())
    assert dest.read_bytes() == data


def test_assemble_resumes_from_a_verified_partial(split_dir: tuple[Path, bytes], tmp_path: Path,
                                                  cli: Callable[..., Result]) -> None:
    chunks, data = split_dir
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = load_manifest(chunks / "model.gguf.manifest.json")
    assert manifest.file.sha256
    from teadist.cache.layout import CacheLayout

    files = CacheLayout(cache).target("model.gguf").files
    files.ensure_folder()
    partial = files.partial(manifest.file.sha256, kind="assemble")
    partial.write_bytes(data[:3 * N] + b"garbage in the fourth chunk")
    result = cli("assemble", chunks / "model.gguf.manifest.json", "--cache-dir", cache, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["resumed_bytes"] == 3 * N
    assert (cache / "model.gguf").read_bytes() == data
    assert not partial.exists()


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_split_and_assemble_killed_then_rerun_resume(tmp_path: Path, console: Callable[..., Result]) -> None:
    src = tmp_path / "big.gguf"
    with open(src, "wb") as fh:
        for i in range(256):
            fh.write(os.urandom(1024 * 1024) if i % 64 == 0 else bytes([i]) * (1024 * 1024))
        fh.write(b"x" * 11)
    out = tmp_path / "chunks"
    proc = subprocess.Popen([str(TEADIST_BIN), "split", str(src), "-s", "8MiB", "-o", str(out), "-q"])
    assert _kill_when(proc, lambda: len(list(out.glob("big.gguf.part-*"))) >= 3), "split ended too early"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "big.gguf.manifest.json").exists()
    again = console("split", src, "-s", "8MiB", "-o", out, "--json")
    assert again.code == 0, again.err
    report = json.loads(again.out)
    assert report["kept"] >= 2 and report["written"] + report["kept"] == 33

    cache = tmp_path / "cache"
    proc = subprocess.Popen([str(TEADIST_BIN), "assemble", str(out / "big.gguf.manifest.json"),
                             "--cache-dir", str(cache), "-q"])
    assert _kill_when(proc, lambda: any(p.stat().st_size > 40 * 2**20 for p in cache.rglob("*.part"))
                      if cache.exists() else False), "assemble ended too early"
    assert proc.returncode == -signal.SIGKILL
    assert not (cache / "big.gguf").exists()
    again = console("assemble", out / "big.gguf.manifest.json", "--cache-dir", cache, "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["resumed_bytes"] >= 40 * 2**20
    with open(cache / "big.gguf", "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == report["file"]["sha256"]


def test_integrity_error_is_exit_3() -> None:
    assert IntegrityError("x").exit_code == 3


# -- branches that only run above a size no fixture reaches: run them at a small size -------------
def test_writeback_branch_writes_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sinks start writeback every 64 MiB; with a 4 KiB step the branch runs here, and the
    bytes written through it are exactly the input."""
    import os

    from teadist.base import fsutil

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(fsutil, "_WRITEBACK_STEP", 4096)
    monkeypatch.setattr(fsutil._SyncFileRange, "call", classmethod(lambda cls, fd, off, n: calls.append((off, n))))
    data = os.urandom(50_000)
    with open(tmp_path / "a", "wb") as fh:
        sink = fsutil.WriteSink(fh)
        for i in range(0, len(data), 3000):
            sink(memoryview(data[i:i + 3000]))
    fd = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT)
    try:
        pwrite = fsutil.PwriteSink(fd, 0)
        for i in range(0, len(data), 3000):
            pwrite(memoryview(data[i:i + 3000]))
    finally:
        os.close(fd)
    assert (tmp_path / "a").read_bytes() == data == (tmp_path / "b").read_bytes()
    assert len(calls) == 2 * (len(data) // 6000)  # every 2 writes of 3000 bytes, in each sink


def test_multi_block_copies_in_shards_rebuild_and_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard writing, rebuilding and merging copy tensors in 8 MiB blocks; tiny models' tensors are
    smaller, so with 1 KiB blocks every multi-block path runs and must still be byte-exact."""
    from teadist.formats import gguf_recipe
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines import gguf_rebuild, gguf_split
    from teadist.pipelines.gguf_rebuild import rebuild_original
    from teadist.pipelines.gguf_split import split_gguf

    for module in (gguf_recipe, gguf_rebuild, gguf_split):
        monkeypatch.setattr(module, "COPY_BLOCK", 1024)
    src = make_tiny_model(tmp_path / "src" / "b.gguf", seed=8)
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=100_000)
    rebuilt = tmp_path / "out" / "b.gguf"
    rebuild_original(result.manifest, tmp_path / "web", rebuilt, NullReporter())
    assert rebuilt.read_bytes() == src.read_bytes()
    make_tiny_model(tmp_path / "split" / "f.gguf", seed=5, split_max_tensors=8)
    from teadist.cache.layout import OutsideTarget
    from teadist.pipelines.gguf_merge import merge_foreign_shards

    whole = make_tiny_model(tmp_path / "whole" / "f.gguf", seed=5)
    merged = tmp_path / "merged" / "f.gguf"
    merge_foreign_shards(tmp_path / "split" / "f-00001-of-00003.gguf", OutsideTarget(merged), NullReporter())
    from teadist.formats.gguf_header import read_header

    a, b = read_header(merged, tensors=True), read_header(whole, tensors=True)
    assert [(t.name, t.n_bytes) for t in a.tensors] == [(t.name, t.n_bytes) for t in b.tensors]
    with open(merged, "rb") as m, open(whole, "rb") as w:
        for ta, tb in zip(a.tensors, b.tensors, strict=True):
            m.seek(a.data_offset + ta.offset)
            w.seek(b.data_offset + tb.offset)
            assert m.read(ta.n_bytes) == w.read(tb.n_bytes)


@pytest.mark.parametrize("fmt", ["bytes", "gguf"])
def test_folders_fifos_and_files_where_they_do_not_belong_are_named_as_such(fmt: str, tmp_path: Path,
                                                                           cli: Callable[..., Result]) -> None:
    """Review finding 16: a folder given as the model was 'input file not found', a file given as
    --out a bare 'File exists', a FIFO as the model 'not found' — each now says what it is."""
    import os

    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    from teadist.formats.tinymodel import make_tiny_model

    model = make_tiny_model(tmp_path / "m.gguf", seed=11)
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("mine")
    cases = [([folder, "--out", tmp_path / "o"], "is a folder"),
             ([fifo, "--out", tmp_path / "o"], "not a regular file"),
             ([model, "--out", not_a_folder], "is a file, not a folder")]
    for args, said in cases:
        result = cli("split", *args, "--format", fmt)
        assert result.code == 2 and said in result.err and "Traceback" not in result.err, (args, result.err)
    assert not_a_folder.read_text() == "mine"
