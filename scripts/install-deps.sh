#!/usr/bin/env bash
# Installs everything nemofs needs to build, test and benchmark on Debian 12 (run as root).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (apt-get install)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
  build-essential cmake pkg-config git
  libfuse3-dev fuse3
  nlohmann-json3-dev libyaml-cpp-dev zlib1g-dev libdeflate-dev
  libcurl4-openssl-dev curl nginx
  googletest libgtest-dev libgmock-dev libssl-dev
  clang libclang-rt-dev
  python3 python3-yaml python3-numpy
  python3-torch python3-omegaconf
  go-md2man dpkg-dev file lintian
  vim-tiny vim kmod strace
  archivemount fuse-zip bc
  tar libarchive-tools libarchive-dev
  xfsprogs
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Node for s3rver (the remote tier's S3 server). A Node from elsewhere (nodesource) brings its own
# npm; Debian's npm would conflict with it.
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm
fi
# s3rver, pinned, where tests/remote/servers.py and bench/remote_bench.sh look for it
# (NEMOFS_S3RVER_DIR overrides).
S3RVER_DIR=${NEMOFS_S3RVER_DIR:-/opt/nemofs/s3rver}
if [ ! -x "$S3RVER_DIR/node_modules/.bin/s3rver" ] || ! grep -q '"version": "3.7.1"' "$S3RVER_DIR/node_modules/s3rver/package.json" 2>/dev/null; then
  mkdir -p "$S3RVER_DIR"
  (cd "$S3RVER_DIR" && npm install --no-audit --no-fund --silent s3rver@3.7.1)
fi
# FUSE needs its device node; containers sometimes lack it.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
