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
from tests.test_readme import sandbox  # noqa: F401  (a registry of tiny models on a loopback Hub)


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


# -- bad input to the API is a TeadistError; arguments beat the environment ---------------------------
@pytest.mark.parametrize("call", [
    lambda tmp: teadist.fetch(tmp / "dist" / "x.manifest.json"),  # a Path, where a path is documented
    lambda tmp: teadist.fetch(42),  # type: ignore[arg-type]
    lambda tmp: teadist.fetch("stories260k", cache_dir=tmp / "afile"),  # a file where the cache belongs
    lambda tmp: teadist.model_path("x", cache_dir=tmp / "afile"),
    lambda tmp: teadist.inspect("/"),
    lambda tmp: teadist.split(tmp / "afile", tmp / "o", chunk_size="1M"),  # type: ignore[arg-type]
], ids=["fetch-Path", "fetch-int", "cache_dir-is-a-file", "model_path-cache_dir-is-a-file", "inspect-a-folder",
        "split-chunk-size-str"])
def test_api_failures_are_teadist_errors(tmp_path: Path, call: Callable[[Path], object]) -> None:
    write_random(tmp_path / "afile", 1000)
    with pytest.raises(TeadistError):
        call(tmp_path)


def test_fetch_takes_a_path_object(tmp_path: Path, tiny_model: Path) -> None:
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
    got = teadist.fetch(tmp_path / "dist" / "tiny-llama.gguf.manifest.json", cache_dir=tmp_path / "c")
    assert got == tmp_path / "c" / "tiny-llama.gguf"


def test_an_api_argument_beats_a_bad_environment_value(tmp_path: Path, tiny_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """flag > environment > default: the caller passed offline=False, so TEA_OFFLINE is not read."""
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
    monkeypatch.setenv("TEA_OFFLINE", "maybe")
    assert teadist.fetch(str(tmp_path / "dist" / "tiny-llama.gguf.manifest.json"),
                         cache_dir=tmp_path / "c", offline=False).is_file()


def test_model_path_reads_no_variable_it_does_not_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEADIST_DEBUG", "2")
    monkeypatch.setenv("TEADIST_RETRIES", "many")
    assert teadist.model_path("nothing-here", cache_dir=tmp_path) is None


# -- the CLI: one line, the right exit code --------------------------------------------------------
def test_a_file_where_the_cache_folder_belongs_is_said(tmp_path: Path, console: Callable[..., Result]) -> None:
    write_random(tmp_path / "afile", 10)
    for argv in (["list"], ["fetch", "stories260k"], ["path", "x"]):
        got = console(*argv, env={"TEA_MODELS_DIR": str(tmp_path / "afile")})
        assert got.code == 2 and "not a folder" in got.err and str(tmp_path / "afile") in got.err, \
            (argv, got.code, got.out, got.err)
        assert "Traceback" not in got.err


@pytest.mark.parametrize("argv", [["web-assets", ""], ["list", "--cache-dir", ""], ["path", ""],
                                  ["split", ""]])
def test_an_empty_string_is_no_folder_or_name(argv: list[str], tmp_path: Path, console: Callable[..., Result],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    got = console(*argv)
    assert got.code == 2 and got.err.startswith("error: "), (got.code, got.err)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,env", [(("list",), {"TEA_MODELS_DIR": "~nosuchuser_teadist/m"}),
                                      (("list", "--cache-dir", "~nosuchuser_teadist/m"), {})],
                         ids=["env", "flag"])
def test_a_cache_dir_of_an_unknown_users_home_is_one_line(args: tuple[str, ...], env: dict[str, str],
                                                          console: Callable[..., Result]) -> None:
    got = console(*args, env=env)
    assert "Traceback" not in got.err and got.code == 2, got.err[-300:]
    assert "nosuchuser_teadist" in got.err


def test_output_to_a_closed_stdout_is_an_error(tmp_path: Path) -> None:
    from tests.conftest import TEADIST_BIN

    proc = subprocess.run(f"'{TEADIST_BIN}' models >&-", shell=True, capture_output=True, text=True,
                          env={**os.environ, "TEA_MODELS_DIR": str(tmp_path)})
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("group", ["registry", "release"])
def test_command_groups_have_an_example(group: str, cli: Callable[..., Result]) -> None:
    result = cli(group, "--help")
    assert result.code == 0 and "Example" in result.out, result.out


def test_a_verify_failure_with_json_has_the_error_shape(tmp_path: Path, tiny_model: Path,
                                                        cli: Callable[..., Result]) -> None:
    """Every error, on every command, is {"error": {kind, message, hint, exit_code}}."""
    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=200_000)
    chunk = next((tmp_path / "dist").glob("*.part-00001-*"))
    data = bytearray(chunk.read_bytes())
    data[10] ^= 1
    chunk.write_bytes(bytes(data))
    got = cli("verify", tmp_path / "dist", "--json")
    assert got.code == 3
    answer = json.loads(got.out)
    assert answer["error"]["kind"] == "integrity" and answer["error"]["exit_code"] == 3, got.out[:300]
    assert [r["status"] for r in answer["items"]].count("MISMATCH") == 1


MODEL_FIELDS = {"name", "file", "size", "sha256", "path"}


@pytest.mark.usefixtures("sandbox")
def test_a_model_has_the_same_fields_in_list_du_models_fetch(cli: Callable[..., Result]) -> None:
    """README: name, file, size, sha256, path in list, du, models and fetch — the same values."""
    fetched = json.loads(cli("fetch", "phi-4-mini", "--json", "-q").out)
    listed = json.loads(cli("list", "--json").out)["models"][0]
    used = json.loads(cli("du", "--json").out)["models"][0]
    registry_row = next(m for m in json.loads(cli("models", "--json").out)["models"] if m["cached"])
    for label, row in (("fetch", fetched), ("list", listed), ("du", used), ("models", registry_row)):
        assert set(row) >= MODEL_FIELDS, f"{label} --json lacks {sorted(MODEL_FIELDS - set(row))}"
        assert {k: row[k] for k in MODEL_FIELDS - {"name"}} == {k: fetched[k] for k in MODEL_FIELDS - {"name"}}, label
    assert "filename" not in listed
