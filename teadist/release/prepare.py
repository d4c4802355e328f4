"""``release prepare``: split every configured model with tag-based URLs, write the release index.

``prepare`` owns its output folder. It only starts in a folder holding nothing but what it may
write: files a previous index listed (and that index), the files this run is about to write, and
this tag's wasm tarball. Anything else (a user's notes, a symlink, another version's tarball) is
refused before anything is written and left alone. After the run the folder holds exactly what
the new index lists: files the previous index listed and this one does not are removed, so a
reused ``--out`` never keeps an earlier run's chunks. The index is written last.

A config entry ships byte chunks by default (``<file>.part-00001-of-0000N``, ``chunk_size``). With
``"format": "gguf"`` it ships llama.cpp shards instead (``<stem>-00001-of-0000N.gguf``, each at most
``"shard_size"``, 512M by default as wllama recommends): every shard loads in llama.cpp and
wllama as it is, and the manifest's ``rebuild`` turns them back into the byte-identical original.

Everything that can be checked is checked before the first write: the tag and repo, every name
the run will write (a manifest name, a GitHub asset name), the tarball. A model fetched for the
release is held to the sha256 its fetch verified: the split hashes it and refuses bytes that
changed since (a cache edited in place). A run that fails after it started writing removes the
names it wrote that no earlier index listed, so the next run is not refused for its leftovers.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teadist.base.fsutil import remove_quietly, write_bytes_atomic
from teadist.base.progress import Reporter
from teadist.errors import IntegrityError, ManifestError, NotFoundError, TeadistError, UsageError
from teadist.formats.manifest import Manifest, manifest_filename
from teadist.release.index import (
    ASSET_NAME_RE,
    INDEX_KIND,
    RELEASE_MANIFEST,
    check_repo_and_tag,
    download_base,
    listed_assets,
    model_manifest_names,
    read_index,
    read_regular_file,
    tarball_version,
    validate_index,
)
from teadist.release.wasmpkg import TARBALL_PREFIX

MAX_CONFIG_BYTES = 1024 * 1024
# the names prepare writes: chunks, a model's manifest, the wasm tarball
_PREPARED_NAME = re.compile(
    rf"(\.part-\d{{5}}-of-\d{{5}}|-\d{{5}}-of-\d{{5}}\.gguf|\.manifest\.json|^{TARBALL_PREFIX}-.+\.tar\.gz)$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # the manifest schema's "name"
# a model as get_model hands it back: its path and the sha256 its fetch verified (None: not known)
FetchedModel = tuple[Path, str | None]


_ENTRY_KEYS = ("model", "file", "name", "format", "shard_size")
FORMATS = ("bytes", "gguf")


@dataclass(frozen=True)
class ModelLayout:
    """How one config entry is cut: byte chunks (``chunk_size``) or llama.cpp shards (``shard_size``)."""

    format: str  # bytes | gguf
    shard_size: int | None = None  # gguf only


@dataclass(frozen=True)
class _Source:
    path: Path
    name: str | None
    expected_sha256: str | None
    layout: ModelLayout


@dataclass
class PreparedRelease:
    dist: Path
    index: dict[str, Any]
    assets: list[Path]
    removed: list[str]


def load_release_config(path: Path) -> dict[str, Any]:
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES, "release config")
    except ManifestError as exc:
        raise UsageError(exc.message) from None
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("models"), list) or not config["models"]:
        raise UsageError(f"{path}: needs a non-empty 'models' list")
    for i, model in enumerate(config["models"]):
        if not isinstance(model, dict) or not ({"model", "file"} & set(model)):
            raise UsageError(f"{path}: models[{i}] needs 'model' (a registry name) or 'file' (a path)")
        for key in ("model", "file", "name"):
            if key in model and not isinstance(model[key], str):
                raise UsageError(f"{path}: models[{i}].{key} must be a string")
        if "name" in model and not _MODEL_NAME_RE.match(model["name"]):
            raise UsageError(f"{path}: models[{i}].name {model['name'][:60]!r} is not a model name",
                             hint="letters, digits and . _ + -, starting with a letter or digit (at most 128)")
        unknown = sorted(str(k) for k in model if k not in _ENTRY_KEYS)
        if unknown:  # a misspelt "shard-size" must not be silently ignored
            raise UsageError(f"{path}: models[{i}] has an unknown key {unknown[0][:40]!r}",
                             hint=f"an entry takes {', '.join(_ENTRY_KEYS)}")
    model_layouts(config, path)
    return config


def model_layouts(config: dict[str, Any], path: Path) -> list[ModelLayout]:
    """Each entry's ``format`` (bytes, the default, or gguf) and gguf ``shard_size``, checked."""
    from teadist.base.sizes import parse_size
    from teadist.formats.gguf_layout import DEFAULT_SHARD_SIZE, SHARD_LIMIT

    layouts = []
    for i, model in enumerate(config["models"]):
        fmt = model.get("format", "bytes")
        if fmt not in FORMATS:
            raise UsageError(f"{path}: models[{i}].format {str(fmt)[:40]!r} is not one of {', '.join(FORMATS)}",
                             hint='"gguf" ships llama.cpp shards (what wllama loads), "bytes" byte chunks')
        if fmt == "bytes":
            if "shard_size" in model:
                raise UsageError(f"{path}: models[{i}].shard_size needs \"format\": \"gguf\"",
                                 hint='byte chunks take the top-level "chunk_size"')
            layouts.append(ModelLayout("bytes"))
            continue
        value = model.get("shard_size", DEFAULT_SHARD_SIZE)
        if isinstance(value, str):
            size = parse_size(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            size = int(value)
        else:
            raise UsageError(f"{path}: models[{i}].shard_size {str(value)[:40]!r} is not a size",
                             hint='use bytes or e.g. "512M"')
        if not 0 < size < SHARD_LIMIT:
            raise UsageError(f"{path}: models[{i}].shard_size {size} must be positive and below 2 GiB "
                             "(browsers, GitHub and llama.cpp's ftell stop there)", hint='wllama advises "512M"')
        layouts.append(ModelLayout("gguf", size))
    return layouts


def config_chunk_size(config: dict[str, Any], path: Path) -> int:
    """The config's ``chunk_size`` (bytes or a size like "1.9G"), checked before anything is written."""
    from teadist.base.sizes import parse_size
    from teadist.pipelines.split import DEFAULT_CHUNK_SIZE, check_chunk_size

    value = config.get("chunk_size", DEFAULT_CHUNK_SIZE)
    if isinstance(value, str):
        size = parse_size(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        size = int(value)
    else:
        raise UsageError(f"{path}: chunk_size {value!r} is not a size", hint='use bytes or e.g. "1.9G"')
    check_chunk_size(size)
    return size


def prepare_release(tag: str, repo: str, config_path: Path, dist: Path, reporter: Reporter,
                    get_model: Callable[[str], FetchedModel], files: dict[str, Path] | None = None) -> PreparedRelease:
    """Split every configured model into DIST with tag-based URLs and write ``model-manifest.json``.

    ``get_model`` fetches a registry model / URL and returns its path with the sha256 the fetch
    verified; the split must arrive at that sha256 or nothing is listed."""
    from teadist.base.hashing import hash_range
    from teadist.pipelines.split import chunk_names, split_file
    from teadist.release.wasmpkg import check_tarball

    check_repo_and_tag(repo, tag)
    config = load_release_config(config_path)
    chunk_size = config_chunk_size(config, config_path)
    tarball = f"{TARBALL_PREFIX}-{tarball_version(tag)}.tar.gz"
    if dist.exists() and not dist.is_dir():
        raise UsageError(f"--out {dist} is not a folder")
    # Gather every model first (fetching writes only to the model cache), then check the folder:
    # nothing is written to DIST before it is known to hold only what prepare may replace. A first
    # look before fetching spares a long download into a folder that would be refused anyway.
    previous = _previous_files(dist)
    _check_folder_is_ours(dist, previous | {RELEASE_MANIFEST, tarball}, tarball,
                          _possible_names(config, config_path, files))
    tarball_path = dist / tarball
    if _is_regular(tarball_path):
        check_tarball(tarball_path)  # a bad tarball stops the run before any model is fetched or split
    layouts = model_layouts(config, config_path)
    for entry, layout in zip(config["models"], layouts, strict=True):  # before anything is fetched
        if layout.format == "gguf" and "file" in entry and not str(entry["file"]).endswith(".gguf"):
            raise UsageError(f'{config_path}: {entry["file"][:80]!r} is no .gguf file: "format": "gguf" '
                             "ships llama.cpp shards of a GGUF model", hint='drop "format" to ship byte chunks')
    sources: list[_Source] = []
    for entry, layout in zip(config["models"], layouts, strict=True):
        expected: str | None = None
        if "file" in entry:
            path = (files or {}).get(entry["file"]) or (config_path.parent / entry["file"])
            if not path.is_file():
                raise NotFoundError(f"model file not found: {path}")
        else:
            path, expected = get_model(entry["model"])
        sources.append(_Source(path, entry.get("name") or _registry_name(entry.get("model")), expected, layout))
    planned: set[str] = {RELEASE_MANIFEST, tarball}
    plans: list[list[str]] = []
    for source in sources:
        if source.layout.format == "gguf":
            assert source.layout.shard_size is not None
            pieces = _planned_shards(source.path, source.layout.shard_size)
        else:
            pieces = chunk_names(source.path.name, max(1, -(-source.path.stat().st_size // chunk_size)))
        plans.append(pieces)
        names = {*pieces, manifest_filename(source.path.name)}
        _check_asset_names(source.path, names)
        if source.name is not None and not _MODEL_NAME_RE.match(source.name):
            raise UsageError(f"model name {source.name[:60]!r} is not a manifest name",
                             hint='give the model a "name" in the release config')
        if names & planned:
            raise UsageError(f"two models of {config_path} would write {sorted(names & planned)[0]}",
                             hint="list every model file once")
        planned |= names
    _check_folder_is_ours(dist, previous | planned, tarball)

    dist.mkdir(parents=True, exist_ok=True)
    base = download_base(repo, tag)
    models: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []
    written: set[str] = set()
    try:
        for source, pieces in zip(sources, plans, strict=True):
            written |= {*pieces, manifest_filename(source.path.name)}
            if source.layout.format == "gguf":
                assert source.layout.shard_size is not None
                manifest, manifest_path = _shard(source, dist, reporter, source.layout.shard_size, base)
                what = "shards"
            else:
                result = split_file(source.path, dist, reporter, chunk_size=chunk_size, name=source.name,
                                    base_url=base, expect_sha256=source.expected_sha256)
                manifest, manifest_path, what = result.manifest, result.manifest_path, "chunks"
            written |= {c.name for c in manifest.chunks}  # a file changed since planning: its names too
            if [c.name for c in manifest.chunks] != pieces:  # what was checked is what was written
                raise TeadistError(f"{source.path.name}: the split wrote other names than were planned; "
                                   "nothing is listed", hint="run release prepare again")
            models.append(manifest.to_dict())
            extra.append(_listed_file(manifest_path, base, hash_range))
            reporter.info(f"{manifest.file.name}: {len(manifest.chunks)} {what} in {dist}")
        if _is_regular(tarball_path):
            extra.append(_listed_file(tarball_path, base, hash_range))
        index = {"schema_version": "1.0", "kind": INDEX_KIND, "repo": repo, "tag": tag, "models": models,
                 "files": extra}
        validate_index(index)
    except BaseException:
        # what this run wrote and no earlier index listed: leftovers the next run would refuse
        for name in sorted(written - previous):
            if _is_regular(dist / name):
                remove_quietly(dist / name)
        raise
    keep = {a.name for a in listed_assets(index)} | {RELEASE_MANIFEST}
    # a previous index is trusted as "prepare wrote these" only for names prepare writes, at the
    # size it listed: a crafted index can never get a user's notes.txt deleted
    sizes = _previous_sizes(dist) if previous else {}
    removed = sorted(n for n in previous - keep if _is_regular(dist / n) and _PREPARED_NAME.search(n)
                     and (dist / n).lstat().st_size == sizes.get(n))
    for stale in removed:  # the previous index listed them: prepare wrote them
        remove_quietly(dist / stale)
    write_bytes_atomic(dist / RELEASE_MANIFEST, (json.dumps(index, indent=2) + "\n").encode())
    return PreparedRelease(dist, index, [dist / a.name for a in listed_assets(index)] + [dist / RELEASE_MANIFEST],
                           removed)


def _planned_shards(path: Path, shard_size: int) -> list[str]:
    """The llama.cpp shard names ``path`` will be cut into, each shard at most ``shard_size`` bytes;
    a file that cannot be sharded so (not a GGUF, already a shard, a tensor larger than a shard) is
    refused here, before anything is written."""
    from teadist.formats.gguf_header import read_header
    from teadist.formats.gguf_layout import build_headers, plan_shards, read_layout, shard_names
    from teadist.formats.gguf_recipe import MAX_LITERAL_BYTES

    if not path.name.endswith(".gguf"):
        raise UsageError(f'{path.name}: "format": "gguf" needs a .gguf file', hint='drop "format" to ship byte chunks')
    header = read_header(path)  # bounded, no per-tensor objects yet: refuses what llama.cpp refuses
    if header.info_end - header.kv_end > MAX_LITERAL_BYTES:
        raise UsageError(f"{path.name}: its tensor-info table ({header.info_end - header.kv_end} bytes) is too large "
                         f"to shard (at most {MAX_LITERAL_BYTES})")
    layout = read_layout(path)
    if layout.split_keys:
        raise UsageError(f"{path.name} is already a shard ({', '.join(layout.split_keys)})",
                         hint="release the whole model: teadist assembles shards first")
    with open(path, "rb") as fh:
        fh.seek(layout.kv_start)
        kv_block = fh.read(layout.kv_end - layout.kv_start)
    shards = plan_shards(layout, len(kv_block), shard_size)
    build_headers(layout, kv_block, shards)  # the exact size of every shard
    for shard in shards:
        if shard.size > shard_size:
            biggest = max(shard.tensors, key=lambda t: t.n_bytes)
            raise UsageError(f"{path.name}: tensor {biggest.name!r} ({biggest.n_bytes} bytes) does not fit in a "
                             f"shard of {shard_size} bytes", hint="raise this entry's shard_size (below 2 GiB)")
    return shard_names(path.name.removesuffix(".gguf"), len(shards))


def _shard(source: _Source, dist: Path, reporter: Reporter, shard_size: int, base: str) -> tuple[Manifest, Path]:
    """llama.cpp shards of ``source`` with tag-based URLs; held to the sha256 its fetch verified."""
    from teadist.pipelines.gguf_split import split_gguf

    result = split_gguf(source.path, dist, reporter, shard_size=shard_size, name=source.name, base_url=base)
    got = result.manifest.file.sha256
    if source.expected_sha256 is not None and got != source.expected_sha256:
        raise IntegrityError(f"{source.path} hashes to sha256 {str(got)[:16]}…, not the {source.expected_sha256[:16]}… "
                             "it was verified as when fetched: it changed since",
                             hint="remove it from the cache (teadist rm) and fetch it again")
    return result.manifest, result.manifest_path


def _registry_name(model: str | None) -> str | None:
    """``phi-4-mini:q4_k_m`` → ``phi-4-mini``; a URL or ``hf://`` reference → None (named after its file)."""
    if model is None or "://" in model:
        return None
    return model.split(":")[0]


def _check_asset_names(path: Path, names: set[str]) -> None:
    """Every name a model's split writes must be a plain file name GitHub takes as an asset name."""
    from teadist.base.fsutil import plain_filename_problem

    for name in sorted(names):
        problem = plain_filename_problem(name)
        if problem or not ASSET_NAME_RE.match(name):
            raise UsageError(f"model file {path.name!r} would be published as {name!r}, which "
                             f"{problem or 'is not a GitHub asset name'}",
                             hint="rename the file: letters, digits and . _ + - only")


def _listed_file(path: Path, base: str, hash_range: Callable[[Path], tuple[str, int]]) -> dict[str, Any]:
    digest, size = hash_range(path)
    return {"name": path.name, "size": size, "sha256": digest, "url": f"{base}/{path.name}"}


def _previous_files(dist: Path) -> set[str]:
    """What an earlier ``prepare`` wrote here, as its index says; nothing if there is no index."""
    if not (dist / RELEASE_MANIFEST).exists() and not (dist / RELEASE_MANIFEST).is_symlink():
        return set()
    try:
        _, data = read_index(dist / RELEASE_MANIFEST)
    except ManifestError as exc:
        raise UsageError(f"--out {dist} holds a {RELEASE_MANIFEST} that is not a release index ({exc.message})",
                         hint="use an empty folder for --out") from None
    return {a.name for a in listed_assets(data)} | model_manifest_names(data) | {RELEASE_MANIFEST}


def _previous_sizes(dist: Path) -> dict[str, int]:
    _, data = read_index(dist / RELEASE_MANIFEST)
    return {a.name: a.size for a in listed_assets(data)}


def _possible_names(config: dict[str, Any], config_path: Path, files: dict[str, Path] | None) -> tuple[str, ...]:
    """File-name prefixes this config's models can write (``<model file>.``, and ``<stem>-`` for
    shards), before fetching."""
    from teadist.sources.registry import lookup_filename

    prefixes = []
    for entry in config["models"]:
        if "file" in entry:
            name = ((files or {}).get(entry["file"]) or config_path.parent / entry["file"]).name
        else:
            found = lookup_filename(entry["model"])
            if found is None:
                return ("",)  # not a registry name we know: the exact check after fetching decides
            name = found
        prefixes.append(name + ".")
        if entry.get("format") == "gguf":
            prefixes.append(name.removesuffix(".gguf") + "-")
    return tuple(prefixes)


def _check_folder_is_ours(dist: Path, allowed: set[str], tarball: str, prefixes: tuple[str, ...] = ()) -> None:
    if not dist.is_dir():
        return
    foreign = []
    for entry in sorted(os.listdir(dist)):
        if entry.startswith("."):
            continue  # hidden: never listed, never published (split cleans its own temp files)
        if entry.startswith(prefixes) and _is_regular(dist / entry):
            continue  # a first look, before fetching: the exact names are checked after
        if entry not in allowed or not _is_regular(dist / entry):
            foreign.append(entry)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(f"--out {dist} holds files release prepare did not write: {shown}",
                         hint=f"use an empty folder (only {tarball} may be put there first, "
                              "by teadist package-wasm)")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False
