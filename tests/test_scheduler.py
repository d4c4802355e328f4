"""The scheduler against a paced loopback link: how many connections, where ranges are cut, one
pool for every shape. Each test reads the server's own log (Range, arrival, end, status)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from teadist.sources.download import Downloader
from teadist.sources.http import RetryPolicy
from teadist.sources.scheduler import split_point
from tests.helpers import Result, write_random
from tests.servers import Fault, GitHubServer, MirrorServer

KIB = 1024
MIB = 1024 * 1024


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(r: str | None) -> int:
    assert r is not None
    return int(r.removeprefix("bytes=").split("-")[0])


def _end(r: str | None) -> int:
    assert r is not None
    return int(r.removeprefix("bytes=").split("-")[1]) + 1


@pytest.fixture
def served(tmp_path: Path) -> Path:
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


def _fetch(server: MirrorServer, source: Path, tmp_path: Path, **kwargs: object
           ) -> tuple[float, NullReporter, Downloader]:
    reporter = NullReporter()
    options: dict[str, Any] = {"align": 256 * KIB, "policy": RetryPolicy(backoff=0.05), **kwargs}
    downloader = Downloader(reporter, **options)
    dest = tmp_path / "out" / source.name
    server.prepare(source.name)  # the first answer's delay is the link's, not the server's hashing
    began = time.monotonic()
    downloader.fetch(server.url_for(source.name), dest, source.stat().st_size, sha(source))
    elapsed = time.monotonic() - began
    assert sha(dest) == sha(source)
    assert not [p for p in dest.parent.iterdir() if p != dest]  # no partial, no sidecar left
    return elapsed, reporter, downloader


def test_connections_grow_while_throughput_grows_and_stop_at_the_cap(served: Path, tmp_path: Path) -> None:
    """Every connection adds 2 MB/s: the lane starts with 8, doubles while the sum keeps growing,
    and the server never sees more than the cap (16)."""
    source = served / "model.bin"
    write_random(source, 24 * MIB, seed=1)
    with MirrorServer(served) as server:
        server.pace = 2_000_000
        _, _, downloader = _fetch(server, source, tmp_path, cap=16, align=512 * KIB)
        gets = server.file_gets()
        first = gets[0].at
        assert server.concurrency(until=first + 0.15) <= 8  # a few to start with
        assert 8 < server.concurrency() <= 16  # grown past the start, never past the cap
        assert downloader.scheduler.lanes()[0].stats.limit == 16  # the lane reached the cap
        grown = next(r.at for r in gets if server.concurrency(until=r.at) > 8)
        assert grown - first >= 0.2  # the growth came after a measured window, not at once
        assert all(r.status == 206 for r in gets)


@pytest.mark.parametrize(("delay", "at_once"), [(0.06, 8), (0.0, 1)])
def test_a_far_host_starts_with_eight_connections_a_near_one_with_one(delay: float, at_once: int, served: Path,
                                                                       tmp_path: Path) -> None:
    """The first answer's delay decides the start: 60 ms away, one TCP stream carries little, so
    eight ranges go out at once (as aria2 -x8 does); on a near host one connection starts and
    more come only after a measured window."""
    source = served / "model.bin"
    write_random(source, 8 * MIB, seed=6)
    with MirrorServer(served) as server:
        server.pace, server.delay = 2_000_000, delay
        _fetch(server, source, tmp_path, cap=16, align=128 * KIB)
        first = server.file_gets()[0].at
        assert server.concurrency(until=first + delay + 0.18) == at_once  # before any window ended


def test_connections_stop_growing_when_throughput_stops_growing(served: Path, tmp_path: Path) -> None:
    """A link of 4 MB/s in all, 1 MB/s a connection: the step from 8 to 16 connections brings
    nothing, so the lane stays at 16 and never tries the cap of 32."""
    source = served / "model.bin"
    write_random(source, 12 * MIB, seed=2)
    with MirrorServer(served) as server:
        server.pace, server.total_pace = 1_000_000, 4_000_000
        _fetch(server, source, tmp_path, cap=32, align=256 * KIB)
        assert 8 <= server.concurrency() <= 16


def test_a_429_brings_the_connections_down(served: Path, tmp_path: Path) -> None:
    """The server refuses (429) more than 3 requests at once: after the first refusal the lane
    comes down to what was still being served and stays there."""
    source = served / "model.bin"
    write_random(source, 8 * MIB, seed=3)
    with MirrorServer(served) as server:
        server.pace, server.delay, server.max_in_flight = 2_000_000, 0.06, 3  # far: 8 ranges at once
        _, reporter, _ = _fetch(server, source, tmp_path, cap=16)
        gets = server.file_gets()
        refused = [r for r in gets if r.status == 429]
        assert refused, "the server never refused: the test proves nothing"
        assert server.peak_in_flight >= 4  # it asked for more than the server allows
        assert server.concurrency(since=refused[-1].ended or 0) <= 3  # and came down after
        assert len(refused) <= 8  # at most the first round of connections, once
        assert any("down to" in m for m in reporter.messages), reporter.messages


def test_a_server_without_ranges_gets_one_stream(served: Path, tmp_path: Path) -> None:
    source = served / "model.bin"
    write_random(source, 4 * MIB, seed=4)
    with MirrorServer(served) as server:
        server.pace = 8_000_000
        server.add_fault(Fault("ignore_range", times=100))
        _, reporter, _ = _fetch(server, source, tmp_path, cap=16)
        gets = server.file_gets()
        assert [r.status for r in gets] == [200]  # one request, answered whole, read whole
        assert server.bytes_sent == source.stat().st_size
        assert any("one stream" in m for m in reporter.messages)


def test_a_lagging_range_is_split_for_a_free_connection(served: Path, tmp_path: Path) -> None:
    """The first cut of the file lands on a connection at 100 KB/s (alone it would need ~20 s for
    its 2 MiB); free connections take the rest of it in block-aligned pieces, so the file is
    done in a fraction of that. The server's log shows the re-split: a request starting inside
    the slow one's range, at a block boundary."""
    source = served / "model.bin"
    write_random(source, 4 * MIB, seed=5)
    with MirrorServer(served) as server:
        server.pace = 8_000_000
        server.add_fault(Fault("slow", pace=100_000, skip=1))  # the whole-file request passes
        elapsed, _, _ = _fetch(server, source, tmp_path, jobs=2, align=64 * KIB)
        slow = server.applied[0]
        assert slow.kind == "slow" and slow.range is not None and _start(slow.range) > 0
        inside = [r.range for r in server.file_gets() if r.range and _start(slow.range) < _start(r.range)
                  < _end(slow.range)]
        assert inside, [r.range for r in server.file_gets()]
        assert all(_start(r) % (64 * KIB) == 0 for r in inside)
        assert elapsed < 6


def test_chunks_share_one_pool_of_keep_alive_connections(tiny_model: Path, tmp_path: Path, models_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         cli: Callable[..., Result]) -> None:
    """Four chunks of 128 KiB, each cut into 16 KiB blocks, with --jobs 3: never more than three
    requests at once for all of them together (one pool per host, not three per chunk), and the
    requests reuse a handful of keep-alive connections."""
    monkeypatch.setenv("TEADIST_RANGE_ALIGN", "16384")
    dist = tmp_path / "dist"
    split_file(tiny_model, dist, NullReporter(), chunk_size=128 * 1024)
    with MirrorServer(dist) as server:
        server.pace = 300_000
        result = cli("fetch", server.url_for("tiny-llama.gguf.manifest.json"), "--jobs", "3")
        assert result.code == 0, result.err
        gets = server.file_gets()
        assert len(gets) > 4  # chunks were cut into ranges
        assert server.concurrency() == 3
        assert server.connections < len(server.requests)  # keep-alive: connections reused
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)


def test_a_github_asset_api_url_in_a_manifest_fetches_the_bytes(tiny_model: Path, tmp_path: Path,
                                                                models_dir: Path,
                                                                cli: Callable[..., Result]) -> None:
    """``…/releases/assets/ID`` answers JSON unless asked for application/octet-stream; a chunk
    whose URL list holds one gets the bytes (through the redirect to the CDN)."""
    dist = tmp_path / "dist"
    split_file(tiny_model, dist, NullReporter(), chunk_size=200_000)
    manifest_path = dist / "tiny-llama.gguf.manifest.json"
    data = json.loads(manifest_path.read_text())
    with GitHubServer() as github:
        assert isinstance(github, GitHubServer)
        release = github.add_release("v1", draft=False)
        for chunk in data["chunks"]:
            asset = github.add_asset(release, chunk["name"], (dist / chunk["name"]).read_bytes())
            chunk["urls"] = [github.asset_json(asset)["url"]]
            os.remove(dist / chunk["name"])  # only the release has the bytes
        manifest_path.write_text(json.dumps(data))
        result = cli("fetch", manifest_path)
        assert result.code == 0, result.err
        assert github.downloads == len(data["chunks"])
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)


@pytest.mark.parametrize(("start", "live", "end", "align", "margin", "near", "expected"), [
    (0, 0, 100, 10, 0, None, 50),  # the middle, on a boundary
    (0, 0, 95, 10, 0, None, 50),  # 47 is nearer to 50 than to 40
    (0, 90, 100, 10, 0, None, None),  # no boundary left inside
    (0, 0, 100, 10, 60, None, 60),  # the middle is too close to the running connection
    (0, 0, 100, 10, 95, None, None),
    (40, 40, 100, 10, 0, None, 70),
    (0, 0, 10, 16, 0, None, None),  # smaller than a block: never cut
    (0, 0, 1000, 10, 0, 20, 20),  # near: the running connection keeps two blocks, not half
    (0, 33, 1000, 10, 0, 20, 50),
    (0, 33, 1000, 10, 30, 20, 70),  # ... but never closer than the margin
    (0, 0, 36, 10, 0, 30, 20),  # the middle (18) comes first
])
def test_split_point_is_a_block_boundary_ahead_of_the_running_connection(
        start: int, live: int, end: int, align: int, margin: int, near: int | None, expected: int | None) -> None:
    assert split_point(start, live, end, align, margin, near) == expected
