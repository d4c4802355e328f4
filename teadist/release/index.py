"""The release index (``model-manifest.json``): what a tag ships, one model out of it, and the index
as ``release publish`` uploads it (each chunk's asset URL added)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from teadist.base.fsutil import plain_filename_problem
from teadist.errors import ManifestError, NotFoundError, UsageError
from teadist.formats.manifest import MAX_MANIFEST_BYTES, Manifest, manifest_filename, validate_manifest_dict

RELEASE_MANIFEST = "model-manifest.json"
INDEX_KIND = "release-index"
# OWNER/NAME as GitHub spells them: an owner starts with a letter or digit; "." and ".." are no repo
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,38}$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# The version in ``tea-wasm-llm-{version}.tar.gz`` (package-wasm --version; a tag without its "v")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
# Safe as a GitHub asset name (and in a URL path): what publish will accept, checked by prepare first
ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A version core (``1.2.0``, maybe after a prefix like ``v``, ``release-`` or ``tea-v``), then what
# follows it. Nothing, or only ``+build`` metadata or a PEP 440 post-release (``.post1``), is a full
# release; anything else (``-rc1``, ``-beta.2``, ``rc1``, ``.dev3``, ``rc1.post1``, ``-1``) is not.
_VERSION_CORE = re.compile(r"(?<![0-9A-Za-z])[vV]?(\d+(?:\.\d+)*)")
_POST_RELEASE = re.compile(r"^(?:[._-]?(?:post|rev)\d*)?$", re.IGNORECASE)
_PRE_WORDS = {"alpha", "beta", "rc", "pre", "preview", "dev", "nightly", "snapshot", "canary", "test"}


@dataclass(frozen=True)
class ListedAsset:
    """One file the release index says the release holds: exact name, size and sha256."""

    name: str
    size: int
    sha256: str


def download_base(repo: str, tag: str) -> str:
    """Release download URLs are built from the tag, never from a draft's (temporary) URLs."""
    return f"https://github.com/{repo}/releases/download/{tag}"


def tag_problem(tag: str) -> str | None:
    """Why ``tag`` cannot name a release, or None. Git's ref-name rules (``git check-ref-format``),
    and the tag less its ``v`` must be a package version: it names ``tea-wasm-llm-{version}.tar.gz``."""
    if not isinstance(tag, str) or not tag:
        return "is empty"
    if not VERSION_RE.match(tarball_version(tag)):
        return ("must be a version such as v1.2.0 or v1.2.0-rc1: letters, digits and . + _ -, starting with "
                "a letter or digit, at most 65 characters")
    if ".." in tag or tag.endswith((".", ".lock")):
        return "breaks git's tag-name rules ('..', a trailing '.' or '.lock')"
    return None


def repo_problem(repo: str) -> str | None:
    """Why ``repo`` is no GitHub OWNER/NAME, or None."""
    owner, slash, name = repo.partition("/") if isinstance(repo, str) else ("", "", "")
    if not slash or not _OWNER_RE.match(owner) or not _REPO_NAME_RE.match(name) or name in (".", "..") or \
            name.lower().endswith(".git"):
        return "is not OWNER/NAME (letters, digits, '-', '_', '.'; not '.', '..' or a name ending in .git)"
    return None


def check_repo_and_tag(repo: str, tag: str) -> None:
    """Both checked before anything is fetched or written: they end up in every download URL."""
    problem = repo_problem(repo)
    if problem:
        raise UsageError(f"--repo {repo[:120]!r} {problem}")
    problem = tag_problem(tag)
    if problem:
        raise UsageError(f"--tag {tag[:120]!r} {problem}")


def is_prerelease(tag: str) -> bool:
    """``v1.2.0-rc1``, ``release-1.2.0-rc1``, ``v1.2.0rc1.post1``, ``tea-v1.2.3-beta`` and
    ``nightly-20261130`` are pre-releases; ``v1.2.0``, ``v1.2.0+build.5`` and ``v1.2.0.post1`` are not.
    A tag that is no version at all is not one either."""
    core = _VERSION_CORE.search(tag)
    if core is None:
        return False
    rest = tag[core.end():].split("+", 1)[0]
    prefix = {word.lower() for word in re.split(r"[^A-Za-z]+", tag[:core.start()]) if word}
    return bool(prefix & _PRE_WORDS) or not _POST_RELEASE.match(rest)


def tarball_version(tag: str) -> str:
    """The version in ``tea-wasm-llm-{version}.tar.gz`` for a tag (the workflow's ``${TAG#v}``)."""
    return tag[1:] if tag.startswith("v") else tag


INDEX_SCHEMA = "release-index-v1.schema.json"


@cache
def index_validator() -> Any:
    """The release index's own JSON Schema (in the wheel), its models checked by the manifest schema."""
    import jsonschema
    from referencing import Registry, Resource

    from teadist.formats.manifest import resource_dir

    folder = resource_dir() / "schema"
    schemas = [json.loads((folder / name).read_text("utf-8")) for name in (INDEX_SCHEMA, "manifest-v1.schema.json")]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas)
    return jsonschema.Draft202012Validator(schemas[0], registry=registry)


def validate_index(data: Any) -> None:
    """A release index: its schema, every model a valid v1 manifest, every name safe, every file hashed."""
    if not isinstance(data, dict) or data.get("kind") != INDEX_KIND or not isinstance(data.get("models"), list):
        raise ManifestError("release index: needs kind 'release-index' and a 'models' list")
    from jsonschema.exceptions import best_match

    error = best_match(index_validator().iter_errors(data))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ManifestError(f"release index{where}: {error.message[:160]}")
    if not data["models"]:
        raise ManifestError("release index: lists no model")
    for i, model in enumerate(data["models"]):
        try:
            validate_manifest_dict(model)
        except ManifestError as exc:
            raise ManifestError(f"release index models[{i}]: {exc.message}") from None
    files = data.get("files", [])
    if not isinstance(files, list):
        raise ManifestError("release index files: must be a list")
    for i, extra in enumerate(files):
        problem = plain_filename_problem(extra.get("name") if isinstance(extra, dict) else None)
        if problem:
            raise ManifestError(f"release index files[{i}].name: {problem}")
        size, sha = extra.get("size"), extra.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"release index files[{i}].size: must be a whole number of bytes")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ManifestError(f"release index files[{i}].sha256: must be 64 lowercase hex digits")
    names = [a.name for a in listed_assets(data)]
    counts = Counter(names)  # one pass: names.count(n) per name was quadratic in the index's size
    duplicates = sorted(n for n, seen in counts.items() if seen > 1)
    if duplicates or RELEASE_MANIFEST in names:
        raise ManifestError(f"release index: a name is listed twice: {(duplicates or [RELEASE_MANIFEST])[0]}")


def listed_assets(data: dict[str, Any]) -> list[ListedAsset]:
    """Every file the index lists (chunks of every model, then ``files``), the index itself excluded."""
    out = [ListedAsset(c["name"], c["size"], c["sha256"]) for m in data["models"] for c in m.get("chunks", [])]
    out += [ListedAsset(f["name"], f["size"], f["sha256"]) for f in data.get("files", [])]
    return out


def model_manifest_names(data: dict[str, Any]) -> set[str]:
    return {manifest_filename(m["file"]["name"]) for m in data["models"]}


def read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of a regular file, never through a symlink. Opened non-blocking: a FIFO
    under the name is refused at once instead of waiting for a writer forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NotFoundError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open it without following a link ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ManifestError(f"{path} is not a regular file")
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ManifestError(f"{path}: larger than {limit} bytes")
    return raw


def read_index(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The index's exact bytes and its validated content; never through a symlink or from a FIFO."""
    try:
        raw = read_regular_file(path, MAX_MANIFEST_BYTES, RELEASE_MANIFEST)
    except NotFoundError:
        raise NotFoundError(f"{path} not found", hint="run `teadist release prepare` first") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    try:
        validate_index(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc.message}", exc.hint) from None
    return raw, data


def manifest_from_index(data: dict[str, Any], wanted: str | None) -> Manifest:
    from teadist.formats.manifest import manifest_from_dict

    validate_index(data)
    models = [manifest_from_dict(m) for m in data["models"]]
    if wanted is None:
        if len(models) == 1:
            return models[0]
        raise UsageError("the release lists several models: name one as URL#NAME",
                         hint="models: " + ", ".join(m.name for m in models))
    for m in models:
        if wanted in (m.name, m.reference, m.file.name):
            return m
    raise NotFoundError(f"model {wanted!r} is not in the release index")



# -- the index as published: the local one plus where each chunk's asset is -----------------------
MAX_CHUNK_URLS = 16  # the manifest schema's bound on a chunk's ``urls``


def published_index(raw: bytes, locations: dict[str, str], is_location: Callable[[str], bool]) -> bytes:
    """The index ``release publish`` uploads: ``raw`` (the index prepare wrote, already validated)
    with each chunk's ``urls`` followed by its location (``locations``: chunk name → the REST API
    URL of the asset holding it, which a page on any origin can read; ``releases/download/`` URLs
    answer without CORS headers). URLs in ``raw`` for which ``is_location`` is true (an earlier
    run's asset URLs) are dropped first. Nothing else changes — the same models, names, sizes and
    sha256s, the same files — and the result is the same bytes for the same inputs, so a re-run
    can prove the uploaded index by its digest. ManifestError when it would list anything else."""
    data = json.loads(raw.decode("utf-8"))
    for model in data["models"]:
        for chunk in model.get("chunks", []):
            urls = [u for u in chunk.get("urls", []) if not is_location(u)]
            if len(urls) >= MAX_CHUNK_URLS:
                raise ManifestError(f"chunk {chunk['name']} lists {len(urls)} URLs: no room for the URL of its "
                                    f"release asset (a chunk takes at most {MAX_CHUNK_URLS})",
                                    hint=f"list at most {MAX_CHUNK_URLS - 1} URLs per chunk, then prepare again")
            chunk["urls"] = [*urls, locations[chunk["name"]]]
    out = (json.dumps(data, indent=2) + "\n").encode()
    if len(out) > MAX_MANIFEST_BYTES:  # browsers and teadist read no larger index
        raise ManifestError(f"with each chunk's asset URL the index would be {len(out)} bytes, more than "
                            f"{MAX_MANIFEST_BYTES}")
    derived = json.loads(out)
    validate_index(derived)
    original = json.loads(raw.decode("utf-8"))
    if listed_assets(derived) != listed_assets(original) or \
            _without_chunk_urls(derived) != _without_chunk_urls(original):
        raise ManifestError("the index to publish would list other files than model-manifest.json; refusing")
    return out


def _without_chunk_urls(data: dict[str, Any]) -> Any:
    copy = json.loads(json.dumps(data))
    for model in copy["models"]:
        for chunk in model.get("chunks", []):
            chunk.pop("urls", None)
    return copy
