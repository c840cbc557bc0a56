#!/bin/bash
# Remote mounts over loopback nginx, side by side with curl in one run (bench/remote_bench.py says
# what is measured): cold mount + requests, sequential 1 GiB vs curl, random 4 KiB cold reads vs
# one curl range request, warm second mount, daemon peak RSS.
#
# usage: bench/remote_bench.sh [SIZE_GIB=2] [WORKDIR=/tmp]
# needs: a built ./build/fs/nemofs, nginx and curl (scripts/install-deps.sh); SIZE_GIB + 1 GiB of
# free space in WORKDIR while the archive is written.
set -euo pipefail
SIZE_GIB=${1:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${2:-/tmp}/nemofs-remote-bench-XXXXXX")
trap 'rm -rf "$W"' EXIT
python3 "$ROOT/bench/remote_bench.py" "$NEMOFS" "$ROOT" "$W" "$SIZE_GIB"
