#!/bin/bash
# `nemofs export` of a large .nemo's weights (its model_weights.ckpt.tensors/ view, as one
# .safetensors file) side by side with `cp` of the weights member as a standalone file, and with
# cp + fsync. Like for like: `export --no-sync` against cp (both return once the bytes are in the
# page cache), `export` (which fdatasyncs the new file before renaming it into place) against
# cp + fsync.
# Then (unless DCP=0) a 1 GiB float32 tensor sharded 8 ways on dim 1 (DCP, written by
# bench/dcp_bench.cpp without torch): export vs cp of the 8 shard files.
# Medians of RUNS runs, warm cache; the exporter's peak RSS from /usr/bin/time.
#
# usage: [DCP=0] bench/export_bench.sh [SIZE_GIB=2] [RUNS=3] [WORKDIR=/tmp]
# needs: a built ./build/fs/nemofs, /usr/bin/python3 with torch; the DCP part builds the dcp_bench
# target in ./build.
set -euo pipefail
SIZE_GIB=${1:-2}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NEMOFS=${NEMOFS:-$ROOT/build/fs/nemofs}
W=$(mktemp -d "${3:-/tmp}/nemofs-export-bench-XXXXXX")
trap 'rm -rf "$W"' EXIT

/usr/bin/python3 "$ROOT/bench/make_weights_nemo.py" "$W/a.nemo" $((SIZE_GIB << 30)) "$W/model_weights.ckpt"
cat "$W/a.nemo" "$W/model_weights.ckpt" > /dev/null  # warm the cache for every contender alike
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -a T_EXPORT T_NOSYNC T_CP T_CPSYNC
for i in $(seq 1 "$RUNS"); do
  t0=$(now); "$NEMOFS" export "$W/a.nemo" "$W/out.safetensors"; t1=$(now)
  T_EXPORT+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/out.safetensors"; sync -f "$W"

  t0=$(now); "$NEMOFS" export "$W/a.nemo" "$W/out.safetensors" --no-sync; t1=$(now)
  T_NOSYNC+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/out.safetensors"; sync -f "$W"

  t0=$(now); cp "$W/model_weights.ckpt" "$W/c.ckpt"; t1=$(now)
  T_CP+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/c.ckpt"; sync -f "$W"

  t0=$(now); cp "$W/model_weights.ckpt" "$W/c.ckpt"; sync "$W/c.ckpt"; t1=$(now)
  T_CPSYNC+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/c.ckpt"
done
rss_kib=$( { /usr/bin/time -f '%M' "$NEMOFS" export "$W/a.nemo" "$W/out.safetensors" ; } 2>&1 | tail -1)
bytes=$(stat -c %s "$W/out.safetensors")
rm -f "$W/out.safetensors"

m_export=$(printf '%s\n' "${T_EXPORT[@]}" | median)
m_nosync=$(printf '%s\n' "${T_NOSYNC[@]}" | median)
m_cp=$(printf '%s\n' "${T_CP[@]}" | median)
m_cpsync=$(printf '%s\n' "${T_CPSYNC[@]}" | median)
echo "source: ${SIZE_GIB} GiB .nemo (model_weights.ckpt: torch.save zip, 32 tensors), export ${bytes} bytes,"
echo "        ${RUNS} runs, medians, $(uname -r), $(df -T "$W" | awk 'NR==2 {print $2}') at $W"
printf '  %-46s %7.2f s\n' "nemofs export (.nemo -> .safetensors, fsync'ed)" "$m_export"
printf '  %-46s %7.2f s\n' "nemofs export --no-sync" "$m_nosync"
printf '  %-46s %7.2f s\n' "cp of the weights member" "$m_cp"
printf '  %-46s %7.2f s\n' "cp of the weights member + fsync" "$m_cpsync"
echo "  export --no-sync speed / cp speed  = $(echo "scale=2; $m_cp / $m_nosync" | bc)x   (target >= 0.8)"
echo "  export speed / cp+fsync speed      = $(echo "scale=2; $m_cpsync / $m_export" | bc)x   (target >= 0.8)"
echo "  export speed / cp speed            = $(echo "scale=2; $m_cp / $m_export" | bc)x   (durable vs not)"
echo "  exporter peak RSS              = $((rss_kib / 1024)) MiB   (target <= 64)"

[[ ${DCP:-1} == 0 ]] && exit 0
rm -f "$W/a.nemo" "$W/model_weights.ckpt"
# The DCP folder is written by bench/dcp_bench.cpp (built in ./build, reusing its formats library),
# which also runs its own read benchmark on it.
cmake --build "$ROOT/build" --target dcp_bench > /dev/null
mkdir -p "$W/dcp"
"$ROOT/build/bench/dcp_bench" "$W/dcp" big > /dev/null
D="$W/dcp/big"
cat "$D"/* > /dev/null
declare -a D_EXPORT D_NOSYNC D_CP D_CPSYNC
for i in $(seq 1 "$RUNS"); do
  t0=$(now); "$NEMOFS" export "$D" "$W/d.safetensors"; t1=$(now)
  D_EXPORT+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/d.safetensors"; sync -f "$W"
  t0=$(now); "$NEMOFS" export "$D" "$W/d.safetensors" --no-sync; t1=$(now)
  D_NOSYNC+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$W/d.safetensors"; sync -f "$W"
  mkdir "$W/dcopy"
  t0=$(now); cp "$D"/*.distcp "$W/dcopy/"; t1=$(now)
  D_CP+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$W/dcopy"; sync -f "$W"
  mkdir "$W/dcopy"
  t0=$(now); cp "$D"/*.distcp "$W/dcopy/"; sync "$W/dcopy"/* "$W/dcopy"; t1=$(now)
  D_CPSYNC+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$W/dcopy"; sync -f "$W"
done
drss_kib=$( { /usr/bin/time -f '%M' "$NEMOFS" export "$D" "$W/d.safetensors" ; } 2>&1 | tail -1)
rm -f "$W/d.safetensors"
md_export=$(printf '%s\n' "${D_EXPORT[@]}" | median)
md_cp=$(printf '%s\n' "${D_CP[@]}" | median)
md_nosync=$(printf '%s\n' "${D_NOSYNC[@]}" | median)
md_cpsync=$(printf '%s\n' "${D_CPSYNC[@]}" | median)
echo "source: DCP folder, one 1 GiB float32 tensor [8192, 32768] sharded 8 ways on dim 1"
printf '  %-46s %7.2f s\n' "nemofs export (DCP -> .safetensors, fsync'ed)" "$md_export"
printf '  %-46s %7.2f s\n' "nemofs export --no-sync" "$md_nosync"
printf '  %-46s %7.2f s\n' "cp of the 8 shard files" "$md_cp"
printf '  %-46s %7.2f s\n' "cp of the 8 shard files + fsync" "$md_cpsync"
echo "  export --no-sync speed / cp speed  = $(echo "scale=2; $md_cp / $md_nosync" | bc)x   (target >= 0.5)"
echo "  export speed / cp+fsync speed      = $(echo "scale=2; $md_cpsync / $md_export" | bc)x   (target >= 0.5)"
echo "  exporter peak RSS              = $((drss_kib / 1024)) MiB   (target <= 64)"
