"""Commands on the model cache: list, path, rm, fetch, models, du, prune."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _cache, _emit_json, _reporter, _settings, app, echo
from teadist.errors import NotFoundError, UsageError


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
    from teadist.pipelines.prune import model_bytes

    cache = _cache(_settings(cache_dir))
    scan = cache.scan()
    rows = []
    for model in _only(cache, name, scan.models):
        missing = [m.filename for m in model.members if not cache.path_for(m.filename).is_file()]
        size = sum(m.size if m.size is not None else 0 for m in model.members) or model_bytes(cache, model)
        rows.append((model, missing, size))
    if name is not None:  # one model: nothing else in the cache is shown
        scan.unrecorded, scan.damaged = [], []
    if as_json:
        _emit_json({"cache": str(cache.root),
                    "models": [{**model.head.to_dict(), "file": model.head.filename,
                                "path": str(cache.path_for(model.head.filename)), "size": size,
                                "files": model.filenames, "missing": missing}
                               for model, missing, size in rows],
                    "damaged": [{"record": str(d.path), "problem": d.problem} for d in scan.damaged],
                    "unrecorded": [str(p) for p in scan.unrecorded]})
        return
    if not rows and not scan.unrecorded and not scan.damaged:
        _reporter(quiet).info(f"no models in {cache.root}")
        return
    echo(f"{'NAME':<28} {'SIZE':>10}  {'LAST USED':<25} {'VERIFIED':<25} FILE")
    for model, missing, size in rows:
        r = model.head
        note = f"  ({len(model.members)} shards)" if len(model.members) > 1 else ""
        note += f"  (missing: {', '.join(missing)})" if missing else ""
        echo(f"{r.name:<28} {format_size(size):>10}  {r.last_used or '-':<25} {r.verified_at or '-':<25} "
             f"{r.filename}{note}")
    for p in scan.unrecorded:
        echo(f"{'(not installed by teadist)':<28} {format_size(p.stat().st_size):>10}  {'-':<25} {'-':<25} {p.name}")
    for d in scan.damaged:
        echo(f"{'(damaged record)':<28} {'-':>10}  {'-':<25} {'-':<25} {d.path.name}: {d.problem}")


def _only(cache: Any, name: str | None, models: list[Any]) -> list[Any]:
    """All ``models``, or the one ``name`` names (by the resolver's rules); not found is exit 1."""
    if name is None:
        return models
    from teadist.pipelines.resolve import classify, find_cached

    classify(name, cache, takes_paths=False)
    found = find_cached(cache, name)
    if found is None:
        raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
    return [m for m in models if m.head.filename == found.head.filename]


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
    from teadist.pipelines.resolve import classify, find_cached

    cache = _cache(_settings(cache_dir))
    classify(name, cache, takes_paths=False)
    model = find_cached(cache, name)
    if model is not None:
        removed = cache.remove(model) or []
    else:
        damaged = cache.find_damaged(name)
        if damaged is None:
            raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
        removed = cache.remove_damaged(damaged)
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
        "--source", help="Use only this source: 1-based index, 'hf', 'url' or a URL prefix.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=32,
                                      help="Parallel downloads: chunks, or byte ranges of a large file.")] = 4,
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
    is a model's name; write ./NAME for a file of that name in the current folder.
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
    from teadist.sources import registry

    cache = _cache(_settings(cache_dir))
    from teadist.pipelines.fit import machine_memory, verdict

    memory = machine_memory()
    rows: list[dict[str, Any]] = []
    for m in registry.entries():
        record = cache.read_record(m.file.name)
        cached = record is not None and cache.is_current(record) and m.file.sha256 in (None, record.sha256)
        rows.append({"name": m.reference, "default": bool(m.tag and m.default_tag), "file": m.file.name,
                     "size": m.file.size, "sha256": m.file.sha256, "pinned": m.is_pinned, "cached": cached,
                     "fits": verdict(m.file.size, memory)})
    if as_json:
        _emit_json({"models": rows, "memory": memory})
        return
    echo(f"{'MODEL':<32} {'SIZE':>10}  {'CACHED':<7} {'FITS':<8} FILE")
    for row in rows:
        size = format_size(row["size"]) if row["size"] is not None else "unpinned"
        label = row["name"] + (" (default)" if row["default"] else "")
        echo(f"{label:<32} {size:>10}  {'yes' if row['cached'] else 'no':<7} {row['fits'] or '?':<8} {row['file']}")
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
    from teadist.base.fsutil import free_bytes
    from teadist.pipelines.prune import in_flight, model_bytes

    cache = _cache(_settings(cache_dir))
    models_ = [(m.head.name, m.head.filename, model_bytes(cache, m)) for m in _only(cache, name, cache.scan().models)]
    partial = sum(size for _, size in in_flight(cache))
    free = free_bytes(cache.root)
    total = sum(size for _, _, size in models_)
    if as_json:
        _emit_json({"cache": str(cache.root), "models": [{"name": n, "file": f, "size": s} for n, f, s in models_],
                    "partials": partial, "total": total, "free": free})
        return
    for name, filename, size in models_:
        echo(f"{format_size(size):>10}  {name}  ({filename})")
    echo(f"{format_size(partial):>10}  partial downloads")
    echo(f"{format_size(total + partial):>10}  total in {cache.root}")
    echo(f"{format_size(free):>10}  free on disk")


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
    from teadist.base.sizes import parse_size
    from teadist.pipelines.prune import prune_lru, prune_partials

    if max_size is None and not partials:
        raise UsageError("say what to prune: --max-size SIZE and/or --partials")
    cache = _cache(_settings(cache_dir))
    removed: list[str] = []
    if partials:
        removed += [str(p) for p in prune_partials(cache)]
    if max_size is not None:
        removed += [str(p) for p in prune_lru(cache, parse_size(max_size))]
    if as_json:
        _emit_json({"removed": removed})
    else:
        for path_ in removed:
            echo(path_)
        _reporter(quiet).info(f"removed {len(removed)} files")
