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
