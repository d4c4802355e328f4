"""``teadist registry pin``: fill a registry entry's revision, size and sha256 from the Hub.

A pin is never weakened: a pinned value the Hub does not give, or gives differently (a sha256, a
size, a commit a pinned revision no longer resolves to), is an integrity error unless ``force``
accepts the Hub's values; even then a value the Hub does not give is kept, never erased.
``write`` edits the registry of a teadist source tree (``manifests/models/``, found from the
working folder upwards or named with ``registry_dir``), never the installed package's copy.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from teadist.errors import IntegrityError, NotFoundError, UsageError
from teadist.formats.manifest import FileRecord, HfSource

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def find_source_registry(start: Path) -> Path | None:
    """``manifests/models`` of the teadist checkout holding ``start``, if any."""
    start = start.resolve()
    for folder in (start, *start.parents):
        pyproject, models = folder / "pyproject.toml", folder / "manifests" / "models"
        if not (pyproject.is_file() and models.is_dir()):
            continue
        try:
            name = tomllib.loads(pyproject.read_text("utf-8"))["project"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if name == "teadist":
            return models
    return None


def _writable_registry(registry_dir: Path | None) -> Path:
    import teadist

    folder = registry_dir if registry_dir is not None else find_source_registry(Path.cwd())
    if folder is None:
        raise UsageError("no teadist source tree found from the working folder: --write edits a checkout's "
                         "manifests/models/, never the installed package",
                         hint="run it inside a teadist checkout, or pass --registry-dir manifests/models")
    if not folder.is_dir():
        raise NotFoundError(f"registry folder not found: {folder}")
    real = folder.resolve()
    if real.is_relative_to(Path(teadist.__file__).resolve().parent) or {"site-packages", "dist-packages"} & set(
            real.parts):
        raise UsageError(f"{folder} is inside the installed teadist package: refusing to edit it",
                         hint="pass --registry-dir with a checkout's manifests/models")
    return folder


def pin_entry(reference: str, options: Any, write: bool = False, force: bool = False,
              registry_dir: Path | None = None) -> dict[str, Any]:
    from teadist.sources import hub, registry

    if write or registry_dir is not None:
        folder = _writable_registry(registry_dir) if write else registry_dir
        assert folder is not None
        found = registry.find_in(folder, reference)
    else:
        found = registry.find(reference)
    if found is None:
        raise NotFoundError(f"unknown registry model {reference!r}")
    path, manifest = found
    hf = next((s for s in manifest.sources if isinstance(s, HfSource)), None)
    if hf is None:
        raise UsageError(f"{reference} has no Hub source to pin from")
    remote = hub.resolve(hf, options.endpoint, options.token)
    seen_sha256 = remote.sha256 if remote.sha256 and _SHA256_RE.match(remote.sha256) else None
    seen_size = remote.size if isinstance(remote.size, int) and remote.size >= 0 else None
    seen_commit = remote.commit if remote.commit and _COMMIT_RE.match(remote.commit) else None
    # a branch or tag name is no pin: resolving it to a commit is what pinning is for
    pinned_commit = hf.revision if hf.revision and _COMMIT_RE.match(hf.revision) else None
    problems = []
    for key, pinned, seen in (("sha256", manifest.file.sha256, seen_sha256), ("size", manifest.file.size, seen_size),
                              ("revision", pinned_commit, seen_commit)):
        if pinned is None:
            continue
        if seen is None:
            problems.append(f"the Hub gives no {key} (pinned: {pinned})")
        elif seen != pinned:
            problems.append(f"the Hub's {key} {seen} differs from the pinned {pinned}")
    if problems and not force:
        raise IntegrityError(f"{reference}: " + "; ".join(problems),
                             hint="a pin is never weakened: check upstream, then pass --force to take the Hub's "
                                  "values")
    # --force takes the Hub's values, but never erases a pinned value the Hub does not give
    sha256 = seen_sha256 or manifest.file.sha256
    size = seen_size if seen_size is not None else manifest.file.size
    revision = seen_commit or hf.revision
    changed = [key for key, before, after in (("sha256", manifest.file.sha256, sha256),
                                              ("size", manifest.file.size, size), ("revision", hf.revision, revision))
               if before != after]
    result: dict[str, Any] = {"model": manifest.reference, "revision": revision, "size": size, "sha256": sha256,
                              "changed": changed}
    if write:
        updated = replace(manifest, file=FileRecord(manifest.file.name, size, sha256),
                          sources=[replace(s, revision=revision) if s is hf else s for s in manifest.sources])
        registry.save_entry(path, updated)
        result["written"] = str(path)
    return result
