"""Disk full: a small tmpfs as the cache. A clear error naming the free space needed, the partial
removed, the previous cache intact."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _partials(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".part", ".part.json"))]


def test_full_cache_keeps_the_previous_model(small_disk: Path, tmp_path: Path, cli: Callable[..., Result],
                                             campaign: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = small_disk / "models"
    old = make_tiny_model(tmp_path / "old" / "old.gguf", seed=1)  # ~0.5 MB
    split_file(old, tmp_path / "old-dist", NullReporter(), chunk_size=200_000)
    assert cli("assemble", tmp_path / "old-dist" / "old.gguf.manifest.json", "--cache-dir", cache).code == 0
    big = make_tiny_model(tmp_path / "big" / "big.gguf", seed=2, n_embd=256, n_layer=4)  # ~4 MB > free
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


def test_disk_filling_up_mid_write_is_a_clear_error(small_disk: Path, tmp_path: Path, cli: Callable[..., Result],
                                                    campaign: Callable[..., None]) -> None:
    """The free-space check passes, then something else fills the disk: ENOSPC mid-write."""
    src = tmp_path / "m.bin"
    src.write_bytes(bytes(2_000_000))
    filler = small_disk / "filler"
    # leave room for the check (2 MB) but not for the temp file plus the filler growing meanwhile
    result_holder: list[Result] = []
    import threading

    def fill() -> None:
        with open(filler, "wb") as fh:
            try:
                for _ in range(40):
                    fh.write(bytes(100_000))
                    fh.flush()
            except OSError:
                pass

    thread = threading.Thread(target=fill)
    thread.start()
    result_holder.append(cli("split", src, "--out", small_disk / "out", "-s", "500000"))
    thread.join()
    result = result_holder[0]
    clean = (not _partials(small_disk) and not (small_disk / "out" / "m.bin.manifest.json").exists()) \
        or result.code == 0
    ok = result.code == 0 or (result.code == 1 and ("disk full" in result.err or "free" in result.err))
    campaign("disk full (3 MB tmpfs)", "disk fills during split", ok and clean, 0)
    assert ok, result.err
    assert clean
