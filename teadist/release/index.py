"""The release index (``model-manifest.json``): what a tag ships, and one model out of it."""

from __future__ import annotations

import re
from typing import Any

from teadist.base.fsutil import plain_filename_problem
from teadist.errors import NotFoundError, UsageError
from teadist.formats.manifest import Manifest, validate_manifest_dict

RELEASE_MANIFEST = "model-manifest.json"
INDEX_KIND = "release-index"
_TAG_RE = re.compile(r"^[A-Za-z0-9._/+-]+$")
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def download_base(repo: str, tag: str) -> str:
    """Release download URLs are built from the tag, never from a draft's (temporary) URLs."""
    return f"https://github.com/{repo}/releases/download/{tag}"


def check_repo_and_tag(repo: str, tag: str) -> None:
    if not _REPO_RE.match(repo):
        raise UsageError(f"--repo {repo!r} is not OWNER/NAME")
    if not _TAG_RE.match(tag) or ".." in tag:
        raise UsageError(f"--tag {tag!r} is not a valid tag name")



def validate_index(data: Any) -> None:
    """A release index: every model a valid v1 manifest, every name safe."""
    from teadist.errors import ManifestError

    if not isinstance(data, dict) or data.get("kind") != INDEX_KIND or not isinstance(data.get("models"), list):
        raise ManifestError("release index: needs kind 'release-index' and a 'models' list")
    if not data["models"]:
        raise ManifestError("release index: lists no model")
    for i, model in enumerate(data["models"]):
        try:
            validate_manifest_dict(model)
        except ManifestError as exc:
            raise ManifestError(f"release index models[{i}]: {exc.message}") from None
    for i, extra in enumerate(data.get("files", [])):
        problem = plain_filename_problem(extra.get("name") if isinstance(extra, dict) else None)
        if problem:
            raise ManifestError(f"release index files[{i}].name: {problem}")


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

