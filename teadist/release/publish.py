"""GitHub Releases: ``release publish`` (converging).

The only module that imports PyGithub. ``publish`` converges: run it again after any failure
and it finishes the job; run it on a finished release and it uploads nothing. It finds or
creates the release as a draft (walking the releases: drafts are not found by tag), uploads an
asset only if it is missing or its digest differs, deletes half-uploaded ``starter`` leftovers,
re-lists after a 422 before deciding (a retried upload that in fact succeeded ends in 422),
bounds each upload's wall-clock time, uploads the release manifest last, checks every asset is
``uploaded`` with the expected digest, and only then publishes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teadist.base.fsutil import plain_filename_problem
from teadist.base.progress import Reporter
from teadist.base.sizes import format_size
from teadist.errors import NotFoundError, ReleaseError, UsageError
from teadist.release.index import RELEASE_MANIFEST, check_repo_and_tag
from teadist.release.prepare import release_assets

MAX_ASSETS = 1000
ASSET_LIMIT = 2**31  # GitHub refuses assets of 2 GiB or more
_GITHUB_SAFE = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass
class LocalAsset:
    path: Path
    name: str
    size: int
    sha256: str

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256


@dataclass
class PublishReport:
    tag: str
    created: bool = False
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    published: bool = False
    plan: list[str] = field(default_factory=list)


def preflight(dist: Path) -> list[LocalAsset]:
    from teadist.base.hashing import hash_range

    if not dist.is_dir():
        raise NotFoundError(f"dist folder not found: {dist}", hint="run `teadist release prepare` first")
    files = release_assets(dist)
    if not files:
        raise UsageError(f"{dist} holds nothing to publish")
    if len(files) > MAX_ASSETS:
        raise ReleaseError(f"{len(files)} assets: a GitHub release holds at most {MAX_ASSETS}")
    for path in files:
        problem = plain_filename_problem(path.name)
        if problem or not _GITHUB_SAFE.match(path.name):
            raise ReleaseError(f"asset name {path.name!r} is not safe: use letters, digits, '.', '_', '+', '-'")
        size = path.stat().st_size
        if size >= ASSET_LIMIT:
            raise ReleaseError(f"asset {path.name} is {format_size(size)}: GitHub refuses 2 GiB or more",
                               hint="split it: teadist split --chunk-size 1.9G")
    if files[-1].name != RELEASE_MANIFEST:
        raise ReleaseError(f"{dist} has no {RELEASE_MANIFEST}", hint="run `teadist release prepare` first")
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(lambda p: hash_range(p)[0], files))
    return [LocalAsset(p, p.name, p.stat().st_size, d) for p, d in zip(files, digests, strict=True)]


class _ProgressFile:
    """A file-like body that reports progress and can rewind (urllib3 rewinds on retries)."""

    def __init__(self, path: Path, advance: Callable[[int], None]) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._advance(len(data))
        return data

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def close(self) -> None:
        self._fh.close()


class Publisher:
    def __init__(self, repo: str, tag: str, token: str, api_url: str, reporter: Reporter,
                 upload_timeout: float = 3600.0, attempts: int = 3, rate_limit_wait: float = 900.0,
                 write_interval: float = 1.0) -> None:
        from github import Auth, Github, GithubRetry

        check_repo_and_tag(repo, tag)
        self.tag = tag
        self.reporter = reporter
        self.upload_timeout = upload_timeout
        self.attempts = attempts
        retry = GithubRetry(total=5, backoff_factor=0.5, max_rate_limit_wait=rate_limit_wait)
        # write_interval: PyGithub's pause between content-creating requests (GitHub's advice
        # against secondary rate limits); tests against the loopback server set it to 0.
        self._gh = Github(auth=Auth.Token(token), base_url=api_url.rstrip("/"), timeout=60, retry=retry,
                          seconds_between_requests=min(0.25, write_interval), seconds_between_writes=write_interval)
        self._repo_name = repo
        self._repo: Any = None

    # -- API calls, with PyGithub's errors turned into ReleaseError --------------------------
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from github import GithubException

        try:
            return fn()
        except ReleaseError:
            raise
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            raise ReleaseError(f"GitHub refused to {what}: HTTP {exc.status} {message or ''}".strip()) from None
        except Exception as exc:  # connection errors, timeouts (requests/urllib3)
            raise ReleaseError(f"could not {what}: {type(exc).__name__}",
                               hint="check GITHUB_API_URL and the network, then run again") from None

    @property
    def repo(self) -> Any:
        if self._repo is None:
            self._repo = self._call(f"open {self._repo_name}", lambda: self._gh.get_repo(self._repo_name))
        return self._repo

    def find_release(self) -> Any:
        """Walk the releases: ``get_release(tag)`` never finds drafts."""
        releases = self._call("list releases", lambda: list(self.repo.get_releases()))
        return next((r for r in releases if r.tag_name == self.tag), None)

    def assets(self, release: Any) -> dict[str, Any]:
        return {a.name: a for a in self._call("list assets", lambda: list(release.get_assets()))}

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
        local = preflight(dist)
        report = PublishReport(self.tag)
        release = self.find_release()
        if release is None:
            report.plan.append(f"create draft release {self.tag}")
            if dry_run:
                report.plan += [f"upload {a.name} ({format_size(a.size)})" for a in local]
                report.plan.append("verify digests" + ("" if draft else ", then publish"))
                return report
            release = self._call("create the draft release", lambda: self.repo.create_git_release(
                tag=self.tag, name=self.tag, message="", draft=True, prerelease=False))
            report.created = True
            self.reporter.info(f"created draft release {self.tag}")
        remote = self.assets(release)
        for asset in local:
            action = self._decide(asset, remote.get(asset.name))
            report.plan.append(f"{action} {asset.name}")
            if dry_run or action == "skip":
                if action == "skip":
                    report.skipped.append(asset.name)
                continue
            self._converge_asset(release, asset, remote.get(asset.name), report)
        if dry_run:
            report.plan.append("verify digests" + ("" if draft or not release.draft else ", then publish"))
            return report
        self._verify_all(release, local)
        if release.draft and not draft:
            self._call("publish the release", lambda: release.update_release(
                name=release.name or self.tag, message=release.body or "", draft=False,
                prerelease=bool(release.prerelease)))
            report.published = True
            self.reporter.info(f"published release {self.tag}")
        return report

    @staticmethod
    def _decide(asset: LocalAsset, existing: Any) -> str:
        if existing is None:
            return "upload"
        if existing.state == "uploaded" and _digest_matches(existing, asset):
            return "skip"
        return "replace"

    def _converge_asset(self, release: Any, asset: LocalAsset, existing: Any, report: PublishReport) -> None:
        for attempt in range(1, self.attempts + 1):
            if existing is not None:
                if existing.state == "uploaded" and _digest_matches(existing, asset):
                    return  # a retry that in fact succeeded
                if not release.draft:
                    raise ReleaseError(f"{asset.name} on the published release {self.tag} differs and cannot "
                                       "be replaced (immutable release)",
                                       hint="delete the release or publish a new tag")
                self.reporter.info(f"deleting {existing.state} asset {asset.name}")
                self._call(f"delete {asset.name}", existing.delete_asset)
                report.deleted.append(asset.name)
            try:
                self._upload(release, asset)
                report.uploaded.append(asset.name)
            except ReleaseError as exc:
                if attempt == self.attempts:
                    raise
                self.reporter.warn(f"{exc.message}; checking what GitHub has before retrying")
            existing = self.assets(release).get(asset.name)  # always re-list: the truth is GitHub's
            if existing is not None and existing.state == "uploaded" and _digest_matches(existing, asset):
                return
        raise ReleaseError(f"could not upload {asset.name} after {self.attempts} attempts")

    def _upload(self, release: Any, asset: LocalAsset) -> None:
        task = self.reporter.task(f"upload {asset.name}", asset.size)
        body = _ProgressFile(asset.path, task.advance)
        try:
            self._bounded(f"uploading {asset.name}", lambda: self._call(
                f"upload {asset.name}", lambda: release.upload_asset_from_memory(
                    body, asset.size, name=asset.name, content_type=_content_type(asset.name))))
        finally:
            body.close()
            task.close()

    def _verify_all(self, release: Any, local: list[LocalAsset]) -> None:
        remote = self.assets(release)
        problems = []
        for asset in local:
            found = remote.get(asset.name)
            if found is None:
                problems.append(f"{asset.name} is missing")
            elif found.state != "uploaded":
                problems.append(f"{asset.name} is in state {found.state}")
            elif not _digest_matches(found, asset):
                problems.append(f"{asset.name} has digest {found.digest}")
        if problems:
            raise ReleaseError("release not published: " + "; ".join(problems),
                               hint="run the command again to converge")


def _digest_matches(remote: Any, asset: LocalAsset) -> bool:
    digest = getattr(remote, "digest", None)
    if digest:
        return bool(digest == asset.digest)
    return bool(remote.size == asset.size)  # old assets have no digest: size is all GitHub tells


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".tar.gz"):
        return "application/gzip"
    return "application/octet-stream"
