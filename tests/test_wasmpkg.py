"""`teadist package-wasm` and `check_tarball` (reviews 11a #9, 11b #3 #4 #5): hidden files stay out
like npm leaves them out, files are read only from inside the input even while its folders are
swapped, and a tarball whose links lead out of its folder (also through links along an entry's
path) is refused — in linear time."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TEADIST_BIN
from tests.helpers import Result

TOP = "tea-wasm-llm-1.2.0"


def _pkg(root: Path) -> Path:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "tea_wasm_llm_bg.wasm").write_bytes(b"\0asm" + os.urandom(2000))
    (pkg / "tea_wasm_llm.js").write_text("export {};\n")
    (pkg / "package.json").write_text('{"name": "tea-wasm-llm"}\n')
    return pkg


def test_hidden_files_are_left_out_like_npm(tmp_path: Path, cli: Callable[..., Result]) -> None:
    pkg = _pkg(tmp_path)
    (pkg / ".env").write_text("HF_TOKEN=hf_MARKER_secret\n")
    (pkg / ".npmrc").write_text("//registry.npmjs.org/:_authToken=npm_MARKER\n")
    (pkg / ".git").mkdir()
    (pkg / ".git" / "config").write_text("[remote]\n url = https://user:pw@example.org/x\n")
    (pkg / ".gitignore").write_text("*\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / ".DS_Store").write_bytes(b"\0\1")
    (pkg / "sub" / "a.js").write_text("1\n")
    result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result.err
    with tarfile.open(tmp_path / "o" / f"{TOP}.tar.gz") as tar:
        names = tar.getnames()
        data = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert not [n for n in names if any(part.startswith(".") for part in n.split("/"))], names
    assert f"{TOP}/sub/a.js" in names
    assert b"MARKER" not in data and b"user:pw" not in data
    assert not [f for f in json.loads(result.out)["files"] if "/." in f["path"]]


def test_a_folder_swapped_for_a_link_while_packing_is_never_read_through(tmp_path: Path) -> None:
    """pkg/z is swapped for a link to a folder outside the input once the tarball is being written
    (a big file packed first leaves the time): the tarball never holds the outside file."""
    pkg = _pkg(tmp_path)
    with open(pkg / "a_big.wasm", "wb") as fh:  # packed before z/ (names are sorted)
        fh.write(os.urandom(40 * 1024 * 1024))
    (pkg / "z").mkdir()
    (pkg / "z" / "secret.js").write_text("export const x = 1;\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.js").write_text("SSH PRIVATE KEY (outside the input)\n")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([str(TEADIST_BIN), "package-wasm", str(pkg), "--version", "1.2.0", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 1 << 20 for p in out.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.rename(pkg / "z", tmp_path / "z.moved")
    os.symlink(outside, pkg / "z")
    swapped_while_running = proc.poll() is None
    _, err = proc.communicate(timeout=120)
    assert swapped_while_running, "package-wasm finished before the swap: the fault did not happen"
    tarball = out / f"{TOP}.tar.gz"
    if proc.returncode == 0:
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(f"{TOP}/z/secret.js")
            assert member is not None
            assert member.read() == b"export const x = 1;\n", "packed a file from outside the input"
    else:
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert not tarball.exists()


def _tarball(path: Path, entries: list[tuple[str, bytes, str]]) -> Path:
    """entries: (name, type, link target or file content)."""
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind != tarfile.REGTYPE else 0o644
            data = b""
            if kind == tarfile.SYMTYPE:
                info.linkname = value
            elif kind == tarfile.REGTYPE:
                data = value.encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


ESCAPE_THROUGH_A_LINKED_PARENT = [
    (TOP, tarfile.DIRTYPE, ""),
    (f"{TOP}/x.js", tarfile.REGTYPE, "ok\n"),
    (f"{TOP}/a", tarfile.DIRTYPE, ""),
    (f"{TOP}/a/b", tarfile.SYMTYPE, ".."),  # really TOP
    (f"{TOP}/a/b/l", tarfile.SYMTYPE, "../.."),  # really TOP/l -> the folder above the extraction
    (f"{TOP}/l/pwned.txt", tarfile.REGTYPE, "written outside the extraction folder\n"),
]


def test_check_tarball_follows_links_along_an_entry_path(tmp_path: Path) -> None:
    """Review 11b #3: an extractor that follows links writes pwned.txt outside its folder."""
    from teadist.errors import UsageError
    from teadist.release.wasmpkg import check_tarball

    path = _tarball(tmp_path / f"{TOP}.tar.gz", ESCAPE_THROUGH_A_LINKED_PARENT)
    extract = tmp_path / "extract"
    extract.mkdir()
    with tarfile.open(path) as tar:  # the fault is real: a link-following extractor escapes
        tar.extractall(extract, filter="fully_trusted")
    assert (tmp_path / "pwned.txt").exists()
    with pytest.raises(UsageError):
        check_tarball(path)


def test_prepare_refuses_a_tarball_that_escapes_before_writing(tmp_path: Path, tiny_model: Path,
                                                              cli: Callable[..., Result]) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    _tarball(out / f"{TOP}.tar.gz", ESCAPE_THROUGH_A_LINKED_PARENT)
    config = tmp_path / "release.json"
    config.write_text(json.dumps({"models": [{"file": str(tiny_model), "name": "tiny"}], "chunk_size": "200k"}))
    result = cli("release", "prepare", "--tag", "v1.2.0", "--repo", "tea/tea", "--config", config, "--out", out)
    assert result.code == 2, result.err
    assert sorted(p.name for p in out.iterdir()) == [f"{TOP}.tar.gz"]


@pytest.mark.parametrize("case", ["file-as-folder", "link-as-folder-then-file"])
def test_check_tarball_refuses_entries_below_a_file_or_a_link(case: str, tmp_path: Path) -> None:
    from teadist.errors import UsageError
    from teadist.release.wasmpkg import check_tarball

    entries = [(TOP, tarfile.DIRTYPE, ""), (f"{TOP}/x.js", tarfile.REGTYPE, "ok\n")]
    if case == "file-as-folder":
        entries.append((f"{TOP}/x.js/y.js", tarfile.REGTYPE, "1\n"))
    else:
        entries += [(f"{TOP}/d", tarfile.DIRTYPE, ""), (f"{TOP}/s", tarfile.SYMTYPE, "d"),
                    (f"{TOP}/s/y.js", tarfile.REGTYPE, "1\n")]
    with pytest.raises(UsageError):
        check_tarball(_tarball(tmp_path / "t.tar.gz", entries))


def test_check_tarball_is_fast_on_a_huge_link_target(tmp_path: Path) -> None:
    """Review 11b #5: a 1 KB tarball whose link target is 400,000 bytes of './' cost seconds."""
    from teadist.errors import UsageError
    from teadist.release.wasmpkg import check_tarball

    path = _tarball(tmp_path / "t.tar.gz", [(TOP, tarfile.DIRTYPE, ""), (f"{TOP}/x.js", tarfile.REGTYPE, "ok\n"),
                                           (f"{TOP}/l.js", tarfile.SYMTYPE, "./" * 200_000 + "x.js")])
    assert path.stat().st_size < 4096
    start = time.monotonic()
    with pytest.raises(UsageError):
        check_tarball(path)
    assert time.monotonic() - start < 1.0
    # within the limit, many components resolve in linear time
    ok = _tarball(tmp_path / "ok.tar.gz", [(TOP, tarfile.DIRTYPE, ""), (f"{TOP}/x.js", tarfile.REGTYPE, "ok\n"),
                                          (f"{TOP}/l.js", tarfile.SYMTYPE, "./" * 2000 + "x.js")])
    start = time.monotonic()
    assert f"{TOP}/l.js" in check_tarball(ok)
    assert time.monotonic() - start < 1.0


# -- issue 13: the tarball carries the browser model cache ------------------------------------------
WEB_TOP = f"{TOP}/teadist-web"


def test_the_tarball_carries_the_browser_model_cache_in_the_layout_its_example_expects(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    from teadist.release.wasmpkg import check_tarball
    from teadist.web import asset_files

    pkg = _pkg(tmp_path)
    first = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o1", "--json")
    assert first.code == 0, first.err
    tarball = tmp_path / "o1" / f"{TOP}.tar.gz"
    names = check_tarball(tarball)
    with tarfile.open(tarball) as tar:
        for rel, source in asset_files().items():
            member = tar.getmember(f"{WEB_TOP}/{rel}")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert data == source.read_bytes() and member.mode == 0o644, rel
        assert tar.getmember(WEB_TOP).isdir() and tar.getmember(f"{WEB_TOP}/examples").isdir()
        page = tar.extractfile(f"{WEB_TOP}/examples/index.html").read().decode()  # type: ignore[union-attr]
    # the example imports ../model-cache.js: it resolves to the module beside it in the tarball
    assert "from '../model-cache.js'" in page and f"{WEB_TOP}/model-cache.js" in names
    assert not [n for n in names if n.startswith(WEB_TOP) and ("__" in n or n.endswith(".py"))], names
    listed = {f["path"] for f in json.loads(first.out)["files"]}
    assert {f"{WEB_TOP}/{rel}" for rel in asset_files()} <= listed
    # same inputs, same bytes, also with the module inside
    second = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o2", "--json")
    assert json.loads(second.out)["sha256"] == json.loads(first.out)["sha256"]


def test_a_package_with_its_own_teadist_web_folder_is_refused_before_writing(
        tmp_path: Path, cli: Callable[..., Result]) -> None:
    pkg = _pkg(tmp_path)
    (pkg / "teadist-web").mkdir()
    (pkg / "teadist-web" / "model-cache.js").write_text("export const stale = 1;\n")
    result = cli("package-wasm", pkg, "--version", "1.2.0", "--out", tmp_path / "o")
    assert result.code == 2 and "teadist-web" in result.err, result.err
    assert not (tmp_path / "o" / f"{TOP}.tar.gz").exists()


def test_bundled_files_installed_through_links_are_packed_as_files(tmp_path: Path) -> None:
    from teadist.release.wasmpkg import package_wasm

    real = tmp_path / "store" / "model-cache.js"
    real.parent.mkdir()
    real.write_text("export const real = 1;\n")
    installed = tmp_path / "site-packages" / "model-cache.js"
    installed.parent.mkdir()
    installed.symlink_to(real)
    report = package_wasm(_pkg(tmp_path), "1.2.0", tmp_path / "o", bundled={"model-cache.js": installed})
    with tarfile.open(report.path) as tar:
        member = tar.getmember(f"{WEB_TOP}/model-cache.js")
        assert member.isfile() and tar.extractfile(member).read() == real.read_bytes()  # type: ignore[union-attr]
