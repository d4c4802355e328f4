"""`teadist serve`: only verified bytes, never hidden files, 4xx for hostile requests, flat memory,
bounded threads, timeouts, IPv6, and a warning when the folder is reachable from the network.

Every test runs the installed console script and talks HTTP to it over loopback."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from tests.conftest import TEADIST_BIN
from tests.helpers import Result, write_random


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


# -- review 11b ------------------------------------------------------------------------------------
def _raw(url: str, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``wait`` passes)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionError):
            pass
    return got


@pytest.mark.parametrize("how", ["folder", "link-to-folder", "fifo"])
def test_a_listed_name_that_is_a_folder_is_refused_never_its_index(how: str,
                                                                  site: tuple[Path, Path, list[str]]) -> None:
    """11b #1: a listed chunk (and the assembled name) replaced by a folder holding an index.html of
    the listed size: startup says REFUSED, a GET never answers 200 with the folder's page."""
    import re

    root, manifest, chunks = site
    model = root / "model"
    victim = model / chunks[1]
    size = victim.stat().st_size
    victim.unlink()
    pages = model / ("evil" if how != "folder" else chunks[1])
    pages.mkdir()
    (pages / "index.html").write_bytes(b"EVIL" * (size // 4))
    if how == "link-to-folder":
        victim.symlink_to("evil")
    elif how == "fifo":
        os.mkfifo(victim)
    (model / "m.bin").mkdir()  # the assembled name is listed too (file.sha256)
    (model / "m.bin" / "index.html").write_bytes(b"<h1>not the model</h1>")
    with serving(root, "--verify", manifest) as (url, proc):
        for name in (chunks[1], "m.bin"):
            status, body = request(url, f"/model/{name}")
            assert status in (404, 409) and b"EVIL" not in body and b"not the model" not in body, (name, status)
            status, body = request(url, f"/model/{name}", {"Range": "bytes=0-99"})
            assert status in (404, 409) and b"EVIL" not in body and b"not the model" not in body, (name, status)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert re.search(rf"^REFUSED\s+model/{re.escape(chunks[1])}$", err, re.M), err


def test_range_answers_carry_only_verified_bytes_after_an_in_place_edit(tmp_path: Path) -> None:
    """11b #2: a chunk edited through a shared mmap keeps (dev, ino, size, mtime, ctime) — writes into
    an already dirty MAP_SHARED page update no timestamp — so its identity vouches for nothing."""
    import hashlib
    import mmap

    src = tmp_path / "t.bin"
    write_random(src, 1_500_000, seed=11)
    result = split_file(src, tmp_path / "web", NullReporter(), chunk_size=1_000_000, name="t")
    chunk = result.manifest.chunks[0]
    path = tmp_path / "web" / chunk.name
    good = path.read_bytes()
    fd = os.open(path, os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    try:
        mapped[0:1] = mapped[0:1]  # dirty the first page: its timestamps are set now, content unchanged
        with serving(tmp_path / "web", "--verify", result.manifest_path) as (url, _):
            assert request(url, f"/{chunk.name}", method="HEAD")[0] == 200  # checked: verdict cached
            before = os.stat(path)
            mapped[0:8] = b"EVILEVIL"
            after = os.stat(path)
            identity = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
            assert [getattr(before, k) for k in identity] == [getattr(after, k) for k in identity], \
                "the kernel updated a timestamp: the in-place edit this test needs did not happen"
            assert hashlib.sha256(path.read_bytes()).hexdigest() != chunk.sha256
            for start, rng in ((0, "bytes=0-524287"), (524_288, "bytes=524288-"), (0, "bytes=0-127998")):
                status, body = request(url, f"/{chunk.name}", {"Range": rng})
                assert status in ("cut", "dropped", 409) or (status == 206 and body == good[start:start + len(body)]), \
                    f"{rng}: {status} with {len(body)} bytes the manifest does not describe ({body[:8]!r})"
            status, body = request(url, f"/{chunk.name}")
            assert status in ("cut", "dropped", 409) or (status == 200 and body == good)
    finally:
        mapped.close()
        os.close(fd)


def test_keep_alive_connections_cannot_hold_every_worker(tmp_path: Path) -> None:
    """11b #6: 16 connections sending a request every second hold all 16 workers; a new client must
    still be answered within seconds, not when they stop."""
    import threading

    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--timeout", "10") as (url, _):
        parts = urlsplit(url)
        stop = time.monotonic() + 20
        answered = []

        def hog() -> None:
            with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=15) as s:
                while time.monotonic() < stop:
                    try:
                        s.sendall(b"HEAD /ok.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        if not s.recv(4096):
                            return  # the server let go of this connection
                    except OSError:
                        return
                    answered.append(1)
                    time.sleep(1)

        hogs = [threading.Thread(target=hog, daemon=True) for _ in range(16)]
        for h in hogs:
            h.start()
        time.sleep(1.5)
        assert len(answered) >= 16  # every hog holds a worker
        start = time.monotonic()
        status, body = request(url, "/ok.txt")
        waited = time.monotonic() - start
        for h in hogs:
            h.join(25)
    assert (status, body) == (200, b"fine")
    assert waited < 6, f"a new client waited {waited:.1f} s for a worker"


def test_a_malformed_absolute_target_gets_a_400(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root) as (url, proc):
        for _ in range(3):
            answer = _raw(url, b"GET http://[x/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400")
            assert b"\r\nConnection: close\r\n" in answer  # a malformed request ends its connection
        assert request(url, "/ok.txt") == (200, b"fine")
    assert proc.stderr is not None and "warning" not in proc.stderr.read()


def test_http_0_9_is_not_answered_with_a_bare_body(tmp_path: Path) -> None:
    """11b #9: an HTTP/0.9 answer has no status line and no length: a cut one looks complete."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine and long enough to recognise")
    with serving(root) as (url, _):
        got = _raw(url, b"GET /ok.txt\r\n\r\n")
    assert not got.startswith(b"fine") and b"fine and long" not in got
    assert got == b"" or got.startswith(b"HTTP/1.")


@pytest.mark.parametrize("value", ["1e-300", "0.0001"])
def test_a_tiny_timeout_is_a_usage_error(value: str, tmp_path: Path) -> None:
    """11b #10: --timeout 1e-300 made the deadline reaper spin."""
    root = tmp_path / "site"
    root.mkdir()
    proc = subprocess.Popen([str(TEADIST_BIN), "serve", str(root), "--port", "0", "--timeout", value],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"serve --timeout {value} started serving") from None
    assert code == 2 and proc.stderr is not None and "--timeout" in proc.stderr.read()


@pytest.mark.parametrize(("host", "allowed"), [("attacker.example", False), ("127.0.0.1.nip.io", False),
                                               ("localhost", True), ("127.0.0.1", True), ("LOCALHOST.", True)])
def test_a_loopback_server_answers_only_loopback_host_names(host: str, allowed: bool, tmp_path: Path) -> None:
    """11b #11: DNS rebinding — a page on attacker.example whose name now resolves to 127.0.0.1."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root) as (url, _):
        port = urlsplit(url).port
        status, body = request(url, "/ok.txt", {"Host": f"{host}:{port}"})
    if allowed:
        assert (status, body) == (200, b"fine")
    else:
        assert status in (400, 403, 421) and body != b"fine"


def test_a_public_bind_takes_any_host_name(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--host", "0.0.0.0") as (url, _):
        port = urlsplit(url).port
        assert request(f"http://127.0.0.1:{port}", "/ok.txt", {"Host": "my-laptop.lan"}) == (200, b"fine")


def test_a_get_with_a_body_is_never_read_as_a_second_request(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_text("A")
    (root / "b.txt").write_text("B")
    inner = b"GET /b.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with serving(root) as (url, _):
        got = _raw(url, b"GET /a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
    assert got.count(b"HTTP/1.1 ") == 1, got


def test_verify_with_a_fifo_as_the_manifest_does_not_hang(tmp_path: Path, console: Callable[..., Result]) -> None:
    root = tmp_path / "site"
    root.mkdir()
    os.mkfifo(tmp_path / "m.json")
    result = console("serve", root, "--port", "0", "--verify", tmp_path / "m.json", timeout=20)
    assert result.code != 0 and "m.json" in result.err and "Traceback" not in result.err


def test_ipv4_mapped_loopback_is_loopback(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::ffff:127.0.0.1", 0))
    except OSError:
        pytest.skip("no IPv4-mapped IPv6 bind here")
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root, "--host", "::ffff:127.0.0.1") as (_, proc):
        pass
    assert proc.stderr is not None and "warning" not in proc.stderr.read()


def test_a_range_end_beyond_the_file_is_clamped_whatever_its_length(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with serving(root) as (url, _):
        assert request(url, "/ok.txt", {"Range": "bytes=1-" + "9" * 25}) == (206, b"ine")


def test_clients_that_never_read_cannot_hold_every_worker(tmp_path: Path) -> None:
    """11b #6, slow readers: 16 clients ask for a big file and read nothing, so every worker is stuck
    in a send; a new client must still be answered within seconds, not after --timeout."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    with open(root / "big.bin", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    with serving(root, "--timeout", "30") as (url, _):
        parts = urlsplit(url)
        hogs = []
        for _ in range(16):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((parts.hostname or "", parts.port or 0))
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            hogs.append(s)
        time.sleep(1.5)
        start = time.monotonic()
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=40)
        try:
            conn.request("GET", "/ok.txt")
            response = conn.getresponse()
            answer = (response.status, response.read())
        finally:
            conn.close()
            for s in hogs:
                s.close()
        waited = time.monotonic() - start
    assert answer == (200, b"fine")
    assert waited < 12, f"a new client waited {waited:.1f} s while 16 clients read nothing"


# -- issue 13: the browser module under /_teadist/, and --cors for a model origin ------------------
def answer(url: str, path: str, headers: dict[str, str] | None = None,
           method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_the_browser_model_cache_is_served_under_teadist(tmp_path: Path) -> None:
    from teadist.web import asset_files

    root = tmp_path / "site"
    root.mkdir()
    (root / "_teadist").mkdir()  # the prefix is teadist's: a folder of that name is not served there
    (root / "_teadist" / "model-cache.js").write_text("export const impostor = 1;\n")
    assets = asset_files()
    with serving(root) as (url, _):
        got = {rel: answer(url, f"/_teadist/{rel}") for rel in assets}
        folder = answer(url, "/_teadist/examples/")
        ranged = answer(url, "/_teadist/model-cache.js", {"Range": "bytes=3-9"})
        head = answer(url, "/_teadist/model-cache.js", method="HEAD")
        refused = [answer(url, p)[0] for p in (
            "/_teadist/__init__.py", "/_teadist/", "/_teadist/examples/../__init__.py",
            "/_teadist/%2e%2e/web/__init__.py", "/_teadist/.hidden", "/_teadist/model-cache.js/x")]
    types = {"model-cache.js": "text/javascript", "model-cache.d.ts": "text/plain; charset=utf-8",
             "examples/index.html": "text/html; charset=utf-8"}
    for rel, (status, headers, body) in got.items():
        assert status == 200 and body == assets[rel].read_bytes(), rel
        assert headers["content-type"] == types[rel], rel
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert folder[0] == 200 and folder[2] == assets["examples/index.html"].read_bytes()
    assert ranged[0] == 206 and ranged[2] == assets["model-cache.js"].read_bytes()[3:10]
    assert head[0] == 200 and int(head[1]["content-length"]) == assets["model-cache.js"].stat().st_size
    assert refused == [404] * len(refused)


def test_cors_is_off_unless_asked_and_then_answers_preflights(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "shard.gguf").write_bytes(b"GGUF" + bytes(range(200)))
    (root / ".secret").write_text("hidden")
    preflight = {"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "range"}
    with serving(root) as (url, plain):
        closed = answer(url, "/shard.gguf", {"Origin": "http://127.0.0.1:1"})
        closed_preflight = answer(url, "/shard.gguf", preflight, method="OPTIONS")
    with serving(root, "--cors") as (url, open_):
        port = urlsplit(url).port
        got = answer(url, "/shard.gguf", {"Origin": "http://127.0.0.1:1", "Range": "bytes=4-9"})
        missing = answer(url, "/nothing.gguf", {"Origin": "http://127.0.0.1:1"})
        hidden = answer(url, "/.secret", {"Origin": "http://127.0.0.1:1"})
        asked = answer(url, "/shard.gguf", preflight, method="OPTIONS")
        rebound = answer(url, "/shard.gguf", {"Host": f"attacker.example:{port}"})
        rebound_preflight = answer(url, "/shard.gguf", {**preflight, "Host": f"attacker.example:{port}"},
                                   method="OPTIONS")
        posted = answer(url, "/shard.gguf", method="POST")
    assert "access-control-allow-origin" not in closed[1] and closed[1]["cross-origin-resource-policy"] == "same-origin"
    assert closed_preflight[0] == 405 and "access-control-allow-origin" not in closed_preflight[1]
    status, headers, body = got
    assert status == 206 and body == bytes(range(200))[:6]
    assert headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-length"} <= exposed
    assert headers["cross-origin-resource-policy"] == "cross-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"  # still isolated as a page origin
    assert missing[0] == 404 and missing[1]["access-control-allow-origin"] == "*"  # errors readable too
    assert hidden[0] == 404 and hidden[2] != b"hidden"
    status, headers, body = asked
    assert status == 204 and body == b"" and headers["access-control-allow-origin"] == "*"
    assert {m.strip() for m in headers["access-control-allow-methods"].split(",")} == {"GET", "HEAD", "OPTIONS"}
    assert "range" in headers["access-control-allow-headers"].lower()
    assert rebound[0] == 403 and rebound_preflight[0] == 403  # DNS rebinding is still refused
    assert posted[0] == 405
    assert plain.stderr is not None and "warning" not in plain.stderr.read()
    assert open_.stderr is not None
    err = open_.stderr.read()
    assert "warning:" in err and "--cors" in err and "any web page" in err


def test_web_assets_installed_through_links_are_served(tmp_path: Path) -> None:
    """Some installs hold package files through links: the asset is resolved once, then opened."""
    from teadist.pipelines.serve import StaticServer

    real = tmp_path / "store" / "model-cache.js"
    real.parent.mkdir()
    real.write_text("export const real = 1;\n")
    installed = tmp_path / "site-packages" / "model-cache.js"
    installed.parent.mkdir()
    installed.symlink_to(real)
    root = tmp_path / "site"
    root.mkdir()
    with StaticServer(root, assets={"model-cache.js": installed}) as server:
        assert answer(server.url, "/_teadist/model-cache.js")[::2] == (200, b"export const real = 1;\n")
