"""Getting a model and finding it again: fetch (verified, installed in the cache) and the TEA
runtimes' resolution order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from teadist.api.configure import downloader_for, fetch_options_for, open_cache, settings_for
from teadist.api.guard import boundary, text_arg
from teadist.api.memory import warn_if_too_big
from teadist.api.progress import Progress, reporter_for
from teadist.errors import NotFoundError, UsageError
from teadist.settings import Settings

if TYPE_CHECKING:
    from teadist.pipelines.fetch import FetchResult


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
    warn_if_too_big(result.path, reporter)
    return result


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
