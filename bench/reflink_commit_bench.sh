#!/bin/bash
# O(edit) commit on a reflink filesystem: a .nemo with a SIZE_GIB GiB member of real data on an XFS
# image (mkfs.xfs -m reflink=1 on a loop file), side by side in one run:
#   - commit of a one-line YAML edit that keeps the config's size,
#   - commit of an edit that grows the config by 3 tar blocks (every later member shifts by 1536
#     bytes: without alignment padding nothing could be shared),
#   - `cp --reflink=never` + sync of the archive (what a commit without sharing costs at best).
# For each commit: the time of `nemofs umount` (the commit), the ratio to the copy, and the extra
# disk space it took (a reflink snapshot of the archive taken before the commit keeps the old
# blocks alive, so "extra" is what the commit really wrote). Medians of RUNS runs.
#
# usage: bench/reflink_commit_bench.sh [SIZE_GIB=8] [RUNS=3] [WORKDIR=/var/tmp]
# needs: root, losetup, mkfs.xfs (xfsprogs), a built ./build/fs/nemofs, FUSE; about SIZE_GIB + 2 GiB
# of free disk in WORKDIR (the image is sparse; the archive and one copy live in it).
set -euo pipefail
SIZE_GIB=${1:-8}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${3:-/var/tmp}/nemofs-reflink-XXXXXX")
FS=$W/xfs
cleanup() {
  fusermount3 -u -z "$W/mnt" 2>/dev/null || true
  umount "$FS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/mnt" "$FS"
truncate -s $(((SIZE_GIB * 2 + 4) << 30)) "$W/xfs.img"
mkfs.xfs -q -m reflink=1 "$W/xfs.img"
mount -o loop "$W/xfs.img" "$FS"

python3 "$ROOT/tests/mount/make_big_nemo.py" "$FS/a.nemo" $((SIZE_GIB << 30)) dense
sync
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
used() { sync; df -B1 --output=used "$FS" | tail -1; }

# One commit: $1 = the edit (shell, run in the mount). Prints "seconds extra_bytes".
commit() {
  cp --reflink=always "$FS/a.nemo" "$FS/snapshot"
  local u0 t0 t1 u1 msg
  u0=$(used)
  "$NEMOFS" mount "$FS/a.nemo" "$W/mnt"
  (cd "$W/mnt" && eval "$1")
  t0=$(now)
  msg=$("$NEMOFS" umount "$W/mnt" 2>&1)
  t1=$(now)
  u1=$(used)
  rm -f "$FS/snapshot"
  echo "$msg" >&2
  echo "$(echo "$t1 - $t0" | bc) $((u1 - u0))"
}

declare -a T_SAME S_SAME T_GROW S_GROW T_CP
for i in $(seq 1 "$RUNS"); do
  from=16000; to=44100; if (( i % 2 == 0 )); then from=44100; to=16000; fi
  read -r t s < <(commit "sed -i 's/sample_rate: $from/sample_rate: $to/' model_config.yaml")
  T_SAME+=("$t"); S_SAME+=("$s")
  read -r t s < <(commit "for j in \$(seq 24); do printf '# %061d\n' \$j >> model_config.yaml; done")
  T_GROW+=("$t"); S_GROW+=("$s")
  t0=$(now); cp --reflink=never "$FS/a.nemo" "$FS/copy"; sync -f "$FS/copy"; t1=$(now)
  rm -f "$FS/copy"
  T_CP+=("$(echo "$t1 - $t0" | bc)")
done

m_same=$(printf '%s\n' "${T_SAME[@]}" | median); m_grow=$(printf '%s\n' "${T_GROW[@]}" | median)
m_cp=$(printf '%s\n' "${T_CP[@]}" | median)
s_same=$(printf '%s\n' "${S_SAME[@]}" | median); s_grow=$(printf '%s\n' "${S_GROW[@]}" | median)
size=$(stat -c %s "$FS/a.nemo")
echo
echo "archive: $size bytes on XFS (reflink=1), $RUNS runs, medians"
printf '%-40s %8.3f s  %6.4fx copy  extra disk %6.2f MiB\n' "commit, one-line edit (same size)" "$m_same" \
  "$(echo "$m_same / $m_cp" | bc -l)" "$(echo "$s_same / 1048576" | bc -l)"
printf '%-40s %8.3f s  %6.4fx copy  extra disk %6.2f MiB\n' "commit, config grown by 3 blocks" "$m_grow" \
  "$(echo "$m_grow / $m_cp" | bc -l)" "$(echo "$s_grow / 1048576" | bc -l)"
printf '%-40s %8.3f s\n' "cp --reflink=never + sync" "$m_cp"
