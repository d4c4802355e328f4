#!/usr/bin/env bash
# Build llama.cpp's `llama-gguf-split` (the peer of `teadist split --format gguf` and of the GGUF
# rebuild in scripts/bench.py) from the llama.cpp sources vendored in the llama-cpp-python sdist:
# CPU only, one cmake target, into a cache folder. bench.py looks for it there.
#
#   bash scripts/build_llama_gguf_split.sh            # the llama-cpp-python version the venv has
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 bash scripts/build_llama_gguf_split.sh
#
# Output: ${XDG_CACHE_HOME:-~/.cache}/teadist-bench/llama-gguf-split-<version>/llama-gguf-split
# (and a `llama-gguf-split` link beside the version folders pointing at the newest build).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
VERSION="${LLAMA_CPP_PYTHON_VERSION:-}"
if [ -z "$VERSION" ]; then
  VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)"
fi
if [ -z "$VERSION" ]; then
  echo "llama-cpp-python is not installed in $PY; set LLAMA_CPP_PYTHON_VERSION=X.Y.Z" >&2
  exit 2
fi

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/teadist-bench"
DEST="$CACHE/llama-gguf-split-$VERSION"
if [ -x "$DEST/llama-gguf-split" ]; then
  echo "$DEST/llama-gguf-split"
  exit 0
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$WORK"
tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
[ -f "$SRC/CMakeLists.txt" ] || { echo "no llama.cpp sources in the sdist" >&2; exit 1; }

GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$WORK/build" --target llama-gguf-split -j "$(nproc)" >/dev/null

mkdir -p "$DEST.tmp"
cp "$WORK/build/bin/llama-gguf-split" "$DEST.tmp/"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
ln -sfn "$DEST/llama-gguf-split" "$CACHE/llama-gguf-split"
echo "$DEST/llama-gguf-split"
