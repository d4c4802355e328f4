from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def _prepare(cli: Callable[..., Result], tmp_path: Path, tiny_model: Path, tag: str = TAG,
             chunk_size: str = "200k", out: Path | None = None) -> Path:
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}], "chunk_size": chunk_size}))
    pkg = tmp_path / "pkg"
    if not pkg.is_dir():
        pkg.mkdir()
        (pkg / "tea_wasm_llm_bg.wasm").write_bytes(b"\0asm" + os.urandom(3000))
        (pkg / "tea_wasm_llm.js").write_text("export default 1;\n")
        (pkg / "package.json").write_text('{"name": "tea-wasm-llm"}\n')
    out = out or tmp_path / "dist"
    assert cli("package-wasm", pkg, "--version", tag.removeprefix("v"), "--out", out).code == 0
    result = cli("release", "prepare", "--tag", tag, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 0, result.err
    return out


@pytest.fixture
def dist(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> Path:
    return _prepare(cli, tmp_path, tiny_model)


class ListedAssets(dict[str, str]):
    """name → sha256 of everything the release index says the release holds (itself included, as
    prepare wrote it), and the index's own bytes in ``raw``."""

    raw: bytes = b""


def index_assets(dist: Path) -> ListedAssets:
    import hashlib

    raw = (dist / RELEASE_MANIFEST).read_bytes()
    index = json.loads(raw)
    listed = ListedAssets({c["name"]: c["sha256"] for m in index["models"] for c in m["chunks"]})
    listed.update({f["name"]: f["sha256"] for f in index["files"]})
    listed[RELEASE_MANIFEST] = hashlib.sha256(raw).hexdigest()
    listed.raw = raw
    return listed


def expected_published_index(local_raw: bytes, ids: dict[str, int], api_url: str, repo: str = "tea/tea") -> Any:
    """What the published index must say: the local index, each chunk's URLs followed by the API URL
    of the asset holding it (``ids``: asset name → id on the release), and nothing else changed."""
    index = json.loads(local_raw)
    for model in index["models"]:
        for chunk in model["chunks"]:
            chunk["urls"] = [*chunk.get("urls", []), f"{api_url}/repos/{repo}/releases/assets/{ids[chunk['name']]}"]
    return index


def published_matches_index(github: GitHubServer, expected: ListedAssets, tag: str = TAG) -> bool:
    """The only acceptable published release: exactly the listed assets, each holding the listed
    bytes, and an index that says what the local one says plus where each chunk's asset is."""
    import hashlib

    published = [r for r in github.releases if r.tag_name == tag and not r.draft]
    if not published:
        return False
    [release] = published
    held = {a.name: hashlib.sha256(a.data).hexdigest() for a in release.assets if a.state == "uploaded"}
    index = [a for a in release.assets if a.name == RELEASE_MANIFEST and a.state == "uploaded"]
    if len(index) != 1 or json.loads(index[0].data) != expected_published_index(
            expected.raw, {a.name: a.id for a in release.assets}, github.api_url):
        return False
    files = {k: v for k, v in expected.items() if k != RELEASE_MANIFEST}
    return {k: v for k, v in held.items() if k != RELEASE_MANIFEST} == files and len(release.assets) == len(expected)


def _publish(cli: Callable[..., Result], dist: Path, *extra: str) -> Result:
    return cli("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist, *extra)


def _assert_complete(github: GitHubServer, dist: Path) -> None:
    [release] = [r for r in github.releases if r.tag_name == TAG]
    assert not release.draft
    assert published_matches_index(github, index_assets(dist))
    for asset in release.assets:
        assert asset.digest == "sha256:" + hashlib.sha256(asset.data).hexdigest()
        if asset.name != RELEASE_MANIFEST:
            assert asset.digest == "sha256:" + index_assets(dist)[asset.name]


def test_prepare_writes_chunks_and_an_index_with_tag_urls(dist: Path, tiny_model: Path) -> None:
    index = json.loads((dist / RELEASE_MANIFEST).read_text())
    assert index["tag"] == TAG and len(index["models"]) == 1
    chunks = index["models"][0]["chunks"]
    assert len(chunks) == 3
    assert chunks[0]["urls"] == [f"https://github.com/tea/tea/releases/download/{TAG}/{chunks[0]['name']}"]
    assert [f["name"] for f in index["files"]] == ["tiny-llama.gguf.manifest.json", "tea-wasm-llm-1.2.0.tar.gz"]


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
                                                                     tmp_path: Path, tiny_model: Path,
                                                                     cli: Callable[..., Result]) -> None:
    assert _publish(cli, dist).code == 0
    (tmp_path / "pkg" / "tea_wasm_llm.js").write_text("export default 2;\n")  # a rebuilt, different tarball
    _prepare(cli, tmp_path, tiny_model)
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


# -- issue 11: the release index is the single source of truth ----------------------------------
TAMPERINGS = ["clean", "chunk-edited", "chunk-deleted", "stray-file", "symlink-outside", "symlink-as-chunk",
              "stale-draft-asset", "same-size-no-digest"]


@pytest.mark.parametrize("case", TAMPERINGS)
def test_tampered_dist_never_publishes_what_the_index_does_not_say(case: str, tmp_path: Path, tiny_model: Path,
                                                                   cli: Callable[..., Result],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Acceptance: exit != 0 and no published release, or a published release whose every asset
    equals the index (and nothing else) -- never anything else."""
    dist = _prepare(cli, tmp_path, tiny_model)
    expected = index_assets(dist)
    chunks = sorted(n for n in expected if ".part-" in n)
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- marker")
    with GitHubServer(repo="tea/tea", token=GH_SECRET, digests=case != "same-size-no-digest") as github:
        assert isinstance(github, GitHubServer)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        victim = dist / chunks[1]
        if case == "chunk-edited":
            raw = bytearray(victim.read_bytes())
            raw[100] ^= 0xFF
            victim.write_bytes(bytes(raw))
        elif case == "chunk-deleted":
            victim.unlink()
        elif case == "stray-file":
            (dist / "notes.txt").write_text("not for the release\n")
        elif case == "symlink-outside":
            (dist / "id_rsa").symlink_to(secret)
        elif case == "symlink-as-chunk":  # a listed name, reached through a link to the same bytes
            outside = tmp_path / "outside" / victim.name
            outside.write_bytes(victim.read_bytes())
            victim.unlink()
            victim.symlink_to(outside)
        elif case == "stale-draft-asset":
            draft = github.add_release(TAG, draft=True)
            github.add_asset(draft, "old-model.gguf.part-00001-of-00001", b"stale bytes of an earlier prepare")
            github.add_asset(draft, chunks[0], os.urandom(len(victim.read_bytes())))
        elif case == "same-size-no-digest":
            draft = github.add_release(TAG, draft=True)
            for name in expected:  # an earlier draft: every name there, every size right, other bytes
                data = bytearray((dist / name).read_bytes())
                if name == chunks[1]:
                    data[7] ^= 0x01
                github.add_asset(draft, name, bytes(data))
        result = _publish(cli, dist)
        assert "Traceback" not in result.err
        published = [r for r in github.releases if not r.draft]
        if result.code != 0:
            assert not published, f"exit {result.code} but a release was published"
        else:
            assert published_matches_index(github, expected), f"published something the index does not say: " \
                f"{[(a.name, a.size) for r in published for a in r.assets]}"
        assert not any(secret.read_bytes() in a.data for r in github.releases for a in r.assets)
        if case == "clean":
            assert result.code == 0, result.err
        if case in ("stale-draft-asset", "same-size-no-digest"):  # these can always be converged
            assert result.code == 0, result.err
            if case == "same-size-no-digest":
                assert github.downloads > 0  # proven by downloading, not by size
                assert not any("Authorization" in h for h in github.cdn_headers)


@pytest.mark.parametrize("redirect", [True, False])
def test_asset_without_digest_is_kept_only_once_its_bytes_are_proven(redirect: bool, github: GitHubServer, dist: Path,
                                                                      cli: Callable[..., Result]) -> None:
    github.digests = False
    github.download_redirect = redirect  # GitHub answers with a 302 to its CDN; Enterprise may serve directly
    assert _publish(cli, dist, "--draft").code == 0
    before = github.uploads
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    assert github.uploads == before  # nothing re-uploaded: every asset was downloaded and hashed
    assert github.downloads == len(index_assets(dist))
    assert published_matches_index(github, index_assets(dist))
    assert len(github.cdn_headers) == (github.downloads if redirect else 0)
    assert not any("Authorization" in h for h in github.cdn_headers)  # the token stays with the API


@pytest.mark.parametrize(("tag", "prerelease"), [("v1.2.0-rc1", True), ("v1.2.0-beta.2", True),
                                                 ("v2.0.0-alpha", True), ("v1.2.0rc1", True), ("v1.2.0", False),
                                                 ("v1.2.0+build.5", False),
                                                 # review 11a #12: a prefix before the version, a post-release
                                                 # of a pre-release, a suffix after a "tea-v" prefix
                                                 ("release-1.2.0-rc1", True), ("v1.2.0rc1.post1", True),
                                                 ("tea-v1.2.3-beta", True), ("v1.2.0.post1", False)])
def test_prerelease_tags_are_published_as_prereleases(tag: str, prerelease: bool, github: GitHubServer,
                                                      tmp_path: Path, tiny_model: Path,
                                                      cli: Callable[..., Result]) -> None:
    dist = _prepare(cli, tmp_path, tiny_model, tag=tag)
    result = cli("release", "publish", "--tag", tag, "--repo", "tea/tea", "--dist", dist)
    assert result.code == 0, result.err
    [release] = github.releases
    assert (release.draft, release.prerelease) == (False, prerelease)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e400"])
def test_bad_upload_timeout_is_a_usage_error_before_any_write(value: str, github: GitHubServer, dist: Path,
                                                              cli: Callable[..., Result]) -> None:
    result = _publish(cli, dist, "--upload-timeout", value)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "--upload-timeout" in result.err
    assert github.writes == [] and github.releases == []


@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_bad_write_interval_is_a_usage_error_before_any_write(value: str, github: GitHubServer, dist: Path,
                                                              cli: Callable[..., Result],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEADIST_GITHUB_WRITE_INTERVAL", value)
    result = _publish(cli, dist)
    assert result.code == 2, result.err
    assert github.writes == [] and github.releases == []


@pytest.mark.parametrize("chunk_size", [float("nan"), float("inf"), -5, True, "lots"])
def test_bad_release_config_numbers_are_usage_errors_before_any_write(chunk_size: object, tmp_path: Path,
                                                                      tiny_model: Path,
                                                                      cli: Callable[..., Result]) -> None:
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model)}], "chunk_size": chunk_size}))
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config,
                 "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("epoch", ["\u00b2", "1" * 40, "-1", "1.5"])
def test_bad_source_date_epoch_is_a_usage_error(epoch: str, tmp_path: Path, cli: Callable[..., Result],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    result = cli("package-wasm", _pkg(tmp_path), "--version", "1.2.0", "--out", tmp_path / "o")
    assert result.code == 2, result.err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("how", ["other-port", "userinfo"])
def test_token_never_goes_to_a_foreign_upload_host(how: str, tmp_path: Path, tiny_model: Path,
                                                   cli: Callable[..., Result]) -> None:
    """PyGithub's only guard is an assert: run under ``python -O`` where it is gone."""
    import subprocess
    import sys

    from tests.servers import MirrorServer

    dist = _prepare(cli, tmp_path, tiny_model)
    (tmp_path / "thief").mkdir()
    with MirrorServer(tmp_path / "thief") as thief, GitHubServer(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, GitHubServer)
        path = "/api/uploads/repos/tea/tea/releases/101/assets"
        thief_netloc = thief.url.split("://")[1]
        github.upload_url_override = {
            "other-port": f"{thief.url}{path}",
            "userinfo": f"http://{github.url.split('://')[1]}@{thief_netloc}{path}",
        }[how]
        env = {**os.environ, "GITHUB_API_URL": github.api_url, "GITHUB_TOKEN": GH_SECRET}
        proc = subprocess.run([sys.executable, "-O", "-m", "teadist", "release", "publish", "--tag", TAG,
                               "--repo", "tea/tea", "--dist", str(dist)], env=env, capture_output=True, text=True,
                              timeout=120)
        leaked = [h for h in thief.headers_seen() if GH_SECRET in json.dumps(h)]
        assert not leaked, f"the token went to {thief.url}"
        assert proc.returncode != 0 and not [r for r in github.releases if not r.draft]
        assert "upload" in proc.stderr and GH_SECRET not in proc.stderr


def test_two_drafts_for_one_tag_are_refused_before_any_write(github: GitHubServer, dist: Path,
                                                             cli: Callable[..., Result]) -> None:
    github.add_release(TAG)
    github.add_release(TAG)
    result = _publish(cli, dist)
    assert result.code == 1 and "2 releases" in result.err
    assert github.writes == []


def test_an_index_prepared_for_another_tag_is_refused(github: GitHubServer, dist: Path,
                                                      cli: Callable[..., Result]) -> None:
    result = cli("release", "publish", "--tag", "v9.9.9", "--repo", "tea/tea", "--dist", dist)
    assert result.code == 1 and "v9.9.9" in result.err
    assert github.writes == []


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://uploads.github.com/repos/o/r/releases/1/assets", True),
    ("https://UPLOADS.github.com:443/repos/o/r/releases/1/assets", True),
    ("http://uploads.github.com/repos/o/r/releases/1/assets", False),  # plain http: a downgrade
    ("https://uploads.github.com:8443/repos/o/r/releases/1/assets", False),
    ("https://objects.githubusercontent.com/x", False),
    ("https://uploads.github.com.evil.example/x", False),
    ("https://api.github.com@evil.example/x", None),
    ("https://uploads.github.com\\@evil.example/x", None),
    ("https://uploads.github.com/x y", None),
    ("https://uploads.github.com:99999/x", None),
    ("ftp://uploads.github.com/x", None),
])
def test_upload_origin_check(url: str, allowed: bool | None) -> None:
    from teadist.errors import ReleaseError
    from teadist.release.publish import upload_origins, url_origin

    origins = upload_origins("https://api.github.com")
    if allowed is None:
        with pytest.raises(ReleaseError):
            url_origin(url)
    else:
        assert (url_origin(url) in origins) is allowed
    assert upload_origins("https://ghe.example/api/v3") == {("https", "ghe.example", 443)}


def test_prepare_owns_its_output_folder(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> None:
    out = _prepare(cli, tmp_path, tiny_model, chunk_size="200k")
    first = set(index_assets(out))
    again = _prepare(cli, tmp_path, tiny_model, chunk_size="100k", out=out)
    second = set(index_assets(again))
    on_disk = {p.name for p in out.iterdir()}
    assert on_disk == second, f"left over from the first run: {sorted(on_disk - second)}"
    assert first - second  # the first run's chunks had other names, and they are gone
    # a folder holding files prepare did not write is refused, and they are left alone
    (out / "notes.txt").write_text("mine\n")
    config = tmp_path / "release.json"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code != 0 and "notes.txt" in result.err
    assert (out / "notes.txt").read_text() == "mine\n"
    assert {p.name for p in out.iterdir()} == second | {"notes.txt"}


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


# -- issue 11, defect 6: package-wasm packs only what stays inside its top folder ----------------
def test_tarball_refuses_a_link_that_leaves_the_top_folder_through_the_input_name(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    pkg = _pkg(tmp_path)
    (pkg / "sneaky.js").symlink_to("../pkg/tea_wasm_llm.js")  # resolves inside pkg/, points outside the archive
    result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o")
    assert result.code == 2 and "sneaky.js" in result.err, result.err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("linkname", ["../../other/x", "../../tea-wasm-llm-1.2.0-evil/x", "../../../x"])
def test_check_tarball_refuses_links_leaving_the_top_folder(tmp_path: Path, linkname: str) -> None:
    import io
    import tarfile

    from teadist.errors import UsageError
    from teadist.release.wasmpkg import check_tarball

    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo("tea-wasm-llm-1.2.0")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        tar.addfile(tarfile.TarInfo("tea-wasm-llm-1.2.0/sub/x"), io.BytesIO(b""))
        link = tarfile.TarInfo("tea-wasm-llm-1.2.0/sub/l")
        link.type, link.linkname = tarfile.SYMTYPE, linkname
        tar.addfile(link)
    with pytest.raises(UsageError):
        check_tarball(path)


def test_tarball_refuses_js_folder_colliding_with_the_package(tmp_path: Path, cli: Callable[..., Result]) -> None:
    import tarfile

    pkg = _pkg(tmp_path)
    (pkg / "js").mkdir()
    (pkg / "js" / "app.js").write_text("1\n")
    extra = tmp_path / "js"
    extra.mkdir()
    (extra / "app.js").write_text("2\n")
    result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o", "--js", extra)
    tarball = tmp_path / "o" / "tea-wasm-llm-1.2.0.tar.gz"
    if result.code == 0:
        with tarfile.open(tarball) as tar:
            names = tar.getnames()
        assert len(names) == len(set(names)), "duplicate entries in the tarball"
    else:
        assert result.code == 2 and "js" in result.err and not tarball.exists()


def test_tarball_out_inside_the_package_never_packs_a_previous_tarball(tmp_path: Path,
                                                                      cli: Callable[..., Result]) -> None:
    import tarfile

    pkg = _pkg(tmp_path)
    for _ in range(2):
        result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", pkg / "dist")
        assert "Traceback" not in result.err
        tarball = pkg / "dist" / "tea-wasm-llm-1.2.0.tar.gz"
        if result.code == 0:
            with tarfile.open(tarball) as tar:
                assert not [n for n in tar.getnames() if n.endswith(".tar.gz")]
        else:
            assert result.code == 2 and "--out" in result.err


@pytest.mark.parametrize("shape", ["self", "pair"])
def test_tarball_symlink_loop_is_a_clear_error(shape: str, tmp_path: Path, console: Callable[..., Result]) -> None:
    pkg = _pkg(tmp_path)
    if shape == "self":
        (pkg / "loop").symlink_to("loop")
    else:
        (pkg / "a").symlink_to("b")
        (pkg / "b").symlink_to("a")
    result = console("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o")
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and result.err.startswith("error: ")


# -- review 11a #13: names, tags and repos are checked before anything is written ----------------
@pytest.mark.parametrize("tag", ["v1.lock", ".v1", "v1.", "v1//x", "-v1", "v1.." + "2", "v" + "1" * 300])
def test_prepare_refuses_a_bad_tag_before_writing(tag: str, tmp_path: Path, tiny_model: Path,
                                                  cli: Callable[..., Result]) -> None:
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}], "chunk_size": "200k"}))
    result = cli("release", "prepare", f"--tag={tag}", "--repo", "tea/tea", "--config", config, "--out",
                 tmp_path / "out")
    assert result.code == 2, result.err
    assert "--tag" in result.err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo", ["../..", "a/..", "./x", "tea/tea/x", "-a/b", "a/b.git"])
def test_prepare_and_publish_refuse_a_bad_repo_before_writing(repo: str, tmp_path: Path, tiny_model: Path,
                                                             github: GitHubServer, dist: Path,
                                                             cli: Callable[..., Result]) -> None:
    config = tmp_path / "release.json"
    result = cli("release", "prepare", "--tag", TAG, f"--repo={repo}", "--config", config, "--out", tmp_path / "o")
    assert result.code == 2 and "--repo" in result.err and not (tmp_path / "o").exists()
    result = cli("release", "publish", "--tag", TAG, f"--repo={repo}", "--dist", dist)
    assert result.code == 2 and "--repo" in result.err
    assert github.writes == []


@pytest.mark.parametrize("case", ["name-with-space", "file-with-space"])
def test_prepare_refuses_unpublishable_names_before_writing(case: str, tmp_path: Path, tiny_model: Path,
                                                            cli: Callable[..., Result]) -> None:
    """A config name or a model file name that cannot be a manifest name / GitHub asset name is
    refused before the first chunk is written, so a second run is not refused for prepare's own
    leftovers."""
    import shutil

    model = tiny_model
    entry: dict[str, str] = {"file": str(model), "name": "my model"}
    if case == "file-with-space":
        model = tmp_path / "my model.gguf"
        shutil.copyfile(tiny_model, model)
        entry = {"file": str(model), "name": "tiny"}
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [entry], "chunk_size": "200k"}))
    out = tmp_path / "out"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}], "chunk_size": "100k"}))
    again = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert again.code == 0, again.err


# -- review 11a #11: a FIFO never hangs prepare, publish or pin ------------------------------------
def test_a_fifo_in_dist_or_as_the_index_never_hangs(tmp_path: Path, tiny_model: Path, github: GitHubServer,
                                                    cli: Callable[..., Result],
                                                    console: Callable[..., Result]) -> None:
    dist = _prepare(cli, tmp_path, tiny_model)
    chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[1]
    (dist / chunk).unlink()
    os.mkfifo(dist / chunk)
    env = {"GITHUB_API_URL": github.api_url, "GITHUB_TOKEN": GH_SECRET}
    result = console("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist, env=env, timeout=30)
    assert result.code != 0 and chunk in result.err and "Traceback" not in result.err
    assert github.writes == []
    out = tmp_path / "out2"
    out.mkdir()
    os.mkfifo(out / RELEASE_MANIFEST)
    result = console("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", tmp_path / "release.json",
                     "--out", out, timeout=30)
    assert result.code != 0 and RELEASE_MANIFEST in result.err and "Traceback" not in result.err
    config = tmp_path / "fifo-config.json"
    os.mkfifo(config)
    result = console("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config,
                     "--out", tmp_path / "out3", timeout=30)
    assert result.code != 0 and "Traceback" not in result.err


def test_a_fifo_in_the_registry_never_hangs_pin(tmp_path: Path, console: Callable[..., Result]) -> None:
    registry = tmp_path / "reg"
    registry.mkdir()
    os.mkfifo(registry / "f.json")
    result = console("registry", "pin", "x", "--registry-dir", registry, timeout=30)
    assert result.code != 0 and "f.json" in result.err and "Traceback" not in result.err


# -- review 11a #1: prepare ships only the bytes the fetch verified -------------------------------
def test_prepare_never_lists_a_cached_model_changed_in_place(
        hub: object, models_dir: Path, tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> None:
    """A cached model changed in place with its mtime restored (as actions/cache keeps it): the cache
    sees the change (ctime, inode) and fetches again, or prepare refuses; the index never lists the
    changed bytes."""
    import hashlib

    assert cli("fetch", "hf://org/repo/tiny.gguf").code == 0
    cached = models_dir / "tiny.gguf"
    st = cached.stat()
    with open(cached, "r+b") as fh:
        fh.seek(300_000)
        byte = fh.read(1)
        fh.seek(300_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))
    published = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() != published
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"model": "hf://org/repo/tiny.gguf", "name": "tiny"}],
                                  "chunk_size": "200k"}))
    out = tmp_path / "dist"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert "Traceback" not in result.err
    if result.code == 0:
        index = json.loads((out / RELEASE_MANIFEST).read_text())
        assert [m["file"]["sha256"] for m in index["models"]] == [published]
    else:
        assert result.code == 3 and not (out / RELEASE_MANIFEST).exists(), result.err


def test_prepare_refuses_bytes_that_differ_from_what_the_fetch_verified(tmp_path: Path, tiny_model: Path) -> None:
    """Review 11a #1: the sha256 prepare computes while splitting must be the one the fetch verified
    (the file may change between the fetch and the split); otherwise nothing is listed or left."""
    import hashlib

    from teadist.base.progress import NullReporter
    from teadist.errors import IntegrityError
    from teadist.release.prepare import prepare_release

    changed = tmp_path / "models" / "tiny.gguf"
    changed.parent.mkdir()
    raw = bytearray(tiny_model.read_bytes())
    raw[300_000] ^= 0xFF
    changed.write_bytes(raw)
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"model": "tiny", "name": "tiny"}], "chunk_size": "200k"}))
    out = tmp_path / "dist"
    verified = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    with pytest.raises(IntegrityError, match="sha256"):
        prepare_release(TAG, "tea/tea", config, out, NullReporter(), lambda name: (changed, verified))
    assert not (out / RELEASE_MANIFEST).exists()
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())


def test_a_crafted_index_in_out_never_makes_prepare_delete_a_users_file(tmp_path: Path, tiny_model: Path,
                                                                       cli: Callable[..., Result]) -> None:
    """Review 11a caveat: a model-manifest.json found in --out is read as "prepare wrote these";
    a crafted one listing a user's file (with its right size and sha256) must not get it deleted."""
    import hashlib

    out = _prepare(cli, tmp_path, tiny_model)
    index = json.loads((out / RELEASE_MANIFEST).read_text())
    notes = out / "notes.txt"
    notes.write_text("the user's own notes\n")
    raw = notes.read_bytes()
    index["files"].append({"name": "notes.txt", "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                           "url": f"https://github.com/tea/tea/releases/download/{TAG}/notes.txt"})
    (out / RELEASE_MANIFEST).write_text(json.dumps(index))
    config = tmp_path / "release.json"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert notes.exists() and notes.read_bytes() == raw, "prepare deleted a file it never wrote"
    assert "Traceback" not in result.err


# -- issue 13: a release entry can ship llama.cpp shards (what wllama loads) ----------------------
def _gguf_config(tmp_path: Path, tiny_model: Path, **entry: object) -> Path:
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny", **entry}],
                                  "chunk_size": "200k"}))
    return config


def test_a_gguf_entry_ships_llama_cpp_shards_listed_in_the_index(tmp_path: Path, tiny_model: Path, models_dir: Path,
                                                                 cli: Callable[..., Result]) -> None:
    import hashlib

    from teadist.formats.gguf_header import read_header

    config = _gguf_config(tmp_path, tiny_model, format="gguf", shard_size="200k")
    out = tmp_path / "dist"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 0, result.err
    index = json.loads((out / RELEASE_MANIFEST).read_text())
    [model] = index["models"]
    assert model["format"] == "gguf" and model["name"] == "tiny"
    assert model["file"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    shards = model["chunks"]
    count = len(shards)
    assert count >= 2 and [c["name"] for c in shards] == [f"tiny-llama-{i:05d}-of-{count:05d}.gguf"
                                                          for i in range(1, count + 1)]
    for shard in shards:
        data = (out / shard["name"]).read_bytes()
        assert len(data) == shard["size"] <= 200_000 and hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert shard["urls"] == [f"https://github.com/tea/tea/releases/download/{TAG}/{shard['name']}"]
        assert data[:4] == b"GGUF"
    assert read_header(out / shards[0]["name"]).kv["split.count"].value == count  # llama.cpp's split keys
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [c["name"] for c in shards] + ["tiny-llama.gguf.manifest.json", RELEASE_MANIFEST])
    # the shards rebuild the byte-identical original through the release index
    fetched = cli("fetch", out / RELEASE_MANIFEST)
    assert fetched.code == 0, fetched.err
    assert (models_dir / tiny_model.name).read_bytes() == tiny_model.read_bytes()


def test_a_gguf_entry_defaults_to_shards_of_at_most_512_mb(tmp_path: Path, tiny_model: Path) -> None:
    from teadist.base.progress import NullReporter
    from teadist.release.prepare import load_release_config, model_layouts, prepare_release

    config = _gguf_config(tmp_path, tiny_model, format="gguf")
    [layout] = model_layouts(load_release_config(config), config)
    assert (layout.format, layout.shard_size) == ("gguf", 512_000_000)
    prepared = prepare_release(TAG, "tea/tea", config, tmp_path / "dist", NullReporter(),
                               lambda name: (tiny_model, None))
    assert [c["name"] for c in prepared.index["models"][0]["chunks"]] == ["tiny-llama-00001-of-00001.gguf"]


@pytest.mark.parametrize(("entry", "says"), [
    ({"format": "zip"}, "format"),
    ({"format": "bytes", "shard_size": "200k"}, "shard_size"),
    ({"shard_size": "200k"}, "shard_size"),
    ({"format": "gguf", "shard_size": "2GiB"}, "2 GiB"),
    ({"format": "gguf", "shard_size": 0}, "shard_size"),
    ({"format": "gguf", "shard_size": True}, "shard_size"),
    ({"format": "gguf", "shard_size": "lots"}, "lots"),
    ({"format": "gguf", "shard_size": "30k"}, "does not fit"),  # a tensor is larger than a shard
    ({"format": "gguf", "shard-size": "200k"}, "shard-size"),  # a typo is not silently ignored
    ({"format": ["gguf"]}, "format"),
    ({"format": "gguf", "shard_size": 700.5}, "shard_size"),
])
def test_a_bad_gguf_entry_is_refused_before_anything_is_written(entry: dict[str, object], says: str,
                                                                tmp_path: Path, tiny_model: Path,
                                                                cli: Callable[..., Result]) -> None:
    config = _gguf_config(tmp_path, tiny_model, **entry)
    out = tmp_path / "dist"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 2, result.err
    assert says in result.err and "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 2
    assert not out.exists() or list(out.iterdir()) == []


def test_a_gguf_entry_for_a_file_that_is_no_gguf_is_refused_before_writing(tmp_path: Path,
                                                                           cli: Callable[..., Result]) -> None:
    notes = tmp_path / "notes.bin"
    write_random(notes, 50_000, seed=3)
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(notes), "name": "n", "format": "gguf"}]}))
    out = tmp_path / "dist"
    result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 2 and "gguf" in result.err and "Traceback" not in result.err, result.err
    assert not out.exists() or list(out.iterdir()) == []


def test_switching_an_entry_between_chunks_and_shards_leaves_only_what_the_index_lists(
        tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> None:
    out = tmp_path / "dist"
    listed: list[set[str]] = []
    for entry in ({"format": "gguf", "shard_size": "200k"}, {}, {"format": "gguf", "shard_size": "300k"}):
        config = _gguf_config(tmp_path, tiny_model, **entry)
        result = cli("release", "prepare", "--tag", TAG, "--repo", "tea/tea", "--config", config, "--out", out)
        assert result.code == 0, result.err
        index = json.loads((out / RELEASE_MANIFEST).read_text())
        names = {c["name"] for c in index["models"][0]["chunks"]} | {f["name"] for f in index["files"]}
        assert {p.name for p in out.iterdir()} == names | {RELEASE_MANIFEST}
        listed.append(names)
    assert listed[0] != listed[2]  # other shard counts: the old shards went


def test_a_fetched_model_sharded_is_held_to_the_sha256_its_fetch_verified(tmp_path: Path, tiny_model: Path) -> None:
    import hashlib

    from teadist.base.progress import NullReporter
    from teadist.errors import IntegrityError
    from teadist.release.prepare import prepare_release

    changed = tmp_path / "models" / "tiny-llama.gguf"
    changed.parent.mkdir()
    raw = bytearray(tiny_model.read_bytes())
    raw[-100] ^= 0xFF  # a tensor byte: still a GGUF, other bytes
    changed.write_bytes(raw)
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"model": "tiny", "name": "tiny", "format": "gguf",
                                              "shard_size": "200k"}]}))
    out = tmp_path / "dist"
    verified = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    with pytest.raises(IntegrityError, match="sha256"):
        prepare_release(TAG, "tea/tea", config, out, NullReporter(), lambda name: (changed, verified))
    assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())


def test_an_index_with_many_files_is_checked_in_linear_time() -> None:
    """Review finding 18: duplicate names were found with names.count(n) per name (quadratic):
    a 16 MiB index can list ~100,000 files. 30,000 unique names are checked in well under 2 s,
    and one duplicate among them is still named."""
    import time

    from teadist.errors import ManifestError
    from teadist.release.index import INDEX_KIND, validate_index

    model = {"schema_version": "1.0", "name": "m", "file": {"name": "m.gguf", "size": 1, "sha256": "a" * 64},
             "format": "single"}
    files = [{"name": f"f{i:05d}.bin", "size": 1, "sha256": "b" * 64} for i in range(30_000)]
    data = {"kind": INDEX_KIND, "models": [model], "files": files}
    started = time.perf_counter()
    validate_index(data)
    assert time.perf_counter() - started < 2.0
    data["files"] = [*files, files[12_345]]
    with pytest.raises(ManifestError, match=r"f12345\.bin"):
        validate_index(data)
