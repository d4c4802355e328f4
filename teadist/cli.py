"""The command line: the only module that imports typer, prints, or picks exit codes.

Results go to stdout (plain text, or JSON with ``--json``); messages and progress go to stderr.
Exit codes: 0 ok, 1 error, 2 usage, 3 integrity failure, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from teadist import __version__
from teadist.errors import (
    EXIT_ERROR,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    NotFoundError,
    TeadistError,
    UsageError,
)
from teadist.progress import NullTask, ProgressTask, Reporter
from teadist.settings import Settings, mask_secrets, resolve_settings
from teadist.sizes import format_size

app = typer.Typer(
    name="teadist",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}

# -- options shared by commands ----------------------------------------------------------------
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON result on stdout.")]
CacheDirOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional at runtime on 3.11
    typer.Option("--cache-dir", help="Model cache folder [env: TEA_MODELS_DIR; default ~/.cache/tea/models]."),
]


# -- output ------------------------------------------------------------------------------------
class _TqdmTask:
    def __init__(self, description: str, total: int | None) -> None:
        from tqdm import tqdm  # lazy: only when a bar is shown

        self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class CliReporter:
    """Messages on stderr; tqdm bars only on a TTY and not with --quiet or --json."""

    def __init__(self, quiet: bool = False, bars: bool = True) -> None:
        self.quiet = quiet
        self.bars = bars and not quiet and sys.stderr.isatty()

    def info(self, message: str) -> None:
        if not self.quiet:
            print(mask_secrets(message), file=sys.stderr)

    def warn(self, message: str) -> None:
        print("warning: " + mask_secrets(message), file=sys.stderr)

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _TqdmTask(description, total) if self.bars else NullTask()


def _reporter(quiet: bool, as_json: bool = False) -> Reporter:
    return CliReporter(quiet=quiet, bars=not as_json)


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _settings(cache_dir: Path | None = None, offline: bool | None = None) -> Settings:
    return resolve_settings(cache_dir=cache_dir, offline=offline, debug=_state["debug"])


def _cache(settings: Settings) -> Any:
    from teadist.cache import ModelCache

    return ModelCache(settings.models_dir)


# -- global options ----------------------------------------------------------------------------
def _version_callback(value: bool) -> None:
    if value:
        print(f"teadist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fetch, split, assemble, verify and publish GGUF models for TEA.

    \b
    Examples:
      teadist split model.gguf --out dist/        # chunks under 2 GB + manifest
      teadist assemble dist/model.gguf.manifest.json
      teadist verify ~/.cache/tea/models/model.gguf
      teadist inspect model.gguf
    """
    _state["debug"] = debug


# -- split / assemble / verify / inspect ---------------------------------------------------------
@app.command()
def split(
    file: Annotated[Path, typer.Argument(help="The file to cut (usually a .gguf).")],
    chunk_size: Annotated[str, typer.Option("--chunk-size", "-s",
                                            help="Largest chunk: bytes or 512M, 1.9G, 1GiB (< 2 GiB).")] = "1900000000",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the chunks and manifest.")] = Path("."),
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the manifest.")] = None,  # noqa: UP045
    base_url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--base-url", help="Record download URLs <base-url>/<chunk> in the manifest.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="bytes (byte ranges) or gguf (llama.cpp shards).")] = "bytes",
    shard_size: Annotated[str, typer.Option("--shard-size", help="Target shard size for --format gguf.")] = "512M",
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut FILE into chunks under 2 GB with a SHA-256 manifest, in one pass.

    \b
    Writes <file>.part-00001-of-0000N and <file>.manifest.json to --out; the manifest is
    written last, so its presence means the split is complete. A re-run keeps chunks that
    are already right and redoes the rest.
    \b
    With --format gguf it writes llama.cpp shards <stem>-00001-of-0000N.gguf instead: they
    load as they are in llama.cpp and wllama, and `teadist assemble` rebuilds the
    byte-identical original from them.
    \b
    Examples:
      teadist split phi.gguf --out dist/ --base-url https://example.org/models
      teadist split phi.gguf --format gguf --shard-size 512M --out web/
    """
    from teadist.sizes import parse_size

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError("--base-url must start with http:// or https://")
    if fmt not in ("bytes", "gguf"):
        raise UsageError(f"--format must be bytes or gguf, not {fmt!r}")
    reporter = _reporter(quiet, as_json)
    if fmt == "gguf":
        from teadist.shards import split_gguf

        sharded = split_gguf(file, out, reporter, shard_size=parse_size(shard_size), name=name, base_url=base_url)
        m, manifest_path, written, kept = sharded.manifest, sharded.manifest_path, len(sharded.manifest.chunks), 0
    else:
        from teadist.split import split_file

        result = split_file(file, out, reporter, chunk_size=parse_size(chunk_size), name=name, base_url=base_url)
        m, manifest_path, written, kept = result.manifest, result.manifest_path, result.written, result.reused
    if as_json:
        _emit_json({"manifest": str(manifest_path), "written": written, "kept": kept, **m.to_dict()})
        return
    reporter.info(f"split {m.file.name} ({format_size(m.file.size)}) into {len(m.chunks)} "
                  f"{'shards' if fmt == 'gguf' else 'chunks'} ({written} written, {kept} kept); "
                  f"sha256 {m.file.sha256}")
    print(manifest_path)


@app.command()
def assemble(
    manifest: Annotated[Path, typer.Argument(
        help="A manifest written by `teadist split`, or the first of llama.cpp shards to merge.")],
    chunks: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--chunks", help="Folder holding the chunks [default: the manifest's folder].")] = None,
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--out", "-o", help="Destination file [default: <cache>/<upstream filename>].")] = None,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the original file from its chunks, verifying every chunk and the whole.

    \b
    By default the file is installed in the TEA model cache under its upstream name. On a
    missing or mismatching chunk it exits 3 and leaves nothing at the destination.
    \b
    Example:
      teadist assemble dist/phi.gguf.manifest.json
    """
    from teadist.assemble import assemble_chunks
    from teadist.manifest import load_manifest

    settings = _settings(cache_dir)
    cache = _cache(settings)
    from teadist.shards import is_shard_name

    if is_shard_name(manifest.name) and manifest.is_file():
        from teadist.ggufinfo import looks_like_gguf
        from teadist.shards import merge_foreign_shards

        if looks_like_gguf(manifest):
            merged_name = manifest.name.rsplit("-", 3)[0] + ".gguf"
            dest = out if out is not None else cache.path_for(merged_name)
            dest = dest / merged_name if dest.is_dir() else dest
            sha, size = merge_foreign_shards(manifest, dest, _reporter(quiet, as_json))
            if as_json:
                _emit_json({"path": str(dest), "sha256": sha, "size": size, "merged": True})
            else:
                print(dest)
            return
    m = load_manifest(manifest)
    dest = out if out is not None else cache.path_for(m.file.name)
    if dest.is_dir():
        dest = dest / m.file.name
    reporter = _reporter(quiet, as_json)
    folder = chunks if chunks is not None else manifest.parent
    source = f"manifest:{manifest.resolve()}"
    if m.format == "gguf":
        from teadist.assemble import AssembleResult
        from teadist.shards import rebuild_original

        sha, size, present = rebuild_original(m, folder, dest, reporter, cache=cache, source=source)
        result = AssembleResult(dest, sha, size, already_present=present)
    else:
        result = assemble_chunks(m, folder, dest, reporter, cache=cache, source=source)
    if as_json:
        _emit_json({"path": str(result.path), "sha256": result.sha256, "size": result.size,
                    "already_present": result.already_present, "resumed_bytes": result.resumed_bytes})
        return
    if result.already_present:
        reporter.info(f"{result.path.name} is already there and verified; nothing to do")
    else:
        reporter.info(f"assembled and verified {result.path.name} ({format_size(result.size)})")
    print(result.path)


@app.command()
def verify(
    target: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="A model file, a folder of chunks, a manifest, or a cached model's name; "
             "none: every model in the cache.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--manifest", "-m", help="Manifest to check against.")] = None,
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check files against a manifest or the cache's record: OK / MISSING / MISMATCH.

    \b
    Exits 3 if anything is missing or does not match.
    \b
    Examples:
      teadist verify dist/phi.gguf.manifest.json        # the chunks beside it
      teadist verify model.gguf --manifest dist/phi.gguf.manifest.json
      teadist verify phi-4-mini                          # a cached model, by name
      teadist verify                                     # the whole cache
    """
    from teadist import verify as v
    from teadist.manifest import MANIFEST_SUFFIX, load_manifest

    reporter = _reporter(quiet, as_json)
    cache = _cache(_settings(cache_dir))
    path = Path(target) if target is not None else None
    if path is None:
        report = v.verify_whole_cache(cache, reporter)
    elif manifest is None and path.name.endswith(MANIFEST_SUFFIX) and path.is_file():
        report = v.verify_chunk_folder(path.parent, load_manifest(path), reporter)
    elif manifest is not None:
        m = load_manifest(manifest)
        report = (v.verify_chunk_folder(path, m, reporter) if path.is_dir()
                  else v.verify_file_against_manifest(path, m, reporter))
    elif path.is_file() and cache.contains(path):
        report = v.verify_cached(cache, path.name, reporter)
    elif path.exists():
        raise UsageError(f"nothing to verify {target} against: it is not in the cache",
                     hint="pass its manifest with --manifest")
    else:
        report = v.verify_cached(cache, str(target), reporter)
    if as_json:
        _emit_json(report.to_dict())
    else:
        for row in report.rows:
            print(f"{row.status:<9} {row.name}" + (f"  ({row.detail})" if row.detail else ""))
    failed = [r for r in report.rows if r.status != v.OK]
    if failed:
        print(f"error: verification failed: {len(failed)} of {len(report.rows)} items bad in {report.target}",
              file=sys.stderr)
        raise typer.Exit(EXIT_INTEGRITY)
    if not as_json:
        reporter.info(f"all {len(report.rows)} items verified")


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A .gguf file.")],
    as_json: JsonOpt = False,
) -> None:
    """Tell what a GGUF file is, and check its structure (catches truncated downloads).

    \b
    Example:
      teadist inspect ~/.cache/tea/models/microsoft_Phi-4-mini-instruct-Q3_K_S.gguf --json
    """
    from teadist.ggufinfo import read_info

    info = read_info(file)
    if as_json:
        _emit_json(info.to_dict())
        return
    rows = [
        ("file", info.path), ("size", f"{format_size(info.size)} ({info.size} bytes)"),
        ("gguf version", info.gguf_version), ("architecture", info.architecture), ("name", info.name),
        ("parameters", f"{info.parameters:,}"), ("quantization", info.quantization),
        ("context length", info.context_length), ("embedding length", info.embedding_length),
        ("layers", info.layers), ("heads", info.heads), ("kv heads", info.kv_heads),
        ("rope base", info.rope_freq_base), ("vocab size", info.vocab_size),
        ("chat template", f"yes ({info.chat_template_family})" if info.chat_template else "no"),
        ("tensors", info.tensor_count), ("alignment", info.alignment),
    ]
    if info.split_count is not None:
        rows.append(("split", f"shard {(info.split_no or 0) + 1} of {info.split_count}"))
    for key, value in rows:
        print(f"{key + ':':<18}{'-' if value is None else value}")
    print(f"{'structure:':<18}ok (magic, version, all tensor data inside the file)")


# -- the cache -----------------------------------------------------------------------------------
@app.command("list")
def list_models(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the models in the TEA model cache, with size, last use and last verification.

    \b
    Example:
      teadist list --json
    """
    cache = _cache(_settings(cache_dir))
    records = cache.records()
    others = cache.unrecorded_models()
    if as_json:
        _emit_json({"cache": str(cache.root),
                    "models": [r.to_dict() for r in records],
                    "unrecorded": [str(p) for p in others]})
        return
    if not records and not others:
        print(f"no models in {cache.root}", file=sys.stderr)
        return
    print(f"{'NAME':<28} {'SIZE':>10}  {'LAST USED':<25} {'VERIFIED':<25} FILE")
    for r in records:
        print(f"{r.name:<28} {format_size(r.size):>10}  {r.last_used or '-':<25} {r.verified_at or '-':<25} "
              f"{r.filename}")
    for p in others:
        print(f"{'(not installed by teadist)':<28} {format_size(p.stat().st_size):>10}  {'-':<25} {'-':<25} "
              f"{p.name}")


def _filename_for(name: str, cache: Any) -> str:
    record = cache.find(name)
    if record is not None:
        return str(record.filename)
    from teadist.registry import lookup_filename

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
    from teadist.cache import runtime_model_path

    settings = _settings(cache_dir)
    cache = _cache(settings)
    found, origin = runtime_model_path(_filename_for(name, cache), cache, settings.tea_model_path,
                                       settings.appdir)
    if as_json:
        _emit_json({"path": str(found), "from": origin})
    else:
        print(found)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="Model name or file name in the cache.")],
       cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a model (and teadist's record of it) from the cache.

    \b
    Example:
      teadist rm phi-4-mini
    """
    from teadist.cache import target_lock

    cache = _cache(_settings(cache_dir))
    record = cache.find(name)
    if record is None:
        raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
    with target_lock(cache.path_for(record.filename)):
        removed = cache.remove(record)
    if as_json:
        _emit_json({"removed": [str(p) for p in removed]})
    else:
        for p in removed:
            print(p)


# -- fetch and the registry ----------------------------------------------------------------------
def _downloader(settings: Settings, reporter: Reporter, jobs: int = 4) -> Any:
    from teadist.download import Downloader, RetryPolicy

    policy = RetryPolicy(attempts=max(1, settings.retries), backoff=settings.retry_backoff,
                         stall_timeout=settings.stall_timeout)
    return Downloader(reporter, policy, jobs=jobs, segment_min=settings.parallel_min)


def _fetch_options(settings: Settings, jobs: int, source: str | None) -> Any:
    from teadist.fetch import FetchOptions
    from teadist.hub import DEFAULT_ENDPOINT, is_official_endpoint

    endpoint = settings.hf_endpoint or DEFAULT_ENDPOINT
    token = settings.hf_token
    if token is None and is_official_endpoint(endpoint) and not settings.offline:
        from teadist.hub import saved_token

        token = saved_token()
    return FetchOptions(endpoint=endpoint, token=token, offline=settings.offline, jobs=jobs, source=source)


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
    a network error, a 404 or a hash mismatch, and prints the installed path.
    \b
    Examples:
      teadist fetch phi-4-mini
      teadist fetch phi-4-mini:q4_k_m
      teadist fetch hf://ggml-org/tiny-llamas/stories260K.gguf
      teadist fetch https://github.com/OWNER/REPO/releases/download/v1.0.0/model-manifest.json
    """
    from teadist.fetch import fetch as run_fetch

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
    print(result.path)


@app.command()
def models(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the models of the registry, their size and whether they are cached.

    \b
    Example:
      teadist models
    """
    from teadist import registry

    cache = _cache(_settings(cache_dir))
    rows: list[dict[str, Any]] = []
    for m in registry.entries():
        record = cache.read_record(m.file.name)
        rows.append({"model": m.reference + (" (default)" if m.tag and m.default_tag else ""),
                     "reference": m.reference, "file": m.file.name, "size": m.file.size,
                     "sha256": m.file.sha256, "pinned": m.is_pinned,
                     "cached": record is not None and cache.path_for(m.file.name).is_file()})
    if as_json:
        _emit_json(rows)
        return
    print(f"{'MODEL':<32} {'SIZE':>10}  {'CACHED':<7} FILE")
    for row in rows:
        size = format_size(row["size"]) if row["size"] is not None else "unpinned"
        print(f"{row['model']:<32} {size:>10}  {'yes' if row['cached'] else 'no':<7} {row['file']}")


@app.command()
def du(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the space each cached model uses, partial downloads, and free disk space.

    \b
    Example:
      teadist du
    """
    from teadist.fsutil import free_bytes

    cache = _cache(_settings(cache_dir))
    models_ = [(r.name, r.filename, cache.path_for(r.filename).stat().st_size) for r in cache.records()]
    partial = sum(p.stat().st_size for p in cache.partials())
    free = free_bytes(cache.root)
    total = sum(size for _, _, size in models_)
    if as_json:
        _emit_json({"cache": str(cache.root), "models": [{"name": n, "file": f, "size": s} for n, f, s in models_],
                    "partials": partial, "total": total, "free": free})
        return
    for name, filename, size in models_:
        print(f"{format_size(size):>10}  {name}  ({filename})")
    print(f"{format_size(partial):>10}  partial downloads")
    print(f"{format_size(total + partial):>10}  total in {cache.root}")
    print(f"{format_size(free):>10}  free on disk")


@app.command()
def prune(
    max_size: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--max-size", help="Evict least recently used models until the cache fits, e.g. 20G.")] = None,
    partials: Annotated[bool, typer.Option("--partials", help="Remove stale partial downloads.")] = False,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Free space in the model cache.

    \b
    Examples:
      teadist prune --max-size 20G
      teadist prune --partials
    """
    from teadist.prune import prune_lru, prune_partials
    from teadist.sizes import parse_size

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
            print(path_)
        print(f"removed {len(removed)} files", file=sys.stderr)


registry_app = typer.Typer(help="Maintain the model registry (manifests/models).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("pin")
def registry_pin(
    name: Annotated[str, typer.Argument(help="Registry model, e.g. gemma-3n-e4b or phi-4-mini:q4_k_m.")],
    write: Annotated[bool, typer.Option("--write", help="Update the registry file in place.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fill a registry entry's missing revision, size and sha256 from the Hub API.

    \b
    A pinned value the Hub disagrees with is an error (exit 3), never silently replaced.
    \b
    Example:
      teadist registry pin gemma-3n-e4b --write
    """
    from teadist.pin import pin_entry

    settings = _settings()
    pinned = pin_entry(name, _fetch_options(settings, 1, None), write=write)
    if as_json:
        _emit_json(pinned)
    else:
        for key, value in pinned.items():
            print(f"{key + ':':<10}{value}")


@app.command()
def serve(
    folder: Annotated[Path, typer.Argument(help="Folder to serve (shards, wllama's esm build, pages).")],
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    verify_manifest: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--verify", help="Refuse to serve any file that fails this manifest.")] = None,
) -> None:
    """Serve a folder for local browser work: Range, HEAD, COOP/COEP, .wasm/.js MIME types.

    \b
    The cross-origin isolation headers let wllama run multi-threaded. With --verify, files
    listed in the manifest are hashed first and a file that fails is answered 409, never served.
    \b
    Example:
      teadist serve web/ --verify web/phi.gguf.manifest.json
    """
    from teadist.manifest import load_manifest
    from teadist.serve import StaticServer

    if not folder.is_dir():
        raise NotFoundError(f"folder not found: {folder}")
    manifest = load_manifest(verify_manifest) if verify_manifest is not None else None
    server = StaticServer(folder, manifest, host=host, port=port,
                          manifest_dir=verify_manifest.parent if verify_manifest is not None else None)
    if manifest is not None:
        verdicts = server.verify_all()
        for name, good in sorted(verdicts.items()):
            print(f"{'OK' if good else 'REFUSED':<9} {name}", file=sys.stderr)
        for name in sorted(set(server.expected) - set(verdicts)):
            if not name.endswith("/" + manifest.file.name) and name != manifest.file.name:
                print(f"{'MISSING':<9} {name}", file=sys.stderr)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped: exit 0
        server.serve_forever()


# -- release -------------------------------------------------------------------------------------
@app.command("package-wasm")
def package_wasm_cmd(
    pkg_dir: Annotated[Path, typer.Argument(help="The wasm-pack output folder (pkg/).")],
    version: Annotated[str, typer.Option("--version", help="Version in the tarball name, e.g. 1.2.0.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tarball.")] = Path("dist"),
    js: Annotated[Optional[Path], typer.Option("--js", help="Extra JS folder, packed under js/.")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Pack a reproducible tea-wasm-llm-VERSION.tar.gz (same inputs, same bytes).

    \b
    Uses SOURCE_DATE_EPOCH for every mtime (default 0); prints a size breakdown.
    \b
    Example:
      teadist package-wasm tea-wasm-llm/pkg --version 1.2.0 --out dist/
    """
    import os

    from teadist.wasmpkg import package_wasm

    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch_text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {epoch_text!r}")
    report = package_wasm(pkg_dir, version, out, js, source_date_epoch=int(epoch_text))
    if as_json:
        _emit_json({"path": str(report.path), "size": report.size, "sha256": report.sha256,
                    "unpacked": report.unpacked, "files": report.files})
        return
    print("| file | size |")
    print("|---|---:|")
    for f in report.files:
        print(f"| {f['path']} | {format_size(int(str(f['size'])))} |")
    print(f"| **total (unpacked)** | {format_size(report.unpacked)} |")
    print(f"| **{report.path.name}** | {format_size(report.size)} |")
    print(f"sha256 {report.sha256}  {report.path}", file=sys.stderr)


release_app = typer.Typer(help="Prepare and publish a GitHub Release (models, chunks, wasm tarball).",
                          no_args_is_help=True)
app.add_typer(release_app, name="release")


@release_app.command("prepare")
def release_prepare(
    tag: Annotated[str, typer.Option("--tag", help="The release tag, e.g. v1.2.0.")],
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME on GitHub.")],
    config: Annotated[Path, typer.Option("--config", help="Release config.")] = Path("manifests/release.json"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the release ships.")] = Path("dist"),
    cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Gather what a release ships: models split into chunks + model-manifest.json.

    \b
    Models named in the config are fetched (or taken as files) and split under the GitHub
    limit; download URLs are built from the tag. Put the wasm tarball in --out first
    (teadist package-wasm) and it is listed too.
    \b
    Example:
      teadist release prepare --tag v1.2.0 --repo tea-project/tea --out dist/
    """
    from teadist.fetch import fetch as run_fetch
    from teadist.release import prepare_release

    settings = _settings(cache_dir)
    reporter = _reporter(quiet, as_json)

    def get_model(name: str) -> Path:
        result = run_fetch(name, _cache(settings), _fetch_options(settings, 4, None), reporter,
                           _downloader(settings, reporter))
        return Path(result.path)

    prepared = prepare_release(tag, repo, config, out, reporter, get_model)
    if as_json:
        _emit_json({"dist": str(prepared.dist), "assets": [p.name for p in prepared.assets],
                    "index": prepared.index})
        return
    for asset in prepared.assets:
        print(asset)


@release_app.command("publish")
def release_publish(
    tag: Annotated[str, typer.Option("--tag", help="The release tag, e.g. v1.2.0.")],
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME on GitHub.")],
    dist: Annotated[Path, typer.Option("--dist", help="Folder written by `release prepare`.")] = Path("dist"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Leave the release a draft.")] = False,
    upload_timeout: Annotated[float, typer.Option("--upload-timeout", help="Seconds allowed per upload.")] = 3600,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish DIST to the GitHub Release of TAG, converging after any failure.

    \b
    Uploads only what is missing or differs, removes half-uploaded leftovers, uploads the
    manifest last, checks every digest, then publishes (unless --draft). A re-run on a
    finished release uploads nothing. Needs GITHUB_TOKEN; honours GITHUB_API_URL.
    \b
    Example:
      GITHUB_TOKEN=... teadist release publish --tag v1.2.0 --repo tea-project/tea --dist dist/
    """
    import os

    from teadist.release import Publisher

    token = os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN")
    if not token:
        raise UsageError("GITHUB_TOKEN is not set", hint="export GITHUB_TOKEN (in Actions: secrets.GITHUB_TOKEN)")
    api_url = os.environ.get("GITHUB_API_URL") or "https://api.github.com"
    reporter = _reporter(quiet, as_json)
    interval_text = os.environ.get("TEADIST_GITHUB_WRITE_INTERVAL", "1")
    try:
        interval = max(0.0, float(interval_text))
    except ValueError:
        raise UsageError(f"TEADIST_GITHUB_WRITE_INTERVAL must be seconds, not {interval_text!r}") from None
    publisher = Publisher(repo, tag, token, api_url, reporter, upload_timeout=upload_timeout,
                          write_interval=interval)
    report = publisher.publish(dist, dry_run=dry_run, draft=draft)
    if as_json:
        _emit_json(report.__dict__)
        return
    for line in report.plan if dry_run else []:
        print(line)
    if not dry_run:
        reporter.info(f"{len(report.uploaded)} uploaded, {len(report.skipped)} already there, "
                      f"{len(report.deleted)} leftovers removed" + ("; published" if report.published else ""))


@app.command()
def demo(
    keep: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--keep", help="Work in this folder and keep it, instead of a temporary one.")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the main job end to end on a tiny embedded model, with no network at all.

    \b
    Example:
      teadist demo
    """
    from teadist.demo import run_demo

    result = run_demo(_reporter(quiet, as_json), keep)
    if as_json:
        _emit_json(result.__dict__)
    else:
        print(f"demo ok: {len(result.steps)} steps")


# -- errors → exit codes ------------------------------------------------------------------------
def _print_error(message: str, hint: str | None) -> None:
    print("error: " + mask_secrets(message), file=sys.stderr)
    if hint:
        print("hint: " + mask_secrets(hint), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    try:
        rv = app(args=argv, prog_name="teadist", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except TeadistError as exc:
        if _state["debug"]:
            import traceback

            traceback.print_exc()
        _print_error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        if _state["debug"]:
            raise
        _print_error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                     "run with --debug for details")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        # Click's own usage errors (typer vendors click, so match by shape, not by class).
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
