#!/usr/bin/env bash
# The test command: makes sure a Vulkan adapter exists (installs lavapipe on a headless
# Debian machine), then runs every test in the optimized test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-vulkan.sh
cargo test "$@"
# The portable fallback paths (no subgroups, no packed int8 dot product) on the same adapter.
WQAT_NO_SUBGROUPS=1 WQAT_NO_DOT4=1 cargo test --test 'kernel_*' "$@"
