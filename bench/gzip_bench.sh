#!/bin/bash
# gzip .nemo benchmark: builds a legacy-style .nemo (tar of a model_config.yaml and a ~1 GiB
# model_weights.ckpt of float32-like bytes, gzip -6) in a scratch folder, then compares
#   first open (seek index + tar index)  vs  gzip -dc > /dev/null
#   second open (index from the cache), random 1 MiB reads, sequential read vs gzip -dc, index size.
# Usage: bench/gzip_bench.sh [build dir=build] [member MiB=1024] [scratch=$TMPDIR/nemofs-gzip-bench]
set -euo pipefail
BUILD=${1:-build}
MIB=${2:-1024}
SCRATCH=${3:-${TMPDIR:-/tmp}/nemofs-gzip-bench}
BENCH="$BUILD/bench/gzip_index_bench"
[ -x "$BENCH" ] || cmake --build "$BUILD" --target gzip_index_bench >/dev/null
mkdir -p "$SCRATCH/src"
NEMO="$SCRATCH/legacy_${MIB}m.nemo"
if [ ! -s "$NEMO" ]; then
  echo "generating $NEMO ..." >&2
  # Normal(0, 0.02) float32 values: gzip gets them to ~93%, like real weights. A 16 MiB pool
  # repeated is as incompressible as fresh data (deflate only looks 32 KiB back).
  /usr/bin/python3 - "$SCRATCH/src" "$MIB" <<'PY'
import array, random, sys
d, mib = sys.argv[1], int(sys.argv[2])
random.seed(1)
pool = array.array('f', (random.gauss(0.0, 0.02) for _ in range(4 << 20))).tobytes()
with open(d + '/model_weights.ckpt', 'wb') as f:
    for _ in range(mib // 16):
        f.write(pool)
    f.write(pool[:(mib % 16) << 20])
with open(d + '/model_config.yaml', 'w') as f:
    f.write('sample_rate: 16000\nencoder:\n  d_model: 176\n')
PY
  tar -cf - -C "$SCRATCH/src" ./model_config.yaml ./model_weights.ckpt | gzip -6 > "$NEMO.tmp"
  mv "$NEMO.tmp" "$NEMO"
  rm -f "$SCRATCH/src/model_weights.ckpt"
fi
cat "$NEMO" > /dev/null  # page cache warm for both sides

# Wall and user+sys CPU seconds of gzip -dc (CPU time compares fairly on a loaded machine).
TIMES=$( { /usr/bin/time -f '%e %U %S' gzip -dc "$NEMO" > /dev/null; } 2>&1 | tail -1)
GZ=$(echo "$TIMES" | awk '{print $1}')
GZCPU=$(echo "$TIMES" | awk '{print $2 + $3}')

export XDG_CACHE_HOME="$SCRATCH/cache"
rm -rf "$XDG_CACHE_HOME"
OUT=$("$BENCH" "$NEMO" 64)
echo "$OUT"
FIRST=$(echo "$OUT" | awk '/^first_open_s/ {print $2}')
FIRSTCPU=$(echo "$OUT" | awk '/^first_open_s/ {print $4}' | tr -d ';')
SEQ=$(echo "$OUT" | awk '/^sequential_s/ {print $2}')
SEQCPU=$(echo "$OUT" | awk '/^sequential_s/ {print $4}' | tr -d ';')
printf 'gzip_dc_s          %.3f (cpu %.3f)\n' "$GZ" "$GZCPU"
printf 'first_open/gzip    %.2fx wall, %.2fx cpu (target <= 1.2x)\n' "$(echo "$FIRST / $GZ" | bc -l)" "$(echo "$FIRSTCPU / $GZCPU" | bc -l)"
printf 'sequential/gzip    %.2fx throughput wall, %.2fx cpu (target >= 0.8x)\n' "$(echo "$GZ / $SEQ" | bc -l)" "$(echo "$GZCPU / $SEQCPU" | bc -l)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
