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

import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar, Union

from teadist.base.progress import NullReporter, ProgressTask, Reporter
from teadist.errors import FileSystemError, NotFoundError, UsageError
from teadist.settings import Settings, resolve_settings

if TYPE_CHECKING:
    from teadist.cache.store import CachedModel, ModelCache
    from teadist.formats.gguf_info import GGUFInfo
    from teadist.pipelines.demo import DemoResult
    from teadist.pipelines.fetch import FetchOptions, FetchResult
    from teadist.pipelines.repair import RepairResult
    from teadist.pipelines.serve import StaticServer
    from teadist.pipelines.split import SplitResult
    from teadist.pipelines.verify import VerifyReport
    from teadist.release.prepare import PreparedRelease
    from teadist.release.publish import PublishReport
    from teadist.release.wasmpkg import PackageReport
    from teadist.sources.download import Downloader
    from teadist.web import CopiedAsset

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


__all__ = [
    "Assembled",
    "DiskUsage",
    "ListedModel",
    "Listing",
    "MemoryReport",
    "ModelEntry",
    "ProgressCallback",
    "RegistryModel",
    "Serving",
    "assemble",
    "copy_web_assets",
    "demo",
    "disk_usage",
    "fetch",
    "fetch_model",
    "find_model",
    "inspect",
    "list_models",
    "memory_report",
    "model_path",
    "open_server",
    "package_wasm",
    "pin",
    "prepare_release",
    "prune",
    "publish_release",
    "registry_models",
    "remove",
    "split",
    "verify",
]


# -- the boundary: what callers pass in, and what the system throws back ---------------------------
P = ParamSpec("P")
R = TypeVar("R")


def boundary(func: Callable[P, R]) -> Callable[P, R]:
    """An OSError from below leaves the API as a FileSystemError naming the file, never bare."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise FileSystemError(f"{exc.strerror or exc}{where}",
                                  hint="check the file's permissions and the disk it is on") from exc

    return wrapper


def text_arg(value: object, what: str, paths: bool = True) -> str:
    """A str argument (or, where ``paths``, an os.PathLike); anything else is a UsageError."""
    if paths and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a {'str or path' if paths else 'str'}, not {type(value).__name__}")
    if not value.strip():
        raise UsageError(f"{what} is empty", hint=f"name the {what}")
    return value


def size_arg(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number of bytes, not {type(value).__name__} {value!r:.40}",
                         hint="teadist.base.sizes.parse_size('1.9G') turns text into bytes")
    return value


# -- progress ------------------------------------------------------------------------------------
class _CallbackTask:
    def __init__(self, callback: ProgressCallback, description: str, total: int | None) -> None:
        self._callback, self._description, self._total, self._done = callback, description, total, 0
        callback(description, 0, total)

    def advance(self, n: int) -> None:
        self._done += n
        self._callback(self._description, self._done, self._total)

    def note(self, text: str) -> None:
        pass  # the callback carries counts only

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
def settings_for(cache_dir: Path | str | None = None, offline: bool | None = None) -> Settings:
    """Arguments beat the environment: a variable is read only when no argument gave its value."""
    if offline is not None and not isinstance(offline, bool):
        raise UsageError(f"offline must be True, False or None, not {offline!r:.40}")
    return resolve_settings(cache_dir=cache_dir, offline=offline)


def open_cache(settings: Settings) -> ModelCache:
    from teadist.cache.store import ModelCache

    return ModelCache(settings.models_dir)


def downloader_for(settings: Settings, reporter: Reporter, jobs: int | None = None) -> Downloader:
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    policy = RetryPolicy(attempts=max(1, settings.retries), backoff=settings.retry_backoff,
                         stall_timeout=settings.stall_timeout)
    return Downloader(reporter, policy, jobs=jobs, cap=settings.max_connections, align=settings.range_align)


def fetch_options_for(settings: Settings, jobs: int | None = None, source: str | None = None,
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
@boundary
def fetch_model(model: str | os.PathLike[str], *, cache_dir: Path | str | None = None, offline: bool | None = None,
                source: str | None = None, progress: Progress = None, jobs: int | None = None,
                keep_shards: bool = False, settings: Settings | None = None) -> FetchResult:
    """``fetch`` with the whole result: path, name, sha256, size, whether it was already there."""
    from teadist.pipelines.fetch import fetch as run_fetch

    model = text_arg(model, "model")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 32):
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


@boundary
def fetch(model: str | os.PathLike[str], *, cache_dir: Path | str | None = None, offline: bool | None = None,
          source: str | None = None, progress: Progress = None) -> Path:
    """Download ``model`` (a registry name, ``hf://ORG/REPO/FILE[@REV]``, or a manifest URL or path),
    verify its SHA-256 and install it in the TEA model cache; the installed path."""
    return fetch_model(model, cache_dir=cache_dir, offline=offline, source=source, progress=progress).path


@boundary
def find_model(name: str, *, cache_dir: Path | str | None = None, settings: Settings | None = None,
               ) -> tuple[Path, str]:
    """The path the TEA runtimes would load for ``name`` and where it was found (``TEA_MODEL_PATH``,
    ``APPDIR`` or ``cache``), in their order. From the cache only a model teadist recorded and that
    is unchanged since it was verified; the lookup counts as a use (``prune`` evicts least recently
    used). NotFoundError otherwise."""
    from teadist.pipelines.resolve import cached_filename, classify, verified_in_cache

    name = text_arg(name, "model name", paths=False)
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


@boundary
def model_path(name: str, *, cache_dir: Path | str | None = None) -> Path | None:
    """Where the TEA runtimes would load ``name`` from (``TEA_MODEL_PATH``, ``$APPDIR/usr/share/models``,
    then a verified model in the cache), or None."""
    try:
        return find_model(name, cache_dir=cache_dir)[0]
    except NotFoundError:
        return None


# -- files ---------------------------------------------------------------------------------------
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


# -- the cache: list, du, rm, prune, the registry ----------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """One model, described with the same fields wherever one is shown (list, du, models, fetch)."""

    name: str
    file: str
    size: int | None
    sha256: str | None
    path: Path | None  # None: not on this machine (a registry model not fetched)

    def to_dict(self) -> dict[str, object]:
        data = {k: v for k, v in self.__dict__.items()}
        data["path"] = None if self.path is None else str(self.path)
        return data


@dataclass(frozen=True)
class ListedModel(ModelEntry):
    files: list[str]
    missing: list[str]  # files its record lists that are gone
    source: str
    installed_at: str
    verified_at: str | None
    last_used: str | None


@dataclass(frozen=True)
class Listing:
    cache: Path
    models: list[ListedModel]
    damaged: list[tuple[Path, str]]  # (record, problem)
    unrecorded: list[tuple[Path, int]]  # GGUF files put there by hand: (path, size)


@dataclass(frozen=True)
class DiskUsage:
    cache: Path
    models: list[ModelEntry]
    partials: int
    free: int

    @property
    def total(self) -> int:
        return sum(m.size or 0 for m in self.models)


@dataclass(frozen=True)
class RegistryModel(ModelEntry):
    default: bool
    pinned: bool
    cached: bool
    fits: str | None  # fits / tight / too-big against this machine's memory; None where unknown


def _only(cache: ModelCache, models: list[CachedModel], name: str | None) -> list[CachedModel]:
    """Of ``models`` (the cache's, as one scan read them), every one, or the one ``name`` names (by the
    resolver's rules; NotFoundError if none)."""
    from teadist.pipelines.resolve import classify, find_cached

    if name is None:
        return models
    name = text_arg(name, "model name", paths=False)
    classify(name, cache, takes_paths=False)
    found = find_cached(cache, name, models)
    if found is None:
        raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
    return [m for m in models if m.head.filename == found.head.filename]


@boundary
def list_models(name: str | None = None, *, cache_dir: Path | str | None = None,
                settings: Settings | None = None) -> Listing:
    """The models in the cache (or only ``name``), with what is gone, damaged records, and GGUF files
    nobody installed (those two only when listing the whole cache)."""
    from teadist.pipelines.prune import model_bytes

    cache = open_cache(settings or settings_for(cache_dir))
    scan = cache.scan()  # each record read once: the models, damaged records and strays all come from it
    rows = []
    for model in _only(cache, scan.models, name):
        head = model.head
        missing = [m.filename for m in model.members if not cache.path_for(m.filename).is_file()]
        size = sum(m.size if m.size is not None else 0 for m in model.members) or model_bytes(cache, model)
        rows.append(ListedModel(head.name, head.filename, size, head.sha256, cache.path_for(head.filename),
                                model.filenames, missing, head.source, head.installed_at, head.verified_at,
                                head.last_used))
    if name is not None:
        return Listing(cache.root, rows, [], [])
    unrecorded = []
    for path in scan.unrecorded:
        try:
            unrecorded.append((path, path.stat().st_size))
        except FileNotFoundError:
            continue  # removed meanwhile
    return Listing(cache.root, rows, [(d.path, d.problem) for d in scan.damaged], unrecorded)


@boundary
def disk_usage(name: str | None = None, *, cache_dir: Path | str | None = None,
               settings: Settings | None = None) -> DiskUsage:
    """The space each cached model takes (kept shards included), what is in flight, and what is free."""
    from teadist.base.fsutil import free_bytes
    from teadist.pipelines.prune import in_flight, model_bytes

    cache = open_cache(settings or settings_for(cache_dir))
    models = [ModelEntry(m.head.name, m.head.filename, model_bytes(cache, m), m.head.sha256,
                         cache.path_for(m.head.filename)) for m in _only(cache, cache.scan().models, name)]
    return DiskUsage(cache.root, models, sum(size for _, size in in_flight(cache)), free_bytes(cache.root))


@boundary
def repair(name: str | None = None, *, offline: bool | None = None, cache_dir: Path | str | None = None,
           progress: Progress = None, settings: Settings | None = None) -> list[RepairResult]:
    """Verify cached models (``name``, or every one) block by block and re-fetch only the damaged
    blocks from where each came from; the whole sha256 is checked again at the end. One result per
    model (blocks found bad, fetched again, bytes moved)."""
    from teadist.pipelines.repair import RepairOptions, repair_cached

    if name is not None:
        name = text_arg(name, "model name", paths=False)
    settings = settings or settings_for(cache_dir, offline)
    reporter = reporter_for(progress)
    cache = open_cache(settings)
    fetch_options = fetch_options_for(settings, jobs=1)
    options = RepairOptions(endpoint=fetch_options.endpoint, token=fetch_options.token, offline=settings.offline)
    downloader = downloader_for(settings, reporter, 1)
    names = [name] if name is not None else [m.head.filename for m in cache.scan().models]
    return [repair_cached(cache, n, options, reporter, downloader) for n in names]


@boundary
def remove(name: str, *, cache_dir: Path | str | None = None, settings: Settings | None = None) -> list[Path]:
    """Remove the model ``name`` names (all its files and its records), or a damaged record by its file
    name; also finishes an interrupted removal. The paths removed."""
    from teadist.pipelines.resolve import classify, find_cached

    name = text_arg(name, "model name", paths=False)
    cache = open_cache(settings or settings_for(cache_dir))
    classify(name, cache, takes_paths=False)
    model = find_cached(cache, name)
    if model is not None:
        return cache.remove(model) or []
    damaged = cache.find_damaged(name)
    if damaged is None:
        raise NotFoundError(f"no cached model named {name!r}", hint="see `teadist list`")
    return cache.remove_damaged(damaged)


@boundary
def prune(*, max_size: int | None = None, partials: bool = False, cache_dir: Path | str | None = None,
          settings: Settings | None = None) -> list[Path]:
    """Free space: stale partial downloads (``partials``) and least recently used models until the cache
    fits in ``max_size`` bytes; whatever another teadist is working on is left alone."""
    from teadist.pipelines.prune import prune_lru, prune_partials

    max_size = size_arg(max_size, "max_size")
    if max_size is None and not partials:
        raise UsageError("say what to prune: --max-size SIZE and/or --partials")
    cache = open_cache(settings or settings_for(cache_dir))
    removed: list[Path] = []
    if partials:
        removed += prune_partials(cache)
    if max_size is not None:
        removed += prune_lru(cache, max_size)
    return removed


@boundary
def registry_models(*, cache_dir: Path | str | None = None, settings: Settings | None = None,
                    ) -> tuple[list[RegistryModel], int | None]:
    """Every registry model, whether it is cached (verified, unchanged) and whether its weights fit this
    machine's memory; and that memory (None where the system does not say)."""
    from teadist.pipelines.fit import machine_memory, verdict
    from teadist.sources import registry

    cache = open_cache(settings or settings_for(cache_dir))
    memory = machine_memory()
    rows = []
    for m in registry.entries():
        record = cache.read_record(m.file.name)
        cached = record is not None and cache.is_current(record) and m.file.sha256 in (None, record.sha256)
        sha = m.file.sha256 or (record.sha256 if cached and record is not None else None)
        rows.append(RegistryModel(m.reference, m.file.name, m.file.size, sha,
                                  cache.path_for(m.file.name) if cached else None,
                                  bool(m.tag and m.default_tag), m.is_pinned, cached, verdict(m.file.size, memory)))
    return rows, memory


@dataclass(frozen=True)
class MemoryReport:
    weights: int
    kv_cache: int | None
    context: int | None
    total: int
    machine: int | None
    verdict: str | None


MAX_CONTEXT = 2**24


def memory_report(info: GGUFInfo, context: int | None = None) -> MemoryReport:
    """The memory ``info``'s model needs (weights + KV cache at ``context``, default its own) against
    this machine's."""
    from teadist.pipelines.fit import machine_memory, memory_needed, verdict

    if context is not None and (isinstance(context, bool) or not isinstance(context, int)
                                or not 1 <= context <= MAX_CONTEXT):
        raise UsageError(f"context must be between 1 and {MAX_CONTEXT} tokens, not {context!r:.40}")
    need = memory_needed(info, context)
    machine = machine_memory()
    return MemoryReport(need.weights, need.kv_cache, need.context, need.total, machine, verdict(need.total, machine))


# -- maintainers: registry, serve, packages, releases, demo, web assets ------------------------------
@boundary
def pin(name: str, *, write: bool = False, force: bool = False, registry_dir: Path | str | None = None,
        settings: Settings | None = None) -> dict[str, object]:
    """Fill a registry entry's missing revision, size and sha256 from the Hub API (never weakening a pin
    unless ``force``); ``write`` edits the source tree's registry."""
    from teadist.release.pin import pin_entry

    settings = settings or settings_for()
    folder = None if registry_dir is None else Path(text_arg(registry_dir, "registry_dir"))
    return pin_entry(text_arg(name, "name", paths=False), fetch_options_for(settings, 1), write=write, force=force,
                     registry_dir=folder)


@boundary
def open_server(folder: Path | str, *, verify_manifest: Path | str | None = None, host: str = "127.0.0.1",
                port: int = 8000, timeout: float = 30.0, cors: bool = False, progress: Progress = None) -> Serving:
    """A static server for browser work, bound and ready; with ``verify_manifest`` its files are hashed
    first and a file that fails is never served."""
    import math

    from teadist.formats.manifest import load_manifest
    from teadist.pipelines.serve import MAX_TIMEOUT, MIN_TIMEOUT, StaticServer
    from teadist.web import asset_files

    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        raise UsageError(f"--timeout must be seconds between {MIN_TIMEOUT:g} and {MAX_TIMEOUT:g}, not {timeout!r}")
    root = Path(text_arg(folder, "folder"))
    if not root.is_dir():
        raise NotFoundError(f"folder not found: {root}")
    manifest_path = None if verify_manifest is None else Path(text_arg(verify_manifest, "verify_manifest"))
    if manifest_path is not None:  # a FIFO would block the read forever
        try:
            regular = stat.S_ISREG(manifest_path.stat().st_mode)
        except OSError:
            raise NotFoundError(f"manifest not found: {manifest_path}") from None
        if not regular:
            raise UsageError(f"--verify {manifest_path} is not a regular file")
    manifest = load_manifest(manifest_path) if manifest_path is not None else None
    server = StaticServer(root, manifest, host=host, port=port, timeout=timeout, reporter=reporter_for(progress),
                          manifest_dir=manifest_path.parent if manifest_path is not None else None,
                          assets=asset_files(), cors=cors)
    checks: list[tuple[str, str]] = []
    if manifest is not None:
        verdicts = server.verify_all()
        checks = [("OK" if good else "REFUSED", name) for name, good in sorted(verdicts.items())]
        checks += [("MISSING", name) for name in sorted(set(server.expected) - set(verdicts))
                   if not name.endswith("/" + manifest.file.name) and name != manifest.file.name]
    return Serving(server, checks)


@dataclass(frozen=True)
class Serving:
    """A bound server (``server.serve_forever()`` runs it) and, with a manifest, each listed file's
    verdict: OK, REFUSED (fails the manifest: never served) or MISSING."""

    server: StaticServer
    checks: list[tuple[str, str]]


@boundary
def package_wasm(pkg_dir: Path | str, version: str, out: Path | str = "dist", js: Path | str | None = None,
                 ) -> PackageReport:
    """A reproducible ``tea-wasm-llm-VERSION.tar.gz`` (mtimes from SOURCE_DATE_EPOCH) with the browser
    model cache inside; its size breakdown."""
    from teadist.release.wasmpkg import package_wasm as pack
    from teadist.release.wasmpkg import parse_source_date_epoch
    from teadist.settings import resolve_release_settings
    from teadist.web import asset_files

    epoch = parse_source_date_epoch(resolve_release_settings().source_date_epoch)
    return pack(Path(text_arg(pkg_dir, "pkg_dir")), text_arg(version, "version", paths=False),
                Path(text_arg(out, "out")), None if js is None else Path(text_arg(js, "js")),
                source_date_epoch=epoch, bundled=asset_files())


@boundary
def prepare_release(tag: str, repo: str, config: Path | str = "manifests/release.json", out: Path | str = "dist", *,
                    cache_dir: Path | str | None = None, progress: Progress = None,
                    settings: Settings | None = None) -> PreparedRelease:
    """Gather what a release ships (models fetched through the cache and split, the index) in ``out``."""
    from teadist.release.prepare import prepare_release as prepare

    settings = settings or settings_for(cache_dir)
    reporter = reporter_for(progress)

    def get_model(name: str) -> tuple[Path, str | None]:
        result = fetch_model(name, progress=reporter, settings=settings)
        return Path(result.path), result.sha256  # the split is held to the sha256 the fetch verified

    return prepare(tag, repo, Path(text_arg(config, "config")), Path(text_arg(out, "out")), reporter, get_model)


@boundary
def publish_release(tag: str, repo: str, dist: Path | str = "dist", *, dry_run: bool = False, draft: bool = False,
                    upload_timeout: float = 3600, progress: Progress = None) -> PublishReport:
    """Publish exactly what ``dist``'s release index lists to the GitHub Release of ``tag``, converging.
    Needs GITHUB_TOKEN; honours GITHUB_API_URL and TEADIST_GITHUB_WRITE_INTERVAL."""
    from teadist.release.publish import Publisher, check_api_url, check_upload_timeout, check_write_interval
    from teadist.settings import resolve_release_settings

    check_upload_timeout(upload_timeout)  # numbers first: nothing is written before they are sound
    env = resolve_release_settings()
    check_write_interval(env.write_interval)
    if not env.github_token:
        raise UsageError("GITHUB_TOKEN is not set", hint="export GITHUB_TOKEN (in Actions: secrets.GITHUB_TOKEN)")
    check_api_url(env.github_api_url)  # never echoed with a user name or password in it
    publisher = Publisher(repo, tag, env.github_token, env.github_api_url, reporter_for(progress),
                          upload_timeout=upload_timeout, write_interval=env.write_interval)
    return publisher.publish(Path(text_arg(dist, "dist")), dry_run=dry_run, draft=draft)


@boundary
def demo(keep: Path | str | None = None, *, progress: Progress = None) -> DemoResult:
    """The main job end to end on a tiny generated model, offline, in a temporary home (or ``keep``)."""
    from teadist.pipelines.demo import run_demo

    return run_demo(reporter_for(progress), None if keep is None else Path(text_arg(keep, "keep")))


@boundary
def copy_web_assets(folder: Path | str, *, force: bool = False) -> list[CopiedAsset]:
    """Copy the browser model cache (model-cache.js, its .d.ts, examples/index.html) into ``folder``."""
    from teadist.settings import folder_setting
    from teadist.web import copy_assets

    return copy_assets(folder_setting(folder, "FOLDER"), force=force)
