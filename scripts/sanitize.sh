#!/usr/bin/env bash
# Builds the whole project with clang + AddressSanitizer + UndefinedBehaviorSanitizer into
# ./build-asan and runs the whole test suite there (unit, mount tier, corpus replays).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build-asan CC=clang CXX=clang++ ./scripts/build.sh -DNEMOFS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "== ctest (build-asan: ASan + UBSan)"
(cd build-asan && ctest --output-on-failure -j1 --timeout 900)
