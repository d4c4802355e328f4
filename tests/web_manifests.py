"""Manifests for the browser model-cache tests: block hashes and release indexes.

Until issue 12 makes ``split`` write block hashes, the tests add them here with the same
algorithm: ``blocks[i]`` is the SHA-256 of bytes ``[i*block_size, (i+1)*block_size)`` of the file,
the last block short, ``ceil(size / block_size)`` of them (``[]`` for an empty file); a manifest
carrying them says ``schema_version`` "1.1".
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

TEST_BLOCK_SIZE = 65536


def block_hashes(path: Path, block_size: int) -> list[str]:
    out = []
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            out.append(hashlib.sha256(block).hexdigest())
    return out


def with_block_hashes(manifest: dict[str, Any], folder: Path, block_size: int = TEST_BLOCK_SIZE) -> dict[str, Any]:
    """A copy of ``manifest`` whose chunks (found by name in ``folder``) carry block hashes."""
    out = copy.deepcopy(manifest)
    out["schema_version"] = "1.1"
    for chunk in out.get("chunks", []):
        chunk["block_size"] = block_size
        chunk["blocks"] = block_hashes(folder / chunk["name"], block_size)
    return out


def release_index(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema_version": "1.0", "kind": "release-index", "repo": "tea/tea", "tag": "v0.0.1-test",
            "models": models, "files": []}


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path
