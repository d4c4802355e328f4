"""``teadist serve``: a small static server for local browser work with wllama.

``Range`` and ``HEAD`` with ``Content-Length`` (wllama HEADs every shard), the COOP/COEP headers
that multi-threaded wasm needs, correct MIME types for ``.wasm``/``.js``.

What it will and will not serve:
- only regular files under the folder, opened by walking the resolved path one component at a
  time without following any link (a link inside the folder is resolved first and must stay
  inside it); nothing hidden, neither by the requested name nor by where a link leads. A folder
  means its index.html (asked for without its trailing slash, a 301 to the slashed path, so the
  page's relative URLs resolve inside the folder) — never for a name the manifest lists: a listed name must be a regular
  file (or a link to one), else it is refused (409).
- with a manifest, a listed file (by the requested name *or* by where a link leads) is checked on
  the very descriptor that is then served: hashed once per (device, inode, size, mtime, ctime),
  recording the SHA-256 of every 1 MiB piece along the way, and refused with 409 when it fails.
  An identity can stay the same while the bytes change (a write into an already dirty shared
  mmap page updates no timestamp), so every answer — whole or ``Range`` — is sent piece by piece,
  each piece read into memory, hashed and compared with the verified piece before any of it goes
  out: bytes that differ are cut off, never sent.
- hostile requests get a 4xx: link loops, overlong segments, NUL bytes, malformed targets, absurd
  ``Range`` headers, HTTP/0.9 (no status line, no length: a cut answer would look complete). A
  GET carrying a body is answered and the connection closed (its body is never read as a request).
- bound to loopback, it answers only requests whose Host is a loopback name or address
  (``localhost``, ``127.0.0.1``, ``[::1]``): a page whose own name was rebound to 127.0.0.1 (DNS
  rebinding) gets 403.

Two additions for browser work (``teadist serve`` passes them; ``StaticServer`` alone has neither):
- ``assets``: teadist's browser model cache (``teadist.web.asset_files()``) under the fixed prefix
  ``/_teadist/`` — ``/_teadist/model-cache.js``, ``/_teadist/examples/index.html`` — so a page
  there imports ``../model-cache.js`` as in the wheel and the wasm tarball. Only those files are
  served there (never the rest of the Python package); the prefix is teadist's, whatever the
  folder holds under that name.
- ``cors``: the folder as a model origin for pages on other origins: every answer carries
  ``Access-Control-Allow-Origin: *`` with ``Content-Range``/``Content-Length`` exposed and
  ``Cross-Origin-Resource-Policy: cross-origin``, and ``OPTIONS`` preflights are answered (204).
  The Host check against DNS rebinding still applies.

It keeps no per-request state, gives each connection a socket timeout, and serves at most
``workers`` connections at once (others wait in the kernel's accept queue). Keep-alive cannot hold
the pool: while a connection waits for a worker, idle keep-alive connections are closed, busy
ones are closed after their current answer, and a client reading slower than 256 KiB/s is cut
off; every connection also ends after 1,000 requests or 10 minutes. IPv6 hosts work.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import mimetypes
import os
import re
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

from teadist.base.progress import Reporter
from teadist.formats.manifest import Manifest

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Accept-Ranges, ETag",
    "Cross-Origin-Resource-Policy": "cross-origin",  # a page with COEP require-corp may embed it
}
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, Accept",
    "Access-Control-Max-Age": "600",
}
ASSET_PREFIX = "_teadist"  # /_teadist/…: teadist's browser model cache
_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
          ".json": "application/json", ".map": "application/json", ".html": "text/html; charset=utf-8",
          ".gguf": "application/octet-stream", ".css": "text/css"}
DEFAULT_TIMEOUT = 30.0
DEFAULT_WORKERS = 16
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 3600.0
MAX_SEGMENT_BYTES = 255
MAX_SEGMENTS = 64
PIECE = 1024 * 1024  # verified and sent in pieces of this size
_DIGEST = 32
# a start beyond 19 digits is past any file; an end of any length is clamped to the file's size
_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,40})")
_PLAIN_QUERY = re.compile(r"[\x21-\x7e]*")  # a query copied into a redirect's Location as it came
_QUIET_ERRORS = (ConnectionError, TimeoutError, OSError)
MAX_REQUESTS_PER_CONNECTION = 1000
MAX_CONNECTION_SECONDS = 600.0
_SLOW_GRACE = 5.0  # seconds an answer may start slowly before its rate counts
_MIN_RATE = 256 * 1024  # bytes/s a client must read at while others wait for a worker


@dataclass(frozen=True)
class Listed:
    size: int
    sha256: str


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Opened:
    """A file opened for one request: the descriptor that is checked and served."""

    fd: int
    st: os.stat_result
    names: tuple[str, ...]  # the requested path and, if a link led elsewhere, the real one

    @property
    def identity(self) -> tuple[int, ...]:
        return (self.st.st_dev, self.st.st_ino, self.st.st_size, self.st.st_mtime_ns, self.st.st_ctime_ns)


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return ip.is_loopback


def loopback_host_header(value: str) -> bool:
    """Is a Host header a loopback name or address (``localhost:8000``, ``127.0.0.1``, ``[::1]:80``)?"""
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".")
    return host == "localhost" or host.endswith(".localhost") or (host != "localhost" and is_loopback(host))


class StaticServer:
    """Serves ``root``; with a manifest, only verified bytes of the files it lists."""

    def __init__(self, root: Path, manifest: Manifest | None = None, host: str = "127.0.0.1",
                 port: int = 0, manifest_dir: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 workers: int = DEFAULT_WORKERS, reporter: Reporter | None = None,
                 assets: Mapping[str, Path] | None = None, cors: bool = False) -> None:
        from teadist.errors import UsageError

        if not (MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):  # NaN fails too
            raise UsageError(f"--timeout must be seconds between {MIN_TIMEOUT:g} and {MAX_TIMEOUT:g}, not {timeout!r}")
        self.root = os.path.realpath(root)
        self.timeout = timeout
        # served under /_teadist/: relative path -> file (teadist's own, resolved once: an install
        # may hold them through links; the resolved file is then opened without following any)
        self.assets = {rel: Path(os.path.realpath(path)) for rel, path in (assets or {}).items()}
        self.cors = cors
        self.headers = {**ISOLATION_HEADERS, **(CORS_HEADERS if cors else {})}
        self.reporter = reporter
        self.expected: dict[str, Listed] = {}
        if manifest is not None:
            # names in a manifest are relative to its folder; served paths are relative to the root
            prefix = ""
            if manifest_dir is not None:
                rel = os.path.relpath(os.path.realpath(manifest_dir), self.root)
                inside = rel != "." and rel != ".." and not rel.startswith(".." + os.sep)
                prefix = rel.replace(os.sep, "/") + "/" if inside else ""
            self.expected = {prefix + c.name: Listed(c.size, c.sha256) for c in manifest.chunks}
            if manifest.file.sha256 is not None and manifest.file.size is not None:
                self.expected[prefix + manifest.file.name] = Listed(manifest.file.size, manifest.file.sha256)
        # (dev, ino, size, mtime, ctime, sha256) -> the SHA-256 of every piece, joined; None: failed
        self._verdicts: dict[tuple[Any, ...], bytes | None] = {}
        self._max_verdicts = 2 * len(self.expected) + 16
        self._verdict_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)
        self._closing = threading.Event()
        # set while a new connection waits for a worker: keep-alive connections then let go
        self.starved = threading.Event()
        # connection -> (when its request must have arrived, whether it is idle keep-alive): a
        # client trickling a request byte by byte (each read within the socket timeout) is cut
        # off as surely as a silent one; idle keep-alive ones are closed when a worker is needed
        self._deadlines: dict[socket.socket, tuple[float, bool]] = {}
        # connection -> [when its answer began, bytes sent so far]: slow readers are let go of too
        self._sending: dict[socket.socket, list[float]] = {}
        self._deadline_lock = threading.Lock()

        family, address = _bind_address(host, port)
        self._httpd = _Server(self, family, address)
        self._thread: threading.Thread | None = None
        self.loopback_only = not self.is_public  # then only loopback Host names are answered

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def is_public(self) -> bool:
        return not is_loopback(self.address[0])

    def serve_forever(self) -> None:
        threading.Thread(target=self._reap, name="teadist-serve-deadlines", daemon=True).start()
        try:
            self._httpd.serve_forever()
        finally:
            self._closing.set()
            self._httpd.server_close()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name="teadist-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def expect_request(self, connection: socket.socket, idle: bool = False) -> None:
        with self._deadline_lock:
            self._deadlines[connection] = (time.monotonic() + self.timeout, idle)
        if idle and self.starved.is_set():
            self.shed_idle()

    def request_arrived(self, connection: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines.pop(connection, None)

    def _hang_up(self, connections: list[socket.socket]) -> None:
        with self._deadline_lock:
            for connection in connections:
                self._deadlines.pop(connection, None)
                self._sending.pop(connection, None)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def shed_idle(self) -> None:
        """A worker is needed: close keep-alive connections waiting for their next request, and
        connections whose client reads an answer slower than _MIN_RATE (also one blocked in a send)."""
        now = time.monotonic()
        with self._deadline_lock:
            idle = [c for c, (_, is_idle) in self._deadlines.items() if is_idle]
            slow = [c for c, (began, sent) in self._sending.items()
                    if now - began > _SLOW_GRACE and sent < _MIN_RATE * (now - began)]
        self._hang_up(idle + slow)

    def _reap(self) -> None:
        while not self._closing.wait(max(0.05, min(1.0, self.timeout / 4))):
            now = time.monotonic()
            with self._deadline_lock:
                late = [c for c, (deadline, _) in self._deadlines.items() if deadline < now]
            self._hang_up(late)
            if self.starved.is_set():
                self.shed_idle()

    # -- files -------------------------------------------------------------------------------
    def parts_of(self, raw_path: str) -> list[str]:
        """The path segments a request names, or Refused (4xx)."""
        try:
            path = urlsplit(raw_path).path
        except ValueError:  # "http://[x/": a malformed absolute-form target
            raise Refused(400, "bad request target") from None
        if not path.startswith("/"):
            raise Refused(400, "bad request path")
        try:
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise Refused(400, "the path is not UTF-8") from None
        parts = [p for p in decoded.split("/") if p]
        if len(parts) > MAX_SEGMENTS or any(len(p.encode()) > MAX_SEGMENT_BYTES for p in parts):
            raise Refused(414, "path too long")
        if any("\0" in p or "\\" in p for p in parts):
            raise Refused(400, "bad character in path")
        if any(p.startswith(".") for p in parts):  # hidden, '.' and '..' alike
            raise Refused(404, "not found")
        return parts

    def open(self, parts: list[str], _index: bool = True, slash: bool = True, query: str = "") -> Opened:
        """Open what ``parts`` names: links inside the root are resolved first, then the real path is
        opened one component at a time without following anything (a link swapped in meanwhile, or
        a loop, ends in 404). A folder means its index.html; asked for without its trailing slash
        (``slash`` False) it is redirected to it (301)."""
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise Refused(404, "not found")
        real_parts = [] if real == self.root else real[len(self.root) + 1:].split(os.sep)
        if any(p.startswith(".") for p in real_parts):
            raise Refused(404, "not found")
        names = tuple(dict.fromkeys(["/".join(parts), "/".join(real_parts)]))
        listed = any(n in self.expected for n in names)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in real_parts:
                kind = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                if not (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):  # never open a device, FIFO or link
                    raise Refused(409, f"refused: {names[0]} is listed in the manifest but is not a regular "
                                       "file") if listed else Refused(404, "not found")
                next_fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise Refused(404, "not found") from None
        except Refused:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode) and listed:
            os.close(fd)  # a listed name is a file: never a folder's index.html in its place
            raise Refused(409, f"refused: {names[0]} is listed in the manifest but is not a regular file")
        if stat.S_ISDIR(st.st_mode) and _index:
            os.close(fd)
            if not slash:
                raise folder_redirect(parts, query)
            return self.open([*parts, "index.html"], _index=False)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Refused(404, "not found")
        return Opened(fd, st, names)

    def open_asset(self, rest: list[str], slash: bool = True, query: str = "") -> Opened:
        """One of teadist's own web assets (``rest``: the path below /_teadist/); a folder means its
        index.html (without its trailing slash: a redirect to it, so the page's relative
        ``../model-cache.js`` is teadist's). Only the files listed in ``assets`` exist here, opened
        without following a link."""
        rel = "/".join(rest)
        if rel not in self.assets and f"{rel}/index.html" in self.assets and rel:
            if not slash:
                raise folder_redirect([ASSET_PREFIX, *rest], query)
            rel = f"{rel}/index.html"
        path = self.assets.get(rel)
        if path is None:
            raise Refused(404, "not found")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            raise Refused(404, "not found") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Refused(404, "not found")
        return Opened(fd, st, (f"{ASSET_PREFIX}/{rel}",))

    def open_request(self, raw_path: str) -> Opened:
        """What a request target names: a web asset under /_teadist/ (when assets are served), else
        a file of the folder."""
        parts = self.parts_of(raw_path)
        target = urlsplit(raw_path)
        slash = target.path.endswith("/")
        if self.assets and parts[:1] == [ASSET_PREFIX]:
            return self.open_asset(parts[1:], slash, target.query)
        return self.open(parts, slash=slash, query=target.query)

    def listings(self, opened: Opened) -> list[Listed]:
        return [self.expected[n] for n in opened.names if n in self.expected]

    def verified(self, opened: Opened, listed: Listed) -> bytes | None:
        """The verified pieces' SHA-256s if this descriptor held the listed bytes when hashed (once
        per file identity), else None."""
        key = (*opened.identity, listed.sha256)
        with self._verdict_lock:
            if key in self._verdicts:
                return self._verdicts[key]
        pieces: bytes | None = None
        if opened.st.st_size == listed.size:
            whole, hashed = _hash_fd(opened.fd, opened.st.st_size)
            pieces = hashed if whole == listed.sha256 else None
        with self._verdict_lock:
            if len(self._verdicts) >= self._max_verdicts:
                self._verdicts.clear()
            self._verdicts[key] = pieces
        return pieces

    def forget(self, opened: Opened) -> None:
        with self._verdict_lock:
            for key in [k for k in self._verdicts if k[:5] == opened.identity]:
                del self._verdicts[key]

    def verify_all(self) -> dict[str, bool]:
        """Check every listed file present in the folder; returns name → ok (absent names are left out)."""
        verdicts: dict[str, bool] = {}
        for name in self.expected:
            try:
                opened = self.open([p for p in name.split("/") if p])
            except Refused as refused:
                if refused.status == 409:  # there, but not a regular file
                    verdicts[name] = False
                continue
            try:
                checks = self.listings(opened)
                verdicts[name] = bool(checks) and all(self.verified(opened, c) is not None for c in checks)
            finally:
                os.close(opened.fd)
        return verdicts

    def send_body(self, handler: StaticHandler, opened: Opened, start: int, length: int,
                  pieces: bytes | None) -> None:
        """Send ``length`` bytes from ``start``. A listed file (``pieces``: its verified pieces'
        SHA-256s) goes piece by piece, each read, hashed and compared before any of it is sent; a
        piece that differs cuts the answer off. A client too slow while others wait is let go of
        (``shed_idle``)."""
        end, position = start + length, start
        progress = [time.monotonic(), 0.0]  # seen by shed_idle while a worker is needed
        with self._deadline_lock:
            self._sending[handler.connection] = progress
        try:
            with os.fdopen(os.dup(opened.fd), "rb") as fh:
                while position < end:
                    done = self._send_piece(handler, opened, fh, position, end, pieces)
                    if done <= 0:
                        return
                    position += done
                    progress[1] += done
        finally:
            with self._deadline_lock:
                self._sending.pop(handler.connection, None)

    def _send_piece(self, handler: StaticHandler, opened: Opened, fh: Any, position: int, end: int,
                    pieces: bytes | None) -> int:
        """Send from ``position`` up to the end of its piece (or ``end``); the bytes sent, 0 when the
        answer was cut off (a listed piece that differs, or a file that shrank)."""
        if pieces is None:
            done: int = handler.connection.sendfile(fh, position, min(PIECE, end - position))
            if done <= 0:
                handler.abort()  # the file shrank: the answer stays short, never padded
            return done
        index = position // PIECE
        piece_start = index * PIECE
        piece = os.pread(opened.fd, min(PIECE, opened.st.st_size - piece_start), piece_start)
        if hashlib.sha256(piece).digest() != pieces[index * _DIGEST:(index + 1) * _DIGEST]:
            self.forget(opened)  # changed since the check: the client never gets these bytes
            handler.abort()
            return 0
        out = memoryview(piece)[position - piece_start:min(len(piece), end - piece_start)]
        handler.wfile.write(out)
        return len(out)

    def handle_failure(self, exc: BaseException) -> None:
        if isinstance(exc, _QUIET_ERRORS):
            return  # clients hang up, time out, reset: part of serving
        if self.reporter is not None:
            self.reporter.warn(f"serve: a request failed: {type(exc).__name__}: {exc}")


def folder_redirect(parts: list[str], query: str) -> Refused:
    """301 to a folder's path with its trailing slash: relative URLs in its index.html then resolve
    inside it. The Location is rebuilt from the checked segments (never '//host…'); the query is
    kept when it is plain printable ASCII."""
    location = "/" + "".join(quote(p, safe="") + "/" for p in parts)
    if query and _PLAIN_QUERY.fullmatch(query):
        location += "?" + query
    return Refused(301, "moved to the folder's path with its trailing slash", {"Location": location})


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_fd(fd: int, size: int) -> tuple[str, bytes]:
    """The file's SHA-256 (hex) and the SHA-256 of each PIECE of it, joined, in one pass."""
    digest = hashlib.sha256()
    pieces = bytearray()
    position = 0
    while position < size:
        block = os.pread(fd, min(PIECE, size - position), position)
        if not block:
            break
        digest.update(block)
        pieces += hashlib.sha256(block).digest()
        position += len(block)
    return digest.hexdigest(), bytes(pieces)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for a single ``bytes=`` range, None for the whole file; Refused 416 otherwise."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    unsatisfiable = Refused(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
    if match is None or match.group(1) == match.group(2) == "":
        raise unsatisfiable
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise unsatisfiable
    return start, end - start


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    from teadist.errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    return family, address


class _Server(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: StaticServer, family: socket.AddressFamily, address: tuple[Any, ...]) -> None:
        self.owner = owner
        self.address_family = family
        super().__init__(address, StaticHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A bounded pool: wait for a free worker (new connections queue in the kernel meanwhile);
        # while waiting, keep-alive connections are asked to let go (see StaticServer.starved).
        if not self.owner._slots.acquire(blocking=False):
            self.owner.starved.set()
            try:
                while not self.owner._slots.acquire(timeout=0.25):
                    if self.owner._closing.is_set():
                        self.shutdown_request(request)
                        return
                    self.owner.shed_idle()
            finally:
                self.owner.starved.clear()
        worker = threading.Thread(target=self._work, args=(request, client_address), daemon=True)
        try:
            worker.start()
        except RuntimeError:
            self.owner._slots.release()
            self.shutdown_request(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except BaseException as exc:  # one request's failure never stops the server
            self.owner.handle_failure(exc)
        finally:
            self.shutdown_request(request)
            self.owner._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failures are reported by _work


class StaticHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "teadist"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.owner.timeout)  # bounds every read and every write
        self.served = 0
        self.opened_at = time.monotonic()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: nothing kept or printed per request

    def handle_one_request(self) -> None:
        owner = self.server.owner
        # the whole request must arrive within the timeout; a keep-alive connection waiting for
        # its next request is idle and let go when a worker is needed
        owner.expect_request(self.connection, idle=self.served > 0)
        try:
            super().handle_one_request()
        finally:
            owner.request_arrived(self.connection)
            self.served += 1

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.owner.request_arrived(self.connection)  # from here on: per-read/write timeouts
        if parsed and self.request_version == "HTTP/0.9":
            # no status line, no length: a cut answer would look complete to the client
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self.send_json(400, {"error": "HTTP/0.9 is not supported"}, {"Connection": "close"})
            return False
        return parsed

    def last_on_connection(self) -> bool:
        """Close after this answer? A body we won't read, a worker needed elsewhere, or old enough."""
        has_body = self.headers.get("Content-Length", "0").strip() not in ("", "0") or \
            "Transfer-Encoding" in self.headers
        return (has_body or self.server.owner.starved.is_set() or self.served + 1 >= MAX_REQUESTS_PER_CONNECTION
                or time.monotonic() - self.opened_at > MAX_CONNECTION_SECONDS)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _not_allowed(self) -> None:
        self.server.owner.request_arrived(self.connection)
        self.close_connection = True  # its body is never read: the connection cannot be reused
        self.send_json(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD", "Connection": "close"})

    def do_OPTIONS(self) -> None:
        """A CORS preflight, answered only with --cors (otherwise 405, like every other method)."""
        owner = self.server.owner
        if not owner.cors:
            self._not_allowed()
            return
        if not self._host_allowed():
            return
        closing = {"Connection": "close"} if self.last_on_connection() else {}
        if closing:
            self.close_connection = True  # a body is never read: the connection cannot be reused
        self.send_response(204)
        for key, value in {**owner.headers, **PREFLIGHT_HEADERS, "Content-Length": "0", **closing}.items():
            self.send_header(key, value)
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        # a malformed request (400) ends its connection: what follows it on the wire can't be trusted
        closing = {"Connection": "close"} if status == 400 or (self.command and self.last_on_connection()) else {}
        if closing:
            self.close_connection = True
        self.send_response(status)
        for key, value in {**self.server.owner.headers, "Content-Type": "application/json",
                           "Content-Length": str(len(body)), **closing, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def abort(self) -> None:
        """Hang up mid-answer: the client sees a short body, never a complete wrong one."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host")
        if self.server.owner.loopback_only and host is not None and not loopback_host_header(host):
            # bound to loopback: a page whose name now resolves to 127.0.0.1 (DNS rebinding) is no client
            self.send_json(403, {"error": "this server answers only to localhost / loopback addresses"})
            return False
        return True

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        if not self._host_allowed():
            return
        try:
            opened = owner.open_request(self.path)
        except Refused as refused:
            self.send_json(refused.status, {"error": refused.message}, refused.headers)
            return
        try:
            pieces: bytes | None = None
            for listed in owner.listings(opened):
                pieces = owner.verified(opened, listed)
                if pieces is None:
                    self.send_json(409, {"error": f"refused: {opened.names[0]} does not match its sha256 "
                                                  "in the manifest"})
                    return
            size = opened.st.st_size
            try:
                wanted = byte_range(self.headers.get("Range"), size)
            except Refused as refused:
                self.send_json(refused.status, {"error": refused.message}, refused.headers)
                return
            start, length = wanted if wanted is not None else (0, size)
            name = opened.names[0]  # the type the client asked for, also through a link
            suffix = os.path.splitext(name)[1]
            content_type = ("text/plain; charset=utf-8" if name.endswith(".d.ts") else  # TypeScript, not MPEG-TS
                            _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream")
            self.send_response(206 if wanted is not None else 200)
            headers = {**owner.headers, "Content-Type": content_type, "Content-Length": str(length),
                       "Accept-Ranges": "bytes", "Cache-Control": "no-cache",
                       "ETag": f'"{size:x}-{opened.st.st_mtime_ns:x}-{opened.st.st_ino:x}"'}
            if wanted is not None:
                headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
            if self.last_on_connection():
                headers["Connection"] = "close"
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                owner.send_body(self, opened, start, length, pieces)
        finally:
            os.close(opened.fd)
