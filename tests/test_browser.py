"""Browser proof: Debian's Chromium, driven by Playwright (no browser download), opens a page
served by `teadist serve` that loads @wllama/wllama (npm) and the tiny model from our first
shard's URL, and generates; greedy text equals native llama.cpp's on the same shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.tinymodel import make_tiny_model
from teadist.pipelines.gguf_split import split_gguf
from tests.conftest import TEADIST_BIN

pytestmark = pytest.mark.tools

WLLAMA = Path(__file__).parent / "browser" / "node_modules" / "@wllama" / "wllama" / "esm"
CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "Once upon a time"
N_PREDICT = 16
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

PAGE = """<!doctype html><meta charset="utf-8"><title>teadist browser proof</title>
<script type="module">
import { Wllama } from './wllama/index.js';
window.runProof = async (modelUrl, nPredict, prompt) => {
  const wllama = new Wllama({ default: new URL('./wllama/wasm/wllama.wasm', location.href).href });
  wllama.setCompat(null);  // never fetch a compat build from a CDN
  await wllama.loadModelFromUrl(modelUrl, { n_ctx: 128, n_gpu_layers: 0, n_threads: 2 });
  const res = await wllama.createCompletion({ prompt, max_tokens: nPredict, temperature: 0, top_k: 1 });
  return { text: res.choices[0].text, usage: res.usage, isolated: self.crossOriginIsolated };
};
window.proofReady = true;
</script>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert WLLAMA.is_dir(), "run `npm ci` in tests/browser (.ci/run does)"
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(WLLAMA, root / "wllama")
    (root / "index.html").write_text(PAGE)
    model = make_tiny_model(tmp_path_factory.mktemp("src") / "tiny-web.gguf", seed=11, n_embd=128, n_layer=4,
                            printable_only=True)
    split_gguf(model, root / "model", NullReporter(), shard_size=400_000)
    (root / "original.gguf").write_bytes(model.read_bytes())
    return root


def shard(site: Path, n: int) -> str:
    manifest = json.loads((site / "model" / "tiny-web.gguf.manifest.json").read_text())
    return str(manifest["chunks"][n - 1]["name"])


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    proc = subprocess.Popen([str(TEADIST_BIN), "serve", str(site), "--port", "0", "--verify",
                             str(site / "model" / "tiny-web.gguf.manifest.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
    yield url
    proc.terminate()
    proc.wait(10)


def native_text(path: Path) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False, seed=0)
    out = llm.create_completion(PROMPT, max_tokens=N_PREDICT, temperature=0.0, top_k=1, stream=False)
    assert isinstance(out, dict)
    return str(out["choices"][0]["text"])


def test_serve_headers_and_ranges(served: str, site: Path) -> None:
    first = f"{served}/model/{shard(site, 1)}"
    head = urllib.request.urlopen(urllib.request.Request(first, method="HEAD"))
    assert head.headers["Content-Length"] == str((site / "model" / shard(site, 1)).stat().st_size)
    assert head.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert head.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    wasm = urllib.request.urlopen(urllib.request.Request(f"{served}/wllama/wasm/wllama.wasm", method="HEAD"))
    assert wasm.headers["Content-Type"] == "application/wasm"
    js = urllib.request.urlopen(urllib.request.Request(f"{served}/wllama/index.js", method="HEAD"))
    assert js.headers["Content-Type"] == "text/javascript"
    part = urllib.request.urlopen(urllib.request.Request(first, headers={"Range": "bytes=4-7"}))
    assert part.status == 206 and part.read() == (site / "model" / shard(site, 1)).read_bytes()[4:8]
    for bad in ("/../etc/passwd", "/%2e%2e/x", "/model/.hidden"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(served + bad)
        assert info.value.code == 404


def test_wllama_in_chromium_generates_what_llama_cpp_generates(served: str, site: Path,
                                                               tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "apt-get install chromium (.ci/run does)"
    expected = native_text(site / "model" / shard(site, 1))
    assert expected == native_text(site / "original.gguf")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=FLAGS)
        try:
            page = context.new_page()
            page.goto(f"{served}/index.html")
            page.wait_for_function("window.proofReady === true", timeout=60_000)
            result = page.evaluate("([u, n, p]) => window.runProof(u, n, p)",
                                   [f"{served}/model/{shard(site, 1)}", N_PREDICT, PROMPT])
        finally:
            context.close()
    assert result["isolated"] is True  # COOP/COEP from teadist serve: wllama may use threads
    assert result["usage"]["completion_tokens"] == N_PREDICT
    assert result["text"] == expected, json.dumps(result)


def test_a_flipped_byte_is_refused_by_serve_verify(site: Path, tmp_path: Path) -> None:
    copy = tmp_path / "site"
    shutil.copytree(site / "model", copy / "model")
    victim = copy / "model" / shard(site, 2)
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0x01
    victim.write_bytes(bytes(raw))
    proc = subprocess.Popen([str(TEADIST_BIN), "serve", str(copy), "--port", "0", "--verify",
                             str(copy / "model" / "tiny-web.gguf.manifest.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/model/{victim.name}")
        assert info.value.code == 409
        ok = urllib.request.urlopen(f"{url}/model/{shard(site, 1)}")
        assert ok.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.stderr is not None
    assert f"REFUSED   model/{victim.name}" in proc.stderr.read()
    verify = subprocess.run([sys.executable, "-m", "teadist", "verify",
                             str(copy / "model" / "tiny-web.gguf.manifest.json")], capture_output=True, text=True)
    assert verify.returncode == 3 and victim.name in verify.stdout
