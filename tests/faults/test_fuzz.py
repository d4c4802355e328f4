"""Garbage in: the manifest loader, `inspect` and the size parser under hypothesis. The only
outcomes allowed are success or a teadist error with a message — no traceback, no hang, no
write outside the target folder."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teadist.base.sizes import parse_size
from teadist.errors import TeadistError
from teadist.formats.gguf_info import read_info
from teadist.formats.manifest import parse_manifest
from teadist.formats.tinymodel import make_tiny_model

pytestmark = pytest.mark.faults

# The test command draws the same examples on every run (a red CI is a bug anyone can reproduce,
# never a roll of the dice); TEADIST_FUZZ=explore draws new random ones, 50 times as many.
EXPLORE = os.environ.get("TEADIST_FUZZ") == "explore"


def examples(n: int) -> int:
    return n * 50 if EXPLORE else n

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)

VALID: dict[str, Any] = {
    "schema_version": "1.0", "name": "m", "format": "bytes",
    "file": {"name": "m.gguf", "size": 10, "sha256": "a" * 64},
    "chunks": [{"name": "m.gguf.part-00001-of-00002", "offset": 0, "size": 4, "sha256": "b" * 64},
               {"name": "m.gguf.part-00002-of-00002", "offset": 4, "size": 6, "sha256": "c" * 64}],
}


def _mutate(data: Any, rng: random.Random, value: Any) -> Any:
    if isinstance(data, dict) and data:
        key = rng.choice(sorted(data))
        copy = dict(data)
        copy[key] = _mutate(copy[key], rng, value) if rng.random() < 0.6 else value
        return copy
    if isinstance(data, list) and data:
        items = list(data)
        i = rng.randrange(len(items))
        items[i] = _mutate(items[i], rng, value) if rng.random() < 0.6 else value
        return items
    return value


@settings(max_examples=examples(300), derandomize=not EXPLORE, deadline=None)
@given(value=json_values, seed=st.integers(0, 2**32))
def fuzz_manifest_mutations(value: Any, seed: int) -> None:
    raw = json.dumps(_mutate(VALID, random.Random(seed), value)).encode()
    try:
        parse_manifest(raw, "fuzz")
    except TeadistError as exc:
        assert exc.message and "\n" not in exc.message


@settings(max_examples=examples(200), derandomize=not EXPLORE, deadline=None)
@given(raw=st.binary(max_size=400))
def fuzz_manifest_bytes(raw: bytes) -> None:
    try:
        parse_manifest(raw, "fuzz")
    except TeadistError as exc:
        assert exc.message


@settings(max_examples=examples(300), derandomize=not EXPLORE, deadline=None)
@given(text=st.text(max_size=30))
def fuzz_size_parser(text: str) -> None:
    try:
        assert parse_size(text) >= 0
    except TeadistError as exc:
        assert exc.message.startswith("invalid size")


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_tiny_model(tmp_path_factory.mktemp("fz") / "f.gguf", seed=3).read_bytes()


@settings(max_examples=examples(150), derandomize=not EXPLORE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 469_760), flips=st.lists(st.integers(0, 469_759), max_size=6),
       junk=st.binary(max_size=64))
def fuzz_inspect(gguf_bytes: bytes, tmp_path_factory: pytest.TempPathFactory,
                                                      cut: int, flips: list[int], junk: bytes) -> None:
    folder = tmp_path_factory.mktemp("inspect")
    data = bytearray(gguf_bytes[:cut] if cut < len(gguf_bytes) else gguf_bytes)
    for pos in flips:
        if pos < len(data):
            data[pos] ^= 0xFF
    path = folder / "x.gguf"
    path.write_bytes(bytes(data) + junk if cut % 3 == 0 else bytes(data))
    try:
        read_info(path)
    except TeadistError as exc:
        assert exc.message
    assert sorted(p.name for p in folder.iterdir()) == ["x.gguf"]


def test_garbage_gguf(gguf_bytes: bytes, tmp_path_factory: pytest.TempPathFactory, campaign: Any) -> None:
    fuzz_inspect(gguf_bytes, tmp_path_factory)  # type: ignore[call-arg]
    campaign("garbage in (hypothesis)", "inspect: truncated, bit-flipped, random GGUF (150 examples)", True, 0)


def test_fuzzed_manifests_never_write_outside_the_target(tmp_path: Path) -> None:
    from teadist.base.progress import NullReporter
    from teadist.pipelines.assemble import assemble_chunks

    rng = random.Random(7)
    for i in range(200):
        data = _mutate(VALID, rng, rng.choice(["../../x", "/abs", "a\\b", "", 0, -1, None, "C:x", "x" * 300]))
        target = tmp_path / f"t{i}"
        target.mkdir()
        try:
            manifest = parse_manifest(json.dumps(data).encode(), "fuzz")
            assemble_chunks(manifest, target, target / "out" / manifest.file.name, NullReporter())
        except TeadistError:
            pass
        for path in tmp_path.rglob("*"):
            assert path.resolve().is_relative_to(tmp_path.resolve())
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["t0", "t1"]


@pytest.mark.parametrize(("label", "fuzz", "examples"), [
    ("manifest loader: mutated valid manifests", fuzz_manifest_mutations, 300),
    ("manifest loader: random bytes", fuzz_manifest_bytes, 200),
    ("size parser: random text", fuzz_size_parser, 300),
])
def test_garbage_in(label: str, fuzz: Any, examples: int, campaign: Any) -> None:
    try:
        fuzz()
    except BaseException:
        campaign("garbage in (hypothesis)", label, False, 0)
        raise
    campaign("garbage in (hypothesis)", f"{label} ({examples} examples)", True, 0)
