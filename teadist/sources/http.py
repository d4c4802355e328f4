"""HTTP transport for downloads: one session per thread, the origin a credential belongs to,
status codes turned into retry / restart / typed errors, and a reader that keeps what arrived."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def short_reason(exc: BaseException) -> str:
    """A short cause without URLs or headers (which could carry secrets)."""
    text = type(exc).__name__
    root = exc.__cause__ or exc.__context__
    while root is not None and root.__cause__ is not None:
        root = root.__cause__
    if root is not None:
        text += f": {type(root).__name__}"
    return text

