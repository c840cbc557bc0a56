#!/usr/bin/env python3
"""Remote mounts against nginx on loopback, side by side with curl (bench/remote_bench.sh runs this).

A SIZE-GiB .nemo (model_config.yaml + model_weights.safetensors holding a 1 GiB tensor `big` and
filler) is served by nginx on 127.0.0.1 (tests/remote/servers.py), then:
  1. cold mount until model_config.yaml stats; requests it took (budget: members + 3)
  2. sequential read of the 1 GiB tensor through the mount vs `curl -o /dev/null` of its range
     (SEQ_REPS times, default 3, each with an empty cache and between two curl runs; median ratio)
  3. random 4 KiB reads, cold cache (every read in a block never fetched): median latency vs the
     median of one `curl -r` range request (a process each, as a user would run it)
  4. second mount with a warm cache: time until model_config.yaml stats, data requests sent
  5. the daemon's peak RSS (VmHWM) after reading the 1 GiB tensor
usage: [MOUNT_OPTS=,connections=16] [SEQ_REPS=3] remote_bench.py NEMOFS REPO_ROOT WORKDIR SIZE_GIB"""

import json
import os
import random
import statistics
import subprocess
import sys
import time

NEMOFS, ROOT, W, SIZE_GIB = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, os.path.join(ROOT, "tests", "remote"))
import servers  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import remote_nemo  # noqa: E402

BIG = remote_nemo.BIG


def env(cache):
    e = dict(os.environ)
    e["XDG_CACHE_HOME"] = cache
    return e


def mount(url, mp, cache, opts="ro" + os.environ.get("MOUNT_OPTS", "")):
    t0 = time.monotonic()
    subprocess.run([NEMOFS, "mount", "-o", opts, url, mp], env=env(cache), check=True)
    os.stat(os.path.join(mp, "model_config.yaml"))
    return time.monotonic() - t0


def umount(mp):
    subprocess.run([NEMOFS, "umount", mp], check=True, capture_output=True)


def daemon_pid(mp):
    for e in json.loads(subprocess.run([NEMOFS, "status", "--json"], capture_output=True, text=True).stdout):
        if e["mountpoint"] == os.path.realpath(mp):
            return e["pid"]
    return None


def vmhwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def data_requests(lines):
    return [l for l in lines if not l.startswith("HEAD ") and " bytes=0-0 " not in l]


def main():
    www = os.path.join(W, "www")
    os.makedirs(www)
    nemo = os.path.join(www, "big.nemo")
    t0 = time.monotonic()
    big_off, members = remote_nemo.make_nemo(nemo, W, SIZE_GIB)
    print("# %d GiB .nemo written in %.1f s; tensor `big` at byte %d" % (SIZE_GIB, time.monotonic() - t0, big_off))
    with open(nemo, "rb") as f:  # the server reads from the page cache for every contender alike
        while f.read(16 << 20):
            pass
    n = servers.Nginx(W, www).start()
    url = n.url("big.nemo")
    mp = os.path.join(W, "mnt")
    os.makedirs(mp)
    rows = []
    try:
        # 1. cold mount
        cache = os.path.join(W, "cache1")
        before = len(n.requests())
        t_mount = mount(url, mp, cache)
        reqs = len(n.requests()) - before
        rows.append(("cold mount until model_config.yaml stats", "%.3f s" % t_mount, "%d requests (budget %d)" % (reqs, members + 3)))
        # 2. sequential 1 GiB, SEQ_REPS times (each with an empty cache), each between two curl runs
        #    of the same range: the ratio of a rep is curl's mean time / the mount's time.
        tensor = os.path.join(mp, "model_weights.safetensors.tensors", "big")
        curl_range = ["curl", "-s", "-o", "/dev/null", "-r", "%d-%d" % (big_off, big_off + BIG - 1), url]
        seq = []
        rss = 0
        for rep in range(int(os.environ.get("SEQ_REPS", "3"))):
            if rep:
                mount(url, mp, os.path.join(W, "cache-seq%d" % rep))
            t0 = time.monotonic()
            subprocess.run(curl_range, check=True)
            c1 = time.monotonic() - t0
            t0 = time.monotonic()
            with open(tensor, "rb", buffering=0) as f:
                got = 0
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    got += len(b)
            t_seq = time.monotonic() - t0
            assert got == BIG, got
            pid = daemon_pid(mp)
            rss = max(rss, vmhwm_kib(pid) if pid else 0)
            umount(mp)
            t0 = time.monotonic()
            subprocess.run(curl_range, check=True)
            c2 = time.monotonic() - t0
            seq.append((t_seq, (c1 + c2) / 2))
        ratios = sorted(c / t for t, c in seq)
        t_seq, t_curl = statistics.median(t for t, _ in seq), statistics.median(c for _, c in seq)
        rows.append(("sequential read of the 1 GiB tensor, cold cache (median of %d, each beside two curl runs)" % len(seq),
                     "%.3f s (%.0f MiB/s)" % (t_seq, 1024 / t_seq),
                     "curl -o /dev/null of the range: %.3f s (%.0f MiB/s); ratio of curl's throughput, median %.2fx (%s)"
                     % (t_curl, 1024 / t_curl, statistics.median(ratios), " ".join("%.2f" % r for r in ratios))))
        rows.append(("daemon peak RSS (VmHWM) after reading 1 GiB", "%d MiB" % (rss // 1024), "budget 128 MiB"))
        # 3. random 4 KiB reads, cold cache
        cache = os.path.join(W, "cache2")
        mount(url, mp, cache)
        rnd = random.Random(7)
        blocks = rnd.sample(range(1, BIG // (2 << 20) - 1), 40)
        offs = [b * (2 << 20) + rnd.randrange(0, (2 << 20) - 4096) for b in blocks]
        lat = []
        fd = os.open(tensor, os.O_RDONLY)
        for o in offs:
            t0 = time.monotonic()
            assert len(os.pread(fd, 4096, o)) == 4096
            lat.append(time.monotonic() - t0)
        os.close(fd)
        umount(mp)
        curl_lat = []
        for o in offs:
            t0 = time.monotonic()
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-r", "%d-%d" % (big_off + o, big_off + o + 4095), url], check=True)
            curl_lat.append(time.monotonic() - t0)
        m1, m2 = statistics.median(lat), statistics.median(curl_lat)
        rows.append(("random 4 KiB reads, cold cache (median of %d)" % len(lat), "%.2f ms" % (m1 * 1e3),
                     "one curl range request: %.2f ms; ratio %.2fx" % (m2 * 1e3, m1 / m2)))
        # 4. warm second mount (the cache of run 1)
        cache = os.path.join(W, "cache1")
        before = len(n.requests())
        t_warm = mount(url, mp, cache)
        warm = n.requests()[before:]
        t0 = time.monotonic()
        with open(tensor, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        t_wseq = time.monotonic() - t0
        umount(mp)
        rows.append(("second mount, warm cache, until model_config.yaml stats", "%.1f ms" % (t_warm * 1e3),
                     "%d requests, %d of them data requests" % (len(warm), len(data_requests(warm)))))
        rows.append(("sequential read of the 1 GiB tensor again, second mount", "%.3f s (%.0f MiB/s)" % (t_wseq, 1024 / t_wseq),
                     "read-ahead is not kept in the block cache: from the server again"))
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", mp])
        n.stop()
    print("| measure | nemofs | beside it |")
    print("|---|---|---|")
    for r in rows:
        print("| %s | %s | %s |" % r)


main()
