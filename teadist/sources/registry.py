"""The model registry: v1 manifests shipped in ``manifests/models/`` (inside the wheel).

A model is named ``NAME`` (its default tag) or ``NAME:TAG`` (e.g. ``phi-4-mini:q4_k_m``).
"""

from __future__ import annotations

import stat
from functools import cache
from pathlib import Path

from teadist.errors import ManifestError, NotFoundError
from teadist.formats.manifest import Manifest, load_manifest, resource_dir, write_manifest


def registry_dir() -> Path:
    return resource_dir() / "models"


@cache
def _entries() -> tuple[tuple[Path, Manifest], ...]:
    folder = registry_dir()
    return tuple((p, load_manifest(p)) for p in sorted(folder.glob("*.json")))


def entries() -> list[Manifest]:
    return [m for _, m in _entries()]


def find(reference: str) -> tuple[Path, Manifest] | None:
    return _match(_entries(), reference)


def find_in(folder: Path, reference: str) -> tuple[Path, Manifest] | None:
    """``find`` in another registry folder (e.g. a source checkout's ``manifests/models``)."""
    paths = sorted(folder.glob("*.json"))
    for path in paths:  # a FIFO would block the read below forever
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise ManifestError(f"{path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise ManifestError(f"{path} is not a regular file", hint="a registry folder holds JSON files only")
    return _match(tuple((p, load_manifest(p)) for p in paths), reference)


def _match(found: tuple[tuple[Path, Manifest], ...], reference: str) -> tuple[Path, Manifest] | None:
    name, _, tag = reference.lower().partition(":")
    for path, manifest in found:
        if manifest.name.lower() != name:
            continue
        if (tag and (manifest.tag or "").lower() == tag) or (not tag and (manifest.default_tag or not manifest.tag)):
            return path, manifest
    return None


def lookup(reference: str) -> Manifest:
    found = find(reference)
    if found is None:
        names = sorted({m.reference for m in entries()})
        raise NotFoundError(f"unknown model {reference!r}", hint="known models: " + ", ".join(names))
    return found[1]


def lookup_filename(name: str) -> str | None:
    """The upstream file name of a registry model, or ``name`` itself if it is a .gguf file name."""
    found = find(name)
    if found is not None:
        return found[1].file.name
    return name if name.endswith(".gguf") and "/" not in name else None


def save_entry(path: Path, manifest: Manifest) -> None:
    write_manifest(manifest, path)
    _entries.cache_clear()
