"""``teadist repair``: re-fetch only the damaged blocks of cached models."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _emit_json, _reporter, _settings, app, echo


@app.command()
def repair(
    name: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="A cached model's name or file name; none: every model in the cache.")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="No network: only sources on this machine (a local manifest's chunks).")] = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify cached models block by block and re-fetch only the damaged blocks.

    \b
    Each damaged block is fetched with a Range request from where the model came from (the Hub
    file at its commit, a mirror, or the chunks/shards of its manifest, falling back in order),
    checked against its block hash, and written under the model's lock; the whole sha256 is
    checked again at the end. A model with no source to repair from (offline, assembled by hand)
    is left unchanged. Exits 3 if a model cannot be made whole.
    \b
    Examples:
      teadist repair phi-4-mini
      teadist repair --json          # every cached model: {blocks_bad, blocks_refetched, bytes_fetched}
    """
    from teadist.api import repair as run_repair

    reporter = _reporter(quiet, as_json)
    results = run_repair(name, progress=reporter, settings=_settings(cache_dir, offline=True if offline else None))
    if as_json:
        totals = {key: sum(getattr(r, key) for r in results)
                  for key in ("blocks_bad", "blocks_refetched", "bytes_fetched")}
        _emit_json({**totals, "models": [r.to_dict() for r in results]})
        return
    for result in results:
        if result.blocks_bad:
            reporter.info(f"repaired {result.name}: {result.blocks_refetched} of {result.blocks_bad} damaged blocks "
                          f"fetched again ({format_size(result.bytes_fetched)}); verified")
        else:
            reporter.info(f"{result.name}: every block verified; nothing to repair")
        echo(result.path)
