#!/usr/bin/env bash
# The Debian package, end to end, on this machine:
#   build it with cpack, check it with lintian (no E: lines), install it with apt-get (root only),
#   check what it installed, mount a fixture with the installed /usr/bin/nemofs, with
#   `mount -t nemofs`, `mount -t fuse.nemofs` and from an fstab-format file (`mount --fstab`), in
#   both line forms, unmount with umount(8) and `nemofs umount`, then purge the package, leaving
#   the machine as it was.
# usage: package_test.sh BUILD_DIR SOURCE_DIR        exit 77 = skipped (reason printed)
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$2" && pwd)
FIXTURE=$SRC/tests/data/real/nemo/asr_ctc.nemo
MEMBER=model_config.yaml

say() { printf '== [%ss] %s\n' "$SECONDS" "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIPPED: %s\n' "$*"; exit 77; }

command -v cpack >/dev/null || skip "cpack is not installed"
command -v dpkg-deb >/dev/null || skip "dpkg-deb is not installed"
[ -f "$BUILD/CPackConfig.cmake" ] || fail "$BUILD/CPackConfig.cmake missing: configure with cmake first"

WORK=$(mktemp -d /tmp/nemofs-pkg-XXXXXX)
INSTALLED=0
MOUNTS=()
cleanup() {
  set +e
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m"; fi
  done
  [ "$INSTALLED" = 1 ] && dpkg --purge nemofs >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

say "cpack -G DEB"
(cd "$WORK" && cpack -G DEB --config "$BUILD/CPackConfig.cmake" -B "$WORK" >cpack.log 2>&1) ||
  { cat "$WORK/cpack.log"; fail "cpack failed"; }
DEB=$(ls "$WORK"/nemofs_*.deb)
VERSION=$(dpkg-deb -f "$DEB" Version)
dpkg-deb -f "$DEB" Package Version Architecture Depends
DEPENDS=$(dpkg-deb -f "$DEB" Depends)
for d in fuse3 libfuse3-3 libc6; do
  [[ ", $DEPENDS," == *", $d"[\ ,]* ]] || fail "Depends lacks $d: $DEPENDS"
done
CONTENTS=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/nemofs ./sbin/mount.nemofs ./sbin/mount.fuse.nemofs ./usr/share/man/man1/nemofs.1.gz \
         ./usr/share/man/man8/mount.nemofs.8.gz ./usr/share/man/man8/mount.fuse.nemofs.8.gz \
         ./usr/share/bash-completion/completions/nemofs ./usr/share/doc/nemofs/copyright \
         ./usr/share/doc/nemofs/changelog.Debian.gz; do
  grep -q " $f\( \|$\)" <<<"$CONTENTS" || fail "$f is not in the package"
done

if command -v lintian >/dev/null; then
  say "lintian"
  LINTIAN=$(lintian --info "$DEB" 2>&1 | grep -v 'running with root privileges' || true)
  grep -E '^[EWI]:' <<<"$LINTIAN" || echo "(no tags)"
  if grep -q '^E:' <<<"$LINTIAN"; then printf '%s\n' "$LINTIAN"; fail "lintian reports errors"; fi
else
  say "lintian is not installed: not run (apt-get install lintian)"
fi

[ "$(id -u)" = 0 ] || skip "installing the package needs root (package built and checked: $DEB)"
if dpkg-query -W -f='${Status}' nemofs 2>/dev/null | grep -q "install ok installed"; then
  skip "a nemofs package is already installed here; not replacing it"
fi
for f in /usr/bin/nemofs /sbin/mount.nemofs /sbin/mount.fuse.nemofs; do
  [ -e "$f" ] && skip "$f exists outside the package manager; not overwriting it"
done

say "apt-get install $DEB"
INSTALLED=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEB" >"$WORK/apt.log" 2>&1 ||
  { cat "$WORK/apt.log"; fail "apt-get install failed"; }
[ "$(/usr/bin/nemofs --version)" = "nemofs ${VERSION%-*}" ] || fail "/usr/bin/nemofs --version: $(/usr/bin/nemofs --version)"
[ -x /sbin/mount.nemofs ] && [ -x /sbin/mount.fuse.nemofs ] || fail "mount helpers missing from /sbin"
for m in man1/nemofs.1.gz man8/mount.nemofs.8.gz man8/mount.fuse.nemofs.8.gz; do
  gzip -t "/usr/share/man/$m" || fail "/usr/share/man/$m is not a gzip file"
done
bash -c 'source /usr/share/bash-completion/completions/nemofs; COMP_WORDS=(nemofs mo); COMP_CWORD=1; _nemofs;
         [ "${COMPREPLY[*]}" = mount ]' || fail "installed bash completion does not complete 'nemofs mo'"

if [ ! -e /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
  say "package installed and checked; FUSE is not available here, so nothing is mounted"
  dpkg --purge nemofs >/dev/null; INSTALLED=0
  skip "mounting with the installed package needs /dev/fuse and fusermount3"
fi

WANT=$(python3 -c 'import json,sys; print([f for f in json.load(open(sys.argv[1]))["fixtures"]
                     if f["file"] == "nemo/asr_ctc.nemo"][0]["files"][sys.argv[2]])' \
       "$SRC/tests/data/real/manifest.json" "$MEMBER")
MNT=$WORK/mnt; MNT2=$WORK/mnt2; MNT3=$WORK/mnt3
mkdir -p "$MNT" "$MNT2" "$MNT3"
MOUNTS=("$MNT" "$MNT2" "$MNT3")

# Checks MP is a fuse.nemofs mount of the fixture with the right bytes; remembers its daemon's pid.
check_mounted() {
  local mp=$1 how=$2
  grep -q "^$FIXTURE $mp fuse.nemofs " /proc/self/mounts || fail "$how: $mp is not a fuse.nemofs mount of $FIXTURE"
  [ "$(sha256sum <"$mp/$MEMBER" | cut -d' ' -f1)" = "$WANT" ] || fail "$how: $mp/$MEMBER has the wrong bytes"
  PID=$(/usr/bin/nemofs status --json | python3 -c 'import json,sys
print(next(m["pid"] for m in json.load(sys.stdin) if m["mountpoint"] == sys.argv[1]))' "$mp")
  echo "ok [${SECONDS}s]: $how"
}
# umount(8) returns before the daemon exits; wait for it so nothing runs when the package goes.
wait_daemon() { local n=0; while kill -0 "$1" 2>/dev/null; do sleep 0.1; n=$((n + 1)); [ $n -lt 300 ] || fail "daemon $1 did not exit"; done; }
plain_umount() { local pid=$PID; umount "$1" || fail "umount $1"; wait_daemon "$pid"; }
nemofs_umount() { /usr/bin/nemofs umount "$1" >/dev/null || fail "nemofs umount $1"; }

say "mounts through the installed package"
/usr/bin/nemofs mount -o ro "$FIXTURE" "$MNT" || fail "/usr/bin/nemofs mount"
check_mounted "$MNT" "/usr/bin/nemofs mount -o ro"
nemofs_umount "$MNT"

mount -t nemofs -o ro "$FIXTURE" "$MNT" || fail "mount -t nemofs"
check_mounted "$MNT" "mount -t nemofs -o ro"
plain_umount "$MNT"

mount -t fuse.nemofs "$FIXTURE" "$MNT" || fail "mount -t fuse.nemofs"
check_mounted "$MNT" "mount -t fuse.nemofs"
nemofs_umount "$MNT"

FSTAB=$WORK/fstab
cat >"$FSTAB" <<EOF
# Both forms of an fstab line for nemofs, as in mount.nemofs(8).
$FIXTURE  $MNT   nemofs       ro,noauto,nofail,_netdev,x-systemd.automount,comment=nemofs-test  0 0
$FIXTURE  $MNT2  fuse.nemofs  defaults,noauto,users,nofail  0 0
$FIXTURE  $MNT3  nemofs       auto,ro,nofail  0 0
EOF
mount --fstab "$FSTAB" "$MNT" || fail "mount --fstab (type nemofs)"
check_mounted "$MNT" "fstab line of type nemofs"
grep -q " $MNT fuse.nemofs ro[, ]" /proc/self/mounts || fail "fstab ro was not honoured"
mount --fstab "$FSTAB" "$MNT2" || fail "mount --fstab (type fuse.nemofs)"
check_mounted "$MNT2" "fstab line of type fuse.nemofs"
# -a mounts every line without noauto: only the third.
mount --fstab "$FSTAB" -a -t nemofs,fuse.nemofs || fail "mount --fstab -a"
check_mounted "$MNT3" "fstab line mounted by mount -a"
plain_umount "$MNT3"
nemofs_umount "$MNT2"
check_mounted "$MNT" "fstab line of type nemofs"
plain_umount "$MNT"
! grep ' fuse.nemofs ' /proc/self/mounts | grep -q " $WORK/" || fail "a mount was left behind"

say "dpkg --purge nemofs"
dpkg --purge nemofs >/dev/null || fail "dpkg --purge nemofs"
INSTALLED=0
for f in /usr/bin/nemofs /sbin/mount.nemofs /sbin/mount.fuse.nemofs /usr/share/man/man1/nemofs.1.gz; do
  [ ! -e "$f" ] || fail "$f is still there after purge"
done
echo "package test: ok"
