"""HTTP transport for downloads: one session per thread, credentials bound to one origin and
decided on the request as it is sent, status codes turned into retry / restart / typed errors,
and a reader that keeps what arrived."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from teadist.base.urls import Origin, host_label, is_loopback_host, origin_of, url_problem
from teadist.errors import NotFoundError, SourceError

NET_BUFFER = 1024 * 1024
# A connection that brings fewer bytes than this in a stall timeout's worth of waiting is stalled,
# however regularly its bytes trickle in (one a second never trips a per-read timeout).
MIN_PROGRESS = 16 * 1024
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


class RefusedURL(SourceError):
    """A URL teadist will not send a request to (another scheme, userinfo, a backslash in the host)."""


def checked_url(url: str, what: str = "URL") -> str:
    """``url`` if teadist may send a request to it; RefusedURL (a source failure) otherwise."""
    problem = url_problem(url)
    if problem is not None:
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise RefusedURL(f"refusing {what} {shown!r}: it {problem}")
    return url


def sent_url(url: str) -> str:
    """The URL exactly as requests will send it (its own parsing and re-encoding)."""
    import requests

    return str(requests.Request("GET", url).prepare().url)


def origin(url: str) -> Origin:
    """The origin a request to ``url`` goes to, read from the URL as requests sends it.

    Raises RefusedURL for a URL teadist does not send at all."""
    prepared = sent_url(checked_url(url))
    found = origin_of(prepared)
    if found != origin_of(url):  # both readings must agree, or nobody gets a credential
        raise RefusedURL(f"refusing URL {url[:80]!r}: it is read as two different hosts")
    return found


@dataclass(frozen=True)
class Auth:
    """A credential (an ``Authorization`` value) bound to one origin.

    It is attached only to a request whose URL, as sent, has exactly that origin; only over https
    (or to a loopback host); never once a redirect chain has left the origin. Use ``headers_for``
    on every request and every redirect hop: GITHUB_TOKEN and HF_TOKEN go through the same rule.
    """

    origin: Origin
    authorization: str

    def __post_init__(self) -> None:
        if not isinstance(self.origin, Origin):  # a (scheme, host, port) tuple
            object.__setattr__(self, "origin", Origin(*self.origin))

    def allows(self, url: str, left_origin: bool = False) -> bool:
        bound = self.origin
        if left_origin or (bound.scheme != "https" and not is_loopback_host(bound.host)):
            return False
        try:
            return origin(url) == bound
        except RefusedURL:
            return False

    def headers_for(self, url: str, left_origin: bool = False) -> dict[str, str]:
        return {"Authorization": self.authorization} if self.allows(url, left_origin) else {}

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback's locals
        return f"Auth(origin={self.origin!r}, authorization='***')"


class Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Restart(Exception):
    """The partial can't be continued (200 to a range, 416, another ETag): start from zero."""




def new_session(pool_connections: int = 10, pool_maxsize: int = 10) -> Any:
    """A session for downloads (the pool sizes of its adapters, as requests' HTTPAdapter takes them)."""
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc credentials from the environment
    for prefix in ("http://", "https://"):
        session.mount(prefix, _deadline_adapter(pool_connections, pool_maxsize))
    session.headers["Accept-Encoding"] = "identity"
    session.headers["User-Agent"] = "teadist"
    return session


def check_status(resp: Any, url: str) -> None:
    status = resp.status_code
    if status == 404:
        raise NotFoundError(f"not found: {host_of(url)} answered 404 for {urlsplit(url).path}")
    if status in (401, 403):
        raise SourceError(f"{host_of(url)} refused access (HTTP {status})",
                          hint="set HF_TOKEN for gated or private Hub models")
    if status in RETRY_STATUSES:
        raise Retry(f"{host_of(url)} answered HTTP {status}", retry_after(resp.headers.get("Retry-After")))
    if status not in (200, 206):
        raise SourceError(f"{host_of(url)} answered HTTP {status}")


def _deadline_adapter(pool_connections: int, pool_maxsize: int) -> Any:
    """An HTTPAdapter whose connections must receive the whole status line and headers within the
    read timeout: a per-read timeout alone lets a server sending one byte a second hold a request
    forever. Past the deadline the socket is shut down and the request fails as a read timeout."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class HeadDeadline:
        timeout: Any
        sock: Any

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            sock = self.sock
            limit = self.timeout if type(self.timeout) in (int, float) else (sock.gettimeout() if sock else None)
            late = threading.Event()

            def cut() -> None:
                late.set()
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

            timer = threading.Timer(limit, cut) if sock is not None and limit else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                return super().getresponse(*args, **kwargs)  # type: ignore[misc]
            except BaseException:
                if late.is_set():
                    raise TimeoutError(f"no complete answer within {limit:g}s") from None
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    class Conn(HeadDeadline, HTTPConnection):
        pass

    class TLSConn(HeadDeadline, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConn

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}

    return Adapter(pool_connections=pool_connections, pool_maxsize=pool_maxsize)


class ReadFailed(Exception):
    pass


class StreamReader:
    """``readinto`` over a urllib3 response that returns what has arrived.

    It gathers ``read1`` pieces up to ``min_fill`` bytes (fewer, larger pipeline steps), and
    when a read fails after some bytes arrived it returns those first and raises on the next
    call — so a stalled or cut transfer still leaves every received byte on disk for a resume.

    With ``window`` (the stall timeout), fewer than MIN_PROGRESS bytes in ``window`` seconds spent
    waiting for the server fails the read like a stall.
    """

    def __init__(self, raw: Any, min_fill: int = 256 * 1024, window: float | None = None) -> None:
        self._raw = raw
        # urllib3's read1 returns a new bytes object (a fresh allocation and one more copy of every
        # byte). A body of known length, not chunked, is read instead with one readinto1 at a time
        # on the socket's buffered reader under http.client's response: straight into the caller's
        # buffer, each call returning what one receive brought (the stall window still sees a
        # trickle). Once the whole body is read, the response is closed and its connection goes
        # back to the pool — what urllib3 does when its own reads reach the end (keep-alive).
        inner = getattr(raw, "_fp", None)
        self._inner: Any = inner
        fp = getattr(inner, "fp", None)
        length = getattr(inner, "length", None)
        direct = (type(length) is int and getattr(inner, "chunked", True) is False
                  and callable(getattr(fp, "readinto1", None)) and not getattr(raw, "_decoded_buffer", None))
        self._fp: Any = fp if direct else None
        self._left: int = length if direct and type(length) is int else 0
        self._min_fill = min_fill
        self._pending_error: BaseException | None = None
        self._window = window
        self._waited = 0.0  # seconds spent in reads since the window began, and the bytes they brought
        self._got = 0

    def readinto(self, view: memoryview) -> int:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            if isinstance(error, ReadFailed):
                raise error
            raise ReadFailed(short_reason(error)) from error
        filled = 0
        while filled < min(self._min_fill, len(view)):
            asked = time.monotonic()
            try:
                got = self._read(view[filled:])
            except Exception as exc:
                if filled:
                    self._pending_error = exc
                    return filled
                raise ReadFailed(short_reason(exc)) from exc
            if not got:
                break
            filled += got
            if self._window is not None:
                self._waited += time.monotonic() - asked
                self._got += got
                if self._waited >= self._window:
                    if self._got < MIN_PROGRESS:  # what arrived is kept; the next call fails
                        self._pending_error = ReadFailed(
                            f"fewer than {MIN_PROGRESS // 1024} KiB in {self._waited:.0f}s")
                        return filled
                    self._waited, self._got = 0.0, 0
        return filled

    def _read(self, view: memoryview) -> int:
        """Bytes read into ``view`` by one read (0 at the end of the body)."""
        if self._fp is None:
            piece = self._raw.read1(len(view))
            view[:len(piece)] = piece
            return len(piece)
        if not self._left or not view:
            return 0
        got = self._fp.readinto1(view[:self._left])
        if not got:  # the body ended short of its Content-Length: as urllib3 says on its reads
            import http.client

            raise http.client.IncompleteRead(b"", self._left)
        self._left -= got
        if not self._left:
            self._inner.close()
            release = getattr(self._raw, "release_conn", None)
            if callable(release):
                release()
        return int(got)


def parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None



def host_of(url: str) -> str:
    return host_label(url)


_CAUSES = (  # a cause in words, by the name of an exception in the chain (requests, urllib3, http.client, ssl)
    (("gaierror", "NameResolutionError"), "the host name does not resolve"),
    (("ConnectionRefusedError",), "connection refused"),
    (("ConnectionResetError",), "connection reset"),
    (("IncompleteRead", "RemoteDisconnected", "ChunkedEncodingError", "ProtocolError"),
     "the connection closed before the transfer ended"),
    (("SSLError", "SSLCertVerificationError"), "TLS failure"),
    (("TimeoutError", "ReadTimeoutError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout"), "timed out"),
    (("OSError",), "network error"),
)


def _chain(exc: BaseException) -> list[str]:
    names: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        names += [klass.__name__ for klass in type(item).__mro__]
        todo += [item.__cause__, item.__context__, *[a for a in item.args if isinstance(a, BaseException)]]
        reason = getattr(item, "reason", None)
        todo.append(reason if isinstance(reason, BaseException) else None)
    return names


def does_not_resolve(exc: BaseException) -> bool:
    """A DNS failure: retrying will not help, the next source might."""
    return short_reason(exc) == _CAUSES[0][1]


def short_reason(exc: BaseException) -> str:
    """A short cause in words, without URLs or headers (which could carry secrets) or class names."""
    names = set(_chain(exc))
    for kinds, words in _CAUSES:
        if names.intersection(kinds):
            return words
    return "network error"
