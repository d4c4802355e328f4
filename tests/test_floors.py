"""Dependency floors (issue 10, defect 14): pyproject declares floors the code really needs, a
constraints file pins exactly those floors, and CI runs the tests once against them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the code needs, and why (the floors job proves the rest):
NEEDED = {
    "huggingface-hub": (1, 2),  # errors.RemoteEntryNotFoundError (1.0), get_hf_file_metadata(retry_on_errors=) (1.2)
    "typer": (0, 19),  # earlier ones break on click 8.2+
    "pygithub": (2, 8, 1),  # GitReleaseAsset.digest, GithubRetry waiting out rate limits
}


def _floors() -> dict[str, tuple[int, ...]]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        # a floor, and at most an upper bound above it (a release known to cost, e.g. typer<0.29)
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,<([0-9.]+))?", dep)
        assert match, f"{dep!r}: every runtime dependency needs a floor (>=X.Y)"
        floor = tuple(int(p) for p in match.group(2).split("."))
        if match.group(3):
            assert tuple(int(p) for p in match.group(3).split(".")) > floor, f"{dep!r}: the bound is below the floor"
        out[match.group(1).lower()] = floor
    return out


def test_floors_are_at_least_what_the_code_needs() -> None:
    floors = _floors()
    for name, needed in NEEDED.items():
        assert floors[name] >= needed, f"{name} floor {floors[name]} is below {needed}"


def test_the_constraints_file_pins_exactly_the_floors() -> None:
    pins = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = tuple(int(p) for p in version.strip().split("."))
    assert "filelock" not in pins  # teadist's locks are its own now
    floors = _floors()
    assert {k: v for k, v in pins.items() if k in floors} == floors


def test_ci_runs_the_tests_against_the_floors() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci  # the README's second command, which runs the floors job
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "constraints/floors.txt" in test_sh and "pytest" in test_sh.split("constraints/floors.txt", 1)[1]
