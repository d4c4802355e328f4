#!/usr/bin/env bash
# Set up everything teadist and its tests need, from scratch: Debian's Chromium (browser proof;
# no browser download), wllama from npm (pinned by tests/browser/package-lock.json), and a fresh
# .venv with teadist and its test extras. Heavy steps are cached by their own tools: apt keeps
# Chromium installed, npm keeps wllama, pip keeps the compiled llama-cpp-python wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

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
.venv/bin/python -m pip install --quiet '.[test]'
