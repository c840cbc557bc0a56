#!/bin/bash
# What the changed-source check (issue 21) costs a read: two nemofs builds, rotated within each
# repetition (the machine is shared and noisy: only figures from the same run compare), on reads
# that reach the server (fresh mounts: first touch).
#   seq   sequential first-touch read of a 1 GiB tensor (1 MiB read()s; 1 MiB FUSE requests,
#         each one fd segment: spliced through the server's pipe and checked with one fstat)
#   rand  4 KiB preads at random offsets of it, first touch (one FUSE round trip each: the
#         fstat is largest next to these), median and p99 in us
# plus the cost of one fstat(2) (median of 1e6 calls) beside that round trip, and the extra work of
# one spliced 128 KiB reply measured without FUSE (the pipe hop and the fstat).
#
# usage: bench/changed_source_ab.sh BASE_NEMOFS NEW_NEMOFS [RUNS=5]
#   WORKDIR (env, default /tmp): where the 1 GiB source is generated. Needs root (FUSE mounts).
set -euo pipefail
BASE=$1
NEW=$2
RUNS=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${WORKDIR:-/tmp}/nemofs-changed-ab-XXXXXX")
trap 'fusermount3 -u -z "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt" "$W/bin"
cc -O2 -Wall -o "$W/bin/benchtool" "$ROOT/bench/benchtool.c"
cat > "$W/fstat.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return x < y ? -1 : x > y; }
int main(int argc, char** argv) {
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  double r[21];
  for (int k = 0; k < 21; ++k) {
    double t = now();
    for (int i = 0; i < 1000000 / 21; ++i) fstat(fd, &st);
    r[k] = (now() - t) / (1000000 / 21);
  }
  qsort(r, 21, sizeof r[0], cmp);
  printf("%.0f\n", r[10]);
  return 0;
}
EOF
cc -O2 -o "$W/bin/fstat_ns" "$W/fstat.c"
# The extra work of a spliced reply, without FUSE: file -> pipe -> /dev/null (what libfuse does
# alone) against file -> pipe, fstat, pipe -> pipe -> /dev/null (the server now), 128 KiB replies.
cat > "$W/hop.c" <<'EOF2'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static void mkpipe(int p[2]) { if (pipe2(p, O_NONBLOCK)) abort(); fcntl(p[0], F_SETPIPE_SZ, 1 << 20); }
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return x < y ? -1 : x > y; }
int main(int argc, char** argv) {
  int fd = open(argv[1], O_RDONLY), null = open("/dev/null", O_WRONLY), a[2], b[2], n = 5000;
  size_t len = 128 << 10;
  struct stat st;
  double d[9];
  mkpipe(a); mkpipe(b);
  for (int r = 0; r < 9; ++r) {
    double t0 = now();
    for (int i = 0; i < n; ++i) {
      loff_t off = (loff_t)(i % 4000) * len + 8;
      splice(fd, &off, b[1], NULL, len, SPLICE_F_NONBLOCK);
      splice(b[0], NULL, null, NULL, len, 0);
    }
    double t1 = now();
    for (int i = 0; i < n; ++i) {
      loff_t off = (loff_t)(i % 4000) * len + 8;
      splice(fd, &off, a[1], NULL, len, SPLICE_F_NONBLOCK);
      fstat(fd, &st);
      splice(a[0], NULL, b[1], NULL, len, SPLICE_F_NONBLOCK);
      splice(b[0], NULL, null, NULL, len, 0);
    }
    d[r] = ((now() - t1) - (t1 - t0)) / n;
  }
  qsort(d, 9, sizeof d[0], cmp);
  printf("%.0f\n", d[4]);
  return 0;
}
EOF2
cc -O2 -o "$W/bin/hop_ns" "$W/hop.c"

# A safetensors file with one 1 GiB F32 tensor of pseudo-random bytes.
python3 - "$W/src.safetensors" <<'EOF'
import json, os, sys, struct
n = 1 << 30
hdr = json.dumps({"w": {"dtype": "F32", "shape": [n // 4], "data_offsets": [0, n]}}).encode()
hdr += b" " * (-len(hdr) % 8)
block = os.urandom(1 << 20)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr)
    for i in range(n >> 20):
        f.write(block[i % 7:] + block[:i % 7])
EOF
cat "$W/src.safetensors" > /dev/null  # the source in the page cache for both builds alike
printf '0\t%d\t%s\n' $((1 << 30)) "$W/mnt/w" > "$W/ranges"

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
kv() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
declare -A T

one() {
  local name=$1 bin=$2 out
  "$bin" mount -o ro "$W/src.safetensors" "$W/mnt"
  out=$("$W/bin/benchtool" seq "$W/ranges" 120)
  T[$name.seq]+="$(python3 -c "print(round($(echo "$out" | kv bytes) / $(echo "$out" | kv secs) / 1e9, 3))") "
  "$bin" umount "$W/mnt" > /dev/null
  "$bin" mount -o ro "$W/src.safetensors" "$W/mnt"
  out=$("$W/bin/benchtool" rand "$W/ranges" 3000 $RANDOM 60)
  T[$name.rand_med]+="$(echo "$out" | kv median_us) "
  T[$name.rand_p99]+="$(echo "$out" | kv p99_us) "
  "$bin" umount "$W/mnt" > /dev/null
}

for ((r = 0; r < RUNS; ++r)); do
  if ((r % 2)); then one new "$NEW"; one base "$BASE"; else one base "$BASE"; one new "$NEW"; fi
done
FSTAT=$("$W/bin/fstat_ns" "$W/src.safetensors")

printf '%-34s %10s %10s %7s\n' "first touch ($RUNS runs, medians)" base new new/base
for row in seq rand_med rand_p99; do
  b=$(echo "${T[base.$row]}" | median)
  n=$(echo "${T[new.$row]}" | median)
  unit=$([ $row = seq ] && echo "GB/s" || echo "us")
  printf '%-34s %10s %10s %7s\n' "$row ($unit)" "$b" "$n" "$(python3 -c "print(f'{$n / $b:.3f}')")"
  echo "  base: ${T[base.$row]}" >&2
  echo "  new:  ${T[new.$row]}" >&2
done
echo "one fstat(2): ${FSTAT} ns (median of 21 x 47,619 calls)"
echo "extra per spliced 128 KiB reply (pipe hop + fstat, no FUSE): $("$W/bin/hop_ns" "$W/src.safetensors") ns (median of 9 x 5,000)"
