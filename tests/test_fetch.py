from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.formats.manifest import FileRecord, HfSource, Manifest, UrlSource, dump_manifest
from teadist.pipelines.split import split_file
from tests.conftest import SECRET, TEADIST_BIN
from tests.helpers import Result, files_in, sha
from tests.servers import Fault, HubServer, MirrorServer

HF_SPEC = "hf://org/repo/tiny.gguf"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def assert_cache_clean(models_dir: Path, expected_sha: str | None) -> None:
    """Either the verified file or nothing at the final path; never a corrupt model."""
    final = models_dir / "tiny.gguf"
    if final.exists():
        assert expected_sha is not None and sha(final) == expected_sha
    assert not [p for p in files_in(models_dir) if p.endswith(".gguf") and p != "tiny.gguf"]


# -- the Hub ------------------------------------------------------------------------------------
def test_fetch_from_hub_installs_verified_file(hub: HubServer, mirror: MirrorServer, served: Path,
                                               models_dir: Path, cli: Callable[..., Result]) -> None:
    result = cli("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert result.out.strip() == str(models_dir / "tiny.gguf")
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    record = json.loads((models_dir / ".teadist" / "records" / "tiny.gguf.json").read_text())
    assert record["sha256"] == sha(served / "tiny.gguf") and record["source"] == HF_SPEC
    # the download was pinned to the resolved commit
    assert any(f"/resolve/{'c' * 40}/tiny.gguf" in r.path for r in hub.requests)
    assert mirror.bytes_sent == (served / "tiny.gguf").stat().st_size
    again = cli("fetch", HF_SPEC, "--json")
    assert json.loads(again.out)["already_present"] is True
    assert mirror.bytes_sent == (served / "tiny.gguf").stat().st_size  # nothing downloaded again
    assert_no_secret(result.out, result.err, again.out, again.err)


@pytest.mark.parametrize(("spec", "message"), [
    ("hf://org/repo/missing.gguf", "file not found on the Hub"),
    ("hf://org/nope/tiny.gguf", "repository not found"),
    ("hf://org/repo/tiny.gguf@v9", "revision not found"),
    ("hf://org/tiny.gguf", "invalid Hub path"),
    # the revision goes into the URL as a segment: '..' (removed before sending) made this org/repo's tiny.gguf
    ("hf://org/repo/resolve/main/tiny.gguf@..", "invalid Hub path"),
    ("hf://org/repo/tiny.gguf@.", "invalid Hub path"),
])
def test_hub_errors_are_clear(hub: HubServer, spec: str, message: str, cli: Callable[..., Result]) -> None:
    result = cli("fetch", spec)
    assert result.code in (1, 2)
    assert message in result.err.lower() or message in result.err
    assert "Traceback" not in result.err


def test_unpinned_entry_takes_sha256_from_the_hub(hub: HubServer, served: Path, tmp_path: Path,
                                                  models_dir: Path, cli: Callable[..., Result]) -> None:
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", None, None), format="single",
                        sources=[HfSource("org/repo", "tiny.gguf", endpoint=hub.url)])
    path = tmp_path / "tiny.manifest.json"
    path.write_bytes(dump_manifest(manifest))
    result = cli("fetch", path, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["sha256"] == sha(served / "tiny.gguf")


@pytest.mark.parametrize(("path", "revision"), [
    ("../../../../other/repo/resolve/main/tiny.gguf", None),  # every HTTP client removes dot segments
    ("./../../../other/repo/resolve/main/tiny.gguf", None),
    ("tiny.gguf", ".."),
])
def test_a_manifest_hub_path_with_dot_segments_is_refused(path: str, revision: str | None, hub: HubServer,
                                                          served: Path, tmp_path: Path, models_dir: Path,
                                                          cli: Callable[..., Result]) -> None:
    """A manifest's Hub source org/repo with the path '../../../../other/repo/resolve/main/tiny.gguf'
    was fetched from other/repo (requests removes the dot segments before sending), installed and
    recorded as org/repo's file: refused, as hf://ORG/REPO/FILE already refuses such a path."""
    hub.add_repo("other/repo", {"tiny.gguf": served / "tiny.gguf"}, commit="d" * 40)
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", None, None), format="single",
                        sources=[HfSource("org/repo", "tiny.gguf", "main", endpoint=hub.url)])
    data = manifest.to_dict()  # (dump_manifest itself refuses such a source now)
    data["sources"][0].update({"path": path, "revision": revision or "main"})
    (tmp_path / "m.manifest.json").write_text(json.dumps(data))
    result = cli("fetch", tmp_path / "m.manifest.json")
    other = [r.path for r in hub.requests if "other/repo" in r.path]
    assert result.code != 0 and other == [], f"fetched through {other}: {result.err}"
    assert "Traceback" not in result.err and ("segment" in result.err or "not a revision" in result.err), result.err
    assert hub.requests == [] and not (models_dir / "tiny.gguf").exists()


def test_hub_resolve_itself_refuses_dot_segments(hub: HubServer, served: Path) -> None:
    """The resolver builds the URL: a Hub source that reached it without the manifest's checks (repair
    reads repo and path from a cache record an older teadist wrote) is refused there too."""
    from teadist.errors import SourceError
    from teadist.sources import hub as hub_module

    hub.add_repo("other/repo", {"tiny.gguf": served / "tiny.gguf"}, commit="d" * 40)
    with pytest.raises(SourceError, match="segment"):
        hub_module.resolve(HfSource("org/repo", "../../../../other/repo/resolve/main/tiny.gguf"), hub.url, None, 5.0)
    assert hub.requests == []


def test_hub_lying_about_sha256_is_caught(mirror: MirrorServer, served: Path, monkeypatch: pytest.MonkeyPatch,
                                          fast_retries: None, models_dir: Path, cli: Callable[..., Result]) -> None:
    with HubServer(cdn=mirror, lie_sha256=True) as liar:
        assert isinstance(liar, HubServer)
        liar.add_repo("org/repo", {"tiny.gguf": served / "tiny.gguf"})
        monkeypatch.setenv("HF_ENDPOINT", liar.url)
        result = cli("fetch", HF_SPEC)
    assert result.code == 3 and "sha256 mismatch" in result.err
    assert_cache_clean(models_dir, None)
    assert not (models_dir / "tiny.gguf").exists()


# -- the fault matrix ---------------------------------------------------------------------------
RECOVERABLE = [
    Fault("truncate", after=100_000),
    Fault("reset", after=50_000),
    Fault("status", status=500),
    Fault("status", status=503, times=2),
    Fault("status", status=429, retry_after=0.2),
    Fault("stall", after=10_000, seconds=4),
    Fault("wrong_length"),
    Fault("ignore_range"),
]


@pytest.mark.parametrize("fault", RECOVERABLE, ids=lambda f: f"{f.kind}-{f.status if f.kind == 'status' else f.after}")
@pytest.mark.parametrize("server", ["hub-cdn", "hub-direct"])
def test_hub_fault_ends_in_verified_file(fault: Fault, server: str, hub: HubServer, mirror: MirrorServer,
                                         served: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    if server == "hub-direct":
        hub.cdn = None
        hub.add_fault(fault)
    else:
        mirror.add_fault(fault)
    result = cli("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    if fault.kind != "ignore_range":
        assert "retrying" in result.err or "restarting" in result.err or fault.kind == "wrong_length"
    assert_no_secret(result.err)


def test_persistent_corruption_is_refused_and_leaves_nothing(hub: HubServer, mirror: MirrorServer,
                                                             models_dir: Path, cli: Callable[..., Result]) -> None:
    mirror.add_fault(Fault("corrupt", offset=1234, times=100))
    result = cli("fetch", HF_SPEC)
    assert result.code == 3
    assert "sha256 mismatch" in result.err
    assert not (models_dir / "tiny.gguf").exists()
    assert not [p for p in models_dir.rglob("*") if p.name.endswith(".part")]


def test_persistent_500_gives_up_with_a_clear_error(hub: HubServer, mirror: MirrorServer,
                                                   monkeypatch: pytest.MonkeyPatch, models_dir: Path,
                                                   cli: Callable[..., Result]) -> None:
    monkeypatch.setenv("TEADIST_RETRIES", "3")
    mirror.add_fault(Fault("status", status=502, times=100))
    result = cli("fetch", HF_SPEC)
    assert result.code == 1
    assert "HTTP 502" in result.err and "gave up after 3 attempts" in result.err
    assert not (models_dir / "tiny.gguf").exists()


def test_different_file_after_resume_restarts_cleanly(hub: HubServer, mirror: MirrorServer, served: Path,
                                                      tmp_path: Path, models_dir: Path,
                                                      cli: Callable[..., Result]) -> None:
    """The partial came from one file; the server now has another (new ETag): don't splice them."""
    from teadist.sources.download import Downloader
    from teadist.sources.partial import partial_path_for

    other = tmp_path / "other.gguf"
    other.write_bytes(os.urandom((served / "tiny.gguf").stat().st_size))
    dest = models_dir / "tiny.gguf"
    dest.parent.mkdir(parents=True)
    mirror.swapped["tiny.gguf"] = other
    mirror.add_fault(Fault("truncate", after=200_000))
    downloader = Downloader(NullReporter())
    with pytest.raises(Exception):  # noqa: B017 - the truncated first attempt, retries off
        from teadist.sources.http import RetryPolicy

        Downloader(NullReporter(), RetryPolicy(attempts=1)).fetch(mirror.url_for("tiny.gguf"), dest,
                                                                  None, sha(served / "tiny.gguf"))
    partial = partial_path_for(dest, sha(served / "tiny.gguf"))
    assert partial.stat().st_size == 200_000
    del mirror.swapped["tiny.gguf"]  # the server now serves the real file: another ETag
    digest, _ = downloader.fetch(mirror.url_for("tiny.gguf"), dest, None, sha(served / "tiny.gguf"))
    assert digest == sha(served / "tiny.gguf") == sha(dest)
    assert mirror.requests[-1].headers.get("Range") is None  # restarted from zero


# -- sources and fallback -----------------------------------------------------------------------
def test_sources_fall_back_in_order(hub: HubServer, mirror: MirrorServer, served: Path, tmp_path: Path,
                                    models_dir: Path, cli: Callable[..., Result]) -> None:
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", (served / "tiny.gguf").stat().st_size,
                                                     sha(served / "tiny.gguf")), format="single",
                        sources=[UrlSource(mirror.url_for("gone.gguf")), HfSource("org/repo", "tiny.gguf")])
    path = tmp_path / "m.manifest.json"
    path.write_bytes(dump_manifest(manifest))
    result = cli("fetch", path)
    assert result.code == 0, result.err
    assert "failed" in result.err and "trying the next source" in result.err
    forced = cli("rm", "tiny")
    assert forced.code == 0
    only_url = cli("fetch", path, "--source", "1")
    assert only_url.code == 1 and "404" in only_url.err


# -- chunked manifests ----------------------------------------------------------------------------
def test_fetch_chunked_manifest_by_url_in_parallel(tiny_model: Path, tmp_path: Path, fast_retries: None,
                                                   models_dir: Path, cli: Callable[..., Result]) -> None:
    dist = tmp_path / "dist"
    split_file(tiny_model, dist, NullReporter(), chunk_size=64 * 1024)
    with MirrorServer(dist) as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault("reset", after=1000, path="part-00003-of-00008"))
        server.add_fault(Fault("corrupt", offset=7, path="part-00005-of-00008"))
        result = cli("fetch", server.url_for("tiny-llama.gguf.manifest.json"), "--jobs", "3")
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)
    staging = models_dir / ".teadist" / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_fetch_local_manifest_assembles_from_its_folder(tiny_model: Path, tmp_path: Path, models_dir: Path,
                                                        cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    result = cli("fetch", tmp_path / "dist" / "tiny-llama.gguf.manifest.json")
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)


@pytest.mark.parametrize("shape", ["single", "chunks", "shards", "kept shards"])
def test_source_n_means_the_same_for_every_shape(shape: str, tiny_model: Path, tmp_path: Path, fast_retries: None,
                                                 cli: Callable[..., Result]) -> None:
    """`--source N` uses only the Nth source of each file, whatever the manifest's shape: two mirrors
    hold the same pieces; each server's own log shows which one was asked."""
    import shutil

    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with MirrorServer(a_dir) as a, MirrorServer(b_dir) as b:
        assert isinstance(a, MirrorServer) and isinstance(b, MirrorServer)
        if shape == "single":
            a_dir.mkdir()
            shutil.copy(tiny_model, a_dir / tiny_model.name)
            manifest = Manifest(name="tiny", file=FileRecord(tiny_model.name, tiny_model.stat().st_size,
                                                             sha(tiny_model)), format="single",
                                sources=[UrlSource(b.url_for(tiny_model.name)), UrlSource(a.url_for(tiny_model.name))])
            (a_dir / "m.manifest.json").write_bytes(dump_manifest(manifest))
            manifest_name, pieces = "m.manifest.json", [tiny_model.name]
        elif shape == "chunks":  # each chunk lists B's URL; the manifest's own folder (A) comes second
            split = split_file(tiny_model, a_dir, NullReporter(), chunk_size=100_000, base_url=b.url)
            manifest_name, pieces = split.manifest_path.name, [c.name for c in split.manifest.chunks]
        else:
            src = make_tiny_model(tmp_path / "src" / "m.gguf", seed=2, n_embd=96, n_layer=3)
            shards = split_gguf(src, a_dir, NullReporter(), shard_size=150_000, base_url=b.url)
            manifest_name, pieces = shards.manifest_path.name, [c.name for c in shards.manifest.chunks]
        shutil.copytree(a_dir, b_dir)
        url = a.url_for(manifest_name)
        extra = ["--keep-shards"] if shape == "kept shards" else []

        def asked(server: MirrorServer) -> set[str]:
            return {r.path.lstrip("/") for r in server.file_gets() if r.path.lstrip("/") in pieces}

        first = cli("fetch", url, "--source", "1", *extra)
        assert first.code == 0, first.err
        assert asked(b) == set(pieces) and asked(a) == set()  # source 1: B's URLs only
        removed = cli("rm", Path(first.out.strip()).name)
        assert removed.code == 0, removed.err
        a.requests.clear()
        b.requests.clear()
        second = cli("fetch", url, "--source", "2", *extra)
        assert second.code == 0, second.err
        assert asked(a) == set(pieces), second.err  # source 2: A's only
        assert asked(b) == set(), f"--source 2 asked the first source for {sorted(asked(b))}"
        beyond = cli("fetch", url, "--source", "3", *extra)
    assert beyond.code == 2 and "2 sources" in beyond.err, beyond.err


def test_source_n_of_a_local_manifest_counts_its_folder_first(tiny_model: Path, tmp_path: Path, fast_retries: None,
                                                               cli: Callable[..., Result]) -> None:
    """A local manifest's chunks: source 1 is the manifest's own folder (no request), 2 the chunk's URL."""
    import shutil

    with MirrorServer(tmp_path / "mirror") as server:
        assert isinstance(server, MirrorServer)
        split = split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000, base_url=server.url)
        shutil.copytree(tmp_path / "dist", tmp_path / "mirror")
        first = cli("fetch", split.manifest_path, "--source", "1")
        assert first.code == 0, first.err
        assert server.file_gets() == []
        assert cli("rm", "tiny-llama.gguf").code == 0
        second = cli("fetch", split.manifest_path, "--source", "2")
        assert second.code == 0, second.err
        assert {r.path.lstrip("/") for r in server.file_gets()} == {c.name for c in split.manifest.chunks}
        beyond = cli("fetch", split.manifest_path, "--source", "3")
    assert beyond.code == 2 and "2 sources (the manifest's folder, then its URLs)" in beyond.err, beyond.err


@pytest.mark.parametrize("number", ["\u00b2", "\u0662", "\uff11"])
def test_source_that_only_looks_like_a_number_is_a_usage_error(number: str, tiny_model: Path, tmp_path: Path,
                                                                cli: Callable[..., Result]) -> None:
    """'²' passes str.isdigit but not int(); '٢' and '１' pass both but are no index a user typed as such:
    --source N is ASCII digits, anything else a usage error naming it (no traceback, no request)."""
    with MirrorServer(tmp_path / "mirror") as server:
        assert isinstance(server, MirrorServer)
        split = split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000, base_url=server.url)
        result = cli("fetch", split.manifest_path, "--source", number)
    assert result.code == 2 and "Traceback" not in result.err and "--source" in result.err, result.err
    assert server.file_gets() == []


# -- kill, concurrency, offline -------------------------------------------------------------------
def test_sigkill_mid_download_then_rerun_resumes(hub: HubServer, mirror: MirrorServer, served: Path,
                                                 models_dir: Path, console: Callable[..., Result]) -> None:
    size = (served / "tiny.gguf").stat().st_size
    mirror.add_fault(Fault("stall", after=size // 2, seconds=30))
    proc = subprocess.Popen([str(TEADIST_BIN), "fetch", HF_SPEC, "-q"], env=os.environ.copy())
    deadline = time.monotonic() + 30
    partials: list[Path] = []
    while time.monotonic() < deadline:
        partials = [p for p in models_dir.rglob("*.part") if p.stat().st_size >= size // 2]
        # the sidecar proves what was hashed (a block hash or the incomplete block's state): the
        # hasher may lag the writes on a loaded machine, and unproven bytes are rightly fetched again
        if partials and any('"tail"' in p.read_text() or '"blocks": ["' in p.read_text()
                            for p in models_dir.rglob("*.part.json")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # the kill happened (the run did not just finish)
    assert partials and not (models_dir / "tiny.gguf").exists()
    result = console("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert "resuming after" in result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    assert mirror.bytes_sent < 1.6 * size


def test_four_concurrent_fetches_download_once(hub: HubServer, mirror: MirrorServer, served: Path,
                                               models_dir: Path, console: Callable[..., Result]) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: console("fetch", HF_SPEC), range(4)))
    assert [r.code for r in results] == [0, 0, 0, 0], [r.err for r in results]
    assert {r.out.strip() for r in results} == {str(models_dir / "tiny.gguf")}
    gets = [r for r in mirror.requests if r.method == "GET"]
    assert len(gets) == 1
    assert mirror.bytes_sent == (served / "tiny.gguf").stat().st_size
    assert [p for p in files_in(models_dir) if p.endswith(".gguf")] == ["tiny.gguf"]


@pytest.mark.parametrize("how", [["--offline"], "TEA_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_uses_the_cache_only(how: list[str] | str, hub: HubServer, models_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Result]) -> None:
    flags = how if isinstance(how, list) else []
    if isinstance(how, str):
        monkeypatch.setenv(how, "1")
    missing = cli("fetch", HF_SPEC, *flags)
    assert missing.code == 1 and "offline" in missing.err and "tiny" in missing.err
    assert hub.requests == []
    monkeypatch.delenv("TEA_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cli("fetch", HF_SPEC).code == 0
    if isinstance(how, str):
        monkeypatch.setenv(how, "1")
    seen = len(hub.requests)
    cached = cli("fetch", HF_SPEC, *flags)
    assert cached.code == 0 and cached.out.strip() == str(models_dir / "tiny.gguf")
    assert len(hub.requests) == seen


def test_no_network_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, fast_retries: None,
                                     cli: Callable[..., Result]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = cli("fetch", HF_SPEC)
    assert result.code == 1
    assert result.err.splitlines()[-2].startswith("error: cannot reach the Hub"), result.err
    assert result.err.splitlines()[-1] == "hint: check the network, or use --offline for cached models"
    assert "Traceback" not in result.err


def test_an_unreachable_hub_is_retried_on_teadists_own_policy(monkeypatch: pytest.MonkeyPatch, fast_retries: None,
                                                              cli: Callable[..., Result]) -> None:
    """The Hub's metadata request follows TEADIST_RETRIES / TEADIST_RETRY_BACKOFF like every download,
    saying so as it goes — not huggingface_hub's own five silent retries over 23 s."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TEADIST_RETRIES", "3")
    began = time.monotonic()
    result = cli("fetch", HF_SPEC)
    took = time.monotonic() - began
    assert result.code == 1
    assert result.err.count("retrying in") == 2, result.err
    assert "connection refused (gave up after 3 attempts)" in result.err, result.err
    assert took < 10, f"{took:.1f} s: the 0.01 s backoff asked for was not the one used"


def test_the_hubs_retry_warnings_and_error_name_only_its_host(monkeypatch: pytest.MonkeyPatch, fast_retries: None,
                                                             cli: Callable[..., Result]) -> None:
    """An endpoint (a proxy) may carry a key in its path or query string: a warning per retry and the
    final error name the host and port only, as every other network message does."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/key-S3CRET1?sig=S3CRET2")
    monkeypatch.setenv("TEADIST_RETRIES", "3")
    result = cli("fetch", HF_SPEC)
    assert result.code == 1
    assert result.err.count("retrying in") == 2, result.err  # the refused connection was retried
    assert f"127.0.0.1:{port}" in result.err
    assert "S3CRET" not in result.err + result.out, result.err


def test_a_hub_sending_its_answer_one_byte_at_a_time_is_given_up(hub: HubServer, models_dir: Path) -> None:
    """The Hub's metadata request (huggingface_hub's client, whose timeouts are per read) against an
    endpoint answering one byte every 0.3 s — a manifest can name any endpoint — ends like a stalled
    one, within the stall timeout per attempt, instead of waiting for ever."""
    hub.trickle = 0.3
    code, err, took = _run_bounded(["fetch", HF_SPEC, "-q"],
                                   _env(models_dir, TEADIST_STALL_TIMEOUT="1.5", TEADIST_RETRIES="2",
                                        HF_ENDPOINT=hub.url), limit=60)
    assert "trickle_head" in hub.applied_kinds() and hub.bytes_sent > 5  # it trickled
    assert code is not None, f"fetch still waiting after {took:.0f} s for a Hub sending a byte every 0.3 s"
    assert code == 1, err
    assert "cannot reach the Hub" in err and "Traceback" not in err, err
    assert not (models_dir / "tiny.gguf").exists()


# -- secrets ----------------------------------------------------------------------------------------
def test_token_goes_only_to_its_origin(hub: HubServer, mirror: MirrorServer, served: Path,
                                       tmp_path: Path) -> None:
    """Auth is bound to the Hub's origin: the CDN redirect target (same host, other port) never sees it."""
    from teadist.sources.download import Downloader
    from teadist.sources.http import Auth, origin

    dest = tmp_path / "out" / "tiny.gguf"
    dest.parent.mkdir()
    url = f"{hub.url}/org/repo/resolve/main/tiny.gguf"
    Downloader(NullReporter()).fetch(url, dest, None, sha(served / "tiny.gguf"),
                                     auth=Auth(origin(hub.url), f"Bearer {SECRET}"))
    assert any(h.get("Authorization") == f"Bearer {SECRET}" for h in hub.headers_seen())
    assert mirror.requests and all("Authorization" not in h for h in mirror.headers_seen())


def test_token_never_reaches_a_non_hub_endpoint_or_output(hub: HubServer, mirror: MirrorServer,
                                                          console: Callable[..., Result]) -> None:
    mirror.add_fault(Fault("status", status=500))
    result = console("--debug", "fetch", HF_SPEC)
    assert result.code == 0
    for headers in hub.headers_seen() + mirror.headers_seen():
        assert_no_secret(json.dumps(headers))
    assert_no_secret(result.out, result.err)


# -- registry and cache care -----------------------------------------------------------------------
def test_registry_lists_and_resolves_tags(cli: Callable[..., Result]) -> None:
    from teadist.sources import registry

    assert registry.lookup("phi-4-mini").file.name == "microsoft_Phi-4-mini-instruct-Q3_K_S.gguf"
    assert registry.lookup("phi-4-mini:q4_k_m").file.name == "microsoft_Phi-4-mini-instruct-Q4_K_M.gguf"
    assert registry.lookup("gemma-3n-e4b").file.sha256 is None  # not known: never invented
    q3 = registry.lookup("phi-4-mini")
    assert q3.file.size == 1_897_332_096 and q3.file.size < 2 * 10**9
    listing = json.loads(cli("models", "--json").out)
    assert {row["name"] for row in listing["models"]} >= {"phi-4-mini:q3_k_s", "phi-4-mini:q4_k_m",
                                                          "gemma-3n-e4b:q4_k_m", "stories260k", "stories15m",
                                                          "qwen2.5-0.5b:q4_k_m"}
    unknown = cli("fetch", "no-such-model")
    assert unknown.code == 1 and "known models" in unknown.err


def test_prune_and_du(hub: HubServer, models_dir: Path, tiny_model: Path, tmp_path: Path,
                      cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "d", NullReporter(), chunk_size=100_000)
    assert cli("fetch", tmp_path / "d" / "tiny-llama.gguf.manifest.json").code == 0
    assert cli("fetch", HF_SPEC).code == 0
    stale = models_dir / ".old.gguf.0123456789abcdef.part"  # an older teadist's partial, with its sidecar
    stale.write_bytes(b"x" * 10)
    sidecar = stale.with_name(stale.name + ".json")
    sidecar.write_bytes(b'{"url_host": "huggingface.co", "etag": null}')
    usage = json.loads(cli("du", "--json").out)
    assert {m["file"] for m in usage["models"]} == {"tiny.gguf", "tiny-llama.gguf"}
    assert usage["partials"] == 10 + sidecar.stat().st_size and usage["free"] > 0
    assert cli("prune", "--partials").code == 0
    assert not stale.exists() and not sidecar.exists()
    # A use makes tiny-llama (fetched first) the most recently used, in the same second as the fetch of
    # tiny: the order of uses is kept finer than the second (no sleep), and a tie would evict
    # tiny-llama (the first name) — the wrong one.
    assert cli("path", "tiny-llama").code == 0
    size = (models_dir / "tiny-llama.gguf").stat().st_size
    result = cli("prune", "--max-size", str(size), "--json")
    assert json.loads(result.out)["removed"] == [str(models_dir / "tiny.gguf")]
    assert (models_dir / "tiny-llama.gguf").exists()
    assert cli("prune").code == 2


# -- large single files as parallel byte ranges ---------------------------------------------------
@pytest.fixture
def parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut ranges at 64 KiB blocks, so the tiny model can be fetched as parallel ranges."""
    monkeypatch.setenv("TEADIST_RANGE_ALIGN", "65536")


def _ranges(server: MirrorServer) -> list[str]:
    return [r.headers["Range"] for r in server.requests if r.method == "GET" and "Range" in r.headers]


def test_large_file_is_fetched_as_parallel_ranges(parallel: None, hub: HubServer, mirror: MirrorServer,
                                                  served: Path, models_dir: Path,
                                                  cli: Callable[..., Result]) -> None:
    """--jobs 4 fixes four connections: the first request (no probe) asks for two blocks, the
    others take the following blocks, each request on a block boundary."""
    size = (served / "tiny.gguf").stat().st_size
    mirror.pace = 500_000  # ~1 s for the file on one connection: time for the cuts to matter
    result = cli("fetch", HF_SPEC, "--jobs", "4")
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    ranges = [r.range for r in mirror.file_gets()]
    assert ranges[0] == f"bytes=0-{2 * 65536 - 1}"
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in ranges[1:] if r]
    assert starts and all(start % 65536 == 0 for start in starts)
    assert mirror.peak_in_flight == 4
    assert mirror.bytes_sent <= 1.1 * size  # (a lagging tail request may be cut: a few KiB twice)
    assert not [p for p in models_dir.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("fault", [Fault("reset", after=20_000, times=2), Fault("status", status=503, times=3),
                                   Fault("corrupt", offset=300_000), Fault("truncate", after=5_000)],
                         ids=lambda f: f.kind)
def test_parallel_ranges_survive_faults(fault: Fault, parallel: None, hub: HubServer, mirror: MirrorServer,
                                        served: Path, models_dir: Path, cli: Callable[..., Result]) -> None:
    mirror.add_fault(fault)
    result = cli("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")


def test_server_without_ranges_falls_back_to_one_stream(parallel: None, hub: HubServer, mirror: MirrorServer,
                                                        served: Path, models_dir: Path,
                                                        cli: Callable[..., Result]) -> None:
    mirror.add_fault(Fault("ignore_range", times=100))
    result = cli("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert "one stream" in result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")


def _proven(models_dir: Path) -> int:
    """Bytes the segmented partial's sidecar vouches for (what a resume may keep)."""
    for sidecar in models_dir.rglob("*.part.json"):
        with contextlib.suppress(ValueError, KeyError, OSError):
            return sum(done - start for start, _, done in json.loads(sidecar.read_text())["segments"])
    return 0


def _kill_mid_fetch(mirror: MirrorServer, models_dir: Path, least: int) -> int:
    """Run ``fetch --jobs 4`` in a subprocess while the server holds one of its ranges back (a pause
    before the first byte), SIGKILL it once ``least`` bytes are proven; the bytes its sidecar proves
    after the kill. (A paced server let every range finish within ~20 ms of the others: the poll
    could miss the window and find the file whole.)"""
    mirror.add_fault(Fault("pause", seconds=20, path="tiny.gguf", skip=1))
    proc = subprocess.Popen([str(TEADIST_BIN), "fetch", HF_SPEC, "--jobs", "4", "-q"], env=dict(os.environ))
    # all three, before the kill: a poll that saw the first range's bytes proven could kill the run
    # before its second range (the held one) reached the server (CI: assert [] == ['pause']), or before
    # a range ran beside it (assert 1 >= 2: the first range had ended when the held one came)
    assert _wait_for(lambda: _proven(models_dir) >= least and mirror.applied_kinds() == ["pause"]
                     and mirror.peak_in_flight >= 2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert [f.kind for f in mirror.applied] == ["pause"]  # the held range was still held at the kill
    assert _wait_for(lambda: mirror.in_flight == 0)  # the server has noticed: nothing more is counted
    return _proven(models_dir)


def test_parallel_ranges_resume_after_sigkill(parallel: None, hub: HubServer, mirror: MirrorServer, served: Path,
                                              models_dir: Path, console: Callable[..., Result]) -> None:
    """Killed mid-way: the re-run keeps only what the sidecar proves and fetches the rest (cut
    ranges may overlap by the few KiB in flight at a cut, nothing more)."""
    size = (served / "tiny.gguf").stat().st_size
    proven = _kill_mid_fetch(mirror, models_dir, 150_000)
    assert 150_000 <= proven < size and not (models_dir / "tiny.gguf").exists()
    first = mirror.bytes_sent
    result = console("fetch", HF_SPEC)
    assert result.code == 0, result.err
    assert "ranges after" in result.err and f"after {proven} bytes" in result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    assert size - proven <= mirror.bytes_sent - first <= size - proven + 64 * 1024


def test_retry_after_is_honoured(hub: HubServer, mirror: MirrorServer, served: Path, tmp_path: Path) -> None:
    from teadist.sources.download import Downloader

    delays: list[float] = []
    mirror.add_fault(Fault("status", status=429, retry_after=7))
    dest = tmp_path / "o" / "tiny.gguf"
    dest.parent.mkdir()
    Downloader(NullReporter(), sleep=delays.append).fetch(mirror.url_for("tiny.gguf"), dest, None,
                                                         sha(served / "tiny.gguf"))
    assert delays == [7.0]


def test_backoff_grows_with_jitter() -> None:
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    downloader = Downloader(NullReporter(), RetryPolicy(backoff=1.0, max_delay=30))
    for attempt in range(4):
        delay = downloader._delay(attempt, None)
        assert 0.5 * 2**attempt <= delay <= 1.5 * 2**attempt
    assert downloader._delay(10, None) <= 30


def test_range_ignored_on_resume_restarts_cleanly(mirror: MirrorServer, served: Path, tmp_path: Path) -> None:
    """A partial exists, the server answers 200 to the resume: one clean restart, no hash mismatch."""
    from teadist.sources.download import Downloader
    from teadist.sources.http import RetryPolicy

    reporter = NullReporter()
    mirror.add_fault(Fault("truncate", after=100_000))
    mirror.add_fault(Fault("ignore_range"))
    dest = tmp_path / "o" / "tiny.gguf"
    dest.parent.mkdir()
    Downloader(reporter, RetryPolicy(backoff=0.01)).fetch(mirror.url_for("tiny.gguf"), dest, None,
                                                          sha(served / "tiny.gguf"))
    assert sha(dest) == sha(served / "tiny.gguf")
    assert not [m for m in reporter.messages if "mismatch" in m], reporter.messages
    size = (served / "tiny.gguf").stat().st_size
    assert mirror.bytes_sent <= 100_000 + 2 * size


# -- issue 10 regressions ------------------------------------------------------------------------
def _file_sizes(folder: Path) -> list[tuple[str, int]]:
    """(name, size) of every file below ``folder`` now (files renamed meanwhile are left out)."""
    out = []
    for path in folder.rglob("*") if folder.exists() else []:
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                out.append((path.name, path.stat().st_size))
    return out


def _wait_for(condition: Callable[[], bool], limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _env(models_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "TEA_MODELS_DIR": str(models_dir), "TEADIST_RETRY_BACKOFF": "0.01", **extra}


def test_plain_and_keep_shards_fetch_at_once_share_no_bytes(tmp_path: Path, models_dir: Path) -> None:
    """Defect 1: `fetch M` and `fetch M --keep-shards` at the same time. The plain run is held
    mid-way through shard 1 by the server; the --keep-shards run completes meanwhile. Neither
    may write into the other's files: every installed file is exactly what the manifest says."""
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "src" / "m.gguf", seed=2, n_embd=96, n_layer=3)
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=150_000)
    first = result.manifest.chunks[0]
    with MirrorServer(tmp_path / "web") as server:
        assert isinstance(server, MirrorServer)
        # the plain run is held until the keep-shards run has finished (a fixed pause raced it)
        held = threading.Event()
        server.add_fault(Fault("pause", after=first.size // 2, seconds=120, path=first.name, release=held))
        url = server.url_for(result.manifest_path.name)
        plain = subprocess.Popen([str(TEADIST_BIN), "fetch", url, "--jobs", "1"],
                                 env=_env(models_dir, TEADIST_STALL_TIMEOUT="300"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: "pause" in server.applied_kinds()), "the server never held the plain fetch"
        # the plain run's partial of shard 1 is there (its first half may still sit in the client's buffer)
        work = models_dir / ".teadist" / "work"
        assert _wait_for(lambda: any(name.startswith(f".{first.name}.download.") and name.endswith(".part")
                                     for name, _ in _file_sizes(work))), "the held run has no partial"
        keep = subprocess.run([str(TEADIST_BIN), "fetch", url, "--keep-shards", "--jobs", "1"], env=_env(models_dir),
                              capture_output=True, text=True, timeout=120)
        overlapped = plain.poll() is None  # the keep-shards run finished while the plain one was held
        held.set()
        _, plain_err = plain.communicate(timeout=120)
    assert overlapped
    installed = {c.name: sha(models_dir / c.name) for c in result.manifest.chunks if (models_dir / c.name).exists()}
    assert installed == {c.name: c.sha256 for c in result.manifest.chunks}, "a kept shard is not the published one"
    assert keep.returncode == 0, keep.stderr
    assert plain.returncode == 0, plain_err
    assert sha(models_dir / src.name) == sha(src)
    verify = subprocess.run([str(TEADIST_BIN), "verify", "--json"], env=_env(models_dir), capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout


def test_same_file_name_from_another_repository_is_not_handed_out(hub: HubServer, mirror: MirrorServer,
                                                                  tmp_path: Path, models_dir: Path,
                                                                  cli: Callable[..., Result]) -> None:
    """Defect 3: the cache is not looked up by file name alone."""
    from teadist.formats.tinymodel import make_tiny_model

    hub.cdn = None
    other = make_tiny_model(tmp_path / "other" / "tiny.gguf", seed=99)
    hub.add_repo("other/repo", {"tiny.gguf": other}, commit="d" * 40)
    assert cli("fetch", HF_SPEC).code == 0
    offline = cli("fetch", "hf://other/repo/tiny.gguf", "--offline", "--json")
    assert offline.code != 0, "offline fetch handed out org/repo's file for other/repo"
    second = cli("fetch", "hf://other/repo/tiny.gguf", "--json")
    assert second.code == 0, second.err
    assert json.loads(second.out)["already_present"] is False
    assert sha(models_dir / "tiny.gguf") == sha(other)
    assert "replac" in second.err  # the user is told another model's file was replaced
    third = cli("fetch", "hf://other/repo/tiny.gguf", "--json")
    assert json.loads(third.out)["already_present"] is True


def test_prune_partials_leaves_a_running_fetch_alone(tiny_model: Path, tmp_path: Path, models_dir: Path) -> None:
    """Defect 4: `prune --partials` while a chunked fetch is held mid-chunk by the server."""
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=64 * 1024)
    work = models_dir / ".teadist" / "work" / "tiny-llama.gguf"
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        # held until prune has run (a fixed pause raced prune's start-up on a loaded machine)
        held = threading.Event()
        server.add_fault(Fault("pause", after=20_000, seconds=120, path="part-00003-of-00008", release=held))
        url = server.url_for("tiny-llama.gguf.manifest.json")
        fetching = subprocess.Popen([str(TEADIST_BIN), "fetch", url, "--jobs", "1", "-q"],
                                    env=_env(models_dir, TEADIST_STALL_TIMEOUT="300"),
                                    stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: "pause" in server.applied_kinds()), "the server never held the fetch"
        # what prune must leave alone is there: the two chunks before the held one, and its partial
        def in_flight() -> bool:
            files = _file_sizes(work)
            chunks = [n for name, n in files if name.startswith("tiny-llama.gguf.part-")]
            held_partial = [name for name, _ in files if name.startswith(".tiny-llama.gguf.part-00003-of-00008.")
                            and name.endswith(".part")]
            return chunks == [64 * 1024] * 2 and len(held_partial) == 1

        assert _wait_for(in_flight), "the held fetch has nothing in flight"
        prune = subprocess.run([str(TEADIST_BIN), "prune", "--partials", "--json"], env=_env(models_dir),
                               capture_output=True, text=True, timeout=120)
        during = fetching.poll() is None
        held.set()
        _, err = fetching.communicate(timeout=120)
        sent = server.bytes_sent
    assert during, "prune did not run while the fetch was held"
    assert prune.returncode == 0, prune.stderr
    assert json.loads(prune.stdout)["removed"] == []
    assert fetching.returncode == 0, err
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)
    assert sent <= tiny_model.stat().st_size + 64 * 1024  # nothing was downloaded twice


def test_token_follows_the_url_as_requests_sends_it(hub: HubServer, mirror: MirrorServer, served: Path,
                                                    tmp_path: Path) -> None:
    """Defect 5: urlsplit reads `http://127.0.0.1:MIRROR\\@127.0.0.1:HUB/…` as the Hub, requests
    connects to the mirror. The token must go to neither a crafted URL nor a redirect to one."""
    from teadist.errors import TeadistError
    from teadist.sources.download import Downloader
    from teadist.sources.http import Auth, RetryPolicy, origin

    hub.cdn = None
    mirror_port, hub_port = mirror.url.rsplit(":", 1)[1], hub.url.rsplit(":", 1)[1]
    crafted = f"http://127.0.0.1:{mirror_port}\\@127.0.0.1:{hub_port}/org/repo/resolve/main/tiny.gguf"
    auth = Auth(origin(hub.url), f"Bearer {SECRET}")
    downloader = Downloader(NullReporter(), RetryPolicy(attempts=1))
    dest = tmp_path / "out" / "tiny.gguf"
    dest.parent.mkdir()
    with contextlib.suppress(TeadistError):
        downloader.fetch(crafted, dest, None, sha(served / "tiny.gguf"), auth=auth)
    hub.add_fault(Fault("redirect", location=crafted))
    with contextlib.suppress(TeadistError):
        downloader.fetch(f"{hub.url}/org/repo/resolve/main/tiny.gguf", dest, None, sha(served / "tiny.gguf"),
                         auth=auth)
    assert hub.applied_kinds() == ["redirect"]
    assert all(SECRET not in json.dumps(h) for h in mirror.headers_seen())


def test_token_never_goes_over_plain_http_to_a_remote_host() -> None:
    """Defect 5: only https, or loopback, may carry a token; the Hub's endpoint is checked strictly."""
    from teadist.sources.http import Auth, origin
    from teadist.sources.hub import token_for

    assert Auth(origin("http://hub.example"), "Bearer t").headers_for("http://hub.example/x") == {}
    assert token_for("http://huggingface.co", "t") is None
    assert token_for("https://evil.example\\@huggingface.co", "t") is None
    assert token_for("https://user@huggingface.co", "t") is None
    assert token_for("https://huggingface.co", "t") == "t"


@pytest.fixture
def segmented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEADIST_RANGE_ALIGN", "65536")


@pytest.mark.parametrize("fault", ["ignore_range", "etag"])
def test_one_range_answered_200_or_with_another_etag_still_ends_verified(
        fault: str, segmented: None, hub: HubServer, mirror: MirrorServer, served: Path, models_dir: Path,
        cli: Callable[..., Result]) -> None:
    """Defect 7: one of the parallel ranges gets a 200 (whole file) or another ETag."""
    mirror.pace = 1_000_000  # slow enough for the first range to be cut
    mirror.add_fault(Fault(fault, skip=1))  # the first range passes; the first cut of it is hit
    result = cli("fetch", HF_SPEC, "--jobs", "4")
    assert [a.kind for a in mirror.applied] == [fault] and mirror.applied[0].range is not None
    assert not mirror.applied[0].range.startswith("bytes=0-")
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    assert "mismatch" not in result.err
    assert not [p for p in models_dir.rglob("*") if p.name.endswith((".part", ".part.json"))]


def test_rerun_with_other_jobs_resumes_the_ranges_it_proved(segmented: None, hub: HubServer, mirror: MirrorServer,
                                                            served: Path, models_dir: Path,
                                                            console: Callable[..., Result]) -> None:
    """Defect 7: a segmented partial killed, then fetched again with --jobs 1: the ranges done are
    kept (never re-read as a prefix), exactly the rest downloaded, no hash mismatch."""
    size = (served / "tiny.gguf").stat().st_size
    proven = _kill_mid_fetch(mirror, models_dir, 100_000)
    first = mirror.bytes_sent
    result = console("fetch", HF_SPEC, "--jobs", "1")
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")
    assert "mismatch" not in result.err, result.err
    assert mirror.bytes_sent - first == size - proven


def _two_source_manifest(mirror: MirrorServer, served: Path, tmp_path: Path) -> Path:
    """A manifest of tiny.gguf with two sources on the mirror (the second with ``?second``)."""
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", (served / "tiny.gguf").stat().st_size,
                                                     sha(served / "tiny.gguf")),
                        format="single", sources=[UrlSource(mirror.url_for("tiny.gguf")),
                                                  UrlSource(mirror.url_for("tiny.gguf") + "?second")])
    path = tmp_path / "m.manifest.json"
    path.write_bytes(dump_manifest(manifest))
    return path


def test_redirect_to_a_non_http_url_moves_on_to_the_next_source(mirror: MirrorServer, served: Path, tmp_path: Path,
                                                                models_dir: Path, fast_retries: None,
                                                                cli: Callable[..., Result]) -> None:
    """Defect 8: `Location: ftp://…` is a failed source, not a crash."""
    expected = sha(served / "tiny.gguf")
    path = _two_source_manifest(mirror, served, tmp_path)
    mirror.add_fault(Fault("redirect", location="ftp://127.0.0.1/tiny.gguf"))
    result = cli("fetch", path)
    assert mirror.applied_kinds() == ["redirect"]
    assert result.code == 0, result.err
    assert "trying the next source" in result.err and "Traceback" not in result.err
    assert sha(models_dir / "tiny.gguf") == expected


def test_symlinks_planted_at_partial_and_temp_names_are_never_written_through(
        hub: HubServer, mirror: MirrorServer, served: Path, tmp_path: Path, models_dir: Path, segmented: None,
        console: Callable[..., Result]) -> None:
    """Defect 12: learn the names a fetch gives its partial files (kill one mid-way), then plant a
    symlink to a victim at each of them (and at each sidecar's temp name) and fetch again."""
    mirror.add_fault(Fault("stall", after=100_000, seconds=30, times=4))
    # --jobs 4: four ranges at once, whatever the first answer's delay makes of the host (a near
    # host starts with one connection, which the stall would hold alone)
    proc = subprocess.Popen([str(TEADIST_BIN), "fetch", HF_SPEC, "-q", "--jobs", "4"],
                            env={**os.environ, "TEADIST_STALL_TIMEOUT": "60"})
    assert _wait_for(lambda: mirror.applied_kinds().count("stall") == 4)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    mirror.faults.clear()
    names = [p for p in models_dir.rglob("*") if (p.is_file() and not p.name.endswith((".lock", ".json")))
             or p.name.endswith(".part.json")]
    names = [p for p in names if p.name != "tiny.gguf" and "records" not in p.parts]
    assert names, "the killed fetch left no partial files to learn from"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = []
    for path in names:
        for target in (path, path.with_name(path.name + ".tmp")):
            target.unlink(missing_ok=True)
            target.symlink_to(victim)
            planted.append(target)
    result = console("fetch", HF_SPEC)
    assert victim.read_bytes() == b"precious", f"written through a symlink: now {victim.stat().st_size} bytes"
    assert result.code == 0, result.err
    assert sha(models_dir / "tiny.gguf") == sha(served / "tiny.gguf")


def test_a_file_altered_in_place_with_its_mtime_put_back_is_not_handed_out(hub: HubServer, served: Path,
                                                                          models_dir: Path,
                                                                          cli: Callable[..., Result]) -> None:
    """Size and mtime alone would call it cached; the inode's change time gives it away, and the
    re-check restores the published bytes."""
    assert cli("fetch", HF_SPEC).code == 0
    path = models_dir / "tiny.gguf"
    before = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = cli("fetch", HF_SPEC, "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["already_present"] is False
    assert sha(path) == sha(served / "tiny.gguf")


def test_a_touched_but_intact_file_is_re_recorded_not_downloaded(hub: HubServer, mirror: MirrorServer,
                                                                 models_dir: Path, cli: Callable[..., Result]) -> None:
    assert cli("fetch", HF_SPEC).code == 0
    sent = mirror.bytes_sent
    os.utime(models_dir / "tiny.gguf")
    again = cli("fetch", HF_SPEC, "--json")
    assert again.code == 0 and json.loads(again.out)["already_present"] is True
    assert mirror.bytes_sent == sent


def test_a_manifest_cannot_take_over_another_models_file(tiny_model: Path, tmp_path: Path, models_dir: Path,
                                                         cli: Callable[..., Result]) -> None:
    """A manifest naming its file (or its shards) after a model already installed from elsewhere
    is refused: the runtimes load by file name, so a replacement would hand them another model."""
    from teadist.formats.tinymodel import make_tiny_model

    split_file(tiny_model, tmp_path / "a", NullReporter(), chunk_size=100_000, name="model-a")
    assert cli("fetch", tmp_path / "a" / "tiny-llama.gguf.manifest.json").code == 0
    other = make_tiny_model(tmp_path / "b-src" / "tiny-llama.gguf", seed=77)
    split_file(other, tmp_path / "b", NullReporter(), chunk_size=100_000, name="model-b")
    taken = cli("fetch", tmp_path / "b" / "tiny-llama.gguf.manifest.json")
    assert taken.code == 1 and "refusing to replace" in taken.err, taken.err
    assert sha(models_dir / "tiny-llama.gguf") == sha(tiny_model)
    assert cli("rm", "tiny-llama.gguf").code == 0
    assert cli("fetch", tmp_path / "b" / "tiny-llama.gguf.manifest.json").code == 0
    assert sha(models_dir / "tiny-llama.gguf") == sha(other)


@pytest.mark.parametrize("second", ["ignore_range", "etag"])
def test_a_server_that_keeps_breaking_resumes_does_not_restart_forever(second: str, mirror: MirrorServer,
                                                                       served: Path, tmp_path: Path) -> None:
    """Review finding 8: every stream is cut, and every resume is answered with the whole file
    (200 to a Range) or another ETag: restarts are bounded, then one clear error."""
    from teadist.errors import SourceError
    from teadist.sources.download import MAX_RESTARTS, Downloader
    from teadist.sources.http import RetryPolicy

    for _ in range(40):
        mirror.add_fault(Fault("truncate", after=1000, path="tiny.gguf"))
        mirror.add_fault(Fault(second, after=1000, path="tiny.gguf") if second == "ignore_range"
                         else Fault("etag", path="tiny.gguf"))
    size = (served / "tiny.gguf").stat().st_size
    downloader = Downloader(NullReporter(), RetryPolicy(backoff=0.001, max_delay=0.01), sleep=lambda _: None,
                            jobs=1)
    with pytest.raises(SourceError) as caught:
        downloader.fetch(f"{mirror.url}/tiny.gguf", tmp_path / "t.gguf", size, sha(served / "tiny.gguf"))
    assert "giving up after restarting" in caught.value.message
    applied = mirror.applied_kinds()
    assert applied.count(second) >= MAX_RESTARTS, applied  # the fault really happened, more than once
    assert len(applied) <= 4 * (MAX_RESTARTS + 2), f"{len(applied)} requests: the restarts were not bounded"
    assert not (tmp_path / "t.gguf").exists()


@pytest.mark.parametrize("location", ["http://[::1", "ftp://example.org/x", "", "http://127.0.0.1/" + "a" * 10_000,
                                      "../../../../etc/passwd", "http://127.0.0.1:99999/x", "http://:80/x",
                                      "https://a\\@127.0.0.1/x", "//[fe80::1%25eth0/x", "\x01http://x/"])
def test_malformed_redirects_end_in_one_clear_line(location: str, mirror: MirrorServer, served: Path,
                                                   tmp_path: Path) -> None:
    """Review finding 9: whatever a server puts in Location, the download ends in a SourceError
    (one line), never another exception, and the token never follows to another origin."""
    from teadist.errors import TeadistError
    from teadist.sources.download import Downloader
    from teadist.sources.http import Auth, RetryPolicy, origin

    mirror.add_fault(Fault("redirect", location=location, path="tiny.gguf", times=30))
    size = (served / "tiny.gguf").stat().st_size
    downloader = Downloader(NullReporter(), RetryPolicy(attempts=2, backoff=0.001, max_delay=0.01),
                            sleep=lambda _: None, jobs=1)
    url = f"{mirror.url}/tiny.gguf"
    try:
        downloader.fetch(url, tmp_path / "t.gguf", size, sha(served / "tiny.gguf"),
                         auth=Auth(origin(url), "Bearer " + SECRET))
    except TeadistError as exc:
        assert "\n" not in exc.message and len(exc.message) < 400, exc.message
    assert "redirect" in mirror.applied_kinds()
    assert not (tmp_path / "t.gguf").exists() or sha(tmp_path / "t.gguf") == sha(served / "tiny.gguf")


_NO_ETAG: dict[str, str | None] = {"ETag": None, "X-Linked-Etag": None}


@pytest.mark.parametrize("headers,api", [
    ({"X-Linked-Size": "1" + "0" * 40}, None),
    ({"X-Linked-Size": "-5"}, None),
    ({"X-Linked-Size": "12abc"}, None),
    ({"ETag": '"' + "e" * 10_000 + '"', "X-Linked-Etag": None}, None),
    ({"X-Repo-Commit": "../../../../x"}, None),
    (_NO_ETAG, {"not": "a list"}),
    (_NO_ETAG, [{"type": "file", "path": "tiny.gguf", "lfs": {"oid": 5, "size": "big", "pointerSize": 1}}]),
    (_NO_ETAG, [{"type": "file", "path": "tiny.gguf", "lfs": {"oid": "a" * 64, "size": 10**30,
                                                              "pointerSize": 1}}]),
    (_NO_ETAG, [{"type": "file", "path": "tiny.gguf", "lfs": {"oid": "a" * 64, "size": -1, "pointerSize": 1}}]),
    (_NO_ETAG, [[1, 2, 3]]),
    (_NO_ETAG, b"[" + b"[" * 100_000),
], ids=["size-huge", "size-negative", "size-junk", "etag-huge", "commit-path", "api-object", "api-types",
        "api-size-huge", "api-size-negative", "api-nested-list", "api-deep-junk"])
def test_a_hostile_hub_gives_one_clear_line(headers: dict[str, str | None], api: object, hub: HubServer,
                                            models_dir: Path, cli: Callable[..., Result]) -> None:
    """Review finding 10: absurd sizes, wrong JSON types, odd ETags, crafted commits from the Hub
    end in one clear error line (no traceback), and nothing is installed."""
    hub.header_overrides = headers
    if isinstance(api, bytes):
        hub.api_raw = api
    else:
        hub.api_override = api
    result = cli("fetch", HF_SPEC)
    assert "Traceback" not in result.err, result.err[-3000:]
    if result.code == 0:  # it may refuse the bad metadata or fall back to what it can prove
        assert sha(models_dir / "tiny.gguf") == sha(hub.repos["org/repo"].files["tiny.gguf"])
        return
    assert [line for line in result.err.splitlines() if line.startswith("error: ")] == \
        [result.err.splitlines()[-1 if "hint: " not in result.err else -2]], result.err
    assert "Hub" in result.err, result.err
    assert not (models_dir / "tiny.gguf").exists()


# -- slow-loris answers ---------------------------------------------------------------------------
def _run_bounded(args: list[str], env: dict[str, str], limit: float) -> tuple[int | None, str, float]:
    """Run teadist; (exit code, stderr, seconds) — exit code None when it still ran after ``limit`` s
    (then it is killed)."""
    began = time.monotonic()
    proc = subprocess.Popen([str(TEADIST_BIN), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err, time.monotonic() - began
    return proc.returncode, err, time.monotonic() - began


@pytest.mark.parametrize("kind", ["trickle", "trickle_head"])
def test_a_manifest_sent_one_byte_at_a_time_is_given_up(kind: str, tiny_model: Path, tmp_path: Path,
                                                        models_dir: Path) -> None:
    """A server answering with one byte every 0.3 s (each well within the 1.5 s stall timeout) — the
    body, or the status line and headers — is a stalled server, not one to wait for forever."""
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault(kind, seconds=0.3, path=".manifest.json", times=99))
        code, err, took = _run_bounded(
            ["fetch", server.url_for("tiny-llama.gguf.manifest.json"), "-q"],
            _env(models_dir, TEADIST_STALL_TIMEOUT="1.5", TEADIST_RETRIES="2"), limit=60)
        assert server.applied_kinds()[:1] == [kind] and server.bytes_sent > 5  # it trickled
    assert code is not None, f"fetch still waiting after {took:.0f} s for a server sending a byte every 0.3 s"
    assert code == 1, err
    assert "127.0.0.1" in err and "Traceback" not in err, err
    assert not (models_dir / "tiny-llama.gguf").exists()


@pytest.mark.parametrize("kind", ["trickle", "trickle_head"])
def test_a_source_sending_one_byte_at_a_time_falls_back_to_the_next(kind: str, mirror: MirrorServer, served: Path,
                                                                    tmp_path: Path, models_dir: Path) -> None:
    """Every request for the model at the first source is answered a byte every 0.3 s: the fetch
    gives that source up like a stalled one and installs the file from the second."""
    expected = sha(served / "tiny.gguf")
    path = _two_source_manifest(mirror, served, tmp_path)
    mirror.add_fault(Fault(kind, seconds=0.3, path="tiny.gguf", times=999))
    code, err, took = _run_bounded(["fetch", str(path), "-q"],
                                   _env(models_dir, TEADIST_STALL_TIMEOUT="1.5", TEADIST_RETRIES="2"), limit=90)
    assert kind in mirror.applied_kinds() and mirror.bytes_sent > 5  # it trickled
    assert code is not None, f"fetch still waiting after {took:.0f} s for a source sending a byte every 0.3 s"
    assert code == 0, err
    assert sha(models_dir / "tiny.gguf") == expected


def test_a_download_of_unknown_size_is_refused_before_the_first_byte(mirror: MirrorServer, served: Path,
                                                                     tmp_path: Path, models_dir: Path,
                                                                     fast_retries: None,
                                                                     cli: Callable[..., Result]) -> None:
    """A manifest giving a file's sha256 but no size: the server decides how much is written. One
    answering without a length, with zeros until the client leaves (capped at 64 MiB here), filled
    the disk until it was full, with no free-space check first. teadist asks nothing of it."""
    expected = sha(served / "tiny.gguf")
    manifest = Manifest(name="tiny", file=FileRecord("tiny.gguf", None, expected), format="single",
                        sources=[UrlSource(mirror.url_for("tiny.gguf"))])
    path = tmp_path / "m.manifest.json"
    path.write_bytes(dump_manifest(manifest))
    mirror.add_fault(Fault("endless", after=64 * 1024 * 1024))
    result = cli("fetch", path)
    assert mirror.bytes_sent < 1024 * 1024, f"{mirror.bytes_sent} bytes of an endless answer were taken"
    assert result.code != 0
    assert "size" in result.err and "Traceback" not in result.err, result.err
    assert not (models_dir / "tiny.gguf").exists()


def test_fetch_from_the_hub_does_not_import_huggingface_hub(hub: HubServer, models_dir: Path) -> None:
    """Start-up cost (issue 15): importing huggingface_hub costs a command about a third of a second
    at start and exit, so a Hub file whose HEAD carries its LFS sha256 is resolved by teadist's own
    HEAD; the fetch still sends the token only to the endpoint and installs the verified file."""
    import sys

    code = ("import sys\nfrom teadist.cli import main\n"
            f"sys.argv = ['teadist', 'fetch', {HF_SPEC!r}, '--cache-dir', {str(models_dir)!r}, '--quiet']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('imported' if 'huggingface_hub' in sys.modules else 'not imported')\n")
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "not imported", done.stdout
    assert sha(models_dir / "tiny.gguf") == sha(hub.repos["org/repo"].files["tiny.gguf"])
    heads = [r for r in hub.requests if r.method == "HEAD"]
    assert heads and not any("Authorization" in r.headers for r in heads)  # HF_TOKEN is for the official Hub
