"""HTTP transport for downloads: one session per thread, credentials bound to one origin and
decided on the request as it is sent, status codes turned into retry / restart / typed errors,
and a reader that keeps what arrived."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from teadist.base.urls import Origin, host_label, is_loopback_host, origin_of, url_problem
from teadist.errors import NotFoundError, SourceError

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




def new_session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc credentials from the environment
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


class ReadFailed(Exception):
    pass


class StreamReader:
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
            raise ReadFailed(short_reason(error)) from error
        filled = 0
        while filled < min(self._min_fill, len(view)):
            try:
                piece = self._raw.read1(len(view) - filled)
            except Exception as exc:
                if filled:
                    self._pending_error = exc
                    return filled
                raise ReadFailed(short_reason(exc)) from exc
            if not piece:
                break
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        return filled


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
