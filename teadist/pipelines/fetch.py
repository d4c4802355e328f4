"""``teadist fetch``: resolve what the user named, download it verified, install it in the cache.

What can be fetched: a registry name (``phi-4-mini``, ``phi-4-mini:q4_k_m``), a Hub path
(``hf://org/repo/file.gguf[@revision]``), or a manifest by URL or path (single-file or chunked).
Sources listed in a manifest are tried in order, falling back on a network error, a 404 or a
hash mismatch. Everything is done under a per-target lock, so concurrent fetches of one model
download it once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

from teadist.base.progress import Reporter
from teadist.cache.store import ModelCache, target_lock
from teadist.errors import (
    IntegrityError,
    ManifestError,
    NotFoundError,
    OfflineError,
    SourceError,
    TeadistError,
    UsageError,
)
from teadist.formats.manifest import FileRecord, HfSource, Manifest, Source, UrlSource, parse_manifest
from teadist.sources.download import Downloader
from teadist.sources.http import Auth, origin

MANIFEST_FETCH_LIMIT = 16 * 1024 * 1024


@dataclass
class Target:
    """What to install: a manifest plus where relative chunk names resolve (a URL or a folder)."""

    manifest: Manifest
    origin: str
    base_url: str | None = None
    base_dir: Path | None = None


@dataclass
class FetchOptions:
    endpoint: str
    token: str | None = None
    offline: bool = False
    jobs: int = 4
    source: str | None = None
    keep_shards: bool = False


@dataclass
class FetchResult:
    path: Path
    name: str
    sha256: str
    size: int
    already_present: bool
    source: str
    notes: list[str] = field(default_factory=list)


def parse_hf_spec(spec: str) -> HfSource:
    """``hf://org/repo/path/in/repo.gguf[@revision]``."""
    rest = spec.removeprefix("hf://")
    rest, _, revision = rest.partition("@")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise UsageError(f"invalid Hub path {spec!r}", hint="use hf://ORG/REPO/FILE.gguf[@REVISION]")
    return HfSource(repo=f"{parts[0]}/{parts[1]}", path="/".join(parts[2:]), revision=revision or None)


def resolve_target(spec: str, downloader: Downloader, offline: bool) -> Target:
    from teadist.pipelines.split import default_model_name
    from teadist.sources import registry

    if spec.startswith("hf://"):
        source = parse_hf_spec(spec)
        file_name = source.path.rsplit("/", 1)[-1]
        manifest = Manifest(name=default_model_name(file_name), file=FileRecord(file_name, None, None),
                            format="single", sources=[source])
        return Target(manifest, spec)
    if spec.startswith(("http://", "https://")):
        if offline:
            raise OfflineError(f"offline: cannot download the manifest {spec}")
        url, _, wanted = spec.partition("#")
        raw = _get_small(downloader, url)
        return Target(_parse_any(raw, url, wanted or None), spec, base_url=urljoin(url, "."))
    path_text, _, wanted = spec.partition("#")
    path = Path(path_text)
    if path.is_file():
        if path.stat().st_size > MANIFEST_FETCH_LIMIT:
            raise ManifestError(f"{path}: manifest is larger than {MANIFEST_FETCH_LIMIT} bytes")
        return Target(_parse_any(path.read_bytes(), str(path), wanted or None), str(path),
                      base_dir=path.parent.resolve())
    if "/" in spec or spec.endswith(".json"):
        raise NotFoundError(f"manifest not found: {spec}")
    return Target(registry.lookup(spec), f"registry:{spec}")


def _parse_any(raw: bytes, origin: str, wanted: str | None) -> Manifest:
    """A v1 manifest, or one model of a release index (``model-manifest.json``)."""
    import json

    from teadist.release.index import INDEX_KIND, manifest_from_index

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("kind") == INDEX_KIND:
        try:
            return manifest_from_index(data, wanted)
        except ManifestError as exc:
            raise ManifestError(f"{origin}: {exc.message}") from None
    return parse_manifest(raw, origin)


def _get_small(downloader: Downloader, url: str) -> bytes:
    import requests

    try:
        resp = downloader.session.get(url, timeout=(10, 30), stream=True)
    except requests.exceptions.RequestException as exc:
        raise SourceError(f"cannot download the manifest from {urlsplit(url).netloc} ({type(exc).__name__})") from None
    with resp:
        if resp.status_code == 404:
            raise NotFoundError(f"manifest not found: {url}")
        if resp.status_code != 200:
            raise SourceError(f"{urlsplit(url).netloc} answered HTTP {resp.status_code} for the manifest")
        data = resp.raw.read(MANIFEST_FETCH_LIMIT + 1)
    if len(data) > MANIFEST_FETCH_LIMIT:
        raise ManifestError(f"{url}: manifest is larger than {MANIFEST_FETCH_LIMIT} bytes")
    return bytes(data)


def _select_sources(sources: list[Source], forced: str | None) -> list[Source]:
    if forced is None:
        return sources
    if forced.isdigit():
        index = int(forced) - 1
        if not 0 <= index < len(sources):
            raise UsageError(f"--source {forced}: the manifest lists {len(sources)} sources")
        return [sources[index]]
    kind = {"hf": HfSource, "hub": HfSource, "url": UrlSource, "mirror": UrlSource}.get(forced)
    chosen = [s for s in sources if (kind is not None and isinstance(s, kind))
              or (isinstance(s, UrlSource) and s.url.startswith(forced))]
    if not chosen:
        raise UsageError(f"--source {forced}: no such source in the manifest",
                         hint="use a 1-based index, 'hf', 'url' or a URL prefix")
    return chosen


FALLBACK_ERRORS = (SourceError, NotFoundError, IntegrityError)
T = TypeVar("T")
R = TypeVar("R")


def first_success(candidates: Sequence[T], attempt: Callable[[T], R], on_failure: Callable[[T, TeadistError], None],
                  ) -> R:
    """``attempt`` each candidate in order until one succeeds; a network error, a 404 or a hash
    mismatch moves on to the next (after ``on_failure``), the last failure is raised."""
    for index, candidate in enumerate(candidates):
        try:
            return attempt(candidate)
        except FALLBACK_ERRORS as exc:
            if index + 1 == len(candidates):
                raise
            on_failure(candidate, exc)
    raise AssertionError("first_success needs at least one candidate")


def describe(source: Source) -> str:
    if isinstance(source, HfSource):
        return f"hf://{source.repo}/{source.path}" + (f"@{source.revision}" if source.revision else "")
    return source.url


def fetch(spec: str, cache: ModelCache, options: FetchOptions, reporter: Reporter,
          downloader: Downloader | None = None) -> FetchResult:
    downloader = downloader or Downloader(reporter)
    target = resolve_target(spec, downloader, options.offline)
    manifest = target.manifest
    if options.keep_shards and manifest.format != "gguf":
        raise UsageError("--keep-shards needs a gguf-format manifest (shards)")
    keep = options.keep_shards
    dest = cache.path_for(manifest.chunks[0].name if keep else manifest.file.name)
    cached = _cached_shards(cache, manifest, dest) if keep else _cached(cache, manifest, dest)
    if cached is not None:
        return cached
    if options.offline:
        raise OfflineError(f"offline: {manifest.reference} ({manifest.file.name}) is not in the cache {cache.root}",
                           hint="fetch it once with the network, or copy it into the cache")
    with target_lock(dest):
        # another process may have finished it meanwhile
        cached = _cached_shards(cache, manifest, dest) if keep else _cached(cache, manifest, dest)
        if cached is not None:
            return cached
        if manifest.format == "single":
            return _fetch_single(target, dest, cache, options, reporter, downloader)
        return _fetch_chunks(target, dest, cache, options, reporter, downloader)


def _cached(cache: ModelCache, manifest: Manifest, dest: Path) -> FetchResult | None:
    record = cache.read_record(dest.name)
    if record is None or not dest.is_file():
        return None
    sha, size = manifest.file.sha256, manifest.file.size
    if sha is not None and size is not None:
        if not cache.is_current(record, sha, size):
            return None
    elif record.mtime_ns != dest.stat().st_mtime_ns or record.size != dest.stat().st_size:
        return None  # unpinned: trust only a record that still describes the file on disk
    cache.touch(record)
    return FetchResult(dest, record.name, record.sha256, record.size, True, record.source)


def _fetch_single(target: Target, dest: Path, cache: ModelCache, options: FetchOptions, reporter: Reporter,
                  downloader: Downloader) -> FetchResult:
    from teadist.sources import hub

    manifest = target.manifest
    sources = _select_sources(manifest.sources, options.source)
    if not sources:
        raise ManifestError(f"{target.origin}: the manifest lists no source for {manifest.file.name}")

    def attempt(source: Source) -> FetchResult:
        label = describe(source)
        sha, size = manifest.file.sha256, manifest.file.size
        auth = None
        if isinstance(source, HfSource):
            remote = hub.resolve(source, options.endpoint, options.token)
            if sha is not None and remote.sha256 is not None and remote.sha256 != sha:
                raise IntegrityError(f"the Hub's sha256 for {source.path} ({remote.sha256[:16]}…) differs "
                                     f"from the pinned one ({sha[:16]}…)")
            if size is not None and remote.size is not None and remote.size != size:
                raise IntegrityError(f"the Hub's size for {source.path} ({remote.size}) differs from the "
                                     f"pinned {size}")
            sha, size, url = sha or remote.sha256, size or remote.size, remote.url
            if remote.token_origin and options.token:
                auth = Auth(origin(remote.token_origin), f"Bearer {options.token}")
            if remote.commit:
                label += f" (commit {remote.commit[:12]})"
        else:
            url = source.url
        if sha is None:
            raise IntegrityError(f"no sha256 is known for {manifest.file.name} from {describe(source)}; "
                                 "refusing an unverifiable download")
        reporter.info(f"fetching {manifest.file.name} from {label}")
        digest, got = downloader.fetch(url, dest, size, sha, auth=auth, label=manifest.file.name)
        record = cache.record_install(dest.name, manifest.reference, digest, got, describe(source))
        return FetchResult(dest, record.name, digest, got, False, record.source)

    def failed(source: Source, exc: TeadistError) -> None:
        reporter.warn(f"source {describe(source)} failed: {exc.message}; trying the next source")

    return first_success(sources, attempt, failed)


def _chunk_urls(target: Target, name: str, listed: tuple[str, ...]) -> list[str]:
    urls = list(listed)
    if target.base_url:
        urls.append(target.base_url + quote(name))
    return urls


def _fetch_chunks(target: Target, dest: Path, cache: ModelCache, options: FetchOptions, reporter: Reporter,
                  downloader: Downloader) -> FetchResult:

    manifest = target.manifest
    assert manifest.file.sha256 is not None and manifest.file.size is not None
    local = target.base_dir
    shards = manifest.format == "gguf"
    if not options.keep_shards and local is not None and all((local / c.name).is_file() for c in manifest.chunks):
        return _install_from(manifest, local, dest, cache, reporter, target.origin)
    staging = cache.meta / "staging" / manifest.file.sha256[:16]
    staging.mkdir(parents=True, exist_ok=True)
    reporter.info(f"fetching {len(manifest.chunks)} chunks of {manifest.file.name} ({options.jobs} at a time)")
    from teadist.base.hashing import copy_verified, hash_range

    def get(chunk_index: int) -> None:
        chunk = manifest.chunks[chunk_index]
        path = staging / chunk.name
        if path.is_file() and path.stat().st_size == chunk.size and hash_range(path)[0] == chunk.sha256:
            return  # verified by an earlier, interrupted run
        if local is not None and (local / chunk.name).is_file():  # a local manifest's own folder
            copy_verified(local / chunk.name, path, chunk.size, chunk.sha256, f"chunk {chunk.name}")
            return
        urls = _chunk_urls(target, chunk.name, chunk.urls)
        if options.source is not None and not options.source.isdigit() and options.source not in ("url", "mirror"):
            urls = [u for u in urls if u.startswith(options.source)] or urls
        if not urls:
            raise ManifestError(f"{target.origin}: no URL for chunk {chunk.name}")
        first_success(urls, lambda url: downloader.fetch(url, path, chunk.size, chunk.sha256, label=chunk.name),
                      lambda url, exc: reporter.warn(f"{chunk.name}: {exc.message}; trying the next URL"))

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        for future in [pool.submit(get, i) for i in range(len(manifest.chunks))]:
            future.result()
    if shards and options.keep_shards:
        result = _install_shards(manifest, staging, cache, reporter, target.origin)
    else:
        result = _install_from(manifest, staging, dest, cache, reporter, target.origin)
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _install_from(manifest: Manifest, folder: Path, dest: Path, cache: ModelCache, reporter: Reporter,
                  origin: str) -> FetchResult:
    """Rebuild the original from verified pieces: byte chunks are concatenated, shards replayed."""
    if manifest.format == "gguf":
        from teadist.pipelines.gguf_rebuild import rebuild_original_locked

        sha, size, _ = rebuild_original_locked(manifest, folder, dest, reporter, cache, origin)
        return FetchResult(dest, manifest.reference, sha, size, False, origin)
    from teadist.pipelines.assemble import assemble_chunks_locked

    result = assemble_chunks_locked(manifest, folder, dest, reporter, cache=cache, source=origin)
    return FetchResult(dest, manifest.reference, result.sha256, result.size, False, origin)


def _install_shards(manifest: Manifest, staging: Path, cache: ModelCache, reporter: Reporter,
                    origin: str) -> FetchResult:
    """Install the verified shards as they are (llama.cpp and wllama load them from shard 1)."""
    from teadist.base.fsutil import commit_file

    for chunk in manifest.chunks:
        commit_file(staging / chunk.name, cache.path_for(chunk.name))
    first = manifest.chunks[0]
    record = cache.record_install(first.name, manifest.reference, first.sha256, first.size, origin,
                                  shards=[c.name for c in manifest.chunks[1:]],
                                  shard_sha256={c.name: c.sha256 for c in manifest.chunks[1:]})
    reporter.info(f"installed {len(manifest.chunks)} shards of {manifest.file.name}; "
                  f"llama.cpp and wllama load them from {first.name}")
    return FetchResult(cache.path_for(first.name), record.name, first.sha256, first.size, False, origin)


def _cached_shards(cache: ModelCache, manifest: Manifest, dest: Path) -> FetchResult | None:
    record = cache.read_record(dest.name)
    first = manifest.chunks[0]
    if record is None or not cache.is_current(record, first.sha256, first.size):
        return None
    expected = {c.name: c.sha256 for c in manifest.chunks[1:]}
    if record.shard_sha256 != expected or not all(cache.path_for(n).is_file() for n in expected):
        return None
    cache.touch(record)
    return FetchResult(dest, record.name, record.sha256, record.size, True, record.source)
