"""Loopback servers for the browser model-cache tests (tests/test_web_cache.py).

- ``AppServer``: the page's origin. Serves the test page, ``teadist/web`` and wllama's esm build
  with COOP/COEP/CORP, so the page is cross-origin isolated as ``teadist serve`` makes it.
- ``ModelServer``: a model origin on another port (a ``MirrorServer``: Range, HEAD, faults) that
  answers with CORS headers, including on errors and preflights.
- ``GitHubAssetServer``: a ``GitHubServer`` whose release assets can also be downloaded the way
  the REST API allows from a browser: ``GET …/releases/assets/ID`` with ``Accept:
  application/octet-stream`` redirects to a storage URL; both answer with CORS headers. Without
  that Accept header the API answers the asset's JSON, as GitHub does. Assets come from files
  (``add_asset_file``) or from uploads (``teadist release publish`` against ``api_url``).

Each keeps ``sent``: one ``SentLog`` per request (path, Range header, status, body bytes written
to the socket), the server's own record of what it sent.
"""

from __future__ import annotations

import mimetypes
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tests.servers import GhAsset, GhRelease, GitHubServer, LoopbackServer, MirrorServer, _Handler, _Served, file_sha256

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Accept-Ranges, ETag",
    "Cross-Origin-Resource-Policy": "cross-origin",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, Accept, Authorization",
    "Access-Control-Max-Age": "600",
}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html",
         ".json": "application/json", ".ts": "text/plain"}


@dataclass
class SentLog:
    method: str
    path: str
    range: str | None
    accept: str | None
    status: int = 0
    sent: int = 0


class _SendLog:
    """Per-request byte accounting: each handler thread serves one request at a time."""

    def __init__(self) -> None:
        self.sent: list[SentLog] = []
        self._current = threading.local()
        self._log_lock = threading.Lock()

    def begin(self, handler: _Handler, method: str, headers: dict[str, str]) -> SentLog:
        """Log this request; every response to it (fault answers included) carries ``headers``."""
        entry = SentLog(method, unquote(urlsplit(handler.path).path), handler.headers.get("Range"),
                        handler.headers.get("Accept"))
        with self._log_lock:
            self.sent.append(entry)
        self._current.entry = entry
        # A keep-alive connection reuses its handler: wrap its methods once, point them at this request.
        state: dict[str, Any] | None = getattr(handler, "_web_log_state", None)
        if state is None:
            state = {}
            send_response, end_headers = handler.send_response, handler.end_headers

            def logged_send_response(code: int, message: str | None = None) -> None:
                state["entry"].status = code
                send_response(code, message)

            def end_headers_with_extra() -> None:
                for key, value in state["headers"].items():
                    handler.send_header(key, value)
                end_headers()

            handler.send_response = logged_send_response  # type: ignore[method-assign]
            handler.end_headers = end_headers_with_extra  # type: ignore[method-assign]
            handler._web_log_state = state  # type: ignore[attr-defined]
        state["entry"], state["headers"] = entry, headers
        return entry

    def add(self, n: int) -> None:
        entry = getattr(self._current, "entry", None)
        if entry is not None:
            with self._log_lock:
                entry.sent += n

    def for_path(self, suffix: str) -> list[SentLog]:
        with self._log_lock:
            return [e for e in self.sent if e.path.endswith(suffix) and e.method == "GET"]


def _send_bytes(handler: _Handler, status: int, body: bytes, content_type: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class AppServer(LoopbackServer):
    """Serves URL prefixes from folders (read only), every answer cross-origin isolated."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        super().__init__()
        self.mounts = {prefix.strip("/"): root.resolve() for prefix, root in mounts.items()}
        self.log = _SendLog()

    def _resolve(self, path: str) -> Path | None:
        parts = [p for p in unquote(path).split("/") if p]
        if any(p in (".", "..") or p.startswith(".") for p in parts):
            return None
        for prefix, root in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            head = prefix.split("/") if prefix else []
            if parts[:len(head)] == head:
                target = root.joinpath(*parts[len(head):]) if parts[len(head):] else root / "index.html"
                if target.is_file() and target.resolve().is_relative_to(root):
                    return target
        return None

    def route(self, handler: _Handler, method: str) -> None:
        self.log.begin(handler, method, ISOLATION_HEADERS)
        target = self._resolve(urlsplit(handler.path).path)
        if target is None or method not in ("GET", "HEAD"):
            _send_bytes(handler, 404, b"not found", "text/plain")
            return
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        _send_bytes(handler, 200, target.read_bytes(), kind)

    def count_bytes(self, n: int) -> None:
        super().count_bytes(n)
        self.log.add(n)


class ModelServer(MirrorServer):
    """A model origin: the files of one folder by name, with CORS, Range, faults and a send log."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.log = _SendLog()

    def route(self, handler: _Handler, method: str) -> None:
        self.log.begin(handler, method, PREFLIGHT_HEADERS if method == "OPTIONS" else CORS_HEADERS)
        if method == "OPTIONS":
            _send_bytes(handler, 204, b"", "text/plain")
            return
        name = unquote(urlsplit(handler.path).path.lstrip("/"))
        served = self._lookup(name)
        if served is None or method not in ("GET", "HEAD"):
            handler.send_json(404, {"error": "not found"})
            return
        handler.send_file(served)

    def count_bytes(self, n: int) -> None:
        super().count_bytes(n)
        self.log.add(n)


class GitHubAssetServer(GitHubServer):
    """GitHub's REST API as a browser sees it: asset downloads through the API URL, with CORS."""

    def __init__(self, repo: str = "tea/tea") -> None:
        super().__init__(repo=repo, immutable=True)
        self.log = _SendLog()
        self.files: dict[int, Path] = {}
        self._spool = tempfile.TemporaryDirectory(prefix="teadist-gh-assets-")  # uploaded bytes, as files

    def stop(self) -> None:
        super().stop()
        self._spool.cleanup()

    def _file_of(self, asset_id: int) -> Path | None:
        """The file holding an asset's bytes: added from a file, or uploaded (spooled on first use)."""
        if asset_id not in self.files:
            asset = self._find(asset_id)
            if asset is None or asset.state != "uploaded":
                return None
            spooled = Path(self._spool.name) / str(asset_id)
            spooled.write_bytes(asset.data)
            self.files[asset_id] = spooled
        return self.files[asset_id]

    def add_asset_file(self, tag: str, path: Path) -> str:
        """Attach ``path`` to the published release ``tag`` (created on first use); its API URL."""
        release = next((r for r in self.releases if r.tag_name == tag), None)
        if release is None:
            release = GhRelease(self._id(), tag, tag, "", False, False)
            self.releases.append(release)
        sha = file_sha256(path)
        asset = GhAsset(self._id(), path.name, "application/octet-stream", path.stat().st_size, "uploaded",
                        "sha256:" + sha)
        release.assets.append(asset)
        self.files[asset.id] = path
        return str(self.asset_json(asset)["url"])

    def route(self, handler: _Handler, method: str) -> None:
        self.log.begin(handler, method, PREFLIGHT_HEADERS if method == "OPTIONS" else CORS_HEADERS)
        path = unquote(urlsplit(handler.path).path)
        if method == "OPTIONS":
            _send_bytes(handler, 204, b"", "text/plain")
            return
        prefix = f"/api/v3/repos/{self.repo}/releases/assets/"
        if path.startswith(prefix) and method in ("GET", "HEAD") and path[len(prefix):].isdigit():
            self._answer_asset(handler, int(path[len(prefix):]))
            return
        if path.startswith("/storage/") and method in ("GET", "HEAD"):
            self._storage(handler, path.removeprefix("/storage/"))
            return
        super().route(handler, method)

    def _find(self, asset_id: int) -> GhAsset | None:
        return next((a for r in self.releases for a in r.assets if a.id == asset_id), None)

    def _answer_asset(self, handler: _Handler, asset_id: int) -> None:
        asset = self._find(asset_id)
        if asset is None or self._file_of(asset_id) is None:
            handler.send_json(404, {"message": "Not Found"})
            return
        if "application/octet-stream" not in (handler.headers.get("Accept") or ""):
            handler.send_json(200, self.asset_json(asset))
            return
        # GitHub answers 302 to a short-lived storage URL that honours Range; so does this.
        handler.send_response(302)
        handler.send_header("Location", f"{self.url}/storage/{asset_id}/{quote(asset.name)}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _storage(self, handler: _Handler, rest: str) -> None:
        head, _, name = rest.partition("/")
        asset = self._find(int(head)) if head.isdigit() else None
        path = self._file_of(asset.id) if asset is not None else None
        if path is None or asset is None or asset.name != name:
            handler.send_json(404, {"message": "Not Found"})
            return
        handler.send_file(_Served(path, file_sha256(path), path.stat().st_size, {}))

    def count_bytes(self, n: int) -> None:
        super().count_bytes(n)
        self.log.add(n)
