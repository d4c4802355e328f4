"""Settings (arguments, then the environment, then the defaults) turned into the objects the pipelines
take: the cache, the downloader, the fetch options with the token policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from teadist.base.progress import Reporter
from teadist.errors import UsageError
from teadist.settings import Settings, resolve_settings

if TYPE_CHECKING:
    from teadist.cache.store import ModelCache
    from teadist.pipelines.fetch import FetchOptions
    from teadist.sources.download import Downloader


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
