"""``teadist fetch``: resolve what the user named, download it verified, install it in the cache.

What can be fetched: a registry name (``phi-4-mini``, ``phi-4-mini:q4_k_m``), a Hub path
(``hf://org/repo/file.gguf[@revision]``), or a manifest by URL or path (single-file or chunked).
Sources listed in a manifest are tried in order, falling back on a network error, a 404, a refused
URL or a hash mismatch.

Every file is installed under its target's lock (``cache.layout``): the model file, or — with
``--keep-shards`` — each shard on its own. A cached file is handed out only when its identity
matches the request: its sha256 when the source gives one (pinned, or the Hub's LFS hash), else,
offline, the Hub file it came from (endpoint, repository, path, revision). A different file at the
same name is replaced (with a warning) if teadist installed it, and never touched if it did not.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

from teadist.base.blocks import BlockHasher, BlockMap
from teadist.base.fsutil import is_plain_file
from teadist.base.progress import AllFiles, Reporter
from teadist.base.urls import has_dot_segment, origin_of, url_problem
from teadist.base.workfiles import WorkFiles
from teadist.cache.layout import CacheTarget, kept_shards
from teadist.cache.store import CacheRecord, ModelCache
from teadist.errors import (
    IntegrityError,
    ManifestError,
    NotFoundError,
    OfflineError,
    SourceError,
    TeadistError,
    UsageError,
)
from teadist.formats.manifest import ChunkRecord, FileRecord, HfSource, Manifest, Source, UrlSource, parse_manifest
from teadist.sources.download import Downloader
from teadist.sources.http import Auth

MANIFEST_FETCH_LIMIT = 16 * 1024 * 1024
GGUF_MAGIC = b"GGUF"
Origin = dict[str, str | None]


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
    jobs: int | None = None  # connections per host, fixed; None: the scheduler decides
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
    if len(parts) < 3 or has_dot_segment(rest) or (revision != "" and has_dot_segment(revision)):
        raise UsageError(f"invalid Hub path {spec!r}", hint="use hf://ORG/REPO/FILE.gguf[@REVISION]")
    return HfSource(repo=f"{parts[0]}/{parts[1]}", path="/".join(parts[2:]), revision=revision or None)


def resolve_target(spec: str, downloader: Downloader, offline: bool, cache: ModelCache | None = None) -> Target:
    """What ``spec`` names, by the rules of ``pipelines.resolve`` (a local file never takes over a name)."""
    from teadist.pipelines.resolve import classify, registry_manifest
    from teadist.pipelines.split import default_model_name
    from teadist.sources import registry

    named = classify(spec, cache) if cache is not None else None
    if spec.startswith("hf://"):
        source = parse_hf_spec(spec)
        file_name = source.path.rsplit("/", 1)[-1]
        manifest = Manifest(name=default_model_name(file_name), file=FileRecord(file_name, None, None),
                            format="single", sources=[source])
        return Target(manifest, spec)
    if spec.startswith(("http://", "https://")):
        url, _, wanted = spec.partition("#")
        if urlsplit(url).path.lower().endswith(".gguf"):
            raise _model_not_manifest(url)
        if offline:
            raw = _kept_manifest(url, cache)
            if raw is None:
                raise OfflineError(f"offline: nothing was ever fetched from {url}",
                                   hint="fetch it once with the network")
        else:
            raw = downloader.get_small(url, MANIFEST_FETCH_LIMIT)
            if raw is None:
                raise NotFoundError(f"manifest not found: {url}")
            if raw.startswith(GGUF_MAGIC):
                raise _model_not_manifest(url)
            if len(raw) > MANIFEST_FETCH_LIMIT:
                raise ManifestError(f"{url}: manifest is larger than {MANIFEST_FETCH_LIMIT} bytes")
            target = Target(_parse_any(raw, url, wanted or None), spec, base_url=urljoin(url, "."))
            _keep_manifest(url, raw, cache)
            return target
        return Target(_parse_any(raw, url, wanted or None), spec, base_url=urljoin(url, "."))
    path_text, _, wanted = spec.partition("#")
    if named is not None and named.kind == "name":
        entry = registry_manifest(spec)
        if entry is not None:
            return Target(entry, f"registry:{spec}")
        from teadist.pipelines.resolve import find_cached

        model = find_cached(cache, spec) if cache is not None else None
        if model is not None and cache is not None and cache.is_current(model.head):
            head = model.head  # a cached model's own name: handed out as it is, never fetched again
            return Target(Manifest(name=head.name, file=FileRecord(head.filename, head.size, head.sha256),
                                   format="single"), f"cache:{spec}")
        return Target(registry.lookup(spec), f"registry:{spec}")
    path = Path(os.path.expanduser(path_text))
    if path.is_file():
        from teadist.formats.gguf_info import looks_like_gguf

        if looks_like_gguf(path):
            raise _model_not_manifest(str(path))
        if path.stat().st_size > MANIFEST_FETCH_LIMIT:
            raise ManifestError(f"{path}: manifest is larger than {MANIFEST_FETCH_LIMIT} bytes")
        return Target(_parse_any(path.read_bytes(), str(path), wanted or None), str(path),
                      base_dir=path.parent.resolve())
    if os.path.lexists(path):
        raise UsageError(f"{path} is not a regular file", hint="fetch takes a manifest file, a URL or a name")
    if named is not None or "/" in spec or spec.endswith(".json"):
        raise NotFoundError(f"manifest not found: {spec}")
    return Target(registry.lookup(spec), f"registry:{spec}")


def _model_not_manifest(where: str) -> UsageError:
    return UsageError(f"{where} is a model file, not a manifest: teadist installs only what it can verify, "
                      "and a model file carries no sha256 of its own",
                      hint="fetch a Hub file as hf://ORG/REPO/FILE.gguf (the Hub gives its sha256), a registry "
                           "name, or a manifest that lists the file's sha256 (`teadist split` writes one)")


def _kept_manifest(url: str, cache: ModelCache | None) -> bytes | None:
    """Offline: the manifest last read from ``url`` (what it names is then looked up in the cache as
    usual: by sha256)."""
    from teadist.base.fsutil import read_small_file

    if cache is None:
        return None
    try:
        raw = read_small_file(cache.layout.manifest_copy(url), MANIFEST_FETCH_LIMIT)
    except OSError:
        return None
    return raw if len(raw) <= MANIFEST_FETCH_LIMIT else None


def _keep_manifest(url: str, raw: bytes, cache: ModelCache | None) -> None:
    """Keep a manifest that parsed, for ``fetch --offline URL`` (written whole or not at all)."""
    from teadist.base.fsutil import write_bytes_atomic

    if cache is None:
        return
    folder = cache.layout.ensure_manifests_dir()
    write_bytes_atomic(cache.layout.manifest_copy(url), raw, folder=folder, stem=".")


def _parse_any(raw: bytes, origin: str, wanted: str | None) -> Manifest:
    """A v1 manifest, or one model of a release index (``model-manifest.json``)."""
    from teadist.base import jsonin
    from teadist.release.index import INDEX_KIND, manifest_from_index

    try:
        data = jsonin.loads(raw)
    except jsonin.JsonInputError as exc:
        raise ManifestError(f"{origin}: {exc}") from None
    if isinstance(data, dict) and data.get("kind") == INDEX_KIND:
        # fetch reads only "models"; a wrongly shaped index is refused here, not half-read
        files = data.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise ManifestError(f"{origin}: release index field files: not a list of objects")
        try:
            return manifest_from_index(data, wanted)
        except ManifestError as exc:
            raise ManifestError(f"{origin}: {exc.message}") from None
    return parse_manifest(raw, origin)


def _is_index(forced: str | None) -> bool:
    """``--source`` names a source by its 1-based number: ASCII digits only ('²' passes str.isdigit
    but not int(); '٢' or '１' are no number the user typed as one)."""
    return forced is not None and forced.isascii() and forced.isdigit()


def _select_sources(sources: list[Source], forced: str | None) -> list[Source]:
    if forced is None:
        return sources
    if _is_index(forced):
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
    """``attempt`` each candidate in order until one succeeds; a network error, a 404, a refused URL
    or a hash mismatch moves on to the next (after ``on_failure``), the last failure is raised."""
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


# -- identity ------------------------------------------------------------------------------------
def _endpoint_key(endpoint: str) -> str:
    return str(origin_of(endpoint)) if url_problem(endpoint) is None else endpoint


def _hub_origin(source: HfSource, endpoint: str, commit: str | None) -> Origin:
    return {"kind": "hf", "endpoint": _endpoint_key(source.endpoint or endpoint), "repo": source.repo,
            "path": source.path, "revision": source.revision or "main", "commit": commit}


def _same_hub_file(record: CacheRecord, source: HfSource, endpoint: str) -> bool:
    """Offline: the record came from this Hub file at this revision (by name or resolved commit)."""
    seen = record.origin or {}
    wanted = _hub_origin(source, endpoint, None)
    return (seen.get("kind") == "hf" and all(seen.get(k) == wanted[k] for k in ("endpoint", "repo", "path"))
            and wanted["revision"] in (seen.get("revision"), seen.get("commit")))


def _hit(cache: ModelCache, target: CacheTarget, sha256: str, size: int | None) -> CacheRecord | None:
    """The record of ``target`` if the file there is the one with ``sha256`` (and ``size``)."""
    record = cache.read_record(target.name)
    if record is not None and record.sha256 == sha256 and size in (None, record.size) and cache.is_current(record):
        return record
    return None


def _claim(cache: ModelCache, target: CacheTarget, sha256: str, size: int | None, what: str, name: str,
           origin: Origin, reporter: Reporter) -> CacheRecord | None:
    """Make way for the requested file at ``target`` (lock held). A file teadist installed for the same
    model (or the same Hub file) that is another version is replaced (the user is told); another
    model's file is left alone with an error; a file nobody recorded is adopted if it is the
    requested one, and otherwise left alone with an error."""
    record = cache.read_record(target.name)
    present = os.path.lexists(target.final)
    if record is not None:
        if record.sha256 == sha256 and (blocks := _holds(target, sha256, size)) is not None:
            # ours, and still the right bytes (copied back, touched): record it again, no download
            return cache.record_install(target.name, name, sha256, target.final.stat().st_size, what, origin,
                                        blocks=blocks)
        if record.name != name and not _same_lineage(record.origin, origin):
            # another model's file: a manifest must not take over a name it does not own
            raise TeadistError(f"{target.name} in the cache holds {record.name} (from {record.source}); refusing "
                               f"to replace it with {name} from {what}",
                               hint=f"if you no longer need it: teadist rm {target.name}")
        if present:
            reporter.warn(f"replacing {target.name} in the cache ({record.name}, from {record.source}) "
                          f"with the one from {what}")
        return None
    if os.path.lexists(target.record):
        if present:
            reporter.warn(f"replacing {target.name} in the cache (its record is damaged) with the one from {what}")
        return None
    if not present:
        return None
    if (blocks := _holds(target, sha256, size)) is not None:
        return cache.record_install(target.name, name, sha256, target.final.stat().st_size, what, origin,
                                    blocks=blocks)
    raise TeadistError(f"{target.final} is in the cache but was not installed by teadist, and it is not the "
                       f"requested file from {what}; leaving it alone",
                       hint="move it out of the cache (or delete it), then fetch again")


def _same_lineage(old: Origin | None, new: Origin) -> bool:
    """Two versions of one Hub file (same endpoint, repository and path): an update, not a takeover."""
    keys = ("kind", "endpoint", "repo", "path")
    return old is not None and new.get("kind") == "hf" and all(old.get(k) == new.get(k) for k in keys)


def _holds(target: CacheTarget, sha256: str, size: int | None) -> BlockMap | None:
    """The block map of the file at ``target`` if it is a plain file with exactly these bytes
    (hashed now, its map learned in the same pass); else None."""
    from teadist.base.hashing import hash_range

    if not is_plain_file(target.final) or size not in (None, target.final.stat().st_size):
        return None
    learner = BlockHasher()
    return learner.finish() if hash_range(target.final, extra_sinks=[learner])[0] == sha256 else None


def _present(cache: ModelCache, record: CacheRecord) -> FetchResult:
    cache.touch(record)
    return FetchResult(cache.path_for(record.filename), record.name, record.sha256, record.size, True, record.source)


# -- fetch ----------------------------------------------------------------------------------------
def fetch(spec: str, cache: ModelCache, options: FetchOptions, reporter: Reporter,
          downloader: Downloader | None = None) -> FetchResult:
    downloader = downloader or Downloader(reporter, jobs=options.jobs)
    target = resolve_target(spec, downloader, options.offline, cache)
    manifest = target.manifest
    if options.source is not None:  # a --source the manifest lacks is refused, never ignored
        for chunk in manifest.chunks:
            _chunk_places(target, chunk, options.source)
        if not manifest.chunks:
            _select_sources(manifest.sources, options.source)
    if options.keep_shards:
        if manifest.format != "gguf":
            raise UsageError("--keep-shards needs a gguf-format manifest (shards)")
        names = [c.name for c in manifest.chunks]
        if kept_shards(names[0]) != names[1:]:
            raise ManifestError(f"{manifest.reference}: --keep-shards needs shards named as llama.cpp names them "
                                f"(<name>-00001-of-{len(names):05d}.gguf, …), not {names[0][:60]!r}, …")
        return _fetch_kept_shards(target, cache, options, reporter, downloader)
    dest = cache.target(manifest.file.name)
    with dest.lock(on_wait=reporter.info):
        if manifest.is_pinned:
            assert manifest.file.sha256 is not None
            hit = _hit(cache, dest, manifest.file.sha256, manifest.file.size)
            if hit is not None:
                return _present(cache, hit)
        if options.offline:
            record = cache.read_record(dest.name)
            hub = [s for s in manifest.sources if isinstance(s, HfSource)]
            if not manifest.is_pinned and record is not None and cache.is_current(record) \
                    and any(_same_hub_file(record, s, options.endpoint) for s in hub):
                return _present(cache, record)
            raise OfflineError(f"offline: {manifest.reference} ({manifest.file.name}) is not in the cache "
                               f"{cache.root}", hint="fetch it once with the network, or copy it into the cache")
        if manifest.format == "single":
            return _fetch_single(target, dest, cache, options, reporter, downloader)
        return _fetch_chunks(target, dest, cache, options, reporter, downloader)


def _fetch_single(target: Target, dest: CacheTarget, cache: ModelCache, options: FetchOptions, reporter: Reporter,
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
            remote = hub.resolve(source, options.endpoint, options.token, downloader.policy.stall_timeout,
                                 retrying=downloader.retrying)
            if sha is not None and remote.sha256 is not None and remote.sha256 != sha:
                raise IntegrityError(f"the Hub's sha256 for {source.path} ({remote.sha256[:16]}…) differs "
                                     f"from the pinned one ({sha[:16]}…)")
            if size is not None and remote.size is not None and remote.size != size:
                raise IntegrityError(f"the Hub's size for {source.path} ({remote.size}) differs from the "
                                     f"pinned {size}")
            sha, size, url = sha or remote.sha256, size or remote.size, remote.url
            if remote.token_origin is not None and options.token:
                auth = Auth(remote.token_origin, f"Bearer {options.token}")
            if remote.commit:
                label += f" (commit {remote.commit[:12]})"
            origin = _hub_origin(source, options.endpoint, remote.commit)
        else:
            url = source.url
            origin = {"kind": "url", "url": url}
        if sha is None:
            raise IntegrityError(f"no sha256 is known for {manifest.file.name} from {describe(source)}; "
                                 "refusing an unverifiable download")
        if size is None:  # the server would decide how much is written: no room check, no bound
            where = "the Hub" if isinstance(source, HfSource) else "the manifest"
            raise SourceError(f"{where} gives no size for {manifest.file.name} ({describe(source)}); refusing a "
                              "download whose length only the server decides",
                              hint="list the file's size in a manifest (`teadist split` writes it)")
        hit = _hit(cache, dest, sha, size)
        if hit is not None:
            return _present(cache, hit)
        adopted = _claim(cache, dest, sha, size, describe(source), manifest.reference, origin, reporter)
        if adopted is not None:
            return _present(cache, adopted)
        reporter.info(f"fetching {manifest.file.name} from {label}")
        dest.discard_stale(dest.files.partial(sha))
        digest, got, blocks = downloader.fetch_with_blocks(url, dest.files, size, sha, auth=auth,
                                                           label=manifest.file.name, expected=manifest.file.blocks)
        record = cache.record_install(dest.name, manifest.reference, digest, got, describe(source), origin,
                                      blocks=blocks)
        dest.clear_work()
        return FetchResult(dest.final, record.name, digest, got, False, record.source)

    def failed(source: Source, exc: TeadistError) -> None:
        reporter.warn(f"source {describe(source)} failed: {exc.message}; trying the next source")

    return first_success(sources, attempt, failed)


def _chunk_places(target: Target, chunk: ChunkRecord, forced: str | None) -> tuple[Path | None, list[str]]:
    """Where ``chunk`` comes from: (a local manifest's own copy of it, else None; the URLs to try).
    A chunk's sources, in the order tried: that folder, the chunk's URLs, the folder of a manifest
    URL. ``--source N`` keeps the Nth alone, as for a single file; 'url' or a URL prefix keep URLs."""
    folder = None if target.base_dir is None else target.base_dir / chunk.name
    urls = list(chunk.urls)
    if target.base_url:
        urls.append(target.base_url + quote(chunk.name))
    if forced is not None and _is_index(forced):
        places: list[Path | str] = ([] if folder is None else [folder]) + urls
        if not 1 <= int(forced) <= len(places):
            raise UsageError(f"--source {forced}: chunk {chunk.name} has {len(places)} sources"
                             + ("" if folder is None else " (the manifest's folder, then its URLs)"))
        place = places[int(forced) - 1]
        return (place, []) if isinstance(place, Path) else (None, [place])
    if forced is not None and forced not in ("url", "mirror"):
        urls = [u for u in urls if u.startswith(forced)]
        if not urls:
            raise UsageError(f"--source {forced}: no URL of chunk {chunk.name} starts with it",
                             hint="use 'url' or a URL prefix the manifest's chunks have")
    if folder is not None and folder.is_file():
        return folder, urls
    if not urls:
        raise ManifestError(f"{target.origin}: no URL for chunk {chunk.name}")
    return None, urls


def _get_chunk(target: Target, chunk: ChunkRecord, dest_files: WorkFiles, options: FetchOptions,
               reporter: Reporter, downloader: Downloader) -> tuple[bool, BlockMap | None]:
    """Put the verified ``chunk`` at ``dest_files.final``: (False, None) when it was there already,
    else (True, its block map computed while it was copied or downloaded)."""
    from teadist.base.hashing import copy_verified, hash_range

    path = dest_files.final
    if is_plain_file(path) and path.stat().st_size == chunk.size and hash_range(path)[0] == chunk.sha256:
        return False, None  # verified by an earlier, interrupted run
    folder, urls = _chunk_places(target, chunk, options.source)
    if folder is not None:  # a local manifest's own folder
        if not folder.is_file():
            raise NotFoundError(f"chunk {chunk.name} is not in the manifest's folder {folder.parent}")
        return True, copy_verified(folder, path, chunk.size, chunk.sha256, f"chunk {chunk.name}",
                                   folder=dest_files.ensure_folder(), stem=dest_files.stem)
    _, _, blocks = first_success(
        urls,
        lambda url: downloader.fetch_with_blocks(url, dest_files, chunk.size, chunk.sha256, label=chunk.name,
                                                 expected=chunk.blocks),
        lambda url, exc: reporter.warn(f"{chunk.name}: {exc.message}; trying the next URL"))
    return True, blocks


def _fetch_chunks(target: Target, dest: CacheTarget, cache: ModelCache, options: FetchOptions, reporter: Reporter,
                  downloader: Downloader) -> FetchResult:
    """Chunks (or shards) into this target's own work folder, then the verified original (lock held)."""
    manifest = target.manifest
    sha, size = manifest.file.sha256, manifest.file.size
    assert sha is not None and size is not None
    origin: Origin = {"kind": "manifest", "reference": manifest.reference, "origin": target.origin}
    adopted = _claim(cache, dest, sha, size, target.origin, manifest.reference, origin, reporter)
    if adopted is not None:
        return _present(cache, adopted)
    dest.discard_stale(dest.files.partial(sha, kind="assemble"))
    local = target.base_dir
    forced = options.source
    if local is not None and (forced is None or not _is_index(forced) or forced == "1") \
            and all((local / c.name).is_file() for c in manifest.chunks):
        return _install_from(manifest, local, dest, cache, reporter, target.origin, origin)
    _ensure_room(cache, manifest.chunks, dest, sha, size, manifest.file.name)
    dest.ensure_chunks(sha)
    reporter.info(f"fetching {len(manifest.chunks)} chunks of {manifest.file.name} ({_how_many(downloader)})")
    began = _moved(downloader)

    def get(chunk: ChunkRecord, progress: AllFiles) -> None:
        _get_chunk(target, chunk, dest.chunk_files(sha, chunk.name), options, progress, downloader)
        progress.done(chunk.name, chunk.size)

    # every chunk takes its connections from the same per-host pool: the scheduler says how many
    with _one_bar(reporter, downloader, f"{manifest.file.name} ({len(manifest.chunks)} chunks)",
                  manifest.chunks) as progress, ThreadPoolExecutor(max_workers=downloader.scheduler.most) as pool:
        futures = [pool.submit(get, chunk, progress) for chunk in manifest.chunks]
        for future in futures:
            future.result()
    _report_total(reporter, downloader, began, f"{len(manifest.chunks)} chunks")
    result = _install_from(manifest, dest.chunks(sha), dest, cache, reporter, target.origin, origin)
    dest.clear_work()
    return result


def _ensure_room(cache: ModelCache, chunks: list[ChunkRecord], dest: CacheTarget | None, sha: str | None,
                 size: int, what: str) -> None:
    """Before the first byte: room for every chunk still to download and (``dest``) the file they are
    assembled into, which is written while the chunks still sit beside it."""
    from teadist.base.fsutil import ensure_free_space
    from teadist.sources.partial import bytes_done

    def have(chunk: ChunkRecord) -> int:
        """Bytes of ``chunk`` already on disk: the whole chunk, or what a resume of its partial keeps."""
        files = dest.chunk_files(sha, chunk.name) if dest is not None and sha is not None \
            else cache.target(chunk.name).files
        if is_plain_file(files.final) and files.final.stat().st_size == chunk.size:
            return chunk.size
        partial = files.partial(chunk.sha256)
        return min(chunk.size, bytes_done(partial, files.sidecar(partial)))

    needed = sum(c.size - have(c) for c in chunks) + (size if dest is not None else 0)
    cache.root.mkdir(parents=True, exist_ok=True)
    ensure_free_space(cache.root, needed, f"{what} ({len(chunks)} chunks"
                      + (" and the file they make)" if dest is not None else ")"))


@contextlib.contextmanager
def _one_bar(reporter: Reporter, downloader: Downloader, description: str,
             chunks: Sequence[ChunkRecord]) -> Iterator[AllFiles]:
    """One bar for all ``chunks`` (aggregate speed, time left, connections in use), the downloader's
    files reporting into it meanwhile."""
    progress = AllFiles(reporter, description, sum(c.size for c in chunks),
                        connections=lambda: sum(lane.active for lane in downloader.scheduler.lanes()))
    try:
        with downloader.reporting(progress):
            yield progress
    finally:
        progress.close()


def _moved(downloader: Downloader) -> tuple[float, int]:
    """When, and how many bytes every lane had moved by then (the start of a multi-file fetch)."""
    return time.monotonic(), sum(lane.stats.bytes for lane in downloader.scheduler.lanes())


def _report_total(reporter: Reporter, downloader: Downloader, began: tuple[float, int], what: str) -> None:
    """One line for a multi-file fetch: the aggregate speed over all its files and connections."""
    lanes = downloader.scheduler.lanes()
    moved = sum(lane.stats.bytes for lane in lanes) - began[1]
    if moved <= 0:
        return
    elapsed = max(1e-6, time.monotonic() - began[0])
    peak = max(lane.stats.peak for lane in lanes)
    reporter.info(f"{what}: {moved / 1e6:.1f} MB in {elapsed:.1f}s, {moved / elapsed / 1e6:.1f} MB/s in all "
                  f"on up to {peak} connection(s)")


def _how_many(downloader: Downloader) -> str:
    jobs = downloader.scheduler.jobs
    return f"{jobs} connection(s) per host" if jobs else f"up to {downloader.scheduler.cap} connections per host"


def _install_from(manifest: Manifest, folder: Path, dest: CacheTarget, cache: ModelCache, reporter: Reporter,
                  source: str, origin: Origin) -> FetchResult:
    """Rebuild the original from verified pieces: byte chunks are concatenated, shards replayed."""
    if manifest.format == "gguf":
        from teadist.pipelines.gguf_rebuild import rebuild_original_locked

        sha, size, _ = rebuild_original_locked(manifest, folder, dest, reporter, cache, source, origin)
        return FetchResult(dest.final, manifest.reference, sha, size, False, source)
    from teadist.pipelines.assemble import assemble_chunks_locked

    result = assemble_chunks_locked(manifest, folder, dest, reporter, cache=cache, source=source, origin=origin)
    return FetchResult(dest.final, manifest.reference, result.sha256, result.size, False, source)


def _fetch_kept_shards(target: Target, cache: ModelCache, options: FetchOptions, reporter: Reporter,
                       downloader: Downloader) -> FetchResult:
    """Each shard is its own target: its own lock, partial and record; the first one lists the rest."""
    manifest = target.manifest
    first = manifest.chunks[0]
    others = [c.name for c in manifest.chunks[1:]]
    origin: Origin = {"kind": "manifest", "reference": manifest.reference, "origin": target.origin}

    def get(chunk: ChunkRecord, progress: AllFiles) -> bool:
        fetched = get_shard(chunk, progress)
        progress.done(chunk.name, chunk.size)
        return fetched

    def get_shard(chunk: ChunkRecord, reporter: Reporter) -> bool:
        shard = cache.target(chunk.name)
        with shard.lock(on_wait=reporter.info):
            if _hit(cache, shard, chunk.sha256, chunk.size) is not None:
                return False
            blocks = None
            if _claim(cache, shard, chunk.sha256, chunk.size, target.origin, manifest.reference, origin,
                      reporter) is None:
                shard.discard_stale(shard.files.partial(chunk.sha256))
                _, blocks = _get_chunk(target, chunk, shard.files, options, reporter, downloader)
            cache.record_install(chunk.name, manifest.reference, chunk.sha256, chunk.size, target.origin, origin,
                                 group=first.name, shards=others if chunk is first else None, blocks=blocks)
            shard.clear_work()
            return True

    _ensure_room(cache, manifest.chunks, None, None, 0, manifest.file.name)
    reporter.info(f"fetching {len(manifest.chunks)} shards of {manifest.file.name} ({_how_many(downloader)})")
    began = _moved(downloader)
    with _one_bar(reporter, downloader, f"{manifest.file.name} ({len(manifest.chunks)} shards)",
                  manifest.chunks) as progress, ThreadPoolExecutor(max_workers=downloader.scheduler.most) as pool:
        fetched = list(pool.map(lambda chunk: get(chunk, progress), manifest.chunks))
    _report_total(reporter, downloader, began, f"{len(manifest.chunks)} shards")
    head_target = cache.target(first.name)
    with head_target.lock(on_wait=reporter.info):
        head = _hit(cache, head_target, first.sha256, first.size)
        if head is None:
            raise TeadistError(f"{first.name} changed while its shards were being installed; run the fetch again")
        head.group, head.shards = first.name, others
        cache.touch(head)
    if any(fetched):
        reporter.info(f"installed {len(manifest.chunks)} shards of {manifest.file.name}; "
                      f"llama.cpp and wllama load them from {first.name}")
    return FetchResult(head_target.final, head.name, first.sha256, first.size, not any(fetched), head.source)

