"""Commands on files: split, assemble, verify, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _emit_json, _reporter, _settings, app, echo
from teadist.errors import EXIT_INTEGRITY, UsageError


@app.command()
def split(
    file: Annotated[str, typer.Argument(help="The file to cut (usually a .gguf).")],
    chunk_size: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--chunk-size", "-s", help="Largest chunk: bytes or 512M, 1.9G, 1GiB (< 2 GiB) [default: 1900000000].")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the chunks and manifest.")] = Path("."),
    name: Annotated[Optional[str], typer.Option("--name", help="Model name in the manifest.")] = None,  # noqa: UP045
    base_url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--base-url", help="Record download URLs <base-url>/<chunk> in the manifest.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="bytes (byte ranges) or gguf (llama.cpp shards).")] = "bytes",
    shard_size: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--shard-size", help="Target shard size for --format gguf [default: 512M].")] = None,
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
    from teadist.api import split as run_split
    from teadist.base.sizes import parse_size

    if fmt == "gguf" and chunk_size is not None:
        raise UsageError("--chunk-size applies to byte chunks, not to --format gguf",
                         hint="use --shard-size with --format gguf")
    if fmt != "gguf" and shard_size is not None:
        raise UsageError("--shard-size applies to --format gguf, not to byte chunks",
                         hint="use --chunk-size for byte chunks, or add --format gguf")
    reporter = _reporter(quiet, as_json)
    result = run_split(file, out, format=fmt, name=name, base_url=base_url, progress=reporter,
                       chunk_size=None if chunk_size is None else parse_size(chunk_size),
                       shard_size=None if shard_size is None else parse_size(shard_size))
    m, manifest_path, written, kept = result.manifest, result.manifest_path, result.written, result.reused
    if as_json:
        _emit_json({"manifest": str(manifest_path), "written": written, "kept": kept, **m.to_dict()})
        return
    reporter.info(f"split {m.file.name} ({format_size(m.file.size)}) into {len(m.chunks)} "
                  f"{'shards' if fmt == 'gguf' else 'chunks'} ({written} written, {kept} kept); "
                  f"sha256 {m.file.sha256}")
    echo(manifest_path)


@app.command()
def assemble(
    manifest: Annotated[str, typer.Argument(
        help="A manifest written by `teadist split`, or the first of llama.cpp shards to merge.")],
    chunks: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--chunks", help="Folder holding the chunks [default: the manifest's folder].")] = None,
    out: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--out", "-o", help="Destination file, or folder (existing, or ending in /) [default: the cache].")] = None,
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
    from teadist.api import assemble as run_assemble

    reporter = _reporter(quiet, as_json)
    result = run_assemble(manifest, chunks=chunks, out=out, progress=reporter, settings=_settings(cache_dir))
    if result.merged:
        if as_json:
            _emit_json({"path": str(result.path), "sha256": result.sha256, "size": result.size, "merged": True,
                        "verified": False})
        else:
            echo(result.path)
        return
    if as_json:
        _emit_json({"path": str(result.path), "sha256": result.sha256, "size": result.size,
                    "already_present": result.already_present, "resumed_bytes": result.resumed_bytes})
        return
    if result.already_present:
        reporter.info(f"{result.path.name} is already there and verified; nothing to do")
    else:
        reporter.info(f"assembled and verified {result.path.name} ({format_size(result.size)})")
    echo(result.path)


@app.command()
def verify(
    target: Annotated[Optional[str], typer.Argument(  # noqa: UP045
        help="A model file, a folder of chunks, a manifest, or a cached model's name; "
             "none: every model in the cache.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--manifest", "-m", help="Manifest to check against.")] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Hash cached models whole against their recorded sha256 (by default a model with "
                       "a proven block map is checked block by block against that map, on every core).")] = False,
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
      teadist verify phi-4-mini --full                   # ... hashed whole against its sha256
      teadist verify                                     # the whole cache
    """
    from teadist.api import verify as run_verify

    reporter = _reporter(quiet, as_json)
    report = run_verify(target, manifest=manifest, progress=reporter, settings=_settings(cache_dir), full=full)
    failed = [r for r in report.rows if r.status != "OK"]
    message = f"verification failed: {len(failed)} of {len(report.rows)} items bad in {report.target}"
    hint = "fetch or assemble the bad items again"
    if as_json:  # the report, and (on failure) the one error shape every command has
        error = {"kind": "integrity", "message": message, "hint": hint, "exit_code": EXIT_INTEGRITY}
        _emit_json({**report.to_dict(), **({"error": error} if failed else {})})
    else:
        for row in report.rows:
            echo(f"{row.status:<9} {row.name}" + (f"  ({row.detail})" if row.detail else ""))
    if failed:
        echo(f"error: {message}", err=True)
        echo(f"hint: {hint}", err=True)
        raise typer.Exit(EXIT_INTEGRITY)
    if not as_json:
        reporter.info(f"all {len(report.rows)} items verified")


@app.command()
def inspect(
    file: Annotated[str, typer.Argument(help="A .gguf file.")],
    ctx: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--ctx", min=1, max=2**24,
        help="Context length (tokens, at most 16777216) for the memory need [default: the model's own].")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tell what a GGUF file is, and check its structure (catches truncated downloads).

    \b
    The memory it needs is its weights plus the KV cache (f16) at the model's own context
    length, or at --ctx N, compared with this machine's memory.
    \b
    Examples:
      teadist inspect ~/.cache/tea/models/microsoft_Phi-4-mini-instruct-Q3_K_S.gguf --json
      teadist inspect model.gguf --ctx 8192
    """
    from teadist.api import inspect as read_info
    from teadist.api import memory_report

    info = read_info(file)
    need = memory_report(info, ctx)
    machine, fits = need.machine, need.verdict
    if as_json:
        _emit_json({**info.to_dict(), "memory": dict(need.__dict__)})
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
    kv = f" + KV cache {format_size(need.kv_cache)}" if need.kv_cache is not None else " (KV cache unknown)"
    memory = f"{format_size(need.total)} (weights {format_size(need.weights)}{kv} at context {need.context})"
    if machine is not None:
        memory += f"; this machine has {format_size(machine)}: {fits}"
    rows.append(("memory", memory))
    for key, value in rows:
        echo(f"{key + ':':<18}{'-' if value is None else value}")
    echo(f"{'structure:':<18}ok (header as llama.cpp reads it; every tensor in place inside the file)")


