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
#      minutes) and without ruff/mypy (their results depend on the stubs of the installed versions);
#   5. the whole suite in .venv.
#
# `bash scripts/test.sh floors` runs only step 4.
set -euo pipefail
cd "$(dirname "$0")/.."

floors() {
  local venv="${TMPDIR:-/tmp}/teadist-floors-venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c constraints/floors.txt -e '.[test-core]'
  "$venv/bin/python" -m pytest -m "not tools and not faults" --deselect tests/test_quality.py::test_code_is_clean
}

if [ "${1:-}" = "floors" ]; then
  floors
  exit 0
fi

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

floors

.venv/bin/python -m pytest
