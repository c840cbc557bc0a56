#!/usr/bin/env python3
"""Sequential cold read of a 1 GiB tensor through remote mounts, paired with curl, several rounds.

Each round, for every binary given: `curl -o /dev/null` of the tensor's range, then a mount with an
empty cache and a read of the tensor (1 MiB reads), then curl again; the ratio of that round is
curl's median time / the mount's time. Interleaving keeps a busy machine's swings on both sides.
Also a warm-cache read (blocks on disk, fresh mount) per round. Beside the times, the CPU seconds
each side used (the daemon, the reading process and nginx; curl and nginx): on a busy machine the
times swing with the share of CPU each side gets, the CPU seconds much less.

The bound: each round also reads the tensor through a mount of the local file (in the page cache),
counting the daemon's and the reader's CPU. A remote mount has to do at least what curl and nginx do
(the same requests, the same receive into memory: libcurl cannot receive into a pipe) plus what a
mount of a local file does (reply to the kernel, the reader's copy out of the page cache), so on
N cores it cannot take less than (curl's CPU + the local mount's CPU) / N: the best ratio a
libcurl-fed mount can reach on this machine is curl's time over that ("bound"). "of bound" is the
measured ratio over it.

usage: remote_seq_ab.py WORKDIR ROUNDS NEMOFS [NEMOFS2 ...]   (run from the repository root)
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "remote"))
import servers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import remote_nemo  # noqa: E402

BIG = remote_nemo.BIG


def cpu_of(pid):
    """utime + stime of a process, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def daemon_pid(b, mp):
    for e in json.loads(subprocess.run([b, "status", "--json"], capture_output=True, text=True).stdout):
        if e["mountpoint"] == os.path.realpath(mp):
            return e["pid"]
    raise RuntimeError("no daemon for " + mp)


def read_all(path):
    t0 = time.monotonic()
    got = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            got += len(b)
    assert got == BIG, got
    return time.monotonic() - t0


def curl(url, off):
    t0 = time.monotonic()
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-r", "%d-%d" % (off, off + BIG - 1), url], check=True)
    return time.monotonic() - t0


def main(W, ROUNDS, BINS):
    www = os.path.join(W, "www")
    os.makedirs(www, exist_ok=True)
    nemo = os.path.join(www, "big.nemo")
    off, _ = remote_nemo.make_nemo(nemo, W)
    with open(nemo, "rb") as f:
        while f.read(16 << 20):
            pass
    n = servers.Nginx(W, www).start()
    url = n.url("big.nemo")
    mp = os.path.join(W, "mnt")
    os.makedirs(mp, exist_ok=True)
    ratios = {b: [] for b in BINS}
    bounds = {b: [] for b in BINS}
    ncpu = os.cpu_count() or 1
    warm = {b: [] for b in BINS}
    cpu = {b: [] for b in BINS}
    try:
        for r in range(ROUNDS):
            for b in BINS:
                cache = os.path.join(W, "cache")
                shutil.rmtree(cache, ignore_errors=True)
                e = dict(os.environ, XDG_CACHE_HOME=cache)
                ng = n.proc.pid
                n0, k0 = cpu_of(ng), children_cpu()
                c1 = curl(url, off)
                curl_cpu = cpu_of(ng) - n0 + children_cpu() - k0
                subprocess.run([b, "mount", "-o", "ro" + os.environ.get("MOUNT_OPTS", ""), url, mp], env=e, check=True)
                d = daemon_pid(b, mp)
                d0, s0, n0 = cpu_of(d), self_cpu(), cpu_of(ng)
                t = read_all(os.path.join(mp, "model_weights.safetensors.tensors", "big"))
                mount_cpu = cpu_of(d) - d0 + self_cpu() - s0 + cpu_of(ng) - n0
                subprocess.run([b, "umount", mp], check=True)
                c2 = curl(url, off)
                subprocess.run([b, "mount", "-o", "ro" + os.environ.get("MOUNT_OPTS", ""), url, mp], env=e, check=True)
                d = daemon_pid(b, mp)
                d0, s0 = cpu_of(d), self_cpu()
                tw = read_all(os.path.join(mp, "model_weights.safetensors.tensors", "big"))
                warm_cpu = cpu_of(d) - d0 + self_cpu() - s0
                subprocess.run([b, "umount", mp], check=True)
                # The same tensor through a mount of the local file (cached by make_nemo's read).
                subprocess.run([b, "mount", "-o", "ro", nemo, mp], check=True)
                d = daemon_pid(b, mp)
                d0, s0 = cpu_of(d), self_cpu()
                tl = read_all(os.path.join(mp, "model_weights.safetensors.tensors", "big"))
                local_cpu = cpu_of(d) - d0 + self_cpu() - s0
                subprocess.run([b, "umount", mp], check=True)
                c = (c1 + c2) / 2
                bound = c / ((curl_cpu + local_cpu) / ncpu)
                bounds[b].append((bound, c / t / bound, local_cpu, 1024 / tl))
                ratios[b].append(c / t)
                warm[b].append(c / tw)
                cpu[b].append((mount_cpu, warm_cpu, curl_cpu))
                print("round %d %s: cold %.0f MiB/s, warm %.0f MiB/s, curl %.0f MiB/s: cold %.2fx warm %.2fx; "
                      "CPU s cold %.2f warm %.2f curl %.2f (load %.1f)"
                      % (r, b, 1024 / t, 1024 / tw, 1024 / c, c / t, c / tw, mount_cpu, warm_cpu, curl_cpu,
                         os.getloadavg()[0]), flush=True)
                print("    local mount %.0f MiB/s, CPU s %.2f; bound on %d cores %.2fx, cold is %.0f%% of it"
                      % (1024 / tl, local_cpu, ncpu, bound, 100 * c / t / bound), flush=True)
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp])
        n.stop()
    for b in BINS:
        print("%s: cold/curl median %.2fx (%s), warm/curl median %.2fx; CPU s per GiB, medians: cold %.2f, warm %.2f, "
              "curl %.2f" % (b, statistics.median(ratios[b]), " ".join("%.2f" % x for x in ratios[b]),
                             statistics.median(warm[b]), *(statistics.median(x[i] for x in cpu[b]) for i in range(3))))
        print("%s: local mount CPU s per GiB median %.2f; bound (curl's time / ((curl CPU + local mount CPU) / %d)) "
              "median %.2fx; cold reached a median %.0f%% of the bound"
              % (b, statistics.median(x[2] for x in bounds[b]), ncpu, statistics.median(x[0] for x in bounds[b]),
                 100 * statistics.median(x[1] for x in bounds[b])))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
