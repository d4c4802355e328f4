"""`teadist serve`: only verified bytes, never hidden files, 4xx for hostile requests, flat memory,
bounded threads, timeouts, IPv6, and a warning when the folder is reachable from the network.

Every test runs the installed console script and talks HTTP to it over loopback."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from tests.conftest import TEADIST_BIN
from tests.helpers import write_random


@contextmanager
def serving(folder: Path, *args: str | Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen([str(TEADIST_BIN), "serve", str(folder), "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        assert url.startswith("http://"), proc.stderr.read() if proc.stderr and proc.poll() is not None else url
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(10)


def request(url: str, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int | str, bytes]:
    """(status, body) — or ("dropped", b"") when the server hangs up without an answer,
    ("cut", partial body) when it stops mid-body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        try:
            return response.status, response.read()
        except http.client.IncompleteRead as exc:
            return "cut", exc.partial
    except (http.client.RemoteDisconnected, ConnectionError):
        return "dropped", b""
    finally:
        conn.close()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """site/model/: a file split into 3 chunks + its manifest (the --verify manifest)."""
    root = tmp_path / "site"
    src = tmp_path / "src" / "m.bin"
    src.parent.mkdir()
    write_random(src, 300_000, seed=5)
    result = split_file(src, root / "model", NullReporter(), chunk_size=100_000, name="m")
    (root / "index.html").write_text("<!doctype html>hi\n")
    return root, result.manifest_path, [c.name for c in result.manifest.chunks]


def _serves_only_good_bytes(status: int | str, body: bytes, good: bytes) -> bool:
    return status in (404, 409, "cut", "dropped") or (status == 200 and body == good)


@pytest.mark.parametrize("case", ["symlink-to-unlisted", "swapped-after-check", "edited-in-place"])
def test_verify_serves_only_the_bytes_it_checked(case: str, site: tuple[Path, Path, list[str]]) -> None:
    root, manifest, chunks = site
    victim = root / "model" / chunks[1]
    good = victim.read_bytes()
    bad = bytes(b ^ 0x5A for b in good)
    if case == "symlink-to-unlisted":
        (root / "model" / "evil.bin").write_bytes(bad)
        victim.unlink()
        victim.symlink_to("evil.bin")
    with serving(root, "--verify", manifest) as (url, _):
        assert request(url, f"/model/{chunks[0]}")[0] == 200
        if case != "symlink-to-unlisted":
            assert request(url, f"/model/{chunks[1]}") == (200, good)  # checked and cached
            st = victim.stat()
            if case == "swapped-after-check":
                fresh = victim.with_name("fresh")
                fresh.write_bytes(bad)
                os.replace(fresh, victim)
            else:
                with open(victim, "r+b") as fh:
                    fh.seek(1234)
                    fh.write(bytes([good[1234] ^ 0xFF]))
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
        for headers in ({}, {"Range": "bytes=0-99"}):
            status, body = request(url, f"/model/{chunks[1]}", headers)
            want = good if not headers else good[:100]
            assert _serves_only_good_bytes(status if status != 206 else 200, body, want), \
                f"served {len(body)} unverified bytes with {status}"


def test_hidden_files_are_never_served_also_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / ".private").mkdir(parents=True)
    (root / ".private" / "key").write_text("SECRET")
    (root / ".env").write_text("TOKEN=SECRET")
    (root / "public.txt").symlink_to(".env")
    (root / "shared").symlink_to(".private")
    (root / "ok.txt").write_text("fine")
    with serving(root) as (url, _):
        assert request(url, "/ok.txt") == (200, b"fine")
        for path in ("/public.txt", "/shared/key", "/.env", "/%2eenv"):
            status, body = request(url, path)
            assert status == 404 and b"SECRET" not in body, (path, status)


@pytest.mark.parametrize("case", ["symlink-loop", "long-segment", "huge-range", "nul-byte", "two-ranges"])
def test_hostile_requests_get_a_4xx_and_the_server_stays_up(case: str, tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (root / "loop").symlink_to("loop")
    path, headers = {
        "symlink-loop": ("/loop", {}),
        "long-segment": ("/" + "a" * 300, {}),
        "huge-range": ("/ok.txt", {"Range": "bytes=" + "9" * 4400 + "-"}),
        "nul-byte": ("/ok%00.txt", {}),
        "two-ranges": ("/ok.txt", {"Range": "bytes=0-0,2-2"}),
    }[case]
    with serving(root) as (url, _):
        status, _ = request(url, path, headers)
        if case == "two-ranges":  # may be ignored (RFC 9110 allows it) but must be answered
            assert status in (200, 416)
        else:
            assert isinstance(status, int) and 400 <= status < 500, status
        assert request(url, "/ok.txt") == (200, b"fine")


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


def test_memory_stays_flat_over_2000_requests_with_large_headers(site: tuple[Path, Path, list[str]]) -> None:
    root, _, chunks = site
    big = {"X-Padding": "p" * 60_000}
    with serving(root) as (url, proc):
        parts = urlsplit(url)

        def burst(n: int) -> None:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
            for _ in range(n):
                conn.request("HEAD", f"/model/{chunks[0]}", headers=big)
                response = conn.getresponse()
                response.read()
                assert response.status == 200
            conn.close()

        burst(200)  # warm up: allocator arenas, imports, caches
        before = _proc_status(proc.pid, "VmRSS")
        for _ in range(20):
            burst(100)
        grown = _proc_status(proc.pid, "VmRSS") - before
    assert grown < 16_000, f"serve grew by {grown} kB over 2,000 requests with 60 kB headers"


def _half_sent(url: str, n: int) -> list[socket.socket]:
    parts = urlsplit(url)
    socks = []
    for _ in range(n):
        s = socket.create_connection((parts.hostname or "", parts.port or 0), timeout=10)
        s.sendall(b"GET /ok.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        socks.append(s)
    return socks


def test_idle_half_sent_requests_use_a_bounded_pool(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root) as (url, proc):
        baseline = _proc_status(proc.pid, "Threads")
        socks = _half_sent(url, 80)
        time.sleep(1.0)
        threads = _proc_status(proc.pid, "Threads")
        for s in socks:
            s.close()
    assert threads - baseline <= 40, f"{threads - baseline} threads for 80 idle connections"


def test_idle_half_sent_requests_are_timed_out(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--timeout", "1") as (url, _):
        socks = _half_sent(url, 40)  # more than the pool: some wait to be accepted
        start = time.monotonic()
        assert request(url, "/ok.txt") == (200, b"fine")  # served once the idle ones time out
        waited = time.monotonic() - start
        closed = 0
        for s in socks:
            s.settimeout(10)
            try:
                closed += s.recv(1024) is not None
            except OSError:
                closed += 1
            s.close()
    assert closed == 40 and waited < 15


def test_ipv6_host(tmp_path: Path) -> None:
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--host", "::1") as (url, _):
        assert url.startswith("http://[::1]:")
        assert request(url, "/ok.txt") == (200, b"fine")


def test_binding_beyond_loopback_warns_that_the_folder_is_public(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--host", "0.0.0.0") as (url, proc):
        port = urlsplit(url).port
        assert request(f"http://127.0.0.1:{port}", "/ok.txt") == (200, b"fine")
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "warning:" in err and "network" in err
    with serving(root) as (_, quiet):
        pass
    assert quiet.stderr is not None and "warning" not in quiet.stderr.read()


def test_the_package_holds_no_test_fakes() -> None:
    import teadist

    package = Path(teadist.__file__).parent
    assert not (package / "loopback.py").exists()
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "loopback import" not in text and "from tests" not in text, source


def test_a_request_trickled_byte_by_byte_is_cut_off(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--timeout", "1") as (url, _):
        [s] = _half_sent(url, 1)
        start = time.monotonic()
        cut = False
        while time.monotonic() - start < 8:
            try:
                s.sendall(b"a")  # each byte well within the socket timeout
                s.settimeout(0.3)
                if s.recv(1024) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = True
                break
        s.close()
        assert cut, "a trickling client held a worker for 8 s"
        assert time.monotonic() - start < 4
        assert request(url, "/ok.txt") == (200, b"fine")
