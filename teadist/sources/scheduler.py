"""How many connections a host gets, judged from the measured throughput, and where a file's
remaining bytes are cut into ranges for them.

One ``Scheduler`` serves a whole fetch: a single large file, the chunks of a chunked manifest and
the shards of a GGUF release all take their connections from the same ``HostLane`` per host, so
the count is decided once for the link, not once per file. A lane starts with 8 connections
(aria2's -x8) on a far host, 1 on a near one (judged from the first answer's delay, and
corrected by the quickest of the next three), and doubles them while the aggregate throughput
still grows by at least half of what the added connections promise, up to a cap (16 by default;
``--jobs N`` fixes the count instead) — and no further once the client's hashing is the limit. A 429,
503, reset or refused connection halves the count (never below what is still streaming, less
one); refusals of requests sent before that back-off are already answered by it. The lowered count
is also the ceiling for a quiet period (``RECOVER_SECONDS``, doubled after each back-off) of good
answers; then the lane may grow again, measured as before.

Cutting (``split_point``) leaves the running connection a request's blocks at most, so the
file fills front to back and the in-order hash keeps up with the network. Cuts fall only on
multiples of ``align`` (the block size of block hashes), so every block is fetched by exactly one
range and each finished block can be checked on its own against a block hash; and only where
it pays: the piece handed to a new connection must take longer than that connection needs to
get its first byte (measured), or a new connection would only add a round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from teadist.base.blocks import BLOCK_SIZE

DEFAULT_CAP = 16  # connections per host, at most
FAR_TTFB = 0.03  # seconds to a first answer (handshakes included) from which a host counts as far
JUDGE_ANSWERS = 4  # near or far: judged on the quickest of this many first answers
START_CONNECTIONS = 8  # as many as aria2 -x8 opens at once, before anything is measured
DEFAULT_ALIGN = BLOCK_SIZE  # range boundaries: multiples of this (8 MiB: a shorter tail than 16 MiB on a far link)
WINDOW = 0.2  # seconds of transfer behind each decision to grow, at least
WINDOW_BYTES = 512 * 1024  # ... and this many bytes per connection measured: reads land in lumps of
# up to 256 KiB (a whole small file's stream at once), so a shorter window measures the lumps
FILL_TIMEOUT = 2.0  # a grown limit nobody fills within this (no work left to split): stop growing
GAIN = 0.5  # grow again only when the last step gave at least half its proportional gain
KEEP_GAIN = 0.2  # a step that gave less than a fifth of its proportional gain is undone
CLAIM_BLOCKS = 2  # a cut leaves the running connection this many blocks ahead of it, at most
SPAN_SECONDS = 0.25  # ... or as many as its measured rate brings in this time (a fast near link)
MAX_CLAIM_BLOCKS = 16  # ... up to this many
LAG_SECONDS = 0.5  # a request whose rest would take longer than this (and 4 first-byte waits) lags
BACKOFF_QUIET = 1.0  # seconds: refusals of unknown send time within this of a back-off are that back-off
RECOVER_SECONDS = 3.0  # seconds of good answers after a back-off before the lane may grow again


def host_key(url: str) -> str:
    """Connections are shared per scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


@dataclass
class LaneStats:
    """What a lane did, for the closing line and for tests."""

    peak: int = 0  # most connections in use at once
    limit: int = 0
    backoffs: int = 0
    bytes: int = 0
    seconds: float = 0.0  # time with at least one connection in use
    hash_bound: bool = False  # growth stopped because hashing, not the link, was the limit


class HostLane:
    """The connections to one host: a slot per connection, a limit that follows the throughput."""

    def __init__(self, cap: int, fixed: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = max(1, fixed or cap)
        self.fixed = fixed is not None
        self.limit = self.cap if self.fixed else min(self.cap, START_CONNECTIONS)
        self.ceiling = self.cap
        self.growing = not self.fixed
        self.active = 0  # slots held
        self.streaming = 0  # connections receiving a body right now
        self.ranges: bool | None = None  # does the host answer Range with 206 (learnt once)
        self.ttfb: float | None = None  # seconds from request to first byte (moving average)
        self.conn_rate: float | None = None  # bytes/s of one connection (moving average)
        self.cond = threading.Condition()
        self.stats = LaneStats(limit=self.limit)
        self._clock = clock
        self._window_start: float | None = None
        self._window_bytes = 0
        self._waiting_fill_since: float | None = clock()
        self._prev: tuple[int, float] | None = None  # (connections, aggregate bytes/s) of the last window
        self._window_conns = 0  # connections streaming when the window opened
        self._last_backoff = -1e9
        self._quiet = RECOVER_SECONDS  # the quiet period before a backed-off lane may grow again
        self._good = 0  # answers begun since the last back-off
        self._busy_since: float | None = None
        self._starts = 0  # answers begun since the limit last changed
        self._answers = 0  # answers seen so far
        self._quickest = float("inf")  # the quickest of the first JUDGE_ANSWERS answers
        self._settling = False  # back to near: no window opens until the extra connections have left

    # -- slots ------------------------------------------------------------------------------
    def acquire(self, block: bool = True) -> bool:
        """Take a connection slot (waiting for one when ``block``)."""
        with self.cond:
            while self.active >= self.limit:
                if not block:
                    return False
                self.cond.wait()
            self.active += 1
            if self._busy_since is None:
                self._busy_since = self._clock()
            self.stats.peak = max(self.stats.peak, self.active)
            return True

    def release(self) -> None:
        with self.cond:
            self.active -= 1
            if self.active == 0 and self._busy_since is not None:
                self.stats.seconds += self._clock() - self._busy_since
                self._busy_since = None
            self.cond.notify_all()

    def leave_if_over(self) -> bool:
        """Give a slot up if more are held than allowed (True); one at a time, so the connections
        that leave never take the count below the limit."""
        with self.cond:
            if self.active <= self.limit:
                return False
            self.release()  # the condition's lock is reentrant
            return True

    def over_limit(self) -> bool:
        """More slots are held than allowed (after a back-off): a connection should give its up."""
        with self.cond:
            return self.active > self.limit

    def has_room(self) -> bool:
        with self.cond:
            return self.active < self.limit

    # -- measurements -----------------------------------------------------------------------
    def answered(self, ttfb: float) -> None:
        """The host answered a request after ``ttfb`` seconds. The first answers set the start:
        a far host (every answer ``FAR_TTFB`` or later) gets ``START_CONNECTIONS`` at once, as one
        TCP stream there carries only its window per round trip; a near one starts with a single
        connection and grows only as far as the measured throughput says. The first answer
        decides at once; each of the next few can still show a far-looking host near (a far host
        can't answer faster than its round trip, but a loaded client can be late to read a near
        one's answer): then the lane goes back to one connection, the extra ones closing as their
        requests end, before anything is measured."""
        with self.cond:
            self._answers += 1
            if (self._answers <= JUDGE_ANSWERS and not self.fixed and self._prev is None and not self.stats.backoffs
                    and ttfb < FAR_TTFB <= self._quickest):
                self.limit = self.stats.limit = 1
                self._settling = self.active > 1
                self._window_start = None
                self._starts = 0
                self._waiting_fill_since = self._clock()
            if self._answers <= JUDGE_ANSWERS:
                self._quickest = min(self._quickest, ttfb)
            self.ttfb = ttfb if self.ttfb is None else 0.7 * self.ttfb + 0.3 * ttfb

    def started(self) -> None:
        """A connection began receiving a body. A window opens once every slot is held and as many
        answers have begun since the limit last changed (the new connections deliver)."""
        with self.cond:
            self.streaming += 1
            self._starts += 1
            self._good += 1
            self._recover()
            if self._settling and self.streaming <= self.limit:
                self._settling = False
            if self._settling:
                return
            if self._window_start is None and self.streaming >= self.limit and self._starts >= self.limit:
                self._open_window()
            elif self._window_start is not None and self.streaming > self._window_conns:
                self._open_window()  # more connections than the window measures: measure them instead

    def stopped(self, nbytes: int, seconds: float) -> None:
        """A connection's transfer ended after ``nbytes`` in ``seconds`` (from its first byte)."""
        with self.cond:
            self.streaming -= 1
            if nbytes >= 256 * 1024 and seconds > 0:
                rate = nbytes / seconds
                self.conn_rate = rate if self.conn_rate is None else 0.7 * self.conn_rate + 0.3 * rate

    def moved(self, n: int) -> None:
        """``n`` bytes arrived on some connection of this lane."""
        with self.cond:
            self.stats.bytes += n
            if self._window_start is None:
                if (self.growing and self._waiting_fill_since is not None and not self._settling
                        and self._clock() - self._waiting_fill_since > FILL_TIMEOUT):
                    self.growing = False  # the slots stay empty: nothing more to split
                return
            self._window_bytes += n
            elapsed = self._clock() - self._window_start
            if elapsed >= WINDOW and self._window_bytes >= self._window_conns * WINDOW_BYTES:
                self._decide(self._window_bytes / elapsed)

    def _open_window(self) -> None:
        self._window_start = self._clock()
        self._window_bytes = 0
        self._window_conns = max(1, self.streaming)
        self._waiting_fill_since = None

    def _decide(self, rate: float) -> None:
        """End of a window at ``rate`` bytes/s on the connections that streamed in it: grow again,
        or stay. The count compared is the one measured, which may exceed the limit (a near host
        is judged after the first slots were taken)."""
        self._window_start = None
        conns = self._window_conns
        if not self.growing or self.limit >= self.ceiling:
            self.growing = False
            return
        if self._prev is not None:
            prev_conns, prev_rate = self._prev
            promised = (conns - prev_conns) / prev_conns
            if promised <= 0 or rate < prev_rate * (1 + GAIN * promised):
                self.growing = False  # the link (or the server, or the CPU) is full
                if promised > 0 and rate < prev_rate * (1 + KEEP_GAIN * promised):
                    self._undo_step(prev_conns)
                return
        self._prev = (conns, rate)
        self.limit = min(self.ceiling, max(self.limit, conns) * 2)
        self._starts = 0
        self.stats.limit = self.limit
        self._waiting_fill_since = self._clock()
        self.cond.notify_all()

    def hash_bound(self) -> None:
        """A connection waited for a buffer the hasher still held: the client's hashing, not the
        link, is the limit now, and more connections would only write ahead of it (competing for
        the same cores): stop growing, and undo the last step up. Throughput measured at write time
        can't show this, as bytes written out of order don't wait for the hasher."""
        with self.cond:
            if self.growing and not self.fixed:
                self.growing = False
                self._window_start = None
                self.stats.hash_bound = True
                if self._prev is not None:
                    self._undo_step(self._prev[0])

    def _undo_step(self, before: int) -> None:
        """The last step up brought (almost) nothing: back to the ``before`` connections it started
        from (cond held). The extra ones leave as their current requests end: on a near host whose
        client or server is the limit (loopback, 2 cores), they only competed for the same cores
        (a second connection also makes the hasher read its bytes back)."""
        self.limit = self.stats.limit = max(1, min(self.limit, before))

    def back_off(self, asked_at: float | None = None) -> bool:
        """The host refused (429/503) or dropped a connection for a request sent at ``asked_at``
        (this lane's clock; None: unknown). Halve the count — never below what is still streaming,
        less one — and hold it there as the ceiling until a quiet period of good answers has passed.
        A refusal of a request sent before the last back-off is already answered by it. True when
        this call lowered the limit."""
        with self.cond:
            now = self._clock()
            if asked_at is not None:
                if asked_at <= self._last_backoff:
                    return False
            elif now - self._last_backoff < BACKOFF_QUIET:
                return False
            if self.limit <= 1:
                return False
            self._last_backoff = now
            new = max(1, min(self.limit - 1, max(self.limit // 2, self.streaming - 1)))
            if self.stats.backoffs:
                self._quiet *= 2  # refused again: wait longer before trying more
            self.limit = self.ceiling = new
            self.growing = False
            self._window_start = None
            self._prev = None
            self._good = 0
            self.stats.backoffs += 1
            self.stats.limit = new
            return True

    def _recover(self) -> None:
        """After a back-off, a quiet period of good answers (at least one per connection) lifts
        the ceiling back to the cap: the lane measures its way up again (cond held)."""
        if self.ceiling >= self.cap or self.stats.backoffs == 0:
            return
        now = self._clock()
        if now - self._last_backoff < self._quiet or self._good < self.limit:
            return
        self.ceiling = self.cap
        if self.fixed:  # --jobs N: back to N at once, nothing to measure
            self.limit = self.stats.limit = self.cap
            self.cond.notify_all()
            return
        self.growing = True
        self._prev = None
        self._starts = 0
        self._window_start = None
        self._waiting_fill_since = now

    def claim_blocks(self, align: int) -> int:
        """Blocks of ``align`` bytes one request asks for: ``CLAIM_BLOCKS``, or as many as one
        connection brings in ``SPAN_SECONDS`` at its measured rate (at most ``MAX_CLAIM_BLOCKS``).
        On a fast near link (loopback: 500 MB/s) a request per 16 MiB meant 64 requests per GiB,
        each with its bookkeeping and its wait for the first byte; a request still ends within a
        quarter of a second, so a cut after it (and a connection leaving) comes as soon. While the
        lane is still growing, ``CLAIM_BLOCKS``: a connection on trial takes little, so undoing the
        step leaves little written out of order (bytes the hasher would read back)."""
        rate = self.conn_rate
        if not rate or align <= 0 or self.growing:
            return CLAIM_BLOCKS
        return max(CLAIM_BLOCKS, min(MAX_CLAIM_BLOCKS, int(rate * SPAN_SECONDS) // align))

    def worth_a_connection(self, piece: int) -> bool:
        """Handing ``piece`` bytes to a new connection pays: at the measured rate it takes longer
        than the new connection waits for its first byte (unknown rates: assume it pays)."""
        with self.cond:
            if self.ttfb is None or self.conn_rate is None:
                return True
            return piece / self.conn_rate > self.ttfb


class Scheduler:
    """The lanes of one fetch, by host; ``jobs`` fixes the connection count, else up to ``cap``."""

    def __init__(self, jobs: int | None = None, cap: int = DEFAULT_CAP, align: int = DEFAULT_ALIGN) -> None:
        self.jobs = jobs
        self.cap = cap
        self.align = max(1, align)
        self._lanes: dict[str, HostLane] = {}
        self._lock = threading.Lock()

    @property
    def most(self) -> int:
        """Connections one host may ever get (the size of the shared connection pool)."""
        return max(1, self.jobs or self.cap)

    def lane(self, url: str) -> HostLane:
        key = host_key(url)
        with self._lock:
            found = self._lanes.get(key)
            if found is None:
                found = self._lanes[key] = HostLane(self.cap, self.jobs)
            return found

    def lanes(self) -> list[HostLane]:
        with self._lock:
            return list(self._lanes.values())


def split_point(start: int, live: int, end: int, align: int, margin: int, near: int | None = None) -> int | None:
    """Where to cut the range [``start``, ``end``) whose bytes have arrived up to ``live``: the
    multiple of ``align`` nearest to the middle of what is left — or, with ``near``, to ``near``
    bytes past ``live`` when that comes first — at least ``margin`` bytes ahead of ``live`` (the
    running connection keeps going while the new one starts), strictly inside the range. None
    when no such point exists.

    ``near`` keeps the running connection close to the front of the file: the in-order hasher
    follows the contiguous prefix, so pieces finishing front to back keep hashing beside the
    network instead of after it."""
    lowest = max(live + max(1, margin), start + 1)
    if lowest >= end:
        return None
    target = live + (end - live) // 2
    if near is not None:
        target = min(target, live + near)
    down = target - target % align
    up = down + align
    for point in sorted((down, up), key=lambda p: abs(p - target)):
        if lowest <= point < end:
            return point
    first = -(-lowest // align) * align  # the first allowed multiple, if the nearest ones are not
    return first if first < end else None
