#!/usr/bin/env bash
# Builds the small tree the tar producer matrix archives (tests/unit/tar_matrix_test.cpp), in $1:
# folders (one empty), a name over 100 bytes (ustar can still split it at a '/'), non-ASCII names,
# an empty file, a file with data at its start, middle and end and holes between (truncate + dd
# seek: the tools see real holes and write a sparse member), a hard link and a symlink.
set -euo pipefail
d=$1
rm -rf "$d"
mkdir -p "$d/dir/sub" "$d/empty_dir" "$d/dir/$(printf 'd%.0s' {1..60})"
printf 'model:\n  lr: 0.1\n' >"$d/model_config.yaml"
printf 'plain text\n' >"$d/dir/plain.txt"
printf 'deep\n' >"$d/dir/sub/deep.txt"
printf 'long name\n' >"$d/dir/$(printf 'd%.0s' {1..60})/$(printf 'n%.0s' {1..70}).txt"
printf 'unicode\n' >"$d/dir/naïve_日本語_ü.txt"
: >"$d/empty.bin"
{ seq 1 20000 || true; } | head -c 70000 >"$d/dir/random.bin"
# 3 MiB + 5 bytes: data at the start, in the middle, at the end; holes between.
truncate -s $((3 * 1024 * 1024 + 5)) "$d/sparse.bin"
printf 'START-OF-FILE' | dd of="$d/sparse.bin" conv=notrunc status=none
{ seq 100000 110000 || true; } | head -c 8192 | dd of="$d/sparse.bin" bs=4096 seek=300 conv=notrunc status=none
printf 'END' | dd of="$d/sparse.bin" bs=1 seek=$((3 * 1024 * 1024 + 2)) conv=notrunc status=none
ln "$d/dir/plain.txt" "$d/hard.txt"
ln -s dir/plain.txt "$d/sym"
touch -d '2024-01-02 03:04:05' "$d"/* "$d"/dir/*
