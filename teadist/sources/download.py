"""teadist's downloader: resumable, verified, bounded retries, credentials only where they belong.

A download grows in a partial file with a sidecar (``partial``) named by the destination's work
files (``base.workfiles``; in the cache, its target's work folder). A re-run resumes only what the
sidecar proves: a stream partial with ``Range`` after re-hashing its prefix locally, a segmented one
range by range. Every transfer takes a connection slot from its host's lane (``scheduler``): one
pool of keep-alive connections per host, shared by everything one fetch downloads, whose size
follows the measured throughput; every request reports to it (its first answer, its bytes, a
refusal). ``Content-Range`` is checked (a shorter 206 is taken and the rest asked for again); a
server that answers 200 to a range keeps the contiguous prefix already written (the whole file's
SHA-256 still checks it) and goes on in one stream; a changed ETag or a 416 restarts from zero.
SHA-256 is computed
while writing. Only a file whose size and hash match is renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from teadist.base.blocks import BLOCK_SIZE, BlockHasher, BlockMap
from teadist.base.fsutil import PwriteSink, ensure_free_space, is_disk_full
from teadist.base.hashing import PipelinedCopier, TruncatedInput
from teadist.base.progress import ProgressTask, Reporter
from teadist.base.workfiles import WorkFiles
from teadist.errors import IntegrityError, SourceError
from teadist.sources.http import (
    MAX_REDIRECTS,
    NET_BUFFER,
    Auth,
    ReadFailed,
    RefusedURL,
    Restart,
    Retry,
    RetryPolicy,
    StreamReader,
    check_status,
    checked_url,
    does_not_resolve,
    host_of,
    new_session,
    origin,
    parse_content_range,
    short_reason,
)
from teadist.sources.partial import SEGMENTS, STREAM, Partial, bytes_done, raise_if_disk_full
from teadist.sources.scheduler import DEFAULT_ALIGN, DEFAULT_CAP, HostLane, Scheduler
from teadist.sources.segmented import PROGRESS_RESETS, SegmentedFetch, StreamFallback

MAX_RESTARTS = 2
# GitHub's REST URL of a release asset answers with JSON unless asked for the bytes
_GITHUB_ASSET_PATH = re.compile(r"/repos/[^/]+/[^/]+/releases/assets/\d+/?$")


def wants_octet_stream(url: str) -> bool:
    """A GitHub release asset's API URL (``…/repos/O/R/releases/assets/ID``): it gives the bytes
    (through a redirect to the CDN) only with ``Accept: application/octet-stream``."""
    return bool(_GITHUB_ASSET_PATH.search(urlsplit(url).path))
SAVE_PROOF_STEP = 4 * 1024 * 1024  # a stream partial's sidecar proves its bytes at least every 4 MiB


class Downloader:
    """Downloads for one command. ``jobs`` fixes the connections per host; None lets each host's
    lane grow them with the throughput, up to ``cap``. Ranges are cut at multiples of ``align``."""

    def __init__(self, reporter: Reporter, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep, jobs: int | None = None,
                 cap: int = DEFAULT_CAP, align: int = DEFAULT_ALIGN) -> None:
        self.reporter = reporter
        self.policy = policy or RetryPolicy()
        self.scheduler = Scheduler(jobs, cap, align)
        self._sleep = sleep
        self._session: Any = None
        self._session_lock = threading.Lock()

    @property
    def jobs(self) -> int | None:
        return self.scheduler.jobs

    @property
    def session(self) -> Any:
        """One session for every thread: its pool keeps the connections to each host alive between
        ranges, files and shards (sized to the most connections a host may get)."""
        with self._session_lock:
            if self._session is None:
                self._session = new_session(pool_connections=8, pool_maxsize=self.scheduler.most + 4)
            return self._session

    @contextlib.contextmanager
    def reporting(self, reporter: Reporter) -> Iterator[None]:
        """Report to ``reporter`` meanwhile (one bar for the files of a multi-file fetch)."""
        before, self.reporter = self.reporter, reporter
        try:
            yield
        finally:
            self.reporter = before

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    def backoff_delay(self, attempt: int, hinted: float | None) -> float:
        return self._delay(attempt, hinted)

    def _delay(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(hinted, self.policy.max_delay)
        base = self.policy.backoff * float(2**attempt)
        return min(self.policy.max_delay, base * (0.5 + random.random()))

    def fetch(self, url: str, dest: Path | WorkFiles, size: int | None, sha256: str | None, *,
              auth: Auth | None = None, label: str | None = None) -> tuple[str, int]:
        """Download ``url`` to ``dest`` (a path, or a target's work files); verify ``size``/``sha256``
        when given. Returns (sha256, size)."""
        digest, total, _ = self.fetch_with_blocks(url, dest, size, sha256, auth=auth, label=label)
        return digest, total

    def fetch_with_blocks(self, url: str, dest: Path | WorkFiles, size: int | None, sha256: str | None, *,
                          auth: Auth | None = None, label: str | None = None,
                          expected: BlockMap | None = None) -> tuple[str, int, BlockMap]:
        """``fetch``, also returning the file's block map (computed in the pass that hashes it, so it
        is as good as the sha256 it came with). ``expected``: the source's block map, if known; a
        resume keeps the blocks it proves."""
        files = dest if isinstance(dest, WorkFiles) else WorkFiles.beside(dest)
        label = label or files.final.name
        checked_url(url)
        key = sha256 or hashlib.sha256(url.encode()).hexdigest()
        path = files.partial(key)
        sidecar = files.sidecar(path)
        files.ensure_folder()
        if size is not None:
            ensure_free_space(files.folder, max(0, size - bytes_done(path, sidecar)), label)
        for attempt in (1, 2):  # a hash mismatch gets one fresh download before it counts
            partial = Partial.open(path, sidecar, key, size, expected)
            if partial.dropped:
                self.reporter.info(f"{label}: {partial.dropped} bytes at the end of the partial download are not "
                                   "proven by a block hash; fetching them again")
            task = self.reporter.task(label, size)
            try:
                digest, total, blocks = self._download(url, partial, auth, label, task)
            except OSError as exc:
                raise_if_disk_full(exc, partial, label)
                partial.close()
                raise
            except BaseException:
                partial.close()
                raise
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
                partial.commit(files.final)
                return digest, total, blocks
            partial.discard()
            if attempt == 2:
                raise problem
            self.reporter.warn(f"{problem.message}; downloading it again")
        raise AssertionError("unreachable")

    # -- modes ------------------------------------------------------------------------------
    def _download(self, url: str, partial: Partial, auth: Auth | None, label: str,
                  task: ProgressTask) -> tuple[str, int, BlockMap]:
        """Fill ``partial`` in the mode its sidecar proves (whatever ``jobs`` is now), or a fresh one.

        A fresh file of known size with a block boundary inside it goes in ranges (the lane decides
        from the measured speed whether it gets more than one connection); ``--jobs 1`` and files
        of unknown size go in one stream."""
        restarts = 0
        advance = task.advance
        while True:
            segmented = partial.mode == SEGMENTS or (
                partial.mode is None and partial.size is not None and partial.size > self.scheduler.align
                and self.jobs != 1)
            try:
                if segmented:
                    ranges = SegmentedFetch(self, url, partial, auth, label, advance, task.note)
                    digest, total = ranges.run()
                    return digest, total, ranges.blocks.finish()
                task.note("1 conn")  # the bar shows the connections in use in every mode
                return self._stream(url, partial, auth, label, advance)
            except StreamFallback as fallback:
                self.reporter.warn(f"{label}: {fallback.reason}; keeping the first {fallback.prefix} bytes already "
                                   "written (the whole file's SHA-256 still checks them) and going on in one stream")
                partial.keep_prefix(fallback.prefix, partial.etag)
            except Restart as exc:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise SourceError(f"{label}: {exc}; giving up after restarting {MAX_RESTARTS} times",
                                      hint="run the command again later, or try another --source") from None
                self.reporter.warn(f"{label}: {exc}; restarting from the beginning")
                partial.reset()

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

    def _stream(self, url: str, partial: Partial, auth: Auth | None, label: str,
                advance: Callable[[int], None]) -> tuple[str, int, BlockMap]:
        """One stream from where the written prefix ends (re-hashed locally first); a 200 to the
        resume starts from zero — at most MAX_RESTARTS times: a server that cuts every stream and
        ignores every resume (or changes the file each time) would otherwise be downloaded from
        again forever."""
        hasher = hashlib.sha256()
        have = partial.length if partial.mode == STREAM else 0
        if partial.mode != STREAM:
            partial.reset()
        known = partial.blocks[:have // BLOCK_SIZE]
        blocks = BlockHasher(BLOCK_SIZE, known)
        if have:
            self.reporter.info(f"{label}: resuming after {have} bytes")
            known_end = len(known) * BLOCK_SIZE
            with PipelinedCopier(n_sinks=2, depth=2) as copier:
                copier.copy_file_range(partial.fd, 0, known_end, [hasher.update])
                copier.copy_file_range(partial.fd, known_end, have - known_end, [hasher.update, blocks])
            advance(have)
        lane = self.scheduler.lane(url)
        lane.acquire()  # one stream is one connection of the host's shared pool

        def counted(n: int) -> None:
            advance(n)
            lane.moved(n)

        restarts = 0
        try:
            while True:
                try:
                    digest, total = self._stream_attempts(url, partial, auth, hasher, blocks, counted, label, lane)
                    return digest, total, blocks.finish()
                except Restart as exc:
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        raise SourceError(f"{label}: {exc}; giving up after restarting {MAX_RESTARTS} times",
                                          hint="the server does not serve the file consistently; run the command "
                                               "again later, or try another --source") from None
                    self.reporter.warn(f"{label}: {exc}; restarting from the beginning")
                    partial.reset()
                    hasher = hashlib.sha256()
                    blocks = BlockHasher(BLOCK_SIZE)
        finally:
            lane.release()

    def _stream_attempts(self, url: str, partial: Partial, auth: Auth | None, hasher: Any, blocks: BlockHasher,
                         advance: Callable[[int], None], label: str, lane: HostLane) -> tuple[str, int]:
        """Attempts of one stream, each reported to the host's lane like any range: a refusal or
        a dropped connection backs the lane off, and when more slots are held than it now allows
        this stream waits for one before it asks again. Failures count in a row (an attempt that
        brought ``PROGRESS_RESETS`` bytes starts the count again)."""
        failures = 0
        while True:
            before, asked = partial.length, time.monotonic()
            try:
                return self._attempt(url, partial, auth, hasher, blocks, advance, lane)
            except Retry as exc:
                failures = 1 if partial.length - before >= PROGRESS_RESETS else failures + 1
                if failures >= self.policy.attempts:
                    raise SourceError(f"{label}: {exc.reason} (gave up after {failures} attempts)",
                                      hint="check the network or try another --source") from None
                if lane.back_off(asked):
                    self.reporter.warn(f"{exc.reason}; down to {lane.limit} connection(s) to this host")
                delay = self._delay(failures - 1, exc.delay)
                self.reporter.warn(f"{label}: {exc.reason}; retrying in {delay:.1f}s "
                                   f"(attempt {failures + 1} of {self.policy.attempts})")
                if lane.over_limit():  # give the slot up while waiting; take one when there is room
                    lane.release()
                    self._sleep(delay)
                    lane.acquire()
                else:
                    self._sleep(delay)

    def open_url(self, url: str, headers: dict[str, str], auth: Auth | None) -> Any:
        """GET with manual redirects: each hop is checked (http(s) only, no userinfo or backslash in
        the host) and the credential is decided on the URL as requests sends it, per hop — never
        again once the chain has left the credential's origin."""
        import requests

        left_origin = False
        for _ in range(MAX_REDIRECTS):
            hop = {"Accept": "application/octet-stream", **headers} if wants_octet_stream(url) else headers
            request = self.session.prepare_request(requests.Request("GET", checked_url(url), headers=hop))
            if auth is not None and auth.allows(str(request.url), left_origin):
                request.headers["Authorization"] = auth.authorization
            try:
                resp = self.session.send(request, stream=True, allow_redirects=False,
                                         timeout=(self.policy.connect_timeout, self.policy.stall_timeout))
            except requests.exceptions.Timeout:
                raise Retry(f"no answer from {host_of(url)} within {self.policy.stall_timeout:g}s") from None
            except requests.exceptions.ConnectionError as exc:
                if does_not_resolve(exc):  # no retry: the next source may be reachable
                    raise SourceError(f"cannot connect to {host_of(url)}: {short_reason(exc)}") from None
                raise Retry(f"cannot connect to {host_of(url)} ({short_reason(exc)})") from None
            except requests.exceptions.RequestException as exc:
                raise SourceError(f"request to {host_of(url)} failed ({short_reason(exc)})") from None
            except ValueError:  # requests parses a redirect's Location even when it follows none
                raise RefusedURL(f"{host_of(url)} redirected to a malformed URL") from None
            if resp.status_code in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                resp.close()
                try:
                    url = urljoin(url, resp.headers["Location"])
                except ValueError:
                    raise RefusedURL(f"{host_of(str(request.url))} redirected to a malformed URL") from None
                try:
                    if auth is not None and origin(url) != auth.origin:
                        left_origin = True
                except RefusedURL as exc:
                    raise RefusedURL(f"{host_of(request.url)} redirected elsewhere: {exc.message}") from None
                continue
            return resp
        raise SourceError(f"too many redirects from {host_of(url)}")

    def get_range(self, url: str, start: int, length: int, auth: Auth | None = None,
                  label: str | None = None) -> bytes:
        """Exactly ``length`` bytes of ``url`` from ``start``, by ``Range`` (a 206 with the right
        ``Content-Range``), with bounded retries. At most ``length`` bytes are held: one block."""
        label = label or url

        def attempt() -> bytes:
            resp = self.open_url(url, {"Range": f"bytes={start}-{start + length - 1}"}, auth)
            with resp:
                check_status(resp, url)
                first, _ = parse_content_range(resp.headers.get("Content-Range"))
                if resp.status_code != 206 or first != start:
                    raise SourceError(f"{host_of(url)} does not serve the byte range {start}-{start + length - 1}")
                raw = resp.raw
                raw.decode_content = False
                buf = bytearray(length)
                view = memoryview(buf)
                reader = StreamReader(raw, window=self.policy.stall_timeout)
                got = 0
                try:
                    while got < length:
                        n = reader.readinto(view[got:])
                        if not n:
                            break
                        got += n
                except ReadFailed as exc:
                    raise Retry(f"transfer from {host_of(url)} failed ({exc})") from None
                if got < length:
                    raise Retry(f"connection to {host_of(url)} ended after {got} of {length} bytes")
                return bytes(buf)

        data: bytes = self.retrying(label, attempt)
        return data

    def get_small(self, url: str, limit: int) -> bytes | None:
        """A small document (a manifest) without credentials; None on 404. At most ``limit`` + 1 bytes."""
        resp = self.retrying(url, functools.partial(self.open_url, url, {}, None))
        with resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise SourceError(f"{host_of(url)} answered HTTP {resp.status_code} for the manifest")
            reader = StreamReader(resp.raw, window=self.policy.stall_timeout)
            buf = bytearray(limit + 1)
            got = 0
            try:
                while got <= limit and (n := reader.readinto(memoryview(buf)[got:])):
                    got += n
            except ReadFailed as exc:
                raise SourceError(f"reading the manifest from {host_of(url)} failed ({exc})") from None
            return bytes(buf[:got])

    def _attempt(self, url: str, partial: Partial, auth: Auth | None, hasher: Any, blocks: BlockHasher,
                 advance: Callable[[int], None], lane: HostLane) -> tuple[str, int]:
        import requests

        size = partial.size
        have = partial.length
        if size is not None and have > size:
            raise Restart(f"partial file is larger than the expected {size} bytes")
        if have and size is not None and have == size:
            return hasher.hexdigest(), have
        headers = {"Range": f"bytes={have}-"} if have else {}
        _ = self.session  # made (and requests imported) before the clock starts: TTFB is the host's
        asked = time.monotonic()
        resp = self.open_url(url, headers, auth)
        with resp:
            lane.answered(time.monotonic() - asked)
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
                if partial.etag and etag and partial.etag != etag:
                    raise Restart("the file changed on the server since the partial download (ETag)")
            elif have:
                # 200 to a range: the body starts at byte 0. The caller owns the hasher and the
                # partial, so it restarts both (asking again without a range).
                raise Restart(f"{host_of(url)} ignored the resume range")
            elif size is not None and declared is not None and declared != size:
                raise Retry(f"{host_of(url)} announced {declared} bytes, expected {size}")
            if partial.mode != STREAM or (etag and partial.etag != etag):
                partial.start(STREAM, etag or partial.etag)
            remaining = size - have if size is not None else declared
            raw = resp.raw
            raw.decode_content = False
            sink = PwriteSink(partial.fd, have)
            lane.started()
            began = time.monotonic()
            fed = saved = have
            step = max(64 * 1024, min(SAVE_PROOF_STEP, (size or 0) // 16))

            def block_sink(view: memoryview) -> None:
                # The sidecar proves the bytes hashed so far, block by block; a resume re-checks them
                # against the partial (bytes that never reached the disk fail and are fetched again).
                nonlocal fed, saved
                blocks(view)
                fed += len(view)
                if fed - saved >= step:
                    saved = fed
                    partial.proven_blocks(list(blocks.hashes), blocks.tail())

            with contextlib.ExitStack() as proof, PipelinedCopier(n_sinks=3, buffer_size=NET_BUFFER, depth=8) as copier:
                # However the transfer ends, once every byte fed is written (the copier has drained),
                # the sidecar proves all of them: a kill before the next attempt loses nothing.
                proof.callback(lambda: partial.proven_blocks(list(blocks.hashes), blocks.tail()))
                try:
                    reader = StreamReader(raw, window=self.policy.stall_timeout)
                    copier.copy(reader, remaining if remaining is not None else 1 << 62,
                                [hasher.update, sink, block_sink], advance)
                except TruncatedInput as exc:
                    if remaining is not None:
                        raise Retry(f"connection to {host_of(url)} ended after {exc.copied} of "
                                     f"{remaining} bytes") from None
                except (requests.exceptions.RequestException, OSError, ReadFailed) as exc:
                    if isinstance(exc, OSError) and is_disk_full(exc):
                        raise
                    reason = exc if isinstance(exc, ReadFailed) else short_reason(exc)
                    raise Retry(f"transfer from {host_of(url)} failed ({reason})") from None
                finally:
                    lane.stopped(partial.length - have, time.monotonic() - began)
            return hasher.hexdigest(), partial.length
