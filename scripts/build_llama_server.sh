#!/usr/bin/env bash
# Build llama.cpp's `llama-server` once, from a pinned PyPI source package, into dsv4serve's cache.
#
# The llama-cpp-python sdist vendors a llama.cpp tree with DeepSeek-V4 (architecture deepseek4, CPU
# kernels; shared/facts/engines-v4.md). Only the server target is built (CPU; GGML_NATIVE off so the
# binary runs on any x86-64 of the CI fleet). The converter (convert_hf_to_gguf.py, conversion/,
# gguf-py with the V4 definitions, the chat templates) is kept beside it for `tiny-v4` GGUFs.
# Idempotent: a second run with the binary in place does nothing. Run by `make llama-server`, and by
# `make install` when DSV4SERVE_LLAMA=1 (CI sets it).
#   Result: ${XDG_CACHE_HOME:-~/.cache}/dsv4serve/llama.cpp/<pin>/bin/llama-server
set -euo pipefail
PKG=llama-cpp-python
VER=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PIN="$PKG-$VER"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dsv4serve/llama.cpp/$PIN"
PY=${PYTHON:-${VENV:-.venv}/bin/python}
[ -x "$PY" ] || PY=python3
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

if [ -x "$CACHE/bin/llama-server" ] && [ -f "$CACHE/src/convert_hf_to_gguf.py" ]; then
  echo "llama-server: $CACHE/bin/llama-server (cached)"
  exit 0
fi
command -v cmake >/dev/null || { echo "error: cmake not found; hint: apt-get install cmake (>= 3.21)" >&2; exit 5; }
command -v g++ >/dev/null || command -v c++ >/dev/null \
  || { echo "error: no C++ compiler; hint: apt-get install g++" >&2; exit 5; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dsv4serve-llama.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
"$PY" -m pip download -q --no-deps --no-binary :all: "$PKG==$VER" -d "$work/dl"
tarball=$(ls "$work"/dl/*.tar.gz)
echo "$SHA256  $tarball" | sha256sum -c --quiet - \
  || { echo "error: $tarball is not the pinned $PIN (sha256)" >&2; exit 5; }
tar -xzf "$tarball" -C "$work"
tree="$work/llama_cpp_python-$VER/vendor/llama.cpp"

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$tree" -B "$work/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  >"$work/configure.log" 2>&1 || { tail -20 "$work/configure.log" >&2; exit 5; }
cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 5; }

staging="$CACHE.tmp.$$"
rm -rf "$staging"
mkdir -p "$staging/bin" "$staging/src/models"
cp "$work/build/bin/llama-server" "$staging/bin/"
cp -r "$tree/convert_hf_to_gguf.py" "$tree/conversion" "$tree/gguf-py" "$staging/src/"
cp -r "$tree/models/templates" "$staging/src/models/"
cp "$tree/LICENSE" "$staging/"
rm -rf "$CACHE"
mv "$staging" "$CACHE"
echo "llama-server: built $CACHE/bin/llama-server in $(($(date +%s) - start)) s"
