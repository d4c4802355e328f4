"""Commands on the model cache: list, path, rm, fetch, models, du, prune."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _emit_json, _reporter, _settings, app, echo


@app.command("list")
def list_models(
    name: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="Only this model: registry name (with or without its tag), cached name, or file name.")] = None,
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False,
) -> None:
    """List the models in the TEA model cache, with size, last use and last verification.

    \b
    Files a model's record lists but that are gone are shown as missing; records that cannot be
    read are shown as damaged (`teadist rm FILE` removes them).
    \b
    Examples:
      teadist list --json
      teadist list phi-4-mini
    """
    from teadist.api import list_models

    listing = list_models(name, settings=_settings(cache_dir))
    if as_json:
        _emit_json({"cache": str(listing.cache), "models": [m.to_dict() for m in listing.models],
                    "damaged": [{"record": str(path_), "problem": problem} for path_, problem in listing.damaged],
                    "unrecorded": [str(path_) for path_, _ in listing.unrecorded]})
        return
    if not listing.models and not listing.unrecorded and not listing.damaged:
        _reporter(quiet).info(f"no models in {listing.cache}")
        return
    echo(f"{'NAME':<28} {'SIZE':>10}  {'LAST USED':<25} {'VERIFIED':<25} FILE")
    for m in listing.models:
        note = f"  ({len(m.files)} shards)" if len(m.files) > 1 else ""
        note += f"  (missing: {', '.join(m.missing)})" if m.missing else ""
        echo(f"{m.name:<28} {format_size(m.size or 0):>10}  {m.last_used or '-':<25} {m.verified_at or '-':<25} "
             f"{m.file}{note}")
    for path_, size in listing.unrecorded:
        echo(f"{'(not installed by teadist)':<28} {format_size(size):>10}  {'-':<25} {'-':<25} {path_.name}")
    for path_, problem in listing.damaged:
        echo(f"{'(damaged record)':<28} {'-':>10}  {'-':<25} {'-':<25} {path_.name}: {problem}")


@app.command()
def path(name: Annotated[str, typer.Argument(help="Registry name (with or without its tag), cached model name, "
                                              "or file name.")],
         cache_dir: CacheDirOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Print the model path the TEA runtimes would use: TEA_MODEL_PATH, $APPDIR, then the cache.

    \b
    From the cache only a model teadist installed and that is unchanged since it was verified;
    each lookup counts as a use (`teadist prune` evicts least recently used first). Exits 1 if
    the model is in none of them.
    \b
    Example:
      llama-cli -m "$(teadist path phi-4-mini)"
    """
    from teadist.api import find_model

    found, origin = find_model(name, settings=_settings(cache_dir))
    if as_json:
        _emit_json({"path": str(found), "from": origin})
    else:
        echo(found)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Registry name, cached model name, or file name in the cache.")],
       cache_dir: CacheDirOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Remove a model (all its files, and teadist's record of it) from the cache.

    \b
    Also finishes an interrupted removal, and removes a damaged record (by file name).
    \b
    Example:
      teadist rm phi-4-mini
    """
    from teadist.api import remove

    removed = remove(name, settings=_settings(cache_dir))
    if as_json:
        _emit_json({"removed": [str(p) for p in removed]})
    else:
        for p in removed:
            echo(p)
        _reporter(quiet).info(f"removed {len(removed)} files")


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(
        help="Registry name (phi-4-mini, phi-4-mini:q4_k_m), hf://ORG/REPO/FILE[@REV], or a manifest URL/path.")],
    source: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--source", help="Use only this source: 1-based index (for chunks: of each chunk's sources), 'hf', 'url' "
                         "or a URL prefix.")] = None,
    jobs: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--jobs", "-j", min=1, max=32,
        help="Connections per host, fixed (default: grows with the measured throughput, up to 16 "
             "[env: TEADIST_MAX_CONNECTIONS]).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Use the cache only [env: TEA_OFFLINE=1 or HF_HUB_OFFLINE=1].")] = False,
    keep_shards: Annotated[bool, typer.Option(
        "--keep-shards", help="gguf manifests: install the verified shards as they are.")] = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a model, verify its SHA-256 and install it in the TEA model cache.

    \b
    Resumes after an interruption, retries with backoff, falls back to the next source on
    a network error, a 404 or a hash mismatch, and prints the installed path. A bare word
    is a model's name; write ./NAME for a file of that name in the current folder. Large files
    come as byte ranges on several connections: more while the throughput still grows, fewer
    when the server says 429/503; the last ranges are split so no slow stream holds up the end.
    \b
    Examples:
      teadist fetch phi-4-mini
      teadist fetch phi-4-mini:q4_k_m
      teadist fetch hf://ggml-org/tiny-llamas/stories260K.gguf
      teadist fetch https://github.com/OWNER/REPO/releases/download/v1.0.0/model-manifest.json
    """
    from teadist.api import fetch_model

    settings = _settings(cache_dir, offline=True if offline else None)
    reporter = _reporter(quiet, as_json)
    result = fetch_model(model, source=source, progress=reporter, jobs=jobs, keep_shards=keep_shards,
                         settings=settings)
    if as_json:
        _emit_json({"name": result.name, "file": result.path.name, "path": str(result.path),
                    "size": result.size, "sha256": result.sha256, "already_present": result.already_present,
                    "source": result.source})
        return
    if result.already_present:
        reporter.info(f"{result.name} is already in the cache (verified {result.sha256[:16]}…)")
    else:
        reporter.info(f"installed {result.name} ({format_size(result.size)}), sha256 verified")
    echo(result.path)


@app.command()
def models(cache_dir: CacheDirOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """List the models of the registry, their size and whether they are cached.

    \b
    Example:
      teadist models
    """
    from teadist.api import registry_models

    entries, memory = registry_models(settings=_settings(cache_dir))
    if as_json:
        _emit_json({"models": [e.to_dict() for e in entries], "memory": memory})
        return
    echo(f"{'MODEL':<32} {'SIZE':>10}  {'CACHED':<7} {'FITS':<8} FILE")
    for e in entries:
        size = format_size(e.size) if e.size is not None else "unpinned"
        label = e.name + (" (default)" if e.default else "")
        echo(f"{label:<32} {size:>10}  {'yes' if e.cached else 'no':<7} {e.fits or '?':<8} {e.file}")
    if memory is not None and not quiet:
        echo(f"FITS: the weights against this machine's {format_size(memory)} of memory (tight: over 3/4 of it); "
             "`teadist inspect FILE --ctx N` adds the KV cache", err=True)


@app.command()
def du(
    name: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="Only this model: registry name (with or without its tag), cached name, or file name.")] = None,
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False,
) -> None:
    """Show the space each cached model uses (kept shards included), downloads in flight, and free space.

    \b
    Examples:
      teadist du
      teadist du phi-4-mini
    """
    from teadist.api import disk_usage

    usage = disk_usage(name, settings=_settings(cache_dir))
    if as_json:
        _emit_json({"cache": str(usage.cache), "models": [m.to_dict() for m in usage.models],
                    "partials": usage.partials, "total": usage.total, "free": usage.free})
        return
    for m in usage.models:
        echo(f"{format_size(m.size or 0):>10}  {m.name}  ({m.file})")
    echo(f"{format_size(usage.partials):>10}  partial downloads")
    echo(f"{format_size(usage.total + usage.partials):>10}  total in {usage.cache}")
    echo(f"{format_size(usage.free):>10}  free on disk")


@app.command()
def prune(
    max_size: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--max-size", help="Evict least recently used models until the cache fits, e.g. 20G.")] = None,
    partials: Annotated[bool, typer.Option("--partials", help="Remove stale partial downloads.")] = False,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Free space in the model cache; whatever another teadist is working on is left alone.

    \b
    Examples:
      teadist prune --max-size 20G
      teadist prune --partials
    """
    from teadist.api import prune as run_prune
    from teadist.base.sizes import parse_size

    removed = [str(p) for p in run_prune(max_size=None if max_size is None else parse_size(max_size),
                                         partials=partials, settings=_settings(cache_dir))]
    if as_json:
        _emit_json({"removed": removed})
    else:
        for path_ in removed:
            echo(path_)
        _reporter(quiet).info(f"removed {len(removed)} files")
