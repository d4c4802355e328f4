"""8 processes fetching and assembling the same models at once; then `verify` on the whole cache."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.tinymodel import make_tiny_model
from teadist.pipelines.split import split_file
from tests.conftest import TEADIST_BIN
from tests.servers import HubServer, MirrorServer

pytestmark = pytest.mark.faults


def test_eight_processes_fetch_and_assemble_the_same_models(tmp_path: Path, campaign: Callable[..., None]) -> None:
    served = tmp_path / "served"
    make_tiny_model(served / "a.gguf", seed=1, n_embd=128, n_layer=4)
    b = make_tiny_model(tmp_path / "b-src" / "b.gguf", seed=2, n_embd=128, n_layer=4)
    split_file(b, tmp_path / "b-dist", NullReporter(), chunk_size=300_000)
    models = tmp_path / "models"
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:  # type: ignore[arg-type]
        assert isinstance(hub, HubServer) and isinstance(cdn, MirrorServer)
        hub.add_repo("org/repo", {"a.gguf": served / "a.gguf"})
        env = {**os.environ, "HF_ENDPOINT": hub.url, "TEA_MODELS_DIR": str(models)}
        jobs = [["fetch", "hf://org/repo/a.gguf"], ["assemble", str(tmp_path / "b-dist" / "b.gguf.manifest.json")]] * 4

        def run(argv: list[str]) -> int:
            return subprocess.run([str(TEADIST_BIN), *argv], env=env, capture_output=True, timeout=120).returncode

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(run, jobs))
        downloads = len([r for r in cdn.requests if r.method == "GET"])
    verify = subprocess.run([str(TEADIST_BIN), "verify", "--json"], env=env, capture_output=True, text=True)
    files = sorted(p.name for p in models.iterdir() if p.is_file() and not p.name.startswith("."))
    ok = codes == [0] * 8 and verify.returncode == 0 and files == ["a.gguf", "b.gguf"] and downloads == 1
    campaign("concurrency", "8 processes, 2 models, fetch + assemble", ok, 0)
    assert ok, (codes, verify.stdout, files, downloads)
