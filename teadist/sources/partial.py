"""A partial download beside its destination, and its small JSON sidecar (validator, ranges done)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from teadist.base.fsutil import PART_SUFFIX, is_disk_full, remove_quietly
from teadist.errors import DiskSpaceError


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    """Temp-then-rename, without fsync: it is rewritten often, and a sidecar lost to a power cut
    only costs a re-download (the final hash check still guards the file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), "utf-8")
    os.replace(tmp, path)

def partial_path_for(dest: Path, key: str) -> Path:
    return dest.parent / f".{dest.name}.{key[:16]}{PART_SUFFIX}"

def raise_if_disk_full(exc: OSError, partial: Path, sidecar: Path, label: str, size: int | None) -> None:
    if is_disk_full(exc):
        remove_quietly(partial)
        remove_quietly(sidecar)
        raise DiskSpaceError(f"disk full while downloading {label} to {partial.parent}",
                             hint=f"free at least {size or 'the model size'} bytes") from None


def bytes_done(partial: Path, sidecar: Path) -> int:
    if not partial.exists():
        return 0
    segments = read_sidecar(sidecar).get("segments")
    if isinstance(segments, list):
        return sum(int(seg[2]) - int(seg[0]) for seg in segments)
    return partial.stat().st_size
