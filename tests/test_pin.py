"""`teadist registry pin`: a pin is never weakened, and --write edits a source tree, never the
installed package. Talks to the Hub-compatible loopback server."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Result, sha
from tests.servers import HubServer, MirrorServer, _Handler

COMMIT = "c" * 40


class NoLfsHub(HubServer):
    """A Hub that knows no LFS sha256 for its files (a plain git file, or a server that won't say)."""

    def _file_meta(self, path: Path) -> tuple[str, int]:
        return hashlib.sha1(path.name.encode()).hexdigest(), path.stat().st_size

    def _api(self, handler: _Handler, repo_id: str, kind: str, rev: str) -> None:
        handler.read_body()  # keep-alive: the POST body must not be read as the next request
        repo = self._repo_rev(repo_id, rev)
        if isinstance(repo, str):
            handler.send_error_code(404, repo)
            return
        handler.send_json(200, [{"type": "file", "path": n, "size": f.stat().st_size,
                                 "oid": hashlib.sha1(n.encode()).hexdigest()} for n, f in repo.files.items()])


@pytest.fixture
def trees(tmp_path: Path, served: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A teadist source tree (pyproject + manifests/models) and an 'installed' registry in a fake
    site-packages, both holding gemma-3n-e4b pointed at org/repo/tiny.gguf; the CLI reads the latter."""
    from teadist.formats import manifest as manifest_module
    from teadist.sources import registry

    real = manifest_module.resource_dir()
    site = tmp_path / "site-packages" / "teadist" / "manifests"
    src = tmp_path / "src"
    for manifests in (site, src / "manifests"):
        shutil.copytree(real, manifests)
        entry = manifests / "models" / "gemma-3n-e4b.json"
        gemma = json.loads(entry.read_text())
        gemma["sources"][0].update(repo="org/repo", path="tiny.gguf")
        gemma["file"]["name"] = "tiny.gguf"
        entry.write_text(json.dumps(gemma, indent=2))
    (src / "pyproject.toml").write_text('[project]\nname = "teadist"\n')
    monkeypatch.setattr(manifest_module, "resource_dir", lambda: site)
    monkeypatch.setattr(registry, "resource_dir", lambda: site)
    registry._entries.cache_clear()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(src)  # never the real working tree
    yield {"site": site / "models" / "gemma-3n-e4b.json", "src": src / "manifests" / "models" / "gemma-3n-e4b.json",
           "elsewhere": tmp_path / "elsewhere", "registry": src / "manifests" / "models"}
    registry._entries.cache_clear()


def _set(entry: Path, **changes: Any) -> None:
    data = json.loads(entry.read_text())
    for key, value in changes.items():
        if key == "revision":
            data["sources"][0]["revision"] = value
        else:
            data["file"][key] = value
    entry.write_text(json.dumps(data, indent=2))


def _pinned(entry: Path) -> tuple[Any, Any, Any]:
    data = json.loads(entry.read_text())
    return data["file"]["sha256"], data["file"]["size"], data["sources"][0].get("revision")


@pytest.fixture
def no_lfs_hub(mirror: MirrorServer, served: Path, monkeypatch: pytest.MonkeyPatch,
               fast_retries: None) -> Iterator[HubServer]:
    with NoLfsHub(cdn=mirror) as server:
        assert isinstance(server, HubServer)
        server.add_repo("org/repo", {"tiny.gguf": served / "tiny.gguf"}, commit=COMMIT)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_pin_fills_missing_values_into_the_source_tree(hub: HubServer, served: Path, trees: dict[str, Path],
                                                      cli: Callable[..., Result]) -> None:
    site_before = trees["site"].read_bytes()
    result = cli("registry", "pin", "gemma-3n-e4b", "--write", "--json")
    assert result.code == 0, result.err
    pinned = json.loads(result.out)
    assert pinned["sha256"] == sha(served / "tiny.gguf") and pinned["revision"] == COMMIT
    assert _pinned(trees["src"]) == (sha(served / "tiny.gguf"), (served / "tiny.gguf").stat().st_size, COMMIT)
    assert pinned["written"] == str(trees["src"])
    assert trees["site"].read_bytes() == site_before  # the installed package is never edited
    # a pinned value the Hub contradicts is refused, not replaced
    _set(trees["src"], sha256="0" * 64)
    assert cli("registry", "pin", "gemma-3n-e4b", "--write").code == 3
    assert _pinned(trees["src"])[0] == "0" * 64


def test_pin_never_weakens_a_sha256_the_hub_does_not_give(no_lfs_hub: HubServer, served: Path,
                                                          trees: dict[str, Path], cli: Callable[..., Result]) -> None:
    digest, size = sha(served / "tiny.gguf"), (served / "tiny.gguf").stat().st_size
    for entry in (trees["site"], trees["src"]):
        _set(entry, sha256=digest, size=size)
    result = cli("registry", "pin", "gemma-3n-e4b", "--write")
    assert result.code == 3, result.out + result.err
    assert "sha256" in result.err
    assert _pinned(trees["src"])[0] == digest and _pinned(trees["site"])[0] == digest
    forced = cli("registry", "pin", "gemma-3n-e4b", "--write", "--force")
    assert forced.code == 0, forced.err
    assert _pinned(trees["src"])[0] == digest  # --force takes the Hub's values, never erases a pin


def test_pin_never_moves_a_pinned_revision_silently(hub: HubServer, served: Path, trees: dict[str, Path],
                                                    cli: Callable[..., Result]) -> None:
    old = "d" * 40
    hub.repos["org/repo"].branches = ("main", old)  # the Hub answers for it, but reports another commit
    for entry in (trees["site"], trees["src"]):
        _set(entry, revision=old)
    result = cli("registry", "pin", "gemma-3n-e4b", "--write")
    assert result.code == 3, result.out + result.err
    assert "revision" in result.err
    assert _pinned(trees["src"])[2] == old and _pinned(trees["site"])[2] == old
    forced = cli("registry", "pin", "gemma-3n-e4b", "--write", "--force")
    assert forced.code == 0, forced.err
    assert _pinned(trees["src"])[2] == COMMIT


def test_pin_write_refuses_without_a_source_tree(hub: HubServer, trees: dict[str, Path],
                                                 cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch) -> None:
    site_before = trees["site"].read_bytes()
    monkeypatch.chdir(trees["elsewhere"])
    result = cli("registry", "pin", "gemma-3n-e4b", "--write")
    assert result.code == 2, result.out + result.err
    assert "--registry-dir" in result.err
    assert trees["site"].read_bytes() == site_before
    explicit = cli("registry", "pin", "gemma-3n-e4b", "--write", "--registry-dir", trees["registry"])
    assert explicit.code == 0, explicit.err
    assert _pinned(trees["src"])[2] == COMMIT
    assert trees["site"].read_bytes() == site_before
    refused = cli("registry", "pin", "gemma-3n-e4b", "--write", "--registry-dir", trees["site"].parent)
    assert refused.code == 2 and "installed" in refused.err
