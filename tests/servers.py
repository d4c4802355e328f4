"""Loopback test servers: a Range-capable mirror, a Hub-compatible and a GitHub-API-compatible server.

Used by ``scripts/bench.py`` and the tests. They bind 127.0.0.1 only. Each
records the requests it saw (method, path, headers, Range, the connection it came on, how many
requests were in flight when it arrived, its status) and the body bytes it sent, and can be told
to misbehave: truncate a body, reset the connection, answer 500 or 429 with Retry-After, stall,
declare a wrong Content-Length, ignore Range, flip a byte, serve one request slowly, or serve
another file after a resume.

A WAN-like link, without any network: ``pace`` (bytes/s each connection may send), ``delay``
(seconds before each request is answered: a round trip plus the server's think time),
``total_pace`` (bytes/s for all connections together: a saturated link) and ``max_in_flight``
(more requests than this at once are answered 429, as a rate-limiting CDN does), ``range_cap``
(a Range is answered with a 206 for at most this many bytes of it, as CDNs that cap range sizes do:
RFC 9110 lets a server send a subset, and its Content-Range says which).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
_SEND_BLOCK = 1024 * 1024


@dataclass
class Fault:
    """One misbehaviour, applied to the next matching GET (``times`` of them)."""

    # truncate | reset | status | stall | pause | wrong_length | ignore_range | corrupt | redirect | etag | slow
    # | trickle (the body one byte every ``seconds``) | trickle_head (the status line and headers so)
    # | endless (200 without Content-Length, then zeros until ``after`` bytes or the client leaves)
    # | short_length (a Content-Length ``after`` bytes short of the range it sends in full, keep-alive)
    kind: str
    after: int = 0  # bytes of body sent before truncate/reset/stall/pause
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0  # stall / pause duration (a pause then sends the rest)
    offset: int = 0  # corrupt: file offset of the flipped byte
    path: str | None = None  # only requests whose path ends with this
    times: int = 1
    skip: int = 0  # let this many matching requests through untouched first
    location: str = ""  # redirect: the Location sent (302)
    pace: float = 0.0  # slow: this request's body is sent at this many bytes/s
    # pause: hold until the test sets this (``seconds`` is then only a cap), so a test that acts while
    # a client is held does not race its own speed against a fixed pause
    release: threading.Event | None = None


@dataclass
class AppliedFault:
    """The server's own log of a fault it applied: which request it hit."""

    kind: str
    path: str
    range: str | None


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    conn: int = 0  # which TCP connection (numbered in accept order)
    in_flight: int = 0  # requests being answered when this one arrived, itself included
    at: float = 0.0  # time.monotonic() when it arrived
    status: int | None = None
    ended: float | None = None  # time.monotonic() when its answer was sent

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


@dataclass
class _Served:
    path: Path
    sha256: str
    size: int
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, owner: LoopbackServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.owner = owner
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-transfer are expected here (faults, kills)


class LoopbackServer:
    """Base: threading server on 127.0.0.1, request log, byte count and a fault queue."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[SeenRequest] = []
        self.faults: list[Fault] = []
        self.applied: list[AppliedFault] = []
        self.bytes_sent = 0
        self.pace: float | None = None  # bytes/s per connection
        self.delay = 0.0  # seconds before each request is answered
        self.first_delays: list[float] = []  # the first GETs wait these instead (in order), then ``delay``
        self.total_pace: float | None = None  # bytes/s for all connections together
        self.max_in_flight: int | None = None  # beyond this, GETs of files are answered 429
        self.range_cap: int | None = None  # a Range gets at most this many bytes (206, honest Content-Range)
        self.connections = 0  # TCP connections accepted so far
        self.open_connections = 0
        self.peak_connections = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._link_free_at = 0.0  # total_pace: when the shared link can send again
        self._lock = threading.Lock()
        self._httpd = _Server(self, host, port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def answer_delay(self, method: str) -> float:
        """Seconds before this request is answered: the next of ``first_delays`` for a GET while
        any are left (a late first answer, as from a loaded client), else ``delay``."""
        with self._lock:
            if method == "GET" and self.first_delays:
                return self.first_delays.pop(0)
        return self.delay

    def take_fault(self, path: str, range_header: str | None = None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path is None or path.endswith(fault.path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    self.applied.append(AppliedFault(fault.kind, path, range_header))
                    return fault
        return None

    def applied_kinds(self) -> list[str]:
        with self._lock:
            return [a.kind for a in self.applied]

    def record(self, method: str, path: str, headers: dict[str, str], conn: int = 0) -> SeenRequest:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            seen = SeenRequest(method, path, headers, conn, self.in_flight, time.monotonic())
            self.requests.append(seen)
            return seen

    def finished(self, seen: SeenRequest) -> None:
        with self._lock:
            self.in_flight -= 1
            seen.ended = time.monotonic()

    def connection_opened(self) -> int:
        with self._lock:
            self.connections += 1
            self.open_connections += 1
            self.peak_connections = max(self.peak_connections, self.open_connections)
            return self.connections

    def connection_closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    def concurrency(self, since: float = 0.0, until: float = float("inf"), slack: float = 0.01) -> int:
        """The most file GETs answered at once (from the log) among those that arrived between
        ``since`` and ``until``; a request counts until its answer ended (less ``slack`` seconds:
        a client that hangs up and asks again on another connection is not two at once)."""
        spans = [(r.at, (r.ended or time.monotonic()) - slack) for r in self.file_gets() if since <= r.at <= until]
        events = sorted([(a, 1) for a, _ in spans] + [(max(a, e), -1) for a, e in spans], key=lambda x: (x[0], x[1]))
        peak = now = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    def file_gets(self) -> list[SeenRequest]:
        """The GETs that asked for a file's bytes (any status), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.status in (200, 206, 429, 503)]

    def wait_for_link(self, n: int) -> float:
        """With ``total_pace``: reserve the shared link for ``n`` bytes; the seconds to wait first."""
        if not self.total_pace:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._link_free_at)
            self._link_free_at = start + n / self.total_pace
            return self._link_free_at - now

    def count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def headers_seen(self) -> list[dict[str, str]]:
        with self._lock:
            return [r.headers for r in self.requests]

    # subclasses route requests
    def route(self, handler: _Handler, method: str) -> None:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.owner.connection_opened()
        self.seen: SeenRequest | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.connection_closed()

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.seen is not None and self.seen.status is None:
            self.seen.status = code
        super().send_response(code, message)

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        self.seen = owner.record(method, self.path, {k: v for k, v in self.headers.items()}, self.conn_id)
        try:
            delay = owner.answer_delay(method)
            if delay:
                time.sleep(delay)
            owner.route(self, method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            owner.finished(self.seen)
            self.seen = None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:  # CORS preflights (tests/web_servers.py)
        self._dispatch("OPTIONS")

    def read_body(self, limit: int | None = None) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(length, limit))

    # -- helpers ---------------------------------------------------------------------------
    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_code(self, status: int, code: str | None = None, retry_after: float | None = None) -> None:
        headers = {"X-Error-Code": code} if code else {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        self.send_json(status, {"error": code or str(status)}, headers)

    def send_file(self, served: _Served, extra_headers: dict[str, str] | None = None) -> None:
        owner = self.server.owner
        if self.command == "GET" and owner.max_in_flight is not None and owner.in_flight > owner.max_in_flight:
            self.send_error_code(429, retry_after=0.2)  # a CDN limiting connections per client
            return
        fault = owner.take_fault(self.path, self.headers.get("Range")) if self.command == "GET" else None
        if fault is not None and fault.kind == "status":
            self.send_error_code(fault.status, retry_after=fault.retry_after)
            return
        if fault is not None and fault.kind == "trickle_head":
            head = (f"HTTP/1.1 200 OK\r\nContent-Length: {served.size}\r\nX-Pad: {'p' * 4000}\r\n\r\n").encode()
            self._trickle(head, fault.seconds)
            self._abort(reset=False)
            return
        if fault is not None and fault.kind == "endless":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            zeros, sent = bytes(64 * 1024), 0
            with contextlib.suppress(OSError):
                while sent < fault.after:
                    self.connection.sendall(zeros)
                    sent += len(zeros)
                    owner.count_bytes(len(zeros))
            self._abort(reset=False)
            return
        if fault is not None and fault.kind == "redirect":
            self.send_response(302)
            self.send_header("Location", fault.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = served.size
        start, end = 0, size
        ranged = False
        range_header = self.headers.get("Range")
        if range_header and not (fault is not None and fault.kind == "ignore_range"):
            match = _RANGE_RE.match(range_header.strip())
            if match:
                start = int(match.group(1))
                end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                if owner.range_cap is not None:
                    end = min(end, start + owner.range_cap)
                if start >= size or start >= end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ranged = True
        length = end - start
        declared = length + (1000 if fault is not None and fault.kind == "wrong_length" else 0)
        if fault is not None and fault.kind == "short_length":  # says less than it sends (and keeps the connection)
            declared = max(0, length - fault.after)
        self.send_response(206 if ranged else 200)
        if "Content-Type" not in served.headers:
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        headers = {**served.headers, **(extra_headers or {})}
        if fault is not None and fault.kind == "etag":
            headers["ETag"] = '"another-version"'
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "trickle":
            with open(served.path, "rb") as fh:
                fh.seek(start)
                self._trickle(fh.read(length), fault.seconds)
            self._abort(reset=False)
            return
        self._send_body(served.path, start, length, fault)
        if fault is not None and fault.kind == "wrong_length":
            self._abort(reset=False)

    def _send_body(self, path: Path, start: int, length: int, fault: Fault | None) -> None:
        owner = self.server.owner
        limit = length
        if fault is not None and fault.kind in ("truncate", "reset", "stall", "pause"):
            limit = min(length, fault.after)
        sock = self.connection
        pace = fault.pace if fault is not None and fault.kind == "slow" else owner.pace
        step = _SEND_BLOCK * 8
        if pace or owner.total_pace:  # small slices, each sent on time: a steady paced stream
            step = max(4096, min(_SEND_BLOCK, int(min(pace or 1e18, owner.total_pace or 1e18) / 50)))
        began = time.monotonic()
        with open(path, "rb") as fh:
            if fault is None or fault.kind in ("ignore_range", "wrong_length", "truncate", "reset", "stall", "pause",
                                               "etag", "slow", "short_length"):
                sent = 0
                while sent < length:
                    if sent == limit and fault is not None and fault.kind == "pause":
                        if self._held(fault):  # then send the rest: a slow but honest server
                            break  # (unless the client left meanwhile)
                        limit = length
                    if sent >= limit:
                        break
                    want = min(step, limit - sent)
                    wait = owner.wait_for_link(want)
                    if pace:
                        wait = max(wait, began + sent / pace - time.monotonic())
                    if wait > 0 and self._peer_left(wait):
                        break  # the client closed (a cut range): stop now, as a real server would
                    n = os.sendfile(sock.fileno(), fh.fileno(), start + sent, want)
                    if n == 0:
                        break
                    sent += n
                    owner.count_bytes(n)
            else:  # corrupt: flip one byte on the way out
                fh.seek(start)
                pos = start
                while pos < start + length:
                    block = bytearray(fh.read(min(_SEND_BLOCK, start + length - pos)))
                    if pos <= fault.offset < pos + len(block):
                        block[fault.offset - pos] ^= 0xFF
                    self.wfile.write(block)
                    owner.count_bytes(len(block))
                    pos += len(block)
        if fault is None or (limit == length and fault.kind != "stall") or fault.kind == "pause":
            return
        if fault.kind == "stall":
            time.sleep(fault.seconds)
            self._abort(reset=False)
        else:
            self._abort(reset=fault.kind == "reset")

    def _trickle(self, data: bytes, seconds: float) -> None:
        """Send ``data`` one byte every ``seconds`` (each byte well within any read timeout: a
        slow-loris answer), until all is sent or the client hangs up."""
        self.wfile.flush()
        for index in range(len(data)):
            try:
                self.connection.sendall(data[index:index + 1])
            except OSError:
                return
            self.server.owner.count_bytes(1)
            if self._peer_left(seconds):
                return

    def _held(self, fault: Fault) -> bool:
        """A pause: ``fault.seconds``, or until ``fault.release`` is set (``seconds`` the cap); True when
        the client hung up meanwhile."""
        if fault.release is None:
            return self._peer_left(fault.seconds)
        deadline = time.monotonic() + fault.seconds
        while not fault.release.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._peer_left(min(0.05, left)):
                return True
        return False

    def _peer_left(self, wait: float) -> bool:
        """Wait ``wait`` seconds, or less if the client hangs up meanwhile (True then)."""
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _abort(self, reset: bool) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.connection.close()


def file_sha256(path: Path) -> str:
    from teadist.base.hashing import hash_range

    return hash_range(path)[0]


class MirrorServer(LoopbackServer):
    """Serves the files of a folder by name, with HEAD, Range and faults."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self._served: dict[str, _Served] = {}
        self.swapped: dict[str, Path] = {}

    def url_for(self, name: str) -> str:
        return f"{self.url}/{quote(name)}"

    def prepare(self, name: str) -> None:
        """Hash ``name`` now, so its first request is answered without that delay (timing tests)."""
        self._lookup(name)

    def _lookup(self, name: str) -> _Served | None:
        path = self.swapped.get(name) or (self.root / name)
        if "/" in name or name.startswith(".") or not path.is_file():
            return None
        st = path.stat()
        key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
        served = self._served.get(key)
        if served is None:
            sha = file_sha256(path)
            served = _Served(path, sha, st.st_size, {"ETag": f'"{sha}"'})
            self._served[key] = served
        return served

    def route(self, handler: _Handler, method: str) -> None:
        name = unquote(urlsplit(handler.path).path.lstrip("/"))
        served = self._lookup(name)
        if served is None or method == "POST":
            handler.send_error_code(404)
            return
        handler.send_file(served)


@dataclass
class HubRepo:
    commit: str
    files: dict[str, Path]
    branches: tuple[str, ...] = ("main",)


class HubServer(LoopbackServer):
    """The parts of the Hugging Face Hub protocol teadist and huggingface_hub use (FACTS.md).

    ``/{repo}/resolve/{rev}/{path}`` (HEAD/GET with X-Repo-Commit, ETag / X-Linked-Etag =
    sha256, X-Linked-Size, Range), ``/api/models/{repo}/paths-info/{rev}`` and
    ``/api/models/{repo}/revision/{rev}`` (LFS metadata). With ``cdn`` set, GETs of files are
    redirected there, as the real Hub does for LFS files.
    """

    def __init__(self, cdn: MirrorServer | None = None, lie_sha256: bool = False) -> None:
        super().__init__()
        self.repos: dict[str, HubRepo] = {}
        self.cdn = cdn
        self.lie_sha256 = lie_sha256
        self._meta: dict[Path, tuple[str, int]] = {}
        # A hostile Hub: headers replaced (None drops one) on resolve answers; API bodies replaced.
        self.header_overrides: dict[str, str | None] = {}
        self.api_override: Any = None
        self.api_raw: bytes | None = None
        self.trickle: float | None = None  # every answer's status line and headers a byte this often

    def add_repo(self, repo: str, files: dict[str, Path], commit: str | None = None) -> HubRepo:
        commit = commit or hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = HubRepo(commit, files)
        for path in files.values():  # the real Hub knows its hashes before anyone asks
            self._file_meta(path)
        return self.repos[repo]

    def _file_meta(self, path: Path) -> tuple[str, int]:
        if path not in self._meta:
            self._meta[path] = (file_sha256(path), path.stat().st_size)
        sha, size = self._meta[path]
        return ("0" * 64 if self.lie_sha256 else sha), size

    def _repo_rev(self, repo: str, rev: str) -> HubRepo | str:
        found = self.repos.get(repo)
        if found is None:
            return "RepoNotFound"
        if rev not in (found.commit, *found.branches):
            return "RevisionNotFound"
        return found

    def route(self, handler: _Handler, method: str) -> None:
        path = unquote(urlsplit(handler.path).path)
        if self.trickle is not None:
            with self._lock:
                self.applied.append(AppliedFault("trickle_head", handler.path, None))
            handler._trickle(f"HTTP/1.1 200 OK\r\nX-Pad: {'p' * 4000}\r\n\r\n".encode(), self.trickle)
            handler._abort(reset=False)
            return
        api = re.match(r"^/api/models/([^/]+/[^/]+)/(paths-info|revision)/([^/]+)$", path)
        if api:
            self._api(handler, api.group(1), api.group(2), api.group(3))
            return
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not match or method == "POST":
            handler.send_error_code(404, "RepoNotFound")
            return
        repo = self._repo_rev(match.group(1), match.group(2))
        if isinstance(repo, str):
            handler.send_error_code(404, repo)
            return
        file = repo.files.get(match.group(3))
        if file is None:
            handler.send_error_code(404, "EntryNotFound")
            return
        sha, size = self._file_meta(file)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                   "X-Linked-Size": str(size)}
        for key, value in self.header_overrides.items():
            headers.pop(key, None)
            if value is not None:
                headers[key] = value
        if self.cdn is not None and method == "GET":
            target = self.cdn.url_for(file.name)
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            return
        handler.send_file(_Served(file, sha, size, headers))

    def _api(self, handler: _Handler, repo_id: str, kind: str, rev: str) -> None:
        repo = self._repo_rev(repo_id, rev)
        if isinstance(repo, str):
            handler.send_error_code(404, repo)
            return
        entries = []
        for name, file in repo.files.items():
            sha, size = self._file_meta(file)
            entries.append((name, sha, size))
        if self.api_raw is not None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(self.api_raw)))
            handler.end_headers()
            handler.wfile.write(self.api_raw)
            return
        if self.api_override is not None:
            handler.send_json(200, self.api_override)
            return
        if kind == "paths-info":
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length).decode() if length else ""
            wanted = _requested_paths(body)
            handler.send_json(200, [
                {"type": "file", "path": n, "size": s, "oid": hashlib.sha1(n.encode()).hexdigest(),
                 "lfs": {"oid": sha, "size": s, "pointerSize": 134}}
                for n, sha, s in entries if not wanted or n in wanted])
        else:
            handler.send_json(200, {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": [
                {"rfilename": n, "size": s, "blobId": hashlib.sha1(n.encode()).hexdigest(),
                 "lfs": {"sha256": sha, "size": s, "pointerSize": 134}} for n, sha, s in entries]})


def _requested_paths(body: str) -> set[str]:
    """paths-info bodies are JSON or form-encoded (``paths=a&paths=b``)."""
    from urllib.parse import parse_qs

    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict):
            paths = data.get("paths", [])
            return set(paths if isinstance(paths, list) else [paths])
    return set(parse_qs(body).get("paths", []))


# -- GitHub Releases -----------------------------------------------------------------------------
@dataclass
class GhAsset:
    id: int
    name: str
    content_type: str
    size: int
    state: str
    digest: str | None
    data: bytes = b""  # what was uploaded: served by asset downloads


@dataclass
class GhRelease:
    id: int
    tag_name: str
    name: str
    body: str
    draft: bool
    prerelease: bool
    assets: list[GhAsset] = field(default_factory=list)


class GitHubServer(LoopbackServer):
    """The GitHub REST API parts a release publisher uses, at ``{url}/api/v3`` (GitHub Enterprise
    style, for PyGithub's ``base_url``), with uploads on the same host and port.

    Behaves like github.com where it matters (FACTS.md): a duplicate asset name is 422
    ``already_exists``; drafts are not found by tag; ``immutable`` releases refuse uploads once
    published. ``upload_faults`` misbehave on uploads: ``starter`` (502 after storing a
    half-uploaded ``starter`` asset), ``drop`` (read part of the body, then hang up, leaving a
    starter), ``slow_success`` (store the asset, then answer 502 — a retry meets 422),
    ``rate_limit`` (403 primary rate limit or 429 with Retry-After).

    Asset downloads (``GET …/releases/assets/ID`` with ``Accept: application/octet-stream``) are
    answered directly or, with ``download_redirect``, by a 302 to ``/_cdn/…`` on the same server
    (like GitHub's signed CDN URLs; no token needed there, and ``cdn_headers`` records what came).
    ``digests=False`` presents every asset without a digest (old assets, GitHub Enterprise);
    ``upload_url_override`` hands out a hostile ``upload_url``.
    """

    def __init__(self, repo: str = "tea/tea", immutable: bool = True, token: str | None = None,
                 digests: bool = True, download_redirect: bool = True,
                 upload_url_override: str | None = None) -> None:
        super().__init__()
        self.repo = repo
        self.immutable = immutable
        self.token = token
        self.digests = digests
        self.download_redirect = download_redirect
        self.upload_url_override = upload_url_override
        self.cdn_headers: list[dict[str, str]] = []
        self.downloads = 0
        self.releases: list[GhRelease] = []
        self.upload_faults: list[str] = []
        self.api_faults: list[str] = []
        self.uploads = 0
        self.writes: list[str] = []
        self._next_id = 100

    @property
    def api_url(self) -> str:
        return self.url + "/api/v3"

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add_release(self, tag: str, draft: bool = True, prerelease: bool = False) -> GhRelease:
        """Stage a release, as an earlier run (or a person) left it."""
        rel = GhRelease(self._id(), tag, tag, "", draft, prerelease)
        self.releases.append(rel)
        return rel

    def add_asset(self, rel: GhRelease, name: str, data: bytes, state: str = "uploaded") -> GhAsset:
        """Stage an asset holding ``data`` (its digest is shown only when ``digests`` is on)."""
        asset = GhAsset(self._id(), name, "application/octet-stream", len(data), state,
                        "sha256:" + hashlib.sha256(data).hexdigest(), data)
        rel.assets.append(asset)
        return asset

    def _base(self) -> str:
        return f"{self.api_url}/repos/{self.repo}"

    def asset_json(self, asset: GhAsset) -> dict[str, Any]:
        return {"id": asset.id, "name": asset.name, "label": "", "content_type": asset.content_type,
                "state": asset.state, "size": asset.size, "digest": asset.digest if self.digests else None,
                "download_count": 0,
                "url": f"{self._base()}/releases/assets/{asset.id}",
                "browser_download_url": f"https://github.com/{self.repo}/releases/download/x/{asset.name}",
                "created_at": "2026-11-22T00:00:00Z", "updated_at": "2026-11-22T00:00:00Z"}

    def release_json(self, rel: GhRelease) -> dict[str, Any]:
        return {"id": rel.id, "tag_name": rel.tag_name, "name": rel.name, "body": rel.body, "draft": rel.draft,
                "prerelease": rel.prerelease, "url": f"{self._base()}/releases/{rel.id}",
                "html_url": f"https://github.com/{self.repo}/releases/tag/{rel.tag_name}",
                "upload_url": (self.upload_url_override or
                               f"{self.url}/api/uploads/repos/{self.repo}/releases/{rel.id}/assets") + "{?name,label}",
                "assets_url": f"{self._base()}/releases/{rel.id}/assets",
                "assets": [self.asset_json(a) for a in rel.assets],
                "created_at": "2026-11-22T00:00:00Z", "published_at": None if rel.draft else "2026-11-22T00:00:00Z"}

    def find_release(self, release_id: int) -> GhRelease | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def route(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        cdn = re.match(r"^/_cdn/(\d+)/", path)
        if cdn and method == "GET":  # the signed CDN URL a download redirects to: no token needed
            self.cdn_headers.append(dict(handler.headers.items()))
            self._send_asset(handler, int(cdn.group(1)))
            return
        if self.token is not None and handler.headers.get("Authorization") not in (
                f"token {self.token}", f"Bearer {self.token}"):
            handler.send_json(401, {"message": "Bad credentials"})
            return
        if method != "GET" and not path.endswith("/rate_limit"):
            self.writes.append(f"{method} {path}")
        if self.api_faults and method == "GET":
            kind = self.api_faults.pop(0)
            self._rate_limited(handler, kind)
            return
        base = f"/api/v3/repos/{self.repo}"
        upload = re.match(rf"^/api/uploads/repos/{re.escape(self.repo)}/releases/(\d+)/assets$", path)
        if upload and method == "POST":
            self._upload(handler, int(upload.group(1)), parts.query)
            return
        if path == base and method == "GET":
            handler.send_json(200, {"id": 1, "name": self.repo.split("/")[1], "full_name": self.repo,
                                    "url": self._base(), "owner": {"login": self.repo.split("/")[0]}})
            return
        if path == base + "/releases":
            if method == "GET":
                self._send_page(handler, parts.query, [self.release_json(r) for r in self.releases])
                return
            if method == "POST":
                data = json.loads(handler.read_body() or b"{}")
                rel = GhRelease(self._id(), data["tag_name"], data.get("name") or data["tag_name"],
                                data.get("body", ""), bool(data.get("draft")), bool(data.get("prerelease")))
                self.releases.append(rel)
                handler.send_json(201, self.release_json(rel))
                return
        tag = re.match(rf"^{re.escape(base)}/releases/tags/(.+)$", path)
        if tag and method == "GET":
            found = next((r for r in self.releases if r.tag_name == tag.group(1) and not r.draft), None)
            if found is None:
                handler.send_json(404, {"message": "Not Found"})
            else:
                handler.send_json(200, self.release_json(found))
            return
        one = re.match(rf"^{re.escape(base)}/releases/(\d+)(/assets)?$", path)
        if one:
            found_rel = self.find_release(int(one.group(1)))
            if found_rel is None:
                handler.send_json(404, {"message": "Not Found"})
            elif one.group(2) and method == "GET":
                self._send_page(handler, parts.query, [self.asset_json(a) for a in found_rel.assets])
            elif method == "GET":
                handler.send_json(200, self.release_json(found_rel))
            elif method == "PATCH":
                data = json.loads(handler.read_body() or b"{}")
                for key in ("name", "body", "draft", "prerelease", "tag_name"):
                    if key in data:
                        setattr(found_rel, key, data[key])
                handler.send_json(200, self.release_json(found_rel))
            else:
                handler.send_json(405, {"message": "Method Not Allowed"})
            return
        asset = re.match(rf"^{re.escape(base)}/releases/assets/(\d+)$", path)
        if asset and method == "GET":
            found_asset = self._asset(int(asset.group(1)))
            if found_asset is None:
                handler.send_json(404, {"message": "Not Found"})
            elif "application/octet-stream" not in handler.headers.get("Accept", ""):
                handler.send_json(200, self.asset_json(found_asset))
            elif self.download_redirect:
                handler.send_response(302)
                handler.send_header("Location", f"{self.url}/_cdn/{found_asset.id}/{found_asset.name}?sig=x")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
            else:
                self._send_asset(handler, found_asset.id)
            return
        if asset and method == "DELETE":
            for rel in self.releases:
                for a in rel.assets:
                    if a.id == int(asset.group(1)):
                        if self.immutable and not rel.draft:
                            handler.send_json(422, {"message": "Cannot modify an immutable release"})
                            return
                        rel.assets.remove(a)
                        handler.send_response(204)
                        handler.send_header("Content-Length", "0")
                        handler.end_headers()
                        return
            handler.send_json(404, {"message": "Not Found"})
            return
        handler.send_json(404, {"message": "Not Found"})

    def _send_page(self, handler: _Handler, query: str, items: list[dict[str, Any]]) -> None:
        """A list endpoint as GitHub pages it: ``per_page`` (default 30, at most 100) and ``page``,
        with a ``Link: rel="next"`` header while more pages follow."""
        from urllib.parse import parse_qs

        params = parse_qs(query)
        per_page = max(1, min(100, int((params.get("per_page") or ["30"])[0])))
        page = max(1, int((params.get("page") or ["1"])[0]))
        headers = {}
        if page * per_page < len(items):
            path = urlsplit(handler.path).path
            headers["Link"] = f'<{self.url}{path}?per_page={per_page}&page={page + 1}>; rel="next"'
        handler.send_json(200, items[(page - 1) * per_page:page * per_page], headers)

    def _asset(self, asset_id: int) -> GhAsset | None:
        return next((a for r in self.releases for a in r.assets if a.id == asset_id), None)

    def _send_asset(self, handler: _Handler, asset_id: int) -> None:
        found = self._asset(asset_id)
        if found is None:
            handler.send_json(404, {"message": "Not Found"})
            return
        self.downloads += 1
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(found.data)))
        handler.end_headers()
        handler.wfile.write(found.data)

    def _rate_limited(self, handler: _Handler, kind: str) -> None:
        if kind == "429":
            handler.send_json(429, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "1"})
        else:
            reset = str(int(time.time()) + 1)
            handler.send_json(403, {"message": "API rate limit exceeded for user."},
                              {"X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "5000",
                               "X-RateLimit-Reset": reset})

    def _upload(self, handler: _Handler, release_id: int, query: str) -> None:
        from urllib.parse import parse_qs

        rel = self.find_release(release_id)
        name = (parse_qs(query).get("name") or [""])[0]
        if rel is None or not name:
            handler.send_json(404, {"message": "Not Found"})
            return
        fault = self.upload_faults.pop(0) if self.upload_faults else None
        if fault in ("rate_limit", "429"):
            handler.read_body()
            self._rate_limited(handler, "429" if fault == "429" else "403")
            return
        if self.immutable and not rel.draft:
            handler.read_body()
            handler.send_json(422, {"message": "Cannot upload assets to an immutable release."})
            return
        if any(a.name == name for a in rel.assets):
            handler.read_body()
            handler.send_json(422, {"message": "Validation Failed", "errors": [
                {"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}]})
            return
        content_type = handler.headers.get("Content-Type", "application/octet-stream")
        length = int(handler.headers.get("Content-Length") or 0)
        if fault == "drop":
            handler.rfile.read(min(length, max(1, length // 2)))
            rel.assets.append(GhAsset(self._id(), name, content_type, 0, "starter", None))
            handler._abort(reset=True)
            return
        body = handler.read_body()
        self.uploads += 1
        if fault == "starter":
            rel.assets.append(GhAsset(self._id(), name, content_type, 0, "starter", None))
            handler.send_json(502, {"message": "Bad Gateway"})
            return
        asset = GhAsset(self._id(), name, content_type, len(body), "uploaded",
                        "sha256:" + hashlib.sha256(body).hexdigest(), body)
        rel.assets.append(asset)
        if fault == "slow_success":
            handler.send_json(502, {"message": "Bad Gateway"})
            return
        handler.send_json(201, self.asset_json(asset))
