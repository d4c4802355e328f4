"""The cache and the registry as callers see them: list, du, repair, rm, prune, the registry's models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teadist.api.configure import downloader_for, fetch_options_for, open_cache, settings_for
from teadist.api.guard import boundary, size_arg, text_arg
from teadist.api.progress import Progress, reporter_for
from teadist.errors import NotFoundError, UsageError
from teadist.settings import Settings

if TYPE_CHECKING:
    from teadist.cache.store import CachedModel, ModelCache
    from teadist.pipelines.repair import RepairResult


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
