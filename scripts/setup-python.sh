#!/usr/bin/env bash
# Makes sure /usr/bin/python3 can import numpy, safetensors.numpy, onnx and onnxruntime, for
# the Python interop test (tests/python_interop.rs) and the ONNX export test
# (tests/onnx_export.rs). Debian bookworm has numpy as a package but no safetensors, onnx or
# onnxruntime package, so those come from the Python package index through pip (prebuilt
# wheels). Does nothing when all import already; on a machine without apt-get it only prints
# a hint.
set -euo pipefail

PY=/usr/bin/python3
if [ -x "$PY" ] && "$PY" -c "import numpy, safetensors.numpy, onnx, onnxruntime" 2>/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "wqat: install numpy, safetensors, onnx and onnxruntime for python3 to run the Python tests" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! "$PY" -c "import numpy" 2>/dev/null || ! "$PY" -m pip --version >/dev/null 2>&1; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q python3 python3-numpy python3-pip
fi
# --break-system-packages: pip 23 refuses the system interpreter (PEP 668) without it.
for mod in safetensors onnx onnxruntime; do
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    $SUDO "$PY" -m pip install -q --break-system-packages --root-user-action=ignore "$mod"
  fi
done
"$PY" -c "import numpy, safetensors.numpy, onnx, onnxruntime"
