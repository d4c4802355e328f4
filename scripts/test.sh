#!/usr/bin/env bash
# The README's second command: set up the test tools from scratch, then run the tests as CI does.
#
#   1. Debian's Chromium if missing (the browser proofs; apt-get, as root or through sudo; no
#      browser download);
#   2. wllama from npm in tests/browser (pinned by its package-lock.json);
#   3. a fresh .venv with an EDITABLE install of '.[test]', so the tests run the code in this tree
#      (llama-cpp-python compiles llama.cpp once, ~8 minutes on 2 cores; pip caches the wheel);
#   4. the dependency-floors job: the suite in a venv of its own (outside the tree) pinned by
#      constraints/floors.txt to the lowest versions pyproject.toml allows, without the tests that
#      need a test tool the floors do not install (marker `tools`), without the fault campaign
#      (marker `faults`: teadist's own recovery logic, run in full in step 5; it would add ~5
#      minutes), without the scheduler's wall-clock tests (marker `timing`: teadist's own logic, run
#      in step 5, and load-sensitive beside it) and without ruff/mypy (their results depend on the stubs of the installed versions);
#   5. the whole suite in .venv.
# Step 4 starts first and runs in the background beside steps 1–3 and 5, its output kept in a log
# printed at the end: the suites wait on loopback servers, timeouts and subprocesses far more than
# they compute (the floors job used ~3 of its 7 minutes of CPU), so together they fill 2 cores.
# Each job has its own temp folder; the exit status is non-zero if either failed (see finish).
#
# `bash scripts/test.sh floors` runs only step 4 (in the foreground).
set -euo pipefail
cd "$(dirname "$0")/.."

floors() {
  local venv="${TMPDIR:-/tmp}/teadist-floors-venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c constraints/floors.txt -e '.[test-core]'
  "$venv/bin/python" -m pytest -p no:cacheprovider --basetemp="${TMPDIR:-/tmp}/teadist-floors-tmp" \
    -m "not tools and not faults and not timing" --deselect tests/test_quality.py::test_code_is_clean
}

if [ "${1:-}" = "floors" ]; then
  floors
  exit 0
fi

floors_log="${TMPDIR:-/tmp}/teadist-floors.log"
floors >"$floors_log" 2>&1 &
floors_pid=$!
finish() {  # on any exit: wait for the floors job, print its log, fail if it failed
  local status=$? floors_status=0
  wait "$floors_pid" || floors_status=$?
  echo
  echo "=== the dependency-floors job (constraints/floors.txt), run beside the steps above ==="
  cat "$floors_log"
  if [ "$floors_status" -ne 0 ]; then
    echo "the dependency-floors job failed (exit $floors_status)"
    [ "$status" -ne 0 ] || status=1
  fi
  exit "$status"
}
trap finish EXIT

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --silent)

rm -rf .venv
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

.venv/bin/python -m pytest
