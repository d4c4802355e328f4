"""Hostile cases for a segmented fetch's writer threads and shared buffers, against a real
loopback server: what a failed, restarted or cut fetch leaves behind."""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.sources.download import Downloader
from teadist.sources.http import RetryPolicy
from tests.conftest import mounted_tmpfs
from tests.helpers import sha, write_random
from tests.servers import Fault, MirrorServer

KIB = 1024
MIB = 1024 * 1024


def _slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every write of a segmented fetch's writers waits ``seconds`` first: writes lag the network."""
    import teadist.sources.segmented as segmented
    from teadist.base.fsutil import PwriteSink

    class SlowWrite(PwriteSink):
        def __call__(self, view: memoryview) -> None:
            time.sleep(seconds)
            super().__call__(view)

    monkeypatch.setattr(segmented, "PwriteSink", SlowWrite)


def test_writes_still_running_when_a_fetch_fails_give_their_buffers_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight connections to a far host, each write slow (20 ms): one answer brings another ETag
    (the file changed) while the other connections' writers are inside their writes. The fetch
    restarts and completes; every buffer of the host's shared pool is free again afterwards —
    none handed to a hasher that had already stopped."""
    import teadist.sources.segmented as segmented

    _slow_writes(monkeypatch, 0.02)
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


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs (the 4 MiB file fits, then something else fills it); skipped where mounting is
    refused."""
    yield from mounted_tmpfs(tmp_path, "6m")


def test_a_disk_filling_up_under_the_writers_is_one_clear_error(disk: Path, tmp_path: Path) -> None:
    """Ranges on four connections; while the server holds one answer, something else fills the
    disk: the writer threads meet ENOSPC. The fetch fails as "disk full" (a DiskSpaceError, not an
    OSError from a thread), leaves no partial or sidecar, and no writer thread behind."""
    from teadist.errors import DiskSpaceError

    served = tmp_path / "served"
    served.mkdir()
    source = served / "m.bin"
    write_random(source, 4 * MIB, seed=73)
    out = disk / "out"
    release = threading.Event()
    with MirrorServer(served) as server:
        server.prepare("m.bin")
        server.delay = 0.05  # a far host: several connections at once
        server.add_fault(Fault("pause", after=64 * KIB, seconds=20, release=release, skip=1))
        downloader = Downloader(NullReporter(), cap=4, align=256 * KIB, policy=RetryPolicy(backoff=0.05))
        failure: list[BaseException] = []

        def fetch() -> None:
            try:
                downloader.fetch(server.url_for("m.bin"), out / "m.bin", source.stat().st_size, sha(source))
            except BaseException as exc:  # checked below
                failure.append(exc)

        worker = threading.Thread(target=fetch)
        worker.start()
        deadline = time.monotonic() + 20
        while "pause" not in server.applied_kinds() and time.monotonic() < deadline:
            time.sleep(0.01)
        filled = False
        try:
            with open(disk / "filler", "wb") as filler:  # every byte that is left
                while True:
                    filler.write(bytes(64 * KIB))
                    filler.flush()
        except OSError as exc:
            filled = exc.errno == errno.ENOSPC
        release.set()
        worker.join(60)
        assert filled, "the disk never filled"
        assert not worker.is_alive(), "the fetch hung on a full disk"
    assert len(failure) == 1 and isinstance(failure[0], DiskSpaceError), failure
    assert "disk full" in str(failure[0])
    assert not [p.name for p in out.iterdir()] if out.exists() else True
    assert not [t for t in threading.enumerate() if t.name in ("write", "hash") and t.is_alive()]


def test_a_writer_thread_that_cannot_start_fails_the_fetch_instead_of_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second connection's writer thread cannot start (as when the process may not start
    another thread): the fetch fails with that error within seconds — it does not wait forever for
    a connection that never counted itself out — and every slot of the host's lane comes back."""
    started = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "write":
            started.append(self.name)
            if len(started) == 2:
                raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    served = tmp_path / "served"
    served.mkdir()
    source = served / "m.bin"
    write_random(source, 8 * MIB, seed=74)
    with MirrorServer(served) as server:
        server.prepare("m.bin")
        server.delay = 0.05  # a far host: several connections at once
        downloader = Downloader(NullReporter(), cap=4, align=256 * KIB, policy=RetryPolicy(backoff=0.05))
        failure: list[BaseException] = []

        def fetch() -> None:
            try:
                downloader.fetch(server.url_for("m.bin"), tmp_path / "out" / "m.bin", source.stat().st_size,
                                 sha(source))
            except BaseException as exc:  # checked below
                failure.append(exc)

        worker = threading.Thread(target=fetch, daemon=True)
        real_start(worker)
        worker.join(20)
        assert len(started) >= 2  # the fault happened: the second writer did not start
        assert not worker.is_alive(), "the fetch hung after a writer thread failed to start"
    assert len(failure) == 1 and "can't start new thread" in str(failure[0]), failure
    assert downloader.scheduler.lanes()[0].active == 0


_KILLED_FETCH = """
import sys, time
from pathlib import Path
import teadist.sources.segmented as segmented
from teadist.base.fsutil import PwriteSink
from teadist.base.progress import NullReporter
from teadist.sources.download import Downloader
from teadist.sources.http import RetryPolicy

class SlowWrite(PwriteSink):  # writes lag the network: every writer holds buffers when the kill comes
    def __call__(self, view):
        time.sleep(0.01)
        super().__call__(view)

segmented.PwriteSink = SlowWrite
url, dest, size, digest = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
Downloader(NullReporter(), cap=4, align=256 * 1024, policy=RetryPolicy(backoff=0.05)).fetch(url, dest, size, digest)
"""


@pytest.mark.parametrize("kill_after", [1 * MIB, 3 * MIB, 6 * MIB])
def test_a_killed_fetch_never_claims_a_byte_its_writers_had_not_written(kill_after: int, tmp_path: Path) -> None:
    """A fetch on four connections whose writes lag (every writer holds buffers) is SIGKILLed once
    its sidecar claims ``kill_after`` bytes: every byte the sidecar claims is in the partial, equal
    to the source's; the resume then completes and verifies."""
    import json
    import os
    import signal
    import sys

    from teadist.base.workfiles import WorkFiles

    served = tmp_path / "served"
    served.mkdir()
    source = served / "m.bin"
    data = write_random(source, 12 * MIB, seed=75)
    dest = tmp_path / "out" / "m.bin"
    files = WorkFiles.beside(dest)
    partial = files.partial(sha(source))
    sidecar = files.sidecar(partial)

    def claimed() -> list[list[int]]:
        try:
            return list(json.loads(sidecar.read_bytes()).get("segments") or [])
        except (OSError, ValueError):
            return []

    with MirrorServer(served) as server:
        server.prepare("m.bin")
        server.delay = 0.05  # a far host: several connections at once
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_FETCH, server.url_for("m.bin"), str(dest),
                                 str(len(data)), sha(source)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if sum(done - start for start, _, done in claimed()) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert proc.wait(30) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        segments = claimed()
        assert len(segments) > 1  # several ranges were under way
        with open(partial, "rb") as fh:
            for start, _, done in segments:
                fh.seek(start)
                assert fh.read(done - start) == data[start:done], f"claimed but not written: {start}-{done}"
        downloader = Downloader(NullReporter(), cap=4, align=256 * KIB, policy=RetryPolicy(backoff=0.05))
        downloader.fetch(server.url_for("m.bin"), dest, len(data), sha(source))
    assert sha(dest) == sha(source)
    assert not os.path.exists(partial) and not os.path.exists(sidecar)


def test_answers_whose_length_is_short_of_their_range_never_pass_as_the_file(tmp_path: Path) -> None:
    """206 answers whose Content-Length is 100 kB short of the Content-Range they send in full, on
    a kept-alive connection (the rest of each body is still on its way when the declared length is
    read): a few such answers cost retries and the file still verifies; a server answering every
    range so fails with one clear error after its attempts — never a hang, never a file."""
    from teadist.errors import SourceError

    served = tmp_path / "served"
    served.mkdir()
    source = served / "m.bin"
    write_random(source, 6 * MIB, seed=76)
    with MirrorServer(served) as server:
        server.prepare("m.bin")
        server.add_fault(Fault("short_length", after=100_000, times=3))
        downloader = Downloader(NullReporter(), cap=4, align=256 * KIB, policy=RetryPolicy(backoff=0.01))
        dest = tmp_path / "out" / "m.bin"
        downloader.fetch(server.url_for("m.bin"), dest, source.stat().st_size, sha(source))
        assert server.applied_kinds().count("short_length") == 3
        assert sha(dest) == sha(source)
        server.add_fault(Fault("short_length", after=100_000, times=10_000))
        other = tmp_path / "again" / "m.bin"
        with pytest.raises(SourceError, match="gave up after"):
            Downloader(NullReporter(), cap=4, align=256 * KIB,
                       policy=RetryPolicy(backoff=0.01)).fetch(server.url_for("m.bin"), other,
                                                               source.stat().st_size, sha(source))
        assert not other.exists()


def test_many_files_at_once_with_lagging_writers_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twelve files at once on one host (a chunked manifest's chunks), eight connections, each write
    slow (10 ms): the writers hold most of the host's shared buffers at any time. Every file lands
    and verifies within the minute — no connection waits forever for a buffer a writer holds — and
    afterwards every buffer is back in the pool and no writer thread is left."""
    import teadist.sources.segmented as segmented

    _slow_writes(monkeypatch, 0.01)
    served = tmp_path / "served"
    served.mkdir()
    names = [f"c{k}.bin" for k in range(12)]
    for k, name in enumerate(names):
        write_random(served / name, 2 * MIB + 1000 * k, seed=80 + k)
    with MirrorServer(served) as server:
        for name in names:
            server.prepare(name)
        server.delay = 0.05  # a far host: eight connections at once
        downloader = Downloader(NullReporter(), cap=8, align=256 * KIB, policy=RetryPolicy(backoff=0.05))
        errors: list[BaseException] = []

        def get(name: str) -> None:
            try:
                size = (served / name).stat().st_size
                downloader.fetch(server.url_for(name), tmp_path / "out" / name, size, sha(served / name))
            except BaseException as exc:  # checked below
                errors.append(exc)

        threads = [threading.Thread(target=get, args=(name,), daemon=True) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not [t for t in threads if t.is_alive()], "a fetch hung"
        assert not errors, errors
        assert server.concurrency() > 1  # the files did share the host's connections
        pool = segmented._lane_pool(downloader.scheduler.lanes()[0])
        assert len(pool.free) == pool.made
    for name in names:
        assert sha(tmp_path / "out" / name) == sha(served / name)
    assert not [t for t in threading.enumerate() if t.name in ("write", "hash") and t.is_alive()]
