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
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from teadist.base.fsutil import WriteSink, commit_file, ensure_free_space, is_disk_full, remove_quietly
from teadist.base.hashing import PipelinedCopier, TruncatedInput
from teadist.base.progress import Reporter
from teadist.errors import IntegrityError, SourceError
from teadist.sources.http import (
    MAX_REDIRECTS,
    NET_BUFFER,
    Auth,
    ReadFailed,
    Restart,
    Retry,
    RetryPolicy,
    StreamReader,
    check_status,
    host_of,
    new_session,
    parse_content_range,
    short_reason,
)
from teadist.sources.partial import bytes_done, partial_path_for, raise_if_disk_full, read_sidecar, write_sidecar
from teadist.sources.segmented import SegmentedFetch

SEGMENTED_MIN_SIZE = 256 * 1024 * 1024  # single files this large are fetched as parallel ranges



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
            self._local.session = new_session()
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
            ensure_free_space(dest.parent, max(0, size - bytes_done(partial, sidecar)), label)
        for attempt in (1, 2):  # a hash mismatch gets one fresh download before it counts
            task = self.reporter.task(label, size)
            try:
                result = None
                if self._use_segments(partial, sidecar, size):
                    assert size is not None
                    result = SegmentedFetch(self, url, partial, sidecar, size, auth, label, task.advance).run()
                if result is None:
                    result = self._fetch_with_retries(url, partial, sidecar, size, auth, label, task.advance)
                digest, total = result
            finally:
                task.close()
            problem = None
            if size is not None and total != size:
                problem = IntegrityError(f"{label}: got {total} bytes, expected {size}")
            elif sha256 is not None and digest != sha256:
                problem = IntegrityError(f"{label}: sha256 mismatch from {host_of(url)} "
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
            return "segments" in read_sidecar(sidecar)
        return True

    def retrying(self, label: str, attempt: Callable[[], Any]) -> Any:
        """Call ``attempt`` until it returns, sleeping with backoff after each Retry (bounded)."""
        failures = 0
        while True:
            try:
                return attempt()
            except Retry as exc:
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
            except Restart as exc:
                restarts += 1
                if restarts > 2:
                    raise SourceError(f"{label}: {exc}; giving up after restarting twice") from None
                self.reporter.warn(f"{label}: {exc}; restarting from the beginning")
                remove_quietly(partial)
                remove_quietly(sidecar)
                hasher = hashlib.sha256()
            except OSError as exc:
                raise_if_disk_full(exc, partial, sidecar, label, size)
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
                raise Retry(f"no answer from {host_of(url)} within {self.policy.stall_timeout:g}s") from None
            except requests.exceptions.ConnectionError as exc:
                raise Retry(f"cannot connect to {host_of(url)} ({short_reason(exc)})") from None
            if resp.status_code in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                resp.close()
                url = urljoin(url, resp.headers["Location"])
                continue
            return resp
        raise SourceError(f"too many redirects from {host_of(url)}")

    def _attempt(self, url: str, partial: Path, sidecar: Path, size: int | None, auth: Auth | None,
                 hasher: Any, advance: Callable[[int], None]) -> tuple[str, int]:
        import requests

        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:
            raise Restart(f"partial file is larger than the expected {size} bytes")
        saved = read_sidecar(sidecar)
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have and size is not None and have == size:
            return hasher.hexdigest(), have
        resp = self._open(url, headers, auth)
        with resp:
            status = resp.status_code
            if status == 416:
                raise Restart("the server refused the resume range (416)")
            check_status(resp, url)
            etag = resp.headers.get("ETag")
            declared_text = resp.headers.get("Content-Length")
            declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else None
            if status == 206:
                start, total = parse_content_range(resp.headers.get("Content-Range"))
                if start != have or (size is not None and total not in (None, size)):
                    raise Restart(f"the server sent range {start}- of {total}, not {have}- of {size}")
                if saved.get("etag") and etag and saved["etag"] != etag:
                    raise Restart("the file changed on the server since the partial download (ETag)")
            elif have:
                # 200 to a range: the body starts at byte 0. The caller owns the hasher and the
                # partial, so it restarts both (asking again without a range).
                raise Restart(f"{host_of(url)} ignored the resume range")
            elif size is not None and declared is not None and declared != size:
                raise Retry(f"{host_of(url)} announced {declared} bytes, expected {size}")
            write_sidecar(sidecar, {"url_host": host_of(url), "etag": etag or saved.get("etag")})
            remaining = size - have if size is not None else declared
            raw = resp.raw
            raw.decode_content = False
            with open(partial, "ab") as out, PipelinedCopier(n_sinks=2, buffer_size=NET_BUFFER, depth=8) as copier:
                try:
                    copier.copy(StreamReader(raw), remaining if remaining is not None else 1 << 62,
                                [hasher.update, WriteSink(out)], advance)
                except TruncatedInput as exc:
                    if remaining is not None:
                        raise Retry(f"connection to {host_of(url)} ended after {exc.copied} of "
                                     f"{remaining} bytes") from None
                except (requests.exceptions.RequestException, OSError, ReadFailed) as exc:
                    if isinstance(exc, OSError) and is_disk_full(exc):
                        raise
                    raise Retry(f"transfer from {host_of(url)} failed ({short_reason(exc)})") from None
            total = partial.stat().st_size
            return hasher.hexdigest(), total
