"""For browser work: a static server (its files checked against a manifest first) and the browser
model cache's files copied out."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teadist.api.guard import boundary, text_arg
from teadist.api.progress import Progress, reporter_for
from teadist.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from teadist.pipelines.serve import StaticServer
    from teadist.web import CopiedAsset


@boundary
def open_server(folder: Path | str, *, verify_manifest: Path | str | None = None, host: str = "127.0.0.1",
                port: int = 8000, timeout: float = 30.0, cors: bool = False, progress: Progress = None) -> Serving:
    """A static server for browser work, bound and ready; with ``verify_manifest`` its files are hashed
    first and a file that fails is never served."""
    import math

    from teadist.formats.manifest import load_manifest
    from teadist.pipelines.serve import MAX_TIMEOUT, MIN_TIMEOUT, StaticServer
    from teadist.web import asset_files

    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        raise UsageError(f"--timeout must be seconds between {MIN_TIMEOUT:g} and {MAX_TIMEOUT:g}, not {timeout!r}")
    root = Path(text_arg(folder, "folder"))
    if not root.is_dir():
        raise NotFoundError(f"folder not found: {root}")
    manifest_path = None if verify_manifest is None else Path(text_arg(verify_manifest, "verify_manifest"))
    if manifest_path is not None:  # a FIFO would block the read forever
        try:
            regular = stat.S_ISREG(manifest_path.stat().st_mode)
        except OSError:
            raise NotFoundError(f"manifest not found: {manifest_path}") from None
        if not regular:
            raise UsageError(f"--verify {manifest_path} is not a regular file")
    manifest = load_manifest(manifest_path) if manifest_path is not None else None
    server = StaticServer(root, manifest, host=host, port=port, timeout=timeout, reporter=reporter_for(progress),
                          manifest_dir=manifest_path.parent if manifest_path is not None else None,
                          assets=asset_files(), cors=cors)
    checks: list[tuple[str, str]] = []
    if manifest is not None:
        verdicts = server.verify_all()
        checks = [("OK" if good else "REFUSED", name) for name, good in sorted(verdicts.items())]
        checks += [("MISSING", name) for name in sorted(set(server.expected) - set(verdicts))
                   if not name.endswith("/" + manifest.file.name) and name != manifest.file.name]
    return Serving(server, checks)


@dataclass(frozen=True)
class Serving:
    """A bound server (``server.serve_forever()`` runs it) and, with a manifest, each listed file's
    verdict: OK, REFUSED (fails the manifest: never served) or MISSING."""

    server: StaticServer
    checks: list[tuple[str, str]]


@boundary
def copy_web_assets(folder: Path | str, *, force: bool = False) -> list[CopiedAsset]:
    """Copy the browser model cache (model-cache.js, its .d.ts, examples/index.html) into ``folder``."""
    from teadist.settings import folder_setting
    from teadist.web import copy_assets

    return copy_assets(folder_setting(folder, "FOLDER"), force=force)
