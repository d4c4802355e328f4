"""Manifest format v1: the one JSON format for registry entries, split output and releases.

1.1 adds optional block maps: ``block_size`` and ``blocks`` (the SHA-256 of each block, in order)
on the file and on each chunk or shard. A 1.0 manifest (no block maps) reads as before.

Every read and write is validated twice: against the JSON Schema shipped in the wheel, then by
checks a schema cannot express (safe names, contiguous offsets, sizes adding up). Each
rejection is a ManifestError with one line that names the field, raised before anything is
written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from teadist import __version__
from teadist.base import jsonin
from teadist.base.blocks import BlockMap
from teadist.base.fsutil import MAX_MODEL_NAME_BYTES, read_small_file, require_plain_filename, write_bytes_atomic
from teadist.base.urls import has_dot_segment, url_problem
from teadist.errors import ManifestError, NotFoundError

SCHEMA_VERSION = "1.1"
SUPPORTED_MAJOR = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MANIFEST_SUFFIX = ".manifest.json"
MAX_FILE_SIZE = 2**50  # 1 PiB: anything larger in a manifest is a lie, not a model
Format = Literal["single", "bytes", "gguf"]
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True)
class FileRecord:
    """The original model file as published upstream."""

    name: str
    size: int | None
    sha256: str | None
    blocks: BlockMap | None = None


@dataclass(frozen=True)
class ChunkRecord:
    """One stored piece: a byte range of the original (``bytes``) or a shard (``gguf``)."""

    name: str
    size: int
    sha256: str
    offset: int | None = None
    urls: tuple[str, ...] = ()
    blocks: BlockMap | None = None


@dataclass(frozen=True)
class HfSource:
    repo: str
    path: str
    revision: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class UrlSource:
    url: str


Source = HfSource | UrlSource


@dataclass
class Manifest:
    name: str
    file: FileRecord
    format: Format
    chunks: list[ChunkRecord] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    model: dict[str, Any] | None = None
    rebuild: dict[str, Any] | None = None
    tag: str | None = None
    default_tag: bool | None = None
    description: str | None = None
    license: str | None = None
    notes: str | None = None
    generator: dict[str, str] = field(default_factory=lambda: {"name": "teadist", "version": __version__})
    schema_version: str = SCHEMA_VERSION

    @property
    def is_pinned(self) -> bool:
        return self.file.size is not None and self.file.sha256 is not None

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else self.name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": self.schema_version, "name": self.name}
        for key in ("tag", "default_tag", "description", "license", "notes"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["file"] = {"name": self.file.name, "size": self.file.size, "sha256": self.file.sha256}
        if self.file.blocks is not None:
            out["file"].update(self.file.blocks.to_dict())
        out["format"] = self.format
        if self.chunks or self.format != "single":
            out["chunks"] = [_chunk_to_dict(c) for c in self.chunks]
        if self.rebuild is not None:
            out["rebuild"] = self.rebuild
        if self.sources:
            out["sources"] = [_source_to_dict(s) for s in self.sources]
        if self.model is not None:
            out["model"] = self.model
        out["generator"] = self.generator
        return out


def _chunk_to_dict(chunk: ChunkRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"name": chunk.name}
    if chunk.offset is not None:
        out["offset"] = chunk.offset
    out["size"] = chunk.size
    out["sha256"] = chunk.sha256
    if chunk.urls:
        out["urls"] = list(chunk.urls)
    if chunk.blocks is not None:
        out.update(chunk.blocks.to_dict())
    return out


def _source_to_dict(source: Source) -> dict[str, Any]:
    if isinstance(source, UrlSource):
        return {"type": "url", "url": source.url}
    out: dict[str, Any] = {"type": "hf", "repo": source.repo}
    if source.revision:
        out["revision"] = source.revision
    out["path"] = source.path
    if source.endpoint:
        out["endpoint"] = source.endpoint
    return out


# -- schema -------------------------------------------------------------------------------

def resource_dir() -> Path:
    """The ``manifests`` folder: inside the installed wheel, or at the top of a source checkout."""
    packaged = Path(str(resources.files("teadist"))) / "manifests"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "manifests"


@cache
def _validator() -> Any:
    import jsonschema  # lazy: ~40 ms of imports that `--help` does not need

    schema = json.loads((resource_dir() / "schema" / "manifest-v1.schema.json").read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "manifest"


def _validate_schema(data: Any) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is not None:
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise ManifestError(f"manifest field {_field_path(error.absolute_path)}: {message}")


def _check_version(data: Any) -> None:
    if not isinstance(data, dict):
        raise ManifestError("manifest: top level must be a JSON object")
    version = data.get("schema_version")
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    if match is None:
        raise ManifestError(f"manifest field schema_version: {str(version)[:40]!r} is not 'MAJOR.MINOR'")
    if int(match.group(1)) != SUPPORTED_MAJOR:
        raise ManifestError(
            f"manifest field schema_version: major version {match.group(1)} is not supported "
            f"(this teadist reads {SUPPORTED_MAJOR}.x)",
            hint="upgrade teadist",
        )


def _plain_name(name: object, field: str) -> str:
    checked = require_plain_filename(name, field)
    if checked.startswith("."):
        raise ManifestError(f"{field}: {checked[:80]!r} starts with '.'; hidden names are refused")
    if len(checked.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
        raise ManifestError(f"{field}: {checked[:60]!r}… is longer than {MAX_MODEL_NAME_BYTES} bytes")
    return checked


def _check_numbers(value: Any, path: str = "manifest") -> None:
    """Every number a whole number in range (JSON Schema takes 30.0 for an integer; bools are not numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{path}.{key}" if path != "manifest" else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{path}[{i}]")
    elif isinstance(value, float) or (type(value) is int and not -MAX_FILE_SIZE <= value <= MAX_FILE_SIZE):
        raise ManifestError(f"manifest field {path}: {str(value)[:40]} is not a whole number up to {MAX_FILE_SIZE}")


def _check_urls(data: dict[str, Any]) -> None:
    where = [(f"sources[{i}].url", s.get("url")) for i, s in enumerate(data.get("sources", [])) if "url" in s]
    where += [(f"sources[{i}].endpoint", s.get("endpoint")) for i, s in enumerate(data.get("sources", []))
              if "endpoint" in s]
    where += [(f"chunks[{i}].urls[{j}]", u) for i, c in enumerate(data.get("chunks", []))
              for j, u in enumerate(c.get("urls", []))]
    for where_, url in where:
        problem = url_problem(url)
        if problem is not None:
            raise ManifestError(f"manifest field {where_}: the URL {problem}")


def _check_hub_paths(data: dict[str, Any]) -> None:
    """A Hub source's path and revision go into its resolve URL as they are: a '.' or '..' segment
    (removed by every HTTP client before sending) would fetch another repository's file in the name
    of this one, so they are refused, as ``hf://ORG/REPO/FILE`` refuses them."""
    for i, src in enumerate(data.get("sources", [])):
        if src.get("type") != "hf":
            continue
        if has_dot_segment(src["path"]):
            raise ManifestError(f"manifest field sources[{i}].path: {src['path'][:80]!r} has an empty, '.' or "
                                "'..' segment")
        if src.get("revision") in (".", ".."):
            raise ManifestError(f"manifest field sources[{i}].revision: {src['revision']!r} is not a revision")


def _block_map(item: dict[str, Any], field: str) -> BlockMap | None:
    """The block map of a file or chunk object, or None; ManifestError when it cannot describe it."""
    if "block_size" not in item and "blocks" not in item:
        return None
    if "block_size" not in item or "blocks" not in item:
        raise ManifestError(f"manifest field {field}: block_size and blocks go together")
    if item.get("size") is None:
        raise ManifestError(f"manifest field {field}.blocks: a file of unknown size has no block map")
    blocks = BlockMap(item["block_size"], tuple(item["blocks"]))
    problem = blocks.problem(item["size"])
    if problem is not None:
        raise ManifestError(f"manifest field {field}.blocks: {problem}")
    return blocks


def _check_semantics(data: dict[str, Any]) -> None:
    fmt = data["format"]
    file = data["file"]
    _plain_name(file["name"], "manifest field file.name")
    _check_urls(data)
    _check_hub_paths(data)
    _block_map(file, "file")
    for i, chunk in enumerate(data.get("chunks", [])):
        _block_map(chunk, f"chunks[{i}]")
    chunks: list[dict[str, Any]] = data.get("chunks", [])
    if fmt == "single":
        if chunks:
            raise ManifestError("manifest field chunks: format 'single' takes no chunks")
        if "rebuild" in data:
            raise ManifestError("manifest field rebuild: only format 'gguf' has one")
        return
    if file["size"] is None or file["sha256"] is None:
        raise ManifestError(f"manifest field file: format {fmt!r} needs the original's size and sha256")
    if not chunks:
        raise ManifestError(f"manifest field chunks: format {fmt!r} needs at least one chunk")
    seen: set[str] = set()
    for i, chunk in enumerate(chunks):
        name = _plain_name(chunk["name"], f"manifest field chunks[{i}].name")
        if name in seen:
            raise ManifestError(f"manifest field chunks[{i}].name: duplicate name {name!r}")
        if name == file["name"]:
            raise ManifestError(f"manifest field chunks[{i}].name: same as file.name {name!r}")
        seen.add(name)
    if fmt == "gguf":
        if not isinstance(data.get("rebuild"), dict):
            raise ManifestError("manifest field rebuild: format 'gguf' needs rebuild information")
        return
    if "rebuild" in data:
        raise ManifestError("manifest field rebuild: only format 'gguf' has one")
    expected = 0
    for i, chunk in enumerate(chunks):
        offset = chunk.get("offset")
        if offset is None:
            raise ManifestError(f"manifest field chunks[{i}].offset: required for format 'bytes'")
        if offset > expected:
            raise ManifestError(
                f"manifest field chunks[{i}].offset: gap of {offset - expected} bytes before this chunk")
        if offset < expected:
            raise ManifestError(
                f"manifest field chunks[{i}].offset: overlaps the previous chunk by {expected - offset} bytes")
        if chunk["size"] == 0 and len(chunks) > 1:
            raise ManifestError(f"manifest field chunks[{i}].size: empty chunk in a multi-chunk manifest")
        expected += chunk["size"]
    if expected != file["size"]:
        raise ManifestError(
            f"manifest field chunks: sizes add up to {expected} bytes, file.size is {file['size']}")


def validate_manifest_dict(data: Any) -> None:
    """Raise ManifestError for anything unsafe or inconsistent; return None when ``data`` is sound."""
    _check_version(data)
    _check_numbers(data)
    _validate_schema(data)
    _check_semantics(data)


def manifest_from_dict(data: Any) -> Manifest:
    validate_manifest_dict(data)
    file = data["file"]
    sources: list[Source] = []
    for src in data.get("sources", []):
        if src["type"] == "url":
            sources.append(UrlSource(src["url"]))
        else:
            sources.append(HfSource(src["repo"], src["path"], src.get("revision"), src.get("endpoint")))
    return Manifest(
        name=data["name"],
        file=FileRecord(file["name"], file["size"], file["sha256"], _block_map(file, "file")),
        format=data["format"],
        chunks=[
            ChunkRecord(c["name"], c["size"], c["sha256"], c.get("offset"), tuple(c.get("urls", ())),
                        _block_map(c, f"chunks[{i}]"))
            for i, c in enumerate(data.get("chunks", []))
        ],
        sources=sources,
        model=data.get("model"),
        rebuild=data.get("rebuild"),
        tag=data.get("tag"),
        default_tag=data.get("default_tag"),
        description=data.get("description"),
        license=data.get("license"),
        notes=data.get("notes"),
        generator=data.get("generator", {"name": "unknown", "version": "unknown"}),
        schema_version=data["schema_version"],
    )


def parse_manifest(raw: bytes, origin: str) -> Manifest:
    """Parse and validate manifest bytes; ``origin`` names where they came from in errors."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{origin}: manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = jsonin.loads(raw)
    except jsonin.JsonInputError as exc:
        raise ManifestError(f"{origin}: {exc}") from None
    try:
        return manifest_from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{origin}: {exc.message}", exc.hint) from None


def load_manifest(path: Path) -> Manifest:
    try:
        raw = read_small_file(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise NotFoundError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise NotFoundError(f"manifest path is a folder: {path}") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    return parse_manifest(raw, str(path))


def dump_manifest(manifest: Manifest) -> bytes:
    data = manifest.to_dict()
    validate_manifest_dict(data)
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Validate, then write atomically (the manifest's presence means the work it lists is done)."""
    write_bytes_atomic(path, dump_manifest(manifest))


def manifest_filename(file_name: str) -> str:
    return file_name + MANIFEST_SUFFIX
