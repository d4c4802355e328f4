"""Commands on files: split, assemble, verify, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _cache, _emit_json, _reporter, _settings, app, echo
from teadist.errors import EXIT_INTEGRITY, UsageError


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
    from teadist.base.sizes import parse_size

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError("--base-url must start with http:// or https://")
    if fmt not in ("bytes", "gguf"):
        raise UsageError(f"--format must be bytes or gguf, not {fmt!r}")
    reporter = _reporter(quiet, as_json)
    if fmt == "gguf":
        from teadist.pipelines.gguf_split import split_gguf

        sharded = split_gguf(file, out, reporter, shard_size=parse_size(shard_size), name=name, base_url=base_url)
        m, manifest_path, written, kept = sharded.manifest, sharded.manifest_path, len(sharded.manifest.chunks), 0
    else:
        from teadist.pipelines.split import split_file

        result = split_file(file, out, reporter, chunk_size=parse_size(chunk_size), name=name, base_url=base_url)
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
    from teadist.formats.manifest import load_manifest
    from teadist.pipelines.assemble import assemble_chunks

    settings = _settings(cache_dir)
    cache = _cache(settings)
    from teadist.pipelines.gguf_merge import is_shard_name

    if is_shard_name(manifest.name) and manifest.is_file():
        from teadist.formats.gguf_info import looks_like_gguf
        from teadist.pipelines.gguf_merge import merge_foreign_shards

        if looks_like_gguf(manifest):
            merged_name = manifest.name.rsplit("-", 3)[0] + ".gguf"
            dest = out if out is not None else cache.path_for(merged_name)
            dest = dest / merged_name if dest.is_dir() else dest
            sha, size = merge_foreign_shards(manifest, cache.layout.target_for(dest), _reporter(quiet, as_json),
                                             cache=cache)
            if as_json:
                _emit_json({"path": str(dest), "sha256": sha, "size": size, "merged": True, "verified": False})
            else:
                echo(dest)
            return
    m = load_manifest(manifest)
    dest = out if out is not None else cache.path_for(m.file.name)
    if dest.is_dir():
        dest = dest / m.file.name
    reporter = _reporter(quiet, as_json)
    folder = chunks if chunks is not None else manifest.parent
    source = f"manifest:{manifest.resolve()}"
    if m.format == "gguf":
        from teadist.pipelines.assemble import AssembleResult
        from teadist.pipelines.gguf_rebuild import rebuild_original

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
    echo(result.path)


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
    from teadist.formats.manifest import MANIFEST_SUFFIX, load_manifest
    from teadist.pipelines import verify as v

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
            echo(f"{row.status:<9} {row.name}" + (f"  ({row.detail})" if row.detail else ""))
    failed = [r for r in report.rows if r.status != v.OK]
    if failed:
        echo(f"error: verification failed: {len(failed)} of {len(report.rows)} items bad in {report.target}",
             err=True)
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
    from teadist.formats.gguf_info import read_info

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
        echo(f"{key + ':':<18}{'-' if value is None else value}")
    echo(f"{'structure:':<18}ok (header as llama.cpp reads it; every tensor in place inside the file)")


