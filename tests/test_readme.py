"""The README tells the truth and stays true: its two commands are what CI runs, every `teadist`
command line in its examples runs against loopback servers, every option and environment variable
is documented, and the manifest example is what `split` writes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from teadist.formats.manifest import FileRecord, HfSource, Manifest, write_manifest
from teadist.formats.tinymodel import make_tiny_model
from teadist.sources import registry
from tests.conftest import TEADIST_BIN
from tests.helpers import Result
from tests.servers import GitHubServer, HubServer, MirrorServer, file_sha256

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")
RELEASE_PREFIX = "https://github.com/OWNER/REPO/releases/download/v1.2.0"
MAINTAINERS = "## Maintaining: registry, serve, packages, releases"
GH_TOKEN = "ghp_readme_example_token_1234"


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def teadist_lines(block: str) -> list[str]:
    """Each `teadist …` command of a bash block (also one inside ``$(…)``), comments dropped."""
    found = []
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        inner = re.search(r'\$\((teadist [^)]*)\)', line)
        if inner:
            found.append(inner.group(1))
        elif line.startswith("teadist "):
            found.append(line)
    return found


# -- the two commands ----------------------------------------------------------------------------
def test_the_two_commands_are_exactly_what_ci_runs() -> None:
    first = blocks("bash")[0].strip().splitlines()
    assert first == ["python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/teadist demo",
                     "bash scripts/test.sh"]
    ci_run = (ROOT / ".ci" / "run").read_text("utf-8")
    commands = [line for line in ci_run.splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands == first
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text("utf-8")
    assert [line.strip().removeprefix("run: ") for line in workflow.splitlines()
            if line.strip().startswith("run: ")] == first
    test_sh = (ROOT / "scripts" / "test.sh").read_text("utf-8")
    assert "pip install --quiet -e '.[test]'" in test_sh and "npm ci" in test_sh and "chromium" in test_sh
    assert "constraints/floors.txt" in test_sh and test_sh.rstrip().endswith(".venv/bin/python -m pytest")


# -- everything documented -----------------------------------------------------------------------
def _commands() -> dict[str, list[str]]:
    import typer

    from teadist.cli import app

    out: dict[str, list[str]] = {}

    def walk(group: Any, prefix: str = "") -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                out[prefix + name] = [o for p in command.params if p.param_type_name == "option"
                                      for o in [*p.opts, *p.secondary_opts]]

    walk(typer.main.get_command(app))
    return out


def test_every_command_and_option_is_documented() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `teadist ")]
    for command, options in _commands().items():
        mine = [r for r in rows if re.match(rf"\| `teadist {re.escape(command)}[ `]", r)]
        assert mine, f"the README's command tables have no row for `teadist {command}`"
        text = " ".join(mine)
        for option in options:
            if option in ("--help", "-h", "--quiet", "-q", "--json", "--cache-dir"):  # documented once, for all
                assert f"`{option}`" in README or f"{option}," in README or f"{option} " in README, option
                continue
            # a short option counts only as itself: `-j` in the row, not the `-j` inside `--jobs`
            assert re.search(rf"(?<![-\w]){re.escape(option)}(?![\w-])", text), \
                f"`teadist {command}`: {option} is not in its README row"


def test_every_environment_variable_is_documented() -> None:
    read: set[str] = set()
    pattern = re.compile(r'(?:environ\.get|env\.get|env_flag\((?:os\.environ|env),|_number\((?:self\.)?env,)'
                         r'\s*\(?\s*"([A-Z][A-Z0-9_]+)"')
    for path in (ROOT / "teadist").rglob("*.py"):
        read |= set(pattern.findall(path.read_text("utf-8")))
    assert {"TEA_MODELS_DIR", "TEADIST_DEBUG", "TEA_OFFLINE", "GITHUB_API_URL"} <= read  # the scan works
    table = README.split("| environment | meaning |", 1)[1].split("\n\n", 1)[0]
    missing = sorted(v for v in read if f"`{v}" not in table)
    assert missing == [], f"not in the README's environment table: {missing}"


def test_the_manifest_example_is_what_split_writes(tmp_path: Path, cli: Callable[..., Result],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "tiny-llama.gguf")
    assert cli("split", "tiny-llama.gguf", "--chunk-size", "300k", "--base-url", RELEASE_PREFIX, "--out", "dist",
               "-q").code == 0
    written = json.loads((tmp_path / "dist" / "tiny-llama.gguf.manifest.json").read_text())
    example = next(json.loads(b) for b in blocks("json") if '"schema_version"' in b and '"chunks"' in b)
    assert example == written, "regenerate the README's manifest example from `teadist split` (see its text)"


# -- every example runs ----------------------------------------------------------------------------
def _entry(name: str, tag: str | None, default: bool | None, model: Path | None, repo: str) -> Manifest:
    size = model.stat().st_size if model is not None else None
    sha = file_sha256(model) if model is not None else None
    file_name = {"phi-4-mini": f"microsoft_Phi-4-mini-instruct-{(tag or '').upper()}.gguf",
                 "gemma-3n-e4b": "gemma-3n-E4B-it-Q4_K_M.gguf"}[name]
    return Manifest(name=name, tag=tag, default_tag=default, file=FileRecord(file_name, size, sha), format="single",
                    sources=[HfSource(repo, file_name)])


@pytest.fixture
def sandbox(tmp_path: Path, hub: HubServer, served: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working folder and a registry like the real one, whose models are tiny and live on the loopback
    Hub: phi-4-mini (q3_k_s, the default, and q4_k_m), gemma-3n-e4b (unpinned)."""
    work = tmp_path / "work"
    (work / "manifests" / "models").mkdir(parents=True)
    models = {}
    for seed, (name, tag) in enumerate([("phi-4-mini", "q3_k_s"), ("phi-4-mini", "q4_k_m"),
                                        ("gemma-3n-e4b", "q4_k_m")]):
        entry = _entry(name, tag, tag == "q3_k_s" if name == "phi-4-mini" else True, None, "")
        model = make_tiny_model(served / entry.file.name, seed=seed + 1)
        models[entry.file.name] = model
        repo = "bartowski/phi" if name == "phi-4-mini" else "unsloth/gemma"
        pinned = _entry(name, tag, entry.default_tag, model if name == "phi-4-mini" else None, repo)
        write_manifest(pinned, work / "manifests" / "models" / f"{name}-{tag}.json")
    hub.add_repo("bartowski/phi", {n: p for n, p in models.items() if "Phi" in n}, commit="d" * 40)
    hub.add_repo("unsloth/gemma", {n: p for n, p in models.items() if "gemma" in n}, commit="e" * 40)
    hub.add_repo("ggml-org/tiny-llamas", {"stories260K.gguf": served / "tiny.gguf"}, commit="f" * 40)
    shutil.copy(ROOT / "manifests" / "release.json", work / "manifests" / "release.json")
    (work / "pkg").mkdir()
    (work / "pkg" / "tea_wasm_llm.js").write_text("export default 1;\n")
    (work / "pkg" / "tea_wasm_llm_bg.wasm").write_bytes(b"\0asm\1\0\0\0")
    make_tiny_model(work / "model.gguf", seed=9)
    monkeypatch.setattr(registry, "registry_dir", lambda: work / "manifests" / "models")
    registry._entries.cache_clear()
    monkeypatch.chdir(work)
    yield work
    registry._entries.cache_clear()


def _serve_and_stop(argv: list[str]) -> None:
    """`teadist serve` runs until interrupted: it must print its URL, then stop cleanly on Ctrl-C."""
    argv = [("0" if a == "8000" else a) for a in argv]  # any free port
    # Ctrl-C as a terminal delivers it: the server starts with SIGINT at its default even where the
    # suite itself runs with SIGINT ignored (a background job of a non-interactive shell — the
    # floors job in scripts/test.sh, or a CI started with nohup — whose children inherit the ignore)
    default_sigint = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", default_sigint, str(TEADIST_BIN), *argv[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else url
        import urllib.request

        with urllib.request.urlopen(url + "/_teadist/model-cache.js", timeout=30) as answer:
            assert answer.status == 200  # it serves
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_every_example_in_the_readme_runs(sandbox: Path, cli: Callable[..., Result],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bash = blocks("bash")[1:]  # the two commands apart
    maintainers = blocks("bash", README.split(MAINTAINERS, 1)[1].split("\n## ", 1)[0])
    assert maintainers and all(b in bash for b in maintainers)
    ordered = maintainers + [b for b in bash if b not in maintainers]  # the release exists before its fetch
    lines = [line for block in ordered for line in teadist_lines(block)]
    lines.sort(key=lambda line: line.startswith("teadist serve "))  # serve what the others made, last
    assert len(lines) >= 20 and any("$(teadist path" in b for b in bash)
    with MirrorServer(sandbox / "dist") as release, GitHubServer(repo="OWNER/REPO", token=GH_TOKEN) as github:
        assert isinstance(release, MirrorServer) and isinstance(github, GitHubServer)
        import teadist.release.prepare as prepare

        # the release's own download URLs point at the loopback mirror of its folder, never at github.com
        monkeypatch.setattr(prepare, "download_base", lambda repo, tag: release.url)
        monkeypatch.setenv("GITHUB_API_URL", github.api_url)
        monkeypatch.setenv("GITHUB_TOKEN", GH_TOKEN)
        for line in lines:
            argv = shlex.split(line.replace(RELEASE_PREFIX, release.url))
            if argv[1] == "serve":
                _serve_and_stop(argv)
                continue
            result = cli(*argv[1:])
            assert result.code == 0, f"{line}\n{result.err}"
    code = blocks("python")
    assert len(code) == 1 and "teadist.fetch(" in code[0]
    exec(compile(code[0], "README.md", "exec"), {})  # the Python example, against the same loopback Hub
    assert os.path.isfile(json.loads(cli("path", "phi-4-mini", "--json").out)["path"])
