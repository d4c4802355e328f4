"""Messages a user can act on: no internals, no pointless retries, options that do what they say."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.manifest import FileRecord, Manifest, UrlSource, dump_manifest
from teadist.pipelines.split import split_file
from tests.helpers import Result
from tests.servers import Fault, MirrorServer, file_sha256

INTERNALS = ("ReadFailed", "IncompleteRead", "ProtocolError", "ConnectionError", "codec", "JSON", "Traceback",
             "16777216", "ValueError")


def _clean(text: str) -> None:
    for word in INTERNALS:
        assert word not in text, text


def test_assemble_of_a_model_file_says_so(tiny_model: Path, cli: Callable[..., Result]) -> None:
    result = cli("assemble", tiny_model)
    assert result.code == 2, result.err
    assert "is a GGUF model, not a manifest" in result.err
    _clean(result.err)


def test_assemble_out_with_a_trailing_slash_makes_a_folder(tiny_model: Path, tmp_path: Path,
                                                           cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    result = cli("assemble", tmp_path / "dist" / "tiny-llama.gguf.manifest.json", "--out", f"{tmp_path}/newdir/")
    assert result.code == 0, result.err
    assert (tmp_path / "newdir").is_dir()
    assert result.out.strip() == str(tmp_path / "newdir" / "tiny-llama.gguf")
    assert file_sha256(tmp_path / "newdir" / "tiny-llama.gguf") == file_sha256(tiny_model)


def test_offline_fetch_of_an_installed_manifest_url(tiny_model: Path, tmp_path: Path, fast_retries: None,
                                                    cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        url = server.url_for("tiny-llama.gguf.manifest.json")
        first = cli("fetch", url)
        assert first.code == 0, first.err
    offline = cli("fetch", url, "--offline", "--json")  # the server is gone: nothing may be asked of it
    assert offline.code == 0, offline.err
    assert json.loads(offline.out)["path"] == first.out.strip()
    assert json.loads(offline.out)["already_present"] is True


def test_a_model_url_is_not_read_as_a_manifest(served: Path, mirror: MirrorServer,
                                               cli: Callable[..., Result]) -> None:
    result = cli("fetch", mirror.url_for("tiny.gguf"))
    assert result.code == 2, result.err
    assert "model file, not a manifest" in result.err and "hf://" in result.err
    _clean(result.err)
    assert mirror.requests == []


def test_a_host_that_does_not_resolve_is_not_retried(served: Path, mirror: MirrorServer, tmp_path: Path,
                                                     fast_retries: None, cli: Callable[..., Result]) -> None:
    model = served / "tiny.gguf"
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", model.stat().st_size, file_sha256(model)),
                        format="single", sources=[UrlSource("http://no-such-host.invalid/tiny.gguf"),
                                                  UrlSource(mirror.url_for("tiny.gguf"))])
    (tmp_path / "tiny.manifest.json").write_bytes(dump_manifest(manifest))
    result = cli("fetch", tmp_path / "tiny.manifest.json")
    assert result.code == 0, result.err
    assert "no-such-host.invalid" in result.err and "does not resolve" in result.err
    assert "retrying" not in result.err
    _clean(result.err)


def test_a_transfer_cut_every_time_is_told_in_words(served: Path, mirror: MirrorServer, tmp_path: Path,
                                                    fast_retries: None, cli: Callable[..., Result],
                                                    monkeypatch: object) -> None:
    model = served / "tiny.gguf"
    mirror.add_fault(Fault("truncate", after=1000, path="tiny.gguf", times=100))
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", model.stat().st_size, file_sha256(model)),
                        format="single", sources=[UrlSource(mirror.url_for("tiny.gguf"))])
    (tmp_path / "tiny.manifest.json").write_bytes(dump_manifest(manifest))
    result = cli("fetch", tmp_path / "tiny.manifest.json")
    assert result.code == 1, result.err
    assert mirror.applied_kinds() and set(mirror.applied_kinds()) == {"truncate"}
    assert "gave up" in result.err
    _clean(result.err)


def test_verify_a_folder_of_chunks(tiny_model: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    result = cli("verify", tmp_path / "dist")
    assert result.code == 0, result.err
    assert result.out.count("OK") == 6 and "(whole file)" in result.out  # 5 chunks and the file they make
    (tmp_path / "dist" / "other.manifest.json").write_text("{}")
    two = cli("verify", tmp_path / "dist")
    assert two.code == 2 and "--manifest" in two.err


def test_split_of_a_non_utf8_file_name_is_one_line_and_leaves_nothing(tmp_path: Path, tiny_model: Path) -> None:
    import os
    import subprocess

    from tests.conftest import TEADIST_BIN

    name = os.fsencode(tmp_path) + b"/\xff.gguf"
    with open(name, "wb") as fh:
        fh.write(tiny_model.read_bytes())
    proc = subprocess.run([os.fsencode(TEADIST_BIN), b"split", name, b"--out", os.fsencode(tmp_path / "o")],
                          capture_output=True)
    assert b"Traceback" not in proc.stderr, proc.stderr[-400:]
    assert proc.returncode == 2 and proc.stderr.startswith(b"error: "), proc.stderr[-400:]
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_fetch_source_that_matches_no_source_is_refused(tmp_path: Path, tiny_model: Path,
                                                        cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        got = cli("fetch", server.url_for("tiny-llama.gguf.manifest.json"), "--source", "zzz")
        chunk_requests = [r.path for r in server.requests if "part-" in r.path]
    assert got.code == 2, f"--source zzz was ignored: {got.code} {got.out}"
    assert "zzz" in got.err and chunk_requests == []


def test_what_is_not_a_regular_file_is_said_so(tmp_path: Path, cli: Callable[..., Result]) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")
    for argv in (["split", "/dev/zero"], ["split", tmp_path / "fifo"], ["fetch", tmp_path / "fifo"]):
        got = cli(*argv)
        assert got.code == 2 and "not a regular file" in got.err, (argv, got.err)
        assert "not found" not in got.err


def test_a_folder_without_a_manifest_is_said_so(tmp_path: Path, cli: Callable[..., Result]) -> None:
    got = cli("verify", tmp_path)
    assert got.code == 2 and "no manifest" in got.err, got.err


def test_an_environment_size_is_said_in_whole_numbers(cli: Callable[..., Result],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEADIST_RANGE_ALIGN", "lots")
    got = cli("list")
    assert got.code == 2 and "8388608" in got.err and "e+" not in got.err, got.err
