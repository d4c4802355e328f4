"""A file fetched as byte ranges on as many connections as pay, written in place, hashed in order.

Every request asks for a few blocks (``HostLane.claim_blocks``: more on a fast link), on block
boundaries. The host's lane (``scheduler``) says when another connection may open; it takes the blocks after the current
request of the range with the most left, so nobody's answer is cut short and the file fills front
to back (the in-order hasher keeps up). A connection that finishes takes an abandoned range, or
the next blocks the same way; only a lagging request is cut in half for it, so a slow stream never
holds up the end. A server that answers the first request with the whole file (no ranges) is
simply read in that one stream. Each connection has a writer thread: it receives the next buffer
while the last one is written, handed to the hasher and recorded.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from teadist.base.blocks import BLOCK_SIZE, BlockHasher
from teadist.base.digests import ParallelDigests
from teadist.base.fsutil import PwriteSink, start_writeback
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
from teadist.sources.scheduler import LAG_SECONDS, HostLane, split_point

if TYPE_CHECKING:
    from teadist.sources.download import Downloader

HASH_DEPTH = 8  # network buffers the hashers and writers may hold beyond one per connection: with 4,
# one stream waited on them (alternated runs, 1 GiB unpaced loopback: median 1.72-1.76 s with 8,
# 1.82 s with 4, curl 1.77 s)
READ_BACK_BUFFERS = 2  # the hasher's own, for bytes written out of order
SEGMENT_SAVE_STEP = 8 * 1024 * 1024  # progress of each range is saved at least this often
PROGRESS_RESETS = 4 * 1024 * 1024  # an attempt that brought this much resets the failure count
WRITEBACK_STEP = 64 * 1024 * 1024  # the disk starts writing the file every this many bytes written
SPAWN_POLL = 0.05  # seconds between looks for a free connection slot
new_hasher: Callable[[], Any] = hashlib.sha256  # the in-order hasher: update() / hexdigest()


_CONTENT_RANGE_END = re.compile(r"^bytes \d+-(\d+)/(?:\d+|\*)$")


def content_range_end(value: str | None) -> int | None:
    """The last byte a 206's ``Content-Range`` says it carries (None if it says nothing valid)."""
    match = _CONTENT_RANGE_END.match(value or "")
    return int(match.group(1)) if match else None


class _Pool:
    """Buffers of ``NET_BUFFER`` bytes, made when first needed (while fewer than ``size()`` are
    made) and reused."""

    def __init__(self, size: Callable[[], int], on_wait: Callable[[], None] | None = None) -> None:
        self.size, self.on_wait = size, on_wait
        self.cond = threading.Condition()
        self.free: list[bytearray] = []
        self.made = 0

    def take(self, stopped: Callable[[], bool]) -> bytearray | None:
        """A free buffer (waiting until one comes back); None once the caller's fetch has failed."""
        with self.cond:
            while not self.free:
                if self.made < self.size():
                    self.made += 1
                    return bytearray(NET_BUFFER)
                if stopped():
                    return None
                if self.on_wait is not None:
                    self.on_wait()  # (the lane's lock is never held while waiting here)
                self.cond.wait(0.5)
            return self.free.pop()

    def give(self, buf: bytearray) -> None:
        with self.cond:
            self.free.append(buf)
            self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


_LANE_POOLS: weakref.WeakKeyDictionary[HostLane, _Pool] = weakref.WeakKeyDictionary()
_LANE_POOLS_LOCK = threading.Lock()


def _lane_pool(lane: HostLane) -> _Pool:
    """The network buffers of every file fetched on ``lane`` (one per connection plus those the
    hashers hold): files fetched at once (a manifest's chunks) share them, so memory stays flat
    whatever the number of files. A buffer queued for a hasher is always the next bytes it needs,
    so it always comes back: sharing never deadlocks."""
    with _LANE_POOLS_LOCK:
        pool = _LANE_POOLS.get(lane)
        if pool is None:
            ref = weakref.ref(lane)  # the pool must not keep its lane (the key) alive: both go with the fetch

            def size() -> int:
                alive = ref()
                return (alive.limit if alive is not None else 0) + HASH_DEPTH

            def on_wait() -> None:
                alive = ref()
                if alive is not None:
                    alive.hash_bound()

            pool = _LANE_POOLS[lane] = _Pool(size, on_wait)
        return pool


class _Writer:
    """A connection's writer: each buffer it received is written, then handed to the hasher (or
    back to the pool), then recorded in the sidecar — on its own thread, in order, while the
    connection receives the next one (a write into the page cache costs about what the receive
    does; one after the other they held one stream near 500 MB/s here, overlapped ~600 MB/s).
    Buffers come from the shared pool, so what waits here is bounded like everything else."""

    def __init__(self, fetch: SegmentedFetch) -> None:
        self.fetch = fetch
        self.cond = threading.Condition()
        self.todo: collections.deque[tuple[list[int], bytearray, int, int, bool] | None] = collections.deque()
        self.busy = False
        self.landed = self.saved = 0  # the end of the current request's bytes written, and of those recorded
        self.thread = threading.Thread(target=self._run, name="write", daemon=True)
        self.thread.start()

    def begin(self, pos: int) -> None:
        """A new request starts writing at ``pos`` (everything before it has landed: drained)."""
        self.landed = self.saved = pos

    def submit(self, seg: list[int], buf: bytearray, pos: int, n: int, flush: bool) -> None:
        with self.cond:
            self.todo.append((seg, buf, pos, n, flush))
            self.cond.notify_all()

    def drain(self) -> int:
        """Wait until every buffer submitted is written (or given up after a failure); the end of
        the bytes of the current request written so far."""
        with self.cond:
            while self.todo or self.busy:
                self.cond.wait()
            return self.landed

    def close(self) -> None:
        with self.cond:
            self.todo.append(None)
            self.cond.notify_all()
        self.thread.join()

    def _run(self) -> None:
        fetch = self.fetch
        while True:
            with self.cond:
                while not self.todo:
                    self.cond.wait()
                item = self.todo.popleft()
                if item is None:
                    return
                self.busy = True
            seg, buf, pos, n, flush = item
            offered = False
            try:
                if fetch.failed is None:
                    PwriteSink(fetch.partial.fd, pos)(memoryview(buf)[:n])
                    if flush:  # the whole file's dirty pages, whichever connection wrote them: the
                        start_writeback(fetch.partial.fd)  # final fsync finds little left to write
                    offered = fetch._offer(buf, pos, n)  # written first: the hasher sees what the file holds
                    self.landed = pos + n
                    if self.landed - self.saved >= fetch.save_step:
                        fetch._mark(seg, self.landed)
                        self.saved = self.landed
            except BaseException as exc:
                fetch._fail(exc)
            finally:
                if not offered:
                    fetch.net_pool.give(buf)
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()


class _Left(Exception):
    """This connection gave its lane slot up between two requests (more were open than allowed)."""


class StreamFallback(Exception):
    """A range was answered with the whole file (200) or the wrong range: ranges can't be trusted
    from this server any more. Bytes up to ``prefix`` were written in full (the whole file's SHA-256
    still checks them); the rest goes in one stream."""

    def __init__(self, reason: str, prefix: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.prefix = prefix


class SegmentedFetch:
    """One file as byte ranges written in place, hashed in order as they land.

    The partial is created at full size; each range's progress is saved in the sidecar every few
    MiB (after its bytes are written), so a killed run resumes each range where it was — with
    any number of connections. Ranges are cut only at multiples of the scheduler's ``align`` (the
    block size), so the sidecar's ranges always tile the file in block-aligned pieces. A hasher
    follows the contiguous downloaded prefix: a buffer written at the byte it needs next is handed
    to it as it is (one stream: every buffer, nothing read twice), the rest is read back through
    the same descriptor; the file's SHA-256 and block map digest each buffer side by side on two
    threads. The SHA-256 is done when the last byte lands.
    """

    def __init__(self, owner: Downloader, url: str, partial: Partial, auth: Auth | None, label: str,
                 advance: Callable[[int], None], note: Callable[[str], None] | None = None) -> None:
        assert partial.size is not None
        self.owner, self.url, self.partial = owner, url, partial
        self.size: int = partial.size
        self.auth, self.label, self.advance = auth, label, advance
        self.note = note or (lambda text: None)
        self.lane = owner.scheduler.lane(url)
        self.align = owner.scheduler.align
        self.cond = threading.Condition()
        self.failed: BaseException | None = None
        self.ranges_ok: bool | None = self.lane.ranges
        self.owned: set[int] = set()  # starts of the ranges a connection is working on
        self.live: dict[int, int] = {}  # start -> end of the bytes read so far (claimed before written)
        self.asked: dict[int, tuple[int, int, float]] = {}  # start -> current request: from, until, since
        self.connections = 0
        self.most_connections = 0
        self.save_step = max(64 * 1024, min(SEGMENT_SAVE_STEP, self.size // 32))
        self.unflushed = 0  # bytes written since the disk last started writing the file (under cond)
        self.blocks = BlockHasher(BLOCK_SIZE)  # the file's block map, from the same in-order pass as its sha256
        # The in-order hasher: a buffer written at the byte it expects next is handed to it as it is
        # (no read-back); the rest it reads back from the partial once the written prefix passes it.
        self.hash_cond = threading.Condition()  # guards hash_next and hash_queue
        self.hash_next = 0  # the first byte not yet handed or claimed for hashing
        self.hash_queue: collections.deque[tuple[bytearray | None, int, int]] = collections.deque()
        # Fixed pools of buffers, made as needed: the network's (one per connection plus those the
        # hasher holds; a connection waits for one when the hasher is behind: memory stays flat),
        # and the hasher's own for reading back (never waiting on buffers queued behind it).
        self.net_pool = _lane_pool(self.lane)  # shared by every file on this host
        self.back_pool = _Pool(lambda: READ_BACK_BUFFERS)

    # -- ranges (all under self.cond) -----------------------------------------------------------
    def _prefix(self) -> int:
        for _, end, done in self.partial.segments:
            if done < end:
                return done
        return self.size

    def _finished(self) -> bool:
        return all(done >= end for _, end, done in self.partial.segments)

    def _take_piece(self, old: list[int] | None = None) -> list[int] | None:
        """The next range for a connection: an abandoned one first, else a cut of the range with
        the most bytes left (once the server has shown it serves ranges)."""
        if old is not None:
            self.owned.discard(old[0])
            self.live.pop(old[0], None)
            self.asked.pop(old[0], None)
        if self.failed is not None:
            return None
        segments = self.partial.segments
        for seg in segments:
            if seg[0] not in self.owned and seg[2] < seg[1]:
                self.owned.add(seg[0])
                self.live[seg[0]] = seg[2]
                return seg
        if not self.ranges_ok:
            return None
        running = [s for s in segments if s[0] in self.owned and s[2] < s[1]]
        point, best = self._cut(running)
        if point is None or best is None or not self.lane.worth_a_connection(best[1] - point):
            return None
        piece = [point, best[1], point]
        best[1] = point  # its connection stops here (it reads the end again after every read)
        segments.insert(segments.index(best) + 1, piece)
        self.owned.add(point)
        self.live[point] = point
        self.partial.save()
        return piece

    def _cut(self, running: list[list[int]]) -> tuple[int | None, list[int] | None]:
        """Where to cut which running range. Preferably where its current request ends (the
        connection finishes that answer and keeps its keep-alive connection; nothing is sent twice);
        inside a request only when it lags — the rest of it would take longer at its measured rate
        than a new connection needs to start — so a slow stream never holds up the end."""
        # a connection that has not asked yet will ask for ``span`` bytes: cut after those, not inside
        span = self._span()
        clean = [(s, self.asked.get(s[0], (s[2], min(s[1], s[2] + span), 0.0))[1]) for s in running]
        clean = [(s, until) for s, until in clean if s[1] > until]
        if clean:
            seg, until = max(clean, key=lambda c: c[0][1] - c[1])
            point = split_point(seg[0], until - 1, seg[1], self.align, 1, near=1)  # right after it
            if point is not None:
                return point, seg
        lane, now = self.lane, time.monotonic()
        lagging = []
        for seg in running:
            live = self.live.get(seg[0], seg[2])
            began_at, _, t0 = self.asked.get(seg[0], (live, live, now))
            if now - t0 < max(LAG_SECONDS / 2, 2 * (lane.ttfb or 0.0)):
                continue  # too early to judge its rate
            if live > began_at:
                left = (seg[1] - live) / ((live - began_at) / (now - t0))
            else:  # nothing written yet (a read gathers up to 256 KiB): lagging only when stalled
                left = float("inf") if now - t0 > 2 * LAG_SECONDS else 0.0
            if left > max(LAG_SECONDS, 4 * (lane.ttfb or 0.0)):
                lagging.append((left, seg, live))
        if not lagging:
            return None, None
        _, seg, live = max(lagging, key=lambda item: item[0])
        margin = int(lane.conn_rate * lane.ttfb) if lane.conn_rate and lane.ttfb else 0
        return split_point(seg[0], live, seg[1], self.align, margin), seg  # halves it

    def _span(self) -> int:
        """Bytes one request asks for at most (a few blocks; more on a fast link)."""
        return self.lane.claim_blocks(self.align) * self.align

    def _mark(self, seg: list[int], pos: int) -> None:
        """Record progress after the bytes are written (so the sidecar never claims unwritten bytes).
        The sidecar is written outside the lock: the other connections and the hasher go on."""
        state = None
        with self.cond:
            done = min(pos, seg[1])
            if done > seg[2]:
                seg[2] = done
                state = self.partial.snapshot()
            self.cond.notify_all()
        if state is not None:
            self.partial.write(state)
        with self.hash_cond:  # the written prefix may have grown past what the hasher was handed
            self.hash_cond.notify()

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.failed is None:
                self.failed = exc
            self.cond.notify_all()
        with self.hash_cond:
            self.hash_cond.notify_all()
        self.net_pool.wake()
        self.back_pool.wake()

    def _stopped(self) -> bool:
        return self.failed is not None

    def _give_back_queued(self) -> None:
        """Once every connection, writer and the hasher have stopped: the buffers still queued for
        the hasher go back to the host's pool. A hasher stops at a failure without taking them, and
        a writer can hand one over after that (its write began before the failure): each one kept
        would shrink, for good, the pool every file on this host shares."""
        with self.hash_cond:
            while self.hash_queue:
                buf, _, _ = self.hash_queue.popleft()
                if buf is not None:
                    self.net_pool.give(buf)

    def _offer(self, buf: bytearray, pos: int, n: int) -> bool:
        """Hand the written bytes [pos, pos + n) in ``buf`` to the hasher if they are the next it
        needs (True: the buffer is the hasher's now)."""
        with self.hash_cond:
            if pos != self.hash_next:
                return False
            self.hash_queue.append((buf, pos, pos + n))
            self.hash_next = pos + n
            self.hash_cond.notify()
            return True

    # -- connections ----------------------------------------------------------------------------
    def _connection(self, piece: list[int] | None) -> None:
        """One connection (its slot already taken): ranges one after another, until none is left."""
        hold: list[bytearray | None] = [None]  # this connection's buffer, from the shared pool
        held = True  # its slot in the host's lane
        writer: _Writer | None = None
        try:
            writer = _Writer(self)  # inside: a thread that cannot start fails the fetch, its slot comes back
            while piece is not None:
                try:
                    kept = self._fetch_piece(piece, hold, writer)
                except _Left:
                    held, kept = False, False
                if kept and self.lane.leave_if_over():  # the lane went down (back to near, a back-off)
                    held, kept = False, False
                if not kept:
                    with self.cond:  # the range (if any is left) waits for another connection
                        self.owned.discard(piece[0])
                        self.live.pop(piece[0], None)
                        self.asked.pop(piece[0], None)
                    return
                with self.cond:
                    piece = self._take_piece(piece)
        except BaseException as exc:
            self._fail(exc)
        finally:
            if writer is not None:
                writer.close()
            if hold[0] is not None:
                self.net_pool.give(hold[0])
            if held:
                self.lane.release()
            with self.cond:
                self.connections -= 1
                count = self.connections
                self.cond.notify_all()
            if count:
                self.note(f"{count} conn")  # the bar shows the connections in use now, after a back-off too

    def _fetch_piece(self, seg: list[int], hold: list[bytearray | None], writer: _Writer) -> bool:
        """Fill ``seg`` (retrying with backoff); False when this connection should close instead.
        Failures count in a row: an attempt that brought ``PROGRESS_RESETS`` bytes or more starts
        the count again (a server cutting every answer after a few bytes still exhausts it)."""
        failures = 0
        while True:
            if self.failed is not None or seg[2] >= seg[1]:
                return True
            before, asked = seg[2], time.monotonic()
            try:
                self._transfer(seg, hold, writer)
                if seg[2] < seg[1] and self.lane.leave_if_over():
                    raise _Left  # between two requests: the rest of the range goes to another connection
                continue
            except Retry as exc:
                failures = 1 if seg[2] - before >= PROGRESS_RESETS else failures + 1
                if failures >= self.owner.policy.attempts:
                    raise SourceError(f"{self.label}: {exc.reason} (gave up after {failures} attempts)",
                                      hint="check the network or try another --source") from None
                if self.lane.back_off(asked):
                    self.owner.reporter.warn(f"{exc.reason}; down to {self.lane.limit} connection(s) to this host")
                if self.lane.over_limit():
                    return False
                delay = self.owner.backoff_delay(failures - 1, exc.delay)
                self.owner.reporter.warn(f"{self.label}: {exc.reason}; retrying in {delay:.1f}s "
                                         f"(attempt {failures + 1} of {self.owner.policy.attempts})")
                self.owner.sleep(delay)

    def _transfer(self, seg: list[int], hold: list[bytearray | None], writer: _Writer) -> None:
        """One request for the next ``span`` bytes of ``seg`` (the whole file if the server has no
        ranges), read to its end unless the range is cut inside it meanwhile."""
        _ = self.owner.session  # made (and requests imported) before the clock starts: TTFB is the host's
        with self.cond:
            start, end, done = seg
            if done >= end:  # cut at its progress meanwhile: nothing left to ask for
                return
            until = self.size if self.ranges_ok is False else min(end, done + self._span())
            asked = time.monotonic()
            self.asked[start] = (done, until, asked)
        resp = self.owner.open_url(self.url, {"Range": f"bytes={done}-{until - 1}"}, self.auth)
        with resp:
            self.lane.answered(time.monotonic() - asked)  # before any cut: it may set the start
            check_status(resp, self.url)
            first, total = parse_content_range(resp.headers.get("Content-Range"))
            last = content_range_end(resp.headers.get("Content-Range"))
            status = resp.status_code
            if status == 200 and done == 0 and end == self.size and not self.ranges_ok:
                until = self.size
                declared = resp.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) != self.size:
                    raise Retry(f"{host_of(self.url)} announced {declared} bytes, expected {self.size}")
                with self.cond:
                    self.ranges_ok = False  # the whole file, in this one stream
                self.owner.reporter.info(f"{host_of(self.url)} does not serve byte ranges; downloading "
                                         f"{self.label} in one stream")
            elif status != 206 or first != done or total not in (None, self.size):
                with self.cond:
                    prefix = self._prefix()
                what = "answered a range request with the whole file" if status == 200 \
                    else "sent another range than the one asked for"
                raise StreamFallback(f"{host_of(self.url)} {what}", prefix)
            elif not self.ranges_ok:
                with self.cond:
                    self.ranges_ok = self.lane.ranges = True
            if status == 206 and last is not None and done <= last < until - 1:
                until = last + 1  # a shorter answer (a CDN capping ranges): take it, ask for the rest next
            etag = resp.headers.get("ETag")
            with self.cond:
                if self.partial.etag and etag and etag != self.partial.etag:
                    raise Restart("the file changed on the server since the download started (ETag)")
                if etag and not self.partial.etag:
                    self.partial.etag = etag  # the version every later range must come from
                    self.partial.save()
            raw = resp.raw
            raw.decode_content = False
            # steps of 256 KiB: a stalled range loses little
            reader = StreamReader(raw, window=self.owner.policy.stall_timeout)
            self.lane.started()
            began, pos = time.monotonic(), done
            with self.cond:
                self.asked[start] = (done, until, began)
            writer.begin(pos)
            try:
                while pos < min(seg[1], until):
                    if hold[0] is None:
                        hold[0] = self.net_pool.take(self._stopped)
                    buf = hold[0]
                    if self.failed is not None or buf is None:
                        return
                    n = reader.readinto(memoryview(buf)[:min(len(buf), seg[1] - pos, until - pos)])
                    if not n:
                        raise Retry(f"connection to {host_of(self.url)} ended inside a range")
                    with self.cond:  # claimed before written: a cut from now on falls after these bytes
                        keep = min(n, seg[1] - pos)  # (the range may have been cut while this read waited)
                        self.live[start] = pos + keep
                        self.unflushed += keep
                        flush = self.unflushed >= WRITEBACK_STEP
                        if flush:
                            self.unflushed = 0
                    hold[0] = None  # the buffer goes with its write (the writer hands it on)
                    writer.submit(seg, buf, pos, keep, flush)
                    pos += keep
                    self.advance(keep)
                    self.lane.moved(keep)
            except ReadFailed as exc:
                raise Retry(f"transfer from {host_of(self.url)} failed ({exc})") from None
            finally:
                # Recorded only once written: the sidecar never claims a byte still on its way.
                self._mark(seg, writer.drain())
                self.lane.stopped(pos - done, time.monotonic() - began)
            # a range cut short leaves its answer unread: closing drops that connection, not the pool

    # -- in-order hashing -----------------------------------------------------------------------
    def _hash(self, hasher: Any) -> None:
        """Digest the file in order: buffers handed over by the connections as they are written,
        and whatever was written out of order read back from the partial once the contiguous
        written prefix passes it. The file's SHA-256 and its block map take each buffer at the
        same time on two threads (hashlib releases the GIL), not one after the other."""
        with ParallelDigests([hasher.update, self.blocks]) as digests:
            while True:
                with self.hash_cond:
                    with self.cond:
                        prefix, failed = self._prefix(), self.failed
                    if failed is not None:
                        return
                    if self.hash_queue:
                        buf, start, end = self.hash_queue.popleft()
                    elif prefix > self.hash_next:
                        buf, start, end = None, self.hash_next, prefix
                        self.hash_next = prefix
                    elif self.hash_next >= self.size:
                        break
                    else:
                        self.hash_cond.wait(0.5)
                        continue
                if buf is not None:
                    digests.submit(memoryview(buf)[:end - start], functools.partial(self.net_pool.give, buf))
                else:
                    self._read_back(digests, start, end)
            digests.flush()

    def _read_back(self, digests: ParallelDigests, start: int, end: int) -> None:
        """Feed the written bytes [start, end) of the partial to the digests, through pool buffers."""
        pos = start
        while pos < end:
            buf = self.back_pool.take(self._stopped)
            if buf is None:
                return
            got = os.preadv(self.partial.fd, [memoryview(buf)[:min(len(buf), end - pos)]], pos)
            if not got:
                self.back_pool.give(buf)
                raise SourceError(f"{self.label}: partial file shrank during the download")
            digests.submit(memoryview(buf)[:got], functools.partial(self.back_pool.give, buf))
            pos += got

    def _start_or_release(self, threads: list[threading.Thread]) -> bool:
        """With a lane slot held: start a connection on the next piece (True), or give the slot
        back when there is none — or when taking one fails, so a slot never leaks."""
        try:
            with self.cond:
                piece = self._take_piece()
        except BaseException:
            self.lane.release()
            raise
        if piece is None:
            self.lane.release()
            return False
        self._start_connection(piece, threads)
        return True

    def _start_connection(self, piece: list[int], threads: list[threading.Thread]) -> None:
        """Run ``piece`` on a new connection (its lane slot is already held)."""
        with self.cond:
            self.connections += 1
            count = self.connections
            self.most_connections = max(self.most_connections, count)
        thread = threading.Thread(target=self._connection, args=(piece,), name=f"range-{piece[0]}", daemon=True)
        threads.append(thread)
        try:
            thread.start()
        except BaseException:  # no thread: its slot and its range go back
            self.lane.release()
            with self.cond:
                self.connections -= 1
                self.owned.discard(piece[0])
                self.live.pop(piece[0], None)
            raise
        self.note(f"{count} conn")

    def run(self) -> tuple[str, int]:
        if self.partial.mode == SEGMENTS:
            done = self.partial.done_bytes()
            self.owner.reporter.info(f"{self.label}: resuming {len(self.partial.segments)} ranges after "
                                     f"{done} bytes")
            self.advance(done)
        else:
            self.partial.start(SEGMENTS, None, [[0, self.size, 0]])
        hasher = new_hasher()
        threads: list[threading.Thread] = []
        hash_error: list[BaseException] = []

        def hash_all() -> None:
            try:
                self._hash(hasher)
            except BaseException as exc:
                hash_error.append(exc)
                self._fail(exc)

        hashing = threading.Thread(target=hash_all, name="hash", daemon=True)
        began, before = time.monotonic(), self.partial.done_bytes()
        self.lane.acquire()  # the first connection waits for a slot in the host's shared pool
        self._start_or_release(threads)
        hashing.start()
        try:
            while True:
                with self.cond:
                    if self.failed is not None or (self.connections == 0 and self._finished()):
                        break
                    self.cond.wait(SPAWN_POLL)
                    # a connection that gave its slot up (back-off) may leave a range nobody holds
                    orphan = self.connections == 0 and not self._finished() and self.failed is None
                    may_cut = self.ranges_ok is True and self.failed is None
                if orphan:
                    self.lane.acquire()
                elif not (may_cut and self.lane.has_room() and self.lane.acquire(block=False)):
                    continue
                # every free slot at once: a grown limit is filled in one step
                while self._start_or_release(threads) and self.lane.acquire(block=False):
                    pass
        except BaseException as exc:
            self._fail(exc)
        for thread in threads:  # let every connection stop before the caller touches the partial
            thread.join()
        if self.failed is not None:
            with self.cond:
                self.cond.notify_all()
            hashing.join()
            self._give_back_queued()
            failure = self.failed
            if isinstance(failure, StreamFallback):
                with self.cond:
                    failure.prefix = self._prefix()
            raise failure
        hashing.join()
        if hash_error:
            raise hash_error[0]
        if not self._finished():  # the server stopped serving ranges before the end
            with self.cond:
                prefix = self._prefix()
            raise StreamFallback(f"{host_of(self.url)} stopped serving ranges", prefix)
        elapsed = max(1e-6, time.monotonic() - began)
        self.owner.reporter.info(f"{self.label}: {(self.size - before) / elapsed / 1e6:.1f} MB/s on up to "
                                 f"{self.most_connections} connection(s)")
        return hasher.hexdigest(), self.size

