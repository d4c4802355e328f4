from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.base.blocks import BLOCK_SIZE
from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from tests.helpers import Result, sha, write_random
from tests.test_repair import flip, write_big


@pytest.fixture
def split_model(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "model.gguf"
    write_random(src, 50_000)
    split_file(src, tmp_path / "chunks", NullReporter(), chunk_size=10_000)
    return src, tmp_path / "chunks" / "model.gguf.manifest.json"


def test_verify_chunk_folder_reports_each_state(split_model: tuple[Path, Path], cli: Callable[..., Result]) -> None:
    _, manifest = split_model
    folder = manifest.parent
    assert cli("verify", manifest).code == 0
    (folder / "model.gguf.part-00002-of-00005").unlink()
    victim = folder / "model.gguf.part-00004-of-00005"
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    (folder / "model.gguf.part-00005-of-00005").write_bytes(b"x")
    result = cli("verify", folder, "--manifest", manifest, "--json")
    assert result.code == 3
    states = {i["name"]: i["status"] for i in json.loads(result.out)["items"]}
    assert states == {
        "model.gguf.part-00001-of-00005": "OK",
        "model.gguf.part-00002-of-00005": "MISSING",
        "model.gguf.part-00003-of-00005": "OK",
        "model.gguf.part-00004-of-00005": "MISMATCH",
        "model.gguf.part-00005-of-00005": "MISMATCH",
    }
    text = cli("verify", manifest)
    assert text.code == 3
    assert "MISSING   model.gguf.part-00002-of-00005" in text.out
    assert "3 of 5 items bad" in text.err


def test_verify_file_against_manifest_names_the_bad_range(split_model: tuple[Path, Path], tmp_path: Path,
                                                          cli: Callable[..., Result]) -> None:
    src, manifest = split_model
    assert cli("verify", src, "--manifest", manifest).code == 0
    raw = bytearray(src.read_bytes())
    raw[25_000] ^= 1
    src.write_bytes(bytes(raw))
    result = cli("verify", src, "--manifest", manifest, "--json")
    assert result.code == 3
    bad = [i["name"] for i in json.loads(result.out)["items"] if i["status"] != "OK"]
    assert bad == ["model.gguf.part-00003-of-00005"]
    src.write_bytes(bytes(raw[:-7]))
    result = cli("verify", src, "--manifest", manifest, "--json")
    assert result.code == 3
    assert any("size 49993" in i["detail"] for i in json.loads(result.out)["items"])


def test_verify_cached_model_by_path_name_and_whole_cache(split_model: tuple[Path, Path], tmp_path: Path,
                                                         cli: Callable[..., Result]) -> None:
    _, manifest = split_model
    cache = tmp_path / "cache"
    assert cli("assemble", manifest, "--cache-dir", cache).code == 0
    assert cli("verify", cache / "model.gguf", "--cache-dir", cache).code == 0
    assert cli("verify", "model", "--cache-dir", cache).code == 0
    assert cli("verify", "--cache-dir", cache).code == 0
    with open(cache / "model.gguf", "r+b") as fh:
        fh.seek(10)
        fh.write(b"\0")
    result = cli("verify", "--cache-dir", cache)
    assert result.code == 3 and "MISMATCH  model.gguf" in result.out
    assert cli("verify", "nonexistent", "--cache-dir", cache).code == 1


def test_verify_uncached_file_without_manifest_is_a_usage_error(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"x")
    result = cli("verify", path)
    assert result.code == 2 and "--manifest" in result.err


def test_bytes_appended_to_a_cached_model_are_a_mismatch(split_model: tuple[Path, Path], tmp_path: Path,
                                                         cli: Callable[..., Result]) -> None:
    """Issue 10, defect 2: verify checks the exact size, not only the first `size` bytes."""
    _, manifest = split_model
    cache = tmp_path / "cache"
    assert cli("assemble", manifest, "--cache-dir", cache).code == 0
    with open(cache / "model.gguf", "ab") as fh:
        fh.write(b"appended")
    by_name = cli("verify", "model", "--cache-dir", cache)
    assert by_name.code == 3, by_name.out
    assert "size" in by_name.out
    whole = cli("verify", "--cache-dir", cache)
    assert whole.code == 3 and "MISMATCH  model.gguf" in whole.out


def test_a_model_deleted_by_hand_is_reported_and_its_record_removable(split_model: tuple[Path, Path],
                                                                      tmp_path: Path,
                                                                      cli: Callable[..., Result]) -> None:
    """Issue 10, defect 13: an orphan record is MISSING (exit 3), listed, and `rm` clears it."""
    _, manifest = split_model
    cache = tmp_path / "cache"
    assert cli("assemble", manifest, "--cache-dir", cache).code == 0
    (cache / "model.gguf").unlink()
    result = cli("verify", "--cache-dir", cache)
    assert result.code == 3 and "MISSING   model.gguf" in result.out, (result.out, result.err)
    listing = json.loads(cli("list", "--cache-dir", cache, "--json").out)
    assert [m["file"] for m in listing["models"]] == ["model.gguf"]
    removed = cli("rm", "model", "--cache-dir", cache)
    assert removed.code == 0, removed.err
    assert cli("verify", "--cache-dir", cache).code == 0
    leftovers = [p.relative_to(cache) for p in cache.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def _rewrite(manifest: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))


def test_a_chunk_folder_whose_manifest_lies_about_the_whole_file_fails(split_model: tuple[Path, Path],
                                                                       cli: Callable[..., Result]) -> None:
    """Review finding 1: every chunk matches, but the manifest's whole-file sha256 was altered —
    what assemble would build is not the file the manifest names, so verify must fail."""
    src, manifest = split_model
    assert cli("verify", manifest).code == 0
    _rewrite(manifest, lambda d: d["file"].update(sha256="0" * 64))
    folder = cli("verify", manifest, "--json")
    assert folder.code == 3, folder.out
    bad = [i for i in json.loads(folder.out)["items"] if i["status"] != "OK"]
    assert [i["name"] for i in bad] == ["model.gguf"] and "whole file" in bad[0]["detail"]
    against = cli("verify", src, "--manifest", manifest)
    assert against.code == 3, against.out


def test_gguf_shards_whose_recipe_or_whole_hash_was_altered_fail(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 1: for GGUF shards the recipe is part of what is verified: shards that all
    match, with a rebuild recipe altered, would rebuild another file."""
    import base64

    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "t.gguf", seed=7)
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=60_000)
    manifest = result.manifest_path
    assert cli("verify", manifest).code == 0
    original = manifest.read_text()

    def flip_literal(d: dict) -> None:  # type: ignore[type-arg]
        piece = next(p for p in d["rebuild"]["pieces"] if "literal" in p)
        raw = bytearray(base64.b64decode(piece["literal"]))
        raw[0] ^= 1
        piece["literal"] = base64.b64encode(bytes(raw)).decode()

    _rewrite(manifest, flip_literal)
    altered = cli("verify", manifest, "--json")
    assert altered.code == 3, altered.out
    manifest.write_text(original)
    _rewrite(manifest, lambda d: d["file"].update(sha256="f" * 64))
    assert cli("verify", manifest).code == 3


# -- from the hostile review of issue 12: a manifest's sha256 is the final word over its block maps --

def test_verify_against_a_manifest_whose_block_map_is_another_file_fails(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "m.gguf"
    write_big(src, 2 * BLOCK_SIZE + 7)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    manifest = json.loads(result.manifest_path.read_text())
    other = tmp_path / "other.gguf"
    other.write_bytes(src.read_bytes())
    flip(other, 5)
    # keep the original's sha256, but give the file a block map of the other bytes; same with the chunks
    with open(other, "rb") as fh:
        manifest["file"]["blocks"] = [hashlib.sha256(fh.read(BLOCK_SIZE)).hexdigest() for _ in range(3)]
    manifest["file"]["block_size"] = BLOCK_SIZE
    for chunk in manifest["chunks"]:
        chunk.pop("blocks", None), chunk.pop("block_size", None)
    manifest["format"] = "single"
    manifest.pop("chunks")
    bad = tmp_path / "bad.manifest.json"
    bad.write_text(json.dumps(manifest))
    assert sha(other) != manifest["file"]["sha256"]
    checked = cli("verify", other, "--manifest", bad)
    assert checked.code == 3, checked.out


def test_verify_of_a_chunk_folder_checks_the_chunk_sha256_over_its_block_map(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "src" / "m.gguf"
    write_big(src, 2 * BLOCK_SIZE)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    manifest = json.loads(result.manifest_path.read_text())
    first = tmp_path / "dist" / manifest["chunks"][0]["name"]
    flip(first, 5)
    manifest["chunks"][0]["block_size"] = BLOCK_SIZE
    manifest["chunks"][0]["blocks"] = [sha(first)]
    manifest["chunks"][1]["block_size"] = BLOCK_SIZE
    manifest["chunks"][1]["blocks"] = [sha(tmp_path / "dist" / manifest["chunks"][1]["name"])]
    result.manifest_path.write_text(json.dumps(manifest))
    assert sha(first) != manifest["chunks"][0]["sha256"]
    checked = cli("verify", result.manifest_path)
    assert checked.code == 3, checked.out


def test_verify_of_a_chunk_folder_checks_each_chunk_sha256_even_with_a_matching_block_map(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    """The chunk's bytes, its block map and the whole file agree; its listed sha256 does not: the
    manifest contradicts itself, and the sha256 is the final word."""
    src = tmp_path / "src" / "m.gguf"
    write_big(src, 2 * BLOCK_SIZE + 3)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["chunks"][0]["blocks"]
    manifest["chunks"][0]["sha256"] = "0" * 64
    result.manifest_path.write_text(json.dumps(manifest))
    checked = cli("verify", result.manifest_path)
    assert checked.code == 3, checked.out
    assert "MISMATCH" in checked.out.splitlines()[0], checked.out


def test_verify_against_a_manifest_whose_block_map_disagrees_with_its_sha256_fails(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "m.gguf"
    write_big(src, 2 * BLOCK_SIZE + 3)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=BLOCK_SIZE)
    manifest = json.loads(result.manifest_path.read_text())
    manifest["file"]["blocks"][1] = "1" * 64
    result.manifest_path.write_text(json.dumps(manifest))
    checked = cli("verify", src, "--manifest", result.manifest_path)
    assert checked.code == 3, checked.out
    assert "block map" in checked.out, checked.out


@pytest.mark.parametrize("change", ["none", "flip", "chunk-sha", "file-sha", "file-block"])
def test_verify_against_a_one_chunk_manifest_reads_the_file_once_and_keeps_both_checks(
        tmp_path: Path, cli: Callable[..., Result], change: str) -> None:
    """A manifest whose only chunk is the whole file: the chunk's row and the whole file's row still
    say what each check found (the chunk's sha256, the file's sha256, the file's block map)."""
    src = tmp_path / "m.gguf"
    write_big(src, 2 * BLOCK_SIZE + 3)
    result = split_file(src, tmp_path / "dist", NullReporter(), chunk_size=4 * BLOCK_SIZE)
    manifest = json.loads(result.manifest_path.read_text())
    assert len(manifest["chunks"]) == 1 and manifest["file"]["blocks"]
    if change == "flip":
        flip(src, BLOCK_SIZE + 5)
    elif change == "chunk-sha":
        manifest["chunks"][0]["sha256"] = "0" * 64
    elif change == "file-sha":
        manifest["file"]["sha256"] = "0" * 64
    elif change == "file-block":
        manifest["file"]["blocks"][2] = "1" * 64
    result.manifest_path.write_text(json.dumps(manifest))
    checked = cli("verify", src, "--manifest", result.manifest_path, "--json")
    items = {i["name"]: i for i in json.loads(checked.out)["items"]}
    chunk, whole = manifest["chunks"][0]["name"], "m.gguf"
    if change == "none":
        assert checked.code == 0 and [i["status"] for i in items.values()] == ["OK", "OK"], checked.out
        return
    assert checked.code == 3, checked.out
    if change == "flip":
        assert items[chunk]["status"] == "MISMATCH" and whole not in items, checked.out
        assert items[chunk]["damaged"] == [{"start": BLOCK_SIZE, "end": 2 * BLOCK_SIZE}], checked.out
    elif change == "chunk-sha":
        assert items[chunk]["status"] == "MISMATCH" and whole not in items, checked.out
    elif change == "file-sha":
        assert items[chunk]["status"] == "OK" and items[whole]["status"] == "MISMATCH", checked.out
        assert "the manifest says 0000" in items[whole]["detail"], checked.out
    else:
        assert items[chunk]["status"] == "OK" and items[whole]["status"] == "MISMATCH", checked.out
        assert "block map" in items[whole]["detail"], checked.out
