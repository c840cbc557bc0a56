#!/bin/bash
# Folder of checkpoints benchmark (issue 20): a folder of 500 small checkpoints (3 MiB each; half
# .safetensors, half Lightning-style .ckpt torch zips), mounted with `nemofs mount` until `ls`
# of the mount answers, and the daemon's peak RSS (VmHWM) after that `ls`, after `ls -l`, and
# after looking into every view (all 500 indexed). Side by side in the same run: `ls` of the real
# folder. Targets: mount + ls <= 0.5 s, daemon peak RSS <= 64 MiB.
# Usage: bench/folder_bench.sh [nemofs binary=build/fs/nemofs] [reps=5] [scratch=$TMPDIR/nemofs-folder-bench]
# Needs root (FUSE mounts) and python3 with numpy; torch (python3-torch) for the .ckpt files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
NEMOFS=${1:-$here/../build/fs/nemofs}
REPS=${2:-5}
S=${3:-${TMPDIR:-/tmp}/nemofs-folder-bench}
N=500
mkdir -p "$S/mnt"
if [ ! -e "$S/src/.done" ]; then
  echo "generating $N checkpoints ..." >&2
  rm -rf "$S/src" && mkdir -p "$S/src"
  /usr/bin/python3 - "$S" <<'EOF'
import json, struct, sys, numpy as np
S = sys.argv[1]
# One 3 MiB safetensors file: 3 F32 tensors of 256 Ki elements.
rng = np.random.default_rng(0)
ts = {f"layers.{i}.weight": rng.standard_normal(256 * 1024, dtype=np.float32) for i in range(3)}
header, off = {}, 0
for k, t in ts.items():
    header[k] = {"dtype": "F32", "shape": [512, 512], "data_offsets": [off, off + t.nbytes]}
    off += t.nbytes
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(f"{S}/one.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for t in ts.values(): f.write(t.tobytes())
try:
    import torch
    sd = {k: torch.from_numpy(v.reshape(512, 512)) for k, v in ts.items()}
    torch.save({"epoch": 1, "global_step": 10, "state_dict": sd}, f"{S}/one.ckpt")
except ImportError:
    print("python3-torch missing: .ckpt files will be safetensors too", file=sys.stderr)
    import shutil; shutil.copy(f"{S}/one.safetensors", f"{S}/one.ckpt")
EOF
  for i in $(seq -w 1 $((N / 2))); do
    cp --reflink=auto "$S/one.safetensors" "$S/src/model-$i.safetensors"
    cp --reflink=auto "$S/one.ckpt" "$S/src/epoch=$i-step=${i}0.ckpt"
  done
  printf 'lr: 0.001\n' > "$S/src/hparams.yaml"
  touch "$S/src/.done"
fi
du -sh "$S/src" >&2
cat "$S/src"/* > /dev/null  # host page cache warm, as in bench/run

now() { date +%s.%N; }
hwm() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
pid_of() { "$NEMOFS" status --json | python3 -c "import json,sys; print([m['pid'] for m in json.load(sys.stdin) if m['mountpoint']==sys.argv[1]][0])" "$1"; }
ms=() real=() rss_ls=() rss_ll=() rss_all=()
for rep in $(seq 1 "$REPS"); do
  t0=$(now); ls "$S/src" > /dev/null; t1=$(now)
  real+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
  t0=$(now)
  "$NEMOFS" mount "$S/src" "$S/mnt"
  n=$(ls "$S/mnt" | wc -l)
  t1=$(now)
  ms+=("$(echo "($t1 - $t0) * 1000" | bc -l)")
  [ "$n" -eq $((2 * N + 1)) ] || { echo "ls shows $n entries, expected $((2 * N + 1))" >&2; exit 1; }
  pid=$(pid_of "$S/mnt")
  rss_ls+=("$(hwm "$pid")")
  ls -l "$S/mnt" > /dev/null
  rss_ll+=("$(hwm "$pid")")
  if [ "$rep" -eq 1 ]; then  # every view indexed: the other end of the scale
    t2=$(now)
    for v in "$S/mnt"/*.tensors; do ls "$v" > /dev/null; done
    t3=$(now)
    all_ms=$(echo "($t3 - $t2) * 1000" | bc -l)
    rss_all=$(hwm "$pid")
  fi
  "$NEMOFS" umount "$S/mnt" > /dev/null
  printf 'rep %d: mount + ls %.1f ms, real ls %.1f ms, VmHWM %s MiB after ls, %s MiB after ls -l\n' "$rep" \
    "${ms[-1]}" "${real[-1]}" "${rss_ls[-1]}" "${rss_ll[-1]}" >&2
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
printf 'folder of %d checkpoints (3 MiB each), nemofs mount + ls: %.1f ms (median of %d; target <= 500 ms)\n' \
  $N "$(med "${ms[@]}")" "$REPS"
printf 'the same folder, ls of the real folder:                %.1f ms\n' "$(med "${real[@]}")"
printf 'daemon peak RSS after ls: %s MiB, after ls -l: %s MiB (max of %d; target <= 64 MiB)\n' \
  "$(max "${rss_ls[@]}")" "$(max "${rss_ll[@]}")" "$REPS"
printf 'every view looked into (%d indexed): %.0f ms, daemon peak RSS %s MiB\n' $N "$all_ms" "$rss_all"
