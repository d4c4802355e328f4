from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from teadist.base.progress import NullReporter
from teadist.pipelines.split import split_file
from tests.helpers import Result, write_random

COMMANDS = ["split", "assemble", "verify", "inspect", "list", "path", "rm", "fetch", "models", "du", "prune",
            "demo", "registry pin", "serve", "package-wasm", "release prepare", "release publish"]


def test_console_script_runs_split_assemble_verify(tmp_path: Path, console: Callable[..., Result]) -> None:
    src = tmp_path / "m.gguf"
    data = write_random(src, 123_457)
    result = console("split", src, "--chunk-size", "50k", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.out.strip() == str(tmp_path / "out" / "m.gguf.manifest.json")
    assert "3 chunks" in result.err
    result = console("assemble", tmp_path / "out" / "m.gguf.manifest.json",
                     env={"TEA_MODELS_DIR": str(tmp_path / "models")})
    assert result.code == 0, result.err
    assert (tmp_path / "models" / "m.gguf").read_bytes() == data
    assert console("verify", "m", env={"TEA_MODELS_DIR": str(tmp_path / "models")}).code == 0


def test_python_dash_m_and_version(console: Callable[..., Result]) -> None:
    proc = subprocess.run([sys.executable, "-m", "teadist", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("teadist ")


def test_installed_package_ships_the_schema(tmp_path: Path) -> None:
    code = "from teadist.formats.manifest import resource_dir; print(resource_dir())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    folder = Path(proc.stdout.strip())
    assert (folder / "schema" / "manifest-v1.schema.json").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str, console: Callable[..., Result]) -> None:
    result = console(*command.split(), "--help")
    assert result.code == 0
    assert "Example" in result.out


def test_usage_errors_exit_2(console: Callable[..., Result]) -> None:
    assert console("split").code == 2
    assert console("no-such-command").code == 2
    assert console("split", "x", "--chunk-size", "lots").code == 2


def test_errors_are_one_line_without_traceback(tmp_path: Path, console: Callable[..., Result]) -> None:
    result = console("assemble", tmp_path / "missing.manifest.json")
    assert result.code == 1
    assert result.err.startswith("error: manifest not found")
    assert "Traceback" not in result.err
    debug = console("--debug", "assemble", tmp_path / "missing.manifest.json")
    assert "Traceback" in debug.err


def test_quiet_and_json_keep_stderr_clean(tmp_path: Path, cli: Callable[..., Result]) -> None:
    src = tmp_path / "m.gguf"
    write_random(src, 1000)
    quiet = cli("split", src, "-s", "300", "-o", tmp_path / "o", "--quiet")
    assert quiet.code == 0 and quiet.err == ""
    as_json = cli("split", src, "-s", "300", "-o", tmp_path / "o", "--json", "-q")
    report = json.loads(as_json.out)
    assert report["kept"] == 4 and report["file"]["size"] == 1000


@pytest.fixture
def installed(tmp_path: Path, cli: Callable[..., Result], models_dir: Path) -> Path:
    src = tmp_path / "tiny.gguf"
    write_random(src, 5000)
    split_file(src, tmp_path / "chunks", NullReporter(), chunk_size=2000, name="tiny-model")
    result = cli("assemble", tmp_path / "chunks" / "tiny.gguf.manifest.json")
    assert result.code == 0, result.err
    return models_dir / "tiny.gguf"


def test_list_path_rm(installed: Path, cli: Callable[..., Result], models_dir: Path) -> None:
    listing = json.loads(cli("list", "--json").out)
    assert [m["name"] for m in listing["models"]] == ["tiny-model"]
    assert listing["models"][0]["last_used"]
    assert "tiny-model" in cli("list").out
    assert cli("path", "tiny-model").out.strip() == str(installed)
    assert cli("path", "tiny.gguf").out.strip() == str(installed)
    removed = cli("rm", "tiny-model")
    assert removed.code == 0 and removed.out.strip() == str(installed)
    assert not installed.exists()
    missing = cli("path", "tiny.gguf")
    assert missing.code == 1 and "not installed" in missing.err
    assert cli("rm", "tiny-model").code == 1


def test_path_follows_the_runtime_order(installed: Path, tmp_path: Path, cli: Callable[..., Result],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    appdir = tmp_path / "AppDir"
    bundled = appdir / "usr" / "share" / "models" / "tiny.gguf"
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(b"bundled")
    monkeypatch.setenv("APPDIR", str(appdir))
    assert json.loads(cli("path", "tiny-model", "--json").out) == {"path": str(bundled), "from": "APPDIR"}
    override = tmp_path / "override.gguf"
    override.write_bytes(b"o")
    monkeypatch.setenv("TEA_MODEL_PATH", str(override))
    assert json.loads(cli("path", "tiny-model", "--json").out) == {"path": str(override), "from": "TEA_MODEL_PATH"}


def test_list_shows_models_not_installed_by_teadist(cli: Callable[..., Result], models_dir: Path) -> None:
    models_dir.mkdir(parents=True)
    (models_dir / "hand-copied.gguf").write_bytes(b"GGUF")
    assert "hand-copied.gguf" in cli("list").out
    assert cli("list", "--json").code == 0


def test_cache_dir_flag_beats_environment(tmp_path: Path, cli: Callable[..., Result],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from teadist.settings import resolve_settings

    monkeypatch.setenv("TEA_MODELS_DIR", str(tmp_path / "env"))
    assert resolve_settings().models_dir == tmp_path / "env"
    assert resolve_settings(cache_dir=tmp_path / "flag").models_dir == tmp_path / "flag"
    monkeypatch.delenv("TEA_MODELS_DIR")
    assert resolve_settings().models_dir == Path.home() / ".cache" / "tea" / "models"


def test_demo_runs_the_main_job_offline(console: Callable[..., Result]) -> None:
    result = console("demo", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert len(report["steps"]) == 7
    assert any("resumed with Range bytes=" in step for step in report["steps"])
    assert not Path(report["home"]).exists()  # the temporary home is gone


def test_demo_keep_writes_only_into_a_new_or_empty_folder(tmp_path: Path, console: Callable[..., Result]) -> None:
    """Review 11b #7: --keep DIR wrote DIR/work/tiny-llama.gguf through a link planted there (a file
    outside DIR replaced), and --keep ~ would install into the real model cache."""
    keep = tmp_path / "keep"
    (keep / "work").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "model.gguf"
    outside.parent.mkdir()
    outside.write_text("my real model, not the demo's")
    (keep / "work" / "tiny-llama.gguf").symlink_to(outside)
    result = console("demo", "--keep", keep)
    assert outside.read_bytes() == b"my real model, not the demo's", "the demo wrote through the link"
    assert result.code == 2 and "--keep" in result.err, result.err
    assert sorted(p.name for p in keep.rglob("*")) == ["tiny-llama.gguf", "work"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "new" / "demo"):
        result = console("demo", "--keep", folder, "--json")
        assert result.code == 0, result.err
        assert (folder / ".cache" / "tea" / "models" / "tiny-llama.gguf").is_file()
