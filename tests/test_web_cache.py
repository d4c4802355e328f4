"""The browser model cache (teadist/web/model-cache.js) in Debian's Chromium with real wllama.

Every behaviour runs on both storage back ends (OPFS, IndexedDB). The page, the module and
wllama come from an app origin that stays up (COOP/COEP, as `teadist serve` sends); models come
from a model origin on another port (CORS) that a test may stop, break or alter; a
GitHub-API-like origin serves release assets by API URL. The browser resolves no host but
127.0.0.1, and every request it makes is checked to stay there.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.tinymodel import make_tiny_model
from teadist.pipelines.gguf_split import split_gguf
from teadist.pipelines.split import split_file
from tests.servers import Fault
from tests.test_browser import CHROMIUM, FLAGS, N_PREDICT, PROMPT, WLLAMA, native_text
from tests.web_manifests import (
    TEST_BLOCK_SIZE,
    block_hashes,
    load,
    release_index,
    with_block_hashes,
    write,
)
from tests.web_servers import AppServer, GitHubAssetServer, ModelServer

pytestmark = [pytest.mark.slow, pytest.mark.tools]

WEB = Path(__file__).resolve().parents[1] / "teadist" / "web"
HARNESS = Path(__file__).parent / "browser"
LOCAL_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
SHARDS, BYTES, OTHER = "tiny-shards", "tiny-bytes", "tiny-other"
SHARD_SIZE = 700_000


@dataclass
class Release:
    """A release folder: model-manifest.json listing a GGUF-shard model with block hashes
    (tiny-shards) and a byte-chunk model without (tiny-bytes), both cut from ``original``."""

    folder: Path
    original: Path
    index: dict[str, Any]
    text: str

    def model(self, model_id: str) -> dict[str, Any]:
        return next(m for m in self.index["models"] if m["name"] == model_id)

    def chunk(self, model_id: str, n: int) -> dict[str, Any]:
        chunk = self.model(model_id)["chunks"][n]
        assert isinstance(chunk, dict)
        return chunk

    def total(self, model_id: str) -> int:
        return sum(int(c["size"]) for c in self.model(model_id)["chunks"])

    def digest(self, model_id: str, folder: Path | None = None) -> str:
        """SHA-256 of the model's chunks concatenated, as the cache's blobs must give them."""
        h = hashlib.sha256()
        for chunk in self.model(model_id)["chunks"]:
            h.update(((folder or self.folder) / chunk["name"]).read_bytes())
        return h.hexdigest()


def make_release(folder: Path, src: Path, seed: int, with_text: bool = True) -> Release:
    model = make_tiny_model(src / "tiny-web.gguf", seed=seed, n_embd=128, n_layer=4, printable_only=True)
    shards = split_gguf(model, folder, NullReporter(), shard_size=SHARD_SIZE, name=SHARDS)
    chunks = split_file(model, folder, NullReporter(), chunk_size=SHARD_SIZE, name=BYTES)
    index = release_index([with_block_hashes(shards.manifest.to_dict(), folder), chunks.manifest.to_dict()])
    (folder / "tiny-web.gguf.manifest.json").unlink()
    write(folder / "model-manifest.json", index)
    return Release(folder, model, index, native_text(model) if with_text else "")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return make_release(tmp_path_factory.mktemp("web-release"), tmp_path_factory.mktemp("web-src"), seed=11)


@pytest.fixture(scope="module")
def app() -> Iterator[AppServer]:
    assert WLLAMA.is_dir(), "run `npm ci` in tests/browser (.ci/run does)"
    assert CHROMIUM.exists(), "apt-get install chromium (.ci/run does)"
    with AppServer({"": HARNESS, "teadist": WEB, "wllama": WLLAMA}) as server:
        assert isinstance(server, AppServer)
        yield server


@pytest.fixture
def served(release: Release, tmp_path: Path) -> Path:
    """A copy of the release this test may alter."""
    folder = tmp_path / "served"
    shutil.copytree(release.folder, folder)
    return folder


@pytest.fixture
def models(served: Path) -> Iterator[ModelServer]:
    with ModelServer(served) as server:
        assert isinstance(server, ModelServer)
        yield server


@pytest.fixture(params=["opfs", "indexeddb"])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Page:
    """One page of the harness; ``run`` evaluates an async function with arguments."""

    def __init__(self, page: Any, context: Any) -> None:
        self.page = page
        self.context = context

    def run(self, script: str, *args: Any) -> Any:
        return self.page.evaluate(script, list(args))

    def leave_and_return(self, wait_ms: int) -> None:
        """Close every connection the page holds (Chromium's IndexedDB takes a new quota only on reopen)."""
        url = self.page.url
        self.page.goto("about:blank")
        self.page.wait_for_timeout(wait_ms)
        self.page.goto(url)
        self.page.wait_for_function("window.ready === true", timeout=60_000)

    def reload(self) -> None:
        self.page.reload()
        self.page.wait_for_function("window.ready === true", timeout=60_000)


@contextlib.contextmanager
def browser(profile: Path, app: AppServer, path: str = "/cache-harness.html",
            ready: str = "window.ready === true") -> Iterator[Page]:
    """A Chromium process on ``profile`` (kept between calls: a second visit sees the same storage)."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                       args=[*FLAGS, LOCAL_ONLY])
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.goto(app.url + path)
            page.wait_for_function(ready, timeout=60_000)
            yield Page(page, context)
        finally:
            context.close()
    outside = [u for u in requests if not u.startswith(("http://127.0.0.1:", "blob:", "data:"))]
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"


DOWNLOAD = """async ([manifest, storage, id, options]) => {
  const cache = await openCache(manifest, storage, options?.open ?? {});
  const events = [];
  const ctrl = new AbortController();
  if (options?.abortAfterMs) setTimeout(() => ctrl.abort(), options.abortAfterMs);
  const onProgress = (p) => events.push(p);
  try {
    const concurrency = options?.concurrency ?? 3;
    const status = await cache.download(id, { onProgress, signal: ctrl.signal, concurrency });
    return { ok: true, status, events };
  } catch (e) {
    return { ok: false, error: errorInfo(e), events, status: await cache.status(id) };
  }
}"""

GENERATE = """async ([manifest, storage, id, prompt, n]) => {
  const cache = await openCache(manifest, storage);
  const listed = await cache.list();
  const before = await cache.status(id);
  const blobs = await cache.blobs(id);
  const digest = await digestOf(blobs);
  const out = await generate(blobs, prompt, n);
  return { ...out, digest, count: blobs.length, before, after: await cache.status(id), listed,
           offline: cache.offline, problem: cache.manifestProblem };
}"""

# Download, then hand the shards to wllama: the flow of a page, counting wllama calls.
LOAD_FLOW = """async ([manifest, storage, id]) => {
  const cache = await openCache(manifest, storage);
  try {
    await cache.download(id);
    const blobs = await cache.blobs(id);
    return { ok: true, result: await generate(blobs, 'Once', 2) };
  } catch (e) {
    let blobsError = null;
    try { await cache.blobs(id); } catch (e2) { blobsError = errorInfo(e2); }
    return { ok: false, error: errorInfo(e), blobsError, status: await cache.status(id), wllamaCalls };
  }
}"""

DIGEST = "async ([m, s, id]) => digestOf(await (await openCache(m, s)).blobs(id))"

INFO = """async ([manifest, storage]) => {
  const cache = await openCache(manifest, storage);
  return { info: await cache.storageInfo(), list: await cache.list(), raw: await rawStorage(storage) };
}"""


def manifest_url(server: ModelServer) -> str:
    return f"{server.url}/model-manifest.json"


def raw_bytes(raw: dict[str, dict[str, int]]) -> int:
    return sum(sum(files.values()) for files in raw.values())


def check_progress(events: list[dict[str, Any]], total: int) -> None:
    keys = {"phase", "progress", "loadedBytes", "totalBytes", "text", "timeElapsed", "timeRemaining"}
    assert events and all(set(e) == keys for e in events), events[:2]
    assert events[0]["phase"] == "verifying" and events[-1]["phase"] == "ready"
    assert {e["phase"] for e in events} <= {"verifying", "downloading", "ready"}
    assert events[-1]["progress"] == 1 and events[-1]["loadedBytes"] == total and events[-1]["timeRemaining"] == 0
    loaded = [e["loadedBytes"] for e in events]
    assert loaded == sorted(loaded), "progress went backwards on a clean download"
    assert all(e["totalBytes"] == total and 0 <= e["progress"] <= 1 for e in events)
    assert all(isinstance(e["timeElapsed"], (int, float)) and e["text"] for e in events)


# -- first visit, then offline ---------------------------------------------------------------------
def test_first_visit_downloads_and_wllama_matches_llama_cpp_then_offline_visit(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    url = manifest_url(models)
    with browser(profile, app) as page:
        first: dict[str, Any] = {}
        for model_id in (SHARDS, BYTES):
            done = page.run(DOWNLOAD, url, storage, model_id)
            assert done["ok"], done.get("error")
            check_progress(done["events"], release.total(model_id))
            first[model_id] = page.run(GENERATE, url, storage, model_id, PROMPT, N_PREDICT)
        info = page.run(INFO, url, storage)
    for model_id, count in ((SHARDS, len(release.model(SHARDS)["chunks"])), (BYTES, 1)):
        got = first[model_id]
        assert got["isolated"] is True and got["offline"] is False
        assert got["count"] == count  # GGUF shards one Blob each; byte chunks as one Blob
        assert got["digest"] == release.digest(model_id)
        assert got["tokens"] == N_PREDICT and got["text"] == release.text, (model_id, got["text"], release.text)
        assert got["before"]["downloaded"] is True and got["before"]["partialBytes"] == release.total(model_id)
        assert got["after"]["lastUsed"] > got["before"]["lastUsed"]
    assert first[BYTES]["digest"] == hashlib.sha256(release.original.read_bytes()).hexdigest()
    stored = {m["id"]: m for m in info["info"]["models"]}
    assert {k: v["size"] for k, v in stored.items()} == {SHARDS: release.total(SHARDS), BYTES: release.total(BYTES)}
    assert info["info"]["used"] == release.total(SHARDS) + release.total(BYTES) == raw_bytes(info["raw"])
    assert [m["cached"] for m in info["list"]] == [True, True]

    models.stop()  # the model origin is gone; the app origin stays up
    seen = len(models.log.sent)
    with browser(profile, app) as page:
        second = {model_id: page.run(GENERATE, url, storage, model_id, PROMPT, N_PREDICT)
                  for model_id in (SHARDS, BYTES)}
    assert len(models.log.sent) == seen
    for model_id in (SHARDS, BYTES):
        got = second[model_id]
        assert got["offline"] is True and "cannot fetch" in got["problem"]
        assert [m["cached"] for m in got["listed"]] == [True, True]
        assert got["digest"] == release.digest(model_id)
        assert got["text"] == release.text and got["tokens"] == N_PREDICT
        assert got["after"]["lastUsed"] > first[model_id]["after"]["lastUsed"]
        assert got["before"]["verifiedAt"] == first[model_id]["before"]["verifiedAt"]


MANIFEST_STATE = """async ([manifest, storage]) => {
  try {
    const cache = await openCache(manifest, storage);
    return { offline: cache.offline, problem: cache.manifestProblem, list: await cache.list() };
  } catch (e) { return { error: errorInfo(e) }; }
}"""


def test_an_unusable_manifest_falls_back_to_the_copy_from_the_last_visit(
        app: AppServer, models: ModelServer, served: Path, storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        fresh = page.run(MANIFEST_STATE, url, storage)
        (served / "model-manifest.json").write_text("<html>Sign in to the hotel Wi-Fi</html>")
        portal = page.run(MANIFEST_STATE, url, storage)
        (served / "model-manifest.json").unlink()
        gone = page.run(MANIFEST_STATE, url, storage)
        never = page.run(MANIFEST_STATE, f"{models.url}/other/model-manifest.json", storage)
        (served / "broken.json").write_text('{"schema_version": "1.0", "name": "../x"}')
        broken = page.run(MANIFEST_STATE, f"{models.url}/broken.json", storage)
    assert fresh["offline"] is False and fresh["problem"] is None and len(fresh["list"]) == 2
    assert portal["offline"] is True and "not valid JSON" in portal["problem"] and portal["list"] == fresh["list"]
    assert gone["offline"] is True and gone["problem"] == f"HTTP 404 from {url}" and gone["list"] == fresh["list"]
    assert never["error"]["code"] == "source" and "no copy of it is kept" in never["error"]["message"]
    assert "HTTP 404" in never["error"]["message"]
    assert broken["error"]["name"] == "ManifestError" and "manifest.name" in broken["error"]["message"]


def test_two_tabs_share_one_download_and_a_model_in_use_is_not_deleted(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    stalled = release.chunk(SHARDS, 1)["name"]
    models.add_fault(Fault("stall", after=100_000, seconds=4, path=stalled))
    start = """([m, s, id]) => { window.running = openCache(m, s, { stallTimeout: 10000 })
        .then((c) => c.download(id)).then(() => 'ok', (e) => errorInfo(e)); }"""
    with browser(tmp_path / "profile", app) as first:
        second = Page(first.context.new_page(), first.context)
        asked: list[str] = []
        second.page.on("request", lambda r: asked.append(r.url))
        second.page.goto(first.page.url)
        second.page.wait_for_function("window.ready === true")
        first.run(start, url, storage, SHARDS)
        wait_until(lambda: models.log.for_path(stalled), "the first tab's download")  # it holds the lock now
        busy = second.run("async ([m, s, id]) => { try { await (await openCache(m, s)).delete(id); return null; }"
                          " catch (e) { return errorInfo(e); } }", url, storage, SHARDS)
        joined = second.run(DOWNLOAD, url, storage, SHARDS)  # waits for the first tab, then finds it done
        first_result = first.run("() => window.running")
        digest = second.run(DIGEST, url, storage, SHARDS)
    assert busy is not None and busy["code"] == "busy" and "being downloaded" in busy["message"]
    assert first_result == "ok" and joined["ok"] and digest == release.digest(SHARDS)
    assert [e["phase"] for e in joined["events"]] == ["ready"]
    assert [u for u in asked if u.startswith(models.url) and not u.endswith("/model-manifest.json")] == []
    for n, chunk in enumerate(release.model(SHARDS)["chunks"]):  # the first tab's download, nothing more
        sent = sum(e.sent for e in models.log.for_path(chunk["name"]))
        assert sent == (chunk["size"] if n != 1 else 100_000 + chunk["size"] - TEST_BLOCK_SIZE), chunk["name"]


# -- resume ----------------------------------------------------------------------------------------
def test_a_dropped_connection_resumes_after_a_reload_from_the_last_verified_block(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    cases = {SHARDS: release.chunk(SHARDS, 1), BYTES: release.chunk(BYTES, 1)}
    cut = 200_000  # the server hangs up inside the fourth 64 KiB block
    for chunk in cases.values():
        # Send, wait, hang up: the client provably received every byte sent before the cut.
        models.add_fault(Fault("stall", after=cut, seconds=0.5, path=chunk["name"]))
        models.add_fault(Fault("status", status=503, times=100, path=chunk["name"]))  # then it stays broken
    options = {"open": {"pieceSize": TEST_BLOCK_SIZE}}  # tiny-bytes has no block hashes: 64 KiB pieces
    with browser(tmp_path / "profile", app) as page:
        broken = {model_id: page.run(DOWNLOAD, url, storage, model_id, options) for model_id in cases}
        session1 = len(models.log.sent)
        models.faults.clear()
        page.reload()
        resumed = {model_id: page.run(DOWNLOAD, url, storage, model_id, options) for model_id in cases}
        digests = {model_id: page.run(DIGEST,
                                      url, storage, model_id) for model_id in cases}
    for model_id, chunk in cases.items():
        name, size = chunk["name"], chunk["size"]
        first = models.log.for_path(name)[:1][0]
        assert first.sent == cut, "the fault did not cut the transfer"  # the server's own record
        failed = broken[model_id]
        assert not failed["ok"] and failed["error"]["name"] == "SourceError", failed["error"]
        assert f"{models.url}/{name}" in failed["error"]["message"] and "HTTP 503" in failed["error"]["message"]
        kept = failed["status"]["shards"][1]["storedBytes"]
        assert kept == cut // TEST_BLOCK_SIZE * TEST_BLOCK_SIZE  # every whole block received was kept
        assert resumed[model_id]["ok"], resumed[model_id].get("error")
        assert digests[model_id] == release.digest(model_id)
        after = [e for e in models.log.sent[session1:] if e.path.endswith(name) and e.method == "GET"]
        assert [e.range for e in after] == [f"bytes={kept}-{size - 1}"]
        sent_again = sum(e.sent for e in after) - (size - cut)
        assert 0 <= sent_again <= TEST_BLOCK_SIZE, sent_again
        # The shards the failure stopped midway also resumed exactly where their verified part ended.
        for n, shard in enumerate(failed["status"]["shards"]):
            later = [e.range for e in models.log.sent[session1:]
                     if e.path.endswith(shard["name"]) and e.method == "GET"]
            if shard["verified"]:
                assert later == []
            else:
                resumed_at = shard["storedBytes"]
                assert later == ([f"bytes={resumed_at}-{shard['size'] - 1}"] if resumed_at else [None]), n


def wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


START = """([m, s, id, open]) => {
  window.ctrl = new AbortController();
  window.running = openCache(m, s, open ?? {})
    .then((c) => c.download(id, { signal: window.ctrl.signal, concurrency: 1 }))
    .then(() => 'ok', (e) => errorInfo(e));
}"""
STORED = "async ([m, s, id, open]) => (await (await openCache(m, s, open)).status(id)).shards.map((x) => x.storedBytes)"


def test_an_aborted_download_keeps_its_verified_part(app: AppServer, models: ModelServer, release: Release,
                                                     storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    total = release.total(BYTES)
    second = release.chunk(BYTES, 1)
    small = {"pieceSize": TEST_BLOCK_SIZE}
    # The second chunk stalls after 100 000 bytes: the abort finds chunk 1 done and one 64 KiB piece of chunk 2.
    models.add_fault(Fault("stall", after=100_000, seconds=10, path=second["name"]))
    with browser(tmp_path / "profile", app) as page:
        page.run(START, url, storage, BYTES, small)
        wait_until(lambda: page.run(STORED, url, storage, BYTES, small)[:2] == [SHARD_SIZE, TEST_BLOCK_SIZE],
                   "the first piece of the stalled chunk")
        page.run("() => window.ctrl.abort()")
        aborted = page.run("() => window.running")
        status = page.run("async ([m, s, id, o]) => (await openCache(m, s, o)).status(id)", url, storage, BYTES, small)
        raw = page.run("async ([s]) => rawStorage(s)", storage)
        session1 = len(models.log.sent)
        done = page.run(DOWNLOAD, url, storage, BYTES, {"open": small})
        digest = page.run(DIGEST, url, storage, BYTES)
    assert models.log.for_path(second["name"])[0].sent == 100_000
    assert aborted["name"] == "AbortError", aborted
    kept = status["partialBytes"]
    assert [s["storedBytes"] for s in status["shards"]] == [SHARD_SIZE, TEST_BLOCK_SIZE, 0, 0]
    assert kept == SHARD_SIZE + TEST_BLOCK_SIZE == raw_bytes(raw)
    assert done["ok"] and digest == release.digest(BYTES)
    later = [e for e in models.log.sent[session1:] if e.method == "GET" and e.path != "/model-manifest.json"]
    assert [e.range for e in later if e.path.endswith(second["name"])] == [
        f"bytes={TEST_BLOCK_SIZE}-{second['size'] - 1}"]
    assert sum(e.sent for e in later) == total - kept  # nothing verified was fetched twice


def test_a_stalled_transfer_is_abandoned_and_resumed(app: AppServer, models: ModelServer, release: Release,
                                                     storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    second = release.chunk(SHARDS, 1)
    # The server goes silent for a minute after 100 000 bytes, keeping the connection open.
    models.add_fault(Fault("stall", after=100_000, seconds=60, path=second["name"]))
    with browser(tmp_path / "profile", app) as page:
        started = time.monotonic()
        done = page.run(DOWNLOAD, url, storage, SHARDS, {"open": {"stallTimeout": 2000}})
        elapsed = time.monotonic() - started
        digest = page.run(DIGEST, url, storage, SHARDS)
    assert done["ok"], done.get("error")
    assert elapsed < 20, f"a silent server held the download for {elapsed:.0f} s"
    assert digest == release.digest(SHARDS)
    tries = models.log.for_path(second["name"])
    assert tries[0].sent == 100_000 and tries[1].range == f"bytes={TEST_BLOCK_SIZE}-{second['size'] - 1}"
    assert sum(e.sent for e in tries[1:]) >= second["size"] - TEST_BLOCK_SIZE  # resumed after the one block


# -- integrity -------------------------------------------------------------------------------------
def test_an_altered_shard_is_refused_with_its_name_and_nothing_of_it_is_cached(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    flipped = 100_000  # inside the second 64 KiB block
    for model_id in (SHARDS, BYTES):
        victim = served / release.chunk(model_id, 1)["name"]
        raw = bytearray(victim.read_bytes())
        raw[flipped] ^= 0x01
        victim.write_bytes(bytes(raw))
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        results = {model_id: page.run(LOAD_FLOW, url, storage, model_id) for model_id in (SHARDS, BYTES)}
        raw = page.run("async ([s]) => rawStorage(s)", storage)
        info = page.run(INFO, url, storage)["info"]
    keys = {m["id"]: m["key"] for m in info["models"]}
    for model_id, (start, end) in ((SHARDS, (65_536, 131_071)), (BYTES, (0, SHARD_SIZE - 1))):
        name = release.chunk(model_id, 1)["name"]
        got = results[model_id]
        assert not got["ok"] and got["wllamaCalls"] == 0  # wllama never saw a byte of it
        error = got["error"]
        assert error["name"] == "IntegrityError" and error["shard"] == name, error
        assert (error["start"], error["end"]) == (start, end)
        assert name in error["message"] and f"bytes {start}-{end}" in error["message"]
        assert error["url"] == f"{models.url}/{name}"
        assert got["blobsError"]["code"] == "not-downloaded"
        assert got["status"]["downloaded"] is False and got["status"]["shards"][1]["storedBytes"] == 0
        pieces = raw.get(keys[model_id], {})
        assert not [p for p in pieces if p.startswith("1.")], pieces  # nothing of the shard is stored


def test_a_changed_manifest_sha256_is_a_new_version_and_stale_shards_are_not_used(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        assert page.run(DOWNLOAD, url, storage, SHARDS)["ok"]
        old = page.run(INFO, url, storage)
        # A new release: same names and sizes, other bytes (what a size-only cache would confuse).
        new_folder = tmp_path / "new"
        new_folder.mkdir()
        new = make_release(new_folder, tmp_path_factory.mktemp("web-src-new"), seed=12, with_text=False)
        for chunk in new.model(SHARDS)["chunks"]:
            old_chunk = next(c for c in release.model(SHARDS)["chunks"] if c["name"] == chunk["name"])
            assert old_chunk["size"] == chunk["size"] and old_chunk["sha256"] != chunk["sha256"]
            shutil.copy(new_folder / chunk["name"], served / chunk["name"])
        shutil.copy(new_folder / "model-manifest.json", served / "model-manifest.json")
        page.reload()
        no_download = LOAD_FLOW.replace("await cache.download(id);", "throw new Error('skip');")
        stale = page.run(no_download, url, storage, SHARDS)
        seen = len(models.log.sent)
        done = page.run(DOWNLOAD, url, storage, SHARDS)
        digest = page.run(DIGEST, url, storage, SHARDS)
        after = page.run(INFO, url, storage)
    old_key = old["info"]["models"][0]["key"]
    assert stale["status"]["downloaded"] is False and stale["status"]["partialBytes"] == 0
    assert stale["blobsError"]["code"] == "not-downloaded" and stale["wllamaCalls"] == 0
    assert done["ok"], done.get("error")
    fetched = [e for e in models.log.sent[seen:] if e.method == "GET" and e.path != "/model-manifest.json"]
    assert sorted((e.path.lstrip("/"), e.range, e.sent) for e in fetched) == sorted(
        (c["name"], None, c["size"]) for c in new.model(SHARDS)["chunks"])  # every shard fetched whole again
    assert digest == new.digest(SHARDS) != release.digest(SHARDS)
    assert old_key in old["raw"] and old_key not in after["raw"]  # the stale version is gone
    assert [m["key"] for m in after["info"]["models"]] != [old_key]


def test_a_piece_lost_by_the_browser_is_noticed_and_only_its_shard_fetched_again(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        assert page.run(DOWNLOAD, url, storage, SHARDS)["ok"]
        key = page.run(INFO, url, storage)["info"]["models"][0]["key"]
        page.run("async ([s, k, n]) => damage(s, k, n)", storage, key, "2.0")  # shard 3, its one 8 MiB piece
        lost = page.run(LOAD_FLOW.replace("await cache.download(id);", ""), url, storage, SHARDS)
        seen = len(models.log.sent)
        again = page.run(DOWNLOAD, url, storage, SHARDS)
        digest = page.run(DIGEST, url, storage, SHARDS)
    name = release.chunk(SHARDS, 2)["name"]
    assert not lost["ok"] and lost["error"]["code"] == "not-downloaded" and lost["wllamaCalls"] == 0
    assert f'lost part of shard "{name}"' in lost["error"]["message"]
    assert lost["status"]["downloaded"] is False and lost["status"]["shards"][2]["storedBytes"] == 0
    assert again["ok"] and digest == release.digest(SHARDS)
    fetched = [(e.path.lstrip("/"), e.range) for e in models.log.sent[seen:] if e.path != "/model-manifest.json"]
    assert fetched == [(name, None)]


# -- quota -----------------------------------------------------------------------------------------
def test_quota_lru_eviction_storage_info_and_a_model_that_cannot_fit(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    other_src = make_tiny_model(tmp_path / "src" / "tiny-other.gguf", seed=12, n_embd=128, n_layer=4,
                                printable_only=True)
    other = split_gguf(other_src, served, NullReporter(), shard_size=SHARD_SIZE, name=OTHER).manifest.to_dict()
    huge_shard = 1_900_000_000  # six of them: more than the 10 GiB Chromium's estimate() offers here
    huge = {"schema_version": "1.0", "name": "huge", "format": "gguf", "rebuild": {},
            "file": {"name": "huge.gguf", "size": 6 * huge_shard, "sha256": "a" * 64},
            "chunks": [{"name": f"huge-0000{i}-of-00006.gguf", "size": huge_shard, "sha256": "b" * 64}
                       for i in range(1, 7)]}
    index = load(served / "model-manifest.json")
    index["models"] += [with_block_hashes(other, served), huge]
    write(served / "model-manifest.json", index)
    sizes = {SHARDS: release.total(SHARDS), BYTES: release.total(BYTES),
             OTHER: sum(int(c["size"]) for c in other["chunks"])}
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        for model_id in (SHARDS, OTHER):
            assert page.run(DOWNLOAD, url, storage, model_id)["ok"]
        # The browser's real quota (a DevTools override: enforced on writes, but estimate() does not
        # show it) runs out in the middle of a download: a QuotaError, the verified part stays.
        usage = page.run("async () => (await navigator.storage.estimate()).usage")
        cdp = page.context.new_cdp_session(page.page)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": app.url, "quotaSize": usage + sizes[BYTES] // 2})
        page.leave_and_return(3500)
        full_disk = page.run(DOWNLOAD, url, storage, BYTES, {"concurrency": 1})
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": app.url})
        seen = len(models.log.sent)
        resumed = page.run(DOWNLOAD, url, storage, BYTES)
        resent = sum(e.sent for e in models.log.sent[seen:] if e.path != "/model-manifest.json")
        digest = page.run(DIGEST, url, storage, BYTES)
        page.run("async ([m, s, id]) => (await openCache(m, s)).blobs(id)", url, storage, SHARDS)  # used last
        full = page.run(INFO, url, storage)
        target = full["info"]["used"] - 1
        evicted = page.run("async ([m, s, t]) => (await openCache(m, s)).evictLeastRecentlyUsed(t)",
                           url, storage, target)
        after = page.run(INFO, url, storage)
        seen = len(models.log.sent)
        refused = page.run(DOWNLOAD, url, storage, "huge")
        unchanged = page.run(INFO, url, storage)
        requested = [e.path for e in models.log.sent[seen:] if e.path != "/model-manifest.json"]
        deleted = page.run("async ([m, s]) => { const c = await openCache(m, s); return [await c.delete('tiny-shards'),"
                           " await c.delete('no-such-model'), (await c.status('tiny-shards')).downloaded]; }",
                           url, storage)
        after_delete = page.run(INFO, url, storage)
        page.run("async ([m, s]) => (await openCache(m, s)).clear()", url, storage)
        cleared = page.run(INFO, url, storage)
    error = full_disk["error"]
    assert not full_disk["ok"] and error["name"] == "QuotaError" and "storage is full" in error["message"], error
    kept = full_disk["status"]["partialBytes"]
    assert 0 < kept < sizes[BYTES] and error["neededBytes"] == sizes[BYTES] - kept
    assert [c["id"] for c in error["candidates"]] == [SHARDS, OTHER]
    assert resumed["ok"] and digest == release.digest(BYTES) and resent == sizes[BYTES] - kept
    info = full["info"]
    assert [m["id"] for m in info["models"]] == [OTHER, BYTES, SHARDS]  # least recently used first
    assert {m["id"]: m["size"] for m in info["models"]} == sizes
    assert info["used"] == sum(sizes.values()) == raw_bytes(full["raw"])
    assert info["quota"] > 0 and 0 <= info["available"] <= info["quota"]
    assert [m["id"] for m in evicted["evicted"]] == [OTHER] and evicted["used"] == sizes[SHARDS] + sizes[BYTES]
    assert [m["id"] for m in after["info"]["models"]] == [BYTES, SHARDS]
    assert after["info"]["used"] == raw_bytes(after["raw"]) == sizes[SHARDS] + sizes[BYTES]
    assert [m["cached"] for m in after["list"]] == [True, True, False, False]
    error = refused["error"]
    assert not refused["ok"] and error["name"] == "QuotaError", error
    assert error["neededBytes"] == 6 * huge_shard and f"({6 * huge_shard} bytes)" in error["message"]
    assert error["availableBytes"] < 6 * huge_shard and "nothing was written" in error["message"]
    assert [c["id"] for c in error["candidates"]] == [BYTES, SHARDS]
    assert error["message"].index(BYTES) < error["message"].index(SHARDS) and "evictLeastRecentlyUsed" in error["hint"]
    assert unchanged["raw"] == after["raw"] and unchanged["info"]["models"] == after["info"]["models"]
    assert refused["status"]["partialBytes"] == 0 and requested == []
    assert deleted == [True, False, False]
    assert [m["id"] for m in after_delete["info"]["models"]] == [BYTES] and len(after_delete["raw"]) == 1
    assert cleared["info"]["used"] == 0 and cleared["info"]["models"] == [] and cleared["raw"] == {}
    assert [m["cached"] for m in cleared["list"]] == [False] * 4 and len(cleared["list"]) == 4  # the manifest stays


def test_a_byte_chunk_model_over_2_gib_is_refused_before_any_download(
        app: AppServer, models: ModelServer, served: Path, storage: str, tmp_path: Path) -> None:
    half = 3 * 2**29  # two 1.5 GiB chunks
    big = {"schema_version": "1.0", "name": "big-bytes", "format": "bytes",
           "file": {"name": "big.gguf", "size": 2 * half, "sha256": "a" * 64},
           "chunks": [{"name": f"big.gguf.part-0000{i + 1}-of-00002", "offset": i * half, "size": half,
                       "sha256": "b" * 64} for i in range(2)]}
    shards = {**big, "name": "big-shard", "format": "gguf", "rebuild": {},
              "chunks": [{"name": "big-00001-of-00001.gguf", "size": 2**31, "sha256": "c" * 64}]}
    index = load(served / "model-manifest.json")
    index["models"] += [big, shards]
    write(served / "model-manifest.json", index)
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        results = {model_id: page.run(LOAD_FLOW, url, storage, model_id) for model_id in ("big-bytes", "big-shard")}
        raw = page.run("async ([s]) => rawStorage(s)", storage)
    for got in results.values():
        assert not got["ok"] and got["error"]["code"] == "too-large" and got["wllamaCalls"] == 0
    too_big = results["big-bytes"]["error"]
    assert "GGUF shards" in too_big["hint"] and "2 GiB" in too_big["message"]
    assert "big-00001-of-00001.gguf" in results["big-shard"]["error"]["message"]
    assert raw == {} and [e.path for e in models.log.sent if "big" in e.path] == []


# -- sources ---------------------------------------------------------------------------------------
def test_shards_come_through_listed_api_asset_urls_when_no_same_origin_copy_exists(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    chunks = release.model(SHARDS)["chunks"]
    with GitHubAssetServer() as github:
        assert isinstance(github, GitHubAssetServer)
        index = load(served / "model-manifest.json")
        for chunk in index["models"][0]["chunks"]:
            # What `release prepare` records (no CORS: useless in a browser), then the API asset URL.
            chunk["urls"] = [f"https://github.com/tea/tea/releases/download/v0.0.1-test/{chunk['name']}",
                             github.add_asset_file("v0.0.1-test", release.folder / chunk["name"])]
        write(served / "model-manifest.json", index)
        missing = {chunks[1]["name"], chunks[3]["name"]}  # the self-hosted copy lacks two shards
        for name in missing:
            (served / name).unlink()
        url = manifest_url(models)
        with browser(tmp_path / "profile", app) as page:
            done = page.run(DOWNLOAD, url, storage, SHARDS)
            got = page.run(GENERATE, url, storage, SHARDS, PROMPT, N_PREDICT)
        api = [e for e in github.log.sent if e.method == "GET"]
    assert done["ok"], done.get("error")
    assert got["digest"] == release.digest(SHARDS) and got["text"] == release.text
    same_origin = {e.path.lstrip("/"): e.status for e in models.log.sent if e.method == "GET"}
    assert all(same_origin[c["name"]] == (404 if c["name"] in missing else 200) for c in chunks)
    asset_calls = [e for e in api if "/releases/assets/" in e.path]
    assert len(asset_calls) == 2
    assert all(e.status == 302 and e.accept == "application/octet-stream" for e in asset_calls)
    downloads = [e for e in api if e.path.startswith("/storage/")]
    assert sorted(e.path.rsplit("/", 1)[1] for e in downloads) == sorted(missing)
    assert all(e.status == 200 and e.sent == next(c["size"] for c in chunks if e.path.endswith(c["name"]))
               for e in downloads)


def test_a_single_file_manifest_loads_from_its_folder_or_its_url_sources(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    original = release.original.read_bytes()
    single = {"schema_version": "1.1", "name": "tiny-single", "format": "single",
              "file": {"name": "tiny-web.gguf", "size": len(original), "sha256": hashlib.sha256(original).hexdigest(),
                       "block_size": TEST_BLOCK_SIZE, "blocks": block_hashes(release.original, TEST_BLOCK_SIZE)}}
    elsewhere = tmp_path / "mirror"
    elsewhere.mkdir()
    shutil.copy(release.original, elsewhere / "tiny-web.gguf")
    with ModelServer(elsewhere) as mirror:
        assert isinstance(mirror, ModelServer)
        write(served / "here.json", single)  # the file beside it is missing: the listed URL serves it
        write(served / "there.json", {**single, "sources": [{"type": "url", "url": f"{mirror.url}/tiny-web.gguf"}]})
        with browser(tmp_path / "profile", app) as page:
            missing = page.run(DOWNLOAD, f"{models.url}/here.json", storage, "tiny-single")
            done = page.run(DOWNLOAD, f"{models.url}/there.json", storage, "tiny-single")
            got = page.run(GENERATE, f"{models.url}/there.json", storage, "tiny-single", PROMPT, N_PREDICT)
        served_by_mirror = [(e.path, e.status, e.sent) for e in mirror.log.sent if e.method == "GET"]
    assert not missing["ok"] and missing["error"]["name"] == "SourceError"
    assert f"{models.url}/tiny-web.gguf: HTTP 404" in missing["error"]["message"]
    assert done["ok"], done.get("error")
    assert got["count"] == 1 and got["digest"] == hashlib.sha256(original).hexdigest()
    assert got["text"] == release.text
    assert served_by_mirror == [("/tiny-web.gguf", 200, len(original))]


# -- the module's own pieces, in the browser ------------------------------------------------------
UNIT = "async () => (await import('/cache-unit.js')).default()"


def test_streaming_sha256_and_manifest_checks_in_the_browser(app: AppServer, tmp_path: Path) -> None:
    with browser(tmp_path / "profile", app) as page:
        out = page.run(UNIT)
    assert out["vectors"] == {  # FIPS 180-2 appendix B and the NIST long-message vector
        "empty": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "448 bits": "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        "896 bits": "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
        "million": "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    }
    assert all(ok for _, ok in out["random"]), out["random"]
    assert out["resumed"] is True
    assert "64-byte boundary" in out["saveMidBlock"] and "not a saved state" in out["badRestore"]
    assert all(v is not None and v[0] == "ManifestError" for v in out["rejected"].values()), out["rejected"]
    messages = {k: v[1] for k, v in out["rejected"].items()}
    assert "chunks[0].name" in messages["traversal"] and "path separator" in messages["traversal"]
    assert "2 hashes" not in messages["blockCount"] and "1 hashes" in messages["blockCount"]
    assert "schema_version 1.1" in messages["blocksIn10"] and "major version 2" in messages["major2"]
    assert "pinned" in messages["unpinned"] and "offset" in messages["gap"] and "add up" in messages["sum"]
    assert "revision" in messages["hfDotRevision"]
    assert out["sources"] == ["https://host.test/rel/m-00001-of-00001.gguf",
                              "https://api.github.com/repos/o/r/releases/assets/1"]
    assert out["skipped"] == ["https://github.com/o/r/releases/download/v1/m-00001-of-00001.gguf"]
    assert out["layout"] == {"blockSize": 65536, "blocks": ["c" * 64, "d" * 64]}
    assert out["hfSources"] == ["https://host.test/x/h%20h.gguf",
                                "https://huggingface.co/org/repo/resolve/abc/sub/h%20h.gguf"]
    # What the module exports is what its hand-written .d.ts declares, and no more.
    dts = (WEB / "model-cache.d.ts").read_text()
    declared = set(re.findall(r"^export declare (?:class|function|const) (\w+)", dts, re.M))
    assert set(out["exports"]) == declared
    body = dts[dts.index("export declare class ModelCache {"):]
    body = body[:body.index("\n}\n")]
    assert set(out["methods"]) == set(re.findall(r"^  (\w+)\(", body, re.M))
    assert out["statics"] == re.findall(r"^  static (\w+)\(", body, re.M) == ["open"]


def test_the_example_page_downloads_shows_storage_and_generates(
        app: AppServer, models: ModelServer, release: Release, tmp_path: Path) -> None:
    from urllib.parse import quote

    path = f"/teadist/examples/index.html?manifest={quote(manifest_url(models))}&wllama=/wllama/&storage=indexeddb"
    with browser(tmp_path / "profile", app, path=path, ready="document.body.dataset.state === 'idle'") as page:
        ui = page.page
        assert ui.locator("#model option").all_inner_texts()[:2] == [
            f"{SHARDS} — tiny-web.gguf, 2.0 MiB, gguf", f"{BYTES} — tiny-web.gguf, 2.0 MiB, bytes"]
        ui.select_option("#model", SHARDS)
        ui.click("#download")
        ui.wait_for_function("document.body.dataset.state === 'idle'", timeout=60_000)
        status = ui.inner_text("#model-status")
        storage_line = ui.inner_text("#storage-line")
        bar = ui.eval_on_selector("#bar", "b => b.value")
        ui.fill("#tokens", str(N_PREDICT))
        ui.click("#generate")
        ui.wait_for_function("document.body.dataset.state === 'idle' || document.body.dataset.state === 'error'",
                             timeout=60_000)
        output, error = ui.inner_text("#output"), ui.inner_text("#error")
    assert error == "" and output == release.text
    assert status.startswith("cached and verified, 2.0 MiB") and bar == 1
    assert storage_line.startswith("Cache: 2.0 MiB in 1 model(s); site quota ")


