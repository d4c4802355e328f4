#!/usr/bin/env python3
"""Run the fault campaign (tests/faults) and print its table: faults tried / survived / files lost.

    python scripts/faults.py            # the whole campaign, about 3 minutes on 2 cores

It is the same campaign CI runs as part of the test suite; this prints only its table (plus the
date and machine), ready for the README.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "campaign.json"
        env = {**os.environ, "TEADIST_CAMPAIGN_REPORT": str(report)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if not report.exists():
            print(proc.stdout[-3000:] + proc.stderr[-2000:], file=sys.stderr)
            return 1
        table = json.loads(report.read_text())["table"]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(f"teadist fault campaign — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.machine()}, Python {platform.python_version()} ({summary})\n")
    print("\n".join(table))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
