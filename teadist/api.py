"""teadist's Python API: what programs call (the TEA Python runtime), and what the CLI itself calls.

It never prints. Progress goes to ``progress``: a callable ``progress(description, done, total)``
(``total`` None when unknown) or a ``teadist.base.progress.Reporter`` (the CLI plugs tqdm in
that way); messages and warnings reach only a Reporter. Every failure is a ``TeadistError``
(``teadist.errors``) with a one-line ``message`` and a ``hint``. Settings come from the
arguments, then the environment (read once, in ``teadist.settings``), then the defaults.

    import teadist
    path = teadist.fetch("phi-4-mini")            # installed and verified; a pathlib.Path
    teadist.model_path("phi-4-mini")              # where the TEA runtimes would load it, or None
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from teadist.base.progress import NullReporter, ProgressTask, Reporter
from teadist.errors import NotFoundError, UsageError
from teadist.settings import Settings, resolve_settings

if TYPE_CHECKING:
    from teadist.cache.store import ModelCache
    from teadist.formats.gguf_info import GGUFInfo
    from teadist.pipelines.fetch import FetchOptions, FetchResult
    from teadist.pipelines.split import SplitResult
    from teadist.pipelines.verify import VerifyReport
    from teadist.sources.download import Downloader

ProgressCallback = Callable[[str, int, Union[int, None]], None]  # noqa: UP007 - a runtime alias on 3.11
Progress = Union[Reporter, ProgressCallback, None]  # noqa: UP007

@dataclass(frozen=True)
class Assembled:
    """What ``assemble`` wrote: the verified file, or (``merged``) a merge of foreign shards."""

    path: Path
    sha256: str
    size: int
    already_present: bool
    resumed_bytes: int = 0
    merged: bool = False


__all__ = ["Assembled", "ProgressCallback", "assemble", "fetch", "fetch_model", "find_model", "inspect", "model_path",
           "split", "verify"]


# -- progress ------------------------------------------------------------------------------------
class _CallbackTask:
    def __init__(self, callback: ProgressCallback, description: str, total: int | None) -> None:
        self._callback, self._description, self._total, self._done = callback, description, total, 0
        callback(description, 0, total)

    def advance(self, n: int) -> None:
        self._done += n
        self._callback(self._description, self._done, self._total)

    def close(self) -> None:
        pass


class _CallbackReporter(NullReporter):
    """Progress to a plain callable; messages are kept (``messages``), never printed."""

    def __init__(self, callback: ProgressCallback) -> None:
        super().__init__()
        self._callback = callback

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _CallbackTask(self._callback, description, total)


def reporter_for(progress: Progress) -> Reporter:
    if progress is None:
        return NullReporter()
    if hasattr(progress, "task"):
        return progress  # type: ignore[return-value]
    if callable(progress):
        return _CallbackReporter(progress)
    raise UsageError("progress must be a callable progress(description, done, total) or a Reporter")


# -- settings → the objects the pipelines take -----------------------------------------------------
def settings_for(cache_dir: Path | str | None = None, offline: bool | None = None, debug: bool = False) -> Settings:
    return resolve_settings(cache_dir=Path(cache_dir) if cache_dir is not None else None, offline=offline,
                            debug=debug)


def open_cache(settings: Settings) -> ModelCache:
    from teadist.cache.store import ModelCache

    return ModelCache(settings.models_dir)


def downloader_for(settings: Settings, reporter: Reporter, jobs: int = 4) -> Downloader:
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    policy = RetryPolicy(attempts=max(1, settings.retries), backoff=settings.retry_backoff,
                         stall_timeout=settings.stall_timeout)
    return Downloader(reporter, policy, jobs=jobs, segment_min=settings.parallel_min)


def fetch_options_for(settings: Settings, jobs: int = 4, source: str | None = None,
                      keep_shards: bool = False) -> FetchOptions:
    """The token policy: HF_TOKEN, else the saved login, and only for the official Hub endpoint."""
    from teadist.pipelines.fetch import FetchOptions
    from teadist.sources.hub import DEFAULT_ENDPOINT, is_official_endpoint

    endpoint = settings.hf_endpoint or DEFAULT_ENDPOINT
    token = settings.hf_token
    if token is None and is_official_endpoint(endpoint) and not settings.offline:
        from teadist.settings import register_secret
        from teadist.sources.hub import saved_token

        token = saved_token()
        register_secret(token)
    return FetchOptions(endpoint=endpoint, token=token, offline=settings.offline, jobs=jobs, source=source,
                        keep_shards=keep_shards)


# -- fetch and names -----------------------------------------------------------------------------
def fetch_model(model: str, *, cache_dir: Path | str | None = None, offline: bool | None = None,
                source: str | None = None, progress: Progress = None, jobs: int = 4,
                keep_shards: bool = False, settings: Settings | None = None) -> FetchResult:
    """``fetch`` with the whole result: path, name, sha256, size, whether it was already there."""
    from teadist.pipelines.fetch import fetch as run_fetch

    if not 1 <= jobs <= 32:
        raise UsageError(f"jobs must be between 1 and 32, not {jobs}")
    settings = settings or settings_for(cache_dir, offline)
    reporter = reporter_for(progress)
    options = fetch_options_for(settings, jobs, source, keep_shards)
    result = run_fetch(model, open_cache(settings), options, reporter, downloader_for(settings, reporter, jobs))
    _warn_if_too_big(result.path, reporter)
    return result


def _warn_if_too_big(path: Path, reporter: Reporter) -> None:
    """A warning when the model needs more memory than the machine has (weights + KV cache at its
    own context length; what it needs at 4096 tokens is said too)."""
    from teadist.base.sizes import format_size
    from teadist.errors import TeadistError
    from teadist.formats.gguf_info import looks_like_gguf, read_info
    from teadist.pipelines.fit import machine_memory, memory_needed

    memory = machine_memory()
    if memory is None or not looks_like_gguf(path):
        return
    try:
        info = read_info(path)
    except TeadistError:
        return  # kept shards and other layouts: the fetch itself verified the bytes
    need = memory_needed(info)
    if need.total > memory:
        small = memory_needed(info, min(4096, need.context or 4096))
        reporter.warn(f"{path.name} needs {format_size(need.total)} of memory at its full context "
                      f"({need.context} tokens); this machine has {format_size(memory)} (at 4096 tokens it "
                      f"needs {format_size(small.total)})")


def fetch(model: str, *, cache_dir: Path | str | None = None, offline: bool | None = None,
          source: str | None = None, progress: Progress = None) -> Path:
    """Download ``model`` (a registry name, ``hf://ORG/REPO/FILE[@REV]``, or a manifest URL or path),
    verify its SHA-256 and install it in the TEA model cache; the installed path."""
    return fetch_model(model, cache_dir=cache_dir, offline=offline, source=source, progress=progress).path


def find_model(name: str, *, cache_dir: Path | str | None = None, settings: Settings | None = None,
               ) -> tuple[Path, str]:
    """The path the TEA runtimes would load for ``name`` and where it was found (``TEA_MODEL_PATH``,
    ``APPDIR`` or ``cache``), in their order. From the cache only a model teadist recorded and that
    is unchanged since it was verified; the lookup counts as a use (``prune`` evicts least recently
    used). NotFoundError otherwise."""
    from teadist.pipelines.resolve import cached_filename, classify, verified_in_cache

    settings = settings or settings_for(cache_dir)
    cache = open_cache(settings)
    classify(name, cache, takes_paths=False)
    if settings.tea_model_path and Path(settings.tea_model_path).is_file():
        return Path(settings.tea_model_path), "TEA_MODEL_PATH"
    filename = cached_filename(cache, name)
    if settings.appdir and filename is not None:
        bundled = Path(settings.appdir) / "usr" / "share" / "models" / filename
        if bundled.is_file():
            return bundled, "APPDIR"
    record = verified_in_cache(cache, name)
    return cache.path_for(record.filename), "cache"


def model_path(name: str, *, cache_dir: Path | str | None = None) -> Path | None:
    """Where the TEA runtimes would load ``name`` from (``TEA_MODEL_PATH``, ``$APPDIR/usr/share/models``,
    then a verified model in the cache), or None."""
    try:
        return find_model(name, cache_dir=cache_dir)[0]
    except NotFoundError:
        return None


# -- files ---------------------------------------------------------------------------------------
def split(file: Path | str, out: Path | str = ".", *, format: str = "bytes", chunk_size: int | None = None,
          shard_size: int | None = None, name: str | None = None, base_url: str | None = None,
          progress: Progress = None) -> SplitResult:
    """Cut ``file`` into byte chunks (``format="bytes"``, ``chunk_size`` under 2 GiB) or llama.cpp
    shards (``format="gguf"``, ``shard_size``) in ``out``, with a manifest written last."""
    from teadist.pipelines.split import SplitResult

    if base_url is not None and not base_url.startswith(("http://", "https://")):
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
        sharded = split_gguf(Path(file), Path(out), reporter, shard_size=shard_size,
                             name=name, base_url=base_url)
        return SplitResult(sharded.manifest, sharded.manifest_path, len(sharded.manifest.chunks), 0)
    if format != "bytes":
        raise UsageError(f"format must be bytes or gguf, not {format!r}")
    if shard_size is not None:
        raise UsageError("a shard size applies to gguf shards, not to byte chunks",
                         hint="use a chunk size with the bytes format")
    from teadist.pipelines.split import DEFAULT_CHUNK_SIZE, split_file

    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    return split_file(Path(file), Path(out), reporter, chunk_size=size, name=name, base_url=base_url)


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
    given = Path(manifest)
    if is_shard_name(given.name) and given.is_file():
        from teadist.formats.gguf_info import looks_like_gguf
        from teadist.pipelines.gguf_merge import merge_foreign_shards

        if looks_like_gguf(given):
            merged_name = given.name.rsplit("-", 3)[0] + ".gguf"
            dest = _destination(out, merged_name, cache)
            sha, size = merge_foreign_shards(given, cache.layout.target_for(dest), reporter)
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


def verify(target: Path | str | None = None, *, manifest: Path | str | None = None,
           cache_dir: Path | str | None = None, progress: Progress = None,
           settings: Settings | None = None) -> VerifyReport:
    """Check a model file, a folder of chunks, a manifest's chunks, a cached model (by any of its names)
    or, with no target, the whole cache; the report says OK / MISSING / MISMATCH / DAMAGED per item."""
    from teadist.formats.manifest import MANIFEST_SUFFIX, load_manifest
    from teadist.pipelines import verify as v
    from teadist.pipelines.resolve import classify, find_cached, registry_manifest

    settings = settings or settings_for(cache_dir)
    reporter = reporter_for(progress)
    cache = open_cache(settings)
    if target is None:
        if manifest is not None:
            raise UsageError("--manifest needs a TARGET to check against it")
        return v.verify_whole_cache(cache, reporter)
    text = str(target)
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
        return v.verify_cached(cache, model.head.filename if model is not None else text, reporter)
    if named.kind != "path":
        raise UsageError(f"verify checks local files and cached models, not {text!r}",
                         hint="fetch it first: `teadist fetch` verifies what it downloads")
    path = Path(named.text)
    if path.is_file() and path.name.endswith(MANIFEST_SUFFIX):
        return v.verify_chunk_folder(path.parent, load_manifest(path), reporter)
    if path.is_dir():
        found = sorted(path.glob("*" + MANIFEST_SUFFIX))
        if len(found) != 1:
            raise UsageError(f"{path} holds {len(found)} manifests; say which one with --manifest",
                             hint=f"teadist verify {path} --manifest {path}/NAME{MANIFEST_SUFFIX}")
        return v.verify_chunk_folder(path, load_manifest(found[0]), reporter)
    if path.is_file() and cache.contains(path):
        return v.verify_cached(cache, path.name, reporter)
    if path.exists():
        raise UsageError(f"nothing to verify {text} against: it is not in the cache",
                         hint="pass its manifest with --manifest")
    raise NotFoundError(f"{text}: no such file or folder")


def inspect(path: Path | str) -> GGUFInfo:
    """What a GGUF file is (architecture, parameters, quantization, context, chat template…), its
    header checked as llama.cpp's loader does."""
    from teadist.formats.gguf_info import read_info

    return read_info(Path(path))
