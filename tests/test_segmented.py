"""Hostile cases for a segmented fetch's writer threads and shared buffers, against a real
loopback server: what a failed, restarted or cut fetch leaves behind."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.sources.download import Downloader
from teadist.sources.http import RetryPolicy
from tests.helpers import write_random
from tests.servers import Fault, MirrorServer

KIB = 1024
MIB = 1024 * 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_still_running_when_a_fetch_fails_give_their_buffers_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight connections to a far host, each write slow (20 ms): one answer brings another ETag
    (the file changed) while the other connections' writers are inside their writes. The fetch
    restarts and completes; every buffer of the host's shared pool is free again afterwards —
    none handed to a hasher that had already stopped."""
    import teadist.sources.segmented as segmented
    from teadist.base.fsutil import PwriteSink

    class SlowWrite(PwriteSink):
        def __call__(self, view: memoryview) -> None:
            time.sleep(0.02)
            super().__call__(view)

    monkeypatch.setattr(segmented, "PwriteSink", SlowWrite)
    served = tmp_path / "served"
    served.mkdir()
    source = served / "m.bin"
    write_random(source, 24 * MIB, seed=72)
    with MirrorServer(served) as server:
        server.prepare("m.bin")
        server.delay = 0.05  # a far host: eight connections at once
        server.add_fault(Fault("etag", skip=5))
        downloader = Downloader(NullReporter(), cap=8, align=512 * KIB, policy=RetryPolicy(backoff=0.05))
        dest = tmp_path / "out" / "m.bin"
        downloader.fetch(server.url_for("m.bin"), dest, source.stat().st_size, sha(source))
        assert "etag" in server.applied_kinds()
        assert sha(dest) == sha(source)
        pool = segmented._lane_pool(downloader.scheduler.lanes()[0])
        assert len(pool.free) == pool.made, f"{pool.made - len(pool.free)} of {pool.made} buffers never came back"
