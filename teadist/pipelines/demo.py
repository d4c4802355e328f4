"""``teadist demo``: the main job end to end on an embedded default, with no network at all.

In a temporary home it makes a tiny GGUF, splits it, serves the chunks and manifest with
``teadist serve``'s handler on loopback, fetches through the manifest URL with one interruption
and a resume, installs into a temporary TEA model cache, verifies, and tells what it is,
reporting each step. The interruption is demo-local: the server hangs up once, mid-chunk.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from teadist.base.progress import Reporter
from teadist.pipelines.serve import Opened, StaticHandler, StaticServer


class _InterruptingServer(StaticServer):
    """``serve`` that cuts the first GET of one file after ``cut`` bytes and notes the resumes."""

    def __init__(self, root: Path, victim: str, cut: int) -> None:
        super().__init__(root)
        self.victim, self.cut = victim, cut
        self.resumed_with: list[str] = []
        self.bytes_sent = 0
        self._cut_done = False
        self._lock = threading.Lock()

    def send_body(self, handler: StaticHandler, opened: Opened, start: int, length: int,
                  pieces: bytes | None) -> None:
        with self._lock:
            ours = opened.names[-1] == self.victim
            cut_now = ours and not self._cut_done
            self._cut_done = self._cut_done or cut_now
            if ours and handler.headers.get("Range") and len(self.resumed_with) < 10:
                self.resumed_with.append(str(handler.headers["Range"]))
            self.bytes_sent += min(length, self.cut) if cut_now else length
        if cut_now:
            super().send_body(handler, opened, start, min(length, self.cut), pieces)
            handler.abort()
            return
        super().send_body(handler, opened, start, length, pieces)


@dataclass
class DemoResult:
    home: str
    steps: list[str] = field(default_factory=list)
    installed: str = ""
    sha256: str = ""


def run_demo(reporter: Reporter, keep: Path | None = None) -> DemoResult:
    """The demo in a temporary folder, or in ``keep``: a new or empty folder (not a link), so every
    name it writes is its own — never a file someone put there, never a link planted in it, never
    a real model cache (``--keep ~``)."""
    if keep is not None:
        from teadist.errors import UsageError

        try:
            keep.mkdir(parents=True)
        except FileExistsError:
            if keep.is_symlink() or not keep.is_dir() or any(keep.iterdir()):
                raise UsageError(f"--keep {keep} is not an empty folder: the demo writes only into a new or "
                                 "empty one", hint="name a new folder, e.g. --keep ./teadist-demo") from None
        return _demo_in(keep, reporter)
    with tempfile.TemporaryDirectory(prefix="teadist-demo-") as tmp:
        return _demo_in(Path(tmp), reporter)


def _demo_in(home: Path, reporter: Reporter) -> DemoResult:
    from teadist.cache.store import ModelCache
    from teadist.formats.gguf_info import read_info
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.fetch import FetchOptions, fetch
    from teadist.pipelines.split import split_file
    from teadist.pipelines.verify import verify_cached
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    result = DemoResult(home=str(home))

    def step(text: str) -> None:
        result.steps.append(text)
        reporter.info(f"[{len(result.steps)}] {text}")

    (home / "work").mkdir()  # a folder this run made: nothing planted in it
    model = make_tiny_model(home / "work" / "tiny-llama.gguf", n_embd=128, n_layer=4)
    step(f"made a tiny llama GGUF: {model} ({model.stat().st_size} bytes)")
    dist = home / "dist"
    split = split_file(model, dist, reporter, chunk_size=256 * 1024, name="tiny-llama")
    step(f"split it into {len(split.manifest.chunks)} chunks + {split.manifest_path.name} in {dist}")
    victim = split.manifest.chunks[len(split.manifest.chunks) // 2].name
    cut = 100_000
    with _InterruptingServer(dist, victim, cut) as server:
        url = f"{server.url}/{split.manifest_path.name}"
        step(f"serving chunks and manifest on loopback at {server.url}; the connection for "
             f"{victim} will be cut after {cut} bytes")
        cache = ModelCache(home / ".cache" / "tea" / "models")
        downloader = Downloader(reporter, RetryPolicy(backoff=0.05))
        fetched = fetch(url, cache, FetchOptions(endpoint="http://127.0.0.1:9", jobs=4), reporter, downloader)
        _expect(bool(server.resumed_with), "the interrupted chunk was not resumed")
        step(f"fetched {url}: {victim} was interrupted and resumed with Range {server.resumed_with[0]}; "
             f"the server sent {server.bytes_sent} bytes for a {fetched.size}-byte model")
    step(f"installed {fetched.path} (sha256 {fetched.sha256[:16]}…, verified)")
    report = verify_cached(cache, "tiny-llama", reporter)
    _expect(report.ok, "verification of the installed model failed")
    step("verified the cached copy against teadist's record")
    info = read_info(fetched.path)
    step(f"inspected it: {info.architecture}, {info.parameters:,} parameters, {info.quantization}, "
         f"context {info.context_length}, chat template {info.chat_template_family}")
    result.installed, result.sha256 = str(fetched.path), fetched.sha256
    return result


def _expect(condition: bool, message: str) -> None:
    if not condition:
        from teadist.errors import TeadistError

        raise TeadistError(message)
