"""The browser model cache under attack: hostile manifests, mirrors, storage and links.

Each test states what must hold when someone works against the cache (a manifest whose block
hashes vouch for altered bytes, a server that never finishes, another tab evicting, an edited
stored piece, a link that points the example page at another origin's script…), in Debian's
Chromium on both storage back ends, with the same fixtures as tests/test_web_cache.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from tests import test_web_cache as web
from tests.servers import Fault
from tests.test_browser import WLLAMA
from tests.test_web_cache import BYTES, DIGEST, DOWNLOAD, INFO, SHARDS, Release, browser, manifest_url
from tests.web_manifests import TEST_BLOCK_SIZE, block_hashes, load, write
from tests.web_servers import CORS_HEADERS, AppServer, ModelServer

# The fixtures of tests/test_web_cache.py: the same release, app origin, model origin, both back ends.
app, models, release, served, storage = web.app, web.models, web.release, web.served, web.storage

def _flip(path: Path, at: int) -> bytes:
    good = path.read_bytes()
    bad = bytearray(good)
    bad[at] ^= 0x01
    path.write_bytes(bytes(bad))
    return good


def _model(index: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in index["models"] if m["name"] == name)  # type: ignore[no-any-return]


def _keys(page: Any, url: str, storage: str) -> dict[str, str]:
    return {m["id"]: m["key"] for m in page.run(INFO, url, storage)["info"]["models"]}


# -- a shard's own sha256 always decides ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.tools
def test_block_hashes_that_disagree_with_the_shard_sha256_are_not_enough(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    """The manifest vouches for chunk.sha256; a shard whose bytes hash to something else is refused
    even when a (rewritten) block list matches them."""
    chunk = release.chunk(SHARDS, 1)
    victim = served / chunk["name"]
    _flip(victim, 100_000)
    index = load(served / "model-manifest.json")
    _model(index, SHARDS)["chunks"][1]["blocks"] = block_hashes(victim, TEST_BLOCK_SIZE)  # sha256 as published
    write(served / "model-manifest.json", index)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() != chunk["sha256"]
    with browser(tmp_path / "profile", app) as page:
        done = page.run(DOWNLOAD, manifest_url(models), storage, SHARDS)
        raw = page.run("async ([s]) => rawStorage(s)", storage)
    assert not done["ok"], "cached as verified: bytes whose sha256 is not the manifest's"
    error = done["error"]
    assert error["name"] == "IntegrityError" and error["shard"] == chunk["name"], error
    assert (error["start"], error["end"]) == (0, chunk["size"] - 1) and "whole shard" in error["message"]
    assert done["status"]["shards"][1]["storedBytes"] == 0 and done["status"]["downloaded"] is False
    assert not [p for pieces in raw.values() for p in pieces if p.startswith("1.")], raw  # nothing of it kept


@pytest.mark.slow
@pytest.mark.tools
def test_a_corrected_manifest_never_gets_bytes_verified_against_other_block_hashes(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    """Visit 1 sees a manifest whose block hashes describe altered bytes (sha256 unchanged); visit 2 the
    genuine one. The version key covers the block maps, so nothing of visit 1 passes for visit 2's."""
    chunk = release.chunk(SHARDS, 1)
    victim = served / chunk["name"]
    good_manifest = (served / "model-manifest.json").read_text()
    good = _flip(victim, 100_000)
    index = load(served / "model-manifest.json")
    _model(index, SHARDS)["chunks"][1]["blocks"] = block_hashes(victim, TEST_BLOCK_SIZE)
    write(served / "model-manifest.json", index)
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        first = page.run(DOWNLOAD, url, storage, SHARDS)
        first_key = _keys(page, url, storage)[SHARDS]
        victim.write_bytes(good)  # the mirror is fixed
        (served / "model-manifest.json").write_text(good_manifest)
        page.reload()
        second = page.run(DOWNLOAD, url, storage, SHARDS)
        digest = page.run(DIGEST, url, storage, SHARDS)
        second_key = _keys(page, url, storage)[SHARDS]
    assert not first["ok"]
    assert second["ok"] and digest == release.digest(SHARDS), (
        f"the genuine manifest's model is served with bytes it does not vouch for (phases "
        f"{[e['phase'] for e in second.get('events', [])]})")
    assert first_key != second_key, "the version key ignores the block hashes"


@pytest.mark.slow
@pytest.mark.tools
def test_a_byte_chunk_model_whose_file_sha256_disagrees_with_its_chunks_is_refused(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    """Every chunk matches its own sha256, but the joined chunks are not the file the manifest names."""
    index = load(served / "model-manifest.json")
    _model(index, BYTES)["file"]["sha256"] = hashlib.sha256(b"another file").hexdigest()
    write(served / "model-manifest.json", index)
    with browser(tmp_path / "profile", app) as page:
        done = page.run(DOWNLOAD, manifest_url(models), storage, BYTES)
        blobs = page.run("async ([m, s, id]) => { try { await (await openCache(m, s)).blobs(id); return null; }"
                         " catch (e) { return errorInfo(e); } }", manifest_url(models), storage, BYTES)
    assert not done["ok"] and done["error"]["name"] == "IntegrityError", done.get("error")
    assert "file.sha256" in done["error"]["message"] or "joined chunks" in done["error"]["message"]
    assert done["status"]["downloaded"] is False and blobs is not None and blobs["code"] == "not-downloaded"


# -- the manifest request is bounded ----------------------------------------------------------------
OPEN_BOUNDED = """async ([m, s, ms]) => {
  const t0 = performance.now();
  const timer = new Promise((res) => setTimeout(() => res('HUNG'), ms));
  const opened = openCache(m, s, { stallTimeout: 2000 })
    .then((c) => ({ offline: c.offline, problem: c.manifestProblem }), (e) => errorInfo(e));
  const got = await Promise.race([opened, timer]);
  return { got, seconds: (performance.now() - t0) / 1000 };
}"""


@pytest.mark.slow
@pytest.mark.tools
def test_a_manifest_server_that_never_finishes_does_not_hang_open(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        assert page.run(DOWNLOAD, url, storage, SHARDS)["ok"]  # a copy of the manifest is kept
        models.add_fault(Fault("stall", after=10, seconds=120, path="model-manifest.json"))
        page.reload()
        out = page.run(OPEN_BOUNDED, url, storage, 30_000)
        models.faults.clear()
    assert models.applied, "the fault was not applied"
    assert out["got"] != "HUNG", "ModelCache.open() still pending after 30 s (stallTimeout 2 s)"
    assert out["got"]["offline"] is True and "no data for 2 s" in out["got"]["problem"], out
    assert out["seconds"] < 15, out


# -- stored pieces are re-checked when handed out ---------------------------------------------------
EDIT = """async ([s, key, shard, piece]) => {
  if (s === 'opfs') {
    const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('teadist-model-cache');
    const fh = await (await root.getDirectoryHandle(key)).getFileHandle(`${shard}.${piece}`);
    const bytes = new Uint8Array(await (await fh.getFile()).arrayBuffer());
    bytes[5] ^= 1;
    const w = await fh.createWritable(); await w.write(bytes); await w.close();
    return bytes.length;
  }
  const db = await new Promise((res, rej) => {
    const r = indexedDB.open('teadist-model-cache-indexeddb');
    r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error);
  });
  const get = db.transaction('pieces').objectStore('pieces').get([key, shard, piece]);
  const blob = await new Promise((res) => { get.onsuccess = () => res(get.result); });
  const bytes = new Uint8Array(await blob.arrayBuffer());
  bytes[5] ^= 1;
  const tx = db.transaction('pieces', 'readwrite');
  tx.objectStore('pieces').put(new Blob([bytes]), [key, shard, piece]);
  await new Promise((res, rej) => { tx.oncomplete = res; tx.onabort = () => rej(tx.error); });
  db.close();
  return bytes.length;
}"""
BLOBS_DIGEST = ("async ([m, s, id]) => { try { return await digestOf(await (await openCache(m, s)).blobs(id)); }"
                " catch (e) { return errorInfo(e); } }")


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.parametrize("model_id", [SHARDS, BYTES])
def test_a_stored_piece_edited_in_place_is_not_handed_to_wllama(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path, model_id: str) -> None:
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        assert page.run(DOWNLOAD, url, storage, model_id)["ok"]
        key = _keys(page, url, storage)[model_id]
        assert page.run(EDIT, storage, key, 1, 0) > 0
        page.reload()
        got = page.run(BLOBS_DIGEST, url, storage, model_id)
        seen = len(models.log.sent)
        again = page.run(DOWNLOAD, url, storage, model_id)
        digest = page.run(DIGEST, url, storage, model_id)
    assert isinstance(got, dict), f"blobs() handed edited bytes as verified (digest {got})"
    assert got["code"] == "not-downloaded" and release.chunk(model_id, 1)["name"] in got["message"], got
    assert again["ok"] and digest == release.digest(model_id)
    fetched = [e.path.lstrip("/") for e in models.log.sent[seen:] if e.path != "/model-manifest.json"]
    assert fetched == [release.chunk(model_id, 1)["name"]]  # only the damaged shard again


# -- manifests built to hurt ------------------------------------------------------------------------
CRAFTED = """async () => {
  const MC = window.MC;
  const out = {};
  const base = 'https://host.test/rel/model-manifest.json';
  const h = 'a'.repeat(64);
  const model = (extra) => ({ schema_version: '1.1', name: 'm', format: 'gguf',
    file: { name: 'm.gguf', size: 1, sha256: h },
    chunks: [{ name: 'm-00001-of-00001.gguf', size: 1, sha256: h }], ...extra });
  const tryParse = (name, text, url = base) => {
    const t0 = performance.now();
    try { MC.parseManifest(text, url); out[name] = ['accepted', performance.now() - t0]; }
    catch (e) { out[name] = [e.name + ': ' + String(e.message).slice(0, 300), performance.now() - t0]; }
  };
  tryParse('deepArray', '['.repeat(8_000_000));
  tryParse('deepObject', '{"a":'.repeat(3_000_000));
  const million = Array.from({ length: 1_000_000 }, (_, i) => ({ name: 'c' + i, size: 1, sha256: h }));
  tryParse('millionShards', JSON.stringify(model({ chunks: million })).slice(0, 16 * 1024 * 1024));
  tryParse('negative', JSON.stringify(model({ chunks: [{ name: 'x', size: -1, sha256: h }] })));
  tryParse('hugeSize', JSON.stringify(model({ file: { name: 'm.gguf', size: 2 ** 60, sha256: h } })));
  tryParse('dotdot', JSON.stringify(model({ chunks: [{ name: '..', size: 1, sha256: h }] })));
  tryParse('encodedDotdot', JSON.stringify(model({ chunks: [{ name: '%2e%2e', size: 1, sha256: h }] })));
  const secretUrl = 'https://user:secret@evil.test/x';
  tryParse('userinfoUrl', JSON.stringify(model({ chunks: [{ name: 'x', size: 1, sha256: h, urls: [secretUrl] }] })));
  tryParse('userinfoHf', JSON.stringify({ schema_version: '1.0', name: 'h', format: 'single',
    file: { name: 'h.gguf', size: 1, sha256: h },
    sources: [{ type: 'hf', repo: 'o/r', path: 'h.gguf', endpoint: 'https://tok:secret@hub.test' }] }));
  tryParse('userinfoBase', JSON.stringify(model({})), 'https://user:secret@host.test/rel/model-manifest.json');
  const many = { schema_version: '1.0', kind: 'release-index', models: Array.from({ length: 2000 }, (_, i) => ({
    schema_version: '1.0', name: 'm' + i, format: 'gguf', file: { name: 'f', size: 30, sha256: h },
    chunks: Array.from({ length: 30 }, (_, j) => ({ name: 'c' + j, size: 1, sha256: h })) })) };
  tryParse('manyModels', JSON.stringify(many));
  try {
    await MC.ModelCache.open({ manifestUrl: 'http://alice:secret@127.0.0.1:9/m.json', storage: 'indexeddb' });
    out.openUserinfo = 'opened';
  } catch (e) { out.openUserinfo = e.name + ': ' + e.message; }
  return out;
}"""


@pytest.mark.slow
@pytest.mark.tools
def test_crafted_manifests_are_refused_quickly_and_credentials_in_urls_never_echoed(
        app: AppServer, tmp_path: Path) -> None:
    with browser(tmp_path / "profile", app) as page:
        out = page.run(CRAFTED)
    for name, (_, ms) in ((k, v) for k, v in out.items() if isinstance(v, list)):
        assert ms < 5000, (name, ms)
    for name in ("userinfoUrl", "userinfoHf", "userinfoBase"):
        verdict = out[name][0]
        assert verdict.startswith("ManifestError") and "user name or password" in verdict, (name, verdict)
        assert "secret" not in verdict, (name, verdict)
    assert "user name or password" in out["openUserinfo"] and "secret" not in out["openUserinfo"], out["openUserinfo"]
    assert out["manyModels"][0] == "accepted"


@pytest.mark.slow
@pytest.mark.tools
def test_a_url_with_credentials_in_a_manifest_is_refused_like_teadist_refuses_it(
        app: AppServer, models: ModelServer, served: Path, release: Release, storage: str, tmp_path: Path) -> None:
    from teadist.formats.manifest import validate_manifest_dict

    index = load(served / "model-manifest.json")
    chunk = _model(index, SHARDS)["chunks"][0]
    (served / chunk["name"]).rename(served / "moved.gguf")  # no same-origin copy: the listed URL is tried
    chunk["urls"] = [f"http://alice:s3cret-token@{models.url.split('//')[1]}/moved.gguf"]
    write(served / "model-manifest.json", index)
    model = copy.deepcopy(_model(index, SHARDS))
    model["schema_version"] = "1.0"
    for c in model["chunks"]:
        c.pop("block_size", None)
        c.pop("blocks", None)
    with pytest.raises(Exception, match="user name or password"):
        validate_manifest_dict(model)
    opened = ("async ([m, s, id]) => { try { await (await openCache(m, s)).download(id); return { ok: true }; }"
              " catch (e) { return { ok: false, error: errorInfo(e) }; } }")
    with browser(tmp_path / "profile", app) as page:
        done = page.run(opened, manifest_url(models), storage, SHARDS)
    assert done.get("error", {}).get("name") == "ManifestError", "the browser accepted a URL the Python side refuses"
    assert "user name or password" in done["error"]["message"]
    assert "s3cret-token" not in json.dumps(done["error"]), "the password is echoed in the error the page shows"
    assert not [e for e in models.log.sent if "moved" in e.path]


# -- the example page and its server ----------------------------------------------------------------
def test_a_folder_without_its_trailing_slash_is_redirected_to_it(tmp_path: Path) -> None:
    """/_teadist/examples answering the page itself (200) would resolve its relative import
    '../model-cache.js' to /model-cache.js: the folder's file, not teadist's. A folder's path without
    its slash is redirected to the slashed one, all over the server."""
    from teadist.pipelines.serve import StaticServer
    from teadist.web import asset_files

    (tmp_path / "model-cache.js").write_text("window.notTeadist = true;\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "index.html").write_text("<!doctype html><script src='app.js'></script>\n")
    with StaticServer(tmp_path, assets=asset_files(), cors=True) as server:
        page_url = f"{server.url}/_teadist/examples?manifest=/m.json"
        with urllib.request.urlopen(page_url) as response:  # follows the redirect
            final = response.geturl()
            html = response.read().decode()
        module = urljoin(final, "../model-cache.js")
        with urllib.request.urlopen(module) as response:
            body = response.read().decode()
        import http.client

        statuses = {}
        for path in ("/_teadist/examples", "/pages", "//evil.example/pages", "/pages?x=1"):
            conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
            conn.request("GET", path)
            got = conn.getresponse()
            statuses[path] = (got.status, got.getheader("Location"))
            got.read()
            conn.close()
    assert "from '../model-cache.js'" in html
    assert final.endswith("/_teadist/examples/?manifest=/m.json"), final
    assert "notTeadist" not in body, f"the example page at {page_url} runs {module}: the folder's file"
    assert statuses == {"/_teadist/examples": (301, "/_teadist/examples/"), "/pages": (301, "/pages/"),
                        "//evil.example/pages": (404, None), "/pages?x=1": (301, "/pages/?x=1")}, statuses


ATTACKER_JS = b"""
const stolen = await (await fetch('/secret.txt')).text();
window.stolen = stolen;
document.title = 'STOLEN: ' + stolen;
export class Wllama { constructor() { throw new Error('attacker module ran'); } }
"""


@pytest.mark.slow
@pytest.mark.tools
def test_the_example_pages_wllama_parameter_cannot_run_another_origins_script(
        release: Release, tmp_path: Path) -> None:
    """A link to a running `teadist serve` (no --cors) must not make the example page import a script
    from another origin, which would then read the served folder as same-origin."""
    import shutil

    from playwright.sync_api import sync_playwright

    from teadist.pipelines.serve import StaticServer
    from teadist.web import asset_files
    from tests.test_browser import CHROMIUM, FLAGS

    folder = tmp_path / "site"
    shutil.copytree(release.folder, folder)
    (folder / "secret.txt").write_text("private-notes-not-for-other-origins")
    fetched: list[str] = []

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            self.send_response(200)
            for k, v in {"Content-Type": "text/javascript", "Access-Control-Allow-Origin": "*",
                         "Cross-Origin-Resource-Policy": "cross-origin",
                         "Content-Length": str(len(ATTACKER_JS))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(ATTACKER_JS)

        def log_message(self, *args: Any) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with StaticServer(folder, assets=asset_files()) as server, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                           headless=True, args=[*FLAGS])
            try:
                page = context.new_page()
                evil_url = f"http://127.0.0.1:{evil.server_address[1]}/"
                page.goto(f"{server.url}/_teadist/examples/index.html?manifest=/model-manifest.json&wllama={evil_url}")
                page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=30_000)
                page.click("#download")
                page.wait_for_function("document.getElementById('model-status').textContent.includes('cached')",
                                       timeout=60_000)
                page.click("#generate")
                page.wait_for_function("['error', 'idle'].includes(document.body.dataset.state)", timeout=30_000)
                stolen = page.evaluate("() => window.stolen ?? null")
                error = page.inner_text("#error")
            finally:
                context.close()
    finally:
        evil.shutdown()
    assert stolen is None and fetched == [], f"a script from {evil_url} ran on the served origin: {stolen!r}"
    assert "wllama" in error and "this page's origin" in error, error


# -- storage bookkeeping ----------------------------------------------------------------------------
SHARED = """async ([m, s]) => {
  const c = await openCache(m, s);
  await c.download('tiny-shards');
  const deleted = await c.delete('tiny-shards-copy');
  return { deleted, list: await c.list(), models: (await c.storageInfo()).models.map((x) => x.id),
           raw: await rawStorage(s) };
}"""


@pytest.mark.slow
@pytest.mark.tools
def test_delete_of_a_model_whose_bytes_another_model_shares(
        app: AppServer, models: ModelServer, served: Path, storage: str, tmp_path: Path) -> None:
    """Two index entries with the same bytes share one stored version: delete() of either removes it."""
    index = load(served / "model-manifest.json")
    twin = copy.deepcopy(_model(index, SHARDS))
    twin["name"] = "tiny-shards-copy"
    index["models"].append(twin)
    write(served / "model-manifest.json", index)
    with browser(tmp_path / "profile", app) as page:
        out = page.run(SHARED, manifest_url(models), storage)
    cached = {m["id"]: m["cached"] for m in out["list"]}
    assert out["deleted"] is True, out
    assert cached["tiny-shards-copy"] is False and cached[SHARDS] is False, out["list"]
    assert out["models"] == [] and out["raw"] == {}, out


RACE = """async ([m, id]) => {
  const c1 = await openCache(m, 'opfs');
  await c1.download(id);
  const orig = FileSystemFileHandle.prototype.getFile;
  // widen the window between blobs() reading the pieces and writing lastUsed (another tab evicts then)
  FileSystemFileHandle.prototype.getFile = async function () {
    const f = await orig.call(this);
    if (this.name.startsWith('3.')) await new Promise((r) => setTimeout(r, 1500));  // the last shard
    return f;
  };
  const pending = c1.blobs(id);
  await new Promise((r) => setTimeout(r, 300));
  const c2 = await openCache(m, 'opfs');
  const evicted = await c2.evictLeastRecentlyUsed(0);
  let handed;
  try {
    const blobs = await pending;
    try { await new Blob(blobs).arrayBuffer(); handed = 'readable'; } catch (e) { handed = 'unreadable: ' + e.name; }
  } catch (e) { handed = 'refused: ' + e.message; }
  FileSystemFileHandle.prototype.getFile = orig;
  const status = await c2.status(id);
  const list = await c2.list();
  const events = [];
  await c2.download(id, { onProgress: (p) => events.push(p.phase + ': ' + p.text) });
  return { evicted: evicted.evicted.map((e) => e.id), handed, cached: list.find((x) => x.id === id).cached,
           downloaded: status.downloaded, partialBytes: status.partialBytes, totalBytes: status.totalBytes, events,
           after: await digestOf(await c2.blobs(id)) };
}"""


@pytest.mark.slow
@pytest.mark.tools
def test_an_eviction_while_blobs_runs_does_not_leave_a_complete_entry_without_pieces(
        app: AppServer, models: ModelServer, release: Release, tmp_path: Path) -> None:
    with browser(tmp_path / "profile", app) as page:
        out = page.run(RACE, manifest_url(models), SHARDS)
    assert not (out["cached"] and out["partialBytes"] == 0), (
        f"after the eviction the model is reported cached with 0 bytes stored; download() says {out['events']}")
    # blobs() holds the version while it hands it out: the eviction passes it over.
    assert out["evicted"] == [] and out["handed"] == "readable", out
    assert out["cached"] and out["partialBytes"] == out["totalBytes"] and out["after"] == release.digest(SHARDS)


PIECES = """async ([m, s, id]) => {
  const c = await openCache(m, s);
  let t = performance.now();
  try { await c.download(id); } catch (e) { return { error: errorInfo(e) }; }
  const download = (performance.now() - t) / 1000;
  t = performance.now();
  const blobs = await c.blobs(id);
  const blobsSeconds = (performance.now() - t) / 1000;
  return { download, blobsSeconds, digest: await digestOf(blobs), raw: await rawStorage(s) };
}"""


@pytest.mark.slow
@pytest.mark.tools
def test_small_manifest_blocks_are_stored_in_large_pieces(app: AppServer, storage: str, tmp_path: Path) -> None:
    """Storing one piece per 64 KiB block made a model take seconds per 10 MiB (one file / record per
    block); verified blocks are grouped into pieces of 8 MiB (times are printed; goals live in bench.py)."""
    size = 20 * 1024 * 1024 + 12345
    folder = tmp_path / "big"
    folder.mkdir()
    data_path = folder / "big.gguf"
    data_path.write_bytes(os.urandom(size))
    manifest = {"schema_version": "1.1", "name": "big", "format": "single",
                "file": {"name": "big.gguf", "size": size, "sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
                         "block_size": 1 << 16, "blocks": block_hashes(data_path, 1 << 16)}}
    (folder / "big.json").write_text(json.dumps(manifest))
    with ModelServer(folder) as server, browser(tmp_path / "profile", app) as page:
        out = page.run(PIECES, f"{server.url}/big.json", storage, "big")
    print(f"64 KiB blocks / {storage}: download {out.get('download')} s, blobs {out.get('blobsSeconds')} s")
    assert "error" not in out, out
    assert out["digest"] == manifest["file"]["sha256"]  # type: ignore[index]
    (pieces,) = out["raw"].values()
    eight = 8 << 20
    assert pieces == {"0.0": eight, "0.1": eight, "0.2": size - 2 * eight}, pieces


# -- what held in the review: keep it so ----------------------------------------------------------
class LyingServer(ModelServer):
    """A model origin that, once ``lie`` is set, answers Range requests with a lying 206, and records
    the Cookie/Authorization headers every request carried."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lie: str | None = None
        self.credentials: list[tuple[str, str | None, str | None]] = []

    def route(self, handler: Any, method: str) -> None:
        self.credentials.append((handler.path, handler.headers.get("Cookie"), handler.headers.get("Authorization")))
        wanted = handler.headers.get("Range")
        name = handler.path.lstrip("/")
        served = self._lookup(name)
        if self.lie and method == "GET" and wanted and served is not None:
            self.log.begin(handler, method, CORS_HEADERS)
            data = served.path.read_bytes()
            start = int(wanted.split("=")[1].split("-")[0])
            if self.lie == "shifted":  # the right header, the wrong bytes (from 0)
                body, cr = data[: len(data) - start], f"bytes {start}-{len(data) - 1}/{len(data)}"
            elif self.lie == "header":  # the right bytes, a header claiming another place
                body, cr = data[start:], f"bytes {start - 1}-{len(data) - 2}/{len(data)}"
            else:  # "other-total": right place, a file of another size
                body, cr = data[start:], f"bytes {start}-{len(data) - 1}/{len(data) + 5}"
            handler.send_response(206)
            handler.send_header("Content-Range", cr)
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Content-Type", "application/octet-stream")
            handler.end_headers()
            handler.wfile.write(body)
            return
        super().route(handler, method)


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.parametrize("lie", ["shifted", "header", "other-total"])
def test_a_lying_206_on_resume_never_reaches_the_cache(
        app: AppServer, served: Path, release: Release, storage: str, tmp_path: Path, lie: str) -> None:
    chunk = release.chunk(SHARDS, 1)
    with LyingServer(served) as server:
        url = f"{server.url}/model-manifest.json"
        server.add_fault(Fault("stall", after=200_000, seconds=0.5, path=chunk["name"]))
        server.add_fault(Fault("status", status=503, times=100, path=chunk["name"]))
        with browser(tmp_path / "profile", app) as page:
            page.run("() => { document.cookie = 'sid=SECRET-COOKIE; path=/'; }")
            first = page.run(DOWNLOAD, url, storage, SHARDS)
            server.faults.clear()
            server.lie = lie
            lied = page.run(DOWNLOAD, url, storage, SHARDS)
            server.lie = None
            honest = page.run(DOWNLOAD, url, storage, SHARDS)
            digest = page.run(DIGEST, url, storage, SHARDS)
        ranged = [e for e in server.log.sent if e.range and e.path.endswith(chunk["name"])]
    assert not first["ok"] and ranged, "no resume with Range happened"
    assert not lied["ok"], f"a lying 206 ({lie}) was accepted"
    assert honest["ok"] and digest == release.digest(SHARDS)
    assert all(c is None and a is None for _, c, a in server.credentials), server.credentials[:3]


def _browser_rss(profile: Path) -> int:
    """Anonymous memory of this test's Chromium: the browser process started on ``profile`` and its
    descendants (zygotes, renderers, utilities) — never another Chromium on the machine."""
    procs: dict[int, tuple[int, bytes]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        procs[int(name)] = (ppid, cmdline)
    members = {pid for pid, (_, cmdline) in procs.items()
               if b"chromium" in cmdline[:200] and f"--user-data-dir={profile}".encode() in cmdline}
    grown = True
    while grown:
        before = len(members)
        members |= {pid for pid, (ppid, _) in procs.items() if ppid in members}
        grown = len(members) > before
    total = 0
    for pid in members:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _big_model(folder: Path, size: int, fmt: str) -> None:
    """``folder/big.json``: a manifest for ``size`` random bytes in ``big.gguf`` (``fmt``: single or blocks)."""
    folder.mkdir()
    data_path = folder / "big.gguf"
    digest = hashlib.sha256()
    with open(data_path, "wb") as fh:
        for _ in range(size // (16 << 20)):
            block = os.urandom(16 << 20)
            digest.update(block)
            fh.write(block)
    manifest: dict[str, Any] = {"schema_version": "1.0", "name": "big", "format": "single",
                                "file": {"name": "big.gguf", "size": size, "sha256": digest.hexdigest()}}
    if fmt == "blocks":
        manifest["schema_version"] = "1.1"
        manifest["file"].update(block_size=1 << 20, blocks=block_hashes(data_path, 1 << 20))
    (folder / "big.json").write_text(json.dumps(manifest))


class _PeakRss:
    """Samples this test's Chromium (``_browser_rss``) every 0.1 s while the ``with`` block runs."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.base = _browser_rss(profile)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _browser_rss(self.profile))
            time.sleep(0.1)

    def __enter__(self) -> _PeakRss:
        assert self.base > 0, "this test's Chromium was not found in /proc"
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def grew(self) -> int:
        return self.peak - self.base


@pytest.mark.slow
@pytest.mark.tools
@pytest.mark.parametrize("fmt", ["single", "blocks"])
def test_page_memory_does_not_grow_with_model_size(app: AppServer, storage: str, tmp_path: Path, fmt: str) -> None:
    size = 384 * 1024 * 1024
    folder = tmp_path / "big"
    _big_model(folder, size, fmt)
    profile = tmp_path / "profile"
    with ModelServer(folder) as server, browser(profile, app) as page:
        page.run("async () => { await new Promise((r) => setTimeout(r, 1500)); }")
        with _PeakRss(profile) as rss:
            done = page.run(DOWNLOAD.replace("onProgress, ", ""), f"{server.url}/big.json", storage, "big")
            handed = page.run("async ([m, s, id]) => (await (await openCache(m, s)).blobs(id)).length",
                              f"{server.url}/big.json", storage, "big")
    grew = rss.grew
    print(f"{fmt}/{storage}: baseline {rss.base >> 20} MiB, peak {rss.peak >> 20} MiB, grew {grew >> 20} MiB")
    assert done["ok"], done.get("error")
    assert handed == 1
    assert grew < 300 * 1024 * 1024, f"page memory grew by {grew >> 20} MiB for a {size >> 20} MiB model"


# Storage slower than the network, on purpose: every write of a piece (an IndexedDB transaction that
# touches 'pieces', the answer of a worker that stores pieces, an OPFS writable's close) reports
# completion 200 ms late, and is counted.
SLOW_STORAGE = """(() => {
  window.slowWrites = 0;
  const late = (fn) => (...args) => { window.slowWrites += 1; setTimeout(() => fn(...args), 200); };
  const message = Object.getOwnPropertyDescriptor(Worker.prototype, 'onmessage');
  Object.defineProperty(Worker.prototype, 'onmessage', { configurable: true,
    get() { return message.get.call(this); },
    set(fn) { message.set.call(this, fn ? late(fn) : fn); } });
  const complete = Object.getOwnPropertyDescriptor(IDBTransaction.prototype, 'oncomplete');
  Object.defineProperty(IDBTransaction.prototype, 'oncomplete', { configurable: true,
    get() { return complete.get.call(this); },
    set(fn) {
      const piece = fn && this.mode === 'readwrite' && this.objectStoreNames.contains('pieces');
      complete.set.call(this, piece ? late(fn) : fn);
    } });
  const close = FileSystemWritableFileStream.prototype.close;
  FileSystemWritableFileStream.prototype.close = function () {
    return new Promise((resolve) => late(resolve)()).then(() => close.call(this));
  };
})();"""


@pytest.mark.slow
@pytest.mark.tools
def test_page_memory_does_not_grow_with_model_size_when_storage_is_slow(
        app: AppServer, storage: str, tmp_path: Path) -> None:
    """The loopback server serves fast, storage completes every piece late: what the page holds while
    downloading must be bounded by the pieces in flight, not by the model (two sizes, same bound)."""
    grew: dict[int, int] = {}
    for mib in (64, 320):
        folder = tmp_path / f"big{mib}"
        _big_model(folder, mib << 20, "blocks")
        profile = tmp_path / f"profile{mib}"
        with ModelServer(folder) as server, browser(profile, app) as page:
            page.context.add_init_script(SLOW_STORAGE)
            page.reload()
            page.run("async () => { await new Promise((r) => setTimeout(r, 1500)); }")
            with _PeakRss(profile) as rss:
                done = page.run(DOWNLOAD.replace("onProgress, ", ""), f"{server.url}/big.json", storage, "big")
            slow = page.run("() => window.slowWrites")
        assert done["ok"], done.get("error")
        assert slow >= mib // 8, f"storage was not slowed: {slow} late writes for {mib} MiB"
        grew[mib] = rss.grew
        print(f"slow {storage}, {mib} MiB: baseline {rss.base >> 20} MiB, peak {rss.peak >> 20} MiB, "
              f"grew {rss.grew >> 20} MiB, {slow} late writes")
    # Measured: before the fix 235 MiB (OPFS) and 316 MiB (IndexedDB) for 320 MiB; after, about 80 and 120.
    assert grew[320] < 192 << 20, f"page memory grew by {grew[320] >> 20} MiB for a 320 MiB model on slow storage"
    assert grew[320] - grew[64] < 64 << 20, \
        f"page memory grew {grew[64] >> 20} MiB for 64 MiB and {grew[320] >> 20} MiB for 320 MiB on slow storage"


# Counts the piece writer's answers (stored or failed) and its errors, as the page receives them.
WORKER_ANSWERS = """(() => {
  window.workerAnswers = { stored: 0, failed: 0, errors: 0 };
  const NativeWorker = Worker;
  window.Worker = function Worker(url, options) {
    const worker = new NativeWorker(url, options);
    worker.addEventListener('message', ({ data }) => {
      if (data?.id !== undefined) window.workerAnswers[data.ok ? 'stored' : 'failed'] += 1;
    });
    worker.addEventListener('error', () => { window.workerAnswers.errors += 1; });
    return worker;
  };
  window.Worker.prototype = NativeWorker.prototype;
})();"""


@pytest.mark.slow
@pytest.mark.tools
def test_pieces_are_stored_by_the_worker_where_one_can_start(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    """The worker runs the same piece writes as the page (one implementation, its source handed to the
    worker): every piece is stored there, none fails, and the stored bytes are the release's."""
    with browser(tmp_path / "profile", app) as page:
        page.context.add_init_script(WORKER_ANSWERS)
        page.reload()
        out = page.run(DOWNLOAD, manifest_url(models), storage, SHARDS)
        answers = page.run("() => window.workerAnswers")
        digest = page.run(DIGEST, manifest_url(models), storage, SHARDS)
    assert out["ok"], out.get("error")
    assert answers["stored"] > 0 and answers["failed"] == answers["errors"] == 0, answers
    assert digest == release.digest(SHARDS)


@pytest.mark.slow
@pytest.mark.tools
def test_pieces_are_stored_from_the_page_where_no_worker_can_start(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    """Pieces are stored from a short-lived worker; a page without workers stores them itself."""
    with browser(tmp_path / "profile", app) as page:
        page.context.add_init_script("delete window.Worker;")
        page.reload()
        assert page.run("() => typeof Worker") == "undefined"
        out = page.run(DOWNLOAD, manifest_url(models), storage, SHARDS)
        digest = page.run(DIGEST, manifest_url(models), storage, SHARDS)
    assert out["ok"], out.get("error")
    assert digest == release.digest(SHARDS)


@pytest.mark.slow
@pytest.mark.tools
def test_pieces_are_stored_from_the_page_when_a_policy_forbids_blob_workers(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    """A page whose Content-Security-Policy refuses blob: workers still downloads (pieces stored from
    the page), and what it stores is the release's bytes."""
    policy = "worker-src 'self'"
    harness = tmp_path / "harness"
    harness.mkdir()
    page_text = (web.HARNESS / "cache-harness.html").read_text()
    head = page_text.index("<title>")  # the policy comes before any script
    (harness / "cache-harness.html").write_text(
        f'{page_text[:head]}<meta http-equiv="Content-Security-Policy" content="{policy}">{page_text[head:]}')
    strict = AppServer({"": harness, "teadist": web.WEB, "wllama": WLLAMA})
    with strict, browser(tmp_path / "profile", strict) as page:
        page.context.add_init_script("""window.refused = [];
          document.addEventListener('securitypolicyviolation', (e) => window.refused.push(e.blockedURI));""")
        page.reload()
        out = page.run(DOWNLOAD, manifest_url(models), storage, SHARDS)
        refused = page.run("() => window.refused")
        digest = page.run(DIGEST, manifest_url(models), storage, SHARDS)
    assert any(uri.startswith("blob") for uri in refused), f"the policy refused no blob: worker: {refused}"
    assert out["ok"], out.get("error")
    assert digest == release.digest(SHARDS)


# The piece writer worker throws (an uncaught error, as a worker that dies does) right after it was
# handed its second piece, while that piece's write is under way; the page counts the error events.
DYING_WORKER = WORKER_ANSWERS + """
(() => {
  const NativeBlob = Blob;
  window.Blob = function Blob(parts, options) {
    if (typeof parts?.[0] === 'string' && parts[0].includes('onmessage = async')) {
      parts = ["let seen = 0; addEventListener('message', () => { if (++seen === 2) setTimeout(() => { "
        + "throw new Error('piece writer died mid-write'); }); });\\n", ...parts];
    }
    return new NativeBlob(parts, options);
  };
  window.Blob.prototype = NativeBlob.prototype;
})();"""


@pytest.mark.slow
@pytest.mark.tools
def test_a_piece_writer_that_dies_mid_write_leaves_only_verified_pieces(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    with browser(tmp_path / "profile", app) as page:
        page.context.add_init_script(DYING_WORKER)
        page.reload()
        out = page.run(DOWNLOAD, manifest_url(models), storage, SHARDS, {"concurrency": 1})
        deaths = page.run("() => window.workerAnswers.errors")
        digest = page.run(DIGEST, manifest_url(models), storage, SHARDS)
    assert deaths >= 1, "no piece writer died"
    assert out["ok"], out.get("error")
    assert digest == release.digest(SHARDS)


@pytest.mark.slow
@pytest.mark.tools
def test_a_piece_writer_that_ends_silently_mid_write_does_not_hang_the_download(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    """A worker can end without an error event (it closes itself, the browser stops it): the piece it
    was storing must not leave the download waiting forever with the model's lock held."""
    silent = DYING_WORKER.replace("throw new Error('piece writer died mid-write');", "close();")
    assert silent != DYING_WORKER
    with browser(tmp_path / "profile", app) as page:
        page.context.add_init_script(silent)
        page.reload()
        out = page.run(f"""async (args) => Promise.race([({DOWNLOAD})(args),
          new Promise((r) => setTimeout(() => r({{ ok: false, hung: true }}), 60000))])""",
                       manifest_url(models), storage, SHARDS, {"concurrency": 1})
        digest = page.run(DIGEST, manifest_url(models), storage, SHARDS) if out["ok"] else None
    assert not out.get("hung"), "the download still waited for a piece writer that had ended 60 s earlier"
    assert out["ok"], out.get("error")
    assert digest == release.digest(SHARDS)


@pytest.mark.slow
@pytest.mark.tools
def test_two_tabs_downloading_the_same_model_at_once_store_it_once_and_exactly(
        app: AppServer, models: ModelServer, release: Release, storage: str, tmp_path: Path) -> None:
    """Two tabs start the same download together (each storing pieces from its own workers): both end
    with the release's bytes, and the model's bytes cross the network once (one waits on the lock)."""
    url = manifest_url(models)
    with browser(tmp_path / "profile", app) as page:
        other = page.context.new_page()
        other.goto(page.page.url)
        other.wait_for_function("window.ready === true", timeout=60_000)
        seen = len(models.log.sent)
        start = (f"(args) => {{ window.began = Date.now(); window.job = ({DOWNLOAD})(args)"
                 ".finally(() => { window.ended = Date.now(); }); }")
        for tab in (page.page, other):  # neither call waits for its download
            tab.evaluate(start, [url, storage, SHARDS, {"concurrency": 1}])
        outs = [tab.evaluate("() => window.job") for tab in (page.page, other)]
        spans = [tab.evaluate("() => [window.began, window.ended]") for tab in (page.page, other)]
        sent = sum(e.sent for e in models.log.sent[seen:] if e.path != "/model-manifest.json")
        digests = [page.run(DIGEST, url, storage, SHARDS), other.evaluate(DIGEST, [url, storage, SHARDS])]
    assert spans[1][0] < spans[0][1], f"the second tab started after the first had finished: {spans}"
    assert all(o["ok"] for o in outs), [o.get("error") for o in outs]
    assert digests == [release.digest(SHARDS)] * 2
    assert sent == release.total(SHARDS), f"{sent} bytes sent for a {release.total(SHARDS)}-byte model"
