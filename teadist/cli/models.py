"""Commands on the model cache: list, path, rm, fetch, models, du, prune."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from teadist.base.progress import Reporter
from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _cache, _emit_json, _reporter, _settings, app, echo
from teadist.errors import NotFoundError, UsageError
from teadist.settings import Settings


@app.command("list")
def list_models(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the models in the TEA model cache, with size, last use and last verification.

    \b
    Files a model's record lists but that are gone are shown as missing; records that cannot be
    read are shown as damaged (`teadist rm FILE` removes them).
    \b
    Example:
      teadist list --json
    """
    from teadist.pipelines.prune import model_bytes

    cache = _cache(_settings(cache_dir))
    scan = cache.scan()
    rows = []
    for model in scan.models:
        missing = [m.filename for m in model.members if not cache.path_for(m.filename).is_file()]
        size = sum(m.size if m.size is not None else 0 for m in model.members) or model_bytes(cache, model)
        rows.append((model, missing, size))
    if as_json:
        _emit_json({"cache": str(cache.root),
                    "models": [{**model.head.to_dict(), "size": size, "files": model.filenames, "missing": missing}
                               for model, missing, size in rows],
                    "damaged": [{"record": str(d.path), "problem": d.problem} for d in scan.damaged],
                    "unrecorded": [str(p) for p in scan.unrecorded]})
        return
    if not rows and not scan.unrecorded and not scan.damaged:
        echo(f"no models in {cache.root}", err=True)
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


def _filename_for(name: str, cache: Any) -> str:
    model = cache.find(name)
    if model is not None:
        return str(model.head.filename)
    from teadist.sources.registry import lookup_filename

    filename = lookup_filename(name)
    if filename is None:
        raise NotFoundError(f"unknown model {name!r}: not in the cache, not in the registry",
                            hint="see `teadist list` and `teadist models`")
    return filename


@app.command()
def path(name: Annotated[str, typer.Argument(help="Model name, registry name or file name.")],
         cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Print the model path the TEA runtimes would use: TEA_MODEL_PATH, $APPDIR, then the cache.

    \b
    Exits 1 if the model is in none of them.
    \b
    Example:
      llama-cli -m "$(teadist path phi-4-mini)"
    """
    from teadist.cache.store import runtime_model_path

    settings = _settings(cache_dir)
    cache = _cache(settings)
    found, origin = runtime_model_path(_filename_for(name, cache), cache, settings.tea_model_path,
                                       settings.appdir)
    if as_json:
        _emit_json({"path": str(found), "from": origin})
    else:
        echo(found)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Model name or file name in the cache.")],
       cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a model (all its files, and teadist's record of it) from the cache.

    \b
    Also finishes an interrupted removal, and removes a damaged record (by file name).
    \b
    Example:
      teadist rm phi-4-mini
    """
    cache = _cache(_settings(cache_dir))
    model = cache.find(name)
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


# -- fetch and the registry ----------------------------------------------------------------------
def _downloader(settings: Settings, reporter: Reporter, jobs: int | None = None) -> Any:
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    policy = RetryPolicy(attempts=max(1, settings.retries), backoff=settings.retry_backoff,
                         stall_timeout=settings.stall_timeout)
    return Downloader(reporter, policy, jobs=jobs, cap=settings.max_connections, align=settings.range_align)


def _fetch_options(settings: Settings, jobs: int | None, source: str | None) -> Any:
    from teadist.pipelines.fetch import FetchOptions
    from teadist.sources.hub import DEFAULT_ENDPOINT, is_official_endpoint

    endpoint = settings.hf_endpoint or DEFAULT_ENDPOINT
    token = settings.hf_token
    if token is None and is_official_endpoint(endpoint) and not settings.offline:
        from teadist.settings import register_secret
        from teadist.sources.hub import saved_token

        token = saved_token()
        register_secret(token)
    return FetchOptions(endpoint=endpoint, token=token, offline=settings.offline, jobs=jobs, source=source)


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(
        help="Registry name (phi-4-mini, phi-4-mini:q4_k_m), hf://ORG/REPO/FILE[@REV], or a manifest URL/path.")],
    source: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--source", help="Use only this source: 1-based index, 'hf', 'url' or a URL prefix.")] = None,
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
    a network error, a 404 or a hash mismatch, and prints the installed path. Large files
    come as byte ranges on several connections: more while the throughput still grows, fewer
    when the server says 429/503; the last ranges are split so no slow stream holds up the end.
    \b
    Examples:
      teadist fetch phi-4-mini
      teadist fetch phi-4-mini:q4_k_m
      teadist fetch hf://ggml-org/tiny-llamas/stories260K.gguf
      teadist fetch https://github.com/OWNER/REPO/releases/download/v1.0.0/model-manifest.json
    """
    from teadist.pipelines.fetch import fetch as run_fetch

    settings = _settings(cache_dir, offline=True if offline else None)
    reporter = _reporter(quiet, as_json)
    options = _fetch_options(settings, jobs, source)
    options.keep_shards = keep_shards
    result = run_fetch(model, _cache(settings), options, reporter, _downloader(settings, reporter, jobs))
    if as_json:
        _emit_json({"path": str(result.path), "name": result.name, "sha256": result.sha256, "size": result.size,
                    "already_present": result.already_present, "source": result.source})
        return
    if result.already_present:
        reporter.info(f"{result.name} is already in the cache (verified {result.sha256[:16]}…)")
    else:
        reporter.info(f"installed {result.name} ({format_size(result.size)}), sha256 verified")
    echo(result.path)


@app.command()
def models(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the models of the registry, their size and whether they are cached.

    \b
    Example:
      teadist models
    """
    from teadist.sources import registry

    cache = _cache(_settings(cache_dir))
    rows: list[dict[str, Any]] = []
    for m in registry.entries():
        record = cache.read_record(m.file.name)
        cached = record is not None and cache.is_current(record) and m.file.sha256 in (None, record.sha256)
        rows.append({"model": m.reference + (" (default)" if m.tag and m.default_tag else ""),
                     "reference": m.reference, "file": m.file.name, "size": m.file.size,
                     "sha256": m.file.sha256, "pinned": m.is_pinned, "cached": cached})
    if as_json:
        _emit_json(rows)
        return
    echo(f"{'MODEL':<32} {'SIZE':>10}  {'CACHED':<7} FILE")
    for row in rows:
        size = format_size(row["size"]) if row["size"] is not None else "unpinned"
        echo(f"{row['model']:<32} {size:>10}  {'yes' if row['cached'] else 'no':<7} {row['file']}")


@app.command()
def du(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the space each cached model uses (kept shards included), downloads in flight, and free space.

    \b
    Example:
      teadist du
    """
    from teadist.base.fsutil import free_bytes
    from teadist.pipelines.prune import in_flight, model_bytes

    cache = _cache(_settings(cache_dir))
    models_ = [(m.head.name, m.head.filename, model_bytes(cache, m)) for m in cache.scan().models]
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
        echo(f"removed {len(removed)} files", err=True)
