"""The fault campaign's recorder: every fault tried is recorded with its outcome, and the
session ends with one table (faults tried / survived / files lost), also written as JSON when
TEADIST_CAMPAIGN_REPORT names a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.faults


@dataclass
class Outcome:
    category: str
    fault: str
    survived: bool
    files_lost: int


RESULTS: list[Outcome] = []


@pytest.fixture
def campaign() -> Callable[[str, str, bool, int], None]:
    def record(category: str, fault: str, survived: bool, files_lost: int = 0) -> None:
        RESULTS.append(Outcome(category, fault, survived, files_lost))

    return record


def campaign_table() -> list[str]:
    categories: dict[str, list[Outcome]] = {}
    for outcome in RESULTS:
        categories.setdefault(outcome.category, []).append(outcome)
    lines = ["| fault category | tried | survived | files lost |", "|---|---:|---:|---:|"]
    for name, items in categories.items():
        lines.append(f"| {name} | {len(items)} | {sum(o.survived for o in items)} | "
                     f"{sum(o.files_lost for o in items)} |")
    lines.append(f"| **total** | {len(RESULTS)} | {sum(o.survived for o in RESULTS)} | "
                 f"{sum(o.files_lost for o in RESULTS)} |")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.write_sep("=", "fault campaign")
    for line in campaign_table():
        terminalreporter.write_line(line)
    target = os.environ.get("TEADIST_CAMPAIGN_REPORT")
    if target:
        with open(target, "w", encoding="utf-8") as fh:
            json.dump({"table": campaign_table(), "outcomes": [asdict(o) for o in RESULTS]}, fh, indent=2)
