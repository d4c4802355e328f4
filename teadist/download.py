"""teadist's downloader: resumable, verified, bounded retries, auth only where it belongs.

A download grows in a stable partial file beside its destination (``.<name>.<key>.part``) with a
small sidecar recording the validator (ETag) it started from. A re-run resumes with ``Range``
after re-hashing the partial prefix locally; ``Content-Range`` is checked; a server that answers
200 to a range, a 416, or a changed ETag restarts cleanly. SHA-256 is computed while writing
(the network read, the hash and the write overlap in a pipeline). Only a file whose size and
hash match is renamed into place.
"""

from __future__ import annotations

import functools
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

from teadist.errors import DiskSpaceError, IntegrityError, NotFoundError, SourceError
from teadist.fsutil import PART_SUFFIX, WriteSink, commit_file, ensure_free_space, is_disk_full, remove_quietly
from teadist.hashing import PipelinedCopier, TruncatedInput
from teadist.progress import Reporter

NET_BUFFER = 1024 * 1024
HASH_STEP = 8 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 10
SEGMENTED_MIN_SIZE = 256 * 1024 * 1024  # single files this large are fetched as parallel ranges
SEGMENT_SAVE_STEP = 8 * 1024 * 1024  # progress of each range is saved at least this often


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
                 sleep: Callable[[float], None] = time.sleep, jobs: int = 4,
                 segment_min: int = SEGMENTED_MIN_SIZE) -> None:
        self.reporter = reporter
        self.policy = policy or RetryPolicy()
        self.jobs = jobs
        self.segment_min = segment_min
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
            ensure_free_space(dest.parent, max(0, size - _bytes_done(partial, sidecar)), label)
        for attempt in (1, 2):  # a hash mismatch gets one fresh download before it counts
            task = self.reporter.task(label, size)
            try:
                result = None
                if self._use_segments(partial, sidecar, size):
                    assert size is not None
                    result = _SegmentedFetch(self, url, partial, sidecar, size, auth, label, task.advance).run()
                if result is None:
                    result = self._fetch_with_retries(url, partial, sidecar, size, auth, label, task.advance)
                digest, total = result
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
    def _use_segments(self, partial: Path, sidecar: Path, size: int | None) -> bool:
        if size is None or size < self.segment_min or self.jobs < 2:
            return False
        if partial.exists():  # resume in the mode the partial was started in
            return "segments" in _read_sidecar(sidecar)
        return True

    def retrying(self, label: str, attempt: Callable[[], Any]) -> Any:
        """Call ``attempt`` until it returns, sleeping with backoff after each _Retry (bounded)."""
        failures = 0
        while True:
            try:
                return attempt()
            except _Retry as exc:
                failures += 1
                if failures >= self.policy.attempts:
                    raise SourceError(f"{label}: {exc.reason} (gave up after {failures} attempts)",
                                      hint="check the network or try another --source") from None
                delay = self._delay(failures - 1, exc.delay)
                self.reporter.warn(f"{label}: {exc.reason}; retrying in {delay:.1f}s "
                                   f"(attempt {failures + 1} of {self.policy.attempts})")
                self._sleep(delay)

    def _fetch_with_retries(self, url: str, partial: Path, sidecar: Path, size: int | None,
                            auth: Auth | None, label: str, advance: Callable[[int], None]) -> tuple[str, int]:
        hasher = hashlib.sha256()
        have = self._resume_state(partial, sidecar, hasher)
        if have:
            self.reporter.info(f"{label}: resuming after {have} bytes")
            advance(have)
        restarts = 0
        while True:
            try:
                result: tuple[str, int] = self.retrying(
                    label, functools.partial(self._attempt, url, partial, sidecar, size, auth, hasher, advance))
                return result
            except _Restart as exc:
                restarts += 1
                if restarts > 2:
                    raise SourceError(f"{label}: {exc}; giving up after restarting twice") from None
                self.reporter.warn(f"{label}: {exc}; restarting from the beginning")
                remove_quietly(partial)
                remove_quietly(sidecar)
                hasher = hashlib.sha256()
            except OSError as exc:
                _raise_if_disk_full(exc, partial, sidecar, label, size)
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
            if status == 416:
                raise _Restart("the server refused the resume range (416)")
            _check_status(resp, url)
            etag = resp.headers.get("ETag")
            declared_text = resp.headers.get("Content-Length")
            declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else None
            if status == 206:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != have or (size is not None and total not in (None, size)):
                    raise _Restart(f"the server sent range {start}- of {total}, not {have}- of {size}")
                if saved.get("etag") and etag and saved["etag"] != etag:
                    raise _Restart("the file changed on the server since the partial download (ETag)")
            elif have:
                # 200 to a range: the body starts at byte 0. The caller owns the hasher and the
                # partial, so it restarts both (asking again without a range).
                raise _Restart(f"{_host(url)} ignored the resume range")
            elif size is not None and declared is not None and declared != size:
                raise _Retry(f"{_host(url)} announced {declared} bytes, expected {size}")
            _write_sidecar(sidecar, {"url_host": _host(url), "etag": etag or saved.get("etag")})
            remaining = size - have if size is not None else declared
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


def _raise_if_disk_full(exc: OSError, partial: Path, sidecar: Path, label: str, size: int | None) -> None:
    if is_disk_full(exc):
        remove_quietly(partial)
        remove_quietly(sidecar)
        raise DiskSpaceError(f"disk full while downloading {label} to {partial.parent}",
                             hint=f"free at least {size or 'the model size'} bytes") from None


def _bytes_done(partial: Path, sidecar: Path) -> int:
    if not partial.exists():
        return 0
    segments = _read_sidecar(sidecar).get("segments")
    if isinstance(segments, list):
        return sum(int(seg[2]) - int(seg[0]) for seg in segments)
    return partial.stat().st_size


class _SegmentedFetch:
    """One large file as parallel byte ranges written in place, hashed in order as they land.

    The partial is created at full size; each range's progress is saved in the sidecar every
    few MiB (after its bytes are written), so a killed run resumes each range where it was.
    A hasher thread follows the contiguous downloaded prefix, reading it back from the page
    cache: the SHA-256 is done when the last byte lands, with no pass after the download.
    Returns None when the server does not do ranges (the caller then streams it whole).
    """

    def __init__(self, owner: Downloader, url: str, partial: Path, sidecar: Path, size: int,
                 auth: Auth | None, label: str, advance: Callable[[int], None]) -> None:
        self.owner, self.url, self.partial, self.sidecar = owner, url, partial, sidecar
        self.size, self.auth, self.label, self.advance = size, auth, label, advance
        self.cond = threading.Condition()
        self.segments: list[list[int]] = []
        self.etag: str | None = None
        self.failed: BaseException | None = None

    # -- state ------------------------------------------------------------------------------
    def _load_or_plan(self) -> bool:
        state = _read_sidecar(self.sidecar)
        segments = state.get("segments")
        if self.partial.exists() and state.get("size") == self.size and isinstance(segments, list):
            self.segments = [[int(a), int(b), int(c)] for a, b, c in segments]
            self.etag = state.get("etag")
            done = sum(c - a for a, _, c in self.segments)
            self.owner.reporter.info(f"{self.label}: resuming {len(self.segments)} ranges after {done} bytes")
            self.advance(done)
            return True
        probe = self._probe()
        if probe is None:
            return False
        self.etag = probe
        step = -(-self.size // self.owner.jobs)
        step = -(-step // 65536) * 65536
        self.segments = [[a, min(a + step, self.size), a] for a in range(0, self.size, step)]
        with open(self.partial, "wb") as fh:
            fh.truncate(self.size)
        self._save()
        return True

    def _save(self) -> None:
        _write_sidecar(self.sidecar, {"size": self.size, "etag": self.etag, "segments": self.segments})

    def _prefix(self) -> int:
        for _, end, done in self.segments:
            if done < end:
                return done
        return self.size

    def _probe(self) -> str | None:
        """One-byte range request: does the server do ranges? Its ETag pins the file for resumes."""
        def attempt() -> str | None:
            resp = self.owner._open(self.url, {"Range": "bytes=0-0"}, self.auth)
            with resp:
                _check_status(resp, self.url)
                if resp.status_code != 206:
                    return None
                _, total = _parse_content_range(resp.headers.get("Content-Range"))
                if total is not None and total != self.size:
                    raise SourceError(f"{_host(self.url)} has {total} bytes, expected {self.size}")
                return str(resp.headers.get("ETag") or "")
        result: str | None = self.owner.retrying(self.label, attempt)
        return result

    # -- workers ----------------------------------------------------------------------------
    def _download_segment(self, index: int, fd: int) -> None:
        buf = bytearray(NET_BUFFER)
        view = memoryview(buf)

        def attempt() -> None:
            _, end, done = self.segments[index]
            if done >= end:
                return
            resp = self.owner._open(self.url, {"Range": f"bytes={done}-{end - 1}"}, self.auth)
            with resp:
                _check_status(resp, self.url)
                first, total = _parse_content_range(resp.headers.get("Content-Range"))
                if resp.status_code != 206 or first != done or total not in (None, self.size):
                    raise _Restart("the server stopped honouring byte ranges")
                etag = resp.headers.get("ETag")
                if self.etag and etag and etag != self.etag:
                    raise _Restart("the file changed on the server since the download started (ETag)")
                raw = resp.raw
                raw.decode_content = False
                reader = _Reader(raw, min_fill=64 * 1024)  # small steps: a stalled range loses little
                pos, saved = done, done
                save_step = max(64 * 1024, min(SEGMENT_SAVE_STEP, (end - self.segments[index][0]) // 16))
                try:
                    while pos < end:
                        if self.failed is not None:
                            return
                        n = reader.readinto(view[:min(len(buf), end - pos)])
                        if not n:
                            raise _Retry(f"connection to {_host(self.url)} ended inside a range")
                        os.pwrite(fd, view[:n], pos)
                        pos += n
                        self.advance(n)
                        if pos - saved >= save_step or pos == end:
                            self._mark(index, pos)
                            saved = pos
                except _ReadFailed as exc:
                    raise _Retry(f"transfer from {_host(self.url)} failed ({exc})") from None
                finally:
                    self._mark(index, pos)

        self.owner.retrying(f"{self.label} (range {index + 1})", attempt)

    def _mark(self, index: int, pos: int) -> None:
        with self.cond:
            if pos > self.segments[index][2]:
                self.segments[index][2] = pos
                self._save()
            self.cond.notify_all()

    def _hash(self, hasher: Any) -> None:
        hashed = 0
        with open(self.partial, "rb", buffering=0) as fh:
            buf = bytearray(HASH_STEP)
            view = memoryview(buf)
            while hashed < self.size:
                with self.cond:
                    while self._prefix() <= hashed and self.failed is None:
                        self.cond.wait(0.5)
                    if self.failed is not None:
                        return
                    limit = self._prefix()
                while hashed < limit:
                    fh.seek(hashed)
                    got = fh.readinto(view[:min(len(buf), limit - hashed)])
                    if not got:
                        raise SourceError(f"{self.label}: partial file shrank during the download")
                    hasher.update(view[:got])
                    hashed += got

    def run(self) -> tuple[str, int] | None:
        from concurrent.futures import ThreadPoolExecutor

        if not self._load_or_plan():
            self.owner.reporter.info(f"{_host(self.url)} does not serve byte ranges; downloading in one stream")
            return None
        hasher = hashlib.sha256()
        with open(self.partial, "r+b") as out, ThreadPoolExecutor(len(self.segments) + 1) as pool:
            hashing = pool.submit(self._hash, hasher)
            workers = [pool.submit(self._download_segment, i, out.fileno()) for i in range(len(self.segments))]
            try:
                for worker in workers:
                    worker.result()
            except BaseException as exc:
                with self.cond:
                    self.failed = exc
                    self.cond.notify_all()
                if isinstance(exc, _Restart):
                    remove_quietly(self.sidecar)
                    raise SourceError(f"{self.label}: {exc}", hint="run the command again") from None
                if isinstance(exc, OSError):
                    _raise_if_disk_full(exc, self.partial, self.sidecar, self.label, self.size)
                raise
            hashing.result()
            out.flush()
        return hasher.hexdigest(), self.size


def _check_status(resp: Any, url: str) -> None:
    status = resp.status_code
    if status == 404:
        raise NotFoundError(f"not found: {_host(url)} answered 404 for {urlsplit(url).path}")
    if status in (401, 403):
        raise SourceError(f"{_host(url)} refused access (HTTP {status})",
                          hint="set HF_TOKEN for gated or private Hub models")
    if status in RETRY_STATUSES:
        raise _Retry(f"{_host(url)} answered HTTP {status}", _retry_after(resp.headers.get("Retry-After")))
    if status not in (200, 206):
        raise SourceError(f"{_host(url)} answered HTTP {status}")


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
    """Temp-then-rename, without fsync: it is rewritten often, and a sidecar lost to a power cut
    only costs a re-download (the final hash check still guards the file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), "utf-8")
    os.replace(tmp, path)


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

