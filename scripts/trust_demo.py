"""Issue 10's acceptance demonstration: a large model, two fetches of it at once in different modes
(the rebuilt original, and --keep-shards), `prune --partials` running all the while; then `verify`
must be clean and nothing lost or corrupted.

    .venv/bin/python scripts/trust_demo.py --size-gib 4           # about 20 GB of disk at the peak

Everything happens under --work (default a fresh folder in /tmp), served by the loopback mirror
of tests/servers.py; the folder is removed at the end unless --keep. Prints one JSON report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEADIST = Path(sys.executable).parent / "teadist"
TENSOR_BYTES = 256 * 1024 * 1024  # F32 tensors of 64 Mi elements


def make_model(path: Path, size_gib: int) -> tuple[str, int]:
    """A valid GGUF of ``size_gib`` GiB of random F32 tensors; returns (sha256, size)."""
    count = size_gib * 1024**3 // TENSOR_BYTES

    def gstr(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, count, 2)
    header += gstr("general.architecture") + struct.pack("<I", 8) + gstr("demo")
    header += gstr("general.name") + struct.pack("<I", 8) + gstr("teadist trust demo")
    for i in range(count):
        header += gstr(f"blk.{i}.weight") + struct.pack("<I", 1) + struct.pack("<q", TENSOR_BYTES // 4)
        header += struct.pack("<IQ", 0, i * TENSOR_BYTES)
    header += b"\0" * (-len(header) % 32)
    digest = hashlib.sha256(header)
    with open(path, "wb") as fh:
        fh.write(header)
        for _ in range(count * TENSOR_BYTES // (16 * 1024 * 1024)):
            block = os.urandom(16 * 1024 * 1024)
            digest.update(block)
            fh.write(block)
    return digest.hexdigest(), path.stat().st_size


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TEADIST), *args], env=env, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers import MirrorServer

    work = args.work or Path(tempfile.mkdtemp(prefix="teadist-trust-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    cache, web = work / "cache", work / "web"
    env = {**os.environ, "TEA_MODELS_DIR": str(cache), "HOME": str(work / "home")}
    report: dict[str, Any] = {"work": str(work)}
    try:
        start = time.monotonic()
        original = work / "src" / "demo.gguf"
        original.parent.mkdir(parents=True, exist_ok=True)
        sha, size = make_model(original, args.size_gib)
        report["model"] = {"bytes": size, "sha256": sha, "made_in_s": round(time.monotonic() - start, 1)}

        start = time.monotonic()
        split = run("split", str(original), "--format", "gguf", "--shard-size", "512M", "--out", str(web), "--json",
                    env=env)
        assert split.returncode == 0, split.stderr
        manifest = json.loads(split.stdout)
        shards = manifest["chunks"]
        report["split"] = {"shards": len(shards), "seconds": round(time.monotonic() - start, 1)}
        original.unlink()  # from here on, only the published shards exist

        with MirrorServer(web) as mirror:
            assert isinstance(mirror, MirrorServer)
            url = mirror.url_for(Path(manifest["manifest"]).name)
            prunes: list[dict[str, Any]] = []
            done = threading.Event()

            def prune_loop() -> None:
                while not done.is_set():
                    # what is in flight right before each prune: it must all still be there after
                    in_flight = json.loads(run("du", "--json", env=env).stdout or "{}").get("partials", 0)
                    result = run("prune", "--partials", "--json", env=env)
                    prunes.append({"code": result.returncode, "in_flight_bytes": in_flight,
                                   "removed": json.loads(result.stdout or "{}").get("removed", []),
                                   "err": result.stderr[-300:]})
                    time.sleep(0.5)

            start = time.monotonic()
            plain = subprocess.Popen([str(TEADIST), "fetch", url, "--jobs", "4", "--json"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            kept = subprocess.Popen([str(TEADIST), "fetch", url, "--keep-shards", "--jobs", "2", "--json"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            pruner = threading.Thread(target=prune_loop)
            pruner.start()
            times: dict[str, float] = {}
            outputs: dict[str, tuple[int, str, str]] = {}

            def wait(label: str, proc: subprocess.Popen[str]) -> None:
                out, err = proc.communicate()
                times[label] = round(time.monotonic() - start, 1)
                outputs[label] = (proc.returncode, out, err)

            waiters = [threading.Thread(target=wait, args=item) for item in (("plain", plain), ("keep_shards", kept))]
            for waiter in waiters:
                waiter.start()
            for waiter in waiters:
                waiter.join()
            done.set()
            pruner.join()
            gets = [r for r in mirror.requests if r.method == "GET"]
            report["fetch"] = {
                label: {"exit": code, "seconds": times[label], "stderr_tail": err[-400:]}
                for label, (code, _, err) in outputs.items()}
            report["server"] = {"GETs": len(gets), "bytes_sent": mirror.bytes_sent,
                                "shard_bytes": sum(c["size"] for c in shards)}
        report["prune"] = {"runs": len(prunes), "during_fetches_removed": sum(len(p["removed"]) for p in prunes),
                           "runs_with_bytes_in_flight": sum(1 for p in prunes if p["in_flight_bytes"]),
                           "most_bytes_in_flight": max((p["in_flight_bytes"] for p in prunes), default=0),
                           "failures": [p for p in prunes if p["code"] != 0]}
        verify = run("verify", "--json", env=env)
        rows = json.loads(verify.stdout)["items"] if verify.stdout else []
        report["verify"] = {"exit": verify.returncode, "items": len(rows),
                            "not_ok": [r for r in rows if r["status"] != "OK"]}
        installed = {c["name"]: sha256_of(cache / c["name"]) == c["sha256"] for c in shards}
        report["nothing_lost"] = {
            "rebuilt_original_sha256_matches": sha256_of(cache / "demo.gguf") == sha,
            "kept_shards_match": sum(installed.values()), "kept_shards": len(installed),
            "left_in_flight": sorted(str(p.relative_to(cache)) for p in (cache / ".teadist").rglob("*")
                                     # records and the kept manifest copies (for --offline) stay by design
                                     if p.is_file() and not {"records", "manifests"} & set(p.parts)),
        }
        du = run("du", "--json", env=env)
        report["du"] = json.loads(du.stdout)
        ok = (all(code == 0 for code, _, _ in outputs.values()) and verify.returncode == 0
              and report["nothing_lost"]["rebuilt_original_sha256_matches"] and all(installed.values())
              and not report["prune"]["failures"] and report["prune"]["during_fetches_removed"] == 0)
        report["ok"] = ok
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
