"""URLs as input: which ones teadist will send a request to at all, and where a URL really goes.

Two parsers disagree on hostile URLs: ``urllib.parse`` reads ``http://a:1\\@b/`` as host ``b``,
urllib3 (and so requests) as host ``a`` with the path ``\\@b/``. A decision about a URL (may a
token go there? which host is this?) must therefore be taken on the URL exactly as it will be sent
— and URLs whose authority carries userinfo or a backslash are refused outright, so that no two
readings of one URL can exist.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
_SCHEME_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port: the unit a credential belongs to."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def url_problem(url: object) -> str | None:
    """Why teadist will not send a request to ``url``, or None when it may."""
    if not isinstance(url, str):
        return "is not a string"
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    match = _SCHEME_AUTHORITY.match(url)
    if match is None or match.group(1).lower() not in ("http", "https"):
        return "is not an http(s) URL"
    if _CONTROL_OR_SPACE.search(url):
        return "contains a space or control character"
    authority = match.group(2)
    if "@" in authority:
        return "carries a user name or password in its host part"
    if "\\" in authority:
        return "has a backslash in its host part"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has port 0"
    return None


def origin_of(url: str) -> Origin:
    """The origin of a URL that passed ``url_problem`` (both parsers agree on those)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return Origin(scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80))


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_label(url: str) -> str:
    """``host:port`` for messages; a URL teadist refuses is shown as such, never half-parsed."""
    if url_problem(url) is not None:
        return "(refused URL)"
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def has_dot_segment(path: str) -> bool:
    """A URL path with an empty, '.' or '..' segment: every HTTP client removes or merges those before
    sending, so a Hub path or revision holding one would resolve to another repository's file."""
    return any(part in ("", ".", "..") for part in path.split("/"))
