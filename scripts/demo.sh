#!/usr/bin/env bash
# The main job, end to end: install, build, then on a copy of the bundled example .nemo: look at it
# read-only (a config, a tensor and its sidecar), then edit it as a user would (a writable mount,
# `sed -i` on the config, a tokenizer swapped with `cp`), commit by unmounting, and show the new
# archive with tar. Run as root on a fresh Debian 12 machine: sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
NEMOFS_TESTS=OFF ./scripts/build.sh -DNEMOFS_TESTS=OFF
NEMOFS=./build/fs/nemofs
WORK=$(mktemp -d /tmp/nemofs-demo-XXXXXX)
EXAMPLE=$WORK/asr_ctc.nemo
MNT=$WORK/mnt
cp tests/data/real/nemo/asr_ctc.nemo "$EXAMPLE"
mkdir "$MNT"
cleanup() {
  mountpoint -q "$MNT" && $NEMOFS umount "$MNT" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
run() { echo "\$ $*"; "$@"; }

echo "== a look, read-only"
run $NEMOFS mount -o ro "$EXAMPLE" "$MNT"
run ls -l "$MNT"
f=$(ls "$MNT/model_weights.ckpt.tensors" | grep -v '\.json$' | head -n 1)
run cat "$MNT/model_weights.ckpt.tensors/$f.json"
echo
run $NEMOFS umount "$MNT"

echo
echo "== the main job: edit the archive in place with ordinary tools"
run $NEMOFS mount "$EXAMPLE" "$MNT"
run sed -i 's/sample_rate: 16000/sample_rate: 22050/' "$MNT/model_config.yaml"
tok=$(cd "$MNT" && ls ./*_tokenizer.model)
run cp tests/data/real/nemo/replacement_tokenizer.model "$MNT/${tok#./}"
run $NEMOFS status
run $NEMOFS umount "$MNT"

echo
echo "== the new archive, as tar sees it"
run tar tvf "$EXAMPLE"
echo "\$ tar xOf $EXAMPLE ./model_config.yaml | head -n 2"
tar xOf "$EXAMPLE" ./model_config.yaml | head -n 2
echo "\$ tar xOf $EXAMPLE ./${tok#./} | cmp - tests/data/real/nemo/replacement_tokenizer.model"
tar xOf "$EXAMPLE" "./${tok#./}" | cmp - tests/data/real/nemo/replacement_tokenizer.model && echo "(identical)"
