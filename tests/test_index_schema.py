"""The release index (model-manifest.json) has its own JSON Schema, shipped in the wheel, and what
`release prepare` writes and `release publish` uploads validates against it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from teadist.errors import ManifestError
from teadist.formats.manifest import resource_dir
from teadist.release.index import validate_index
from tests.helpers import Result
from tests.test_release import _prepare


def _validator() -> jsonschema.Draft202012Validator:
    folder = resource_dir() / "schema"
    index = json.loads((folder / "release-index-v1.schema.json").read_text())
    manifest = json.loads((folder / "manifest-v1.schema.json").read_text())
    registry: Registry[Any] = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (index, manifest)])
    return jsonschema.Draft202012Validator(index, registry=registry)


def test_a_prepared_index_validates_against_its_own_schema(tmp_path: Path, tiny_model: Path,
                                                           cli: Callable[..., Result]) -> None:
    dist = _prepare(cli, tmp_path, tiny_model)
    index = json.loads((dist / "model-manifest.json").read_text())
    _validator().validate(index)
    with pytest.raises(jsonschema.ValidationError):  # the schema is not a formality
        _validator().validate({**index, "files": [{"name": "x", "size": -1, "sha256": "0" * 64}]})
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate({**index, "unknown": 1})
    with pytest.raises(ManifestError, match="release index"):
        validate_index({**index, "unknown": 1})
