from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teadist.release.index import RELEASE_MANIFEST
from tests.helpers import Result, write_random
from tests.servers import GitHubServer

GH_SECRET = "ghp_MARKER_do_not_leak_456"
TAG = "v1.2.0"


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubServer]:
    with GitHubServer(repo="tea/tea", token=GH_SECRET) as server:
        assert isinstance(server, GitHubServer)
        monkeypatch.setenv("GITHUB_API_URL", server.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        yield server


@pytest.fixture
def dist(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> Path:
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}], "chunk_size": "200k"}))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "tea_wasm_llm_bg.wasm").write_bytes(b"\0asm" + os.urandom(3000))
    (pkg / "tea_wasm_llm.js").write_text("export default 1;\n")
    (pkg / "package.json").write_text('{"name": "tea-wasm-llm"}\n')
    out = tmp_path / "dist"
    assert cli("package-wasm", pkg, "--version", "1.2.0", "--out", out).code == 0
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 0, result.err
    return out


def _publish(cli: Callable[..., Result], dist: Path, *extra: str) -> Result:
    return cli("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist, *extra)


def _assert_complete(github: GitHubServer, dist: Path) -> None:
    import hashlib

    [release] = [r for r in github.releases if r.tag_name == TAG]
    assert not release.draft
    remote = {a.name: a for a in release.assets}
    local = sorted(p for p in dist.iterdir() if p.is_file() and not p.name.startswith("."))
    assert set(remote) == {p.name for p in local}
    for path in local:
        assert remote[path.name].state == "uploaded"
        assert remote[path.name].digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_writes_chunks_and_an_index_with_tag_urls(dist: Path, tiny_model: Path) -> None:
    index = json.loads((dist / RELEASE_MANIFEST).read_text())
    assert index["tag"] == TAG and len(index["models"]) == 1
    chunks = index["models"][0]["chunks"]
    assert len(chunks) == 3
    assert chunks[0]["urls"] == [f"https://github.com/tea/tea/releases/download/{TAG}/{chunks[0]['name']}"]
    assert index["files"][0]["name"] == "tea-wasm-llm-1.2.0.tar.gz"


def test_publish_uploads_everything_manifest_last_then_publishes(github: GitHubServer, dist: Path,
                                                                 cli: Callable[..., Result]) -> None:
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    _assert_complete(github, dist)
    uploads = [w for w in github.writes if "/api/uploads/" in w]
    assert len(uploads) == len(list(dist.iterdir()))
    assert github.writes[-1].startswith("PATCH")  # publish comes after every upload
    names = [a.name for a in github.releases[0].assets]
    assert names[-1] == RELEASE_MANIFEST
    # a re-run on a complete release writes nothing
    before = list(github.writes)
    again = _publish(cli, dist)
    assert again.code == 0, again.err
    assert github.writes == before
    assert "0 uploaded" in again.err


def test_dry_run_writes_nothing(github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    result = _publish(cli, dist, "--dry-run")
    assert result.code == 0, result.err
    assert github.writes == []
    assert f"create draft release {TAG}" in result.out
    assert f"upload {RELEASE_MANIFEST}" in result.out.splitlines()[-2]


@pytest.mark.parametrize("faults", [["starter"], ["drop"], ["slow_success"], ["rate_limit"], ["429"],
                                    ["starter", "drop", "slow_success"]])
def test_upload_faults_converge(faults: list[str], github: GitHubServer, dist: Path,
                                cli: Callable[..., Result]) -> None:
    github.upload_faults = list(faults)
    first = _publish(cli, dist)
    if first.code != 0:  # allowed to stop, never to publish an incomplete release
        assert all(r.draft for r in github.releases)
        assert first.err.startswith("error: ") and "Traceback" not in first.err
        second = _publish(cli, dist)
        assert second.code == 0, second.err
    _assert_complete(github, dist)
    assert not [a for a in github.releases[0].assets if a.state != "uploaded"]


def test_api_rate_limits_are_waited_out(github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    github.api_faults = ["403", "429"]
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    _assert_complete(github, dist)


def test_failing_uploads_never_publish(github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    github.upload_faults = ["starter"] * 50
    result = _publish(cli, dist, "--json")
    assert result.code == 1
    assert [r.draft for r in github.releases] == [True]
    github.upload_faults = []
    assert _publish(cli, dist).code == 0
    _assert_complete(github, dist)


def test_draft_is_found_and_reused_not_duplicated(github: GitHubServer, dist: Path,
                                                  cli: Callable[..., Result]) -> None:
    assert _publish(cli, dist, "--draft").code == 0
    assert [r.draft for r in github.releases] == [True]
    assert _publish(cli, dist).code == 0
    assert len(github.releases) == 1
    _assert_complete(github, dist)


def test_published_immutable_release_with_a_changed_asset_is_refused(github: GitHubServer, dist: Path,
                                                                     cli: Callable[..., Result]) -> None:
    assert _publish(cli, dist).code == 0
    tarball = dist / "tea-wasm-llm-1.2.0.tar.gz"
    tarball.write_bytes(tarball.read_bytes() + b"x")
    result = _publish(cli, dist)
    assert result.code == 1 and "immutable" in result.err


def test_token_appears_nowhere(github: GitHubServer, dist: Path, console: Callable[..., Result]) -> None:
    github.upload_faults = ["starter"]
    results = [console("--debug", "release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist),
               console("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist, "--dry-run")]
    for result in results:
        assert result.code == 0, result.err
        assert GH_SECRET not in result.out + result.err


def test_missing_token_and_bad_token(github: GitHubServer, dist: Path, cli: Callable[..., Result],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    assert _publish(cli, dist).code == 2
    monkeypatch.setenv("GITHUB_TOKEN", "wrong-token-value")
    result = _publish(cli, dist)
    assert result.code == 1 and "401" in result.err and "wrong-token-value" not in result.err


@pytest.mark.parametrize("case", ["too-big", "bad-name", "too-many", "no-manifest"])
def test_preflight_refuses_before_any_write(case: str, github: GitHubServer, dist: Path,
                                            cli: Callable[..., Result]) -> None:
    if case == "too-big":
        with open(dist / "huge.bin", "wb") as fh:
            fh.truncate(2**31)
    elif case == "bad-name":
        (dist / "bad name?.bin").write_bytes(b"x")
    elif case == "too-many":
        for i in range(1001):
            (dist / f"f{i:04d}.bin").write_bytes(b"x")
    else:
        (dist / RELEASE_MANIFEST).unlink()
    result = _publish(cli, dist)
    assert result.code == 1, result.err
    assert github.writes == []


def test_fetch_installs_from_a_release_index(dist: Path, tiny_model: Path, models_dir: Path,
                                             cli: Callable[..., Result]) -> None:
    result = cli("fetch", dist / RELEASE_MANIFEST)
    assert result.code == 0, result.err
    assert (models_dir / tiny_model.name).read_bytes() == tiny_model.read_bytes()


# -- the wasm tarball -----------------------------------------------------------------------------
def _pkg(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "snippets" / "x").mkdir(parents=True)
    write_random(pkg / "tea_wasm_llm_bg.wasm", 5000)
    (pkg / "tea_wasm_llm.js").write_text("export {};\n")
    (pkg / "snippets" / "x" / "a.js").write_text("1\n")
    (pkg / "run.sh").write_text("#!/bin/sh\n")
    (pkg / "run.sh").chmod(0o775)
    (pkg / "link.js").symlink_to("tea_wasm_llm.js")
    return pkg


def test_tarball_is_reproducible_and_normalised(tmp_path: Path, cli: Callable[..., Result],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import tarfile
    import time

    from teadist.release.wasmpkg import check_tarball

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    pkg = _pkg(tmp_path / "a")
    first = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o1", "--json")
    assert first.code == 0, first.err
    time.sleep(1.1)
    pkg2 = _pkg(tmp_path / "b")  # same content, other mtimes, other folder
    os.utime(pkg2 / "tea_wasm_llm.js", (1, 1))
    second = cli("package-wasm", pkg2, "--version", "1.2.0", "--out", tmp_path / "o2", "--json")
    assert json.loads(first.out)["sha256"] == json.loads(second.out)["sha256"]
    tarball = tmp_path / "o1" / "tea-wasm-llm-1.2.0.tar.gz"
    names = check_tarball(tarball)
    assert names == sorted(names) and all(n.startswith("tea-wasm-llm-1.2.0") for n in names)
    with tarfile.open(tarball) as tar:
        for m in tar.getmembers():
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1700000000)
            assert m.mode in (0o644, 0o755, 0o777)
        assert tar.getmember("tea-wasm-llm-1.2.0/run.sh").mode == 0o755
    table = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o3")
    assert "| **total (unpacked)** |" in table.out


def test_tarball_refuses_links_pointing_outside(tmp_path: Path, cli: Callable[..., Result]) -> None:
    pkg = _pkg(tmp_path)
    (pkg / "evil").symlink_to("../../etc/passwd")
    result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o")
    assert result.code == 2 and "outside" in result.err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("kind", ["traversal", "absolute", "link"])
def test_hostile_tarballs_are_detected(tmp_path: Path, kind: str) -> None:
    import io
    import tarfile

    from teadist.errors import UsageError
    from teadist.release.wasmpkg import check_tarball

    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo({"traversal": "root/../../x", "absolute": "/etc/x", "link": "root/l"}[kind])
        if kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
            tar.addfile(info)
        else:
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UsageError):
        check_tarball(path)
