"""The release carries what a browser loads, end to end (issue 13), in Debian's Chromium with real
wllama 3.8.1, on both storage back ends:

- `release prepare` with a ``"format": "gguf"`` entry ships llama.cpp shards; `package-wasm`'s
  tarball carries the browser model cache; `teadist serve` (the real command, a subprocess) serves
  the example page from that tarball — and the same module under /_teadist/ — with COOP/COEP,
  while a second `teadist serve --cors` is the model origin for the prepared folder.
- `release publish` to a GitHub-API-compatible server: the index it uploaded lists each shard's
  asset API URL, and with no same-origin copy of the shards the page gets them through those URLs
  (the server answers with CORS headers, as the API does).

The browser resolves no host but 127.0.0.1, and every request it makes is checked to stay there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from teadist.formats.tinymodel import make_tiny_model
from teadist.release.wasmpkg import check_tarball
from tests.conftest import ISOLATED_VARS, TEADIST_BIN
from tests.test_browser import CHROMIUM, FLAGS, N_PREDICT, WLLAMA, native_text
from tests.test_serve import serving
from tests.web_servers import GitHubAssetServer

pytestmark = [pytest.mark.slow, pytest.mark.tools]

LOCAL_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
VERSION, TAG, REPO = "1.2.0", "v1.2.0", "tea/tea"
MODEL = "tiny-web"
EXAMPLE_IN_TARBALL = f"/tea-wasm-llm-{VERSION}/teadist-web/examples/index.html"
EXAMPLE_SERVED = "/_teadist/examples/index.html"
SETTLED = "['idle', 'error'].includes(document.body.dataset.state)"


@dataclass
class Shipped:
    dist: Path  # what `release prepare` wrote: shards, their manifest, the tarball, model-manifest.json
    app: Path  # the tarball unpacked, wllama's esm build beside it
    text: str  # llama.cpp's greedy output on the original model

    def shards(self) -> list[dict[str, Any]]:
        chunks = json.loads((self.dist / "model-manifest.json").read_text())["models"][0]["chunks"]
        assert isinstance(chunks, list)
        return chunks


def teadist(*args: str | Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(TEADIST_BIN), *map(str, args)], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    assert WLLAMA.is_dir(), "run `npm ci` in tests/browser (.ci/run does)"
    assert CHROMIUM.exists(), "apt-get install chromium (.ci/run does)"
    root = tmp_path_factory.mktemp("shipped")
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARS}
    env.update(HOME=str(root / "home"), HF_HOME=str(root / "home" / ".hf"))
    model = make_tiny_model(root / "src" / "tiny-web.gguf", seed=11, n_embd=128, n_layer=4, printable_only=True)
    pkg = root / "pkg"  # what wasm-pack would have built
    pkg.mkdir()
    (pkg / "tea_wasm_llm_bg.wasm").write_bytes(b"\0asm\1\0\0\0")
    (pkg / "tea_wasm_llm.js").write_text("export default function init() {}\n")
    dist = root / "dist"
    teadist("package-wasm", pkg, "--version", VERSION, "--out", dist, env=env)
    config = root / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(model), "name": MODEL, "format": "gguf",
                                              "shard_size": "700k"}]}))
    teadist("release", "prepare", "--tag", TAG, "--repo", REPO, "--config", config, "--out", dist, env=env)
    tarball = dist / f"tea-wasm-llm-{VERSION}.tar.gz"
    check_tarball(tarball)
    app = root / "app"
    app.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(app, filter="data")
    shutil.copytree(WLLAMA, app / "wllama")
    return Shipped(dist, app, native_text(model))


@pytest.fixture(params=["opfs", "indexeddb"])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[tuple[Any, list[tuple[str, int]]]]:
    """A Chromium process on ``profile``; yields its context and every (URL, status) it received."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    answers: list[tuple[str, int]] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                       args=[*FLAGS, LOCAL_ONLY])
        context.on("request", lambda r: requests.append(r.url))
        context.on("response", lambda r: answers.append((r.url, r.status)))
        try:
            yield context, answers
        finally:
            context.close()
    outside = [u for u in requests if not u.startswith(("http://127.0.0.1:", "blob:", "data:"))]
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"


def example(context: Any, url: str) -> Any:
    """The example page, opened and settled (it opens the manifest by itself)."""
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(SETTLED, timeout=60_000)
    assert page.inner_text("#error") == ""
    return page


def press(page: Any, button: str) -> str:
    """Click a button of the example page, wait until it settles; its error line ('' when none)."""
    page.click(f"#{button}")
    page.wait_for_function(SETTLED, timeout=120_000)
    return str(page.inner_text("#error"))


def download_and_generate(page: Any) -> tuple[str, str]:
    """(the model's status line after the download, the generated text)."""
    assert press(page, "download") == ""
    status = str(page.inner_text("#model-status"))
    page.fill("#tokens", str(N_PREDICT))
    assert press(page, "generate") == ""
    return status, str(page.inner_text("#output"))


def test_a_prepared_gguf_release_runs_in_the_tarballs_example_page_under_teadist_serve(
        shipped: Shipped, storage: str, tmp_path: Path) -> None:
    shards = shipped.shards()
    assert len(shards) >= 2 and all(s["name"].endswith(".gguf") for s in shards)
    with serving(shipped.app) as (app_url, _), serving(shipped.dist, "--cors") as (model_url, _):
        query = f"?manifest={quote(model_url + '/model-manifest.json')}&wllama=/wllama/&storage={storage}"
        with chromium(tmp_path / "profile") as (context, answers):
            page = example(context, app_url + EXAMPLE_IN_TARBALL + query)
            listed = page.locator("#model option").all_inner_texts()
            isolated = page.evaluate("() => self.crossOriginIsolated")
            status, text = download_and_generate(page)
            fetched = [(u, s) for u, s in answers if u.startswith(model_url + "/") and u.endswith(".gguf")]
            seen = len(answers)
            # the same module as `teadist serve` serves it: same origin, so the same cache
            served = example(context, app_url + EXAMPLE_SERVED + query)
            served_listed = served.locator("#model option").all_inner_texts()
            served.fill("#tokens", str(N_PREDICT))
            assert press(served, "generate") == ""
            served_text = served.inner_text("#output")
            modules = [(u, s) for u, s in answers if u.endswith("/model-cache.js")]
            later = [u for u, _ in answers[seen:] if u.startswith(model_url + "/") and u.endswith(".gguf")]
    assert listed == [f"{MODEL} — tiny-web.gguf, 2.0 MiB, gguf"]
    assert isolated is True  # COOP/COEP from teadist serve: wllama may use threads
    assert status.startswith("cached and verified, 2.0 MiB")
    assert text == shipped.text == served_text, (text, served_text, shipped.text)
    assert sorted(fetched) == sorted((f"{model_url}/{s['name']}", 200) for s in shards)  # each shard once
    assert served_listed == [f"{MODEL} — tiny-web.gguf, 2.0 MiB, gguf, cached"] and later == []
    assert modules == [(f"{app_url}/tea-wasm-llm-{VERSION}/teadist-web/model-cache.js", 200),
                       (f"{app_url}/_teadist/model-cache.js", 200)]


def test_a_published_release_loads_through_the_asset_api_urls_its_index_lists(
        shipped: Shipped, storage: str, tmp_path: Path) -> None:
    import requests

    site = tmp_path / "site"  # the page's origin: the unpacked tarball, no shards anywhere on it
    shutil.copytree(shipped.app, site)
    shards = shipped.shards()
    with GitHubAssetServer(repo=REPO) as github:
        assert isinstance(github, GitHubAssetServer)
        env = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARS}
        env.update(GITHUB_API_URL=github.api_url, GITHUB_TOKEN="ghp_test_token", TEADIST_GITHUB_WRITE_INTERVAL="0",
                   HOME=str(tmp_path / "home"))
        report = json.loads(teadist("release", "publish", "--tag", TAG, "--repo", REPO, "--dist", shipped.dist,
                                    "--json", env=env))
        [release] = github.releases
        ids = {a.name: a.id for a in release.assets}
        assert not release.draft and [a.name for a in release.assets][-1] == "model-manifest.json"
        index_url = f"{github.api_url}/repos/{REPO}/releases/assets/{ids['model-manifest.json']}"
        published = requests.get(index_url, headers={"Accept": "application/octet-stream"}, timeout=20).content
        (site / "published").mkdir()
        (site / "published" / "model-manifest.json").write_bytes(published)
        mark = len(github.log.sent)
        query = f"?manifest=/published/model-manifest.json&wllama=/wllama/&storage={storage}"
        with serving(site) as (app_url, _), chromium(tmp_path / "profile") as (context, answers):
            page = example(context, app_url + EXAMPLE_SERVED + query)
            status, text = download_and_generate(page)
            # the index itself is readable straight from the API too (a page hosting nothing at all)
            direct = page.evaluate("""async ([url, storage]) => {
                const { ModelCache } = await import('/_teadist/model-cache.js');
                return (await ModelCache.open({ manifestUrl: url, storage })).list(); }""", [index_url, storage])
        api = github.log.sent[mark:]
    index = json.loads(published)
    assert f"sha256:{report['index_sha256']}" == release.assets[-1].digest
    for chunk, shard in zip(index["models"][0]["chunks"], shards, strict=True):
        assert chunk["urls"] == [*shard["urls"], f"{github.api_url}/repos/{REPO}/releases/assets/{ids[shard['name']]}"]
    assert text == shipped.text and status.startswith("cached and verified")
    same_origin = sorted((u, s) for u, s in answers if u.startswith(f"{app_url}/published/") and u.endswith(".gguf"))
    assert same_origin == sorted((f"{app_url}/published/{s['name']}", 404) for s in shards)  # no copy here
    for shard in shards:
        asset_id = ids[shard["name"]]
        calls = [e for e in api if e.method == "GET" and e.path == f"/api/v3/repos/{REPO}/releases/assets/{asset_id}"]
        assert [(e.status, e.accept) for e in calls] == [(302, "application/octet-stream")], shard["name"]
        stored = [e for e in api if e.method == "GET" and e.path == f"/storage/{asset_id}/{shard['name']}"]
        assert [(e.status, e.sent) for e in stored] == [(200, shard["size"])], shard["name"]
    assert [(m["id"], m["format"], m["cached"]) for m in direct] == [(MODEL, "gguf", True)]
