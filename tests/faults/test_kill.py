"""SIGKILL at random points during fetch, assemble, split and release publish: after each, a
re-run completes, the result verifies, and no partial file ever sits at a final path."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.formats.tinymodel import make_tiny_model
from teadist.release.index import RELEASE_MANIFEST
from tests.conftest import TEADIST_BIN
from tests.servers import Fault, GitHubServer, HubServer, MirrorServer
from tests.test_release import expected_published_index

POINTS = 10
RNG = random.Random(20261122)
pytestmark = pytest.mark.faults


def sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def kill_when(argv: list[str], env: dict[str, str], ready: Callable[[], bool], limit: float = 60) -> bool:
    """Start ``argv``, SIGKILL it as soon as ``ready()``; True only if it died of that signal
    (False if it finished first: then the test did not test what it says)."""
    proc = subprocess.Popen([str(TEADIST_BIN), *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            return proc.wait() == -signal.SIGKILL
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    return False


def _partial_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.part")) if folder.exists() else 0


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TEADIST_BIN), *argv], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("kill") / "victim.gguf", seed=9, n_embd=256, n_layer=6)


def _final_is_clean(final: Path, expected: str) -> bool:
    return not final.exists() or sha(final) == expected


@pytest.mark.parametrize("point", range(POINTS))
def test_kill_fetch(point: int, model: Path, tmp_path: Path, campaign: Callable[..., None]) -> None:
    size = model.stat().st_size
    served = tmp_path / "served"
    served.mkdir()
    (served / model.name).write_bytes(model.read_bytes())
    cut = RNG.randrange(size // 20, size - size // 20)
    parallel = point % 2 == 1
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:  # type: ignore[arg-type]
        assert isinstance(hub, HubServer) and isinstance(cdn, MirrorServer)
        hub.add_repo("org/repo", {model.name: served / model.name})
        # ranges: 1 MiB blocks, so each request (two blocks) holds its stall point; four connections
        cdn.add_fault(Fault("stall", after=cut // (8 if parallel else 1), seconds=60, times=4 if parallel else 1))
        env = {**os.environ, "HF_ENDPOINT": hub.url, "TEA_MODELS_DIR": str(tmp_path / "models"),
               "TEADIST_STALL_TIMEOUT": "60", "TEADIST_RANGE_ALIGN": str(2**20 if parallel else 2**40)}
        final = tmp_path / "models" / model.name
        target = cut // (8 if parallel else 1) * (3 if parallel else 1)
        jobs = ["--jobs", "4"] if parallel else []
        killed = kill_when(["fetch", f"hf://org/repo/{model.name}", "-q", *jobs], env,
                           lambda: cdn.bytes_sent >= target)
        clean_after_kill = not final.exists()
        cdn.faults.clear()
        env["TEADIST_STALL_TIMEOUT"] = "5"
        again = run(["fetch", f"hf://org/repo/{model.name}"], env)
        survived = killed and clean_after_kill and again.returncode == 0 and sha(final) == sha(model)
        campaign("SIGKILL during fetch", f"{'ranges' if parallel else 'stream'} at byte {cut}", survived,
                 0 if _final_is_clean(final, sha(model)) else 1)
        assert survived, again.stderr
        assert cdn.bytes_sent < 2.2 * size


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "big.gguf"
    with open(path, "wb") as fh:
        for i in range(96):
            fh.write(os.urandom(1024 * 1024) if i % 16 == 0 else bytes([i]) * (1024 * 1024))
    return path, sha(path)


@pytest.mark.parametrize("point", range(POINTS))
def test_kill_split_and_assemble(point: int, big: tuple[Path, str], tmp_path: Path,
                                 campaign: Callable[..., None]) -> None:
    """Killed at a random point of its progress (chunks written, bytes assembled), never by a timer
    that a fast run could beat: each kill is checked to have happened."""
    src, digest = big
    env = dict(os.environ)
    out = tmp_path / "chunks"
    after = RNG.randrange(1, 20)  # of 24 chunks
    killed = kill_when(["split", str(src), "-s", "4MiB", "-o", str(out), "-q"], env,
                       lambda: len(list(out.glob("big.gguf.part-*"))) >= after)
    manifest = out / "big.gguf.manifest.json"
    clean = not manifest.exists() or run(["verify", str(manifest)], env).returncode == 0
    again = run(["split", str(src), "-s", "4MiB", "-o", str(out), "--json"], env)
    ok_split = again.returncode == 0 and json.loads(again.stdout)["file"]["sha256"] == digest \
        and run(["verify", str(manifest)], env).returncode == 0
    campaign("SIGKILL during split", f"after {after} chunks", killed and ok_split and clean, 0 if clean else 1)
    assert killed, "split finished before the kill"
    assert ok_split and clean, again.stderr

    models = tmp_path / "models"
    final = models / "big.gguf"
    cut = RNG.randrange(4, 80) * 2**20  # of 96 MiB
    killed = kill_when(["assemble", str(manifest), "--cache-dir", str(models), "-q"], env,
                       lambda: _partial_bytes(models) >= cut)
    clean = _final_is_clean(final, digest)
    again = run(["assemble", str(manifest), "--cache-dir", str(models)], env)
    ok_asm = again.returncode == 0 and sha(final) == digest
    campaign("SIGKILL during assemble", f"after {cut >> 20} MiB", killed and ok_asm and clean, 0 if clean else 1)
    assert killed, "assemble finished before the kill"
    assert ok_asm and clean, again.stderr


@pytest.mark.parametrize("point", range(POINTS))
def test_kill_release_publish(point: int, model: Path, tmp_path: Path, campaign: Callable[..., None]) -> None:
    dist = tmp_path / "dist"
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(model), "name": "victim"}], "chunk_size": "600k"}))
    env = {**os.environ, "GITHUB_TOKEN": "test-token-value"}
    assert run(["release", "prepare", "--tag", "v1.0.0", "--repo", "tea/tea", "--config", str(config),
                "--out", str(dist)], env).returncode == 0
    with GitHubServer(repo="tea/tea", token="test-token-value") as github:
        assert isinstance(github, GitHubServer)
        env["GITHUB_API_URL"] = github.api_url
        # kill before the last upload, so the kill always lands while publish still has work to do
        uploads_before_kill = RNG.randrange(0, len(list(dist.iterdir())))
        argv = ["release", "publish", "--tag", "v1.0.0", "--repo", "tea/tea", "--dist", str(dist), "-q"]
        killed = kill_when(argv, env, lambda: github.uploads >= uploads_before_kill)
        never_incomplete = all(r.draft or len(r.assets) == len(list(dist.iterdir())) for r in github.releases)
        again = run(argv, env)
        [release] = github.releases
        local = {p.name: "sha256:" + sha(p) for p in dist.iterdir() if p.name != RELEASE_MANIFEST}
        remote = {a.name: a.digest for a in release.assets if a.state == "uploaded"}
        # the index as published: the local one with each chunk's asset API URL (issue 13)
        index = [a.data for a in release.assets if a.name == RELEASE_MANIFEST and a.state == "uploaded"]
        index_ok = len(index) == 1 and json.loads(index[0]) == expected_published_index(
            (dist / RELEASE_MANIFEST).read_bytes(), {a.name: a.id for a in release.assets}, github.api_url)
        remote.pop(RELEASE_MANIFEST, None)
        survived = (killed and again.returncode == 0 and not release.draft and remote == local and index_ok
                    and never_incomplete)
        campaign("SIGKILL during release publish", f"after {uploads_before_kill} uploads", survived,
                 len(set(local) - set(remote)))
        assert killed, "publish finished before the kill"
        assert survived, again.stderr
