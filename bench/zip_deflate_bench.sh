#!/usr/bin/env bash
# Sequential reads of a deflated torch-zip entry through a mount against CPython's
# zlib.decompress of the same entry, side by side in one run (issue 19: >= 0.8x).
#   usage: bench/zip_deflate_bench.sh [build dir]   (needs FUSE, python3 with numpy)
# Two payloads: 128 MiB of float32 weights (normal, std 0.02: deflate gains ~8%) and 256 MiB of
# zeros (deflate's best case, where inflate is fastest and per-read overhead shows most). The
# mount is fresh for each (cold: the first read builds the entry's seek index as it goes).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
NEMOFS=$(realpath "$BUILD/fs/nemofs")
T=$(mktemp -d /tmp/nemofs-zipbench-XXXXXX)
trap 'fusermount3 -u "$T/mp" 2>/dev/null || true; rm -rf "$T"' EXIT
mkdir "$T/mp"
/usr/bin/python3 - "$T" <<'PY'
import sys, os, zlib, struct, numpy as np
sys.path.insert(0, "tests/memory")
import hostile
d = sys.argv[1]
for name, data in (("weights", np.random.default_rng(0).normal(0, 0.02, 32 << 20).astype(np.float32).tobytes()),
                   ("zeros", bytes(256 << 20))):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    z = c.compress(data) + c.flush()
    pkl = hostile.torch_pickle({"t": hostile.Tensor("0", len(data) // 4)})
    hostile.write_zip(os.path.join(d, name + ".pt"), [
        ("archive/data.pkl", 0, zlib.crc32(pkl), len(pkl), pkl),
        ("archive/data/0", 8, zlib.crc32(data), len(data), z)])
    open(os.path.join(d, name + ".deflate"), "wb").write(z)
    print("%s: %d MiB, deflated to %.1f MiB" % (name, len(data) >> 20, len(z) / 2**20))
PY
for name in weights zeros; do
  py=$(/usr/bin/python3 -c "
import zlib, time, sys
z = open('$T/$name.deflate', 'rb').read()
best = 1e9
for _ in range(3):
    t = time.perf_counter(); n = len(zlib.decompress(z, -15)); best = min(best, time.perf_counter() - t)
print('%.4f %d' % (best, n))")
  read -r py_s bytes <<<"$py"
  best=1e9
  for run in 1 2 3; do
    "$NEMOFS" mount "$T/$name.pt" "$T/mp"
    s=$( { /usr/bin/time -f "%e" dd if="$T/mp/t" of=/dev/null bs=1M status=none; } 2>&1 )
    "$NEMOFS" umount "$T/mp"
    best=$(python3 -c "print(min($best, $s))")
  done
  python3 -c "
b=$bytes; p=$py_s; n=$best
print('%-8s zlib.decompress %6.0f MiB/s   nemofs cat (cold mount) %6.0f MiB/s   ratio %.2fx' % ('$name', b/p/2**20, b/n/2**20, p/n))"
done
