"""The model registry: v1 manifests shipped in ``manifests/models/``."""

from __future__ import annotations


def lookup_filename(name: str) -> str | None:
    """The upstream file name of a registry model, or ``name`` itself if it is a .gguf file name."""
    return name if name.endswith(".gguf") and "/" not in name else None
