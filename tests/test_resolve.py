"""One way to name a model: every command takes a registry name with or without its tag, a cached
model's name or its file name; a local file never hijacks a registry name."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teadist.formats.manifest import FileRecord, HfSource, Manifest, write_manifest
from teadist.sources import registry
from tests.helpers import Result
from tests.servers import HubServer, file_sha256

PHI_FILE = "microsoft_Phi-4-mini-instruct-Q3_K_S.gguf"


@pytest.fixture
def phi_registry(tmp_path: Path, served: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A registry whose phi-4-mini (default tag q3_k_s) is the tiny model on the loopback Hub."""
    model = served / PHI_FILE
    model.write_bytes((served / "tiny.gguf").read_bytes())
    hub.add_repo("bartowski/phi", {PHI_FILE: model}, commit="d" * 40)
    folder = tmp_path / "registry"
    folder.mkdir()
    write_manifest(Manifest(name="phi-4-mini", tag="q3_k_s", default_tag=True,
                            file=FileRecord(PHI_FILE, model.stat().st_size, file_sha256(model)), format="single",
                            sources=[HfSource("bartowski/phi", PHI_FILE)]), folder / "phi-4-mini.json")
    monkeypatch.setattr(registry, "registry_dir", lambda: folder)
    registry._entries.cache_clear()
    yield folder
    registry._entries.cache_clear()


@pytest.mark.parametrize("name", ["phi-4-mini", "phi-4-mini:q3_k_s", "PHI-4-mini:Q3_K_S", PHI_FILE])
def test_path_verify_rm_accept_every_name_of_a_fetched_model(name: str, phi_registry: Path, models_dir: Path,
                                                            cli: Callable[..., Result]) -> None:
    fetched = cli("fetch", "phi-4-mini")
    assert fetched.code == 0, fetched.err
    assert fetched.out.strip() == str(models_dir / PHI_FILE)
    found = cli("path", name)
    assert found.code == 0, found.err
    assert found.out.strip() == str(models_dir / PHI_FILE)
    listed = json.loads(cli("list", name, "--json").out)["models"]
    assert [m["file"] for m in listed] == [PHI_FILE]
    used = json.loads(cli("du", name, "--json").out)["models"]
    assert [m["file"] for m in used] == [PHI_FILE]
    checked = cli("verify", name)
    assert checked.code == 0, checked.err
    assert "OK" in checked.out
    removed = cli("rm", name)
    assert removed.code == 0, removed.err
    assert not (models_dir / PHI_FILE).exists()


def test_a_local_file_never_hijacks_a_registry_name(phi_registry: Path, tmp_path: Path, hub: HubServer,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    cli: Callable[..., Result]) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "phi-4-mini").write_text("{}")
    monkeypatch.chdir(folder)
    result = cli("fetch", "phi-4-mini")
    assert result.code == 2, result.err
    assert "./phi-4-mini" in result.err and "both" in result.err
    assert hub.requests == []
    # the explicit path is a path (a manifest that does not parse), never the registry model
    assert "phi-4-mini" in cli("fetch", "./phi-4-mini").err
    os.remove(folder / "phi-4-mini")
    assert cli("fetch", "phi-4-mini").code == 0


def test_path_hands_out_only_a_recorded_verified_model(phi_registry: Path, models_dir: Path,
                                                       cli: Callable[..., Result]) -> None:
    models_dir.mkdir(parents=True)
    (models_dir / PHI_FILE).write_bytes(b"put here by hand")
    result = cli("path", "phi-4-mini")
    assert result.code == 1 and result.out == ""
    assert "teadist fetch phi-4-mini" in result.err
    (models_dir / PHI_FILE).unlink()
    assert cli("fetch", "phi-4-mini").code == 0
    with open(models_dir / PHI_FILE, "r+b") as fh:  # changed after teadist verified it
        fh.write(b"X")
    changed = cli("path", "phi-4-mini")
    assert changed.code == 1 and changed.out == ""
    assert "changed" in changed.err


def test_path_counts_as_a_use(phi_registry: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", "phi-4-mini").code == 0
    record = models_dir / ".teadist" / "records" / f"{PHI_FILE}.json"
    data = json.loads(record.read_text())
    data["last_used"] = "2000-01-01T00:00:00+00:00"
    record.write_text(json.dumps(data))
    assert cli("path", "phi-4-mini").code == 0
    assert json.loads(record.read_text())["last_used"] > "2020"


# -- one order everywhere: a registry name means the registry's model ----------------------------
def _install_as(cli: Callable[..., Result], tmp_path: Path, name: str, seed: int, out: str) -> Path:
    """A model of our own, installed in the cache under the recorded name ``name``."""
    from teadist.formats.tinymodel import make_tiny_model

    model = make_tiny_model(tmp_path / f"m{seed}.gguf", seed=seed)
    assert cli("split", model, "--name", name, "--out", tmp_path / out, "-q").code == 0
    assert cli("assemble", tmp_path / out / f"m{seed}.gguf.manifest.json", "-q").code == 0
    return model


def test_a_registry_name_is_never_taken_over_by_another_models_recorded_name(
        phi_registry: Path, models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    fetched = Path(cli("fetch", "phi-4-mini", "-q").out.strip())
    _install_as(cli, tmp_path, "phi-4-mini", 42, "d2")
    assert (models_dir / "m42.gguf").is_file() and fetched.is_file()
    got = cli("path", "phi-4-mini")
    assert Path(got.out.strip()) == fetched, f"path phi-4-mini handed out {got.out.strip()}"
    assert [m["file"] for m in json.loads(cli("list", "phi-4-mini", "--json").out)["models"]] == [PHI_FILE]
    assert cli("rm", "phi-4-mini").code == 0
    assert (models_dir / "m42.gguf").is_file(), "rm phi-4-mini deleted m42.gguf, a different model"
    assert not fetched.exists()


def test_a_name_two_models_answer_to_in_different_case_is_refused(
        models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    _install_as(cli, tmp_path, "Tiny", 1, "d1")
    _install_as(cli, tmp_path, "tiny", 2, "d2")
    got = cli("path", "TINY")
    assert got.code == 2, f"TINY silently resolved to {got.out.strip()} though two models answer to it"
    assert "m1.gguf" in got.err and "m2.gguf" in got.err
    assert cli("path", "Tiny").out.strip() == str(models_dir / "m1.gguf")  # the exact name is no ambiguity
    assert cli("rm", "TINY").code == 2 and (models_dir / "m1.gguf").is_file() and (models_dir / "m2.gguf").is_file()


def test_path_never_hands_out_a_kept_shard_model_whose_other_shard_changed(
        models_dir: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    from teadist.formats.tinymodel import make_tiny_model

    model = make_tiny_model(tmp_path / "big.gguf", seed=3)
    split = cli("split", model, "--format", "gguf", "--shard-size", "64k", "--out", tmp_path / "web", "-q",
                "--json")
    assert cli("fetch", json.loads(split.out)["manifest"], "--keep-shards", "-q").code == 0
    shards = sorted(models_dir.glob("big-*.gguf"))
    assert len(shards) > 1
    last = shards[-1]
    st = last.stat()
    with open(last, "r+b") as fh:  # one byte flipped in place, size and mtime kept
        fh.seek(st.st_size - 1)
        byte = fh.read(1)
        fh.seek(st.st_size - 1)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli("verify", "big").code == 3  # the fault is real: verify sees it
    got = cli("path", "big")
    assert got.code == 1, f"path handed out {got.out.strip()} whose shard {last.name} changed since verified"


def test_a_record_without_the_full_identity_is_hashed_before_it_is_handed_out(
        phi_registry: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    """An older teadist recorded size and mtime only: `path` checks the bytes before trusting it."""
    assert cli("fetch", "phi-4-mini", "-q").code == 0
    record = models_dir / ".teadist" / "records" / f"{PHI_FILE}.json"
    data = json.loads(record.read_text())
    data["ctime_ns"] = data["inode"] = None
    record.write_text(json.dumps(data))
    assert cli("path", "phi-4-mini").code == 0  # unchanged bytes: handed out
    model = models_dir / PHI_FILE
    st = model.stat()
    with open(model, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = cli("path", "phi-4-mini")
    assert got.code == 1, f"path handed out {got.out.strip()}, changed behind a size+mtime-only record"


def test_path_works_on_a_read_only_cache(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> None:
    """A verified model in a cache mounted read-only (a container volume): `path` and `model_path` still
    name it; noting the use is best effort."""
    import subprocess

    import teadist
    from teadist.base.progress import NullReporter
    from teadist.pipelines.split import split_file

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mounting a tmpfs is refused here")
    try:
        cache = mount / "models"
        split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
        assert cli("assemble", tmp_path / "dist" / "tiny-llama.gguf.manifest.json", "--cache-dir", cache,
                   "-q").code == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(OSError):
            (cache / "probe").write_bytes(b"x")  # the fault is real: read-only
        got = cli("path", "tiny-llama", "--cache-dir", cache)
        assert got.code == 0 and got.out.strip() == str(cache / "tiny-llama.gguf"), got.err
        try:
            assert teadist.model_path("tiny-llama", cache_dir=cache) == cache / "tiny-llama.gguf"
        except OSError as exc:
            pytest.fail(f"model_path raised a bare {type(exc).__name__}: {exc}")
        assert cli("verify", "tiny-llama", "--cache-dir", cache).code == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
