"""It fits, or it says so before the first byte: disk space (temp files count) and memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.base.fsutil import free_bytes
from teadist.base.progress import NullReporter
from teadist.formats.gguf_info import read_info
from teadist.pipelines.fit import kv_cache_bytes, memory_needed
from teadist.pipelines.split import split_file
from tests.helpers import Result, write_random
from tests.servers import Fault, HubServer, MirrorServer


def _model_bytes_requested(server: MirrorServer, name: str) -> list[str]:
    return [r.path for r in server.requests if r.method == "GET" and name in r.path and "manifest" not in r.path]


def test_chunked_fetch_counts_its_chunks_before_the_first_byte(small_disk: Path, tmp_path: Path,
                                                               cli: Callable[..., Result]) -> None:
    """2 MB of chunks plus the 2 MB file they assemble into cannot fit in 3 MB, though the file alone would."""
    model = tmp_path / "m.gguf"
    write_random(model, 2_000_000)
    split_file(model, tmp_path / "dist", NullReporter(), chunk_size=500_000)
    assert model.stat().st_size < free_bytes(small_disk) < 2 * model.stat().st_size  # the fault is real
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        result = cli("fetch", server.url_for("m.gguf.manifest.json"), "--cache-dir", small_disk / "models")
    assert result.code == 1, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: not enough free space")
    assert "need 4.00 MB" in errors[0] and "MB free" in errors[0]  # 4 chunks of 0.5 MB + the 2 MB file
    assert _model_bytes_requested(server, "part-") == []
    assert not (small_disk / "models" / "m.gguf").exists()


def test_hub_fetch_too_big_asks_for_no_byte(small_disk: Path, tmp_path: Path, cli: Callable[..., Result],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    served.mkdir()
    write_random(served / "big.gguf", 4_000_000)
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:  # type: ignore[arg-type]
        assert isinstance(hub, HubServer) and isinstance(cdn, MirrorServer)
        hub.add_repo("org/repo", {"big.gguf": served / "big.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = cli("fetch", "hf://org/repo/big.gguf", "--cache-dir", small_disk / "models")
    assert result.code == 1, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: not enough free space")
    assert "need 4.00 MB" in errors[0] and "MB free" in errors[0]
    assert _model_bytes_requested(cdn, "big.gguf") == []
    assert [r for r in hub.requests if r.method == "GET" and r.path.endswith("big.gguf")] == []


def test_memory_need_is_weights_plus_kv_cache(tiny_model: Path) -> None:
    info = read_info(tiny_model)
    assert info.layers and info.kv_heads and info.heads and info.embedding_length and info.context_length
    need = memory_needed(info)
    assert need.context == info.context_length
    head = info.embedding_length // info.heads
    assert need.kv_cache == 2 * info.layers * info.context_length * info.kv_heads * head * 2
    assert need.weights == info.size - info.data_offset
    assert kv_cache_bytes(info, 2 * info.context_length) == 2 * (need.kv_cache or 0)


def test_inspect_prints_the_memory_need(tiny_model: Path, cli: Callable[..., Result]) -> None:
    info = read_info(tiny_model)
    plain = cli("inspect", tiny_model)
    assert plain.code == 0, plain.err
    assert "memory:" in plain.out and f"context {info.context_length}" in plain.out
    report = json.loads(cli("inspect", tiny_model, "--ctx", "64", "--json").out)
    assert report["memory"]["context"] == 64
    assert report["memory"]["total"] == report["memory"]["weights"] + report["memory"]["kv_cache"]
    assert report["memory"]["verdict"] in ("fits", "tight", "too-big")
    assert cli("inspect", tiny_model, "--ctx", "0").code == 2


def test_models_shows_whether_each_fits(cli: Callable[..., Result]) -> None:
    listing = json.loads(cli("models", "--json").out)
    assert listing["memory"] > 0
    assert {row["fits"] for row in listing["models"] if row["size"]} <= {"fits", "tight", "too-big"}
    assert "FITS" in cli("models").out


def test_fetch_warns_when_the_model_needs_more_memory_than_the_machine_has(tmp_path: Path,
                                                                          cli: Callable[..., Result]) -> None:
    """A tiny model whose header claims a context so long its KV cache outgrows any machine here."""
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.fit import machine_memory

    model = make_tiny_model(tmp_path / "long.gguf", n_ctx=2**31 - 1)
    need = memory_needed(read_info(model))
    memory = machine_memory()
    assert memory is not None and need.total > memory  # the condition is real
    split_file(model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
    result = cli("fetch", tmp_path / "dist" / "long.gguf.manifest.json")
    assert result.code == 0, result.err
    assert "warning: long.gguf needs" in result.err and "at 4096 tokens" in result.err
    assert cli("fetch", tmp_path / "dist" / "long.gguf.manifest.json", "--quiet").err == ""


def test_a_partial_chunk_already_on_disk_counts_as_written(small_disk: Path, tmp_path: Path,
                                                           cli: Callable[..., Result],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One 1.2 MB chunk, 1.1 MB of it already downloaded: 0.1 MB to go + the 1.2 MB file fit in ~1.8 MB free."""
    monkeypatch.setenv("TEADIST_RETRIES", "1")
    write_random(tmp_path / "m.gguf", 1_200_000)
    split_file(tmp_path / "m.gguf", tmp_path / "dist", NullReporter(), chunk_size=1_900_000)
    cache = small_disk / "models"
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault("truncate", after=1_100_000, path="part-00001-of-00001"))
        first = cli("fetch", server.url_for("m.gguf.manifest.json"), "--cache-dir", cache, "--jobs", "1")
        assert first.code != 0 and server.applied_kinds() == ["truncate"]  # the partial is real
        partials = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size >= 1_000_000]
        assert partials
        assert 1_300_000 < free_bytes(small_disk) < 2_400_000  # fits with the partial, not without it
        second = cli("fetch", server.url_for("m.gguf.manifest.json"), "--cache-dir", cache, "--jobs", "1")
    assert second.code == 0, second.err


def test_split_that_cannot_fit_writes_no_chunk(small_disk: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    """split compares the free space with all it will write before the first byte."""
    write_random(tmp_path / "big.bin", 4_000_000)
    assert free_bytes(small_disk) < 4_000_000  # the fault is real
    got = cli("split", tmp_path / "big.bin", "--chunk-size", "1M", "--out", small_disk / "out")
    assert got.code == 1 and "need" in got.err, got.err
    left = sorted(p.name for p in (small_disk / "out").iterdir()) if (small_disk / "out").exists() else []
    assert left == [], f"split wrote {left} before refusing"


@pytest.mark.parametrize("ctx", [str(10**30), str(2**24 + 1), "0"])
def test_inspect_ctx_out_of_range_is_a_usage_error(ctx: str, tiny_model: Path, cli: Callable[..., Result]) -> None:
    got = cli("inspect", tiny_model, "--ctx", ctx)
    assert got.code == 2, got.out[-300:]
