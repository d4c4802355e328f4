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

The index GitHub gets is *derived* from the local one: each chunk's ``urls`` are followed by the
REST API URL of the asset holding it (``{api}/repos/O/R/releases/assets/ID``, read with ``Accept:
application/octet-stream``; unlike ``releases/download/`` URLs it answers with CORS headers, so a
page on any origin can load the chunk). Asset ids exist only once the chunks are uploaded, so
the chunks go first, every one proven; the index is then derived from a fresh listing — the same
models, names, sizes and sha256s, only those URLs added (``index.published_index`` refuses
anything else) — and uploaded last. The derivation is deterministic (same local index, same ids,
same bytes), so a re-run proves the uploaded index by its digest like any other asset and
uploads nothing; a chunk replaced on a draft has a new id, so its index is replaced too. Before
publishing, the final listing must still give the very index that was uploaded (no chunk
replaced meanwhile). The local index is never rewritten: ``release prepare`` owns it. A
release published by an earlier teadist (its index is the local one, without asset URLs) lists
the same files and is accepted as it is, with a warning.

``publish`` converges: run it again after any failure and it finishes the job; run it on a
finished release and it uploads nothing. It finds or creates the release as a draft (walking the
releases: drafts are not found by tag), deletes half-uploaded ``starter`` leftovers, re-lists after
a 422 before deciding (a retried upload that in fact succeeded ends in 422), bounds each upload's
wall-clock time and uploads the index last. A tag with a pre-release suffix is a pre-release.

The token goes only to the API origin and to the upload origin that belongs to it
(``uploads.github.com`` for ``api.github.com``; the API host itself for GitHub Enterprise), decided
on every request's URL as it is sent: a guard under PyGithub (an adapter in its connection
classes) refuses anything else before it leaves. PyGithub's own check is an ``assert``, gone under
``python -O``. Besides, every API path is built here from the repo and ids — listings are paged
by number, a server's ``Link`` or ``url`` values are never followed; the upload URL, the one URL
taken from a response, is checked against the upload origin and this release's path. Asset
downloads follow GitHub's redirect to its CDN without the token. GitHub's answers are read once
into plain values (no lazy PyGithub objects that fetch more on attribute access).

Two runs at once: an asset seen unfinished or unproven is read again by its id before it is
deleted (another run may just have finished it), and the release is listed again after it was
published — a release that lost an asset meanwhile is an error, never exit 0.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from teadist.base.fsutil import plain_filename_problem
from teadist.base.progress import Reporter
from teadist.base.sizes import format_size
from teadist.base.urls import is_loopback_host
from teadist.errors import IntegrityError, ManifestError, NotFoundError, ReleaseError, UsageError
from teadist.release.index import (
    ASSET_NAME_RE,
    RELEASE_MANIFEST,
    check_repo_and_tag,
    is_prerelease,
    listed_assets,
    published_index,
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
    index_sha256: str = ""  # the index as published (the local one plus each chunk's asset URL)


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
_URL_PARTS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)([^?#]*)")


def shown_url(url: object) -> str:
    """A URL as it may appear in a message: no user name or password, no query, at most 120 chars."""
    text = str(url)
    match = _URL_PARTS.match(text)
    if match is None:
        return text.rpartition("@")[2][:120]
    return (match.group(1) + match.group(2).rpartition("@")[2] + match.group(3))[:120]


def url_origin(url: str) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL; refuse anything a parser could read two ways."""
    if not isinstance(url, str) or "\\" in url or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise ReleaseError(f"refusing a malformed URL: {shown_url(url)!r}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # "http://[::1", a port out of range
        raise ReleaseError(f"refusing a malformed URL: {shown_url(url)!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not host:
        raise ReleaseError(f"refusing a URL with credentials, no host or no http(s): {shown_url(url)!r}")
    return scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def check_api_url(api_url: str) -> Origin:
    """GITHUB_API_URL: an http(s) URL with a host and no credentials (the token goes in a header),
    no query and no fragment (every asset URL the published index lists starts with it); plain
    http only to a loopback host (the token would cross the network in clear text)."""
    try:
        origin = url_origin(api_url)
        if origin[0] == "http" and not is_loopback_host(origin[1]):
            raise UsageError(f"GITHUB_API_URL {shown_url(api_url)!r} is plain http to a host that is not loopback: "
                             "GITHUB_TOKEN would cross the network in clear text",
                             hint="use the https URL of the API, e.g. https://HOST/api/v3")
        if "?" in api_url or "#" in api_url:
            raise UsageError(f"GITHUB_API_URL {shown_url(api_url)!r} carries a query or fragment (not shown): "
                             "it would be published in every asset URL of the release index",
                             hint="e.g. https://api.github.com or https://HOST/api/v3")
        return origin
    except ReleaseError:
        match = _URL_PARTS.match(api_url) if isinstance(api_url, str) else None
        if match is not None and "@" in match.group(2):
            raise UsageError(f"GITHUB_API_URL carries a user name or password ({shown_url(api_url)!r} without "
                             "them): the token goes in a header, from GITHUB_TOKEN",
                             hint="remove 'user:password@' from GITHUB_API_URL") from None
        raise UsageError(f"GITHUB_API_URL {shown_url(api_url)!r} is not an http(s) URL with a host",
                         hint="e.g. https://api.github.com or https://HOST/api/v3") from None


def upload_origins(api_url: str) -> set[Origin]:
    """Where uploads may go: github.com's upload host for api.github.com, else the API host itself."""
    api = url_origin(api_url)
    origins = {api}
    if api == ("https", "api.github.com", 443):
        origins.add(("https", "uploads.github.com", 443))
    return origins


def token_origins(api_url: str) -> frozenset[Origin]:
    """The only origins the token may reach: the API's and its upload host's."""
    return frozenset(upload_origins(api_url))


def check_token_destination(url: str, origins: frozenset[Origin]) -> None:
    if url_origin(url) not in origins:
        raise ReleaseError(f"refusing to send the GitHub token to {shown_url(url)}: it goes only to the "
                           "API and its upload host", hint="check GITHUB_API_URL; the server may be hostile")


# The guard under PyGithub. Every request PyGithub sends goes through a requests session of its
# connection classes; ours mount an adapter that checks the URL exactly as it is sent (pagination
# links, URLs from responses, redirects PyGithub follows itself) against the origins registered
# for the token in its Authorization header, and refuses before anything leaves. Connection
# classes are process-wide in PyGithub (``Requester.injectConnectionClasses``), hence a registry
# keyed by token; a request with a token nobody registered is refused too.
_GUARD_LOCK = threading.Lock()
_TOKEN_DESTINATIONS: dict[str, frozenset[Origin]] = {}
_guard_installed = False


def _check_outgoing(url: str, authorization: str | None) -> None:
    credential = authorization.split(" ", 1)[-1] if authorization else None
    with _GUARD_LOCK:
        if credential is not None:
            allowed = _TOKEN_DESTINATIONS.get(credential, frozenset())
        else:
            allowed = frozenset().union(*_TOKEN_DESTINATIONS.values())
    if not allowed:
        raise ReleaseError("refusing a GitHub request: its credential was not registered by teadist")
    check_token_destination(url, allowed)


def _install_guard(token: str, origins: frozenset[Origin]) -> None:
    global _guard_installed
    with _GUARD_LOCK:
        _TOKEN_DESTINATIONS[token] = origins
        if _guard_installed:
            return
        import requests
        from github.Requester import HTTPRequestsConnectionClass, HTTPSRequestsConnectionClass, Requester

        class GuardedAdapter(requests.adapters.HTTPAdapter):
            def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
                _check_outgoing(str(request.url), request.headers.get("Authorization"))
                return super().send(request, *args, **kwargs)

        # Injected connection classes make PyGithub build a connection per request; the session
        # (and so its keep-alive pool) is shared per origin and retry policy instead, so a release
        # is not one TLS handshake per API call.
        # key: origin and the retry policy's id (the policy is kept in the value, so its id stays unique)
        sessions: dict[tuple[str, str, int, int], tuple[requests.Session, GuardedAdapter, object]] = {}

        def guard(connection: HTTPRequestsConnectionClass | HTTPSRequestsConnectionClass) -> None:
            key = (connection.protocol, connection.host, int(connection.port), id(connection.retry))
            with _GUARD_LOCK:
                if key not in sessions:
                    adapter = GuardedAdapter(max_retries=connection.retry, pool_connections=connection.pool_size,
                                             pool_maxsize=connection.pool_size)
                    session = connection.session  # its auth hook keeps requests from reading .netrc
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    sessions[key] = (session, adapter, connection.retry)
                    while len(sessions) > 16:  # one process, many publishers (tests): close the oldest
                        old = sessions.pop(next(iter(sessions)))
                        old[0].close()  # its pools only: a later request on it opens a new connection
                connection.session, connection.adapter, _ = sessions[key]

        class GuardedHTTP(HTTPRequestsConnectionClass):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                guard(self)

            def close(self) -> None:
                pass  # the session is shared (see above)

        class GuardedHTTPS(HTTPSRequestsConnectionClass):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                guard(self)

            def close(self) -> None:
                pass

        Requester.injectConnectionClasses(GuardedHTTP, GuardedHTTPS)
        _guard_installed = True


# -- what GitHub says, read once into plain values (no lazy PyGithub objects) ----------------------
@dataclass(frozen=True)
class RemoteAsset:
    id: int
    name: str
    state: str
    size: int
    digest: str | None  # "sha256:…"; None where GitHub gives none (old assets, GitHub Enterprise)


@dataclass(frozen=True)
class RemoteRelease:
    id: int
    tag: str
    draft: bool
    name: str
    body: str
    upload_url: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _asset_from(data: object) -> RemoteAsset:
    if not isinstance(data, dict) or not (_is_int(data.get("id")) and isinstance(data.get("name"), str) and
                                          isinstance(data.get("state"), str) and _is_int(data.get("size"))):
        raise ReleaseError("GitHub sent a release asset teadist cannot read")
    digest = data.get("digest")
    return RemoteAsset(data["id"], data["name"], data["state"], data["size"],
                       digest if isinstance(digest, str) else None)


def _release_from(data: object) -> RemoteRelease:
    if not isinstance(data, dict) or not (_is_int(data.get("id")) and isinstance(data.get("tag_name"), str) and
                                          isinstance(data.get("draft"), bool)):
        raise ReleaseError("GitHub sent a release teadist cannot read")
    name, body, upload = data.get("name"), data.get("body"), data.get("upload_url")
    return RemoteRelease(data["id"], data["tag_name"], data["draft"], name if isinstance(name, str) else "",
                         body if isinstance(body, str) else "", upload if isinstance(upload, str) else "")


class Verdict(Enum):
    PROVEN = "proven"  # GitHub holds exactly the index's bytes
    DIFFERS = "differs"  # it does not (other bytes, size or state)
    UNKNOWN = "unknown"  # could not be checked (a download failed): neither proven nor condemned


PER_PAGE = 100
MAX_PAGES = 100


class Publisher:
    def __init__(self, repo: str, tag: str, token: str, api_url: str, reporter: Reporter,
                 upload_timeout: float = 3600.0, attempts: int = 3, rate_limit_wait: float = 900.0,
                 write_interval: float = 1.0, prerelease: bool | None = None) -> None:
        check_repo_and_tag(repo, tag)
        check_upload_timeout(upload_timeout)
        check_write_interval(write_interval)
        check_api_url(api_url)
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
        # every API path is built here, from the repo: no URL from a response is ever followed
        # (the one exception, the upload URL, is checked in _upload)
        owner, name = repo.split("/")
        self._repo_path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
        # where a browser reads an asset of this repo (CORS-capable, unlike releases/download/)
        self._asset_url_re = re.compile(re.escape(f"{self._api_url}{self._repo_path}/releases/assets/") + r"\d+$")
        self._full_name: str | None = None
        # (asset id, sha256): assets whose bytes this run has seen equal those (the index is checked
        # against two candidates: the derived one and, on an old published release, the local one)
        self._proven: set[tuple[int, str]] = set()
        self._unknown: dict[str, str] = {}  # asset name -> why it could not be checked
        _install_guard(token, token_origins(self._api_url))
        from github import Auth, Github, GithubRetry

        retry = GithubRetry(total=5, backoff_factor=0.5, max_rate_limit_wait=rate_limit_wait)
        # write_interval: PyGithub's pause between content-creating requests (GitHub's advice
        # against secondary rate limits); tests against the loopback server set it to 0.
        self._gh = Github(auth=Auth.Token(token), base_url=self._api_url, timeout=60, retry=retry,
                          seconds_between_requests=min(0.25, write_interval), seconds_between_writes=write_interval)

    # -- API calls, with PyGithub's and the transport's errors turned into ReleaseError --------
    def _call(self, what: str, fn: Callable[[], Any], missing_ok: bool = False) -> Any:
        import requests
        import urllib3
        from github import GithubException, UnknownObjectException

        try:
            return fn()
        except (ReleaseError, IntegrityError):
            raise
        except UnknownObjectException:
            if missing_ok:
                return None
            raise ReleaseError(f"GitHub refused to {what}: HTTP 404 Not Found") from None
        except GithubException as exc:
            message = exc.data.get("message") if isinstance(exc.data, dict) else None
            shown = message if isinstance(message, str) else ""
            raise ReleaseError(f"GitHub refused to {what}: HTTP {exc.status} {shown[:200]}".strip()) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, RuntimeError, ValueError) as exc:
            # connection errors, timeouts; RuntimeError: PyGithub refusing a redirect to another host;
            # ValueError: requests parsing a malformed Location or URL from the server
            raise ReleaseError(f"could not {what}: {type(exc).__name__}",
                               hint="check GITHUB_API_URL and the network, then run again") from None

    def _json(self, what: str, verb: str, path: str, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, missing_ok: bool = False) -> Any:
        result = self._call(what, lambda: self._gh.requester.requestJsonAndCheck(verb, path, parameters=params,
                                                                                 input=body), missing_ok)
        return None if result is None else result[1]

    def _pages(self, what: str, path: str) -> list[Any]:
        """A listing, page by page as GitHub numbers them (a server's ``Link`` URLs are not followed)."""
        items: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            data = self._json(what, "GET", path, {"per_page": PER_PAGE, "page": page})
            if not isinstance(data, list):
                raise ReleaseError(f"GitHub did not answer with a list when asked to {what}")
            items += data
            if len(data) < PER_PAGE:
                return items
        raise ReleaseError(f"more than {MAX_PAGES * PER_PAGE} entries when asked to {what}")

    def full_name(self) -> str:
        """The repo as GitHub spells it (the upload URL may use that spelling)."""
        if self._full_name is None:
            data = self._json(f"open {self._repo_name}", "GET", self._repo_path)
            name = data.get("full_name") if isinstance(data, dict) else None
            self._full_name = name if isinstance(name, str) else self._repo_name
        return self._full_name

    def find_release(self) -> RemoteRelease | None:
        """Walk the releases (``get_release(tag)`` never finds drafts); two for one tag is an error."""
        releases = [_release_from(r) for r in self._pages("list releases", f"{self._repo_path}/releases")]
        found = [r for r in releases if r.tag == self.tag]
        if len(found) > 1:
            raise ReleaseError(f"{len(found)} releases (or drafts) exist for tag {self.tag}",
                               hint="delete the extra drafts on GitHub, then run again")
        return found[0] if found else None

    def assets(self, release: RemoteRelease) -> dict[str, RemoteAsset]:
        listed = [_asset_from(a) for a in self._pages("list assets", f"{self._repo_path}/releases/{release.id}/assets")]
        found: dict[str, RemoteAsset] = {}
        for asset in listed:
            if asset.name in found:
                raise ReleaseError(f"GitHub lists the asset {asset.name} twice on {self.tag}")
            found[asset.name] = asset
        return found

    def read_asset(self, asset_id: int) -> RemoteAsset | None:
        """The asset as GitHub has it now (None: it is gone)."""
        data = self._json("read an asset", "GET", f"{self._repo_path}/releases/assets/{int(asset_id)}",
                          missing_ok=True)
        return None if data is None else _asset_from(data)

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
        files, index_local = local[:-1], local[-1]
        assert index_local.name == RELEASE_MANIFEST and index_local.data is not None
        chunk_names = _chunk_names(index_local.data)
        self._derive(index_local, {name: 0 for name in chunk_names})  # no room for a URL: refused before any write
        report = PublishReport(self.tag, prerelease=self.prerelease)
        kind = "pre-release" if self.prerelease else "release"
        release = self.find_release()
        if release is None:
            report.plan.append(f"create draft {kind} {self.tag}")
            if dry_run:
                report.plan += [f"upload {a.name} ({format_size(a.size)})" for a in files]
                report.plan.append(f"upload {RELEASE_MANIFEST} (each chunk's asset API URL added)")
                report.plan.append("verify every asset against the index" + ("" if draft else ", then publish"))
                return report
            created = _release_from(self._json("create the draft release", "POST", f"{self._repo_path}/releases",
                                               body={"tag_name": self.tag, "name": self.tag, "body": "",
                                                     "draft": True, "prerelease": self.prerelease}))
            report.created = True
            self.reporter.info(f"created draft {kind} {self.tag}")
            release = self.find_release()  # another run may have created one at the same moment
            if release is None or release.id != created.id:
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
        for asset in files:
            self._converge_listed(release, asset, remote.get(asset.name), report, dry_run, published)
        # The index comes last (its presence means the release is complete), derived from where the
        # chunks are now: a fresh listing after they converged.
        if not dry_run:
            remote = self.assets(release)
        index = self._published_index(index_local, chunk_names, files, remote, report, dry_run)
        if index is None:  # a dry run before the chunks are there: their ids are not known yet
            report.plan.append(f"upload {RELEASE_MANIFEST} (each chunk's asset API URL added)")
        else:
            existing = remote.get(RELEASE_MANIFEST)
            if published and existing is not None and self._verdict(existing, index, report, dry_run) \
                    is not Verdict.PROVEN and self._verdict(existing, index_local, report, dry_run) is Verdict.PROVEN:
                self.reporter.warn(f"the published release {self.tag} has {RELEASE_MANIFEST} as prepared, without "
                                   "each chunk's asset API URL (an earlier teadist): it lists the same files, so it "
                                   "stays; pages on other origins need a new tag to load the chunks from GitHub")
                index = index_local
            self._converge_listed(release, index, existing, report, dry_run, published)
            report.index_sha256 = index.sha256
        if dry_run:
            report.plan.append("verify every asset against the index" + ("" if draft or published else
                                                                            ", then publish"))
            return report
        assert index is not None
        final = [*files, index]
        derived_from = index_local if index is not index_local else None
        self._verify_all(release, final, report, derived_from, chunk_names)
        if release.draft and not draft:
            done = _release_from(self._json("publish the release", "PATCH", f"{self._repo_path}/releases/{release.id}",
                                            body={"name": release.name or self.tag, "body": release.body,
                                                  "draft": False, "prerelease": self.prerelease}))
            if done.draft:
                raise ReleaseError(f"GitHub still shows {self.tag} as a draft after publishing it",
                                   hint="run the command again")
            report.published = True
            # another run (or a person) may have changed the draft between the last listing and the
            # publish: say so loudly rather than exit 0 on an incomplete, now immutable, release
            try:
                self._verify_all(release, final, report, derived_from, chunk_names)
            except ReleaseError as exc:
                raise ReleaseError(f"published {kind} {self.tag}, but it changed while it was published: "
                                   f"{exc.message.removeprefix('release not published: ')}",
                                   hint="check the release on GitHub; if it is incomplete, delete it and run "
                                        "again, or publish a new tag") from None
            self.reporter.info(f"published {kind} {self.tag}")
        return report

    def _converge_listed(self, release: RemoteRelease, asset: LocalAsset, existing: RemoteAsset | None,
                         report: PublishReport, dry_run: bool, published: bool) -> None:
        """Keep ``existing`` when it is proven to hold ``asset``'s bytes, else upload (or replace) it."""
        verdict = None if existing is None else self._verdict(existing, asset, report, dry_run)
        if verdict is Verdict.PROVEN:
            report.skipped.append(asset.name)
            return
        action = "upload" if existing is None else "replace"
        report.plan.append(f"{action} {asset.name}")
        if published:
            if verdict is Verdict.UNKNOWN:
                raise ReleaseError(f"could not check {asset.name} on the published release {self.tag} "
                                   f"({self._unknown.get(asset.name, 'download failed')})",
                                   hint="run the command again")
            raise ReleaseError(f"{asset.name} on the published release {self.tag} "
                               f"{'is missing' if existing is None else 'differs'} and cannot be changed "
                               "(immutable release)", hint="delete the release or publish a new tag")
        if existing is not None and verdict is Verdict.UNKNOWN:
            self.reporter.warn(f"could not download {asset.name} to check it "
                               f"({self._unknown.get(asset.name, 'download failed')}); replacing it")
        if not dry_run:
            self._converge_asset(release, asset, existing, report)

    # -- the index as published ------------------------------------------------------------------
    def asset_url(self, asset_id: int) -> str:
        """Where a browser reads an asset: the REST API, with ``Accept: application/octet-stream``."""
        return f"{self._api_url}{self._repo_path}/releases/assets/{int(asset_id)}"

    def _derive(self, index_local: LocalAsset, ids: dict[str, int]) -> LocalAsset:
        assert index_local.data is not None
        try:
            data = published_index(index_local.data, {name: self.asset_url(i) for name, i in ids.items()},
                                   lambda url: self._asset_url_re.match(url) is not None)
        except ManifestError as exc:
            raise ReleaseError(f"{RELEASE_MANIFEST}: {exc.message}", hint=exc.hint) from None
        return LocalAsset(RELEASE_MANIFEST, len(data), hashlib.sha256(data).hexdigest(), data=data)

    def _published_index(self, index_local: LocalAsset, chunk_names: list[str], files: list[LocalAsset],
                         remote: dict[str, RemoteAsset], report: PublishReport, dry_run: bool) -> LocalAsset | None:
        """The index to upload, derived from the assets now holding the chunks, each of them proven
        (None in a dry run that would still upload a chunk)."""
        wanted = {a.name: a for a in files}
        ids: dict[str, int] = {}
        for name in chunk_names:
            found = remote.get(name)
            if found is None or self._verdict(found, wanted[name], report, dry_run) is not Verdict.PROVEN:
                if dry_run:
                    return None  # that chunk would be uploaded first
                raise ReleaseError(f"{name} is not proven on the release; the index cannot list it yet",
                                   hint="run the command again")
            if found.id <= 0:
                raise ReleaseError(f"GitHub gave the asset {name} the id {found.id}, which no asset has")
            ids[name] = found.id
        return self._derive(index_local, ids)

    def _verdict(self, remote: RemoteAsset, asset: LocalAsset, report: PublishReport,
                 dry_run: bool = False) -> Verdict:
        """Does the remote asset hold exactly the index's bytes: its digest, this run's upload, or a download."""
        if remote.state != "uploaded" or remote.size != asset.size:
            return Verdict.DIFFERS
        if remote.digest:
            return Verdict.PROVEN if remote.digest == asset.digest else Verdict.DIFFERS
        if (remote.id, asset.sha256) in self._proven:
            return Verdict.PROVEN
        if dry_run:
            report.plan.append(f"download {asset.name} to check it (GitHub gives no digest)")
            return Verdict.PROVEN
        verdict = self._download_verdict(remote.id, asset)
        if verdict is Verdict.PROVEN:
            self._proven.add((remote.id, asset.sha256))
            report.downloaded.append(asset.name)
        return verdict

    def _download_verdict(self, asset_id: int, asset: LocalAsset) -> Verdict:
        """Download an asset (the token only to the API; GitHub's CDN redirect without it) and hash it.
        A download that fails is UNKNOWN, not DIFFERS: it proves nothing either way."""
        import requests

        url = f"{self._api_url}{self._repo_path}/releases/assets/{int(asset_id)}"
        digest, seen = hashlib.sha256(), 0
        self._unknown.pop(asset.name, None)
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
                        raise ReleaseError("GitHub redirected the download to plain http")
                    response = session.get(location, headers={"Accept": "application/octet-stream"},
                                           auth=_no_auth, allow_redirects=False, stream=True, timeout=60)
                    hops += 1
                with response:
                    if response.status_code != 200:
                        self._unknown[asset.name] = f"HTTP {response.status_code}"
                        return Verdict.UNKNOWN
                    for block in response.iter_content(_READ_BLOCK):
                        seen += len(block)
                        if seen > asset.size:
                            return Verdict.DIFFERS
                        digest.update(block)
        except requests.RequestException as exc:
            self._unknown[asset.name] = type(exc).__name__
            return Verdict.UNKNOWN
        except ValueError:  # requests reads a Location even when not following it: "https://[x"
            self._unknown[asset.name] = "a malformed redirect"
            return Verdict.UNKNOWN
        except ReleaseError as exc:  # a malformed or downgrading redirect
            self._unknown[asset.name] = exc.message
            return Verdict.UNKNOWN
        return Verdict.PROVEN if seen == asset.size and digest.hexdigest() == asset.sha256 else Verdict.DIFFERS

    def _delete(self, remote: RemoteAsset, report: PublishReport) -> None:
        self.reporter.info(f"deleting {remote.state} asset {remote.name}")
        self._json(f"delete {remote.name}", "DELETE", f"{self._repo_path}/releases/assets/{int(remote.id)}",
                   missing_ok=True)  # already gone: what deleting wanted
        report.deleted.append(remote.name)

    def _replace_unless_proven_now(self, existing: RemoteAsset, asset: LocalAsset, report: PublishReport) -> bool:
        """Read ``existing`` again by its id before deleting it: a listing is a moment ago, and another
        run may have finished that very upload since. True when it is proven now (keep it)."""
        fresh = self.read_asset(existing.id)
        if fresh is None or fresh.name != existing.name:
            return False  # gone already (an id is never another asset's: nothing else is deleted)
        if fresh.name == asset.name and self._verdict(fresh, asset, report) is Verdict.PROVEN:
            self.reporter.info(f"{asset.name} was finished meanwhile (another run?); keeping it")
            return True
        self._delete(fresh, report)
        return False

    def _converge_asset(self, release: RemoteRelease, asset: LocalAsset, existing: RemoteAsset | None,
                        report: PublishReport) -> None:
        """Replace ``existing`` (found unproven) or upload anew, re-listing after every attempt."""
        for attempt in range(1, self.attempts + 1):
            if existing is not None and self._replace_unless_proven_now(existing, asset, report):
                report.skipped.append(asset.name)
                return
            try:
                self._upload(release, asset)
                report.uploaded.append(asset.name)
            except ReleaseError as exc:
                if attempt == self.attempts:
                    raise
                self.reporter.warn(f"{exc.message}; checking what GitHub has before retrying")
            existing = self.assets(release).get(asset.name)  # always re-list: the truth is GitHub's
            if existing is not None and self._verdict(existing, asset, report) is Verdict.PROVEN:
                return  # uploaded, or a failed-looking upload that in fact succeeded
        raise ReleaseError(f"could not upload {asset.name} after {self.attempts} attempts")

    def _upload(self, release: RemoteRelease, asset: LocalAsset) -> None:
        # the exact URL PyGithub will send the token and the bytes to
        url = release.upload_url.split("{?")[0]
        repos = {self._repo_name.lower(), self.full_name().lower()}  # GitHub's own spelling too
        if url_origin(url) not in self._upload_origins or not any(
                urlsplit(url).path.lower().endswith(f"/repos/{name}/releases/{int(release.id)}/assets")
                for name in repos):
            raise ReleaseError(f"refusing to upload to {shown_url(url)}: not this release's upload URL on the "
                               "GitHub API's upload host", hint="check GITHUB_API_URL")
        task = self.reporter.task(f"upload {asset.name}", asset.size)
        body = _VerifiedBody(asset, task.advance)
        headers = {"Content-Type": _content_type(asset.name), "Content-Length": str(asset.size)}
        try:
            _, data = self._bounded(f"uploading {asset.name}", lambda: self._call(
                f"upload {asset.name}", lambda: self._gh.requester.requestMemoryBlobAndCheck(
                    "POST", url, parameters={"name": asset.name, "label": ""}, headers=headers,
                    file_like=body)))  # type: ignore[arg-type]  # a file-like, as PyGithub reads it
        finally:
            body.close()
            task.close()
        uploaded = _asset_from(data)
        if not body.proven():  # the file changed while it was read: those bytes must not stay
            self._json(f"delete {asset.name}", "DELETE", f"{self._repo_path}/releases/assets/{int(uploaded.id)}",
                       missing_ok=True)
            raise IntegrityError(f"{asset.name} changed while it was uploaded; the upload was deleted",
                                 hint="run `teadist release prepare` again")
        if uploaded.name == asset.name and uploaded.state == "uploaded" and uploaded.size == asset.size and (
                not uploaded.digest or uploaded.digest == asset.digest):
            self._proven.add((uploaded.id, asset.sha256))

    def _verify_all(self, release: RemoteRelease, local: list[LocalAsset], report: PublishReport,
                    derived_from: LocalAsset | None, chunk_names: list[str]) -> None:
        """A fresh listing holds exactly ``local``, each proven; and the index uploaded (derived from
        ``derived_from``) is still the one these assets give: no chunk was replaced meanwhile."""
        remote = self.assets(release)
        problems = [f"{name} is not in the index" for name in sorted(set(remote) - {a.name for a in local})]
        if derived_from is not None and all(name in remote for name in chunk_names):
            now = self._derive(derived_from, {name: remote[name].id for name in chunk_names})
            if now.data != local[-1].data:
                problems.append(f"{RELEASE_MANIFEST} lists assets that were replaced meanwhile")
        for asset in local:
            found = remote.get(asset.name)
            if found is None:
                problems.append(f"{asset.name} is missing")
            elif found.state != "uploaded":
                problems.append(f"{asset.name} is in state {found.state}")
            else:
                verdict = self._verdict(found, asset, report)
                if verdict is Verdict.UNKNOWN:
                    problems.append(f"{asset.name} could not be checked "
                                    f"({self._unknown.get(asset.name, 'download failed')})")
                elif verdict is Verdict.DIFFERS:
                    problems.append(f"{asset.name} does not match the index")
        if problems:
            raise ReleaseError("release not published: " + "; ".join(problems),
                               hint="run the command again to converge")


def _chunk_names(raw: bytes) -> list[str]:
    """Every model's chunk names, in order, from the (validated) index bytes."""
    import json

    data = json.loads(raw.decode("utf-8"))
    return [c["name"] for m in data["models"] for c in m.get("chunks", [])]


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
