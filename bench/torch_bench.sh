#!/bin/bash
# Mount benchmark for a big torch.save zip: a state_dict of N tensors (default 5,000; F32 and BF16,
# shapes [8,16] and [128]) written like torch.save does (protocol-2 pickle with persistent storage
# ids, archive/data/<key> records) by /usr/bin/python3 (zipfile + pickle, no torch needed).
# Each run times, through the real FUSE mount:
#   mount   `nemofs mount ZIP MNT` (returns once the mount answers)
#   ls      `ls -R MNT > /dev/null`
#   lsl     `ls -lR MNT > /dev/null` (stats every file: renders every sidecar)
#   umount  `nemofs umount MNT`
# and reports per binary the median of RUNS runs (binaries alternate run by run, so a busy machine
# hurts them alike), plus the peak RSS of the mounting process (indexing happens there) and the
# daemon's RSS after the listing. Target (project issue): mount + ls -R <= 0.2 s.
#
# Usage: bench/torch_bench.sh [-n RUNS] [-t TENSORS] [-w WORKDIR] [NEMOFS...]
#   NEMOFS: nemofs binaries to compare (label = path); default: a Release build of this checkout
#   in build-bench/. Needs /dev/fuse and fusermount3. Prints one line per binary:
#   torch_zip_mount <label> tensors=N runs=R mount_s=.. ls_s=.. mount_ls_s=.. lsl_s=.. umount_s=.. peak_rss_kb=.. daemon_rss_kb=..
set -euo pipefail
RUNS=7
TENSORS=5000
WORK=${TMPDIR:-/tmp}/nemofs_torch_bench
while getopts "n:t:w:" o; do
  case $o in
    n) RUNS=$OPTARG ;;
    t) TENSORS=$OPTARG ;;
    w) WORK=$OPTARG ;;
    *) echo "usage: $0 [-n RUNS] [-t TENSORS] [-w WORKDIR] [NEMOFS...]" >&2; exit 1 ;;
  esac
done
shift $((OPTIND - 1))
here=$(cd "$(dirname "$0")/.." && pwd)
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
  cmake -S "$here" -B "$here/build-bench" -DCMAKE_BUILD_TYPE=Release -DNEMOFS_TESTS=OFF >/dev/null
  cmake --build "$here/build-bench" -j2 --target nemofs >/dev/null
  BINS=("$here/build-bench/fs/nemofs")
fi
mkdir -p "$WORK"
ZIP="$WORK/state_dict_$TENSORS.pt"
if [ ! -s "$ZIP" ]; then
  /usr/bin/python3 - "$ZIP.tmp" "$TENSORS" <<'PY'
import collections, io, pickle, sys, types, zipfile
out, n = sys.argv[1], int(sys.argv[2])
# Stand-ins with torch's names, so pickle writes the GLOBALs torch.save writes.
torch = types.ModuleType('torch'); utils = types.ModuleType('torch._utils')
sys.modules['torch'] = torch; sys.modules['torch._utils'] = utils
class FloatStorage: pass
class BFloat16Storage: pass
FloatStorage.__module__ = BFloat16Storage.__module__ = 'torch'
torch.FloatStorage, torch.BFloat16Storage = FloatStorage, BFloat16Storage
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = 'torch._utils'
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class Tensor:
    def __init__(s, key, cls, shape): s.key, s.cls, s.shape = key, cls, shape
    def __reduce__(s):
        stride, numel = [], 1
        for d in reversed(s.shape): stride.insert(0, numel); numel *= d
        pid = ('storage', s.cls, s.key, 'cpu', numel)
        return (_rebuild_tensor_v2, (pid, 0, tuple(s.shape), tuple(stride), False, collections.OrderedDict()))
class Saver(pickle.Pickler):
    def persistent_id(self, o):
        return o if isinstance(o, tuple) and len(o) == 5 and o[0] == 'storage' else None
sd, blobs = collections.OrderedDict(), []
for i in range(n):
    cls = BFloat16Storage if i % 5 == 0 else FloatStorage
    sd[f'model.layers.{i // 10}.block.{i % 10}.weight'] = Tensor(str(i), cls, [8, 16] if i % 3 else [128])
    blobs.append(bytes((i + k) & 255 for k in range(128 * (2 if cls is BFloat16Storage else 4))))
pkl = io.BytesIO()
Saver(pkl, protocol=2).dump(sd)
with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', pkl.getvalue())
    z.writestr('archive/byteorder', 'little')
    for i, b in enumerate(blobs): z.writestr(f'archive/data/{i}', b)
    z.writestr('archive/version', '3\n')
PY
  mv "$ZIP.tmp" "$ZIP"
fi
cat "$ZIP" > /dev/null
MNT="$WORK/mnt"
mkdir -p "$MNT"
fusermount3 -u "$MNT" 2>/dev/null || true

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A T
for ((r = 0; r < RUNS; r++)); do
  for ((b = 0; b < ${#BINS[@]}; b++)); do
    bin=${BINS[$b]}
    t0=$(now)
    /usr/bin/time -f %M -o "$WORK/rss.$b" "$bin" mount "$ZIP" "$MNT"
    t1=$(now)
    ls -R "$MNT" > /dev/null
    t2=$(now)
    ls -lR "$MNT" > /dev/null
    t3=$(now)
    daemon=$(ps -eo pid=,rss=,args= | awk -v m="$MNT" '$0 ~ " mount " && index($0, m) {print $2; exit}')
    n=$(ls "$MNT" | wc -l)
    t4=$(now)
    "$bin" umount "$MNT" >/dev/null
    t5=$(now)
    if [ "$n" -ne $((2 * TENSORS)) ]; then
      echo "torch_bench: $bin shows $n entries, expected $((2 * TENSORS))" >&2
      exit 1
    fi
    T[$b,mount]+="$(echo "$t1 - $t0" | bc -l) "
    T[$b,ls]+="$(echo "$t2 - $t1" | bc -l) "
    T[$b,mount_ls]+="$(echo "$t2 - $t0" | bc -l) "
    T[$b,lsl]+="$(echo "$t3 - $t2" | bc -l) "
    T[$b,umount]+="$(echo "$t5 - $t4" | bc -l) "
    T[$b,rss]+="$(cat "$WORK/rss.$b") "
    T[$b,drss]+="${daemon:-0} "
  done
done
for ((b = 0; b < ${#BINS[@]}; b++)); do
  line="torch_zip_mount ${BINS[$b]} tensors=$TENSORS runs=$RUNS"
  for k in mount ls mount_ls lsl umount; do
    line+=" ${k}_s=$(printf '%.4f' "$(echo "${T[$b,$k]}" | tr ' ' '\n' | grep . | median)")"
  done
  line+=" peak_rss_kb=$(echo "${T[$b,rss]}" | tr ' ' '\n' | grep . | median)"
  line+=" daemon_rss_kb=$(echo "${T[$b,drss]}" | tr ' ' '\n' | grep . | median)"
  echo "$line"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
