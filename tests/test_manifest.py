from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teadist.errors import ManifestError
from teadist.formats.manifest import (
    ChunkRecord,
    FileRecord,
    HfSource,
    Manifest,
    UrlSource,
    dump_manifest,
    load_manifest,
    parse_manifest,
    resource_dir,
)
from tests.helpers import Result, files_in

A = "a" * 64
B = "b" * 64


def good() -> dict[str, Any]:
    return {
        "schema_version": "1.0",
        "name": "tiny",
        "file": {"name": "tiny.gguf", "size": 30, "sha256": A},
        "format": "bytes",
        "chunks": [
            {"name": "tiny.gguf.part-00001-of-00002", "offset": 0, "size": 20, "sha256": A},
            {"name": "tiny.gguf.part-00002-of-00002", "offset": 20, "size": 10, "sha256": B},
        ],
        "generator": {"name": "teadist", "version": "0.1.0"},
    }


def with_change(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(good())
    change(data)
    return data


def set_chunk(field: str, value: Any, index: int = 0) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        d["chunks"][index][field] = value
    return change


MALICIOUS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("traversal", set_chunk("name", "../../x"), "chunks[0].name"),
    ("absolute path", set_chunk("name", "/etc/passwd"), "chunks[0].name"),
    ("backslash", set_chunk("name", "..\\..\\x"), "chunks[0].name"),
    ("dot-dot", set_chunk("name", ".."), "chunks[0].name"),
    ("drive letter", set_chunk("name", "C:evil"), "chunks[0].name"),
    ("NUL byte", set_chunk("name", "a\x00b"), "chunks[0].name"),
    ("control char", set_chunk("name", "a\nb"), "chunks[0].name"),
    ("device name", set_chunk("name", "CON.txt"), "chunks[0].name"),
    ("over-long name", set_chunk("name", "x" * 300), "chunks[0].name"),
    ("file name traversal", lambda d: d["file"].update(name="../evil.gguf"), "file.name"),
    ("chunk named like the file", set_chunk("name", "tiny.gguf"), "chunks[0].name"),
    ("gap", set_chunk("offset", 21, 1), "chunks[1].offset"),
    ("overlap", set_chunk("offset", 19, 1), "chunks[1].offset"),
    ("sizes do not add up", lambda d: d["file"].update(size=31), "chunks"),
    ("duplicate names", set_chunk("name", "tiny.gguf.part-00001-of-00002", 1), "chunks[1].name"),
    ("non-hex digest", set_chunk("sha256", "z" * 64), "chunks[0].sha256"),
    ("short digest", set_chunk("sha256", "a" * 63), "chunks[0].sha256"),
    ("upper-case digest", set_chunk("sha256", "A" * 64), "chunks[0].sha256"),
    ("unknown major version", lambda d: d.update(schema_version="2.0"), "schema_version"),
    ("missing version", lambda d: d.pop("schema_version"), "schema_version"),
    ("negative size", set_chunk("size", -1), "chunks[0].size"),
    ("unknown format", lambda d: d.update(format="zip"), "format"),
    ("unknown field", lambda d: d.update(evil=True), "manifest"),
    ("file:// URL", set_chunk("urls", ["file:///etc/passwd"]), "chunks[0].urls[0]"),
    ("missing offset", lambda d: d["chunks"][0].pop("offset"), "chunks[0].offset"),
    ("no chunks", lambda d: d.update(chunks=[]), "chunks"),
    ("unpinned bytes manifest", lambda d: d["file"].update(sha256=None), "file"),
]


@pytest.mark.parametrize(("label", "change", "field"), MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_loader_rejects_malicious_manifest_naming_the_field(
        label: str, change: Callable[[dict[str, Any]], None], field: str) -> None:
    raw = json.dumps(with_change(change)).encode()
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw, "m.json")
    message = info.value.message
    assert "\n" not in message
    assert field in message, message


@pytest.mark.parametrize(("label", "change", "field"), MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_assemble_refuses_malicious_manifest_before_any_write(
        label: str, change: Callable[[dict[str, Any]], None], field: str,
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    manifest = tmp_path / "in" / "m.manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps(with_change(change)))
    cache = tmp_path / "cache"
    result = cli("assemble", manifest, "--cache-dir", cache)
    assert result.code == 3  # bad content: an integrity failure
    assert result.err.startswith("error: ") and field in result.err
    assert not cache.exists()
    assert files_in(manifest.parent) == {"m.manifest.json"}
    assert files_in(tmp_path) == {"in"}


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b"\xff\xfe", b'"text"'])
def test_non_object_or_invalid_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(ManifestError, match=r"m\.json: "):
        parse_manifest(raw, "m.json")


def test_round_trip_keeps_every_field() -> None:
    manifest = Manifest(
        name="phi-4-mini", tag="q3_k_s", default_tag=True, description="d", license="MIT", notes="n",
        file=FileRecord("f.gguf", 10, A), format="bytes",
        chunks=[ChunkRecord("f.gguf.part-00001-of-00001", 10, A, 0, ("https://example.org/c",))],
        sources=[HfSource("org/repo", "f.gguf", "7" * 40), UrlSource("https://mirror.example/f.gguf")],
        model={"architecture": "phi3", "parameters": 5, "quantization": "Q3_K_S", "context_length": 131072,
               "chat_template": True, "chat_template_family": "phi3", "gguf_version": 3},
    )
    again = parse_manifest(dump_manifest(manifest), "x")
    assert again == manifest


def test_minor_version_is_accepted_and_single_needs_no_pins() -> None:
    data = {"schema_version": "1.7", "name": "gemma-3n-e4b", "format": "single",
            "file": {"name": "gemma.gguf", "size": None, "sha256": None},
            "sources": [{"type": "hf", "repo": "unsloth/gemma-3n-E4B-it-GGUF", "path": "gemma.gguf"}]}
    manifest = parse_manifest(json.dumps(data).encode(), "x")
    assert not manifest.is_pinned


def test_oversized_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (16 * 1024 * 1024 + 10))
    with pytest.raises(ManifestError, match="larger than"):
        load_manifest(path)


def test_schema_ships_with_the_package() -> None:
    assert (resource_dir() / "schema" / "manifest-v1.schema.json").is_file()


# -- issue 10, defect 9: numbers and nesting are checked at the boundary --------------------------
BAD_NUMBERS: list[tuple[str, str, str]] = [
    ("float size", '"size": 30.0', "file.size"),
    ("exponent size", '"size": 3e1', "file.size"),
    ("huge size", '"size": ' + str(10**30), "file.size"),
    ("bool offset", '"offset": true', "chunks[0].offset"),
]


def _raw_with(fragment: str) -> bytes:
    text = json.dumps(good())
    if fragment.startswith('"size"'):
        text = text.replace('"size": 30', fragment, 1)
    else:
        text = text.replace('"offset": 0', fragment, 1)
    return text.encode()


@pytest.mark.parametrize(("label", "fragment", "field"), BAD_NUMBERS, ids=[b[0] for b in BAD_NUMBERS])
def test_non_integer_or_absurd_numbers_are_refused(label: str, fragment: str, field: str, tmp_path: Path,
                                                   cli: Callable[..., Result]) -> None:
    raw = _raw_with(fragment)
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw, "m.json")
    assert field in info.value.message or "number" in info.value.message, info.value.message
    path = tmp_path / "m.manifest.json"
    path.write_bytes(raw)
    for command in (("assemble", path, "--cache-dir", tmp_path / "c"), ("verify", path), ("fetch", path)):
        result = cli(*command)
        assert result.code == 3, (command, result.err)
        assert result.err.startswith("error: ") and result.err.count("\n") <= 2 and "Traceback" not in result.err


def test_bool_in_a_rebuild_piece_is_refused() -> None:
    data = {"schema_version": "1.0", "name": "g", "format": "gguf", "file": {"name": "g.gguf", "size": 3, "sha256": A},
            "chunks": [{"name": "g-00001-of-00001.gguf", "size": 3, "sha256": B}],
            "rebuild": {"method": "pieces-v1", "pieces": [{"shard": False, "offset": True, "length": 2},
                                                          {"zeros": True}]}}
    from teadist.formats.gguf_recipe import check_recipe

    manifest = parse_manifest(json.dumps(data).encode(), "g.json")
    with pytest.raises(ManifestError, match=r"rebuild\.pieces\[0\]"):
        check_recipe(manifest)


def test_deeply_nested_json_is_refused_without_a_traceback(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "deep.manifest.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ManifestError, match="nested"):
        parse_manifest(path.read_bytes(), "deep.json")
    for command in (("assemble", path), ("verify", path), ("fetch", path)):
        result = cli(*command)
        assert result.code == 3 and "nested" in result.err and "Traceback" not in result.err, (command, result.err)


def test_a_release_index_with_files_not_a_list_is_refused(tmp_path: Path, cli: Callable[..., Result]) -> None:
    from tests.servers import MirrorServer

    index = {"schema_version": "1.0", "kind": "release-index", "repo": "a/b", "tag": "v1",
             "models": [{**good(), "name": "tiny"}], "files": 5}
    (tmp_path / "model-manifest.json").write_text(json.dumps(index))
    with MirrorServer(tmp_path) as server:
        assert isinstance(server, MirrorServer)
        result = cli("fetch", server.url_for("model-manifest.json"))
    assert result.code == 3, result.err
    assert "files" in result.err and "Traceback" not in result.err


def test_names_too_long_for_teadists_own_names_beside_them_are_refused(tmp_path: Path,
                                                                       cli: Callable[..., Result]) -> None:
    """A 230-byte file name is a valid file name, but its lock, record and partial names would not
    be: refused before any download, not after one (the model installed, its record unwritable)."""
    data = good()
    data["file"]["name"] = "m" * 225 + ".gguf"
    with pytest.raises(ManifestError, match="longer than 200 bytes"):
        parse_manifest(json.dumps(data).encode(), "m.json")


def test_a_fifo_given_as_a_manifest_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Review 11a #11 (manifest half): a FIFO where a manifest is expected must not hang the command."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "m.manifest.json"
    os.mkfifo(fifo)
    for args in (["verify", str(tmp_path / "x.gguf"), "--manifest", str(fifo)], ["assemble", str(fifo)]):
        proc = subprocess.run([sys.executable, "-m", "teadist", *args], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "not a regular file" in proc.stderr, proc.stderr


@pytest.mark.parametrize("raw", [b"[" + b'"\\' * 100_000, b'"' + b'\\"' * 100_000, b"[" * 200_000,
                                 b"{" + b",".join(b'"k%d":1' % i for i in range(100_000)) + b"}"],
                         ids=["open-strings", "escaped-quotes", "deep", "many-keys"])
def test_json_input_is_parsed_in_linear_time(raw: bytes) -> None:
    """Review finding 11: the nesting pre-check retried an unterminated string from every later
    quote — 200 KB of crafted JSON took over a minute. Generous bound: 2 s for a few hundred KB."""
    import contextlib
    import time

    from teadist.base import jsonin

    started = time.perf_counter()
    with contextlib.suppress(jsonin.JsonInputError):
        jsonin.loads(raw)
    assert time.perf_counter() - started < 2.0


def test_a_number_with_too_many_digits_is_one_clear_error(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Review finding 11: Python refuses to read integers over 4300 digits with a bare ValueError."""
    from teadist.base import jsonin

    with pytest.raises(jsonin.JsonInputError, match="digits"):
        jsonin.loads(b'{"size": ' + b"7" * 5000 + b"}")
    manifest = tmp_path / "m.manifest.json"
    manifest.write_bytes(b'{"schema_version": "1.0", "name": "m", "file": {"name": "m.gguf", "size": '
                         + b"9" * 5000 + b', "sha256": null}, "format": "single"}')
    result = cli("verify", tmp_path / "m.gguf", "--manifest", manifest)
    assert result.code == 3 and "digits" in result.err and "Traceback" not in result.err, result.err


@pytest.mark.parametrize("key", ["\n", "a\rb", "\u2028", "x\x1b[2Jy", "\x85"])
def test_a_field_name_with_control_characters_stays_one_line(key: str) -> None:
    """CI's fuzz campaign (seed found by hypothesis): a key "\\n" under ``name`` made the message
    ``manifest field name.\\n: … is not a whole number`` two lines — the API's message, not only the
    terminal's, is one line naming the field."""
    data = good()
    data["name"] = {key: 2**50 + 1}
    with pytest.raises(ManifestError) as caught:
        parse_manifest(json.dumps(data).encode(), "fuzz")
    message = caught.value.message
    assert message.startswith("fuzz: manifest field name") and message.isprintable(), repr(message)


def test_an_error_message_is_one_printable_line_whatever_it_was_given() -> None:
    from teadist.errors import TeadistError

    error = TeadistError("bad name 'a\nb\tc\x00\u2029'", hint="try\nagain")
    assert error.message == "bad name 'a\\nb\\tc\\x00\\u2029'" and error.hint == "try\\nagain"
    assert str(error) == error.message
