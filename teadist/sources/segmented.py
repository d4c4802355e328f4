"""A large file fetched as parallel byte ranges written in place, hashed in order as they land."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teadist.base.fsutil import remove_quietly
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
from teadist.sources.partial import raise_if_disk_full, read_sidecar, write_sidecar

if TYPE_CHECKING:
    from teadist.sources.download import Downloader

HASH_STEP = 8 * 1024 * 1024
SEGMENT_SAVE_STEP = 8 * 1024 * 1024  # progress of each range is saved at least this often


class SegmentedFetch:
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
        state = read_sidecar(self.sidecar)
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
        write_sidecar(self.sidecar, {"size": self.size, "etag": self.etag, "segments": self.segments})

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
    def _download_segment(self, index: int, fd: int) -> None:
        buf = bytearray(NET_BUFFER)
        view = memoryview(buf)

        def attempt() -> None:
            _, end, done = self.segments[index]
            if done >= end:
                return
            resp = self.owner._open(self.url, {"Range": f"bytes={done}-{end - 1}"}, self.auth)
            with resp:
                check_status(resp, self.url)
                first, total = parse_content_range(resp.headers.get("Content-Range"))
                if resp.status_code != 206 or first != done or total not in (None, self.size):
                    raise Restart("the server stopped honouring byte ranges")
                etag = resp.headers.get("ETag")
                if self.etag and etag and etag != self.etag:
                    raise Restart("the file changed on the server since the download started (ETag)")
                raw = resp.raw
                raw.decode_content = False
                reader = StreamReader(raw, min_fill=64 * 1024)  # small steps: a stalled range loses little
                pos, saved = done, done
                save_step = max(64 * 1024, min(SEGMENT_SAVE_STEP, (end - self.segments[index][0]) // 16))
                try:
                    while pos < end:
                        if self.failed is not None:
                            return
                        n = reader.readinto(view[:min(len(buf), end - pos)])
                        if not n:
                            raise Retry(f"connection to {host_of(self.url)} ended inside a range")
                        os.pwrite(fd, view[:n], pos)
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
            self.owner.reporter.info(f"{host_of(self.url)} does not serve byte ranges; downloading in one stream")
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
                if isinstance(exc, Restart):
                    remove_quietly(self.sidecar)
                    raise SourceError(f"{self.label}: {exc}", hint="run the command again") from None
                if isinstance(exc, OSError):
                    raise_if_disk_full(exc, self.partial, self.sidecar, self.label, self.size)
                raise
            hashing.result()
            out.flush()
        return hasher.hexdigest(), self.size

