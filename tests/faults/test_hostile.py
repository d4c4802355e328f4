"""Hostile names: manifests and tarballs with traversal, absolute paths, symlinks, device names
and over-long names are refused before any write."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Result, files_in

pytestmark = pytest.mark.faults

HOSTILE = ["../../etc/passwd", "/etc/passwd", "..\\..\\win.ini", "C:evil.gguf", "CON", "nul.gguf", "aux",
           "x" * 256, "a\x00b", "tab\tname", ".", "..", " lead", "trail."]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["file", "chunk"])
def test_hostile_names_in_manifests(name: str, field: str, tmp_path: Path, cli: Callable[..., Result],
                                    campaign: Callable[..., None]) -> None:
    data = {"schema_version": "1.0", "name": "m", "format": "bytes",
            "file": {"name": "m.gguf", "size": 1, "sha256": "a" * 64},
            "chunks": [{"name": "m.gguf.part-1", "offset": 0, "size": 1, "sha256": "b" * 64}]}
    if field == "file":
        data["file"]["name"] = name  # type: ignore[index]
    else:
        data["chunks"][0]["name"] = name  # type: ignore[index]
    manifest = tmp_path / "in" / "m.manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(data))
    result = cli("assemble", manifest, "--cache-dir", tmp_path / "cache")
    ok = result.code == 3 and "name" in result.err and not (tmp_path / "cache").exists() \
        and files_in(tmp_path) == {"in"}
    campaign("hostile names", f"{field} name {name[:12]!r}", ok, 0)
    assert ok, result.err


def test_destination_symlink_is_replaced_not_followed(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result],
                                                      campaign: Callable[..., None]) -> None:
    from teadist.base.progress import NullReporter
    from teadist.pipelines.split import split_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / tiny_model.name).symlink_to(victim)
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    result = cli("assemble", tmp_path / "dist" / f"{tiny_model.name}.manifest.json", "--cache-dir", cache)
    ok = result.code == 0 and victim.read_text() == "precious" and not (cache / tiny_model.name).is_symlink()
    campaign("hostile names", "destination is a symlink", ok, 0 if victim.read_text() == "precious" else 1)
    assert ok, result.err


@pytest.mark.parametrize("kind", ["link-out", "abs-link", "fifo"])
def test_hostile_package_folders(kind: str, tmp_path: Path, cli: Callable[..., Result],
                                 campaign: Callable[..., None]) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.wasm").write_bytes(b"\0asm")
    if kind == "link-out":
        (pkg / "evil").symlink_to("../../../etc/passwd")
    elif kind == "abs-link":
        (pkg / "evil").symlink_to("/etc/passwd")
    else:
        os.mkfifo(pkg / "pipe")
    result = cli("package-wasm", pkg, "--version", "1.0.0", "--out", tmp_path / "out")
    ok = result.code == 2 and not list((tmp_path / "out").glob("*.tar.gz")) if (tmp_path / "out").exists() \
        else result.code == 2
    campaign("hostile names", f"package folder with {kind}", ok, 0)
    assert ok, result.err
