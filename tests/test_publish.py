"""`teadist release publish` against hostile or racing GitHub servers (review 11a): the token goes
only to the API and its upload host, whatever URL a response carries; credentials in
GITHUB_API_URL are never printed; PyGithub's lazy objects never end in a traceback; one failed
download never condemns a good published release; two runs at once never publish an incomplete
release with exit 0.

Every test talks HTTP to a real loopback server (tests/servers.py) and runs the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEADIST_BIN
from tests.helpers import Result
from tests.servers import GhAsset, GhRelease, GitHubServer, MirrorServer, _Handler
from tests.test_release import GH_SECRET, TAG, _prepare, index_assets, published_matches_index


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubServer]:
    with GitHubServer(repo="tea/tea", token=GH_SECRET) as server:
        assert isinstance(server, GitHubServer)
        monkeypatch.setenv("GITHUB_API_URL", server.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        yield server


@pytest.fixture
def dist(tmp_path: Path, tiny_model: Path, cli: Callable[..., Result]) -> Path:
    return _prepare(cli, tmp_path, tiny_model)


def _publish(cli: Callable[..., Result], dist: Path, *extra: str) -> Result:
    return cli("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist, *extra)


def _outcome_is_acceptable(code: int, github: GitHubServer, dist: Path) -> bool:
    """Acceptance: exit != 0 and nothing published, or exit 0 and exactly the index published."""
    published = [r for r in github.releases if r.tag_name == TAG and not r.draft]
    if code != 0:
        return not published
    return published_matches_index(github, index_assets(dist))


def _run_optimized(dist: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI under ``python -O``: PyGithub's own URL check is an assert, gone there."""
    return subprocess.run([sys.executable, "-O", "-m", "teadist", *args, "release", "publish", "--tag", TAG,
                           "--repo", "tea/tea", "--dist", str(dist)],
                          env={**os.environ, "TEADIST_GITHUB_WRITE_INTERVAL": "0", **env},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


# -- review 11a #3: the token never follows a URL taken from a response ---------------------------
class HostileUrls(GitHubServer):
    """Puts a thief's URL where a client might follow it: the repo's ``url``, a ``Link: rel=next``
    page of releases or of assets, the ``url`` of the release it just created."""

    def __init__(self, case: str, thief: str) -> None:
        super().__init__(repo="tea/tea", token=GH_SECRET)
        self.case, self.thief = case, thief

    def route(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        base = f"/api/v3/repos/{self.repo}"
        if self.case == "repo_url" and method == "GET" and path == base:
            handler.send_json(200, {"id": 1, "name": "tea", "full_name": self.repo,
                                    "url": f"{self.thief}{base}", "owner": {"login": "tea"}})
            return
        if self.case == "link_next_releases" and method == "GET" and path == base + "/releases":
            handler.send_json(200, [self.release_json(r) for r in self.releases],
                              {"Link": f'<{self.thief}{base}/releases?page=2>; rel="next"'})
            return
        assets = re.match(rf"^{re.escape(base)}/releases/(\d+)/assets$", path)
        if self.case == "link_next_assets" and method == "GET" and assets:
            found = self.find_release(int(assets.group(1)))
            handler.send_json(200, [self.asset_json(a) for a in found.assets] if found else [],
                              {"Link": f'<{self.thief}{base}/releases/1/assets?page=2>; rel="next"'})
            return
        if self.case == "created_url" and method == "POST" and path == base + "/releases":
            data = json.loads(handler.read_body() or b"{}")
            rel = GhRelease(self._id(), data["tag_name"], data["tag_name"], "", bool(data.get("draft")),
                            bool(data.get("prerelease")))
            self.releases.append(rel)
            created = self.release_json(rel)
            created["url"] = f"{self.thief}{base}/releases/{rel.id}"
            handler.send_json(201, created)
            return
        super().route(handler, method)


@pytest.mark.parametrize("case", ["repo_url", "link_next_releases", "link_next_assets", "created_url"])
def test_the_token_never_follows_a_url_from_a_response(case: str, tmp_path: Path, dist: Path) -> None:
    (tmp_path / "thief").mkdir()
    with MirrorServer(tmp_path / "thief") as thief, HostileUrls(case, thief.url) as github:
        assert isinstance(github, HostileUrls)
        proc = _run_optimized(dist, {"GITHUB_API_URL": github.api_url, "GITHUB_TOKEN": GH_SECRET})
        assert "Traceback" not in proc.stderr
        leaked = [h for h in thief.headers_seen() if GH_SECRET in json.dumps(h)]
        assert not leaked, f"the token went to {thief.url}: {len(leaked)} requests"
        assert _outcome_is_acceptable(proc.returncode, github, dist), proc.stderr


def test_every_request_is_checked_before_the_token_goes(tmp_path: Path) -> None:
    """The check sits under PyGithub, on the URL as it is sent: a request to any other origin is
    refused (what a future code path following a response URL would meet). Under ``python -O``,
    where PyGithub's own assert is gone."""
    script = (
        "import sys\n"
        "from teadist.base.progress import NullReporter\n"
        "from teadist.errors import ReleaseError\n"
        "from teadist.release.publish import Publisher\n"
        "api, token, *urls = sys.argv[1:]\n"
        "publisher = Publisher('tea/tea', 'v1.2.0', token, api, NullReporter(), write_interval=0)\n"
        "for url in urls:\n"
        "    try:\n"
        "        publisher._gh.requester.requestJsonAndCheck('GET', url)\n"
        "        print('SENT', url)\n"
        "    except ReleaseError as exc:\n"
        "        print('REFUSED', exc.message)\n"
        "    except Exception as exc:  # an HTTP error status: the request went there\n"
        "        print('SENT', url, type(exc).__name__)\n"
    )
    (tmp_path / "thief").mkdir()
    with MirrorServer(tmp_path / "thief") as thief, GitHubServer(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, GitHubServer)
        urls = [f"{thief.url}/api/v3/repos/tea/tea", f"{github.url.replace('127.0.0.1', 'localhost')}/api/v3/x",
                f"{github.api_url}/repos/tea/tea"]
        proc = subprocess.run([sys.executable, "-O", "-c", script, github.api_url, GH_SECRET, *urls],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        verdicts = [line.split()[0] for line in proc.stdout.splitlines()]
        assert verdicts == ["REFUSED", "REFUSED", "SENT"], proc.stdout
        assert thief.headers_seen() == []
        assert GH_SECRET not in proc.stdout


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://api.github.com/repos/o/r/releases?page=2", True),
    ("https://api.github.com:443/repos/o/r", True),
    ("https://uploads.github.com/repos/o/r/releases/1/assets?name=x", True),
    ("http://api.github.com/repos/o/r/releases?page=2", False),  # clear text
    ("http://api.github.com:80/repos/o/r/releases?page=2", False),
    ("https://evil.githubusercontent.com/api/v3/x?page=2", False),
    ("https://gist.github.com/api/x?page=2", False),
    ("https://api.github.com:8443/x", False),
    ("https://api.github.com.evil.example/x", False),
])
def test_where_the_token_may_go_for_github_com(url: str, allowed: bool) -> None:
    from teadist.errors import ReleaseError
    from teadist.release.publish import check_token_destination, token_origins

    origins = token_origins("https://api.github.com")
    if allowed:
        check_token_destination(url, origins)
    else:
        with pytest.raises(ReleaseError):
            check_token_destination(url, origins)


# -- review 11a #4 (second half), #7: GITHUB_API_URL is checked, and never echoed with credentials --
@pytest.mark.parametrize("api_url", [f"https://x-access-token:{GH_SECRET}@127.0.0.1:9/api/v3",
                                     "https://bot:hunter2@127.0.0.1:9/api/v3",
                                     "http://[::1", "ftp://127.0.0.1/api/v3", "http://127.0.0.1:99999/api",
                                     # would end up in every asset URL the published index lists
                                     f"https://127.0.0.1:9/api/v3?access_token={GH_SECRET}",
                                     f"https://127.0.0.1:9/api/v3#{GH_SECRET}"])
@pytest.mark.parametrize("debug", [False, True])
def test_a_bad_github_api_url_is_a_usage_error_that_shows_no_secret(api_url: str, debug: bool, dist: Path,
                                                                    console: Callable[..., Result]) -> None:
    result = console(*(["--debug"] if debug else []), "release", "publish", "--tag", TAG, "--repo", "tea/tea",
                     "--dist", dist, env={"GITHUB_TOKEN": GH_SECRET, "GITHUB_API_URL": api_url})
    assert result.code == 2, result.err
    assert "GITHUB_API_URL" in result.err
    assert GH_SECRET not in result.out + result.err and "hunter2" not in result.out + result.err
    if not debug:
        assert "Traceback" not in result.err


# -- review 11a #6: an asset JSON without a digest key never ends in a traceback ------------------
class NoDigestKey(GitHubServer):
    """An older GitHub Enterprise: asset JSON has no ``digest`` key, and reading an asset by its URL
    fails (it was deleted meanwhile) — PyGithub completes objects lazily through that URL."""

    def asset_json(self, asset: GhAsset) -> dict[str, Any]:
        data = super().asset_json(asset)
        data.pop("digest")
        return data

    def route(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        if method == "GET" and re.match(r"^/api/v3/repos/tea/tea/releases/assets/\d+$", path) and \
                "application/octet-stream" not in handler.headers.get("Accept", ""):
            handler.send_json(404, {"message": "Not Found"})
            return
        super().route(handler, method)


def test_an_asset_without_a_digest_key_is_proven_by_download(dist: Path, cli: Callable[..., Result],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with NoDigestKey(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, NoDigestKey)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        draft = github.add_release(TAG)
        chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[0]
        github.add_asset(draft, chunk, (dist / chunk).read_bytes())
        result = _publish(cli, dist)
        assert "Traceback" not in result.err
        assert result.code == 0, result.err
        assert published_matches_index(github, index_assets(dist))
        assert github.downloads >= 1  # proven by its bytes, not by a digest it does not have


# -- review 11a #7: malformed URLs from the server ----------------------------------------------
class MalformedUrls(GitHubServer):
    def __init__(self, case: str) -> None:
        super().__init__(repo="tea/tea", token=GH_SECRET, digests=False)
        self.case = case

    def route(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        if self.case == "location" and method == "GET" and \
                re.match(r"^/api/v3/repos/tea/tea/releases/assets/\d+$", path) and \
                "application/octet-stream" in handler.headers.get("Accept", ""):
            handler.send_response(302)
            handler.send_header("Location", "https://[objects.githubusercontent.com/x")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        super().route(handler, method)

    def asset_json(self, asset: GhAsset) -> dict[str, Any]:
        data = super().asset_json(asset)
        if self.case == "asset_url":
            data["url"] = "http://[::1/x"
        return data


@pytest.mark.parametrize("case", ["location", "asset_url"])
def test_a_malformed_url_from_the_server_is_no_traceback(case: str, dist: Path, cli: Callable[..., Result],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with MalformedUrls(case) as github:
        assert isinstance(github, MalformedUrls)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        draft = github.add_release(TAG)
        chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[0]
        github.add_asset(draft, chunk, (dist / chunk).read_bytes())
        github.add_asset(draft, "stale.bin", b"not listed")
        result = _publish(cli, dist)
        assert "Traceback" not in result.err and "ValueError" not in result.err, result.err
        assert _outcome_is_acceptable(result.code, github, dist), result.err


# -- review 11a #8: a download that failed is not a download that differed ------------------------
class FlakyCdn(GitHubServer):
    fail = 0

    def route(self, handler: _Handler, method: str) -> None:
        if self.fail and method == "GET" and handler.path.startswith("/_cdn/"):
            self.fail -= 1
            handler.send_json(502, {"message": "Bad Gateway"})
            return
        super().route(handler, method)


def test_a_failed_check_of_a_published_asset_says_run_again_not_delete(dist: Path, cli: Callable[..., Result],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with FlakyCdn(repo="tea/tea", token=GH_SECRET, digests=False) as github:
        assert isinstance(github, FlakyCdn)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        assert _publish(cli, dist).code == 0
        github.fail = 1
        again = _publish(cli, dist)
        assert github.fail == 0  # the fault happened
        assert again.code == 1, again.err
        assert "delete the release" not in again.err and "differs" not in again.err, again.err
        assert "run the command again" in again.err
        assert github.writes[-1].startswith("PATCH")  # nothing written on the published release
        third = _publish(cli, dist)
        assert third.code == 0, third.err
        assert published_matches_index(github, index_assets(dist))


# -- review 11a #2: two runs at once ----------------------------------------------------------------
class StaleListing(GitHubServer):
    """Lists one asset as GitHub showed it a moment ago (``starter``: another run was uploading it);
    read by its id, it is the finished, proven upload."""

    stale_name = ""
    _listing = threading.local()

    def asset_json(self, asset: GhAsset) -> dict[str, Any]:
        data = super().asset_json(asset)
        if asset.name == self.stale_name and getattr(self._listing, "active", False):
            data.update(state="starter", size=0, digest=None)
        return data

    def route(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        first_listing = method == "GET" and path.endswith("/assets") and self.stale_name != ""
        self._listing.active = first_listing
        try:
            super().route(handler, method)
        finally:
            self._listing.active = False
            if first_listing:
                self.stale_name = ""  # later listings show what is there now


def test_an_asset_seen_unfinished_is_read_again_before_it_is_deleted(dist: Path, cli: Callable[..., Result],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with StaleListing(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, StaleListing)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        draft = github.add_release(TAG)
        chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[0]
        other_runs_upload = github.add_asset(draft, chunk, (dist / chunk).read_bytes())
        github.stale_name = chunk
        result = _publish(cli, dist, "--draft")
        assert result.code == 0, result.err
        assert f"DELETE /api/v3/repos/tea/tea/releases/assets/{other_runs_upload.id}" not in github.writes, \
            "deleted another run's finished upload on the strength of an old listing"


class DeletedBeforePublish(GitHubServer):
    """Another run deletes one asset after this run's last listing, just before its publish."""

    victim = ""

    def route(self, handler: _Handler, method: str) -> None:
        if method == "PATCH" and self.victim:
            for rel in self.releases:
                rel.assets[:] = [a for a in rel.assets if a.name != self.victim]
            self.victim = ""
        super().route(handler, method)


def test_a_release_that_lost_an_asset_while_being_published_fails_loudly(dist: Path, cli: Callable[..., Result],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with DeletedBeforePublish(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, DeletedBeforePublish)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        victim = sorted(n for n in index_assets(dist) if ".part-" in n)[0]
        github.victim = victim
        result = _publish(cli, dist)
        assert github.victim == ""  # the fault happened
        [release] = github.releases
        assert not release.draft and victim not in {a.name for a in release.assets}
        assert result.code == 1, result.err
        assert victim in result.err and "Traceback" not in result.err


class Ordered(GitHubServer):
    """Two publish runs, A and B (told apart by their tokens), ordered the way review 11a found:
    A lists the draft while B's upload of chunk 1 is still ``starter``; A's delete of it may land
    only once B has asked to publish, and B's publish waits for that delete (or for A to finish)."""

    def __init__(self, chunk: str, start_a: Callable[[], subprocess.Popen[str]]) -> None:
        super().__init__(repo="tea/tea", token=None)
        self.chunk, self.start_a = chunk, start_a
        self.a: subprocess.Popen[str] | None = None
        self.a_listed, self.b_uploaded = threading.Event(), threading.Event()
        self.b_patch, self.a_deleted = threading.Event(), threading.Event()

    @staticmethod
    def who(handler: _Handler) -> str:
        return "A" if "tokA" in (handler.headers.get("Authorization") or "") else "B"

    def _a_done(self, seconds: float) -> bool:
        for _ in range(int(seconds * 10)):
            if self.a_deleted.is_set() or (self.a is not None and self.a.poll() is not None):
                return True
            self.a_deleted.wait(0.1)
        return False

    def route(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?")[0]
        who = self.who(handler)
        if who == "A" and method == "GET" and re.search(r"/releases/\d+/assets$", path):
            super().route(handler, method)
            self.a_listed.set()
            return
        if who == "A" and method == "GET" and re.search(r"/releases/assets/\d+$", path):
            self.b_uploaded.wait(30)  # a read by id sees what is there now
        if who == "A" and method == "DELETE":
            self.b_patch.wait(30)
            super().route(handler, method)
            self.a_deleted.set()
            return
        if who == "B" and method == "PATCH":
            self.b_patch.set()
            self._a_done(60)
        super().route(handler, method)

    def _upload(self, handler: _Handler, release_id: int, query: str) -> None:
        from urllib.parse import parse_qs

        name = (parse_qs(query).get("name") or [""])[0]
        if self.who(handler) == "B" and name == self.chunk and self.a is None:
            rel = self.find_release(release_id)
            assert rel is not None
            body = handler.read_body()
            starter = GhAsset(self._id(), name, "application/octet-stream", 0, "starter", None)
            rel.assets.append(starter)  # GitHub shows an upload in progress as 'starter'
            self.a = self.start_a()
            self.a_listed.wait(30)
            starter.state, starter.size, starter.data = "uploaded", len(body), body
            starter.digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.b_uploaded.set()
            handler.send_json(201, self.asset_json(starter))
            return
        super()._upload(handler, release_id, query)


def test_two_publish_runs_at_once_never_publish_an_incomplete_release_with_exit_0(dist: Path) -> None:
    chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[0]
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"}
    env["TEADIST_GITHUB_WRITE_INTERVAL"] = "0"
    command = [str(TEADIST_BIN), "release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", str(dist)]
    box: dict[str, Ordered] = {}

    def start_a() -> subprocess.Popen[str]:
        return subprocess.Popen(command, env={**env, "GITHUB_API_URL": box["gh"].api_url, "GITHUB_TOKEN": "tokA"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    with Ordered(chunk, start_a) as github:
        assert isinstance(github, Ordered)
        box["gh"] = github
        b = subprocess.run(command, env={**env, "GITHUB_API_URL": github.api_url, "GITHUB_TOKEN": "tokB"},
                           capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert github.a is not None, "run A never started: the race was not staged"
        _, a_err = github.a.communicate(timeout=180)
        assert github.a_listed.is_set()
        expected = index_assets(dist)
        for name, code, err in (("A", github.a.returncode, a_err), ("B", b.returncode, b.stderr)):
            assert "Traceback" not in err
            if code == 0:
                assert published_matches_index(github, expected), \
                    f"run {name} exited 0 but the release holds {[a.name for a in github.releases[0].assets]}"
        assert 0 in (b.returncode, github.a.returncode) or not [r for r in github.releases if not r.draft]


class CountingConnections(GitHubServer):
    def __init__(self) -> None:
        super().__init__(repo="tea/tea", token=GH_SECRET)
        self.clients: list[int] = []

    def route(self, handler: _Handler, method: str) -> None:
        self.clients.append(handler.client_address[1])
        super().route(handler, method)


def test_the_guard_keeps_connections_alive(dist: Path, cli: Callable[..., Result],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The guarded connection classes share one keep-alive session per origin: a release is not
    one TCP (TLS, on github.com) handshake per API call."""
    with CountingConnections() as github:
        assert isinstance(github, CountingConnections)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        assert _publish(cli, dist).code == 0
        assert len(github.clients) > 10
        connections = len(set(github.clients))
        assert connections <= 3, f"{connections} connections for {len(github.clients)} requests"


# -- issue 13: the published index says where a browser can read each chunk -----------------------
def _published(github: GitHubServer) -> GhRelease:
    [release] = [r for r in github.releases if r.tag_name == TAG]
    return release


def _api_get(url: str) -> bytes:
    """An asset as a browser reads it through the REST API (Accept: application/octet-stream)."""
    import requests

    response = requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=20)
    assert response.status_code == 200, response.status_code
    return response.content


def test_the_published_index_lists_each_chunks_asset_api_url_and_goes_last(
        github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    github.token = None  # the asset URLs are read the way a page reads them: without a token
    local = index_assets(dist)
    result = _publish(cli, dist, "--json")
    assert result.code == 0, result.err
    release = _published(github)
    assert [a.name for a in release.assets][-1] == "model-manifest.json"  # uploaded last
    ids = {a.name: a.id for a in release.assets}
    index = next(a for a in release.assets if a.name == "model-manifest.json")
    published = json.loads(index.data)
    local_index = json.loads(local.raw)
    for model, local_model in zip(published["models"], local_index["models"], strict=True):
        for chunk, local_chunk in zip(model["chunks"], local_model["chunks"], strict=True):
            api = f"{github.api_url}/repos/tea/tea/releases/assets/{ids[chunk['name']]}"
            assert chunk["urls"] == [*local_chunk["urls"], api]
            assert {k: v for k, v in chunk.items() if k != "urls"} == {k: v for k, v in local_chunk.items()
                                                                       if k != "urls"}
            assert _api_get(api) == (dist / chunk["name"]).read_bytes()
    assert published_matches_index(github, local)
    report = json.loads(result.out)
    assert report["index_sha256"] == hashlib.sha256(index.data).hexdigest() != local["model-manifest.json"]
    # the local index stays as prepare wrote it; the published one is derived from it
    assert (dist / "model-manifest.json").read_bytes() == local.raw
    # a re-run proves the derived index again from the same ids: nothing is written
    before = list(github.writes)
    again = _publish(cli, dist)
    assert again.code == 0, again.err
    assert github.writes == before and "0 uploaded" in again.err


def test_a_chunk_replaced_on_the_draft_gets_a_new_index_never_one_listing_a_gone_asset(
        github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    assert _publish(cli, dist, "--draft").code == 0
    release = _published(github)
    chunk = sorted(n for n in index_assets(dist) if ".part-" in n)[1]
    lost = next(a for a in release.assets if a.name == chunk)
    release.assets.remove(lost)  # gone from the draft (deleted by a person, a failed run …)
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    new = next(a for a in release.assets if a.name == chunk)
    assert new.id != lost.id
    index = json.loads(next(a for a in release.assets if a.name == "model-manifest.json").data)
    listed = [u for m in index["models"] for c in m["chunks"] for u in c["urls"]]
    assert f"/releases/assets/{new.id}" in " ".join(listed) and f"/releases/assets/{lost.id}" not in " ".join(listed)
    assert published_matches_index(github, index_assets(dist))


@pytest.mark.parametrize("case", ["local-index", "other-ids", "foreign-url"])
def test_a_draft_index_that_lists_anything_else_is_replaced(case: str, github: GitHubServer, dist: Path,
                                                            cli: Callable[..., Result]) -> None:
    """An index already on the draft is kept only when it is exactly the derived one: the index as
    prepare wrote it (an earlier teadist), one listing other asset ids, one with a URL added."""
    assert _publish(cli, dist, "--draft").code == 0
    release = _published(github)
    old = next(a for a in release.assets if a.name == "model-manifest.json")
    index = json.loads(old.data)
    if case == "local-index":
        data = (dist / "model-manifest.json").read_bytes()
    else:
        chunk = index["models"][0]["chunks"][0]
        if case == "other-ids":
            chunk["urls"][-1] = chunk["urls"][-1].rsplit("/", 1)[0] + "/999999"
        else:
            chunk["urls"].append("https://thief.example/x")
        data = (json.dumps(index, indent=2) + "\n").encode()
    release.assets.remove(old)
    github.add_asset(release, "model-manifest.json", data)
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    assert published_matches_index(github, index_assets(dist))


def test_a_release_published_by_an_earlier_teadist_is_accepted_as_it_is(
        github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    """A published (immutable) release whose index is the local one without asset URLs lists the
    same files: a re-run says so and changes nothing, instead of calling the release wrong."""
    release = github.add_release(TAG, draft=False)
    for name in index_assets(dist):
        github.add_asset(release, name, (dist / name).read_bytes())
    result = _publish(cli, dist)
    assert result.code == 0, result.err
    assert github.writes == [] and "asset API URL" in result.err


def test_a_chunk_with_no_room_for_its_asset_url_is_refused_before_any_write(
        github: GitHubServer, dist: Path, cli: Callable[..., Result]) -> None:
    raw = json.loads((dist / "model-manifest.json").read_text())
    chunk = raw["models"][0]["chunks"][0]
    chunk["urls"] = [f"https://mirror{i}.example/{chunk['name']}" for i in range(16)]
    (dist / "model-manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
    result = _publish(cli, dist)
    assert result.code == 1 and chunk["name"] in result.err and "16" in result.err, result.err
    assert github.writes == []


def test_the_published_index_is_derived_deterministically_and_drops_only_its_own_asset_urls(dist: Path) -> None:
    import re as re_

    from teadist.release.index import published_index

    raw = json.loads((dist / "model-manifest.json").read_text())
    chunks = raw["models"][0]["chunks"]
    ours = "https://api.github.com/repos/tea/tea/releases/assets/"
    chunks[0]["urls"].append(ours + "5")  # an earlier run's asset, maybe gone: replaced
    chunks[1]["urls"].append("https://api.github.com/repos/other/repo/releases/assets/7")  # someone else's: kept
    data = (json.dumps(raw, indent=2) + "\n").encode()
    where = {c["name"]: f"{ours}{100 + i}" for i, c in enumerate(chunks)}
    mine = re_.compile(re_.escape(ours) + r"\d+$").match
    first = published_index(data, where, lambda u: mine(u) is not None)
    assert published_index(data, where, lambda u: mine(u) is not None) == first  # same inputs, same bytes
    urls = [c["urls"] for c in json.loads(first)["models"][0]["chunks"]]
    assert urls[0][-1] == ours + "100" and ours + "5" not in urls[0]
    assert urls[1][-2:] == ["https://api.github.com/repos/other/repo/releases/assets/7", ours + "101"]


class NegativeIds(GitHubServer):
    """Hands out asset ids no asset has (a hostile or broken server)."""

    def asset_json(self, asset: GhAsset) -> dict[str, Any]:
        return {**super().asset_json(asset), "id": -asset.id}


def test_an_asset_id_no_asset_has_never_reaches_the_published_index(dist: Path, cli: Callable[..., Result],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with NegativeIds(repo="tea/tea", token=GH_SECRET) as github:
        assert isinstance(github, NegativeIds)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_SECRET)
        result = _publish(cli, dist)
        assert result.code == 1 and "the id -" in result.err and "Traceback" not in result.err, result.err
        assert all(r.draft for r in github.releases)
        assert "model-manifest.json" not in {a.name for r in github.releases for a in r.assets}


# -- GITHUB_TOKEN never crosses the network in clear text ------------------------------------------
def test_the_token_never_goes_over_plain_http_to_a_host_not_known_as_loopback(
        github: GitHubServer, dist: Path, console: Callable[..., Result]) -> None:
    """GITHUB_API_URL=http://ghe.example.com/api/v3 sent GITHUB_TOKEN in clear text on every request.
    Shown here with http://0.0.0.0:PORT — the test server, reached through an address
    teadist does not count as loopback, as it would any other host: HF_TOKEN's rule (https, or a
    loopback host) holds for GITHUB_TOKEN too, before any request."""
    api_url = github.api_url.replace("127.0.0.1", "0.0.0.0")
    result = console("release", "publish", "--tag", TAG, "--repo", "tea/tea", "--dist", dist,
                     env={"GITHUB_TOKEN": GH_SECRET, "GITHUB_API_URL": api_url})
    sent = [h for h in github.headers_seen() if GH_SECRET in h.get("Authorization", "")]
    assert sent == [], f"the token went over plain http {len(sent)} times"
    assert result.code == 2, result.err
    assert "GITHUB_API_URL" in result.err and "https" in result.err, result.err
    assert GH_SECRET not in result.out + result.err
