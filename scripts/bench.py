#!/usr/bin/env python3
"""Benchmarks: teadist against the named peer, in the same run on the same file, as ratios.

    python scripts/bench.py                 # split, assemble, verify on a 3 GiB file
    python scripts/bench.py --size 512MiB   # smaller
    python scripts/bench.py --all           # every section
    python scripts/bench.py --only wan      # far-CDN rows: paced loopback vs aria2c and hf_hub_download
    python scripts/bench.py --big --only split-assemble-verify --only fetch   # peak RSS on a 4.5 GB model
    python scripts/bench.py --only blocks   # the block-size measurements behind manifest 1.1

The GGUF rows compare against llama.cpp's `llama-gguf-split`: build it once with
`bash scripts/build_llama_gguf_split.sh` (found in ~/.cache/teadist-bench/), or pass --gguf-split PATH;
without it those rows are skipped with the reason printed.

Every timed command ends with the data on disk (`sync` after the peers; teadist fsyncs itself),
so neither side wins by leaving dirty pages behind. Inputs are read once before timing, so both
sides read from the page cache. The GGUF and verify rows run teadist and its peer in alternated
rounds (the order flips each round) and compare the medians, so load bursts hit both alike.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEADIST = [sys.executable, "-m", "teadist"]
BLOCK = 64 * 1024 * 1024


@dataclass
class Row:
    section: str
    teadist: float
    peer_name: str
    peer: float
    target: str
    limit: float
    unit: str = "s"

    @property
    def ratio(self) -> float:
        return self.teadist / self.peer if self.peer else float("inf")

    @property
    def verdict(self) -> str:
        return "ok" if self.ratio <= self.limit else "MISSED"


@dataclass
class Bench:
    work: Path
    size: int
    repeat: int = 3
    rows: list[Row] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    gguf_split: Path | None = None
    notes: list[str] = field(default_factory=list)
    big: bool = False

    def run(self, argv: list[str], label: str | None = None, env: dict[str, str] | None = None) -> float:
        """Time ``argv`` *and* a trailing ``sync`` as one command (so nobody leaves dirty pages behind);
        record the peak RSS under ``label``."""
        subprocess.run(["sync"], check=True)  # untimed: earlier writeback must not bleed in
        start = time.perf_counter()
        proc = subprocess.Popen(["bash", "-c", '"$@" && sync', "bash", *argv], stdout=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"command failed: {' '.join(argv)}")
        if label:  # wait4 reports the largest RSS among the process and its children
            self.peak_rss[label] = max(self.peak_rss.get(label, 0), usage.ru_maxrss * 1024)
        return elapsed

    def shell(self, script: str) -> float:
        return self.run(["bash", "-c", "set -e; " + script])

    def teadist(self, *args: str, label: str, env: dict[str, str] | None = None) -> float:
        return self.run([*TEADIST, *args, "--quiet"], label, env)


def median_of(b: Bench, measure: Callable[[], float], cleanup: Callable[[], None] | None = None) -> float:
    """Median of ``b.repeat`` runs (the disk's writeback state makes single runs noisy)."""
    times = []
    for _ in range(b.repeat):
        times.append(measure())
        if cleanup is not None:
            cleanup()
    return statistics.median(times)


def paired(b: Bench, ours: Callable[[], float], peer: Callable[[], float],
           ours_cleanup: Callable[[], None] | None = None,
           peer_cleanup: Callable[[], None] | None = None) -> tuple[float, float]:
    """Medians of ``b.repeat`` alternated rounds of teadist and its peer (the order flips each round),
    so a burst of load or the disk's writeback state hits both sides alike."""
    ours_times: list[float] = []
    peer_times: list[float] = []
    sides = [(ours, ours_cleanup, ours_times), (peer, peer_cleanup, peer_times)]
    for round_no in range(b.repeat):
        for measure, cleanup, times in (sides if round_no % 2 == 0 else sides[::-1]):
            times.append(measure())
            if cleanup is not None:
                cleanup()
    return statistics.median(ours_times), statistics.median(peer_times)


def make_input(path: Path, size: int) -> None:
    """Write ``size`` distinct pseudo-random bytes, in a child process so the bench stays small
    (a forked child inherits the parent's resident pages in its peak RSS)."""
    code = f"""
import os
block = bytearray(os.urandom({BLOCK}))
with open({str(path)!r}, "wb") as fh:
    written = counter = 0
    while written < {size}:
        block[:8] = counter.to_bytes(8, "little")
        n = min({BLOCK}, {size} - written)
        fh.write(block[:n])
        written += n
        counter += 1
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    subprocess.run(["sync"], check=True)


def cores() -> int:
    """The cores this process may use (what teadist's verify scales to)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def compile_sources() -> None:
    """teadist's modules compiled to bytecode once, as pip does when it installs the wheel: an
    editable checkout under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every
    start (40–50 ms a command that its peers, compiled or installed, never pay)."""
    import compileall

    compileall.compile_dir(ROOT / "teadist", quiet=1)


def warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def q(path: object) -> str:
    return shlex.quote(str(path))


def section_split_assemble_verify(b: Bench, src: Path) -> None:
    core = b.work / "core"
    copy = b.work / "copy.bin"
    chunks_dir = b.work / "chunks"
    warm(src)
    t_core = b.shell(f"mkdir -p {q(core)} && split -b 1900000000 -d {q(src)} {q(core)}/c. && "
                     f"sha256sum {q(core)}/c.* >/dev/null && sha256sum {q(src)} >/dev/null")
    shutil.rmtree(core)
    t_cat = median_of(b, lambda: b.shell(f"cat {q(src)} > {q(copy)}"), lambda: os.remove(copy))
    t_split = median_of(b, lambda: b.teadist("split", str(src), "--out", str(chunks_dir), label="split"),
                        lambda: shutil.rmtree(chunks_dir))
    b.teadist("split", str(src), "--out", str(chunks_dir), label="split")
    b.rows.append(Row("split", t_split, "split -b + sha256sum (chunks, whole)", t_core, "≤ 0.35×", 0.35))
    b.rows.append(Row("split", t_split, "cat copy", t_cat, "≤ 1.2×", 1.2))

    manifest = chunks_dir / (src.name + ".manifest.json")
    quoted = " ".join(q(c) for c in sorted(chunks_dir.glob(src.name + ".part-*")))
    t_cat_chunks = median_of(b, lambda: b.shell(f"cat {quoted} > {q(copy)}"), lambda: os.remove(copy))
    t_cat_sum = b.shell(f"cat {quoted} > {q(copy)} && sha256sum {q(copy)} >/dev/null")
    os.remove(copy)
    out = b.work / "assembled" / src.name
    t_asm = median_of(b, lambda: b.teadist("assemble", str(manifest), "--out", str(out), label="assemble"),
                      lambda: os.remove(out))
    b.rows.append(Row("assemble", t_asm, "cat chunks", t_cat_chunks, "≤ 1.2×", 1.2))
    b.rows.append(Row("assemble", t_asm, "cat chunks + sha256sum", t_cat_sum, "(info)", float("inf")))

    warm(src)

    def sha256sum() -> float:
        return b.run(["sha256sum", str(src)])  # (its trailing sync has nothing to do)

    t_verify, t_sum = paired(b, lambda: b.teadist("verify", str(src), "--manifest", str(manifest), label="verify"),
                             sha256sum)
    b.rows.append(Row("verify file against its manifest (its sha256 and block map; each chunk's sha256)", t_verify,
                      "sha256sum", t_sum, "≤ 0.10×", 0.10))
    cache = b.work / "verify-cache"
    b.teadist("assemble", str(manifest), "--cache-dir", str(cache), label="assemble")
    warm(cache / src.name)
    t_cached, t_sum = paired(b, lambda: b.teadist("verify", src.name, "--cache-dir", str(cache), label="verify"),
                             sha256sum)
    b.rows.append(Row(f"verify cached model (against its proven block map, {cores()} cores)", t_cached,
                      "sha256sum", t_sum, "≤ 0.10×", 0.10))
    t_full = median_of(b, lambda: b.teadist("verify", src.name, "--full", "--cache-dir", str(cache), label="verify"))
    b.rows.append(Row("verify cached model --full (whole sha256)", t_full, "sha256sum", t_sum, "(info)",
                      float("inf")))
    shutil.rmtree(cache)
    shutil.rmtree(chunks_dir)


def section_fetch(b: Bench, src: Path) -> None:
    """Fetch 1 GiB (or --size, if smaller) from the loopback Hub server: teadist vs hf_hub_download vs curl."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import HubServer

    compile_sources()
    size = b.size if b.big else min(b.size, 2**30)
    model = b.work / "fetch-src" / "model.gguf"
    model.parent.mkdir()
    make_input(model, size)
    with HubServer() as hub:
        assert isinstance(hub, HubServer)
        hub.add_repo("org/repo", {"model.gguf": model})
        url = f"{hub.url}/org/repo/resolve/main/model.gguf"
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        models = b.work / "fetch-models"
        hf_cache = b.work / "fetch-hf"
        curl_out = b.work / "fetch-curl.bin"
        warm(model)

        def teadist_fetch() -> float:
            return b.teadist("fetch", "hf://org/repo/model.gguf", "--cache-dir", str(models), label="fetch", env=env)

        hf_code = (f"from huggingface_hub import hf_hub_download; hf_hub_download('org/repo', 'model.gguf', "
                   f"cache_dir={str(hf_cache)!r}, endpoint={hub.url!r}, token=False)")
        runs: dict[str, tuple[Callable[[], float], Callable[[], None]]] = {
            "teadist": (teadist_fetch, lambda: shutil.rmtree(models)),
            "hf": (lambda: b.run([sys.executable, "-c", hf_code], env=env), lambda: shutil.rmtree(hf_cache)),
            "curl": (lambda: b.run(["curl", "-sS", "-o", str(curl_out), url]), lambda: os.remove(curl_out))}
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for round_no in range(b.repeat):  # alternated rounds (each goes first in turn): load drifts
            turn = round_no % len(names)
            for name in names[turn:] + names[:turn]:
                measure, cleanup = runs[name]
                times[name].append(measure())
                cleanup()
        print("fetch, unpaced loopback: " + ", ".join(f"{name} {' '.join(f'{t:.2f}' for t in times[name])} s"
                                                      for name in names), file=sys.stderr)
        t_teadist, t_hf, t_curl = (statistics.median(times[name]) for name in names)

        def mbps(seconds: float) -> str:
            return f"{size / seconds / 1e6:.0f} MB/s"

        b.rows.append(Row("fetch (throughput)", t_teadist, f"hf_hub_download ({mbps(t_hf)}; teadist "
                          f"{mbps(t_teadist)})", t_hf, "≤ 0.5× time (≥ 2× throughput)", 0.5))
        b.rows.append(Row("fetch (throughput)", t_teadist, f"curl -o ({mbps(t_curl)})", t_curl,
                          "≤ 1.0× time (≥ 1.0× throughput)", 1.0))

        # resume: kill at 50 %, run again, count what the server sends the second time
        proc = subprocess.Popen([*TEADIST, "fetch", "hf://org/repo/model.gguf", "-q", "--cache-dir", str(models)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_bytes = hub.bytes_sent
        while proc.poll() is None:  # the partial is preallocated: watch the bytes sent instead
            if hub.bytes_sent - start_bytes >= size // 2:
                proc.kill()
                break
            time.sleep(0.002)
        proc.wait()
        before = hub.bytes_sent
        b.teadist("fetch", "hf://org/repo/model.gguf", "--cache-dir", str(models), label="fetch", env=env)
        resent = hub.bytes_sent - before
        b.rows.append(Row("fetch resume after kill at 50 %", resent / size, "bytes sent again ÷ file size",
                          1.0, "≤ 0.6×", 0.6, unit=""))

        # repair: one flipped byte in the cached model; count what the server sends to mend it
        cached = models / "model.gguf"
        with open(cached, "r+b") as fh:
            fh.seek(size // 3)
            byte = fh.read(1)
            fh.seek(size // 3)
            fh.write(bytes([byte[0] ^ 0xFF]))
        before = hub.bytes_sent
        b.teadist("repair", "model.gguf", "--cache-dir", str(models), label="repair", env=env)
        resent = hub.bytes_sent - before
        from teadist.base.blocks import BLOCK_SIZE

        b.rows.append(Row("repair after one flipped byte", resent / BLOCK_SIZE,
                          f"bytes sent again ({resent}) ÷ one block ({BLOCK_SIZE}); headers apart", 1.0,
                          "≤ 1 block", 1.0, unit=""))
        b.teadist("verify", "model.gguf", "--cache-dir", str(models), label="verify")
    shutil.rmtree(model.parent)


WAN_LINKS = [(16_000_000, 0.05, 256 * 2**20), (8_000_000, 0.1, 128 * 2**20)]  # pace/connection, delay, size


def section_wan(b: Bench, src: Path) -> None:
    """Fetch over a far-CDN-like link: the loopback Hub paces every connection and answers each request
    late (tests/servers.py). teadist vs `aria2c -x8 -s8` (the issue's peer), `aria2c -x8 -s8 -k1M`
    (aria2's best: its default 20 MiB minimum split keeps a 128 MiB file on 4 connections) and
    `hf_hub_download`, in alternated rounds (each goes first in turn), medians; every row says how
    many connections the server saw at once for that tool. Then the unpaced loopback against `curl -o`."""
    if shutil.which("aria2c") is None:
        raise SystemExit("the wan section needs aria2c (Debian: apt-get install aria2)")
    compile_sources()
    for pace, delay, size in [*WAN_LINKS, (0, 0.0, min(b.size, 2**30))]:
        _wan_link(b, pace, delay, size)


def _wan_link(b: Bench, pace: int, delay: float, size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.servers import HubServer

    model = b.work / "wan-src" / "model.gguf"
    model.parent.mkdir(exist_ok=True)
    make_input(model, size)
    out = b.work / "wan-out"
    with HubServer() as hub:
        assert isinstance(hub, HubServer)
        hub.pace, hub.delay = (pace or None), delay
        hub.add_repo("org/repo", {"model.gguf": model})
        url = f"{hub.url}/org/repo/resolve/main/model.gguf"
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        hf_code = (f"from huggingface_hub import hf_hub_download; hf_hub_download('org/repo', 'model.gguf', "
                   f"cache_dir={str(out / 'hf')!r}, endpoint={hub.url!r}, token=False)")
        warm(model)
        peers: dict[str, Callable[[], float]] = {
            "teadist": lambda: b.teadist("fetch", "hf://org/repo/model.gguf", "--cache-dir", str(out / "models"),
                                         label="fetch (wan)", env=env)}
        if pace:
            peers["aria2c -x8 -s8"] = lambda: b.run(["aria2c", "-x8", "-s8", "-q", "--allow-overwrite=true",
                                                     "-d", str(out), "-o", "aria2.bin", url])
            peers["aria2c -x8 -s8 -k1M"] = lambda: b.run(["aria2c", "-x8", "-s8", "-k1M", "-q",
                                                          "--allow-overwrite=true", "-d", str(out), "-o", "aria2.bin",
                                                          url])
            peers["hf_hub_download"] = lambda: b.run([sys.executable, "-c", hf_code], env=env)
        else:
            peers["curl -o"] = lambda: b.run(["curl", "-sS", "--create-dirs", "-o", str(out / "curl.bin"), url])
        times: dict[str, list[float]] = {name: [] for name in peers}
        seen: dict[str, int] = dict.fromkeys(peers, 0)  # the most file GETs the server answered at once
        names = list(peers)
        for round_no in range(b.repeat):
            turn = round_no % len(names)
            for name in names[turn:] + names[:turn]:  # alternate who goes first
                since = time.monotonic()
                times[name].append(peers[name]())
                seen[name] = max(seen[name], hub.concurrency(since=since, until=time.monotonic()))
                shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(model.parent)
    median = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: f"{size / t / 1e6:.0f} MB/s, {seen[name]} conn" for name, t in median.items()}
    where = (f"{pace / 1e6:.0f} MB/s a connection + {delay * 1000:.0f} ms a request, {size // 2**20} MiB"
             if pace else f"unpaced loopback, {size // 2**20} MiB")
    goals = [("aria2c -x8 -s8", "≥ 0.9× throughput", 1 / 0.9), ("aria2c -x8 -s8 -k1M", "≥ 0.9× throughput", 1 / 0.9),
             ("hf_hub_download", "≥ 4× throughput", 0.25), ("curl -o", "≥ 1.0× throughput", 1.0)]
    print(f"{where}: " + ", ".join(f"{name} {rate[name]} ({' '.join(f'{t:.2f}' for t in times[name])} s)"
                                   for name in times), file=sys.stderr)
    for name, goal, limit in goals:
        if name in median:
            b.rows.append(Row(f"fetch, {where}", median["teadist"], f"{name} ({rate[name]}; teadist "
                              f"{rate['teadist']})", median[name], goal, limit))

def find_gguf_split(given: Path | None) -> Path | None:
    """llama.cpp's llama-gguf-split: --gguf-split, else what scripts/build_llama_gguf_split.sh built."""
    if given is not None:
        return given if given.is_file() else None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "teadist-bench"
    for candidate in [cache / "llama-gguf-split", *sorted(cache.glob("llama-gguf-split-*/llama-gguf-split"))]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("llama-gguf-split")
    return Path(found) if found else None


def section_gguf(b: Bench, src: Path) -> None:
    """GGUF shards of a generated ~1 GiB llama GGUF: split --format gguf (all hashes, block maps and
    the rebuild proof) against `llama-gguf-split --split-max-size` (no hashes), and the lossless,
    verified rebuild against `llama-gguf-split --merge` (which does not give back the original)."""
    n_layer = max(1, min(b.size, 2**30) // (4 * 51_380_224))  # n_embd 2048, n_ff 5632: ~205 MB a layer
    model = b.work / "gguf-src" / "model.gguf"
    code = (f"from pathlib import Path; from teadist.formats.tinymodel import make_tiny_model; "
            f"make_tiny_model(Path({str(model)!r}), seed=1, n_embd=2048, n_ff=5632, n_layer={n_layer}, n_head=16)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    shards = b.work / "gguf-shards"
    copy = b.work / "gguf-copy.bin"
    warm(model)
    size = model.stat().st_size

    def split() -> float:
        return b.teadist("split", str(model), "--format", "gguf", "--shard-size", "512M", "--out", str(shards),
                         label="split --format gguf")

    t_split, t_cat = paired(b, split, lambda: b.shell(f"cat {q(model)} > {q(copy)}"),
                            lambda: shutil.rmtree(shards), lambda: os.remove(copy))
    rebuilt = b.work / "gguf-rebuilt" / "model.gguf"
    manifest = shards / "model.gguf.manifest.json"

    def rebuild() -> float:
        return b.teadist("assemble", str(manifest), "--out", str(rebuilt), label="assemble (gguf)")

    tool = b.gguf_split
    if tool is None:
        split()
        t_rebuild = median_of(b, rebuild, lambda: os.remove(rebuilt))
        b.notes.append("llama-gguf-split not found (run scripts/build_llama_gguf_split.sh or pass --gguf-split): "
                       "GGUF rows compared with a plain copy only")
        b.rows.append(Row(f"gguf shards: split ({size / 1e9:.2f} GB, 512 MB shards, with rebuild proof)", t_split,
                          "cat copy", t_cat, "(info)", float("inf")))
        b.rows.append(Row("gguf shards: lossless rebuild, verified", t_rebuild, "cat copy", t_cat, "(info)",
                          float("inf")))
    else:
        peer_dir = b.work / "gguf-peer"
        peer_dir.mkdir()
        prefix = peer_dir / "model"

        def remove_peer_shards() -> None:
            for shard in peer_dir.glob("model-*.gguf"):
                os.remove(shard)

        t_split, t_peer_split = paired(
            b, split, lambda: b.run([str(tool), "--split", "--split-max-size", "512M", str(model), str(prefix)]),
            lambda: shutil.rmtree(shards), remove_peer_shards)
        split()
        b.run([str(tool), "--split", "--split-max-size", "512M", str(model), str(prefix)])
        first = sorted(peer_dir.glob("model-00001-of-*.gguf"))[0]
        merged = b.work / "gguf-merged.gguf"
        t_rebuild, t_peer_merge = paired(b, rebuild, lambda: b.run([str(tool), "--merge", str(first), str(merged)]),
                                         lambda: os.remove(rebuilt), lambda: os.remove(merged))
        b.rows.append(Row(f"gguf shards: split ({size / 1e9:.2f} GB, 512M shards; sha256 of each shard and the "
                          "original, block maps, rebuild proof)", t_split, "llama-gguf-split --split-max-size 512M",
                          t_peer_split, "≤ 1.1×", 1.1))
        b.rows.append(Row("gguf shards: rebuild the byte-identical original, verified", t_rebuild,
                          "llama-gguf-split --merge (not the original)", t_peer_merge, "≤ 1.1×", 1.1))
        shutil.rmtree(peer_dir)
    b.rows.append(Row("gguf shards: split, vs a plain copy", t_split, "cat copy", t_cat, "(info)", float("inf")))
    shutil.rmtree(shards)
    shutil.rmtree(model.parent)


def section_blocks(b: Bench, src: Path) -> None:
    """The block-size choice (manifest 1.1): for 4-64 MiB blocks, parallel verify time of a 1 GiB file
    on every core, manifest bytes per GiB and per 4 GB model, and what one flipped byte costs to repair."""
    import json

    from teadist.base.hashing import hash_blocks

    size = min(b.size, 2**30)
    data = b.work / "blocks-1g.bin"
    make_input(data, size)
    warm(data)
    hash_blocks(data, 8 * 2**20, range(-(-size // (8 * 2**20))), size)  # warm-up: threads, caches, clocks
    print(f"\nblock size | verify 1 GiB, {cores()} cores (s) | hashes per 4 GB | manifest bytes per 4 GB | "
          "repair of 1 flipped byte", file=sys.stderr)
    for mib in (4, 8, 16, 32, 64):
        bs = mib * 2**20
        count = -(-size // bs)
        runs = []
        for _ in range(max(5, b.repeat)):
            start = time.perf_counter()
            hash_blocks(data, bs, range(count), size)
            runs.append(time.perf_counter() - start)
        per_4gb = -(-4 * 10**9 // bs)
        manifest_bytes = len(json.dumps(["0" * 64] * per_4gb, indent=2))
        line = (f"{mib} MiB | {statistics.median(runs):.2f} | {per_4gb} | {manifest_bytes} | {bs} bytes "
                f"({bs / 4e9 * 100:.2f} % of 4 GB)")
        print(line, file=sys.stderr)
        b.notes.append("blocks: " + line)
    os.remove(data)


def section_startup(b: Bench, src: Path) -> None:
    """`teadist --help` start-up against `python -c "import typer"`: heavy imports stay lazy."""
    def timed(argv: list[str]) -> float:
        runs = []
        for _ in range(11):
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    t_typer = timed([sys.executable, "-c", "import typer"])
    t_help = timed([*TEADIST, "--help"])
    b.rows.append(Row("start-up: teadist --help", t_help, "python -c 'import typer'", t_typer, "≤ 2×", 2.0))


SECTIONS: dict[str, Callable[[Bench, Path], None]] = {
    "split-assemble-verify": section_split_assemble_verify,
    "fetch": section_fetch,
    "wan": section_wan,
    "gguf": section_gguf,
    "startup": section_startup,
    "blocks": section_blocks,
}


def print_table(b: Bench) -> None:
    print(f"\nteadist bench — {b.size / 2**30:.2f} GiB input, {cores()} usable cores "
          f"({os.cpu_count()} on the machine), {time.strftime('%Y-%m-%d')}\n")
    print("| operation | teadist (s) | peer | peer (s) | ratio | target | |")
    print("|---|---:|---|---:|---:|---|---|")
    for r in b.rows:
        t = f"{r.teadist:.2f}" if r.unit else f"{r.teadist:.2f}×"
        p = f"{r.peer:.2f}" if r.unit else "-"
        print(f"| {r.section} | {t} | {r.peer_name} | {p} | {r.ratio:.2f}× | {r.target} | "
              f"{r.verdict if r.limit != float('inf') else ''} |")
    if b.peak_rss:
        peak = max(b.peak_rss.values())
        detail = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in b.peak_rss.items())
        print(f"| peak RSS | {peak / 1e6:.0f} MB | | | | ≤ 100 MB | {'ok' if peak <= 100e6 else 'MISSED'} |")
        print(f"\n(peak RSS per command: {detail})")
    for note in b.notes:
        print(f"\nnote: {note}")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from teadist.base.sizes import parse_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3GiB", help="input size (default 3GiB)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--all", action="store_true", help="run every section")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median counts")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run this section")
    parser.add_argument("--big", action="store_true",
                        help="a 4.5 GB input (peak RSS on a model over 4 GB; fetch uses all of it too)")
    parser.add_argument("--gguf-split", type=Path, default=None,
                        help="llama.cpp's llama-gguf-split [default: ~/.cache/teadist-bench/llama-gguf-split]")
    args = parser.parse_args()
    size = 4_500_000_000 if args.big else parse_size(args.size)
    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="teadist-bench-", dir=base) as tmp:
        b = Bench(Path(tmp), size, repeat=args.repeat, gguf_split=find_gguf_split(args.gguf_split), big=args.big)
        src = b.work / "model.gguf"
        print(f"generating {size} bytes in {src} ...", file=sys.stderr)
        make_input(src, size)
        chosen = args.only or ([n for n in SECTIONS if n != "blocks"] if args.all else ["split-assemble-verify"])
        for name in chosen:
            print(f"running {name} ...", file=sys.stderr)
            SECTIONS[name](b, src)
        print_table(b)


if __name__ == "__main__":
    main()
