#!/bin/sh
# Builds the formats library (Release) and runs the DCP benchmarks (bench/dcp_bench.cpp).
# Usage: bench/dcp_bench.sh [WORKDIR] [big|many|all]   (WORKDIR needs ~2.2 GiB; default /tmp/nemofs_dcp_bench)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/nemofs_dcp_bench}
build="$here/build-bench"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DNEMOFS_TESTS=OFF >/dev/null
cmake --build "$build" -j2 --target nemofs_formats >/dev/null
c++ -std=c++20 -O2 -I"$here" "$here/bench/dcp_bench.cpp" "$build/formats/libnemofs_formats.a" -lz -o "$build/dcp_bench"
mkdir -p "$work"
"$build/dcp_bench" "$work" "${2:-all}"
