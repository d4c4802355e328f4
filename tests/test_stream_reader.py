"""The reader every download reads its body through (``sources.http.StreamReader``), against a
real loopback server: what it hands back is the body, byte for byte, whichever way it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import urllib3

from teadist.sources.http import ReadFailed, StreamReader
from tests.helpers import write_random
from tests.servers import Fault, MirrorServer


def _read_all(reader: StreamReader, size: int = 1 << 20) -> bytes:
    buf = bytearray(size)
    out = bytearray()
    while n := reader.readinto(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def test_a_body_of_known_length_goes_straight_into_the_callers_buffer(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3's read1 makes a new bytes object for every read (an allocation and one more copy of
    every byte): a body with a Content-Length is read without it, into the buffer given."""
    data = write_random(tmp_path / "m.bin", 3 * 2**20 + 7, seed=3)

    def no_read1(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("read1 copied the body through a bytes object")

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", no_read1)
    with MirrorServer(tmp_path) as server, requests.get(server.url_for("m.bin"), stream=True, timeout=10) as resp:
        assert isinstance(server, MirrorServer)
        assert resp.headers["Content-Length"] == str(len(data))
        assert _read_all(StreamReader(resp.raw)) == data


def test_a_body_read_to_its_end_gives_the_connection_back(tmp_path: Path) -> None:
    """Three requests in a row on one session: the server sees one connection (keep-alive), as
    when urllib3 reads the body itself."""
    data = write_random(tmp_path / "m.bin", 600_000, seed=6)
    with MirrorServer(tmp_path) as server, requests.Session() as session:
        assert isinstance(server, MirrorServer)
        for _ in range(3):
            with session.get(server.url_for("m.bin"), stream=True, timeout=10) as resp:
                assert _read_all(StreamReader(resp.raw)) == data
        assert len(server.requests) == 3
        assert server.connections == 1


def test_a_ranged_body_is_exactly_its_range(tmp_path: Path) -> None:
    data = write_random(tmp_path / "m.bin", 2 * 2**20, seed=4)
    with MirrorServer(tmp_path) as server, requests.get(server.url_for("m.bin"), stream=True, timeout=10,
                                                       headers={"Range": "bytes=1000-1500999"}) as resp:
        assert isinstance(server, MirrorServer)
        assert resp.status_code == 206
        assert _read_all(StreamReader(resp.raw), 4096) == data[1000:1501000]


def test_a_body_cut_short_gives_its_bytes_then_fails(tmp_path: Path) -> None:
    """The server closes after 100,000 of 2 MiB (its log shows the cut): the bytes that came are
    handed back, then the next read fails naming a closed connection — never a quiet end."""
    data = write_random(tmp_path / "m.bin", 2 * 2**20, seed=5)
    with MirrorServer(tmp_path) as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault("truncate", after=100_000, path="m.bin"))
        with requests.get(server.url_for("m.bin"), stream=True, timeout=10) as resp:
            reader = StreamReader(resp.raw)
            buf = bytearray(1 << 20)
            got = bytearray()
            with pytest.raises(ReadFailed, match="closed before the transfer ended"):
                while True:
                    n = reader.readinto(memoryview(buf))
                    got += buf[:n]
                    assert n, "the body ended quietly, short of its Content-Length"
        assert server.applied_kinds() == ["truncate"]
    assert bytes(got) == data[:100_000]
