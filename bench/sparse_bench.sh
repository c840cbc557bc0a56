#!/bin/bash
# Sparse tar member benchmark: first-touch sequential read of a 1 GiB sparse member (GNU tar -S,
# pax 1.0; half of it holes: 16 MiB of data, then 16 MiB of hole, repeated) through nemofs, against
# the first-touch read of the minimal server (bench/minimal_range_server.c, the FUSE floor) on a
# dense 1 GiB member of a plain tar. One run, the systems alternating within each repetition;
# both sources stay in the host page cache (as in bench/run). Target: nemofs >= 0.9x minimal.
# Holes are answered from memory (zeros, no I/O), data regions spliced from the archive.
# Usage: bench/sparse_bench.sh [nemofs binary=build/fs/nemofs] [reps=5] [scratch=$TMPDIR/nemofs-sparse-bench]
# Needs root (FUSE mounts), GNU tar, cc and fuse3's pkg-config.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
NEMOFS=${1:-$here/../build/fs/nemofs}
REPS=${2:-5}
S=${3:-${TMPDIR:-/tmp}/nemofs-sparse-bench}
mkdir -p "$S/bin" "$S/src" "$S/mnt"
cc=${CC:-cc}
$cc -O2 -Wall -o "$S/bin/benchtool" "$here/benchtool.c"
$cc -O2 -Wall -o "$S/bin/minimal_range_server" "$here/minimal_range_server.c" $(pkg-config --cflags --libs fuse3)

GIB=$((1 << 30))
if [ ! -s "$S/sparse.nemo" ] || [ ! -s "$S/dense.tar" ]; then
  echo "generating ..." >&2
  rm -f "$S/src/"*
  head -c $((16 << 20)) /dev/urandom > "$S/chunk"
  truncate -s $GIB "$S/src/weights.bin"
  for i in $(seq 0 2 63); do  # data in even 16 MiB slots, holes in odd ones
    dd if="$S/chunk" of="$S/src/weights.bin" bs=16M seek=$i conv=notrunc status=none
  done
  printf 'model:\n  lr: 0.1\n' > "$S/src/model_config.yaml"
  tar --format=posix -S -cf "$S/sparse.nemo" -C "$S/src" ./model_config.yaml ./weights.bin
  rm -f "$S/src/weights.bin"
  for i in $(seq 0 63); do cat "$S/chunk"; done > "$S/src/dense.bin"
  tar -cf "$S/dense.tar" -C "$S/src" ./dense.bin
  rm -f "$S/src/dense.bin"
fi
read -r OFF LEN < <(/usr/bin/python3 -c "import tarfile,sys; m=tarfile.open(sys.argv[1]).getmember('./dense.bin'); print(m.offset_data, m.size)" "$S/dense.tar")
cat "$S/sparse.nemo" "$S/dense.tar" > /dev/null  # host page cache warm for both
ls -ls "$S/sparse.nemo" "$S/dense.tar" >&2

printf '0\t%d\t%s\n' $GIB "$S/mnt/weights.bin" > "$S/ranges.nemofs"
printf '0\t%d\t%s\n' "$LEN" "$S/mnt/data" > "$S/ranges.minimal"
wait_for() { for _ in $(seq 1 500); do [ -e "$1" ] && return 0; sleep 0.01; done; echo "no mount at $1" >&2; return 1; }
gbps() { awk '{for(i=1;i<=NF;i++){split($i,a,"=");v[a[1]]=a[2]}} END {printf "%.3f", v["bytes"]/v["secs"]/1e9}'; }
nem=() min=()
for rep in $(seq 1 "$REPS"); do
  "$NEMOFS" mount -o ro "$S/sparse.nemo" "$S/mnt"
  wait_for "$S/mnt/weights.bin"
  nem+=("$("$S/bin/benchtool" seq "$S/ranges.nemofs" 600 | gbps)")
  "$NEMOFS" umount "$S/mnt" >/dev/null
  setsid "$S/bin/minimal_range_server" "$S/dense.tar" "$OFF" "$LEN" "$S/mnt" &
  wait_for "$S/mnt/data"
  min+=("$("$S/bin/benchtool" seq "$S/ranges.minimal" 600 | gbps)")
  fusermount3 -u "$S/mnt"
  wait
  echo "rep $rep: nemofs sparse ${nem[-1]} GB/s, minimal dense ${min[-1]} GB/s" >&2
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
N=$(med "${nem[@]}") M=$(med "${min[@]}")
printf 'first-touch sequential, 1 GiB sparse member (half holes), nemofs: %s GB/s (median of %d)\n' "$N" "$REPS"
printf 'first-touch sequential, 1 GiB dense member, minimal server:       %s GB/s\n' "$M"
printf 'nemofs sparse / minimal dense: %.2fx (target >= 0.9x)\n' "$(echo "$N / $M" | bc -l)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
