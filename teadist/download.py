"""teadist's downloader: resumable, verified, bounded retries, auth only where it belongs.

A download grows in a stable partial file beside its destination (``.<name>.<key>.part``) with a
small sidecar recording the validator (ETag) it started from. A re-run resumes with ``Range``
after re-hashing the partial prefix locally; ``Content-Range`` is checked; a server that answers
200 to a range, a 416, or a changed ETag restarts cleanly. SHA-256 is computed while writing
(the network read, the hash and the write overlap in a pipeline). Only a file whose size and
hash match is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from teadist.errors import DiskSpaceError, IntegrityError, NotFoundError, SourceError, TeadistError
from teadist.fsutil import PART_SUFFIX, WriteSink, commit_file, ensure_free_space, is_disk_full, remove_quietly
from teadist.hashing import PipelinedCopier, TruncatedInput
from teadist.progress import Reporter

NET_BUFFER = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff: float = 0.5  # first delay, doubled each time, with jitter
    max_delay: float = 30.0
    stall_timeout: float = 30.0  # no byte for this long: give up on the connection and retry
    connect_timeout: float = 10.0


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): credentials belong to exactly one origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class Auth:
    """A header value that may be sent to exactly one origin (never to a mirror or a redirect elsewhere)."""

    origin: tuple[str, str, int]
    authorization: str

    def headers_for(self, url: str) -> dict[str, str]:
        return {"Authorization": self.authorization} if origin(url) == self.origin else {}


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class _Restart(Exception):
    """The partial can't be continued (200 to a range, 416, another ETag): start from zero."""


def partial_path_for(dest: Path, key: str) -> Path:
    return dest.parent / f".{dest.name}.{key[:16]}{PART_SUFFIX}"


def _session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc credentials from the environment
    session.headers["Accept-Encoding"] = "identity"
    session.headers["User-Agent"] = "teadist"
    return session


class Downloader:
    def __init__(self, reporter: Reporter, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.reporter = reporter
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._local = threading.local()

    @property
    def session(self) -> Any:
        if not hasattr(self._local, "session"):
            self._local.session = _session()
        return self._local.session

    def _delay(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(hinted, self.policy.max_delay)
        base = self.policy.backoff * float(2**attempt)
        return min(self.policy.max_delay, base * (0.5 + random.random()))

    def fetch(self, url: str, dest: Path, size: int | None, sha256: str | None, *,
              auth: Auth | None = None, label: str | None = None) -> tuple[str, int]:
        """Download ``url`` to ``dest``; verify ``size``/``sha256`` when given. Returns (sha256, size)."""
        label = label or dest.name
        key = sha256 or hashlib.sha256(url.encode()).hexdigest()
        partial = partial_path_for(dest, key)
        sidecar = partial.with_name(partial.name + ".json")
        if size is not None:
            have = partial.stat().st_size if partial.exists() else 0
            ensure_free_space(dest.parent, max(0, size - have), label)
        for attempt in (1, 2):  # a hash mismatch gets one fresh download before it counts
            task = self.reporter.task(label, size)
            try:
                digest, total = self._fetch_with_retries(url, partial, sidecar, size, auth, label, task.advance)
            finally:
                task.close()
            problem = None
            if size is not None and total != size:
                problem = IntegrityError(f"{label}: got {total} bytes, expected {size}")
            elif sha256 is not None and digest != sha256:
                problem = IntegrityError(f"{label}: sha256 mismatch from {_host(url)} "
                                         f"(got {digest[:16]}…, expected {sha256[:16]}…)",
                                         hint="the source is corrupt or was changed; try another --source")
            if problem is None:
                break
            remove_quietly(partial)
            remove_quietly(sidecar)
            if attempt == 2:
                raise problem
            self.reporter.warn(f"{problem.message}; downloading it again")
        commit_file(partial, dest)
        remove_quietly(sidecar)
        return digest, total

    # -- internals -------------------------------------------------------------------------
    def _fetch_with_retries(self, url: str, partial: Path, sidecar: Path, size: int | None,
                            auth: Auth | None, label: str, advance: Callable[[int], None]) -> tuple[str, int]:
        hasher = hashlib.sha256()
        have = self._resume_state(partial, sidecar, hasher)
        if have:
            self.reporter.info(f"{label}: resuming after {have} bytes")
            advance(have)
        attempt = 0
        restarts = 0
        while True:
            try:
                return self._attempt(url, partial, sidecar, size, auth, hasher, advance)
            except _Restart as exc:
                restarts += 1
                if restarts > 2:
                    raise SourceError(f"{label}: {exc}; giving up after restarting twice") from None
                self.reporter.warn(f"{label}: {exc}; restarting from the beginning")
                remove_quietly(partial)
                remove_quietly(sidecar)
                hasher = hashlib.sha256()
            except _Retry as exc:
                attempt += 1
                if attempt >= self.policy.attempts:
                    raise SourceError(f"{label}: {exc.reason} (gave up after {attempt} attempts)",
                                      hint="check the network or try another --source") from None
                delay = self._delay(attempt - 1, exc.delay)
                self.reporter.warn(f"{label}: {exc.reason}; retrying in {delay:.1f}s "
                                   f"(attempt {attempt + 1} of {self.policy.attempts})")
                self._sleep(delay)
            except OSError as exc:
                if is_disk_full(exc):
                    remove_quietly(partial)
                    remove_quietly(sidecar)
                    raise DiskSpaceError(f"disk full while downloading {label} to {partial.parent}",
                                         hint=f"free at least {size or 'the model size'} bytes") from None
                raise

    def _resume_state(self, partial: Path, sidecar: Path, hasher: Any) -> int:
        if not partial.exists():
            remove_quietly(sidecar)
            return 0
        have = partial.stat().st_size
        with open(partial, "rb", buffering=0) as fh, PipelinedCopier(n_sinks=1, depth=2) as copier:
            copier.copy_file_range(fh.fileno(), 0, have, [hasher.update])
        return have

    def _open(self, url: str, headers: dict[str, str], auth: Auth | None) -> Any:
        """GET with manual redirects, so credentials are recomputed for every host."""
        import requests

        for _ in range(MAX_REDIRECTS):
            request_headers = {**headers, **(auth.headers_for(url) if auth else {})}
            try:
                resp = self.session.get(url, headers=request_headers, stream=True, allow_redirects=False,
                                        timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
            except requests.exceptions.Timeout:
                raise _Retry(f"no answer from {_host(url)} within {self.policy.stall_timeout:g}s") from None
            except requests.exceptions.ConnectionError as exc:
                raise _Retry(f"cannot connect to {_host(url)} ({_reason(exc)})") from None
            if resp.status_code in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                resp.close()
                url = urljoin(url, resp.headers["Location"])
                continue
            return resp
        raise SourceError(f"too many redirects from {_host(url)}")

    def _attempt(self, url: str, partial: Path, sidecar: Path, size: int | None, auth: Auth | None,
                 hasher: Any, advance: Callable[[int], None]) -> tuple[str, int]:
        import requests

        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            raise _Restart(f"partial file is larger than the expected {size} bytes")
        saved = _read_sidecar(sidecar)
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have and size is not None and have == size:
            return hasher.hexdigest(), have
        resp = self._open(url, headers, auth)
        with resp:
            status = resp.status_code
            if status == 404:
                raise NotFoundError(f"not found: {_host(url)} answered 404 for {urlsplit(url).path}")
            if status in (401, 403):
                raise SourceError(f"{_host(url)} refused access (HTTP {status})",
                                  hint="set HF_TOKEN for gated or private Hub models")
            if status in RETRY_STATUSES:
                raise _Retry(f"{_host(url)} answered HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
            if status == 416:
                raise _Restart("the server refused the resume range (416)")
            etag = resp.headers.get("ETag")
            if status == 206:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != have or (size is not None and total not in (None, size)):
                    raise _Restart(f"the server sent range {start}- of {total}, not {have}- of {size}")
                if saved.get("etag") and etag and saved["etag"] != etag:
                    raise _Restart("the file changed on the server since the partial download (ETag)")
            elif status == 200:
                if have:
                    self.reporter.warn(f"{_host(url)} ignored the resume range; downloading from the start")
                    hasher.__init__()  # type: ignore[misc]
                    os.truncate(partial, 0)
                    have = 0
                declared = resp.headers.get("Content-Length")
                if size is not None and declared is not None and declared.isdigit() and int(declared) != size:
                    raise _Retry(f"{_host(url)} announced {declared} bytes, expected {size}")
            else:
                raise SourceError(f"{_host(url)} answered HTTP {status}")
            _write_sidecar(sidecar, {"url_host": _host(url), "etag": etag or saved.get("etag")})
            remaining = (size - have) if size is not None else None
            declared_len = resp.headers.get("Content-Length")
            if remaining is None and declared_len is not None and declared_len.isdigit():
                remaining = int(declared_len)
            raw = resp.raw
            raw.decode_content = False
            with open(partial, "ab") as out, PipelinedCopier(n_sinks=2, buffer_size=NET_BUFFER, depth=8) as copier:
                try:
                    copier.copy(_Reader(raw), remaining if remaining is not None else 1 << 62,
                                [hasher.update, WriteSink(out)], advance)
                except TruncatedInput as exc:
                    if remaining is not None:
                        raise _Retry(f"connection to {_host(url)} ended after {exc.copied} of "
                                     f"{remaining} bytes") from None
                except (requests.exceptions.RequestException, OSError, _ReadFailed) as exc:
                    if isinstance(exc, OSError) and is_disk_full(exc):
                        raise
                    raise _Retry(f"transfer from {_host(url)} failed ({_reason(exc)})") from None
            total = partial.stat().st_size
            return hasher.hexdigest(), total


class _ReadFailed(Exception):
    pass


class _Reader:
    """``readinto`` over a urllib3 response that returns what has arrived.

    It gathers ``read1`` pieces up to ``min_fill`` bytes (fewer, larger pipeline steps), and
    when a read fails after some bytes arrived it returns those first and raises on the next
    call — so a stalled or cut transfer still leaves every received byte on disk for a resume.
    """

    def __init__(self, raw: Any, min_fill: int = 256 * 1024) -> None:
        self._raw = raw
        self._min_fill = min_fill
        self._pending_error: BaseException | None = None

    def readinto(self, view: memoryview) -> int:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise _ReadFailed(_reason(error)) from error
        filled = 0
        while filled < min(self._min_fill, len(view)):
            try:
                piece = self._raw.read1(len(view) - filled)
            except Exception as exc:
                if filled:
                    self._pending_error = exc
                    return filled
                raise _ReadFailed(_reason(exc)) from exc
            if not piece:
                break
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        return filled


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_sidecar(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data), "utf-8")


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _reason(exc: BaseException) -> str:
    """A short cause without URLs or headers (which could carry secrets)."""
    text = type(exc).__name__
    root = exc.__cause__ or exc.__context__
    while root is not None and root.__cause__ is not None:
        root = root.__cause__
    if root is not None:
        text += f": {type(root).__name__}"
    return text


__all__ = ["Auth", "Downloader", "RetryPolicy", "TeadistError"]
