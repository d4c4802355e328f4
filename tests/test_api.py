"""The Python API (``teadist.fetch`` …): what programs call, the same code the CLI calls. It never prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import teadist
from teadist.base.progress import NullReporter
from teadist.errors import NotFoundError, TeadistError, UsageError
from teadist.pipelines.split import split_file
from tests.helpers import Result, write_random
from tests.servers import MirrorServer, file_sha256


@pytest.fixture
def chunked_mirror(tiny_model: Path, tmp_path: Path) -> Iterator[MirrorServer]:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=64 * 1024)
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        yield server


def test_fetch_in_a_fresh_interpreter_prints_the_path_and_nothing_else(chunked_mirror: MirrorServer,
                                                                        tiny_model: Path, tmp_path: Path) -> None:
    """Acceptance: python -c "import teadist; print(teadist.fetch(URL))" prints the path, nothing else."""
    url = chunked_mirror.url_for("tiny-llama.gguf.manifest.json")
    proc = subprocess.run([sys.executable, "-c", f"import teadist; print(teadist.fetch({url!r}))"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "TEA_MODELS_DIR": str(tmp_path / "models")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == f"{tmp_path / 'models' / 'tiny-llama.gguf'}\n"
    assert file_sha256(tmp_path / "models" / "tiny-llama.gguf") == file_sha256(tiny_model)
    assert any(r.path.endswith("part-00001-of-00008") for r in chunked_mirror.requests)


def test_import_teadist_is_light() -> None:
    code = ("import sys, teadist; print(sorted(m for m in ('numpy', 'gguf', 'huggingface_hub', 'github', "
            "'jsonschema', 'requests', 'tqdm', 'typer', 'teadist.api') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_progress_is_a_callback_and_nothing_is_printed(chunked_mirror: MirrorServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[str, int, int | None]] = []
    url = chunked_mirror.url_for("tiny-llama.gguf.manifest.json")
    from teadist.api import fetch_model

    result = fetch_model(url, cache_dir=tmp_path / "models",
                                     progress=lambda what, done, total: seen.append((what, done, total)))
    assert result.path == tmp_path / "models" / "tiny-llama.gguf"
    assert seen and max(done for _, done, _ in seen) > 0
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_model_path_split_assemble_verify_inspect(tiny_model: Path, tmp_path: Path, models_dir: Path) -> None:
    assert teadist.model_path("tiny-llama") is None
    split = teadist.split(tiny_model, tmp_path / "dist", chunk_size=100_000, name="tiny-llama")
    assert split.manifest_path == tmp_path / "dist" / "tiny-llama.gguf.manifest.json"
    built = teadist.assemble(split.manifest_path)
    assert built.path == models_dir / "tiny-llama.gguf" and not built.merged
    assert teadist.model_path("tiny-llama") == models_dir / "tiny-llama.gguf"
    assert teadist.model_path("tiny-llama.gguf") == models_dir / "tiny-llama.gguf"
    assert teadist.verify("tiny-llama").ok
    assert teadist.verify().ok
    assert teadist.inspect(built.path).architecture == "llama"


def test_errors_are_the_teadist_family(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        teadist.fetch("no-such-model-anywhere", cache_dir=tmp_path)
    with pytest.raises(UsageError):
        teadist.split(tmp_path / "x.gguf", tmp_path, format="gguf", chunk_size=1000)
    with pytest.raises(TeadistError):
        teadist.inspect(tmp_path / "missing.gguf")
    assert issubclass(teadist.TeadistError, Exception)


# -- the CLI presents what the API decides -------------------------------------------------------
COMMANDS = ["split", "assemble", "verify", "inspect", "list", "path", "rm", "fetch", "models", "du", "prune",
            "repair", "demo", "registry pin", "serve", "package-wasm", "release prepare", "release publish",
            "web-assets"]


def test_every_command_is_listed_here() -> None:
    import typer

    from teadist.cli import app

    def names(group: Any, prefix: str = "") -> set[str]:  # typer vendors click: groups by shape
        found: set[str] = set()
        for name, command in group.commands.items():
            found |= names(command, f"{prefix}{name} ") if hasattr(command, "commands") else {prefix + name}
        return found

    assert names(typer.main.get_command(app)) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_an_example_and_accepts_quiet(command: str, cli: Callable[..., Result]) -> None:
    result = cli(*command.split(), "--help")
    assert result.code == 0 and "Example" in result.out
    assert "--quiet" in result.out


@pytest.mark.parametrize("argv", [["split", "m.gguf", "--format", "gguf", "--chunk-size", "1M"],
                                  ["split", "m.gguf", "--shard-size", "1M"]])
def test_options_that_do_not_apply_are_refused(argv: list[str], tmp_path: Path, cli: Callable[..., Result],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_random(tmp_path / "m.gguf", 1000)
    result = cli(*argv)
    assert result.code == 2, result.err
    assert "applies to" in result.err
    assert os.listdir(tmp_path) == ["m.gguf"]


@pytest.mark.parametrize(("variable", "value"), [("TEA_OFFLINE", "maybe"), ("HF_HUB_OFFLINE", "2"),
                                                 ("TEADIST_DEBUG", "yes please")])
def test_flags_in_the_environment_that_do_not_parse_are_usage_errors(variable: str, value: str,
                                                                     cli: Callable[..., Result],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    result = cli("list")
    assert result.code == 2, result.err
    assert variable in result.err and value in result.err


def test_one_json_shape_for_errors(tmp_path: Path, cli: Callable[..., Result]) -> None:
    shapes = []
    for argv in (["path", "nothing-here", "--json"], ["assemble", str(tmp_path / "none.manifest.json"), "--json"],
                 ["split", "--json"], ["verify", "nothing-here", "--json"]):
        result = cli(*argv)
        assert result.code != 0
        error = json.loads(result.out)["error"]
        assert set(error) == {"kind", "message", "hint", "exit_code"}
        assert error["exit_code"] == result.code
        shapes.append(error["kind"])
    assert shapes[0] == shapes[1] == shapes[3] == "not_found"
    assert shapes[2] == "usage"


def test_not_found_is_exit_1_everywhere(tmp_path: Path, cli: Callable[..., Result]) -> None:
    for argv in (["path", "nothing-here"], ["rm", "nothing-here"], ["verify", "nothing-here"],
                 ["fetch", "nothing-here"], ["assemble", str(tmp_path / "none.manifest.json")],
                 ["inspect", str(tmp_path / "none.gguf")], ["verify", str(tmp_path / "none.gguf")]):
        result = cli(*argv)
        assert result.code == 1, (argv, result.err)
        assert result.err.startswith("error: ") and "Traceback" not in result.err


def test_one_json_shape_for_models_across_list_du_models_fetch(tiny_model: Path, tmp_path: Path,
                                                              cli: Callable[..., Result]) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=100_000)
    fetched = json.loads(cli("fetch", tmp_path / "dist" / "tiny-llama.gguf.manifest.json", "--json").out)
    listed = json.loads(cli("list", "--json").out)["models"][0]
    used = json.loads(cli("du", "--json").out)["models"][0]
    registry = json.loads(cli("models", "--json").out)["models"][0]
    for row in (fetched, listed, used, registry):
        assert {"name", "file", "size"} <= set(row), row
    assert fetched["name"] == listed["name"] == used["name"]
    assert fetched["file"] == listed["file"] == used["file"] == "tiny-llama.gguf"
    assert fetched["size"] == listed["size"] == used["size"] == tiny_model.stat().st_size
