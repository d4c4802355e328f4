"""Files on disk: split a model, assemble (or merge) it again, verify, inspect."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teadist.api.configure import open_cache, settings_for
from teadist.api.guard import boundary, size_arg, text_arg
from teadist.api.progress import Progress, reporter_for
from teadist.errors import NotFoundError, UsageError
from teadist.settings import Settings

if TYPE_CHECKING:
    from teadist.cache.store import ModelCache
    from teadist.formats.gguf_info import GGUFInfo
    from teadist.pipelines.split import SplitResult
    from teadist.pipelines.verify import VerifyReport


@dataclass(frozen=True)
class Assembled:
    """What ``assemble`` wrote: the verified file, or (``merged``) a merge of foreign shards."""

    path: Path
    sha256: str
    size: int
    already_present: bool
    resumed_bytes: int = 0
    merged: bool = False



@boundary
def split(file: Path | str, out: Path | str = ".", *, format: str = "bytes", chunk_size: int | None = None,
          shard_size: int | None = None, name: str | None = None, base_url: str | None = None,
          progress: Progress = None) -> SplitResult:
    """Cut ``file`` into byte chunks (``format="bytes"``, ``chunk_size`` under 2 GiB) or llama.cpp
    shards (``format="gguf"``, ``shard_size``) in ``out``, with a manifest written last."""
    from teadist.pipelines.split import SplitResult

    file, out = Path(text_arg(file, "file")), Path(text_arg(out, "out"))
    chunk_size, shard_size = size_arg(chunk_size, "chunk_size"), size_arg(shard_size, "shard_size")
    if name is not None and not _utf8(text_arg(name, "name", paths=False)):
        raise UsageError("name is not valid UTF-8 text", hint="a manifest carries UTF-8 names only")
    if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        raise UsageError("base_url must start with http:// or https://")
    reporter = reporter_for(progress)
    if format == "gguf":
        if chunk_size is not None:
            raise UsageError("a chunk size applies to byte chunks, not to gguf shards",
                             hint="use a shard size with the gguf format")
        from teadist.formats.gguf_layout import DEFAULT_SHARD_SIZE
        from teadist.pipelines.gguf_split import split_gguf

        if shard_size is None:
            shard_size = DEFAULT_SHARD_SIZE
        sharded = split_gguf(file, out, reporter, shard_size=shard_size,
                             name=name, base_url=base_url)
        return SplitResult(sharded.manifest, sharded.manifest_path, len(sharded.manifest.chunks), 0)
    if format != "bytes":
        raise UsageError(f"format must be bytes or gguf, not {format!r}")
    if shard_size is not None:
        raise UsageError("a shard size applies to gguf shards, not to byte chunks",
                         hint="use a chunk size with the bytes format")
    from teadist.pipelines.split import DEFAULT_CHUNK_SIZE, split_file

    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    return split_file(file, out, reporter, chunk_size=size, name=name, base_url=base_url)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@boundary
def assemble(manifest: Path | str, *, chunks: Path | str | None = None, out: Path | str | None = None,
             cache_dir: Path | str | None = None, progress: Progress = None,
             settings: Settings | None = None) -> Assembled:
    """Rebuild the original from its chunks (or merge llama.cpp shards that came without a teadist
    manifest), verifying every chunk and the whole; installed in the cache unless ``out`` is given
    (a folder — existing, or named with a trailing ``/`` — receives the file under its own name)."""
    from teadist.formats.manifest import load_manifest
    from teadist.pipelines.assemble import assemble_chunks
    from teadist.pipelines.gguf_merge import is_shard_name

    settings = settings or settings_for(cache_dir)
    cache = open_cache(settings)
    reporter = reporter_for(progress)
    given = Path(text_arg(manifest, "manifest"))
    if is_shard_name(given.name) and given.is_file():
        from teadist.formats.gguf_info import looks_like_gguf
        from teadist.pipelines.gguf_merge import merge_foreign_shards

        if looks_like_gguf(given):
            merged_name = given.name.rsplit("-", 3)[0] + ".gguf"
            dest = _destination(out, merged_name, cache)
            sha, size = merge_foreign_shards(given, cache.layout.target_for(dest), reporter, cache=cache)
            return Assembled(dest, sha, size, already_present=False, merged=True)
    _refuse_a_model_for_a_manifest(given)
    m = load_manifest(given)
    dest = _destination(out, m.file.name, cache)
    folder = Path(chunks) if chunks is not None else given.parent
    source = f"manifest:{given.resolve()}"
    if m.format == "gguf":
        from teadist.pipelines.gguf_rebuild import rebuild_original

        sha, size, present = rebuild_original(m, folder, dest, reporter, cache=cache, source=source)
        return Assembled(dest, sha, size, already_present=present)
    done = assemble_chunks(m, folder, dest, reporter, cache=cache, source=source)
    return Assembled(done.path, done.sha256, done.size, done.already_present, done.resumed_bytes)


def _destination(out: Path | str | None, file_name: str, cache: ModelCache) -> Path:
    """``out`` names the file, or a folder for it: an existing one, or one named with a trailing slash
    (made here); no ``out``: the cache, under the upstream file name."""
    if out is None:
        return cache.path_for(file_name)
    text = str(out)
    folder = Path(text)
    if text.endswith(("/", os.sep)):
        folder.mkdir(parents=True, exist_ok=True)
        return folder / file_name
    return folder / file_name if folder.is_dir() else folder


def _refuse_a_model_for_a_manifest(path: Path) -> None:
    """A GGUF where a manifest belongs gets a message about what was passed, not about JSON."""
    from teadist.formats.gguf_info import looks_like_gguf

    if path.is_file() and path.suffix.lower() == ".gguf" and looks_like_gguf(path):
        raise UsageError(f"{path} is a GGUF model, not a manifest: assemble rebuilds a model from a manifest "
                         "and its chunks",
                         hint="pass the <file>.manifest.json that `teadist split` wrote (or the first shard "
                              "<name>-00001-of-0000N.gguf to merge llama.cpp shards)")


@boundary
def verify(target: Path | str | None = None, *, manifest: Path | str | None = None,
           cache_dir: Path | str | None = None, progress: Progress = None,
           settings: Settings | None = None, full: bool = False) -> VerifyReport:
    """Check a model file, a folder of chunks, a manifest's chunks, a cached model (by any of its names)
    or, with no target, the whole cache; the report says OK / MISSING / MISMATCH / DAMAGED per item.
    A cached model with a proven block map is checked against that map; ``full`` hashes it whole
    against its recorded sha256 (a manifest's files are always hashed whole)."""
    from teadist.formats.manifest import MANIFEST_SUFFIX, load_manifest
    from teadist.pipelines import verify as v
    from teadist.pipelines.resolve import classify, find_cached, registry_manifest

    settings = settings or settings_for(cache_dir)
    reporter = reporter_for(progress)
    cache = open_cache(settings)
    if target is None:
        if manifest is not None:
            raise UsageError("--manifest needs a TARGET to check against it")
        return v.verify_whole_cache(cache, reporter, full)
    text = text_arg(target, "target")
    if manifest is not None:
        path = Path(text)
        m = load_manifest(Path(manifest))
        return v.verify_chunk_folder(path, m, reporter) if path.is_dir() \
            else v.verify_file_against_manifest(path, m, reporter)
    named = classify(text, cache)
    if named.kind == "name":
        model = find_cached(cache, text)
        if model is None and registry_manifest(text) is not None:  # the registry's model, never another
            raise NotFoundError(f"{text!r} is not installed in {cache.root}", hint=f"run `teadist fetch {text}`")
        return v.verify_cached(cache, model.head.filename if model is not None else text, reporter, full)
    if named.kind != "path":
        raise UsageError(f"verify checks local files and cached models, not {text!r}",
                         hint="fetch it first: `teadist fetch` verifies what it downloads")
    path = Path(named.text)
    if path.is_file() and path.name.endswith(MANIFEST_SUFFIX):
        return v.verify_chunk_folder(path.parent, load_manifest(path), reporter)
    if path.is_dir():
        found = sorted(path.glob("*" + MANIFEST_SUFFIX))
        if not found:
            raise UsageError(f"{path} holds no manifest ({MANIFEST_SUFFIX}) to check its files against",
                             hint="pass one with --manifest, or name a model file or a manifest")
        if len(found) != 1:
            raise UsageError(f"{path} holds {len(found)} manifests; say which one with --manifest",
                             hint=f"teadist verify {path} --manifest {path}/NAME{MANIFEST_SUFFIX}")
        return v.verify_chunk_folder(path, load_manifest(found[0]), reporter)
    if path.is_file() and cache.contains(path):
        return v.verify_cached(cache, path.name, reporter, full)
    if path.exists():
        raise UsageError(f"nothing to verify {text} against: it is not in the cache",
                         hint="pass its manifest with --manifest")
    raise NotFoundError(f"{text}: no such file or folder")


@boundary
def inspect(path: Path | str) -> GGUFInfo:
    """What a GGUF file is (architecture, parameters, quantization, context, chat template…), its
    header checked as llama.cpp's loader does."""
    from teadist.formats.gguf_info import read_info

    given = Path(text_arg(path, "path"))
    try:
        mode = given.stat().st_mode
    except FileNotFoundError:
        raise NotFoundError(f"file not found: {given}") from None
    if not stat.S_ISREG(mode):  # a folder, a device, a FIFO: never opened, never waited on
        raise UsageError(f"{given} is not a regular file", hint="inspect takes a .gguf file")
    return read_info(given)
