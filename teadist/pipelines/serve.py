"""``teadist serve``: a small static server for local browser work with wllama.

``Range`` and ``HEAD`` with ``Content-Length`` (wllama HEADs every shard), the COOP/COEP headers
that multi-threaded wasm needs, correct MIME types for ``.wasm``/``.js``.

What it will and will not serve:
- only regular files under the folder, opened by walking the resolved path one component at a
  time without following any link (a link inside the folder is resolved first and must stay
  inside it); nothing hidden, neither by the requested name nor by where a link leads.
- with a manifest, a listed file (by the requested name *or* by where a link leads) is checked on
  the very descriptor that is then served: hashed once per (device, inode, size, mtime, ctime) and
  refused with 409 when it fails. A full GET is hashed again while it is sent and the last block
  is held back until the hash matches, so bytes changed in place after the check are cut off,
  never completed; a Range answer is cut if the file's identity changed while it was sent.
- hostile requests get a 4xx: link loops, overlong segments, NUL bytes, absurd ``Range`` headers.

It keeps no per-request state, gives each connection a socket timeout, and serves at most
``workers`` connections at once (others wait in the kernel's accept queue). IPv6 hosts work.
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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from teadist.base.progress import Reporter
from teadist.formats.manifest import Manifest

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
          ".json": "application/json", ".map": "application/json", ".html": "text/html; charset=utf-8",
          ".gguf": "application/octet-stream", ".css": "text/css"}
DEFAULT_TIMEOUT = 30.0
DEFAULT_WORKERS = 16
MAX_TIMEOUT = 3600.0
MAX_SEGMENT_BYTES = 255
MAX_SEGMENTS = 64
_BLOCK = 256 * 1024
_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_MAX_VERDICTS = 10_000
_QUIET_ERRORS = (ConnectionError, TimeoutError, OSError)


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
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


class StaticServer:
    """Serves ``root``; with a manifest, only verified bytes of the files it lists."""

    def __init__(self, root: Path, manifest: Manifest | None = None, host: str = "127.0.0.1",
                 port: int = 0, manifest_dir: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 workers: int = DEFAULT_WORKERS, reporter: Reporter | None = None) -> None:
        self.root = os.path.realpath(root)
        self.timeout = timeout
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
        self._verdicts: dict[tuple[Any, ...], bool] = {}
        self._verdict_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)
        self._closing = threading.Event()
        # connection -> when its request must have arrived: a client trickling a request byte by
        # byte (each read within the socket timeout) is cut off as surely as a silent one
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        family, address = _bind_address(host, port)
        self._httpd = _Server(self, family, address)
        self._thread: threading.Thread | None = None

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

    def expect_request(self, connection: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines[connection] = time.monotonic() + self.timeout

    def request_arrived(self, connection: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines.pop(connection, None)

    def _reap(self) -> None:
        while not self._closing.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._deadline_lock:
                late = [c for c, deadline in self._deadlines.items() if deadline < now]
                for connection in late:
                    del self._deadlines[connection]
            for connection in late:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    # -- files -------------------------------------------------------------------------------
    def parts_of(self, raw_path: str) -> list[str]:
        """The path segments a request names, or Refused (4xx)."""
        path = urlsplit(raw_path).path
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

    def open(self, parts: list[str], _index: bool = True) -> Opened:
        """Open what ``parts`` names: links inside the root are resolved first, then the real path is
        opened one component at a time without following anything (a link swapped in meanwhile, or
        a loop, ends in 404). A folder means its index.html."""
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise Refused(404, "not found")
        real_parts = [] if real == self.root else real[len(self.root) + 1:].split(os.sep)
        if any(p.startswith(".") for p in real_parts):
            raise Refused(404, "not found")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in real_parts:
                kind = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                if not (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):  # never open a device, FIFO or link
                    raise Refused(404, "not found")
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
        if stat.S_ISDIR(st.st_mode) and _index:
            os.close(fd)
            return self.open([*parts, "index.html"], _index=False)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise Refused(404, "not found")
        return Opened(fd, st, tuple(dict.fromkeys(["/".join(parts), "/".join(real_parts)])))

    def listings(self, opened: Opened) -> list[Listed]:
        return [self.expected[n] for n in opened.names if n in self.expected]

    def verified(self, opened: Opened, listed: Listed) -> bool:
        """Does this descriptor hold the listed bytes? Hashed once per file identity."""
        key = (*opened.identity, listed.sha256)
        with self._verdict_lock:
            cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        good = opened.st.st_size == listed.size and _hash_fd(opened.fd, opened.st.st_size) == listed.sha256
        with self._verdict_lock:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = good
        return good

    def forget(self, opened: Opened) -> None:
        with self._verdict_lock:
            for key in [k for k in self._verdicts if k[:5] == opened.identity]:
                del self._verdicts[key]

    def verify_all(self) -> dict[str, bool]:
        """Check every listed file present in the folder; returns name → ok."""
        verdicts: dict[str, bool] = {}
        for name in self.expected:
            try:
                opened = self.open([p for p in name.split("/") if p])
            except Refused:
                continue
            try:
                verdicts[name] = all(self.verified(opened, listed) for listed in self.listings(opened))
            finally:
                os.close(opened.fd)
        return verdicts

    def send_body(self, handler: StaticHandler, opened: Opened, start: int, length: int,
                  checks: list[Listed]) -> None:
        """Send ``length`` bytes from ``start``; listed files are held to their hash (see module doc)."""
        if not checks:
            with os.fdopen(os.dup(opened.fd), "rb") as fh:
                if length:
                    handler.connection.sendfile(fh, start, length)
            return
        whole = start == 0 and length == opened.st.st_size
        digest = hashlib.sha256() if whole else None
        held = b""
        position, end = start, start + length
        while position < end:
            block = os.pread(opened.fd, min(_BLOCK, end - position), position)
            if not block:
                break
            if digest is not None:
                digest.update(block)
            if held:
                handler.wfile.write(held)
            held, position = block, position + len(block)
        intact = position == end and (
            all(digest.hexdigest() == c.sha256 for c in checks) if digest is not None
            else _identity(os.fstat(opened.fd)) == opened.identity)
        if not intact:  # changed since the check: the client never gets a complete answer
            self.forget(opened)
            handler.abort()
            return
        handler.wfile.write(held)

    def handle_failure(self, exc: BaseException) -> None:
        if isinstance(exc, _QUIET_ERRORS):
            return  # clients hang up, time out, reset: part of serving
        if self.reporter is not None:
            self.reporter.warn(f"serve: a request failed: {type(exc).__name__}: {exc}")


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    position = 0
    while position < size:
        block = os.pread(fd, min(8 * 1024 * 1024, size - position), position)
        if not block:
            break
        digest.update(block)
        position += len(block)
    return digest.hexdigest()


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
        # A bounded pool: wait for a free worker (new connections queue in the kernel meanwhile).
        while not self.owner._slots.acquire(timeout=0.25):
            if self.owner._closing.is_set():
                self.shutdown_request(request)
                return
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

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: nothing kept or printed per request

    def handle_one_request(self) -> None:
        owner = self.server.owner
        owner.expect_request(self.connection)  # the whole request must arrive within the timeout
        try:
            super().handle_one_request()
        finally:
            owner.request_arrived(self.connection)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.owner.request_arrived(self.connection)  # from here on: per-read/write timeouts
        return parsed

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _not_allowed(self) -> None:
        self.server.owner.request_arrived(self.connection)
        self.close_connection = True  # its body is never read: the connection cannot be reused
        self.send_json(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        for key, value in {**ISOLATION_HEADERS, "Content-Type": "application/json",
                           "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def abort(self) -> None:
        """Hang up mid-answer: the client sees a short body, never a complete wrong one."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        try:
            opened = owner.open(owner.parts_of(self.path))
        except Refused as refused:
            self.send_json(refused.status, {"error": refused.message}, refused.headers)
            return
        try:
            checks = owner.listings(opened)
            for listed in checks:
                if not owner.verified(opened, listed):
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
            content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            self.send_response(206 if wanted is not None else 200)
            headers = {**ISOLATION_HEADERS, "Content-Type": content_type, "Content-Length": str(length),
                       "Accept-Ranges": "bytes", "Cache-Control": "no-cache",
                       "ETag": f'"{size:x}-{opened.st.st_mtime_ns:x}-{opened.st.st_ino:x}"'}
            if wanted is not None:
                headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                owner.send_body(self, opened, start, length, checks)
        finally:
            os.close(opened.fd)
