"""``teadist serve``: a static server for local browser work with wllama.

``Range`` and ``HEAD`` with ``Content-Length`` (wllama HEADs every shard), the COOP/COEP headers
that multi-threaded wasm needs, correct MIME types for ``.wasm``/``.js``; only files under the
folder, never hidden ones. With a manifest it verifies the files it lists (in parallel, at start
and again whenever a file changes) and refuses to serve one that fails: wllama's own cache checks
sizes only, so this is where a flipped byte is stopped.
"""

from __future__ import annotations

import mimetypes
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from teadist.formats.manifest import Manifest
from teadist.loopback import LoopbackServer, _Handler, _Served

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
          ".json": "application/json", ".map": "application/json", ".html": "text/html; charset=utf-8",
          ".gguf": "application/octet-stream", ".css": "text/css"}


class StaticServer(LoopbackServer):
    def __init__(self, root: Path, manifest: Manifest | None = None, host: str = "127.0.0.1",
                 port: int = 0, manifest_dir: Path | None = None) -> None:
        super().__init__(host, port)
        self.root = root.resolve()
        self.expected: dict[str, tuple[int, str]] = {}
        if manifest is not None:
            # names in a manifest are relative to its folder; served paths are relative to the root
            prefix = ""
            if manifest_dir is not None and manifest_dir.resolve().is_relative_to(self.root):
                rel = manifest_dir.resolve().relative_to(self.root).as_posix()
                prefix = "" if rel == "." else rel + "/"
            self.expected = {prefix + c.name: (c.size, c.sha256) for c in manifest.chunks}
            if manifest.file.sha256 is not None and manifest.file.size is not None:
                self.expected[prefix + manifest.file.name] = (manifest.file.size, manifest.file.sha256)
        self._verdicts: dict[str, tuple[tuple[int, int], bool]] = {}
        self._verify_lock = threading.Lock()

    def verify_all(self) -> dict[str, bool]:
        """Check every listed file present in the folder; returns name → ok."""
        from concurrent.futures import ThreadPoolExecutor

        present = [n for n in self.expected if (self.root / n).is_file()]
        with ThreadPoolExecutor(max_workers=2) as pool:
            return dict(zip(present, pool.map(self._is_good, present), strict=True))

    def _is_good(self, name: str) -> bool:
        from teadist.base.hashing import hash_range

        path = self.root / name
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        with self._verify_lock:
            cached = self._verdicts.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        size, sha = self.expected[name]
        good = st.st_size == size and hash_range(path)[0] == sha
        with self._verify_lock:
            self._verdicts[name] = (key, good)
        return good

    def resolve(self, raw_path: str) -> Path | None:
        parts = [p for p in unquote(urlsplit(raw_path).path).split("/") if p]
        if any(p in (".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None
        path = self.root.joinpath(*parts)
        if path.is_dir():
            path = path / "index.html"
        try:
            real = path.resolve()
        except OSError:
            return None
        if not real.is_relative_to(self.root) or not real.is_file():
            return None
        return real

    def route(self, handler: _Handler, method: str) -> None:
        if method not in ("GET", "HEAD"):
            handler.send_json(405, {"error": "method not allowed"}, ISOLATION_HEADERS)
            return
        path = self.resolve(handler.path)
        if path is None:
            handler.send_json(404, {"error": "not found"}, ISOLATION_HEADERS)
            return
        rel = path.relative_to(self.root).as_posix()
        if rel in self.expected and not self._is_good(rel):
            handler.send_json(409, {"error": f"refused: {rel} does not match its sha256 in the manifest"},
                              ISOLATION_HEADERS)
            return
        st = path.stat()
        content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers: dict[str, Any] = {**ISOLATION_HEADERS, "Content-Type": content_type, "Cache-Control": "no-cache",
                                   "ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"'}
        handler.send_file(_Served(path, "", st.st_size, headers))
