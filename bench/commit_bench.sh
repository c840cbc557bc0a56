#!/bin/bash
# Commit after a one-line YAML edit of a large .nemo, side by side with the tar workflow it
# replaces (extract, edit, `tar cf`) and with `cp` of the archive (plain, and with fsync, since a
# commit is durable: it fsyncs the new archive and its folder). Medians of RUNS runs, warm cache.
#
# usage: bench/commit_bench.sh [SIZE_GIB=2] [RUNS=5] [WORKDIR=/tmp]
# needs: a built ./build/fs/nemofs, /usr/bin/python3, FUSE.
set -euo pipefail
SIZE_GIB=${1:-2}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${3:-/tmp}/nemofs-bench-XXXXXX")
trap 'fusermount3 -u -z "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt"

python3 "$ROOT/tests/mount/make_big_nemo.py" "$W/a.nemo" $((SIZE_GIB << 30)) dense
cat "$W/a.nemo" > /dev/null  # warm the cache for every contender alike
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -a T_NEMOFS T_UMOUNT T_TAR T_CP T_CPSYNC
for i in $(seq 1 "$RUNS"); do
  # nemofs: mount, one-line edit, umount (= commit). The edit alternates so each run changes bytes.
  from=16000; to=44100; if (( i % 2 == 0 )); then from=44100; to=16000; fi
  t0=$(now)
  "$NEMOFS" mount "$W/a.nemo" "$W/mnt"
  sed -i "s/sample_rate: $from/sample_rate: $to/" "$W/mnt/model_config.yaml"
  t1=$(now)
  "$NEMOFS" umount "$W/mnt" > /dev/null
  t2=$(now)
  T_NEMOFS+=("$(echo "$t2 - $t0" | bc)"); T_UMOUNT+=("$(echo "$t2 - $t1" | bc)")

  # The seed's tar workflow: extract, edit, re-create the archive.
  t0=$(now)
  mkdir "$W/x"
  tar xf "$W/a.nemo" -C "$W/x"
  sed -i "s/sample_rate: [0-9]*/sample_rate: 22050/" "$W/x/model_config.yaml"
  tar cf "$W/b.nemo" -C "$W/x" .
  t1=$(now)
  rm -rf "$W/x" "$W/b.nemo"
  T_TAR+=("$(echo "$t1 - $t0" | bc)")

  t0=$(now); cp "$W/a.nemo" "$W/c.nemo"; t1=$(now)
  rm -f "$W/c.nemo"
  T_CP+=("$(echo "$t1 - $t0" | bc)")

  t0=$(now); cp "$W/a.nemo" "$W/c.nemo"; sync -f "$W/c.nemo"; t1=$(now)
  rm -f "$W/c.nemo"
  T_CPSYNC+=("$(echo "$t1 - $t0" | bc)")
done

m_nemofs=$(printf '%s\n' "${T_NEMOFS[@]}" | median)
m_umount=$(printf '%s\n' "${T_UMOUNT[@]}" | median)
m_tar=$(printf '%s\n' "${T_TAR[@]}" | median)
m_cp=$(printf '%s\n' "${T_CP[@]}" | median)
m_cpsync=$(printf '%s\n' "${T_CPSYNC[@]}" | median)
echo "archive: ${SIZE_GIB} GiB .nemo (one dense member + model_config.yaml), ${RUNS} runs, medians, $(uname -r)"
printf '  %-44s %7.2f s\n' "nemofs: mount + sed -i + nemofs umount" "$m_nemofs"
printf '  %-44s %7.2f s\n' "  of which nemofs umount (commit, fsync'ed)" "$m_umount"
printf '  %-44s %7.2f s\n' "tar workflow: tar xf + sed -i + tar cf" "$m_tar"
printf '  %-44s %7.2f s\n' "cp of the archive" "$m_cp"
printf '  %-44s %7.2f s\n' "cp of the archive + fsync" "$m_cpsync"
echo "  nemofs / cp        = $(echo "scale=2; $m_nemofs / $m_cp" | bc)x   (target <= 1.2)"
echo "  nemofs / cp+fsync  = $(echo "scale=2; $m_nemofs / $m_cpsync" | bc)x"
echo "  tar / nemofs       = $(echo "scale=2; $m_tar / $m_nemofs" | bc)x   (target >= 3)"
