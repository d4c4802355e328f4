"""The names one writer of a file uses while it works on it: partials, their sidecars and block
maps, temp files. The cache layout hands these out per target (each target its own folder); a
destination outside the cache gets hidden names beside it. Nothing else invents such names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from teadist.base.fsutil import PART_SUFFIX, create_temp, ensure_private_dir

SIDECAR_SUFFIX = ".json"
BLOCK_MAP_SUFFIX = ".blocks"  # reserved: per-block SHA-256 of a partial (issue 12)


@dataclass(frozen=True)
class WorkFiles:
    """``final`` and the in-flight files of its writer: ``<folder>/<stem><kind>.<key16>.part`` (+ sidecar,
    block map) and ``<folder>/<stem>tmp.<random>.part``. ``folder`` is on ``final``'s file system."""

    final: Path
    folder: Path
    stem: str
    base: Path  # the folder below which ``folder`` may be created (symlinks refused below it)

    @classmethod
    def beside(cls, final: Path) -> WorkFiles:
        """For a destination outside the cache: hidden names in its own folder."""
        return cls(final, final.parent, f".{final.name}.", final.parent)

    def partial(self, key: str, kind: str = "download") -> Path:
        return self.folder / f"{self.stem}{kind}.{key[:16]}{PART_SUFFIX}"

    def sidecar(self, partial: Path) -> Path:
        return partial.with_name(partial.name + SIDECAR_SUFFIX)

    def block_map(self, partial: Path) -> Path:
        return partial.with_name(partial.name + BLOCK_MAP_SUFFIX)

    def ensure_folder(self) -> Path:
        relative = self.folder.relative_to(self.base).parts if self.folder != self.base else ()
        return ensure_private_dir(self.base, *relative)

    def new_temp(self) -> tuple[int, Path]:
        """A temp file for ``final``, created exclusively (never through a symlink)."""
        return create_temp(self.ensure_folder(), self.stem)
