"""A large file fetched as parallel byte ranges written in place, hashed in order as they land."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from teadist.base.blocks import BLOCK_SIZE, BlockHasher
from teadist.errors import SourceError
from teadist.sources.http import (
    NET_BUFFER,
    Auth,
    ReadFailed,
    Restart,
    Retry,
    StreamReader,
    check_status,
    host_of,
    parse_content_range,
)
from teadist.sources.partial import SEGMENTS, Partial

if TYPE_CHECKING:
    from teadist.sources.download import Downloader

HASH_STEP = 8 * 1024 * 1024
SEGMENT_SAVE_STEP = 8 * 1024 * 1024  # progress of each range is saved at least this often


class StreamFallback(Exception):
    """A range was answered with the whole file (200) or the wrong range: ranges can't be trusted
    from this server any more. Bytes up to ``prefix`` are proven; the rest goes in one stream."""

    def __init__(self, reason: str, prefix: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.prefix = prefix


class SegmentedFetch:
    """One large file as parallel byte ranges written in place, hashed in order as they land.

    The partial is created at full size; each range's progress is saved in the sidecar every few
    MiB (after its bytes are written), so a killed run resumes each range where it was — with
    any number of workers. A hasher follows the contiguous downloaded prefix, reading it back
    through the same descriptor: the SHA-256 is done when the last byte lands. ``run`` returns
    None when the server does not do ranges (the caller then streams it whole).
    """

    def __init__(self, owner: Downloader, url: str, partial: Partial, auth: Auth | None, label: str,
                 advance: Callable[[int], None]) -> None:
        assert partial.size is not None
        self.owner, self.url, self.partial = owner, url, partial
        self.size: int = partial.size
        self.auth, self.label, self.advance = auth, label, advance
        self.cond = threading.Condition()
        self.failed: BaseException | None = None
        self.blocks = BlockHasher(BLOCK_SIZE)  # the file's block map, from the same in-order pass as its sha256

    # -- state ------------------------------------------------------------------------------
    def _load_or_plan(self) -> bool:
        if self.partial.mode == SEGMENTS:
            done = self.partial.done_bytes()
            self.owner.reporter.info(f"{self.label}: resuming {len(self.partial.segments)} ranges after "
                                     f"{done} bytes")
            self.advance(done)
            return True
        probe = self._probe()
        if probe is None:
            return False
        step = -(-self.size // max(2, self.owner.jobs))
        step = -(-step // 65536) * 65536
        self.partial.start(SEGMENTS, probe or None,
                           [[a, min(a + step, self.size), a] for a in range(0, self.size, step)])
        return True

    def _prefix(self) -> int:
        for _, end, done in self.partial.segments:
            if done < end:
                return done
        return self.size

    def _probe(self) -> str | None:
        """One-byte range request: does the server do ranges? Its ETag pins the file for resumes."""
        def attempt() -> str | None:
            resp = self.owner.open_url(self.url, {"Range": "bytes=0-0"}, self.auth)
            with resp:
                check_status(resp, self.url)
                if resp.status_code != 206:
                    return None
                _, total = parse_content_range(resp.headers.get("Content-Range"))
                if total is not None and total != self.size:
                    raise SourceError(f"{host_of(self.url)} has {total} bytes, expected {self.size}")
                return str(resp.headers.get("ETag") or "")
        result: str | None = self.owner.retrying(self.label, attempt)
        return result

    # -- workers ----------------------------------------------------------------------------
    def _download_segment(self, index: int) -> None:
        buf = bytearray(NET_BUFFER)
        view = memoryview(buf)
        fd = self.partial.fd

        def attempt() -> None:
            start, end, done = self.partial.segments[index]
            if done >= end or self.failed is not None:
                return
            resp = self.owner.open_url(self.url, {"Range": f"bytes={done}-{end - 1}"}, self.auth)
            with resp:
                check_status(resp, self.url)
                first, total = parse_content_range(resp.headers.get("Content-Range"))
                if resp.status_code != 206 or first != done or total not in (None, self.size):
                    with self.cond:
                        prefix = self._prefix()
                    what = "answered a range request with the whole file" if resp.status_code == 200 \
                        else "sent another range than the one asked for"
                    raise StreamFallback(f"{host_of(self.url)} {what}", prefix)
                etag = resp.headers.get("ETag")
                if self.partial.etag and etag and etag != self.partial.etag:
                    raise Restart("the file changed on the server since the download started (ETag)")
                raw = resp.raw
                raw.decode_content = False
                reader = StreamReader(raw, min_fill=64 * 1024)  # small steps: a stalled range loses little
                pos, saved = done, done
                save_step = max(64 * 1024, min(SEGMENT_SAVE_STEP, (end - start) // 16))
                try:
                    while pos < end:
                        if self.failed is not None:
                            return
                        n = reader.readinto(view[:min(len(buf), end - pos)])
                        if not n:
                            raise Retry(f"connection to {host_of(self.url)} ended inside a range")
                        written = 0
                        while written < n:
                            written += os.pwrite(fd, view[written:n], pos + written)
                        pos += n
                        self.advance(n)
                        if pos - saved >= save_step or pos == end:
                            self._mark(index, pos)
                            saved = pos
                except ReadFailed as exc:
                    raise Retry(f"transfer from {host_of(self.url)} failed ({exc})") from None
                finally:
                    self._mark(index, pos)

        self.owner.retrying(f"{self.label} (range {index + 1})", attempt)

    def _mark(self, index: int, pos: int) -> None:
        """Record progress after the bytes are written (so the sidecar never claims unwritten bytes)."""
        with self.cond:
            if pos > self.partial.segments[index][2]:
                self.partial.segments[index][2] = pos
                self.partial.save()
            self.cond.notify_all()

    def _hash(self, hasher: Any) -> None:
        hashed = 0
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
                got = os.preadv(self.partial.fd, [view[:min(len(buf), limit - hashed)]], hashed)
                if not got:
                    raise SourceError(f"{self.label}: partial file shrank during the download")
                hasher.update(view[:got])
                self.blocks(view[:got])
                hashed += got

    def run(self) -> tuple[str, int] | None:
        from concurrent.futures import ThreadPoolExecutor

        if not self._load_or_plan():
            return None
        hasher = hashlib.sha256()
        segments = len(self.partial.segments)
        workers_n = max(1, min(self.owner.jobs, segments))
        with ThreadPoolExecutor(workers_n + 1) as pool:
            hashing = pool.submit(self._hash, hasher)
            workers = [pool.submit(self._download_segment, i) for i in range(segments)]
            try:
                for worker in workers:
                    worker.result()
            except BaseException as exc:
                with self.cond:
                    self.failed = exc
                    self.cond.notify_all()
                for worker in workers:  # let the others stop before the caller touches the partial
                    worker.exception()
                if isinstance(exc, StreamFallback):
                    with self.cond:
                        exc.prefix = self._prefix()
                raise
            hashing.result()
        return hasher.hexdigest(), self.size
