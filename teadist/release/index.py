"""The release index (``model-manifest.json``): what a tag ships, and one model out of it."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teadist.base.fsutil import plain_filename_problem
from teadist.errors import ManifestError, NotFoundError, UsageError
from teadist.formats.manifest import MAX_MANIFEST_BYTES, Manifest, manifest_filename, validate_manifest_dict

RELEASE_MANIFEST = "model-manifest.json"
INDEX_KIND = "release-index"
_TAG_RE = re.compile(r"^[A-Za-z0-9._/+-]+$")
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A version core, then a pre-release part: semver's ``-rc1``/``-beta.2``/``-alpha`` or PEP 440's
# ``rc1``/``b2``/``a1``/``.dev3``; ``+build`` metadata is not a pre-release.
_VERSION_CORE = re.compile(r"^[vV]?\d+(?:\.\d+)*")
_PEP440_PRE = re.compile(r"^(?:[._]?(?:a|alpha|b|beta|c|rc|pre|preview|dev)[._]?\d*)+$", re.IGNORECASE)


@dataclass(frozen=True)
class ListedAsset:
    """One file the release index says the release holds: exact name, size and sha256."""

    name: str
    size: int
    sha256: str


def download_base(repo: str, tag: str) -> str:
    """Release download URLs are built from the tag, never from a draft's (temporary) URLs."""
    return f"https://github.com/{repo}/releases/download/{tag}"


def check_repo_and_tag(repo: str, tag: str) -> None:
    if not _REPO_RE.match(repo):
        raise UsageError(f"--repo {repo!r} is not OWNER/NAME")
    if not _TAG_RE.match(tag) or ".." in tag:
        raise UsageError(f"--tag {tag!r} is not a valid tag name")



def is_prerelease(tag: str) -> bool:
    """``v1.2.0-rc1``, ``v1.2.0-beta.2``, ``v2.0.0-alpha``, ``v1.2.0rc1`` are pre-releases; ``v1.2.0``
    and ``v1.2.0+build.5`` are not. A tag that is no version at all is not one either."""
    core = _VERSION_CORE.match(tag)
    if core is None:
        return False
    rest = tag[core.end():].split("+", 1)[0]
    return (rest.startswith("-") and len(rest) > 1) or bool(rest and _PEP440_PRE.match(rest))


def tarball_version(tag: str) -> str:
    """The version in ``tea-wasm-llm-{version}.tar.gz`` for a tag (the workflow's ``${TAG#v}``)."""
    return tag[1:] if tag.startswith("v") else tag


def validate_index(data: Any) -> None:
    """A release index: every model a valid v1 manifest, every name safe, every file hashed."""
    if not isinstance(data, dict) or data.get("kind") != INDEX_KIND or not isinstance(data.get("models"), list):
        raise ManifestError("release index: needs kind 'release-index' and a 'models' list")
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
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or RELEASE_MANIFEST in names:
        raise ManifestError(f"release index: a name is listed twice: {(duplicates or [RELEASE_MANIFEST])[0]}")


def listed_assets(data: dict[str, Any]) -> list[ListedAsset]:
    """Every file the index lists (chunks of every model, then ``files``), the index itself excluded."""
    out = [ListedAsset(c["name"], c["size"], c["sha256"]) for m in data["models"] for c in m.get("chunks", [])]
    out += [ListedAsset(f["name"], f["size"], f["sha256"]) for f in data.get("files", [])]
    return out


def model_manifest_names(data: dict[str, Any]) -> set[str]:
    return {manifest_filename(m["file"]["name"]) for m in data["models"]}


def read_index(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The index's exact bytes and its validated content; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NotFoundError(f"{path} not found", hint="run `teadist release prepare` first") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open it without following a link ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ManifestError(f"{path} is not a regular file")
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
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

