#!/bin/bash
# `nemofs export` of a large .nemo's weights (its model_weights.ckpt.tensors/ view, as one
# .safetensors file) side by side with `cp` of the weights member as a standalone file.
# Like for like: `export --no-sync` against `cp` (both return once the bytes are in the page
# cache), `export` (which fdatasyncs the new file before renaming it into place) against
# `cp` + fsync. Both sources (the .nemo and the standalone member) are read once before timing, so
# every contender copies from a warm page cache; every destination is a new file in the same folder.
# Then (unless DCP=0) a 1 GiB float32 tensor sharded 8 ways on dim 1 (DCP, written by
# bench/dcp_bench.cpp without torch): export vs cp of the 8 shard files.
#
# Method: RUNS interleaved pairs (export then cp in odd pairs, cp then export in even ones); before
# every timed run the previous output is removed and `sync` + a pause of SETTLE seconds let the
# previous run's write-back finish, so it does not land on the next run. Reported: the median of
# the per-pair ratios (cp time / export time: above 1 means export is faster), for wall time and
# for CPU time (user + sys: less sensitive to a busy machine), each pair's times, the load average
# before and after, and the exporter's peak RSS (the largest over its runs).
#
# SOURCES=DIR: use DIR/a.nemo and DIR/model_weights.ckpt (from bench/make_weights_nemo.py, same
# filesystem as WORKDIR) instead of writing new ones.
# NEMO=0 / DCP=0: skip that part.
# usage: [NEMO=0] [DCP=0] [SETTLE=1] [SOURCES=DIR] bench/export_bench.sh [SIZE_GIB=2] [RUNS=7] [WORKDIR=/tmp]
# needs: a built ./build/fs/nemofs, /usr/bin/python3 with torch, GNU time; the DCP part builds the
# dcp_bench target in ./build.
set -euo pipefail
SIZE_GIB=${1:-2}
RUNS=${2:-7}
SETTLE=${SETTLE:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${3:-/tmp}/nemofs-export-bench-XXXXXX")
trap 'rm -rf "$W"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
# How much of each source is in the page cache (a memory limit, or a sandbox that reclaims a
# finished command's page cache, would make the contenders read the disk instead): shown before
# and after the runs.
cached() { command -v fincore > /dev/null && fincore -n -o RES,FILE "$@" | awk '{printf "%s %s cached; ", $2, $1}'; echo; }

# timed CLEANUP CMD...: runs CMD after removing the last outputs (CLEANUP, a shell snippet) and
# letting write-back settle; sets WALL, CPU (seconds) and RSS (KiB).
timed() {
  local cleanup=$1
  shift
  eval "$cleanup"
  sync
  sleep "$SETTLE"
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$W/time" "$@"
  t1=$(date +%s.%N)
  WALL=$(echo "$t1 - $t0" | bc)
  CPU=$(awk '{print $1 + $2}' "$W/time")
  RSS=$(awk '{print $3}' "$W/time")
}

# pairs NAME CLEANUP "EXPORT CMD" "CP CMD": RUNS interleaved pairs; prints one line per pair and
# the medians of the per-pair ratios; sets MAX_RSS.
pairs() {
  local name=$1 cleanup=$2 ecmd=$3 ccmd=$4 i ew ec cw cc
  local -a RW RC
  MAX_RSS=0
  echo "  $name (wall s, cpu s; ratio = cp / export):"
  for i in $(seq 1 "$RUNS"); do
    if ((i % 2)); then
      timed "$cleanup" bash -c "$ecmd"; ew=$WALL ec=$CPU
      ((RSS > MAX_RSS)) && MAX_RSS=$RSS
      timed "$cleanup" bash -c "$ccmd"; cw=$WALL cc=$CPU
    else
      timed "$cleanup" bash -c "$ccmd"; cw=$WALL cc=$CPU
      timed "$cleanup" bash -c "$ecmd"; ew=$WALL ec=$CPU
      ((RSS > MAX_RSS)) && MAX_RSS=$RSS
    fi
    RW+=("$(echo "scale=4; $cw / $ew" | bc)")
    RC+=("$(echo "scale=4; $cc / $ec" | bc)")
    printf '    pair %d (%s first): export %.3f s (cpu %.3f), cp %.3f s (cpu %.3f): %.2fx wall, %.2fx cpu\n' \
      "$i" "$( ((i % 2)) && echo export || echo cp)" "$ew" "$ec" "$cw" "$cc" "${RW[-1]}" "${RC[-1]}"
  done
  eval "$cleanup"
  printf '    median of per-pair ratios: %.2fx wall, %.2fx cpu\n' \
    "$(printf '%s\n' "${RW[@]}" | median)" "$(printf '%s\n' "${RC[@]}" | median)"
}

if [[ ${NEMO:-1} != 0 ]]; then
if [[ -n ${SOURCES:-} ]]; then  # a.nemo and model_weights.ckpt made before (make_weights_nemo.py)
  ln -s "$SOURCES/a.nemo" "$W/a.nemo"
  ln -s "$SOURCES/model_weights.ckpt" "$W/model_weights.ckpt"
else
  /usr/bin/python3 "$ROOT/bench/make_weights_nemo.py" "$W/a.nemo" $((SIZE_GIB << 30)) "$W/model_weights.ckpt"
fi
cat "$W/a.nemo" "$W/model_weights.ckpt" > /dev/null  # warm the cache for every contender alike
"$NEMOFS" export "$W/a.nemo" "$W/out.safetensors" --no-sync
bytes=$(stat -c %s "$W/out.safetensors")
rm -f "$W/out.safetensors"

echo "source: ${SIZE_GIB} GiB .nemo (model_weights.ckpt: torch.save zip, 32 tensors), export ${bytes} bytes,"
echo "        ${RUNS} interleaved pairs, $(uname -r), $(df -T "$W" | awk 'NR==2 {print $2}') at $W, $(nproc) cpus"
echo "        load average before: $(load)"
echo "        $(cached "$W/a.nemo" "$W/model_weights.ckpt")"
CLEAN="rm -f '$W/out.safetensors' '$W/c.ckpt'"
pairs "export --no-sync vs cp" "$CLEAN" \
  "'$NEMOFS' export '$W/a.nemo' '$W/out.safetensors' --no-sync" \
  "cp '$W/model_weights.ckpt' '$W/c.ckpt'"
echo "    target >= 0.80x; exporter peak RSS $((MAX_RSS / 1024)) MiB (target <= 64)"
pairs "export (fdatasync'ed) vs cp + fsync" "$CLEAN" \
  "'$NEMOFS' export '$W/a.nemo' '$W/out.safetensors'" \
  "cp '$W/model_weights.ckpt' '$W/c.ckpt' && sync '$W/c.ckpt'"
echo "        load average after: $(load)"
echo "        $(cached "$W/a.nemo" "$W/model_weights.ckpt")"

fi

[[ ${DCP:-1} == 0 ]] && exit 0
rm -f "$W/a.nemo" "$W/model_weights.ckpt"  # (links, with SOURCES)
# The DCP folder is written by bench/dcp_bench.cpp (built in ./build, reusing its formats library),
# which also runs its own read benchmark on it.
cmake --build "$ROOT/build" --target dcp_bench > /dev/null
mkdir -p "$W/dcp"
"$ROOT/build/bench/dcp_bench" "$W/dcp" big > /dev/null
D="$W/dcp/big"
cat "$D"/* > /dev/null
echo "source: DCP folder, one 1 GiB float32 tensor [8192, 32768] sharded 8 ways on dim 1"
echo "        load average before: $(load)"
echo "        $(cached "$D"/*.distcp | sed "s|$D/||g")"
DCLEAN="rm -rf '$W/d.safetensors' '$W/dcopy'"
pairs "export --no-sync vs cp of the 8 shard files" "$DCLEAN" \
  "'$NEMOFS' export '$D' '$W/d.safetensors' --no-sync" \
  "mkdir '$W/dcopy' && cp '$D'/*.distcp '$W/dcopy/'"
echo "    target >= 0.50x; exporter peak RSS $((MAX_RSS / 1024)) MiB (target <= 64)"
pairs "export (fdatasync'ed) vs cp + fsync" "$DCLEAN" \
  "'$NEMOFS' export '$D' '$W/d.safetensors'" \
  "mkdir '$W/dcopy' && cp '$D'/*.distcp '$W/dcopy/' && sync '$W/dcopy'/* '$W/dcopy'"
echo "        load average after: $(load)"
