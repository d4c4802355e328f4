"""Disk full: a small tmpfs as the cache. A clear error naming the free space needed, the partial
removed, the previous cache intact."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.tinymodel import make_tiny_model
from teadist.pipelines.split import split_file
from tests.helpers import Result
from tests.servers import HubServer, MirrorServer

pytestmark = pytest.mark.faults


def sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".part", ".part.json"))]


def test_full_cache_keeps_the_previous_model(small_disk: Path, tmp_path: Path, cli: Callable[..., Result],
                                             campaign: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = small_disk / "models"
    old = make_tiny_model(tmp_path / "old" / "old.gguf", seed=1)  # ~0.5 MB
    split_file(old, tmp_path / "old-dist", NullReporter(), chunk_size=200_000)
    assert cli("assemble", tmp_path / "old-dist" / "old.gguf.manifest.json", "--cache-dir", cache).code == 0
    big = make_tiny_model(tmp_path / "big" / "big.gguf", seed=2, n_embd=256, n_layer=4)  # ~4 MB > free
    from teadist.base.fsutil import free_bytes

    assert free_bytes(small_disk) < big.stat().st_size  # the fault is real: it cannot fit
    served = tmp_path / "served"
    served.mkdir()
    (served / "big.gguf").write_bytes(big.read_bytes())
    outcomes = []
    with MirrorServer(served) as cdn, HubServer(cdn=cdn) as hub:  # type: ignore[arg-type]
        assert isinstance(hub, HubServer)
        hub.add_repo("org/repo", {"big.gguf": served / "big.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        fetched = cli("fetch", "hf://org/repo/big.gguf", "--cache-dir", cache)
        outcomes.append(("fetch into a full cache", fetched))
    split_file(big, tmp_path / "big-dist", NullReporter(), chunk_size=1_000_000)
    assembled = cli("assemble", tmp_path / "big-dist" / "big.gguf.manifest.json", "--cache-dir", cache)
    outcomes.append(("assemble into a full cache", assembled))
    splitted = cli("split", big, "--out", small_disk / "chunks", "-s", "1000000")
    outcomes.append(("split onto a full disk", splitted))
    for label, result in outcomes:
        clean = not (cache / "big.gguf").exists() and not _partials(small_disk)
        ok = result.code == 1 and "free" in result.err and "need" in result.err and "Traceback" not in result.err
        intact = sha(cache / "old.gguf") == sha(old)
        campaign("disk full (3 MB tmpfs)", label, ok and clean and intact, 0 if intact else 1)
        assert ok, result.err
        assert clean and intact
    assert cli("verify", "--cache-dir", cache).code == 0


def test_disk_filling_up_mid_write_is_a_clear_error(small_disk: Path, tmp_path: Path,
                                                    campaign: Callable[..., None]) -> None:
    """The free-space check passes; while the server holds the download, something else fills the
    disk; the next write meets ENOSPC. The filler proves the disk really filled before the outcome
    is checked: a clear error, no partial left, nothing lost — and a re-run after freeing space works."""
    import errno
    import os
    import time

    from teadist.formats.manifest import FileRecord, Manifest, UrlSource, dump_manifest
    from tests.conftest import TEADIST_BIN
    from tests.helpers import write_random
    from tests.servers import Fault

    served = tmp_path / "served"
    served.mkdir()
    write_random(served / "m.bin", 1_500_000, seed=5)
    cache = small_disk / "models"
    with MirrorServer(served) as mirror:
        assert isinstance(mirror, MirrorServer)
        manifest = tmp_path / "m.manifest.json"
        manifest.write_bytes(dump_manifest(Manifest("m", FileRecord("m.bin", 1_500_000, sha(served / "m.bin")),
                                                    "single", sources=[UrlSource(mirror.url_for("m.bin"))])))
        mirror.add_fault(Fault("pause", after=300_000, seconds=3))
        env = {**os.environ, "TEA_MODELS_DIR": str(cache), "TEADIST_RETRY_BACKOFF": "0.01"}
        proc = subprocess.Popen([str(TEADIST_BIN), "fetch", str(manifest)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while "pause" not in mirror.applied_kinds() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        filled = False
        with open(small_disk / "filler", "wb") as filler:  # take every byte that is left
            try:
                while True:
                    filler.write(bytes(64 * 1024))
                    filler.flush()
            except OSError as exc:
                filled = exc.errno == errno.ENOSPC
        _, err = proc.communicate(timeout=60)
        assert filled, "the disk never filled"
        clean = not (cache / "m.bin").exists() and not _partials(small_disk)
        ok = proc.returncode == 1 and "disk full" in err and "Traceback" not in err
        (small_disk / "filler").unlink()
        again = subprocess.run([str(TEADIST_BIN), "fetch", str(manifest)], env=env, capture_output=True, text=True,
                               timeout=60)
    recovered = again.returncode == 0 and sha(cache / "m.bin") == sha(served / "m.bin")
    campaign("disk full (3 MB tmpfs)", "disk fills during a download", ok and clean and recovered, 0)
    assert ok, err
    assert clean and recovered, again.stderr


@pytest.mark.parametrize("command", ["split-gguf", "split-bytes", "assemble", "rebuild"])
def test_a_write_that_fails_leaves_no_temp_file(command: str, tmp_path: Path,
                                                campaign: Callable[..., None]) -> None:
    """Review finding 15: every writer removes its temp file when a write fails. The fault: a file
    size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the kernel fail the write with EFBIG in the
    middle of the first output file; the folder is listed afterwards."""
    import resource
    import signal

    from teadist.pipelines.gguf_split import split_gguf
    from tests.conftest import TEADIST_BIN

    model = make_tiny_model(tmp_path / "m.gguf", seed=3)
    split_file(model, tmp_path / "bytes", NullReporter(), chunk_size=200_000)
    split_gguf(model, tmp_path / "gguf", NullReporter(), shard_size=60_000)
    out = tmp_path / "out"
    args = {"split-gguf": ["split", model, "--format", "gguf", "--shard-size", "60000", "--out", out],
            "split-bytes": ["split", model, "--chunk-size", "200000", "--out", out],
            "assemble": ["assemble", tmp_path / "bytes" / "m.gguf.manifest.json", "--out", out / "m.gguf"],
            "rebuild": ["assemble", tmp_path / "gguf" / "m.gguf.manifest.json", "--out", out / "m.gguf"]}[command]

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run([str(TEADIST_BIN), *map(str, args)], preexec_fn=limit, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr  # the fault happened
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    # assemble and a rebuild from GGUF shards keep their partial on a failed write: a re-run resumes it
    resumable = (".m.gguf.assemble.", ".m.gguf.rebuild.")
    clean = [n for n in left if "tmp." in n or (n.endswith(".part") and not n.startswith(resumable))] == []
    campaign("write error (EFBIG)", command, clean and "Traceback" not in proc.stderr, 0)
    assert clean, left
    assert "Traceback" not in proc.stderr
