"""The browser assets as shipped: `teadist web-assets`, the wheel, and the .d.ts under `tsc`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.web import ASSETS, asset_files
from tests.helpers import Result

ROOT = Path(__file__).resolve().parents[1]
BROWSER = Path(__file__).parent / "browser"
TSC = BROWSER / "node_modules" / "typescript" / "bin" / "tsc"
TSC_FLAGS = ["--noEmit", "--strict", "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler",
             "--lib", "es2022,dom,dom.iterable"]


def shipped(rel: str) -> bytes:
    return asset_files()[rel].read_bytes()


def test_web_assets_copies_the_module_types_and_example(cli: Callable[..., Result], tmp_path: Path) -> None:
    dest = tmp_path / "vendor" / "teadist"
    first = cli("web-assets", dest)
    assert first.code == 0, first.err
    assert first.out.split() == [str(dest / rel) for rel in ASSETS]
    assert "3 file(s) written" in first.err
    for rel in ASSETS:
        assert (dest / rel).read_bytes() == shipped(rel)
    assert {p.name for p in dest.rglob("*")} == {"model-cache.js", "model-cache.d.ts", "examples", "index.html"}
    again = cli("web-assets", dest, "--json")
    assert again.code == 0
    report = json.loads(again.out)
    assert [f["action"] for f in report["files"]] == ["unchanged"] * 3
    assert report["files"][0]["size"] == len(shipped("model-cache.js"))


def test_web_assets_never_replaces_a_differing_file_without_force(cli: Callable[..., Result], tmp_path: Path) -> None:
    dest = tmp_path / "web"
    (dest / "examples").mkdir(parents=True)
    (dest / "model-cache.js").write_text("// my own edits\n")
    refused = cli("web-assets", dest)
    assert refused.code == 1
    assert "refusing to replace 1 file(s) that differ" in refused.err and "model-cache.js" in refused.err
    assert "hint: pass --force" in refused.err and "Traceback" not in refused.err
    assert (dest / "model-cache.js").read_text() == "// my own edits\n"
    assert not (dest / "model-cache.d.ts").exists() and not (dest / "examples" / "index.html").exists()  # nothing
    forced = cli("web-assets", dest, "--force", "--json")
    assert forced.code == 0
    assert [f["action"] for f in json.loads(forced.out)["files"]] == ["replaced", "written", "written"]
    assert (dest / "model-cache.js").read_bytes() == shipped("model-cache.js")
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_web_assets_never_writes_through_a_link(cli: Callable[..., Result], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.js"
    victim.write_text("precious\n")
    dest = tmp_path / "web"
    dest.mkdir()
    (dest / "model-cache.js").symlink_to(victim)
    refused = cli("web-assets", dest)
    assert refused.code == 1 and "model-cache.js" in refused.err
    forced = cli("web-assets", dest, "--force")
    assert forced.code == 0
    assert victim.read_text() == "precious\n"  # the link was replaced, its target never written
    assert not (dest / "model-cache.js").is_symlink()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "examples").symlink_to(elsewhere)
    through = cli("web-assets", linked, "--force")
    assert through.code == 2 and "refusing to write through it" in through.err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.js"]
    assert not (linked / "model-cache.js").exists()  # checked before anything was written


def test_web_assets_refuses_a_file_as_folder(cli: Callable[..., Result], tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = cli("web-assets", target)
    assert result.code == 2 and "is not a folder" in result.err
    assert target.read_text() == "x"


def test_web_assets_help_has_an_example(console: Callable[..., Result]) -> None:
    result = console("web-assets", "--help")
    assert result.code == 0 and "Example:" in result.out and "teadist web-assets web/vendor/teadist" in result.out


@pytest.mark.slow
@pytest.mark.tools
def test_the_wheel_carries_the_web_assets(tmp_path: Path) -> None:
    out = tmp_path / "wheel"
    # Offline: the build backend comes from the test extras, not from an index.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(out), "--no-deps",
                            "--no-build-isolation", "--no-index", "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = out.glob("teadist-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in ASSETS:
            assert f"teadist/web/{rel}" in names
            assert zf.read(f"teadist/web/{rel}") == shipped(rel)
        assert "teadist/cli/web.py" in names


@pytest.mark.slow
def test_the_types_check_against_a_usage_file_and_reject_misuse(tmp_path: Path) -> None:
    assert TSC.is_file(), "run `npm ci` in tests/browser (.ci/run does)"
    usage = BROWSER / "model-cache-usage.ts"
    good = subprocess.run(["node", str(TSC), *TSC_FLAGS, str(usage)], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    # The same declarations must refuse wrong calls, or the check above proves nothing.
    module = os.path.relpath(ROOT / "teadist" / "web" / "model-cache.js", tmp_path)
    wrong = {
        "storage: 'localStorage'": "await ModelCache.open({ manifestUrl: 'm.json', storage: 'localStorage' });",
        "download(42)": "await c.download(42);",
        "partialBytes as string": "const s: string = (await c.status('a')).partialBytes;",
        "new ModelCache()": "new ModelCache();",
        "unknown phase": "await c.download('a', { onProgress: (p) => { if (p.phase === 'done') {} } });",
        "blobs as string[]": "const b: string[] = await c.blobs('a');",
        "evict without a target": "await c.evictLeastRecentlyUsed();",
    }
    lines = [f"import {{ ModelCache }} from '{module}';", "declare const c: ModelCache;",
             "export async function f(): Promise<void> {", *wrong.values(), "}"]
    misuse = tmp_path / "misuse.ts"
    misuse.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(["node", str(TSC), *TSC_FLAGS, str(misuse)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    flagged = {int(line.split("(", 1)[1].split(",", 1)[0]) for line in bad.stdout.splitlines() if "misuse.ts(" in line}
    for n, label in enumerate(wrong, start=4):
        assert n in flagged, f"tsc accepted {label}: {bad.stdout}"
