#!/bin/bash
# Commit after a one-line YAML edit: two nemofs builds and cp + sync, rotated within each
# repetition (the machine is shared and noisy: only figures from the same run compare).
# nemofs = `sed -i` in the mount, `nemofs umount`, `sync FILE` (what a user waits for); "+exit"
# also waits for the daemon's exit, which frees the replaced archive (not part of the commit).
#
# usage: bench/commit_ab.sh BASE_NEMOFS NEW_NEMOFS [RUNS=9] [ARCHIVE]
#   ARCHIVE: a .nemo whose model_config.yaml holds "sample_rate: 16000" or "precision: bf16"
#   (default: a 2 GiB one from tests/mount/make_big_nemo.py, generated in the work folder).
#   WORKDIR (env, default /tmp): where the copies go; same filesystem as a real commit.
set -euo pipefail
BASE=$1
NEW=$2
RUNS=${3:-9}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d "${WORKDIR:-/tmp}/nemofs-commit-ab-XXXXXX")
trap 'fusermount3 -u -z "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/mnt"
SRC=${4:-}
if [ -z "$SRC" ]; then
  SRC=$W/src.nemo
  python3 "$ROOT/tests/mount/make_big_nemo.py" "$SRC" $((2 << 30)) dense
fi
if tar xOf "$SRC" ./model_config.yaml | grep -q '^precision: bf16$'; then
  EDIT='s/^precision: bf16$/precision: fp16/'; WANT='precision: fp16'
else
  EDIT='s/sample_rate: 16000/sample_rate: 44100/'; WANT='sample_rate: 44100'
fi
now() { date +%s%N; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A T

run_cp() {
  local t0 t1
  t0=$(now); cp "$SRC" "$W/c.nemo"; sync "$W/c.nemo"; t1=$(now)
  T[cp]+="$(( (t1 - t0) / 1000000 )) "
  rm -f "$W/c.nemo"
}

run_nemofs() {
  local name=$1 bin=$2 pid t0 t1 t2
  cp "$SRC" "$W/o.nemo"; sync "$W/o.nemo"
  "$bin" mount "$W/o.nemo" "$W/mnt"
  ls "$W/mnt" > /dev/null
  pid=$("$bin" status --json | python3 -c "import json, sys; print(next(e['pid'] for e in json.load(sys.stdin) if e['mountpoint'] == '$W/mnt'))")
  t0=$(now)
  sed -i "$EDIT" "$W/mnt/model_config.yaml"
  "$bin" umount "$W/mnt" > /dev/null
  sync "$W/o.nemo"
  t1=$(now)
  # exited = gone or a zombie (its parent, not us, reaps it)
  while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; do sleep 0.002; done
  t2=$(now)
  T[$name]+="$(( (t1 - t0) / 1000000 )) "
  T[$name+exit]+="$(( (t2 - t0) / 1000000 )) "
  tar xOf "$W/o.nemo" ./model_config.yaml | grep -q "$WANT" || { echo "edit missing ($name)" >&2; exit 1; }
  rm -f "$W/o.nemo"
}

cat "$SRC" > /dev/null  # the source in the page cache for every contender alike
for i in $(seq 1 "$RUNS"); do
  case $(( i % 3 )) in
    0) run_cp; run_nemofs base "$BASE"; run_nemofs new "$NEW" ;;
    1) run_nemofs base "$BASE"; run_nemofs new "$NEW"; run_cp ;;
    2) run_nemofs new "$NEW"; run_cp; run_nemofs base "$BASE" ;;
  esac
done
cp_m=$(echo "${T[cp]}" | median)
echo "$(basename "$SRC"), $RUNS runs, ms (median, then every run); $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
for k in cp base new base+exit new+exit; do
  m=$(echo "${T[$k]}" | median)
  printf '  %-10s %6s  (%sx cp+sync)  %s\n' "$k" "$m" "$(echo "scale=2; $m / $cp_m" | bc)" "${T[$k]}"
done
