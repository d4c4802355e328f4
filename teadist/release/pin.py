"""``teadist registry pin``: fill a registry entry's revision, size and sha256 from the Hub."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from teadist.errors import IntegrityError, NotFoundError, UsageError
from teadist.formats.manifest import FileRecord, HfSource


def pin_entry(reference: str, options: Any, write: bool = False) -> dict[str, Any]:
    from teadist.sources import hub, registry

    found = registry.find(reference)
    if found is None:
        raise NotFoundError(f"unknown registry model {reference!r}")
    path, manifest = found
    hf = next((s for s in manifest.sources if isinstance(s, HfSource)), None)
    if hf is None:
        raise UsageError(f"{reference} has no Hub source to pin from")
    remote = hub.resolve(hf, options.endpoint, options.token)
    for key, pinned, seen in (("sha256", manifest.file.sha256, remote.sha256), ("size", manifest.file.size,
                                                                                  remote.size)):
        if pinned is not None and seen is not None and pinned != seen:
            raise IntegrityError(f"{reference}: the Hub's {key} {seen} differs from the pinned {pinned}")
    result = {"model": manifest.reference, "revision": remote.commit, "size": remote.size, "sha256": remote.sha256}
    if write:
        manifest.file = FileRecord(manifest.file.name, remote.size, remote.sha256)
        manifest.sources = [replace(s, revision=remote.commit) if s is hf else s for s in manifest.sources]
        registry.save_entry(path, manifest)
        result["written"] = str(path)
    return result
