"""The Hugging Face Hub adapter: the only module that imports huggingface_hub.

One HEAD of teadist's own resolves a file to its commit, LFS sha256 and size (huggingface_hub,
slow to import, is asked only for files whose HEAD carries no LFS sha256); the bytes come through
teadist's own downloader (huggingface_hub neither verifies SHA-256 nor
resumes across runs — FACTS.md). Its errors are turned into teadist errors here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

from teadist.base.urls import Origin, has_dot_segment, host_label, origin_of, url_problem
from teadist.errors import NotFoundError, SourceError
from teadist.formats.manifest import MAX_FILE_SIZE, HfSource

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFICIAL_ORIGIN = Origin("https", "huggingface.co", 443)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_OFFLINE_HINT = "check the network, or use --offline for cached models"
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})

# Calls an attempt until it returns, sleeping with backoff after each ``Retry`` it raises
# (``Downloader.retrying``): the Hub's metadata request follows the same policy as the bytes.
Retrier = Callable[[str, Callable[[], Any]], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class RemoteFile:
    """A Hub file resolved to a commit: its pinned URL, size, sha256 and where a token may go."""

    url: str
    size: int | None
    sha256: str | None
    commit: str | None
    token_origin: Origin | None  # the origin that may receive the token (the configured endpoint's)
    endpoint: str = DEFAULT_ENDPOINT


def is_official_endpoint(endpoint: str) -> bool:
    """Exactly https://huggingface.co (any path), read the way every HTTP client reads it."""
    return url_problem(endpoint) is None and origin_of(endpoint) == OFFICIAL_ORIGIN


def token_for(endpoint: str, token: str | None) -> str | None:
    """Tokens go to the official Hub only, over https: never to a mirror endpoint (FACTS.md), never
    to a URL two parsers read differently."""
    return token if token and is_official_endpoint(endpoint) else None


def same_endpoint(a: str, b: str) -> bool:
    return url_problem(a) is None and url_problem(b) is None and origin_of(a) == origin_of(b)


def saved_token() -> str | None:
    """HF_TOKEN or the token saved by `hf auth login`, as huggingface_hub finds it."""
    from huggingface_hub import get_token

    return get_token()


def hub_url(endpoint: str, repo: str, path: str, revision: str) -> str:
    """``{endpoint}/{repo}/resolve/{revision}/{path}``, quoted as huggingface_hub's ``hf_hub_url`` does."""
    return f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _head(url: str, endpoint: str, token: str | None, timeout: float) -> Any:
    """HEAD on a resolve URL, following redirects within the endpoint's origin only (a renamed
    repository); a redirect elsewhere (the CDN) carries the file's metadata itself and is not followed.
    The token goes only to the endpoint's origin. Raises Retry for a passing failure (429, 5xx, no
    connection, a timeout), SourceError / NotFoundError otherwise."""
    import requests

    from teadist.sources.http import MAX_REDIRECTS, Retry, does_not_resolve, new_session, retry_after, short_reason

    home = origin_of(endpoint)
    session = new_session()
    try:
        for _ in range(MAX_REDIRECTS):
            headers = {"Authorization": f"Bearer {token}"} if token and origin_of(url) == home else {}
            try:
                resp = session.head(url, headers=headers, allow_redirects=False, timeout=timeout)
            except requests.exceptions.RequestException as exc:
                if does_not_resolve(exc):
                    raise SourceError(f"cannot reach the Hub at {host_label(endpoint)} ({short_reason(exc)})",
                                      hint=_OFFLINE_HINT) from None
                raise Retry(short_reason(exc)) from None
            status = resp.status_code
            if status in _TRANSIENT_STATUS:
                raise Retry(f"HTTP {status}", retry_after(resp.headers.get("Retry-After")))
            if status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                try:
                    target = urljoin(url, resp.headers["Location"])
                except ValueError:  # a malformed Location: not followed (the answer's headers still count)
                    return resp
                if url_problem(target) is None and origin_of(target) == home:
                    url = target
                    continue
            return resp
        raise SourceError(f"too many redirects from the Hub at {host_label(endpoint)}")
    finally:
        session.close()


def _raise_for_status(resp: Any, where: str, repo: str) -> None:
    """The Hub's error, by its ``X-Error-Code`` (as huggingface_hub reads it), as a teadist error."""
    status = resp.status_code
    if status < 400:
        return
    code = resp.headers.get("X-Error-Code")
    if code == "GatedRepo":
        raise SourceError(f"{repo} is gated on the Hub and needs an accepted licence and a token",
                          hint="accept the terms on the model page, then set HF_TOKEN")
    if code == "RepoNotFound":
        raise NotFoundError(f"Hub repository not found: {repo}",
                            hint="check the name; private repositories need HF_TOKEN")
    if code == "RevisionNotFound":
        raise NotFoundError(f"Hub revision not found: {where}")
    if code == "EntryNotFound":
        raise NotFoundError(f"file not found on the Hub: {where}")
    raise SourceError(f"the Hub answered HTTP {status} for {where}")


def _etag(value: str | None) -> str | None:
    """An ETag without its weak marker and quotes."""
    if value is None:
        return None
    return value.removeprefix("W/").strip('"')


def resolve(source: HfSource, endpoint: str, token: str | None, timeout: float = 20.0,
            retrying: Retrier | None = None) -> RemoteFile:
    """Resolve a Hub file to its commit, size and LFS sha256 (one HEAD, paths-info if needed).

    The HEAD is teadist's own (the Hub's protocol: ``X-Repo-Commit``, ``X-Linked-Etag`` /
    ``ETag``, ``X-Linked-Size``, ``X-Error-Code``): importing huggingface_hub costs a command
    about a third of a second at start and exit, so it is imported only when the HEAD gives no
    LFS sha256. With ``retrying``, a HEAD that fails for a passing reason (no connection, a
    timeout, 429, 5xx) is retried on teadist's policy, which says so as it goes; without it, it
    is tried once."""
    from teadist.sources.http import Retry

    configured = endpoint.rstrip("/")
    endpoint = (source.endpoint or configured).rstrip("/")
    problem = url_problem(endpoint)
    if problem is not None:
        raise SourceError(f"refusing Hub endpoint {endpoint[:80]!r}: it {problem}")
    # The token belongs to the configured endpoint: a manifest naming another one never gets it.
    send_token = token_for(endpoint, token) if same_endpoint(endpoint, configured) else None
    revision = source.revision or "main"
    where = f"{source.repo}/{source.path}@{revision}"
    if has_dot_segment(source.path) or has_dot_segment(revision):
        raise SourceError(f"refusing Hub file {where[:120]!r}: its path or revision has an empty, '.' or '..' segment")
    url = hub_url(endpoint, source.repo, source.path, revision)
    reach = f"cannot reach the Hub at {host_label(endpoint)}"

    def head() -> Any:
        return _head(url, endpoint, send_token, timeout)

    try:
        resp = head() if retrying is None else retrying(reach, head)
    except Retry as exc:
        raise SourceError(f"{reach} ({exc.reason})", hint=_OFFLINE_HINT) from None
    except SourceError as exc:
        raise SourceError(exc.message, hint=_OFFLINE_HINT) from None
    _raise_for_status(resp, where, source.repo)
    headers = resp.headers
    etag = _etag(headers.get("X-Linked-Etag") or headers.get("ETag"))
    sha256 = etag if etag and _SHA256_RE.match(etag) else None
    redirected = resp.status_code in (301, 302, 303, 307, 308)
    size_text = headers.get("X-Linked-Size") or (None if redirected else headers.get("Content-Length"))
    try:
        size: int | None = int(size_text) if size_text is not None else None
    except ValueError:
        size = None
    commit = headers.get("X-Repo-Commit")
    if commit is not None and not _COMMIT_RE.match(commit):
        raise SourceError(f"the Hub answered a malformed commit {commit[:50]!r} for {where}")
    if sha256 is None:  # not an LFS etag: ask the LFS metadata
        sha256, size = _lfs_metadata(source, endpoint, send_token, commit or revision, where, size, timeout)
    if size is not None and not (type(size) is int and 0 <= size <= MAX_FILE_SIZE):
        raise SourceError(f"the Hub announced an impossible size {str(size)[:40]} for {where}")
    pinned = hub_url(endpoint, source.repo, source.path, commit or revision)
    return RemoteFile(pinned, size, sha256, commit, origin_of(endpoint) if send_token else None, endpoint)


def _lfs_metadata(source: HfSource, endpoint: str, token: str | None, revision: str, where: str,
                  size: int | None, timeout: float) -> tuple[str | None, int | None]:
    """The LFS sha256 and size of a file whose HEAD gave none, from the Hub's paths-info API
    (through huggingface_hub), given at most ``timeout`` seconds in all."""
    from huggingface_hub import HfApi
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import logging as hf_logging

    # Its retry warnings print URLs on stderr; our own errors say what failed.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_constants.HF_HUB_DISABLE_TELEMETRY = True  # no request to any host but the endpoint
    sha256 = None
    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        infos = _within(timeout, lambda: list(api.get_paths_info(source.repo, [source.path], revision=revision)))
        for info in infos:
            lfs = getattr(info, "lfs", None)
            if getattr(info, "path", None) == source.path and lfs is not None:
                sha256, size = lfs.sha256, lfs.size
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        raise SourceError(f"the Hub sent malformed file metadata for {where}") from None
    except GatedRepoError:
        raise SourceError(f"{source.repo} is gated on the Hub and needs an accepted licence and a token",
                          hint="accept the terms on the model page, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"Hub repository not found: {source.repo}",
                            hint="check the name; private repositories need HF_TOKEN") from None
    except RevisionNotFoundError:
        raise NotFoundError(f"Hub revision not found: {where}") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise SourceError(f"the Hub answered HTTP {status} for {where}") from None
    except _transport_errors() as exc:  # connection errors and timeouts of its HTTP client
        from teadist.sources.http import short_reason

        raise SourceError(f"cannot reach the Hub at {host_label(endpoint)} ({short_reason(exc)})",
                          hint=_OFFLINE_HINT) from None
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256_RE.match(sha256)):
        raise SourceError(f"the Hub sent a malformed LFS sha256 for {where}")
    return sha256, size


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client errors huggingface_hub lets through: httpx (1.x) or httpx2 (2.x), and OSError."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, given at most ``seconds`` in all: huggingface_hub's client times out per read, so
    an endpoint sending its answer a byte at a time would hold it for ever. Past the deadline the
    call is left to end on its own (its daemon thread) and TimeoutError is raised."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc

    worker = threading.Thread(target=run, name="teadist-hub-metadata", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no complete answer within {seconds:g}s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value
