"""The house rules as tests: ruff and mypy clean, heavy imports lazy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("tool", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_code_is_clean(tool: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_cli_start_up_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from teadist import cli; "
            "print(sorted(m for m in ('numpy', 'gguf', 'huggingface_hub', 'github', 'jsonschema', 'requests', "
            "'tqdm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_no_lock_or_scratch_file_is_tracked() -> None:
    """A test once ran a lock next to the working folder and the lock got committed (review 11a #15)."""
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [n for n in proc.stdout.splitlines() if n.endswith(".lock") and not n.endswith("package-lock.json")]
    assert tracked == []
