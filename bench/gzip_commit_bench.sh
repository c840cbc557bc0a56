#!/bin/bash
# Commit after a one-line YAML edit of a gzip .nemo (NeMo < 1.7), side by side with the manual
# workflow it replaces: `tar xzf`, edit, `tar czf` (GNU tar + gzip -6, one thread). The archive
# holds SIZE_GIB of float32 weights-like data (tests/mount/make_big_nemo.py floats), gzip -6'ed.
# Medians of RUNS runs, warm page cache. Also prints each contender's CPU time (user+sys: the
# daemon's during `nemofs commit`; tar, gzip and sed's for the manual workflow), since wall time on
# a shared machine depends on the load.
#
# The first mount of the generated archive builds its seek index; every later mount is of an
# archive a commit wrote, whose index the commit cached, so it is instant (shown separately).
#
# usage: bench/gzip_commit_bench.sh [SIZE_GIB=1] [RUNS=3] [WORKDIR=/tmp]
# needs: a built ./build/fs/nemofs, /usr/bin/python3, GNU tar, gzip, FUSE, bc.
set -euo pipefail
SIZE_GIB=${1:-1}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${3:-/tmp}/nemofs-gzbench-XXXXXX")
export XDG_CACHE_HOME="$W/cache"
trap 'fusermount3 -u -z "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt"

python3 "$ROOT/tests/mount/make_big_nemo.py" "$W/a.tar" "$(python3 -c "print(int($SIZE_GIB * (1 << 30)))")" floats
gzip -6 -c "$W/a.tar" > "$W/a.nemo"
rm "$W/a.tar"
cat "$W/a.nemo" > /dev/null
now() { date +%s.%N; }
# CPU seconds (user + sys) used so far by process $1.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
daemon_pid() {
  "$NEMOFS" status --json | python3 -c 'import json, sys; print([m["pid"] for m in json.load(sys.stdin) if m["mountpoint"] == sys.argv[1]][0])' "$(realpath "$1")"
}
TIMEFORMAT='%R %U %S'
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

t0=$(now)
"$NEMOFS" mount "$W/a.nemo" "$W/mnt"
t1=$(now)
"$NEMOFS" umount "$W/mnt" > /dev/null
FIRST_MOUNT=$(echo "$t1 - $t0" | bc)

declare -a T_NEMOFS T_COMMIT T_MOUNT C_COMMIT T_TAR C_TAR
for i in $(seq 1 "$RUNS"); do
  from=16000; to=44100; if (( i % 2 == 0 )); then from=44100; to=16000; fi
  t0=$(now)
  "$NEMOFS" mount "$W/a.nemo" "$W/mnt"
  tm=$(now)
  sed -i "s/sample_rate: $from/sample_rate: $to/" "$W/mnt/model_config.yaml"
  pid=$(daemon_pid "$W/mnt")
  c0=$(cpu_of "$pid"); t1=$(now)
  "$NEMOFS" commit "$W/mnt" > /dev/null
  t2=$(now); c1=$(cpu_of "$pid")
  "$NEMOFS" umount "$W/mnt" > /dev/null
  t3=$(now)
  T_NEMOFS+=("$(echo "$t3 - $t0" | bc)"); T_COMMIT+=("$(echo "$t2 - $t1" | bc)"); T_MOUNT+=("$(echo "$tm - $t0" | bc)")
  C_COMMIT+=("$(echo "$c1 - $c0" | bc)")

  r=$( { time (
    mkdir "$W/x"
    tar xzf "$W/a.nemo" -C "$W/x"
    sed -i "s/sample_rate: [0-9]*/sample_rate: 22050/" "$W/x/model_config.yaml"
    tar czf "$W/b.nemo" -C "$W/x" .
    sync -f "$W/b.nemo"
  ) ; } 2>&1 )
  rm -rf "$W/x" "$W/b.nemo"
  read -r real user sys <<< "$r"
  T_TAR+=("$real"); C_TAR+=("$(echo "$user + $sys" | bc)")
done

python3 - "$W/a.nemo" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1], "r:gz") as t:
    assert any(m.name == "./model_config.yaml" for m in t.getmembers())
EOF

m_nemofs=$(printf '%s\n' "${T_NEMOFS[@]}" | median)
m_commit=$(printf '%s\n' "${T_COMMIT[@]}" | median)
c_commit=$(printf '%s\n' "${C_COMMIT[@]}" | median)
m_mount=$(printf '%s\n' "${T_MOUNT[@]}" | median)
m_tar=$(printf '%s\n' "${T_TAR[@]}" | median)
c_tar=$(printf '%s\n' "${C_TAR[@]}" | median)
size=$(stat -c %s "$W/a.nemo")
echo "archive: gzip .nemo, ${SIZE_GIB} GiB of tar stream (float32 weights + model_config.yaml), $((size >> 20)) MiB compressed after the last commit"
echo "  ${RUNS} runs, medians, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
printf '  %-52s %7.2f s\n' "first mount of the gzip -6 archive (builds the index)" "$FIRST_MOUNT"
printf '  %-52s %7.2f s\n' "nemofs: mount + sed -i + nemofs commit + umount" "$m_nemofs"
printf '  %-52s %7.2f s\n' "  of which mount (index from the cache)" "$m_mount"
printf '  %-52s %7.2f s   (CPU %.2f s)\n' "  of which nemofs commit (gzip, checked, fsync)" "$m_commit" "$c_commit"
printf '  %-52s %7.2f s   (CPU %.2f s)\n' "manual: tar xzf + sed -i + tar czf + sync" "$m_tar" "$c_tar"
echo "  manual / nemofs = $(echo "scale=2; $m_tar / $m_nemofs" | bc)x"
