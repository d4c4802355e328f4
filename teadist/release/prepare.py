"""``release prepare``: split every configured model with tag-based URLs, write the release index."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teadist.base.fsutil import write_bytes_atomic
from teadist.base.progress import Reporter
from teadist.errors import NotFoundError, UsageError
from teadist.release.index import INDEX_KIND, RELEASE_MANIFEST, check_repo_and_tag, download_base, validate_index


@dataclass
class PreparedRelease:
    dist: Path
    index: dict[str, Any]
    assets: list[Path]


def load_release_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"release config not found: {path}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("models"), list):
        raise UsageError(f"{path}: needs a 'models' list")
    for i, model in enumerate(config["models"]):
        if not isinstance(model, dict) or not ({"model", "file"} & set(model)):
            raise UsageError(f"{path}: models[{i}] needs 'model' (a registry name) or 'file' (a path)")
    return config


def prepare_release(tag: str, repo: str, config_path: Path, dist: Path, reporter: Reporter,
                    get_model: Callable[[str], Path], files: dict[str, Path] | None = None) -> PreparedRelease:
    """Split every configured model into DIST with tag-based URLs and write ``model-manifest.json``."""
    from teadist.base.sizes import parse_size
    from teadist.pipelines.split import DEFAULT_CHUNK_SIZE, split_file

    check_repo_and_tag(repo, tag)
    config = load_release_config(config_path)
    chunk_size = config.get("chunk_size", DEFAULT_CHUNK_SIZE)
    chunk_size = parse_size(chunk_size) if isinstance(chunk_size, str) else int(chunk_size)
    dist.mkdir(parents=True, exist_ok=True)
    base = download_base(repo, tag)
    models: list[dict[str, Any]] = []
    for entry in config["models"]:
        if "file" in entry:
            path = (files or {}).get(entry["file"]) or (config_path.parent / entry["file"])
            if not path.is_file():
                raise NotFoundError(f"model file not found: {path}")
        else:
            path = get_model(entry["model"])
        name = entry.get("name") or (entry["model"].split(":")[0] if "model" in entry else None)
        result = split_file(path, dist, reporter, chunk_size=chunk_size, name=name, base_url=base)
        models.append(result.manifest.to_dict())
        reporter.info(f"{result.manifest.file.name}: {len(result.manifest.chunks)} chunks in {dist}")
    extra = []
    for tarball in sorted(dist.glob("tea-wasm-llm-*.tar.gz")):
        from teadist.base.hashing import hash_range

        digest, size = hash_range(tarball)
        extra.append({"name": tarball.name, "size": size, "sha256": digest, "url": f"{base}/{tarball.name}"})
    index = {"schema_version": "1.0", "kind": INDEX_KIND, "repo": repo, "tag": tag, "models": models,
             "files": extra}
    validate_index(index)
    write_bytes_atomic(dist / RELEASE_MANIFEST, (json.dumps(index, indent=2) + "\n").encode())
    return PreparedRelease(dist, index, release_assets(dist))



def release_assets(dist: Path) -> list[Path]:
    """Files to upload, the release manifest last (its presence means the release is complete)."""
    files = [p for p in sorted(dist.iterdir()) if p.is_file() and not p.name.startswith(".")]
    files.sort(key=lambda p: (p.name == RELEASE_MANIFEST, p.name.endswith(".manifest.json"), p.name))
    return files

