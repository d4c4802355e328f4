"""Secrets: with HF_TOKEN and GITHUB_TOKEN set to marker values, no output, log, error or request
to a foreign host contains them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TEADIST_BIN
from tests.servers import Fault, GitHubServer, HubServer, MirrorServer

pytestmark = pytest.mark.faults

HF_MARK = "hf_SECRET_MARKER_0123456789"
GH_MARK = "ghp_SECRET_MARKER_9876543210"


def test_no_output_or_foreign_request_carries_a_token(tmp_path: Path, tiny_model: Path,
                                                      campaign: Callable[..., None]) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    dist = tmp_path / "dist"
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}]}))
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub, \
            GitHubServer(repo="tea/tea", token=GH_MARK) as github:  # type: ignore[arg-type]
        assert isinstance(hub, HubServer) and isinstance(cdn, MirrorServer) and isinstance(github, GitHubServer)
        hub.add_repo("org/repo", {"tiny.gguf": served / "tiny.gguf"})
        cdn.add_fault(Fault("status", status=500))
        env = {**os.environ, "HF_TOKEN": HF_MARK, "GITHUB_TOKEN": GH_MARK, "HF_ENDPOINT": hub.url,
               "GITHUB_API_URL": github.api_url, "TEA_MODELS_DIR": str(tmp_path / "models"),
               "TEADIST_RETRY_BACKOFF": "0.01"}
        runs = [["--debug", "fetch", "hf://org/repo/tiny.gguf"], ["fetch", "hf://org/repo/missing.gguf"],
                ["fetch", "hf://nope/x/y.gguf", "--offline"], ["demo"],
                ["release", "prepare", "--tag", "v1.0.0", "--repo", "tea/tea", "--config", str(config),
                 "--out", str(dist)],
                ["--debug", "release", "publish", "--tag", "v1.0.0", "--repo", "tea/tea", "--dist", str(dist)],
                ["release", "publish", "--tag", "v1.0.0", "--repo", "tea/tea", "--dist", str(dist), "--dry-run"]]
        outputs = []
        for argv in runs:
            proc = subprocess.run([str(TEADIST_BIN), *argv], env=env, capture_output=True, text=True, timeout=120)
            outputs.append(proc.stdout + proc.stderr)
        github_ok = not github.releases[0].draft
        # tokens travel only to where they belong: the loopback Hub is not huggingface.co, so HF_TOKEN
        # goes nowhere; GITHUB_TOKEN goes only to the GitHub API server.
        foreign = [json.dumps(h) for h in hub.headers_seen() + cdn.headers_seen()]
    leaked_output = [o for o in outputs if HF_MARK in o or GH_MARK in o]
    leaked_request = [h for h in foreign if HF_MARK in h or GH_MARK in h]
    ok = not leaked_output and not leaked_request and github_ok
    campaign("secrets", "HF_TOKEN and GITHUB_TOKEN markers in 7 runs", ok, 0)
    assert ok, (leaked_output, leaked_request)
