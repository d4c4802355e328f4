from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teadist.base.progress import NullReporter
from teadist.errors import UsageError
from teadist.formats.gguf_info import read_info
from teadist.formats.tinymodel import make_tiny_model
from teadist.pipelines.gguf_rebuild import rebuild_original
from teadist.pipelines.gguf_split import split_gguf
from tests.helpers import Result, files_in, sha

MODELS = [dict(seed=1), dict(seed=2, n_embd=96, n_layer=3), dict(seed=3, alignment=64), dict(seed=4, n_layer=1)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("shard-models")
    return [make_tiny_model(root / f"m{i}.gguf", **kw) for i, kw in enumerate(MODELS)]  # type: ignore[arg-type]


def _tensors(path: Path) -> dict[str, bytes]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {t.name: bytes(t.data.tobytes()) for t in reader.tensors}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.integers(0, len(MODELS) - 1), shard_size=st.integers(20_000, 2_000_000))
def test_shards_are_valid_and_rebuild_the_exact_original(models: list[Path], model: int, shard_size: int,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    src = models[model]
    out = tmp_path_factory.mktemp("shards")
    result = split_gguf(src, out, NullReporter(), shard_size=shard_size)
    names = [c.name for c in result.manifest.chunks]
    count = len(names)
    original = _tensors(src)
    seen: dict[str, bytes] = {}
    for index, name in enumerate(names):
        assert name == f"{src.stem}-{index + 1:05d}-of-{count:05d}.gguf"
        info = read_info(out / name)  # a valid GGUF, every tensor inside the file
        assert (info.split_no, info.split_count) == (index, count)
        assert info.alignment == read_info(src).alignment
        if index == 0:
            assert info.architecture == "llama" and info.vocab_size == 259 and info.chat_template
        seen.update(_tensors(out / name))
    assert seen == original  # every tensor once, bytes equal, never cut
    dest = tmp_path_factory.mktemp("rebuilt") / src.name
    rebuild_original(result.manifest, out, dest, NullReporter())
    assert dest.read_bytes() == src.read_bytes()
    assert sha(dest) == result.manifest.file.sha256


def test_unusual_bytes_are_kept_by_the_recipe(models: list[Path], tmp_path: Path) -> None:
    """Non-zero padding and trailing bytes can't come from shards: split stores them, rebuild is exact."""
    from teadist.formats.gguf_layout import read_layout

    src = tmp_path / "odd.gguf"
    raw = bytearray(models[0].read_bytes())
    layout = read_layout(models[0])
    if layout.data_offset > layout.info_end:
        raw[layout.info_end] = 0x7F  # non-zero header padding
    raw += b"trailing bytes a plain GGUF writer would never leave"
    src.write_bytes(bytes(raw))
    result = split_gguf(src, tmp_path / "out", NullReporter(), shard_size=100_000)
    assert any("literal" in p for p in (result.manifest.rebuild or {})["pieces"])
    dest = tmp_path / "rebuilt" / "odd.gguf"
    rebuild_original(result.manifest, tmp_path / "out", dest, NullReporter())
    assert dest.read_bytes() == bytes(raw)


def _swap_tensor_offsets(pieces: list[dict[str, object]]) -> None:
    first, second = [p for p in pieces if "shard" in p and p["offset"] != 24][:2]
    first["offset"], second["offset"] = second["offset"], first["offset"]


def _flip_literal(pieces: list[dict[str, object]]) -> None:
    import base64

    piece = next(p for p in pieces if "literal" in p)
    data = bytearray(base64.b64decode(str(piece["literal"])))
    data[-1] ^= 1
    piece["literal"] = base64.b64encode(bytes(data)).decode()


def _literal_as_zeros(pieces: list[dict[str, object]]) -> None:
    import base64

    at = next(i for i, p in enumerate(pieces) if "literal" in p)
    pieces[at] = {"zeros": len(base64.b64decode(str(pieces[at]["literal"])))}


@pytest.mark.parametrize("damage", [_swap_tensor_offsets, _flip_literal, _literal_as_zeros])
def test_a_recipe_that_would_not_rebuild_the_original_is_refused(models: list[Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  damage: Callable[[list[dict[str, object]]], None],
                                                                  ) -> None:
    """The proof that the shards rebuild the original: a recipe bug (here made on purpose) stops split
    before a manifest is written."""
    from teadist.errors import TeadistError
    from teadist.formats.gguf_recipe import make_recipe as real
    from teadist.pipelines import gguf_split

    def broken(*args: object) -> list[dict[str, object]]:
        pieces = real(*args)  # type: ignore[arg-type]
        damage(pieces)
        return pieces

    monkeypatch.setattr(gguf_split, "make_recipe", broken)
    with pytest.raises(TeadistError, match="would not rebuild the original exactly"):
        split_gguf(models[1], tmp_path / "out", NullReporter(), shard_size=100_000)
    assert not list((tmp_path / "out").glob("*.manifest.json"))


@pytest.mark.parametrize(("change", "said"), [("grow", "changed size while it was being split"),
                                              ("shrink", "shrank while it was being split")])
def test_a_model_that_changes_size_during_the_split_is_refused(models: list[Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               change: str, said: str) -> None:
    """The file is changed after its layout was read, before its bytes are: no manifest vouches for it."""
    import os

    from teadist.errors import TeadistError
    from teadist.pipelines import gguf_split

    src = tmp_path / "m.gguf"
    src.write_bytes(models[1].read_bytes())
    from teadist.formats.gguf_recipe import make_recipe as real

    def then_change(*args: object) -> list[dict[str, object]]:
        pieces = real(*args)  # type: ignore[arg-type]
        if change == "grow":
            with open(src, "ab") as fh:
                fh.write(b"appended while splitting")
        else:
            os.truncate(src, src.stat().st_size - 1000)
        return pieces

    monkeypatch.setattr(gguf_split, "make_recipe", then_change)
    with pytest.raises(TeadistError, match=said):
        split_gguf(src, tmp_path / "out", NullReporter(), shard_size=100_000)
    assert not list((tmp_path / "out").glob("*.manifest.json"))


def test_a_tensor_too_large_for_a_shard_is_named(models: list[Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import teadist.formats.gguf_layout as gguf_layout

    monkeypatch.setattr(gguf_layout, "SHARD_LIMIT", 50_000)
    with pytest.raises(UsageError, match=r"tensor 'token_embd.weight'"):
        split_gguf(models[0], tmp_path / "out", NullReporter(), shard_size=40_000)


def test_cli_split_gguf_assemble_verify_and_tampering(models: list[Path], tmp_path: Path,
                                                      cli: Callable[..., Result]) -> None:
    out = tmp_path / "web"
    result = cli("split", models[1], "--format", "gguf", "--shard-size", "150k", "--out", out, "--json")
    assert result.code == 0, result.err
    manifest = Path(json.loads(result.out)["manifest"])
    assert json.loads(manifest.read_text())["format"] == "gguf"
    assert cli("verify", manifest).code == 0
    rebuilt = cli("assemble", manifest, "--cache-dir", tmp_path / "cache")
    assert rebuilt.code == 0, rebuilt.err
    assert sha(tmp_path / "cache" / models[1].name) == sha(models[1])
    assert cli("verify", tmp_path / "cache" / models[1].name, "--manifest", manifest).code == 0
    victim = sorted(out.glob("*-00002-of-*.gguf"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x01  # one flipped byte in tensor data: llama.cpp would load it; the hash will not
    victim.write_bytes(bytes(raw))
    bad = cli("verify", manifest, "--json")
    assert bad.code == 3
    assert [i["name"] for i in json.loads(bad.out)["items"] if i["status"] != "OK"] == [victim.name]
    again = cli("assemble", manifest, "--out", tmp_path / "second" / "m.gguf")
    assert again.code == 3 and victim.name in again.err
    assert files_in(tmp_path / "second") == set()


@pytest.mark.tools
def test_native_llama_cpp_loads_shard_rebuilt_and_original_identically(tmp_path: Path) -> None:
    """llama.cpp (llama-cpp-python from PyPI) loads our first shard, our rebuilt file and the
    original; greedy generation of 16 tokens is identical in all three."""
    from llama_cpp import Llama

    src = make_tiny_model(tmp_path / "native.gguf", seed=7, n_embd=128, n_layer=4)
    result = split_gguf(src, tmp_path / "shards", NullReporter(), shard_size=400_000)
    assert len(result.manifest.chunks) >= 3
    rebuilt = tmp_path / "rebuilt" / src.name
    rebuild_original(result.manifest, tmp_path / "shards", rebuilt, NullReporter())
    outputs = []
    for path in (tmp_path / "shards" / result.manifest.chunks[0].name, rebuilt, src):
        llm = Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False, seed=0)
        out = llm.create_completion("Once upon a time", max_tokens=16, temperature=0.0, top_k=1, stream=False)
        assert isinstance(out, dict)
        outputs.append(out["choices"][0]["text"])
        assert out["usage"]["completion_tokens"] >= 16 or out["choices"][0]["finish_reason"] == "length"
        del llm
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0]


def test_fetch_gguf_manifest_rebuilds_or_keeps_shards(models: list[Path], tmp_path: Path, models_dir: Path,
                                                      cli: Callable[..., Result],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import MirrorServer

    monkeypatch.setenv("TEADIST_RETRY_BACKOFF", "0.01")
    src = models[2]  # custom alignment
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=60_000)
    first = result.manifest.chunks[0].name
    with MirrorServer(tmp_path / "web") as server:
        assert isinstance(server, MirrorServer)
        url = server.url_for(result.manifest_path.name)
        rebuilt = cli("fetch", url, "--json")
        assert rebuilt.code == 0, rebuilt.err
        assert sha(models_dir / src.name) == sha(src)  # the original, byte for byte
        kept = cli("fetch", url, "--keep-shards", "--json")
        assert kept.code == 0, kept.err
        assert json.loads(kept.out)["path"] == str(models_dir / first)
        again = cli("fetch", url, "--keep-shards", "--json")
        assert json.loads(again.out)["already_present"] is True
    for chunk in result.manifest.chunks:
        assert sha(models_dir / chunk.name) == chunk.sha256
    assert cli("path", first).out.strip() == str(models_dir / first)
    assert cli("verify", first).code == 0
    last = models_dir / result.manifest.chunks[-1].name
    raw = bytearray(last.read_bytes())
    raw[-1] ^= 1
    last.write_bytes(bytes(raw))
    assert cli("verify", first).code == 3


@pytest.mark.tools
def test_foreign_shards_are_merged_and_said_to_be_a_merge(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Shards written by gguf-py's own split writer (as llama-gguf-split would) come without a
    recipe: assemble merges them, says so, and the merge runs like the unsplit model."""
    from llama_cpp import Llama

    whole = make_tiny_model(tmp_path / "whole" / "foreign.gguf", seed=5)
    make_tiny_model(tmp_path / "split" / "foreign.gguf", seed=5, split_max_tensors=8)
    first = tmp_path / "split" / "foreign-00001-of-00003.gguf"
    result = cli("assemble", first, "--out", tmp_path / "merged" / "foreign.gguf", "--json")
    assert result.code == 0, result.err
    assert "this is a merge" in result.err
    merged = tmp_path / "merged" / "foreign.gguf"
    info = read_info(merged)
    assert info.split_count is None and info.tensor_count == read_info(whole).tensor_count
    assert _tensors(merged) == _tensors(whole)
    texts = []
    for path in (merged, whole, first):
        llm = Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False, seed=0)
        out = llm.create_completion("Hi", max_tokens=8, temperature=0.0, top_k=1, stream=False)
        assert isinstance(out, dict)
        texts.append(out["choices"][0]["text"])
        del llm
    assert texts[0] == texts[1] == texts[2]
    (tmp_path / "split" / "foreign-00002-of-00003.gguf").unlink()
    missing = cli("assemble", first, "--out", tmp_path / "m2" / "foreign.gguf")
    assert missing.code == 3 and "foreign-00002-of-00003.gguf is missing" in missing.err


def test_keep_shards_from_a_local_manifest_verifies_every_shard(models: list[Path], tmp_path: Path,
                                                               models_dir: Path, cli: Callable[..., Result]) -> None:
    result = split_gguf(models[1], tmp_path / "local", NullReporter(), shard_size=150_000)
    victim = tmp_path / "local" / result.manifest.chunks[1].name
    raw = bytearray(victim.read_bytes())
    raw[-2] ^= 0x01
    victim.write_bytes(bytes(raw))
    bad = cli("fetch", result.manifest_path, "--keep-shards")
    assert bad.code == 3 and victim.name in bad.err
    # each shard is its own target: the good ones may be installed (verified); the bad one never is
    assert victim.name not in files_in(models_dir)
    for name in files_in(models_dir) - {".teadist"}:
        assert sha(models_dir / name) == {c.name: c.sha256 for c in result.manifest.chunks}[name]
    raw[-2] ^= 0x01
    victim.write_bytes(bytes(raw))
    good = cli("fetch", result.manifest_path, "--keep-shards", "--json")
    assert good.code == 0, good.err
    # the whole-cache verify covers kept shards too, not only `verify NAME`
    assert cli("verify").code == 0
    installed = models_dir / result.manifest.chunks[-1].name
    data = bytearray(installed.read_bytes())
    data[-1] ^= 0x01
    installed.write_bytes(bytes(data))
    whole = cli("verify", "--json")
    assert whole.code == 3
    assert [i["name"] for i in json.loads(whole.out)["items"] if i["status"] != "OK"] == [installed.name]


def test_splitting_a_shard_again_is_refused(models: list[Path], tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Issue 10, defect 11: a shard already carries split.* keys; splitting it again would write them twice."""
    result = split_gguf(models[1], tmp_path / "web", NullReporter(), shard_size=150_000)
    first = tmp_path / "web" / result.manifest.chunks[0].name
    again = cli("split", first, "--format", "gguf", "--shard-size", "60k", "--out", tmp_path / "again")
    assert again.code == 2, again.err
    assert "already a shard" in again.err and "Traceback" not in again.err
    assert not (tmp_path / "again").exists() or not list((tmp_path / "again").iterdir())


def test_a_merge_of_foreign_shards_is_never_called_or_recorded_verified(tmp_path: Path,
                                                                        cli: Callable[..., Result]) -> None:
    """Review finding 2: shards without a recipe have no source hash; merging them into the cache
    over a recorded model must not leave that model's record vouching for the merge, and the
    result says it is a merge, not verified against a source hash."""
    from teadist.cache.store import ModelCache

    cache_dir = tmp_path / "cache"
    old = make_tiny_model(tmp_path / "old" / "foreign.gguf", seed=9)
    assert cli("split", old, "--out", tmp_path / "old" / "split", "--chunk-size", "100000").code == 0
    assert cli("assemble", tmp_path / "old" / "split" / "foreign.gguf.manifest.json",
               "--cache-dir", cache_dir).code == 0
    assert ModelCache(cache_dir).read_record("foreign.gguf") is not None
    make_tiny_model(tmp_path / "split" / "foreign.gguf", seed=5, split_max_tensors=8)
    result = cli("assemble", tmp_path / "split" / "foreign-00001-of-00003.gguf", "--cache-dir", cache_dir,
                 "--json")
    assert result.code == 0, result.err
    out = json.loads(result.out)
    assert out["merged"] is True and out["verified"] is False
    assert "merged, not verified against a source hash" in result.err
    record = ModelCache(cache_dir).read_record("foreign.gguf")
    assert record is None or (record.sha256 == sha(cache_dir / "foreign.gguf") and record.verified_at is None)
    assert "verified" not in cli("assemble", tmp_path / "split" / "foreign-00001-of-00003.gguf",
                                 "--cache-dir", cache_dir).err.replace("not verified", "")
