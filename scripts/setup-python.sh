#!/usr/bin/env bash
# Makes sure /usr/bin/python3 can import numpy and safetensors.numpy, for the Python interop
# test (tests/python_interop.rs). Debian bookworm has numpy as a package but no safetensors
# package, so safetensors comes from the Python package index through pip (a prebuilt wheel).
# Does nothing when both import already; on a machine without apt-get it only prints a hint.
set -euo pipefail

PY=/usr/bin/python3
if [ -x "$PY" ] && "$PY" -c "import numpy, safetensors.numpy" 2>/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "wqat: install numpy and safetensors for python3 to run the Python interop test" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q python3 python3-numpy python3-pip
if ! "$PY" -c "import safetensors.numpy" 2>/dev/null; then
  # --break-system-packages: pip 23 refuses the system interpreter (PEP 668) without it.
  $SUDO "$PY" -m pip install -q --break-system-packages --root-user-action=ignore safetensors
fi
"$PY" -c "import numpy, safetensors.numpy"
