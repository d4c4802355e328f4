"""GitHub Releases: ``release publish`` (converging), with the release index as the only truth.

The only module that imports PyGithub. What is published is exactly what ``model-manifest.json``
lists (every model's chunks and the listed files), plus the index itself:

- **before any write** the dist folder is checked against the index: every listed file present,
  a regular file reached without a symlink, its size and SHA-256 those of the index; nothing
  unlisted beside them (hidden files are ignored, never uploaded). Any difference stops here.
- an upload reads the file it checked (same inode, size, mtime, ctime) and hashes what it sends;
  bytes that differ from the index are deleted again, never kept.
- an asset already on the draft is kept only when it is *proven*: GitHub's ``digest`` equals the
  index, or (no digest: old assets, GitHub Enterprise) its bytes were downloaded and hashed, or it
  is the asset this run uploaded from hashed bytes. Anything else is replaced; assets the index
  does not list are deleted.
- the release is published only after a fresh listing shows exactly the listed names, each proven.

``publish`` converges: run it again after any failure and it finishes the job; run it on a
finished release and it uploads nothing. It finds or creates the release as a draft (walking the
releases: drafts are not found by tag), deletes half-uploaded ``starter`` leftovers, re-lists after
a 422 before deciding (a retried upload that in fact succeeded ends in 422), bounds each upload's
wall-clock time and uploads the index last. A tag with a pre-release suffix is a pre-release.

The token goes only to the API origin and to the upload origin that belongs to it
(``uploads.github.com`` for ``api.github.com``; the API host itself for GitHub Enterprise): every
URL taken from a response is checked before PyGithub may send the token there (PyGithub's own
check is an ``assert``, gone under ``python -O``). Asset downloads follow GitHub's redirect to its
CDN without the token.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from teadist.base.fsutil import plain_filename_problem
from teadist.base.progress import Reporter
from teadist.base.sizes import format_size
from teadist.errors import IntegrityError, NotFoundError, ReleaseError, UsageError
from teadist.release.index import (
    ASSET_NAME_RE,
    RELEASE_MANIFEST,
    check_repo_and_tag,
    is_prerelease,
    listed_assets,
    read_index,
)

MAX_ASSETS = 1000
ASSET_LIMIT = 2**31  # GitHub refuses assets of 2 GiB or more
MAX_UPLOAD_TIMEOUT = 7 * 24 * 3600.0
MAX_WRITE_INTERVAL = 3600.0
_READ_BLOCK = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


@dataclass
class LocalAsset:
    """A file the index lists, as checked in the dist folder (or the index's own bytes)."""

    name: str
    size: int
    sha256: str
    path: Path | None = None
    data: bytes | None = None  # the index: uploaded from the exact bytes that were validated
    identity: tuple[int, ...] = ()  # (dev, inode, size, mtime_ns, ctime_ns) when it was hashed

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256


@dataclass
class PublishReport:
    tag: str
    prerelease: bool = False
    created: bool = False
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    published: bool = False
    plan: list[str] = field(default_factory=list)


# -- the dist folder against the index ------------------------------------------------------------
def preflight(dist: Path, repo: str, tag: str) -> list[LocalAsset]:
    """Every listed file checked (size, sha256, no symlink), nothing unlisted; the index last."""
    if not dist.is_dir():
        raise NotFoundError(f"dist folder not found: {dist}", hint="run `teadist release prepare` first")
    raw, index = read_index(dist / RELEASE_MANIFEST)
    if (index.get("repo"), index.get("tag")) != (repo, tag):
        raise ReleaseError(f"{RELEASE_MANIFEST} was prepared for {index.get('repo')} {index.get('tag')}, "
                           f"not {repo} {tag}: its download URLs would be wrong",
                           hint="run `teadist release prepare` with this --tag and --repo")
    listed = listed_assets(index)
    if len(listed) + 1 > MAX_ASSETS:
        raise ReleaseError(f"{len(listed) + 1} assets: a GitHub release holds at most {MAX_ASSETS}")
    names = {a.name for a in listed} | {RELEASE_MANIFEST}
    stray = sorted(e for e in os.listdir(dist) if e not in names and not e.startswith("."))
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        raise ReleaseError(f"{dist} holds files the release index does not list: {shown}",
                           hint="remove them, or run `teadist release prepare` again into an empty folder")
    for asset in listed:
        if plain_filename_problem(asset.name) or not ASSET_NAME_RE.match(asset.name):
            raise ReleaseError(f"asset name {asset.name!r} is not safe: use letters, digits, '.', '_', '+', '-'")
        if asset.size >= ASSET_LIMIT:
            raise ReleaseError(f"asset {asset.name} is {format_size(asset.size)}: GitHub refuses 2 GiB or more",
                               hint="split it: teadist split --chunk-size 1.9G")
    with ThreadPoolExecutor(max_workers=2) as pool:
        checked = list(pool.map(lambda a: _check_local(dist, a.name, a.size, a.sha256), listed))
    checked.append(LocalAsset(RELEASE_MANIFEST, len(raw), hashlib.sha256(raw).hexdigest(), data=raw))
    return checked


def _open_listed(path: Path) -> int:
    # O_NONBLOCK: a FIFO under a listed name is refused by the type check, never waited on
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise IntegrityError(f"{path.name} is listed in {RELEASE_MANIFEST} but missing from {path.parent}",
                             hint="run `teadist release prepare` again") from None
    except OSError as exc:  # ELOOP: a symlink; anything else unreadable
        raise ReleaseError(f"{path.name}: refusing to publish a symlink or unreadable file ({exc.strerror})",
                           hint="the dist folder must hold the files release prepare wrote") from None


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_local(dist: Path, name: str, size: int, sha256: str) -> LocalAsset:
    path = dist / name
    with os.fdopen(_open_listed(path), "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError(f"{name} is not a regular file")
        if st.st_size != size:
            raise IntegrityError(f"{name} is {st.st_size} bytes, {RELEASE_MANIFEST} says {size}",
                                 hint="it changed after release prepare: run prepare again")
        digest = hashlib.sha256()
        buffer = memoryview(bytearray(_READ_BLOCK))
        while n := fh.readinto(buffer):
            digest.update(buffer[:n])
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"{name} does not match its sha256 in {RELEASE_MANIFEST}",
                                 hint="it changed after release prepare: run prepare again")
    return LocalAsset(name, size, sha256, path=path, identity=_identity(st))


class _VerifiedBody:
    """The upload body: the checked file (or the index bytes), hashed as it is read.

    urllib3 may rewind the body to retry; the hash restarts with it. ``proven()`` tells whether
    exactly the index's bytes went out.
    """

    def __init__(self, asset: LocalAsset, advance: Callable[[int], None]) -> None:
        self.asset = asset
        self._advance = advance
        self._hash = hashlib.sha256()
        self._sent = 0
        if asset.data is not None:
            self._fh: Any = io.BytesIO(asset.data)
            return
        assert asset.path is not None
        self._fh = os.fdopen(_open_listed(asset.path), "rb", buffering=0)
        if _identity(os.fstat(self._fh.fileno())) != asset.identity:
            self._fh.close()
            raise IntegrityError(f"{asset.name} changed after it was checked", hint="run the command again")

    def __len__(self) -> int:  # requests sizes a body by len() - tell()
        return self.asset.size

    def read(self, n: int = -1) -> bytes:
        left = self.asset.size - self._sent
        data: bytes = self._fh.read(left if n is None or n < 0 else min(n, left))
        self._hash.update(data)
        self._sent += len(data)
        self._advance(len(data))
        return data

    def tell(self) -> int:
        return self._sent

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("an upload body can only be rewound to its start")
        self._fh.seek(0)
        self._hash, self._sent = hashlib.sha256(), 0
        return 0

    def proven(self) -> bool:
        return self._sent == self.asset.size and self._hash.hexdigest() == self.asset.sha256

    def close(self) -> None:
        self._fh.close()


# -- where the token may go --------------------------------------------------------------------
def url_origin(url: str) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL; refuse anything a parser could read two ways."""
    if not isinstance(url, str) or "\\" in url or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise ReleaseError(f"refusing a malformed URL from GitHub: {str(url)[:120]!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname or port == -1:
        raise ReleaseError(f"refusing a URL with credentials, no host or a bad port: {url[:120]!r}")
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def upload_origins(api_url: str) -> set[Origin]:
    """Where uploads may go: github.com's upload host for api.github.com, else the API host itself."""
    api = url_origin(api_url)
    origins = {api}
    if api == ("https", "api.github.com", 443):
        origins.add(("https", "uploads.github.com", 443))
    return origins


class Publisher:
    def __init__(self, repo: str, tag: str, token: str, api_url: str, reporter: Reporter,
                 upload_timeout: float = 3600.0, attempts: int = 3, rate_limit_wait: float = 900.0,
                 write_interval: float = 1.0, prerelease: bool | None = None) -> None:
        check_repo_and_tag(repo, tag)
        check_upload_timeout(upload_timeout)
        check_write_interval(write_interval)
        self.tag = tag
        self.prerelease = is_prerelease(tag) if prerelease is None else prerelease
        self.reporter = reporter
        self.upload_timeout = upload_timeout
        self.attempts = attempts
        self._api_url = api_url.rstrip("/")
        self._api_origin = url_origin(self._api_url)
        self._upload_origins = upload_origins(self._api_url)
        self._token = token
        self._repo_name = repo
        self._repo: Any = None
        self._proven: set[int] = set()  # asset ids whose bytes this run has seen equal the index
        from github import Auth, Github, GithubRetry

        retry = GithubRetry(total=5, backoff_factor=0.5, max_rate_limit_wait=rate_limit_wait)
        # write_interval: PyGithub's pause between content-creating requests (GitHub's advice
        # against secondary rate limits); tests against the loopback server set it to 0.
        self._gh = Github(auth=Auth.Token(token), base_url=self._api_url, timeout=60, retry=retry,
                          seconds_between_requests=min(0.25, write_interval), seconds_between_writes=write_interval)

    # -- API calls, with PyGithub's errors turned into ReleaseError --------------------------
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from github import GithubException

        try:
            return fn()
        except (ReleaseError, IntegrityError):
            raise
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            raise ReleaseError(f"GitHub refused to {what}: HTTP {exc.status} {message or ''}".strip()) from None
        except Exception as exc:  # connection errors, timeouts (requests/urllib3)
            raise ReleaseError(f"could not {what}: {type(exc).__name__}",
                               hint="check GITHUB_API_URL and the network, then run again") from None

    def _api_only(self, url: str, what: str) -> None:
        """PyGithub sends the token to URLs taken from responses: only the API origin may get it."""
        if url_origin(url) != self._api_origin:
            raise ReleaseError(f"refusing to send the token to {what} outside the API origin: {url[:120]}")

    @property
    def repo(self) -> Any:
        if self._repo is None:
            self._repo = self._call(f"open {self._repo_name}", lambda: self._gh.get_repo(self._repo_name))
        return self._repo

    def find_release(self) -> Any:
        """Walk the releases (``get_release(tag)`` never finds drafts); two for one tag is an error."""
        releases = self._call("list releases", lambda: list(self.repo.get_releases()))
        found = [r for r in releases if r.tag_name == self.tag]
        if len(found) > 1:
            raise ReleaseError(f"{len(found)} releases (or drafts) exist for tag {self.tag}",
                               hint="delete the extra drafts on GitHub, then run again")
        if found:
            self._api_only(found[0].url, "a release URL")
        return found[0] if found else None

    def assets(self, release: Any) -> dict[str, Any]:
        listed = self._call("list assets", lambda: list(release.get_assets()))
        for asset in listed:
            self._api_only(asset.url, "an asset URL")
        return {a.name: a for a in listed}

    def _bounded(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with a wall-clock bound (uploads to github.com get no socket timeout)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(self.upload_timeout)
        if worker.is_alive():
            raise ReleaseError(f"{what} took longer than {self.upload_timeout:g}s",
                               hint="run the command again: it resumes from what is already uploaded")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # -- the converging publish -------------------------------------------------------------
    def publish(self, dist: Path, dry_run: bool = False, draft: bool = False) -> PublishReport:
        local = preflight(dist, self._repo_name, self.tag)
        report = PublishReport(self.tag, prerelease=self.prerelease)
        kind = "pre-release" if self.prerelease else "release"
        release = self.find_release()
        if release is None:
            report.plan.append(f"create draft {kind} {self.tag}")
            if dry_run:
                report.plan += [f"upload {a.name} ({format_size(a.size)})" for a in local]
                report.plan.append("verify every asset against the index" + ("" if draft else ", then publish"))
                return report
            release = self._call("create the draft release", lambda: self.repo.create_git_release(
                tag=self.tag, name=self.tag, message="", draft=True, prerelease=self.prerelease))
            report.created = True
            self.reporter.info(f"created draft {kind} {self.tag}")
            again = self.find_release()  # another run may have created one at the same moment
            if again is None or again.id != release.id:
                raise ReleaseError(f"the draft for {self.tag} was not found again after creating it",
                                   hint="check the releases on GitHub, then run again")
        published = not release.draft
        remote = self.assets(release)
        wanted = {a.name for a in local}
        for name in sorted(set(remote) - wanted):
            report.plan.append(f"delete {name} (not in the index)")
            if published:
                raise ReleaseError(f"the published release {self.tag} holds {name}, which the index does not "
                                   "list, and cannot be changed (immutable release)",
                                   hint="delete the release or publish a new tag")
            if not dry_run:
                self._delete(remote[name], report)
        for asset in local:  # the index comes last: its presence means the release is complete
            existing = remote.get(asset.name)
            if existing is not None and self._is_proven(existing, asset, report, dry_run):
                report.skipped.append(asset.name)
                continue
            action = "upload" if existing is None else "replace"
            report.plan.append(f"{action} {asset.name}")
            if published:
                raise ReleaseError(f"{asset.name} on the published release {self.tag} "
                                   f"{'is missing' if existing is None else 'differs'} and cannot be changed "
                                   "(immutable release)", hint="delete the release or publish a new tag")
            if not dry_run:
                self._converge_asset(release, asset, existing, report)
        if dry_run:
            report.plan.append("verify every asset against the index" + ("" if draft or published else
                                                                            ", then publish"))
            return report
        self._verify_all(release, local, report)
        if release.draft and not draft:
            self._call("publish the release", lambda: release.update_release(
                name=release.name or self.tag, message=release.body or "", draft=False,
                prerelease=self.prerelease))
            report.published = True
            self.reporter.info(f"published {kind} {self.tag}")
        return report

    def _is_proven(self, remote: Any, asset: LocalAsset, report: PublishReport, dry_run: bool = False) -> bool:
        """The remote asset holds exactly the index's bytes: digest, this run's upload, or a download."""
        if remote.state != "uploaded" or remote.size != asset.size:
            return False
        if remote.digest:
            return bool(remote.digest == asset.digest)
        if remote.id in self._proven:
            return True
        if dry_run:
            report.plan.append(f"download {asset.name} to check it (GitHub gives no digest)")
            return True
        if self._download_matches(remote.id, asset):
            self._proven.add(remote.id)
            report.downloaded.append(asset.name)
            return True
        return False

    def _download_matches(self, asset_id: int, asset: LocalAsset) -> bool:
        """Download an asset (the token only to the API; GitHub's CDN redirect without it) and hash it."""
        import requests

        url = f"{self._api_url}/repos/{self._repo_name}/releases/assets/{int(asset_id)}"
        digest, seen = hashlib.sha256(), 0
        try:
            with requests.Session() as session:
                # an explicit auth hook keeps requests from adding .netrc credentials anywhere
                response = session.get(url, headers={"Accept": "application/octet-stream",
                                                     "Authorization": f"Bearer {self._token}"},
                                       auth=_no_auth, allow_redirects=False, stream=True, timeout=60)
                hops = 0
                while response.status_code in (301, 302, 303, 307, 308) and hops < 5:
                    location = response.headers.get("Location", "")
                    response.close()
                    target = url_origin(location)
                    if self._api_origin[0] == "https" and target[0] != "https":
                        raise ReleaseError(f"GitHub redirected the download of {asset.name} to plain http")
                    response = session.get(location, headers={"Accept": "application/octet-stream"},
                                           auth=_no_auth, allow_redirects=False, stream=True, timeout=60)
                    hops += 1
                with response:
                    if response.status_code != 200:
                        self.reporter.warn(f"could not download {asset.name} to check it (HTTP "
                                           f"{response.status_code}); it will be replaced")
                        return False
                    for block in response.iter_content(_READ_BLOCK):
                        seen += len(block)
                        if seen > asset.size:
                            return False
                        digest.update(block)
        except requests.RequestException as exc:
            self.reporter.warn(f"could not download {asset.name} to check it ({type(exc).__name__}); "
                               "it will be replaced")
            return False
        return seen == asset.size and digest.hexdigest() == asset.sha256

    def _delete(self, remote: Any, report: PublishReport) -> None:
        self.reporter.info(f"deleting {remote.state} asset {remote.name}")
        self._api_only(remote.url, "an asset URL")
        self._call(f"delete {remote.name}", remote.delete_asset)
        report.deleted.append(remote.name)

    def _converge_asset(self, release: Any, asset: LocalAsset, existing: Any, report: PublishReport) -> None:
        """Replace ``existing`` (found unproven) or upload anew, re-listing after every attempt."""
        for attempt in range(1, self.attempts + 1):
            if existing is not None:
                self._delete(existing, report)
            try:
                self._upload(release, asset)
                report.uploaded.append(asset.name)
            except ReleaseError as exc:
                if attempt == self.attempts:
                    raise
                self.reporter.warn(f"{exc.message}; checking what GitHub has before retrying")
            existing = self.assets(release).get(asset.name)  # always re-list: the truth is GitHub's
            if existing is not None and self._is_proven(existing, asset, report):
                return  # uploaded, or a failed-looking upload that in fact succeeded
        raise ReleaseError(f"could not upload {asset.name} after {self.attempts} attempts")

    def _upload(self, release: Any, asset: LocalAsset) -> None:
        # the exact URL PyGithub will send the token and the bytes to
        url = release.upload_url.split("{?")[0]
        repos = {self._repo_name.lower(), str(self.repo.full_name).lower()}  # GitHub's own spelling too
        path = urlsplit(url).path.lower()
        if url_origin(url) not in self._upload_origins or not any(
                path.endswith(f"/repos/{name}/releases/{int(release.id)}/assets") for name in repos):
            raise ReleaseError(f"refusing to upload to {url[:120]}: not this release's upload URL on the "
                               "GitHub API's upload host", hint="check GITHUB_API_URL")
        task = self.reporter.task(f"upload {asset.name}", asset.size)
        body = _VerifiedBody(asset, task.advance)
        try:
            uploaded = self._bounded(f"uploading {asset.name}", lambda: self._call(
                f"upload {asset.name}", lambda: release.upload_asset_from_memory(
                    body, asset.size, name=asset.name, content_type=_content_type(asset.name))))
        finally:
            body.close()
            task.close()
        if not body.proven():  # the file changed while it was read: those bytes must not stay
            self._call(f"delete {asset.name}", uploaded.delete_asset)
            raise IntegrityError(f"{asset.name} changed while it was uploaded; the upload was deleted",
                                 hint="run `teadist release prepare` again")
        if uploaded.state == "uploaded" and uploaded.size == asset.size and (
                not uploaded.digest or uploaded.digest == asset.digest):
            self._proven.add(uploaded.id)

    def _verify_all(self, release: Any, local: list[LocalAsset], report: PublishReport) -> None:
        remote = self.assets(release)
        problems = [f"{name} is not in the index" for name in sorted(set(remote) - {a.name for a in local})]
        for asset in local:
            found = remote.get(asset.name)
            if found is None:
                problems.append(f"{asset.name} is missing")
            elif found.state != "uploaded":
                problems.append(f"{asset.name} is in state {found.state}")
            elif not self._is_proven(found, asset, report):
                problems.append(f"{asset.name} does not match the index")
        if problems:
            raise ReleaseError("release not published: " + "; ".join(problems),
                               hint="run the command again to converge")


def _no_auth(request: Any) -> Any:
    return request


def check_upload_timeout(seconds: float) -> None:
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_UPLOAD_TIMEOUT):
        raise UsageError(f"--upload-timeout must be seconds between 0 and {MAX_UPLOAD_TIMEOUT:g}, not {seconds!r}")


def check_write_interval(seconds: float) -> None:
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_WRITE_INTERVAL):
        raise UsageError(f"TEADIST_GITHUB_WRITE_INTERVAL must be seconds between 0 and {MAX_WRITE_INTERVAL:g}, "
                         f"not {seconds!r}")


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".tar.gz"):
        return "application/gzip"
    return "application/octet-stream"
