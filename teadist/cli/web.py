"""``teadist web-assets``: the browser model cache and its example, copied out for a page's own build."""

from __future__ import annotations

from typing import Annotated

import typer

from teadist.cli.app import JsonOpt, QuietOpt, _emit_json, _reporter, app, echo


@app.command("web-assets")
def web_assets(
    folder: Annotated[str, typer.Argument(help="Folder to copy into (created if missing).")],
    force: Annotated[bool, typer.Option("--force", help="Replace files there that differ.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the browser model cache into FOLDER: model-cache.js, model-cache.d.ts, examples/index.html.

    \b
    model-cache.js is a plain ES module (no bundler needed): it downloads a release's models
    into OPFS or IndexedDB, verifies every byte against model-manifest.json, resumes, works
    offline and hands wllama the shards as Blobs. Identical files are left alone; files that
    differ are replaced only with --force (nothing is written otherwise).
    \b
    Example:
      teadist web-assets web/vendor/teadist
    """
    from pathlib import Path

    from teadist.api import copy_web_assets

    copied = copy_web_assets(folder, force=force)
    folder_path = Path(folder).expanduser()
    if as_json:
        _emit_json({"folder": str(folder), "files": [c.__dict__ for c in copied]})
        return
    for c in copied:
        echo(folder_path / c.path)
    changed = sum(c.action != "unchanged" for c in copied)
    _reporter(quiet).info(f"{changed} file(s) written, {len(copied) - changed} already up to date in {folder}")
