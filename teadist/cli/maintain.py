"""Maintainers' commands: registry pin, serve, package-wasm, release prepare/publish, demo."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from teadist.base.sizes import format_size
from teadist.cli.app import CacheDirOpt, JsonOpt, QuietOpt, _emit_json, _reporter, _settings, app, echo

registry_app = typer.Typer(help="Maintain the model registry (manifests/models).\n\n\b\nExample:\n"
                                "  teadist registry pin gemma-3n-e4b --write", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("pin")
def registry_pin(
    name: Annotated[str, typer.Argument(help="Registry model, e.g. gemma-3n-e4b or phi-4-mini:q4_k_m.")],
    write: Annotated[bool, typer.Option("--write", help="Update the entry in the source tree's registry.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Take the Hub's values even where they change a pin.")] = False,
    registry_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--registry-dir", help="The registry folder to read and write (a checkout's manifests/models; "
                               "default: found from the working folder).")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fill a registry entry's missing revision, size and sha256 from the Hub API.

    \b
    A pin is never weakened: a pinned value the Hub does not give or contradicts (sha256,
    size, or the commit a pinned revision resolves to) is an error (exit 3) unless --force.
    --write edits manifests/models/ of the teadist checkout holding the working folder (or
    --registry-dir), never the installed package.
    \b
    Example:
      teadist registry pin gemma-3n-e4b --write
    """
    from teadist.api import pin

    pinned = pin(name, write=write, force=force, registry_dir=registry_dir, settings=_settings())
    if as_json:
        _emit_json(pinned)
    else:
        for key, value in pinned.items():
            echo(f"{key + ':':<10}{', '.join(value) if isinstance(value, list) else value}")


@app.command()
def serve(
    folder: Annotated[Path, typer.Argument(help="Folder to serve (shards, wllama's esm build, pages).")],
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (IPv4 or IPv6).")] = "127.0.0.1",
    verify_manifest: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--verify", help="Refuse to serve any file that fails this manifest.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a connection may stay silent "
                                                             "(0.1 <= s <= 3600).")] = 30.0,
    cors: Annotated[bool, typer.Option("--cors", help="Let pages on other origins read the files "
                                                      "(a model origin): CORS headers, preflights.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Serve a folder for local browser work: Range, HEAD, COOP/COEP, .wasm/.js MIME types.

    \b
    The cross-origin isolation headers let wllama run multi-threaded. Hidden files are never
    served; links are followed only when they stay inside the folder. With --verify, files
    listed in the manifest are hashed first and a file that fails is answered 409, never
    served; bytes changed after the check are cut off, never completed. Binding beyond
    loopback (e.g. --host 0.0.0.0) makes the folder readable from the network: a warning says so.
    teadist's browser model cache is served under /_teadist/ (model-cache.js, its .d.ts and
    examples/index.html). --cors makes the folder a model origin for pages elsewhere
    (Access-Control-Allow-Origin: *): any web page in a browser here may then read it.
    \b
    Example:
      teadist serve web/ --verify web/phi.gguf.manifest.json
      # then open /_teadist/examples/index.html?manifest=/model-manifest.json&wllama=/wllama/
    """
    from teadist.api import open_server

    reporter = _reporter(quiet)
    serving = open_server(folder, verify_manifest=verify_manifest, host=host, port=port, timeout=timeout, cors=cors,
                          progress=reporter)
    server = serving.server
    for status, name in serving.checks:
        reporter.info(f"{status:<9} {name}")
    if server.is_public:
        reporter.warn(f"listening on {server.url}: every non-hidden file in {folder} can be read from the "
                      "network; use --host 127.0.0.1 to keep it local")
    if cors:
        reporter.warn(f"--cors: any web page open in a browser that can reach {server.url} may read every "
                      f"non-hidden file in {folder}; serve only what you would publish")
    if as_json:
        _emit_json({"url": server.url, "folder": str(folder)})
    else:
        echo(server.url)
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped: exit 0
        server.serve_forever()


# -- release -------------------------------------------------------------------------------------
@app.command("package-wasm")
def package_wasm_cmd(
    pkg_dir: Annotated[Path, typer.Argument(help="The wasm-pack output folder (pkg/).")],
    version: Annotated[str, typer.Option("--version", help="Version in the tarball name, e.g. 1.2.0.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tarball.")] = Path("dist"),
    js: Annotated[Optional[Path], typer.Option("--js", help="Extra JS folder, packed under js/.")] = None,  # noqa: UP045
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pack a reproducible tea-wasm-llm-VERSION.tar.gz (same inputs, same bytes).

    \b
    Uses SOURCE_DATE_EPOCH for every mtime (default 0); prints a size breakdown.
    The browser model cache goes in too, under teadist-web/: model-cache.js, its
    .d.ts and examples/index.html (serve the unpacked folder with `teadist serve`).
    \b
    Example:
      teadist package-wasm tea-wasm-llm/pkg --version 1.2.0 --out dist/
    """
    from teadist.api import package_wasm

    report = package_wasm(pkg_dir, version, out, js)
    if as_json:
        _emit_json({"path": str(report.path), "size": report.size, "sha256": report.sha256,
                    "unpacked": report.unpacked, "files": report.files})
        return
    echo("| file | size |")
    echo("|---|---:|")
    for f in report.files:
        echo(f"| {f['path']} | {format_size(int(str(f['size'])))} |")
    echo(f"| **total (unpacked)** | {format_size(report.unpacked)} |")
    echo(f"| **{report.path.name}** | {format_size(report.size)} |")
    _reporter(quiet).info(f"sha256 {report.sha256}  {report.path}")


release_app = typer.Typer(help="Prepare and publish a GitHub Release (models, chunks, wasm tarball).\n\n\b\n"
                               "Example:\n  teadist release prepare --tag v1.2.0 --repo tea-project/tea --out dist/\n"
                               "  GITHUB_TOKEN=... teadist release publish --tag v1.2.0 --repo tea-project/tea",
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
    limit; download URLs are built from the tag. An entry with "format": "gguf" ships
    llama.cpp shards instead of byte chunks (what wllama loads in a browser), each at most
    "shard_size" (default 512M). Put the wasm tarball in --out first (teadist
    package-wasm) and it is listed too.
    \b
    Config: {"models": [{"model": "phi-4-mini", "format": "gguf", "shard_size": "512M"}],
             "chunk_size": "1.9G"}
    \b
    Example:
      teadist release prepare --tag v1.2.0 --repo tea-project/tea --out dist/
    """
    from teadist.api import prepare_release

    prepared = prepare_release(tag, repo, config, out, progress=_reporter(quiet, as_json),
                               settings=_settings(cache_dir))
    if as_json:
        _emit_json({"dist": str(prepared.dist), "assets": [p.name for p in prepared.assets],
                    "removed": prepared.removed, "index": prepared.index})
        return
    for asset in prepared.assets:
        echo(asset)


@release_app.command("publish")
def release_publish(
    tag: Annotated[str, typer.Option("--tag", help="The release tag, e.g. v1.2.0.")],
    repo: Annotated[str, typer.Option("--repo", help="OWNER/NAME on GitHub.")],
    dist: Annotated[Path, typer.Option("--dist", help="Folder written by `release prepare`.")] = Path("dist"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Leave the release a draft.")] = False,
    upload_timeout: Annotated[float, typer.Option("--upload-timeout",
                                                  help="Seconds allowed per upload (0 < s <= 7 days).")] = 3600,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish exactly what DIST's release index lists to the GitHub Release of TAG, converging.

    \b
    Every listed file is checked against model-manifest.json (size, sha256, no symlink,
    nothing unlisted) before anything is written. Assets already on the draft are kept only
    when proven (GitHub's digest, or downloaded and hashed); the rest is replaced, unlisted
    assets are deleted. The index goes last, with each chunk's REST API asset URL added to
    its urls (readable from any web page, unlike releases/download/; the local index is
    left as prepared); the release is published only when every asset is proven (a tag
    like v1.2.0-rc1 as a pre-release). A re-run on a finished release uploads nothing.
    Needs GITHUB_TOKEN; honours GITHUB_API_URL.
    \b
    Example:
      GITHUB_TOKEN=... teadist release publish --tag v1.2.0 --repo tea-project/tea --dist dist/
    """
    from teadist.api import publish_release

    reporter = _reporter(quiet, as_json)
    report = publish_release(tag, repo, dist, dry_run=dry_run, draft=draft, upload_timeout=upload_timeout,
                             progress=reporter)
    if as_json:
        _emit_json(report.__dict__)
        return
    for line in report.plan if dry_run else []:
        echo(line)
    if not dry_run:
        reporter.info(f"{len(report.uploaded)} uploaded, {len(report.skipped)} already there "
                      f"({len(report.downloaded)} checked by download), {len(report.deleted)} removed"
                      + ("; published" if report.published else ""))


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
    from teadist.api import demo as run_demo

    result = run_demo(keep, progress=_reporter(quiet, as_json))
    if as_json:
        _emit_json(result.__dict__)
    else:
        echo(f"demo ok: {len(result.steps)} steps")

