#!/usr/bin/python3
"""Peak RSS per tar member (issue 19): a .nemo of N empty members (tests/memory/hostile.py's
tar_300k_members shape) through `inspect`, `inspect --json`, a read-only mount and a writable
mount, against the same run on a one-member .nemo (the baseline), for one or more nemofs binaries
side by side (e.g. main's and a branch's).

usage: bench/tar_members_memory.py NEMOFS [NEMOFS2 ...] [--members N]

Peaks are wait4's ru_maxrss of the nemofs process (hostile.py --measure), so they include the
measuring helper's share as hostile.py's do; the per-member figure is (peak - baseline) / N.
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "memory"))
import hostile  # noqa: E402

MiB = 1 << 20


def peak(nemofs, path, how, last):
    if how.startswith("inspect"):
        argv = [nemofs, "inspect"] + (["--json"] if how == "inspect --json" else []) + [path]
        rc, _, err, p = hostile.measured_result(hostile.start_measured(argv))
        return p, rc
    mp = tempfile.mkdtemp(prefix="nemofs-tarmem-")
    argv = [nemofs, "mount", "-f"] + (["-o", "ro"] if how == "mount -o ro" else []) + [path, mp]
    helper = hostile.start_measured(argv)
    deadline = time.time() + 120
    while not os.path.ismount(mp) and helper.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    ok = os.path.ismount(mp) and os.path.exists(os.path.join(mp, last))
    subprocess.run(["fusermount3", "-u", mp], check=False, stderr=subprocess.DEVNULL)
    rc, _, err, p = hostile.measured_result(helper)
    os.rmdir(mp)
    return p, rc if ok else (rc or 1)


def main():
    args = sys.argv[1:]
    n = 300_000
    if "--members" in args:
        i = args.index("--members")
        n = int(args[i + 1])
        del args[i:i + 2]
    if not args:
        print(__doc__)
        return 1
    with tempfile.TemporaryDirectory(prefix="nemofs-tarmem-") as d:
        big, small = os.path.join(d, "members.nemo"), os.path.join(d, "one.nemo")
        hostile.write_members_nemo(big, n)
        hostile.write_members_nemo(small, 1)
        print("load: %s" % open("/proc/loadavg").read().strip())
        print("| run | binary | baseline (1 member) | %d members | per member |" % n)
        print("|---|---|---|---|---|")
        for how in ("inspect", "inspect --json", "mount -o ro", "mount"):
            for b in args:
                p0, rc0 = peak(b, small, how, "e0000000")
                p1, rc1 = peak(b, big, how, "e%07d" % (n - 1))
                bad = "" if rc0 == 0 and rc1 == 0 else " (exit %d/%d)" % (rc0, rc1)
                print("| %s | %s | %.1f MiB | %.1f MiB | %.0f B%s |" % (how, b, p0 / MiB, p1 / MiB, (p1 - p0) / n, bad))
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
