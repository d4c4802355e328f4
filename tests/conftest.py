"""Shared fixtures: an isolated HOME/cache/env for every test, CLI runners, small models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teadist.cli import main
from teadist.formats.tinymodel import make_tiny_model
from tests.helpers import Result, write_random
from tests.servers import HubServer, MirrorServer

ISOLATED_VARS = (
    "TEA_MODELS_DIR", "TEA_MODEL_PATH", "APPDIR", "TEA_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "HF_ENDPOINT", "TEADIST_DEBUG",
    "GITHUB_API_URL", "HF_HOME",
)
TEADIST_BIN = Path(sys.executable).parent / "teadist"
REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The scheduler's wall-clock tests (marker ``timing``) get two more tries where
    pytest-rerunfailures is installed (the test command's venv): a scheduler that decides wrong
    fails all three, a burst of load on a 2-core machine seldom spoils three in a row."""
    if config.pluginmanager.hasplugin("rerunfailures"):
        for item in items:
            if item.get_closest_marker("timing") is not None:
                item.add_marker(pytest.mark.flaky(reruns=2))


def _untracked_files() -> set[str] | None:
    """Files in the working tree git does not know and does not ignore (None outside a checkout)."""
    try:
        proc = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(proc.stdout.decode("utf-8", "replace").split("\0")) - {""} if proc.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def working_tree_untouched() -> Iterator[None]:
    """Tests never write into the working tree: no new untracked file appears during the session."""
    before = _untracked_files()
    yield
    after = _untracked_files()
    if before is not None and after is not None:
        assert not after - before, f"tests wrote into the working tree: {sorted(after - before)}"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and model cache, and no tokens or endpoints from outside."""
    home = tmp_path_factory.mktemp("home")
    for var in ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / ".hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TEADIST_GITHUB_WRITE_INTERVAL", "0")  # the loopback GitHub needs no throttling
    return home


@pytest.fixture
def models_dir(isolated_env: Path) -> Path:
    """The default cache, as resolved from the isolated HOME."""
    return isolated_env / ".cache" / "tea" / "models"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the CLI in-process through ``main`` (exit codes and error handling included)."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def console() -> Callable[..., Result]:
    """Run the installed ``teadist`` console script as a subprocess."""

    def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        proc = subprocess.run([str(TEADIST_BIN), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@pytest.fixture
def make_file(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    def make(name: str, size: int) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        write_random(path, size, seed=size)
        return path

    yield make


SECRET = "hf_MARKER_TOKEN_do_not_leak_123"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEADIST_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("TEADIST_STALL_TIMEOUT", "1.5")


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path) -> Path:
    """A folder the mirror/CDN serves, holding a copy of the tiny model."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    return folder


@pytest.fixture
def mirror(served: Path) -> Iterator[MirrorServer]:
    with MirrorServer(served) as server:
        assert isinstance(server, MirrorServer)
        yield server


@pytest.fixture
def hub(mirror: MirrorServer, served: Path, monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> Iterator[HubServer]:
    """A Hub-compatible server redirecting file GETs to the mirror as a CDN; HF_ENDPOINT points at it."""
    with HubServer(cdn=mirror) as server:
        assert isinstance(server, HubServer)
        server.add_repo("org/repo", {"tiny.gguf": served / "tiny.gguf"}, commit="c" * 40)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", SECRET)
        yield server


def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``3m``) under ``tmp_path`` for a fixture to yield; skips the test where
    mounting is refused."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (disk-full and fit tests); skipped where mounting is refused."""
    yield from mounted_tmpfs(tmp_path, "3m")
