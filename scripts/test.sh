#!/usr/bin/env bash
# The test command: makes sure a Vulkan adapter exists (installs lavapipe on a headless
# Debian machine), then runs every test in the optimized test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-vulkan.sh
# One run covers every kernel path: tests of a path that an adapter feature or option
# selects (int8 dot4 / unpack, conv DIRECT / tiled) build one context per path.
cargo test "$@"
