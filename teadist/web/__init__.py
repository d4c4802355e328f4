"""The browser half, shipped as package data: ``model-cache.js`` (a plain ES module), its
hand-written ``model-cache.d.ts`` and an example page (``examples/index.html``).

``asset_files`` lists them; ``copy_assets`` writes them into a folder for pages with their own
build (``teadist web-assets``). ``package-wasm`` and ``serve`` are to take them from
``asset_files`` too, so the wheel, the wasm tarball and the served pages carry the same bytes.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

from teadist.base.fsutil import atomic_write
from teadist.errors import NotFoundError, TeadistError, UsageError

# Relative paths (POSIX) inside this package and inside a copy; the example imports ../model-cache.js.
ASSETS = ("model-cache.js", "model-cache.d.ts", "examples/index.html")


@dataclass(frozen=True)
class CopiedAsset:
    path: str  # relative to the destination folder
    size: int
    sha256: str
    action: str  # written | replaced | unchanged


def asset_dir() -> Path:
    return Path(__file__).resolve().parent


def asset_files() -> dict[str, Path]:
    """Relative path → file, for every web asset; NotFoundError when the install lacks one."""
    root = asset_dir()
    files = {rel: root.joinpath(*rel.split("/")) for rel in ASSETS}
    missing = [rel for rel, path in files.items() if not path.is_file()]
    if missing:
        raise NotFoundError(f"teadist's web assets are missing from {root}: {', '.join(missing)}",
                            hint="reinstall teadist")
    return files


def _existing(target: Path) -> bytes | None:
    """The bytes already at ``target`` (None: nothing there); refuse what is not a plain file."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return b"\0link"  # never equal to an asset: replaced only with --force, never written through
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{target} exists and is not a file")
    return target.read_bytes()


def copy_assets(dest: Path, force: bool = False) -> list[CopiedAsset]:
    """Copy the web assets into ``dest``. Everything is checked before anything is written: a file
    there that differs is an error unless ``force``; an identical one is left alone."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder")
    plan: list[tuple[str, bytes, Path, str]] = []
    conflicts = []
    for rel, source in asset_files().items():
        data = source.read_bytes()
        target = dest.joinpath(*rel.split("/"))
        for parent in list(target.relative_to(dest).parents)[:-1]:
            folder = dest / parent
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise UsageError(f"{folder} is a link or not a folder; refusing to write through it")
        existing = _existing(target)
        if existing is None:
            plan.append((rel, data, target, "written"))
        elif existing == data:
            plan.append((rel, data, target, "unchanged"))
        else:
            conflicts.append(str(target))
            plan.append((rel, data, target, "replaced"))
    if conflicts and not force:
        raise TeadistError(f"refusing to replace {len(conflicts)} file(s) that differ: {', '.join(conflicts)}; "
                           "nothing was written", hint="pass --force to replace them with this teadist's version")
    out = []
    for rel, data, target, action in plan:
        if action != "unchanged":
            with atomic_write(target) as fh:  # temp file beside it, renamed into place
                fh.write(data)
        out.append(CopiedAsset(rel, len(data), hashlib.sha256(data).hexdigest(), action))
    return out
