"""Server misbehaviour matrix, mirror and Hub-compatible server: every fault of the fetch issue,
a server that lies about the sha256, and one that sends another file after a resume. Each ends in
a verified file or a clear error — never a corrupt file in the cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.formats.manifest import FileRecord, Manifest, UrlSource, dump_manifest
from tests.helpers import Result
from tests.servers import Fault, HubServer, MirrorServer

pytestmark = pytest.mark.faults

FAULTS = [Fault("truncate", after=100_000), Fault("reset", after=30_000), Fault("status", status=500),
          Fault("status", status=429, retry_after=0.1), Fault("stall", after=5_000, seconds=4),
          Fault("wrong_length"), Fault("ignore_range"), Fault("corrupt", offset=4242),
          Fault("corrupt", offset=99, times=50), Fault("status", status=503, times=50)]


def sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _check(result: Result, final: Path, expected: str) -> tuple[bool, int]:
    verified = result.code == 0 and final.exists() and sha(final) == expected
    clear_error = result.code in (1, 3) and "\nerror: " in "\n" + result.err and "Traceback" not in result.err
    corrupt = int(final.exists() and sha(final) != expected)
    return (verified or (clear_error and not final.exists())) and not corrupt, corrupt


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.after or f.status or f.offset}x{f.times}")
@pytest.mark.parametrize("where", ["mirror", "hub"])
def test_matrix(where: str, fault: Fault, hub: HubServer, mirror: MirrorServer, served: Path, tmp_path: Path,
                models_dir: Path, cli: Callable[..., Result], campaign: Callable[..., None]) -> None:
    expected = sha(served / "tiny.gguf")
    if where == "mirror":
        manifest = Manifest("tiny", FileRecord("tiny.gguf", (served / "tiny.gguf").stat().st_size, expected),
                            "single", sources=[UrlSource(mirror.url_for("tiny.gguf"))])
        path = tmp_path / "m.manifest.json"
        path.write_bytes(dump_manifest(manifest))
        mirror.add_fault(Fault(**{**fault.__dict__}))
        result = cli("fetch", path)
    else:
        hub.cdn = None
        hub.add_fault(Fault(**{**fault.__dict__}))
        result = cli("fetch", "hf://org/repo/tiny.gguf")
    ok, corrupt = _check(result, models_dir / "tiny.gguf", expected)
    campaign(f"server misbehaviour ({where})", f"{fault.kind} x{fault.times}", ok, corrupt)
    assert ok, result.err


def test_server_lying_about_sha256(mirror: MirrorServer, served: Path, models_dir: Path, fast_retries: None,
                                   monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Result],
                                   campaign: Callable[..., None]) -> None:
    with HubServer(cdn=mirror, lie_sha256=True) as liar:
        assert isinstance(liar, HubServer)
        liar.add_repo("org/repo", {"tiny.gguf": served / "tiny.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", liar.url)
        result = cli("fetch", "hf://org/repo/tiny.gguf")
    ok = result.code == 3 and not (models_dir / "tiny.gguf").exists()
    campaign("server misbehaviour (hub)", "lies about the sha256", ok, 0)
    assert ok


def test_other_file_after_resume(hub: HubServer, mirror: MirrorServer, served: Path, tmp_path: Path,
                                 models_dir: Path, cli: Callable[..., Result], campaign: Callable[..., None]) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(os.urandom((served / "tiny.gguf").stat().st_size))
    mirror.swapped["tiny.gguf"] = other
    mirror.add_fault(Fault("reset", after=150_000))
    first = cli("fetch", "hf://org/repo/tiny.gguf")  # other bytes: fails its hash (or is cut)
    del mirror.swapped["tiny.gguf"]  # the server now has the right file, with another ETag
    second = cli("fetch", "hf://org/repo/tiny.gguf")
    ok = first.code != 0 and second.code == 0 and sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    campaign("server misbehaviour (mirror)", "other file after resume (ETag changed)", ok, 0)
    assert ok, first.err + second.err
