#!/usr/bin/env bash
# The main job, end to end: install, build, then mount the bundled example .nemo, list it, read its
# config, and unmount. Run as root on a fresh Debian 12 machine: sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
NEMOFS_TESTS=OFF ./scripts/build.sh -DNEMOFS_TESTS=OFF
NEMOFS=./build/fs/nemofs
EXAMPLE=tests/data/real/nemo/asr_ctc.nemo
MNT=$(mktemp -d /tmp/nemofs-demo-XXXXXX)
cleanup() { mountpoint -q "$MNT" && $NEMOFS umount "$MNT" >/dev/null 2>&1; rmdir "$MNT" 2>/dev/null || true; }
trap cleanup EXIT

echo "== nemofs inspect $EXAMPLE"
$NEMOFS inspect "$EXAMPLE" | head -n 25
echo
echo "== nemofs mount -o ro $EXAMPLE $MNT"
$NEMOFS mount -o ro "$EXAMPLE" "$MNT"
echo "== ls -l $MNT"
ls -l "$MNT"
echo "== head $MNT/model_config.yaml"
head -n 8 "$MNT/model_config.yaml"
if [ -d "$MNT/model_weights.ckpt.tensors" ]; then
  echo "== a tensor and its sidecar"
  f=$(ls "$MNT/model_weights.ckpt.tensors" | grep -v '\.json$' | head -n 1)
  ls -l "$MNT/model_weights.ckpt.tensors/$f"
  cat "$MNT/model_weights.ckpt.tensors/$f.json"
fi
echo "== nemofs umount $MNT"
$NEMOFS umount "$MNT"
