#!/bin/bash
# Cold sequential reads: direct vs nemofs with its source read-ahead off (NEMOFS_PREFETCH=0) and on,
# in one run, the three alternated (rotated) within each repetition, drop_caches before every read.
# Usage (root): bench/cold_ab.sh SOURCE INNER_PATH DIRECT_OFFSET LENGTH [REPS]
#   SOURCE: what nemofs mounts; INNER_PATH: the file inside the mount; DIRECT_OFFSET: where its
#   bytes lie in SOURCE (one contiguous range); LENGTH: bytes read (from the file's start).
# e.g. bench/cold_ab.sh /tmp/nemofs-bench/work/model.safetensors model.embed.weight 224 1073741824
# Needs bench/run's benchtool ($BENCH_DIR/bin/benchtool) and $NEMOFS (default build/fs/nemofs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src=$1 inner=$2 off=$3 len=$4 reps=${5:-7}
nemofs=${NEMOFS:-$here/../build/fs/nemofs}
bt=${BENCH_DIR:-/tmp/nemofs-bench}/bin/benchtool
[ -x "$bt" ] || cc -O2 -o "$bt" "$here/benchtool.c"
d=$(mktemp -d /tmp/nemofs-cold-ab.XXXXXX)
mkdir "$d/off" "$d/on"
cleanup() {
  for m in off on; do mountpoint -q "$d/$m" && "$nemofs" umount "$d/$m" >/dev/null 2>&1; done
  rm -rf "$d"
}
trap cleanup EXIT
NEMOFS_PREFETCH=0 "$nemofs" mount -o ro "$src" "$d/off"
"$nemofs" mount -o ro "$src" "$d/on"
printf '%s\t%s\t%s\n' "$off" "$len" "$src" > "$d/r_direct"
for m in off on; do printf '0\t%s\t%s\n' "$len" "$d/$m/$inner" > "$d/r_$m"; done
systems=(direct off on)
for ((i = 0; i < reps; i++)); do
  line="rep $i"
  for ((k = 0; k < 3; k++)); do
    s=${systems[$(((i + k) % 3))]}
    sync
    echo 3 > /proc/sys/vm/drop_caches
    secs=$("$bt" seq "$d/r_$s" 600 | sed 's/.*secs=//')
    line+=" $s=$secs"
  done
  echo "$line"
done | tee "$d/log"
python3 - "$d/log" "$len" <<'EOF'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([0-9.]+)", l)) for l in open(sys.argv[1])]
n = int(sys.argv[2])
gbs = lambda s: [n / float(r[s]) / 1e9 for r in rows]  # noqa: E731
for s in ("direct", "off", "on"):
    print(f"{s:7s} median {statistics.median(gbs(s)):.2f} GB/s")
for s in ("off", "on"):
    rs = [float(r["direct"]) / float(r[s]) for r in rows]
    print(f"{s}/direct per rep: median {statistics.median(rs):.2f}x (min {min(rs):.2f}, max {max(rs):.2f})")
rs = [float(r["off"]) / float(r["on"]) for r in rows]
print(f"on/off per rep: median {statistics.median(rs):.2f}x")
EOF
