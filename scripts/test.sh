#!/usr/bin/env bash
# Installs, builds and runs every test (unit, mount tier, fuzz-corpus replays, sanitizer suite).
# Run as root on Debian 12: sudo ./scripts/test.sh   (.ci/run calls this)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
echo "== ctest (build)"
(cd build && ctest --output-on-failure -j1 --timeout 900)
if [ "${NEMOFS_SKIP_SANITIZERS:-0}" != "1" ] && [ -x scripts/sanitize.sh ]; then
  ./scripts/sanitize.sh
fi
