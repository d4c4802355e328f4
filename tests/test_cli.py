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


# -- issue 10, defect 13: records and kept shards are input too ----------------------------------
@pytest.fixture
def kept_shards(tmp_path: Path, cli: Callable[..., Result], models_dir: Path) -> list[Path]:
    from teadist.formats.tinymodel import make_tiny_model
    from teadist.pipelines.gguf_split import split_gguf

    src = make_tiny_model(tmp_path / "src" / "k.gguf", seed=4, n_embd=96, n_layer=3)
    result = split_gguf(src, tmp_path / "web", NullReporter(), shard_size=150_000)
    fetched = cli("fetch", result.manifest_path, "--keep-shards")
    assert fetched.code == 0, fetched.err
    return [models_dir / c.name for c in result.manifest.chunks]


def test_du_list_and_prune_count_every_kept_shard(kept_shards: list[Path], cli: Callable[..., Result],
                                                  models_dir: Path) -> None:
    total = sum(p.stat().st_size for p in kept_shards)
    usage = json.loads(cli("du", "--json").out)
    assert usage["total"] == total, usage
    listing = json.loads(cli("list", "--json").out)
    assert [m["size"] for m in listing["models"]] == [total]
    pruned = cli("prune", "--max-size", "1", "--json")
    assert pruned.code == 0
    assert sorted(json.loads(pruned.out)["removed"]) == sorted(str(p) for p in kept_shards)
    assert not [p for p in kept_shards if p.exists()]


def test_du_counts_staging(tiny_model: Path, tmp_path: Path, cli: Callable[..., Result], models_dir: Path) -> None:
    """An interrupted chunked fetch leaves verified chunks waiting: du counts them as partial downloads."""
    from tests.servers import Fault, MirrorServer

    split_file(tiny_model, tmp_path / "dist", NullReporter(), chunk_size=64 * 1024)
    with MirrorServer(tmp_path / "dist") as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault("status", status=404, path="part-00008-of-00008", times=100))
        result = cli("fetch", server.url_for("tiny-llama.gguf.manifest.json"), "--jobs", "1")
    assert result.code == 1 and "404" in result.err
    usage = json.loads(cli("du", "--json").out)
    assert usage["partials"] >= 7 * 64 * 1024, usage


def test_an_interrupted_rm_of_kept_shards_can_be_finished(kept_shards: list[Path], cli: Callable[..., Result],
                                                          models_dir: Path) -> None:
    kept_shards[0].unlink()  # as if `rm` was killed after its first unlink
    listing = json.loads(cli("list", "--json").out)
    assert listing["models"], "the record of the half-removed model is invisible"
    result = cli("rm", "k")
    assert result.code == 0, result.err
    assert not [p for p in kept_shards if p.exists()]
    assert [p.relative_to(models_dir) for p in models_dir.rglob("*") if p.is_file()] == []


def test_lock_files_do_not_pile_up(installed: Path, cli: Callable[..., Result], models_dir: Path) -> None:
    assert cli("rm", "tiny-model").code == 0
    assert cli("prune", "--partials").code == 0
    assert [p.relative_to(models_dir) for p in models_dir.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("damage", [{"size": "big"}, {"filename": "../x.gguf"}, {"shards": 5}, "not json"])
def test_a_damaged_record_is_reported_not_a_crash(damage: object, installed: Path, cli: Callable[..., Result],
                                                  models_dir: Path) -> None:
    record = models_dir / ".teadist" / "records" / "tiny.gguf.json"
    if isinstance(damage, dict):
        record.write_text(json.dumps({**json.loads(record.read_text()), **damage}))
    else:
        record.write_text(str(damage))
    for command in (["list"], ["list", "--json"], ["du"], ["verify"], ["prune", "--max-size", "1G"]):
        result = cli(*command)
        assert "Traceback" not in result.err and result.code in (0, 3), (command, result.err)
    whole = cli("verify")
    assert whole.code == 3 and "tiny.gguf.json" in whole.out, whole.out
    assert "tiny.gguf.json" in cli("list").out
    assert cli("rm", "tiny.gguf").code == 0
    assert cli("verify").code == 0


def test_a_truncated_kept_shard_is_never_counted_as_cached(kept_shards: list[Path], tmp_path: Path,
                                                          cli: Callable[..., Result]) -> None:
    """Issue 10, defect 2: the cache check of kept shards looks at each shard, not only its existence."""
    victim = kept_shards[2]
    good = victim.read_bytes()
    victim.write_bytes(good[:-10])
    again = cli("fetch", tmp_path / "web" / "k.gguf.manifest.json", "--keep-shards", "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["already_present"] is False
    assert victim.read_bytes() == good


def test_debug_tracebacks_mask_secrets(tmp_path: Path, console: Callable[..., Result]) -> None:
    """Issue 10, defect 6: --debug shows the traceback, never the token in it."""
    secret = "hf_DEBUG_MARKER_4242"
    env = {"HF_TOKEN": secret, "GITHUB_TOKEN": "ghp_DEBUG_MARKER_4343"}
    missing = console("--debug", "fetch", tmp_path / secret / "m.manifest.json", env=env)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    oserror = console("--debug", "fetch", "hf://org/repo/x.gguf", "--cache-dir", blocked / secret, env=env)
    for result in (missing, oserror):
        assert result.code == 1
        assert "Traceback" in result.err
        assert secret not in result.out + result.err, result.err


@pytest.mark.parametrize(("variable", "value"), [("TEADIST_STALL_TIMEOUT", "-1"), ("TEADIST_STALL_TIMEOUT", "abc"),
                                                 ("TEADIST_STALL_TIMEOUT", "nan"), ("TEADIST_RETRY_BACKOFF", "-1"),
                                                 ("TEADIST_RETRIES", "0"), ("TEADIST_PARALLEL_MIN", "-5")])
def test_bad_numbers_in_the_environment_are_usage_errors(variable: str, value: str, tmp_path: Path,
                                                         console: Callable[..., Result]) -> None:
    """Issue 10, defect 9: one line naming the variable, exit 2, before any work."""
    from tests.servers import Fault, MirrorServer

    src = tmp_path / "served" / "m.gguf"
    src.parent.mkdir()
    write_random(src, 5000)
    split_file(src, tmp_path / "served", NullReporter(), chunk_size=2000)
    with MirrorServer(tmp_path / "served") as server:
        assert isinstance(server, MirrorServer)
        server.add_fault(Fault("status", status=503, path="part-00001-of-00003"))  # a retry, with backoff
        result = console("fetch", server.url_for("m.gguf.manifest.json"), env={variable: value})
    assert result.code == 2, result.err
    assert variable in result.err and "Traceback" not in result.err


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


def test_control_and_bidi_characters_are_escaped_in_every_printed_line(tmp_path: Path,
                                                                       cli: Callable[..., Result]) -> None:
    """Review finding 19: metadata and records are input; an ESC sequence, a C1 control or a bidi
    override (U+202E) in them must never reach the terminal raw — in results or in messages."""
    import struct

    from tests.ggufcraft import STRING, good_two_tensors, gstr

    hostile = "evil\x1b]0;title\x07\x1b[31m\x9b2J\u202egguf.exe"
    crafted = good_two_tensors()
    crafted.kvs.append(gstr("general.name") + struct.pack("<I", STRING) + gstr(hostile))
    result = cli("inspect", crafted.write(tmp_path / "h.gguf"))
    assert result.code == 0, result.err
    assert "evil" in result.out
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in result.out + result.err, repr(raw)
    assert "\\u202e" in result.out


@pytest.mark.parametrize("name", ["a\u202egguf.exe", "a\x85b.gguf", "x\u2066y.gguf", "z\x9b.gguf"])
def test_c1_controls_and_bidi_overrides_are_refused_in_file_names(name: str) -> None:
    """Review finding 19: such names display as something else; they are never file names."""
    from teadist.base.fsutil import plain_filename_problem

    assert plain_filename_problem(name) is not None
