"""verify names damaged byte ranges; repair re-fetches only those blocks (the server's log says so);
a killed fetch or assemble resumes at its last proven block."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teadist.base.blocks import BLOCK_SIZE
from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from tests.conftest import TEADIST_BIN
from tests.helpers import Result, sha
from tests.servers import Fault, HubServer, MirrorServer

MB = 1_000_000


def write_big(path: Path, size: int) -> str:
    """``size`` random bytes, written in pieces (bounded memory); their sha256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = os.urandom(min(left, 8 * 1024 * 1024))
            fh.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def ranged_gets(server: MirrorServer) -> list[tuple[str, str]]:
    """(path, Range) of every GET the server saw with a Range header."""
    return [(r.path, r.headers.get("Range", "")) for r in server.requests if r.method == "GET" and "Range" in r.headers]


def block_range(index: int, size: int) -> str:
    return f"{index * BLOCK_SIZE}-{min(size, (index + 1) * BLOCK_SIZE) - 1}"


@pytest.fixture
def big_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            fast_retries: None) -> Iterator[tuple[HubServer, MirrorServer, Path]]:
    """A Hub whose file GETs go to a mirror (the CDN), serving a 300 MB model."""
    served = tmp_path / "served"
    write_big(served / "big.gguf", 300 * MB)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/big", {"big.gguf": served / "big.gguf"}, commit="b" * 40)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub, cdn, served / "big.gguf"


def test_one_flipped_byte_in_a_300mb_model_verify_names_its_block_and_repair_fetches_only_it(
        big_hub: tuple[HubServer, MirrorServer, Path], models_dir: Path, cli: Callable[..., Result]) -> None:
    _, cdn, original = big_hub
    size = original.stat().st_size
    assert cli("fetch", "hf://org/big/big.gguf").code == 0
    cached = models_dir / "big.gguf"
    record = json.loads((models_dir / ".teadist" / "records" / "big.gguf.json").read_text())
    assert record["block_size"] == BLOCK_SIZE and len(record["blocks"]) == -(-size // BLOCK_SIZE)
    flip(cached, 123_456_789)
    index = 123_456_789 // BLOCK_SIZE

    checked = cli("verify", "big.gguf")
    assert checked.code == 3
    assert f"1 of {len(record['blocks'])} blocks damaged: bytes {block_range(index, size)}" in checked.out

    cdn.requests.clear()
    cdn.bytes_sent = 0
    repaired = cli("repair", "big.gguf", "--json")
    assert repaired.code == 0, repaired.err
    report = json.loads(repaired.out)
    assert (report["blocks_bad"], report["blocks_refetched"], report["bytes_fetched"]) == (1, 1, BLOCK_SIZE)
    assert ranged_gets(cdn) == [("/big.gguf", f"bytes={block_range(index, size)}")]  # the server's own log
    assert cdn.bytes_sent == BLOCK_SIZE
    assert cli("verify", "big.gguf").code == 0
    assert sha(cached) == sha(original)


def test_three_damaged_blocks_in_different_chunks_are_fetched_from_their_chunks(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "chunky.gguf"
    size = 9 * BLOCK_SIZE + 12345
    write_big(src, size)
    chunk = 3 * BLOCK_SIZE + 5000  # three chunks, their boundaries inside blocks
    split_file(src, tmp_path / "dist", NullReporter(), chunk_size=chunk)
    with MirrorServer(tmp_path / "dist") as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("chunky.gguf.manifest.json")).code == 0
        cached = models_dir / "chunky.gguf"
        # block 1 (chunk 1), block 3 (straddles chunks 1 and 2), block 9 (the short last one, chunk 3)
        for offset in (BLOCK_SIZE + 5, 3 * BLOCK_SIZE + 999 + 1, size - 1):
            flip(cached, offset)
        checked = cli("verify", "chunky.gguf")
        assert checked.code == 3
        assert (f"3 of 10 blocks damaged: bytes {block_range(1, size)}, {block_range(3, size)}, "
                f"{block_range(9, size)}") in checked.out
        mirror.requests.clear()
        mirror.bytes_sent = 0
        repaired = cli("repair", "chunky", "--json")
        assert repaired.code == 0, repaired.err
        report = json.loads(repaired.out)
        assert (report["blocks_bad"], report["blocks_refetched"]) == (3, 3)
        manifest_size = (tmp_path / "dist" / "chunky.gguf.manifest.json").stat().st_size
        assert report["bytes_fetched"] == 2 * BLOCK_SIZE + 12345
        assert mirror.bytes_sent == report["bytes_fetched"] + manifest_size  # the manifest, read again
        assert [r.path for r in mirror.requests if "Range" not in r.headers] == ["/chunky.gguf.manifest.json"]
        part = "/chunky.gguf.part-0000{}-of-00003"
        assert ranged_gets(mirror) == [
            (part.format(1), f"bytes={BLOCK_SIZE}-{2 * BLOCK_SIZE - 1}"),
            (part.format(1), f"bytes={3 * BLOCK_SIZE}-{chunk - 1}"),  # block 3, in two chunks
            (part.format(2), f"bytes=0-{4 * BLOCK_SIZE - chunk - 1}"),
            (part.format(3), f"bytes={9 * BLOCK_SIZE - 2 * chunk}-{size - 2 * chunk - 1}"),
        ]
    assert cli("verify", "chunky.gguf").code == 0
    assert sha(cached) == sha(src)


def test_repair_without_a_source_says_so_and_changes_nothing(tmp_path: Path, models_dir: Path,
                                                             cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "local.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    assert cli("assemble", result.manifest_path).code == 0
    cached = models_dir / "local.gguf"
    flip(cached, 10)
    before = cached.read_bytes()
    record_before = (models_dir / ".teadist" / "records" / "local.gguf.json").read_bytes()
    result.manifest_path.unlink()  # the only source: the manifest and its chunks, now gone
    repaired = cli("repair", "local.gguf")
    assert repaired.code == 1
    assert "which is gone" in repaired.err
    assert cached.read_bytes() == before
    assert (models_dir / ".teadist" / "records" / "local.gguf.json").read_bytes() == record_before


def test_repair_offline_from_the_hub_changes_nothing(hub: HubServer, models_dir: Path,
                                                     cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    flip(cached, 100)
    before = cached.read_bytes()
    repaired = cli("repair", "tiny.gguf", "--offline")
    assert repaired.code == 1 and "offline" in repaired.err
    assert cached.read_bytes() == before
    assert cli("repair", "tiny.gguf").code == 0
    assert cli("verify", "tiny.gguf").code == 0


def test_repair_never_changes_a_hard_linked_file_in_place(hub: HubServer, models_dir: Path, tmp_path: Path,
                                                          cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    flip(cached, 100)
    other = tmp_path / "elsewhere.gguf"
    os.link(cached, other)
    damaged = other.read_bytes()
    assert cli("repair", "tiny.gguf").code == 0
    assert other.read_bytes() == damaged  # the other name keeps its bytes
    assert os.stat(cached).st_ino != os.stat(other).st_ino
    assert cli("verify", "tiny.gguf").code == 0


def test_a_model_installed_before_block_maps_gets_one_on_its_next_full_verify(
        hub: HubServer, models_dir: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    path = models_dir / ".teadist" / "records" / "tiny.gguf.json"
    record = json.loads(path.read_text())
    expected = record.pop("blocks")
    record.pop("block_size")
    path.write_text(json.dumps(record))
    assert cli("verify", "tiny.gguf").code == 0
    assert json.loads(path.read_text())["blocks"] == expected


# -- resume at the last proven block ----------------------------------------------------------------
def test_a_killed_fetch_resumes_at_its_last_proven_block_and_refetches_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None, models_dir: Path,
        console: Callable[..., Result]) -> None:
    served = tmp_path / "served"
    size = 5 * BLOCK_SIZE + 777
    write_big(served / "kill.gguf", size)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/kill", {"kill.gguf": served / "kill.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("TEADIST_STALL_TIMEOUT", "60")  # the stalled run waits until it is killed
        cdn.add_fault(Fault("stall", after=4 * BLOCK_SIZE, seconds=30))
        proc = subprocess.Popen([str(TEADIST_BIN), "fetch", "hf://org/kill/kill.gguf", "-q", "--jobs", "1"],
                                env=os.environ.copy())
        deadline = time.monotonic() + 60
        partials: list[Path] = []
        while time.monotonic() < deadline and not partials:
            partials = [p for p in models_dir.rglob("*.part") if p.stat().st_size >= 3.5 * BLOCK_SIZE]
            time.sleep(0.05)
        # the sidecar has caught up with the bytes written (the hasher lags them on a loaded machine):
        # waited for, not slept on
        assert partials and _wait_until(lambda: _sidecar_blocks(partials[0]) >= 3), "the sidecar proves too little"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # the kill happened (the run did not just finish)
        assert cdn.applied_kinds() == ["stall"]
        # Bytes in the partial change behind teadist's back: block 2 is no longer what was received.
        flip(partials[0], 2 * BLOCK_SIZE + 3)
        cdn.requests.clear()
        result = console("fetch", "hf://org/kill/kill.gguf", "--jobs", "1")
        assert result.code == 0, result.err
        assert "not proven by a block hash" in result.err
        assert ranged_gets(cdn) == [("/kill.gguf", f"bytes={2 * BLOCK_SIZE}-")]
    assert sha(models_dir / "kill.gguf") == sha(served / "kill.gguf")


def _sidecar_blocks(partial: Path) -> int:
    """How many blocks the sidecar of a download partial proves now (0 while unreadable)."""
    try:
        return len(json.loads(partial.with_name(partial.name + ".json").read_text()).get("blocks") or [])
    except (OSError, ValueError):
        return 0


def _wait_until(condition: Callable[[], bool], limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_an_interrupted_assemble_resumes_at_its_last_proven_block(tmp_path: Path, models_dir: Path,
                                                                  cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "asm.gguf"
    write_big(src, 4 * BLOCK_SIZE + 99)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=3 * BLOCK_SIZE)
    from teadist.cache.layout import CacheLayout
    from teadist.formats.manifest import load_manifest

    manifest = load_manifest(result.manifest_path)
    assert manifest.file.sha256
    files = CacheLayout(models_dir).target("asm.gguf").files
    files.ensure_folder()
    partial = files.partial(manifest.file.sha256, kind="assemble")
    data = src.read_bytes()
    damaged = bytearray(data[:2 * BLOCK_SIZE + 500])
    damaged[BLOCK_SIZE + 7] ^= 1  # block 1 is wrong: only block 0 is proven
    partial.write_bytes(bytes(damaged))
    assembled = cli("assemble", result.manifest_path, "--json")
    assert assembled.code == 0, assembled.err
    assert json.loads(assembled.out)["resumed_bytes"] == BLOCK_SIZE
    assert sha(models_dir / "asm.gguf") == sha(src)
    partial.write_bytes(data[:2 * BLOCK_SIZE + 500])
    (models_dir / "asm.gguf").unlink()
    assembled = cli("assemble", result.manifest_path, "--json")
    assert json.loads(assembled.out)["resumed_bytes"] == 2 * BLOCK_SIZE  # inside chunk 1: blocks prove it
    assert sha(models_dir / "asm.gguf") == sha(src)


def test_an_interrupted_gguf_rebuild_resumes_at_its_last_proven_block(tmp_path: Path, models_dir: Path,
                                                                     cli: Callable[..., Result]) -> None:
    """Assembling a gguf-split manifest (shards -> the byte-identical original) keeps the blocks of a
    partial the manifest's model map proves and rebuilds only the rest. Proof that the kept bytes were
    not rebuilt: a byte of a shard that lands inside them is altered, and the result still matches."""
    from teadist.cache.layout import CacheLayout
    from teadist.formats.gguf_recipe import check_recipe, piece_length
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "src" / "rb.gguf", seed=5, n_embd=512, n_ff=2048)
    size = src.stat().st_size
    assert size > 3 * BLOCK_SIZE
    web = tmp_path / "web"
    result = split_gguf(src, web, NullReporter(), shard_size=12_000_000)
    manifest = result.manifest
    assert manifest.file.sha256 and manifest.file.blocks is not None and len(manifest.chunks) > 1
    manifest_path = web / "rb.gguf.manifest.json"
    files = CacheLayout(models_dir).target("rb.gguf").files
    files.ensure_folder()
    partial = files.partial(manifest.file.sha256, kind="rebuild")
    data = src.read_bytes()
    damaged = bytearray(data[:2 * BLOCK_SIZE + 500])
    damaged[BLOCK_SIZE + 7] ^= 1  # block 1 is wrong: only block 0 is proven
    partial.write_bytes(bytes(damaged))
    # a shard byte that lands at offset 1,000,000 of the original (block 0): only a rebuild that
    # reads it again would notice it is wrong
    at, shard_offset, shard = 0, None, 0
    for piece in check_recipe(manifest):
        if "shard" in piece and at <= 1_000_000 < at + piece_length(piece):
            shard, shard_offset = int(piece["shard"]), int(piece["offset"]) + 1_000_000 - at
            break
        at += piece_length(piece)
    assert shard_offset is not None
    flip(web / manifest.chunks[shard].name, shard_offset)
    assembled = cli("assemble", manifest_path)
    assert assembled.code == 0, assembled.err
    assert f"resuming rb.gguf after {BLOCK_SIZE} proven bytes" in assembled.err
    assert sha(models_dir / "rb.gguf") == sha(src)
    assert not partial.exists()
    flip(web / manifest.chunks[shard].name, shard_offset)  # the shard is right again
    partial.write_bytes(data[:2 * BLOCK_SIZE + 500])
    (models_dir / "rb.gguf").unlink()
    assembled = cli("assemble", manifest_path)
    assert f"resuming rb.gguf after {2 * BLOCK_SIZE} proven bytes" in assembled.err, assembled.err
    assert sha(models_dir / "rb.gguf") == sha(src)
    assert cli("verify", "rb.gguf").code == 0


def test_a_model_rebuilt_from_gguf_shards_is_repaired_from_its_shards(tmp_path: Path, models_dir: Path,
                                                                     cli: Callable[..., Result]) -> None:
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "src" / "shardy.gguf", seed=11)
    split_gguf(src, tmp_path / "web", NullReporter(), shard_size=100_000)
    with MirrorServer(tmp_path / "web") as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("shardy.gguf.manifest.json")).code == 0
        cached = models_dir / "shardy.gguf"
        flip(cached, cached.stat().st_size - 10)  # tensor data, at the end of the last shard
        mirror.requests.clear()
        repaired = cli("repair", "shardy.gguf", "--json")
        assert repaired.code == 0, repaired.err
        report = json.loads(repaired.out)
        assert (report["blocks_bad"], report["blocks_refetched"]) == (1, 1)  # a tiny model is one block
        gets = [r for r in mirror.requests if r.method == "GET" and r.path != "/shardy.gguf.manifest.json"]
        assert gets and all(r.path.startswith("/shardy-0000") and "Range" in r.headers for r in gets)
        assert 0 < report["bytes_fetched"] < cached.stat().st_size  # headers and padding come from the recipe
    assert sha(cached) == sha(src)
    assert cli("verify", "shardy.gguf").code == 0


def test_a_kept_shard_is_repaired_by_one_range_request(tmp_path: Path, models_dir: Path,
                                                       cli: Callable[..., Result]) -> None:
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "src" / "kept.gguf", seed=12)
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=100_000)
    second = result.manifest.chunks[1]
    with MirrorServer(tmp_path / "web") as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("kept.gguf.manifest.json"), "--keep-shards").code == 0
        flip(models_dir / second.name, 50)
        checked = cli("verify", "kept")
        assert checked.code == 3 and f"bytes 0-{second.size - 1}" in checked.out
        mirror.requests.clear()
        repaired = cli("repair", "kept", "--json")
        assert repaired.code == 0, repaired.err
        assert json.loads(repaired.out)["bytes_fetched"] == second.size
        assert ranged_gets(mirror) == [(f"/{second.name}", f"bytes=0-{second.size - 1}")]
    assert sha(models_dir / second.name) == second.sha256
    assert cli("verify", "kept").code == 0


# -- from the hostile review of issue 12: the whole sha256 is the final word --

def _two_chunk_release(tmp_path: Path) -> Path:
    """A random g.gguf of two blocks, split into one chunk per block with its manifest: the folder."""
    src = tmp_path / "src" / "g.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    dist = tmp_path / "dist"
    split_file(src, dist, NullReporter(), chunk_size=BLOCK_SIZE)
    return dist


def _record_path(models_dir: Path, name: str) -> Path:
    return models_dir / ".teadist" / "records" / f"{name}.json"


def test_verify_of_a_cached_model_does_not_trust_an_edited_block_map_over_the_recorded_sha256(
        hub: HubServer, models_dir: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    rec_path = _record_path(models_dir, "tiny.gguf")
    record = json.loads(rec_path.read_text())
    flip(cached, 100)  # the file is no longer the one the Hub published
    assert sha(cached) != record["sha256"]
    record["blocks"] = [sha(cached)]  # the one-block map edited to match the damaged bytes
    rec_path.write_text(json.dumps(record))
    checked = cli("verify", "tiny.gguf")
    # The recorded sha256 (the source's) does not match: verify must not say OK.
    assert checked.code == 3, checked.out


def test_repair_keeps_an_intact_model_whose_record_map_was_edited(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "local.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    assert cli("assemble", result.manifest_path).code == 0
    cached = models_dir / "local.gguf"
    good = sha(cached)
    assert good == sha(src)
    # Someone alters the local chunk (the repair source) and the record's hash of block 0 to match it.
    manifest = json.loads(result.manifest_path.read_text())
    chunk0 = tmp_path / "dist" / manifest["chunks"][0]["name"]
    flip(chunk0, 5)
    rec_path = _record_path(models_dir, "local.gguf")
    record = json.loads(rec_path.read_text())
    record["blocks"][0] = sha(chunk0)
    rec_path.write_text(json.dumps(record))
    repaired = cli("repair", "local.gguf")
    # Whatever repair answers, an intact model (its whole sha256 still the source's) must keep its bytes.
    assert sha(cached) == good, (repaired.code, repaired.err)


def test_after_a_failed_repair_verify_does_not_say_ok(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    """A damaged model whose source's block map lies: repair writes what the map asks, the whole
    sha256 rejects it, the overwritten bytes are put back, and verify still says MISMATCH."""
    src = tmp_path / "src" / "local.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    assert cli("assemble", result.manifest_path).code == 0
    cached = models_dir / "local.gguf"
    manifest = json.loads(result.manifest_path.read_text())
    chunk0 = tmp_path / "dist" / manifest["chunks"][0]["name"]
    flip(chunk0, 5)
    manifest["file"]["block_size"] = BLOCK_SIZE
    manifest["file"]["blocks"] = [sha(chunk0), sha(tmp_path / "dist" / manifest["chunks"][1]["name"])]
    result.manifest_path.write_text(json.dumps(manifest))
    rec_path = _record_path(models_dir, "local.gguf")
    record = json.loads(rec_path.read_text())
    record["blocks"][0] = sha(chunk0)  # edited: no longer the proven map
    rec_path.write_text(json.dumps(record))
    flip(cached, BLOCK_SIZE + 9)
    damaged = sha(cached)
    repaired = cli("repair", "local.gguf")
    assert repaired.code == 3 and "left as it was" in repaired.err, repaired.err
    assert sha(cached) == damaged  # block 0 was overwritten, then put back
    after = json.loads(rec_path.read_text())
    assert after["repairing"] is False and after["blocks"] == []
    assert list(models_dir.glob("*.part")) == [] and len(list(models_dir.iterdir())) == 2
    checked = cli("verify", "local.gguf")
    assert checked.code == 3, checked.out


def test_a_mirror_altering_a_manifest_block_hash_and_its_chunk_cannot_make_repair_corrupt_an_intact_model(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    """No local tampering: the model was installed by an older teadist (no block map in its record) and
    is intact; the mirror now serves its manifest with the same sha256s but one block hash altered, and
    the chunk bytes to match that hash."""
    from tests.servers import MirrorServer

    src = tmp_path / "src" / "remote.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    dist = tmp_path / "dist"
    split_file(src, dist, NullReporter(), chunk_size=BLOCK_SIZE)
    with MirrorServer(dist) as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("remote.gguf.manifest.json")).code == 0
        cached = models_dir / "remote.gguf"
        good = sha(cached)
        rec_path = _record_path(models_dir, "remote.gguf")
        record = json.loads(rec_path.read_text())
        record.pop("blocks"), record.pop("block_size")  # installed before block maps
        rec_path.write_text(json.dumps(record))
        manifest_path = dist / "remote.gguf.manifest.json"
        manifest = json.loads(manifest_path.read_text())
        chunk0 = dist / manifest["chunks"][0]["name"]
        flip(chunk0, 5)
        manifest["file"]["block_size"] = BLOCK_SIZE
        manifest["file"]["blocks"] = [sha(chunk0), sha(dist / manifest["chunks"][1]["name"])]
        manifest_path.write_text(json.dumps(manifest))
        repaired = cli("repair", "remote.gguf")
        assert sha(cached) == good, (repaired.code, repaired.err)


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE,
                                  2 * BLOCK_SIZE + 1])
def test_edges_of_the_last_block_verify_and_repair_review(size: int, tmp_path: Path, models_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch, fast_retries: None,
                                                    cli: Callable[..., Result]) -> None:
    from tests.servers import MirrorServer

    served = tmp_path / "served"
    write_big(served / "edge.gguf", size)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/edge", {"edge.gguf": served / "edge.gguf"}, commit="e" * 40)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert cli("fetch", "hf://org/edge/edge.gguf").code == 0
        cached = models_dir / "edge.gguf"
        record = json.loads(_record_path(models_dir, "edge.gguf").read_text())
        assert len(record["blocks"]) == -(-size // BLOCK_SIZE)
        assert cli("verify", "edge.gguf").code == 0
        if size == 0:
            assert cli("repair", "edge.gguf").code == 0
            return
        flip(cached, size - 1)
        last = (size - 1) // BLOCK_SIZE
        checked = cli("verify", "edge.gguf")
        assert checked.code == 3
        assert f"bytes {last * BLOCK_SIZE}-{size - 1}" in checked.out
        cdn.requests.clear()
        repaired = cli("repair", "edge.gguf", "--json")
        assert repaired.code == 0, repaired.err
        assert json.loads(repaired.out)["bytes_fetched"] == size - last * BLOCK_SIZE
        assert sha(cached) == sha(served / "edge.gguf")
        # a file grown by one byte: repair cuts it back, verify agrees
        with open(cached, "ab") as fh:
            fh.write(b"x")
        assert cli("verify", "edge.gguf").code == 3
        assert cli("repair", "edge.gguf").code == 0
        assert sha(cached) == sha(served / "edge.gguf") and cli("verify", "edge.gguf").code == 0


@pytest.mark.parametrize("kind", ["ignore_range", "corrupt", "truncate"])
def test_a_misbehaving_repair_source_changes_nothing_and_the_model_stays_unverified(
        kind: str, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None,
        cli: Callable[..., Result]) -> None:
    from tests.servers import Fault, MirrorServer

    size = 2 * BLOCK_SIZE + 5
    served = tmp_path / "served"
    write_big(served / "f.gguf", size)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/f", {"f.gguf": served / "f.gguf"}, commit="f" * 40)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert cli("fetch", "hf://org/f/f.gguf").code == 0
        cached = models_dir / "f.gguf"
        flip(cached, BLOCK_SIZE + 10)
        damaged = sha(cached)
        cdn.faults.append(Fault(kind, after=100, offset=BLOCK_SIZE + 20, times=100))
        repaired = cli("repair", "f.gguf")
        assert repaired.code != 0
        assert cdn.applied, "the fault must have happened"
        assert sha(cached) == damaged
        # nothing was left written: the record does not claim a repair under way
        assert json.loads(_record_path(models_dir, "f.gguf").read_text())["repairing"] is False
        assert cli("verify", "f.gguf").code == 3
        cdn.faults.clear()
        assert cli("repair", "f.gguf").code == 0
        assert sha(cached) == sha(served / "f.gguf")
        record = json.loads(_record_path(models_dir, "f.gguf").read_text())
        assert record["repairing"] is False


def test_a_repair_killed_mid_way_leaves_the_record_unverified_and_a_rerun_finishes(
        tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None,
        cli: Callable[..., Result]) -> None:

    from tests.servers import Fault, MirrorServer

    size = 3 * BLOCK_SIZE
    served = tmp_path / "served"
    write_big(served / "k.gguf", size)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/k", {"k.gguf": served / "k.gguf"}, commit="d" * 40)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert cli("fetch", "hf://org/k/k.gguf").code == 0
        cached = models_dir / "k.gguf"
        for i in range(3):
            flip(cached, i * BLOCK_SIZE + 7)
        cdn.faults.append(Fault("stall", after=1000, seconds=60, skip=1))
        _kill_repair_at_stall(cdn, "k.gguf")
        record = json.loads(_record_path(models_dir, "k.gguf").read_text())
        assert record["repairing"] is True
        assert cli("verify", "k.gguf").code == 3
        cdn.faults.clear()
        cdn.requests.clear()
        repaired = cli("repair", "k.gguf", "--json")
        assert repaired.code == 0, repaired.err
        assert json.loads(repaired.out)["blocks_refetched"] == 2  # block 0 was proven by the killed run
        assert sha(cached) == sha(served / "k.gguf")
        assert json.loads(_record_path(models_dir, "k.gguf").read_text())["repairing"] is False


def test_repair_of_a_symlinked_model_changes_neither_link_nor_target(
        hub: HubServer, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(cached.read_bytes())
    flip(outside, 100)
    before = outside.read_bytes()
    cached.unlink()
    cached.symlink_to(outside)
    repaired = cli("repair", "tiny.gguf")
    assert repaired.code != 0 and "Traceback" not in repaired.err
    assert outside.read_bytes() == before and cached.is_symlink()


def test_repair_refuses_a_model_file_the_user_replaced(
        hub: HubServer, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    mine = tmp_path / "mine.gguf"
    write_big(mine, cached.stat().st_size + 4096)  # the user's own model, put in its place
    os.replace(mine, cached)
    repaired = cli("repair", "tiny.gguf")
    print(repaired)
    # fetch says "replacing tiny.gguf ..." in this case; repair rewrites the user's file in place silently
    assert "replac" in repaired.err or repaired.code != 0, repaired.err


def test_a_record_left_mid_repair_is_hashed_whole_by_verify_refused_by_path_and_refetch_keeps_its_map(
        hub: HubServer, models_dir: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    rec_path = _record_path(models_dir, "tiny.gguf")
    record = json.loads(rec_path.read_text())
    blocks = record["blocks"]
    assert blocks and record["map_sha256"]
    record["repairing"] = True  # as a repair killed before it touched a byte leaves it
    rec_path.write_text(json.dumps(record))
    shown = cli("path", "tiny.gguf")
    assert shown.code != 0 and "tiny.gguf" not in shown.out, shown
    # fetch finds its own file with the right bytes: it records it again, block map included
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    again = json.loads(rec_path.read_text())
    assert again["repairing"] is False and again["blocks"] == blocks and again["map_sha256"]
    # verify of a record marked repairing hashes the whole file and, when it matches, clears the flag
    again["repairing"] = True
    rec_path.write_text(json.dumps(again))
    checked = cli("verify", "tiny.gguf")
    assert checked.code == 0, checked.out
    final = json.loads(rec_path.read_text())
    assert final["repairing"] is False and final["blocks"] == blocks
    assert cli("path", "tiny.gguf").code == 0


def test_verify_full_hashes_the_whole_file_even_when_the_proven_map_agrees(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    """The fast path checks against the proven block map; a map forged with its digest too (by someone
    who can write the record) fools it — `--full` hashes the whole file against the recorded sha256.
    (A one-block map whose hash is not the sha256 is never trusted at all.)"""
    from teadist.base.blocks import BlockHasher
    from teadist.cache.store import CacheRecord

    src = tmp_path / "src" / "local.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    assert cli("assemble", result.manifest_path).code == 0
    cached = models_dir / "local.gguf"
    rec_path = _record_path(models_dir, "local.gguf")
    flip(cached, BLOCK_SIZE + 3)
    learner = BlockHasher()
    with open(cached, "rb") as fh:
        while piece := fh.read(1 << 20):
            learner(piece)
    record = CacheRecord.parse(rec_path.read_bytes(), "local.gguf")
    record.set_blocks(learner.finish())
    st = os.stat(cached)
    record.mtime_ns, record.ctime_ns = st.st_mtime_ns, st.st_ctime_ns
    rec_path.write_text(json.dumps(record.to_dict()))
    assert cli("verify", "local.gguf").code == 0  # what the fast path can and cannot see
    full = cli("verify", "local.gguf", "--full", "--json")
    assert full.code == 3, full.out


# -- a repair killed by SIGKILL: what it left (the overwritten bytes it kept) is used or removed --

def _work_files(models_dir: Path, name: str) -> list[str]:
    work = models_dir / ".teadist" / "work" / name
    return sorted(p.name for p in work.rglob("*")) if work.exists() else []


def _kill_repair_at_stall(cdn: MirrorServer, name: str) -> None:
    """Run ``teadist repair name`` until the server stalls one of its ranges (its own log says so),
    then SIGKILL it and check it died of that signal."""
    proc = subprocess.Popen([str(TEADIST_BIN), "repair", name, "-q"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not cdn.applied and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert cdn.applied and cdn.applied[0].kind == "stall", "the stall must have happened"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_a_rerun_of_a_killed_repair_removes_the_bytes_it_kept_once_its_blocks_are_proven(
        tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None,
        cli: Callable[..., Result]) -> None:
    """The record's map is proven: the blocks the killed run wrote were checked against it, so the
    re-run keeps them and removes the kept old bytes (under the lock); nothing is left behind."""
    size = 3 * BLOCK_SIZE
    served = tmp_path / "served"
    write_big(served / "k.gguf", size)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:
        assert isinstance(cdn, MirrorServer) and isinstance(hub, HubServer)
        hub.add_repo("org/k", {"k.gguf": served / "k.gguf"}, commit="d" * 40)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert cli("fetch", "hf://org/k/k.gguf").code == 0
        assert _work_files(models_dir, "k.gguf") == []
        cached = models_dir / "k.gguf"
        for i in range(3):
            flip(cached, i * BLOCK_SIZE + 7)
        cdn.faults.append(Fault("stall", after=1000, seconds=60, skip=1))
        _kill_repair_at_stall(cdn, "k.gguf")
        left = _work_files(models_dir, "k.gguf")
        assert len(left) == 1, left  # the overwritten bytes the killed run kept
        cdn.faults.clear()
        repaired = cli("repair", "k.gguf", "--json")
        assert repaired.code == 0, repaired.err
        assert json.loads(repaired.out)["blocks_refetched"] == 2
        assert sha(cached) == sha(served / "k.gguf")
        assert _work_files(models_dir, "k.gguf") == []


@pytest.mark.parametrize("settler", ["repair", "prune"])
def test_a_rerun_of_a_killed_repair_guided_by_an_unproven_map_puts_the_old_bytes_back(
        settler: str, tmp_path: Path, models_dir: Path, fast_retries: None, cli: Callable[..., Result]) -> None:
    """No proven map (an older teadist's record): the killed run followed the mirror's map, which a
    hostile mirror forged together with a chunk's bytes, and wrote one forged block before it died.
    Only the whole sha256 can reject those bytes, and the killed run never got to it: the re-run
    must put the kept old bytes back, so the model is never left worse than before repair started.
    ``prune --partials`` (which takes the free lock and clears what is in flight) does the same."""
    dist = _two_chunk_release(tmp_path)
    with MirrorServer(dist) as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("g.gguf.manifest.json")).code == 0
        cached = models_dir / "g.gguf"
        rec_path = _record_path(models_dir, "g.gguf")
        record = json.loads(rec_path.read_text())
        record.pop("blocks"), record.pop("block_size"), record.pop("map_sha256")  # installed before block maps
        rec_path.write_text(json.dumps(record))
        flip(cached, BLOCK_SIZE + 3)  # block 1 damaged on disk
        damaged = sha(cached)
        manifest_path = dist / "g.gguf.manifest.json"
        manifest = json.loads(manifest_path.read_text())
        chunk0, chunk1 = (dist / c["name"] for c in manifest["chunks"])
        flip(chunk0, 5)  # the mirror's forgery: chunk 0's bytes and the model's block 0 hash
        manifest["file"]["block_size"] = BLOCK_SIZE
        manifest["file"]["blocks"] = [sha(chunk0), sha(chunk1)]
        manifest_path.write_text(json.dumps(manifest))
        mirror.faults.append(Fault("stall", after=1000, seconds=60, path=chunk1.name))
        _kill_repair_at_stall(mirror, "g.gguf")
        assert sha(cached) != damaged  # the forged block 0 was written before the kill
        assert len(_work_files(models_dir, "g.gguf")) == 1
        mirror.faults.clear()
        if settler == "prune":
            pruned = cli("prune", "--partials")
            assert pruned.code == 0, pruned.err
            assert sha(cached) == damaged, pruned.err
        repaired = cli("repair", "g.gguf")
        assert repaired.code != 0  # the whole sha256 still rejects what the forged map leads to
        assert sha(cached) == damaged, repaired.err
        assert _work_files(models_dir, "g.gguf") == []
        assert json.loads(rec_path.read_text())["repairing"] is True or cli("verify", "g.gguf").code == 3



def test_a_killed_repair_of_a_record_without_an_inode_never_settles_into_a_file_the_user_put_in_its_place(
        tmp_path: Path, models_dir: Path, fast_retries: None, cli: Callable[..., Result]) -> None:
    """A record of an older teadist names no inode. A repair of it was killed mid-way (its log left);
    the user then put their own file at the model's name. Settling the log must not write the old
    bytes into the user's file: the repair names the file it writes in its record before the first write."""
    dist = _two_chunk_release(tmp_path)
    with MirrorServer(dist) as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("g.gguf.manifest.json")).code == 0
        cached = models_dir / "g.gguf"
        rec_path = _record_path(models_dir, "g.gguf")
        record = json.loads(rec_path.read_text())
        for key in ("blocks", "block_size", "map_sha256", "inode", "mtime_ns", "ctime_ns"):
            record.pop(key)  # installed by an older teadist
        rec_path.write_text(json.dumps(record))
        flip(cached, 3)
        flip(cached, BLOCK_SIZE + 3)  # both blocks damaged: the second one's range stalls
        chunk1 = dist / json.loads((dist / "g.gguf.manifest.json").read_text())["chunks"][1]["name"]
        mirror.faults.append(Fault("stall", after=1000, seconds=60, path=chunk1.name))
        _kill_repair_at_stall(mirror, "g.gguf")
        assert len(_work_files(models_dir, "g.gguf")) == 1  # the killed run's undo log
        mine = tmp_path / "mine.gguf"
        write_big(mine, 2 * BLOCK_SIZE)
        theirs = sha(mine)
        os.replace(mine, cached)  # the user's own model, put in its place
        mirror.faults.clear()
        pruned = cli("prune", "--partials")
        assert pruned.code == 0, pruned.err
        assert _work_files(models_dir, "g.gguf") == []  # the log was settled
        assert sha(cached) == theirs  # the user's file keeps its bytes

# -- a whole-hash verify stamps only the file it hashed --

class _SwapWhileHashing:
    """A reporter whose first progress step (the hash pass is under way, its file open) puts another
    file of the same size in the model's place, as a second process could."""

    def __init__(self, path: Path, other: Path) -> None:
        self.path, self.other = path, other
        self.swapped_ino: int | None = None

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def task(self, description: str, total: int | None) -> _SwapWhileHashing:
        return self

    def advance(self, n: int) -> None:
        if self.swapped_ino is None:
            os.replace(self.other, self.path)
            self.swapped_ino = os.stat(self.path).st_ino

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("repairing", [True, False])
def test_a_file_swapped_in_while_verify_hashes_is_never_stamped_verified(
        repairing: bool, hub: HubServer, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    from teadist.cache.store import ModelCache
    from teadist.pipelines.verify import verify_cached

    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    rec_path = _record_path(models_dir, "tiny.gguf")
    record = json.loads(rec_path.read_text())
    record["repairing"] = repairing  # left mid-repair, or (False) installed before block maps
    if not repairing:
        record.pop("blocks"), record.pop("block_size"), record.pop("map_sha256")
    rec_path.write_text(json.dumps(record))
    planted = tmp_path / "planted.gguf"
    planted.write_bytes(os.urandom(cached.stat().st_size))
    swapper = _SwapWhileHashing(cached, planted)
    report = verify_cached(ModelCache(models_dir), "tiny.gguf", swapper)
    assert swapper.swapped_ino is not None and os.stat(cached).st_ino == swapper.swapped_ino  # the swap happened
    assert report.ok  # what was hashed was the real file
    after = json.loads(rec_path.read_text())
    stamped_for_planted = not after["repairing"] and after["inode"] == swapper.swapped_ino
    assert not stamped_for_planted, after
    assert cli("path", "tiny.gguf").code != 0 or cli("verify", "tiny.gguf").code != 0
    assert cli("verify", "tiny.gguf", "--full").code == 3


def test_a_mirror_altering_a_chunk_and_its_listed_hashes_cannot_make_repair_write_its_bytes(
        tmp_path: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    """The model's record holds its proven map (it passed the whole sha256 at install). The mirror
    then changes the bytes of the chunk holding a damaged block AND every hash it lists for them (the
    chunk's sha256, its block map, the model's block map): repair checks each fetched block against
    the record's map, never the mirror's, so it refuses those bytes and writes nothing."""
    src = tmp_path / "src" / "h.gguf"
    write_big(src, 3 * BLOCK_SIZE)
    dist = tmp_path / "dist"
    split_file(src, dist, NullReporter(), chunk_size=BLOCK_SIZE)
    with MirrorServer(dist) as mirror:
        assert isinstance(mirror, MirrorServer)
        assert cli("fetch", mirror.url_for("h.gguf.manifest.json")).code == 0
        cached = models_dir / "h.gguf"
        rec_path = _record_path(models_dir, "h.gguf")
        proven = json.loads(rec_path.read_text())
        assert len(proven["blocks"]) == 3 and proven["map_sha256"]
        flip(cached, BLOCK_SIZE + 11)
        damaged = sha(cached)
        manifest_path = dist / "h.gguf.manifest.json"
        manifest = json.loads(manifest_path.read_text())
        chunk1 = dist / manifest["chunks"][1]["name"]
        flip(chunk1, 11)  # the mirror's bytes for the damaged block: not the source's
        manifest["chunks"][1]["sha256"] = sha(chunk1)
        if "blocks" in manifest["chunks"][1]:
            manifest["chunks"][1]["blocks"] = [sha(chunk1)]
        manifest["file"]["blocks"][1] = sha(chunk1)
        manifest_path.write_text(json.dumps(manifest))
        mirror.requests.clear()
        repaired = cli("repair", "h.gguf", "--json")
        assert ranged_gets(mirror) == [(f"/{chunk1.name}", f"bytes=0-{BLOCK_SIZE - 1}")]  # it was sent
        assert repaired.code != 0 and "block hash" in repaired.err, repaired
        assert sha(cached) == damaged
        after = json.loads(rec_path.read_text())
        assert after["repairing"] is False and after["blocks"] == proven["blocks"]
        assert cli("verify", "h.gguf").code == 3


# -- an undo log that no killed repair of this very file wrote: settling it never grows the model, and
#    never writes through a second name --

def _plant_undo(models_dir: Path, name: str, entries: list[tuple[int, bytes, int]]) -> Path:
    """An undo log in the on-disk format (magic, then per entry: offset, length, the model's size before
    the first write, sha256 of the kept bytes, the kept bytes), at the name the layout gives it."""
    import struct

    work = models_dir / ".teadist" / "work" / name
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = b"teadist-undo-1\n\0"
    for start, old, before in entries:
        body += struct.pack(">QQQ32s", start, len(old), before, hashlib.sha256(old).digest()) + old
    log = work / "repair-undo.part"
    log.write_bytes(body)
    return log


def _as_left_mid_repair(models_dir: Path, name: str) -> None:
    """The record as a repair guided by an unproven map leaves it when killed: repairing, no proven map."""
    rec_path = _record_path(models_dir, name)
    record = json.loads(rec_path.read_text())
    record.pop("blocks"), record.pop("block_size"), record.pop("map_sha256")
    record["repairing"] = True
    rec_path.write_text(json.dumps(record))


@pytest.mark.parametrize("far", [2**40, 2**50])
def test_settling_a_forged_undo_log_never_grows_the_model_past_its_end(
        far: int, hub: HubServer, models_dir: Path, cli: Callable[..., Result]) -> None:
    """Entries are self-consistent (their sha256 match) but claim a span far past the file's end: a
    repair only ever kept bytes of blocks inside the file it then wrote, so settling must not write
    there (it made the model a 1 TiB sparse file; at 1 PiB every prune --partials and repair failed
    with 'File too large', for good, where the disk caps file sizes)."""
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    size, before = cached.stat().st_size, sha(cached)
    _as_left_mid_repair(models_dir, "tiny.gguf")
    log = _plant_undo(models_dir, "tiny.gguf", [(far, b"x" * 16, far + 16)])
    pruned = cli("prune", "--partials")
    assert pruned.code == 0, pruned.err
    assert not log.exists()  # the log was read and settled
    assert cached.stat().st_size == size
    assert sha(cached) == before


def test_settling_an_undo_log_never_writes_into_a_model_another_name_shares(
        hub: HubServer, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    """A killed repair left its log; the user then hard-linked the model elsewhere. Repair itself never
    writes a hard-linked file in place (the other name must keep its bytes): settling must not either."""
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    _as_left_mid_repair(models_dir, "tiny.gguf")
    kept = bytes(b ^ 0xFF for b in cached.read_bytes()[:4096])  # what the killed run overwrote, by its log
    size = cached.stat().st_size
    log = _plant_undo(models_dir, "tiny.gguf", [(0, kept, size)])
    other = tmp_path / "elsewhere.gguf"
    os.link(cached, other)
    assert os.stat(other).st_nlink == 2
    theirs = other.read_bytes()
    pruned = cli("prune", "--partials")
    assert pruned.code == 0, pruned.err
    assert not log.exists()  # the log was settled
    assert other.read_bytes() == theirs  # the other name keeps its bytes


def test_settling_an_undo_log_of_endless_empty_entries_keeps_memory_bounded(
        hub: HubServer, models_dir: Path, cli: Callable[..., Result]) -> None:
    """1.5 million intact but empty entries, all at offset 0 (84 MB of log): a repair keeps one entry per
    block it writes, blocks in ascending order and at least MIN_BLOCK_SIZE apart, so at most one entry
    per 64 KiB of the model is ever real. Settling held every entry in memory first (about 100 bytes
    each, ~6 s per 2 million): a 1 GB log took 2 GB."""
    import struct

    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    size, before = cached.stat().st_size, sha(cached)
    _as_left_mid_repair(models_dir, "tiny.gguf")
    log = _plant_undo(models_dir, "tiny.gguf", [])
    entry = struct.pack(">QQQ32s", 0, 0, size, hashlib.sha256(b"").digest())
    with open(log, "ab") as fh:
        for _ in range(15):
            fh.write(entry * 100_000)
    assert log.stat().st_size > 80 * MB
    # Measured from a small intermediate process: a child forked from this test would start from its RSS.
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(p.returncode, u.ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", code, str(TEADIST_BIN), "prune", "--partials"],
                          capture_output=True, text=True, timeout=300)
    rc, rss_kb = proc.stdout.split()
    assert rc == "0", proc.stderr
    assert not log.exists()  # the log was read and settled
    assert int(rss_kb) < 100 * 1024, f"peak {int(rss_kb) // 1024} MB"
    assert (cached.stat().st_size, sha(cached)) == (size, before)


@pytest.mark.parametrize("settler", ["repair", "prune"])
def test_settling_never_reads_or_removes_an_undo_log_through_a_symlinked_work_folder(
        settler: str, hub: HubServer, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    """The target's work folder is a symlink to a folder of the user's that holds a file of the undo
    log's name (in the log's format, as a copy of an old log would be). Settling must neither put
    its bytes into the model nor remove it: only teadist's own folders are read or cleared."""
    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    before = sha(cached)
    _as_left_mid_repair(models_dir, "tiny.gguf")
    log = _plant_undo(models_dir, "tiny.gguf", [(0, b"\0" * 4096, cached.stat().st_size)])
    elsewhere = tmp_path / "mine"
    os.replace(log.parent, elsewhere)
    os.symlink(elsewhere, log.parent)
    assert (log.parent / log.name).exists()  # reachable through the link
    mine = (elsewhere / log.name).read_bytes()
    if settler == "prune":
        assert cli("prune", "--partials").code == 0
    else:
        refused = cli("repair", "tiny.gguf")
        assert refused.code != 0 and "symlink" in refused.err and "Traceback" not in refused.err, refused.err
    assert (elsewhere / log.name).read_bytes() == mine  # the user's file stays
    assert cached.read_bytes()[:4096] != b"\0" * 4096 and (settler == "repair" or sha(cached) == before)
