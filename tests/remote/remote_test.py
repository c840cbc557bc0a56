#!/usr/bin/env python3
"""Remote tier (ctest label `remote`): nemofs mounts of http://, s3:// and hf:// URLs against servers
this test starts on 127.0.0.1 (nginx, s3rver; tests/remote/servers.py) and stops by PID.

  every fixture of tests/data/real/manifest.json mounted by URL shows what its local mount shows
  (same tree, sizes, bytes): files over http://, folders over s3:// and the Hub look-alike
  request budget of a cold mount, no data request on a second mount with a warm cache
  faults: server stopped mid-read (EIO within the retry budget, reads work after it is back),
  object replaced (EIO, also for cached blocks), refusals with one line and exit 2 (404, closed
  port, wrong key, missing object/repository file), -o rw refused, no secrets in errors/status,
  a throttled server (limit_rate) mounts within THROTTLED_MOUNT_S, the cache size cap

usage: remote_test.py NEMOFS_BINARY REPO_ROOT"""

import errno
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

NEMOFS = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build/fs/nemofs"
ROOT = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.getcwd()
sys.argv[1:] = []
sys.path.insert(0, os.path.join(ROOT, "tests", "remote"))
import servers  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data", "real")
# SEMANTICS "Remote sources": the throttled mount below (megatron_gpt.nemo, 200 KB/s) must
# answer within this many seconds.
THROTTLED_MOUNT_S = 30
SECRET_TOKEN = "nemofs-test-secret-7f3a9c"

T = None  # the module's temp folder
NGINX = None
S3 = None


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_text(path):
    with open(path) as f:
        return f.read()


def big_safetensors(path, seed=1):
    """Tensors a, b (4 KiB each, block 0) then t0..t5 (2 MiB each): 12 MiB, several cache blocks."""
    tensors = [("a", 4096), ("b", 4096)] + [("t%d" % i, 2 << 20) for i in range(6)]
    header, off = {}, 0
    for name, n in tensors:
        header[name] = {"dtype": "U8", "shape": [n], "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    body = bytearray()
    for i, (name, n) in enumerate(tensors):
        body += hashlib.sha256(b"%d-%s" % (seed, name.encode())).digest() * (n // 32)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + bytes(body))


def env(**extra):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("AWS_") or k.startswith("HF_"):
            del e[k]
    e["XDG_CACHE_HOME"] = os.path.join(T, "cache")
    e.update(extra)
    return e


def s3env(**extra):
    e = env(AWS_ENDPOINT_URL=S3.endpoint(), AWS_ACCESS_KEY_ID=servers.S3_KEY,
            AWS_SECRET_ACCESS_KEY=servers.S3_SECRET, AWS_REGION="us-east-1",
            AWS_CONFIG_FILE=os.path.join(T, "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=os.path.join(T, "no-aws-credentials"))
    e.update(extra)
    return e


def hfenv(**extra):
    return env(HF_ENDPOINT=NGINX.endpoint(), **extra)


def run(args, e=None, timeout=60):
    return subprocess.run([NEMOFS] + args, env=e or env(), capture_output=True, text=True, timeout=timeout)


class Mount:
    def __init__(self, source, e=None, opts=None):
        self.mp = tempfile.mkdtemp(dir=T, prefix="mp-")
        args = ["mount"] + (["-o", opts] if opts else []) + [source, self.mp]
        self.result = run(args, e)
        self.ok = self.result.returncode == 0

    def __enter__(self):
        if not self.ok:
            raise AssertionError("mount failed: %s" % self.result.stderr)
        return self

    def __exit__(self, *exc):
        self.umount()

    def umount(self):
        if self.ok:
            subprocess.run([NEMOFS, "umount", self.mp], capture_output=True, timeout=60)
            self.ok = False

    def path(self, rel):
        return os.path.join(self.mp, rel)


def tree_of(root):
    """path -> ("dir",) | ("file", size, sha256) | ("link", target) of everything below root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for d in dirs:
            p = os.path.join(dirpath, d)
            rel = os.path.relpath(p, root)
            out[rel] = ("link", os.readlink(p)) if os.path.islink(p) else ("dir",)
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = ("file", os.path.getsize(p), servers.sha256_file(p))
    return out


def pread_err(path, off, n):
    """(bytes, 0) or (b"", errno)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return b"", e.errno
    try:
        return os.pread(fd, n, off), 0
    except OSError as e:
        return b"", e.errno
    finally:
        os.close(fd)


def make_run_folder(root):
    """A training run's output, a folder of checkpoints (SEMANTICS section 9): a NeMo 2.0 checkpoint
    directory (context/ and a DCP weights/), Lightning, torch and safetensors files and a .nemo side
    by side, files that are no checkpoint, one named like one that is not, and a damaged one."""
    os.makedirs(os.path.join(root, "step=1000", "context"))
    with open(os.path.join(root, "step=1000", "context", "model.yaml"), "w") as f:
        f.write("model:\n  hidden_size: 8\n")
    shutil.copytree(os.path.join(DATA, "dcp", "single"), os.path.join(root, "step=1000", "weights"))
    for src, name in [("lightning/tiny.ckpt", "tiny.ckpt"), ("torch/zoo.pt", "zoo.pt"), ("nemo/asr_ctc.nemo", "asr_ctc.nemo"),
                      ("safetensors/zoo.safetensors", "zoo.safetensors")]:
        shutil.copy(os.path.join(DATA, src), os.path.join(root, name))
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("loss went down\n")
    with open(os.path.join(root, "notes.pt"), "w") as f:
        f.write("named like a torch file, but text\n")
    with open(os.path.join(root, "broken.ckpt"), "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 200)


def setUpModule():
    global T, NGINX, S3
    T = tempfile.mkdtemp(prefix="nemofs-remote-")
    www = os.path.join(T, "www")
    servers.copy_fixtures(DATA, www)
    big_safetensors(os.path.join(www, "big.safetensors"))
    make_run_folder(os.path.join(www, "run"))
    NGINX = servers.Nginx(T, www, hub={"org/tiny-llama": "hf/tiny-llama", "org/run": "run"}).start()
    S3 = servers.S3rver(T).start()
    manifest = load_json(os.path.join(DATA, "manifest.json"))
    for fx in manifest["fixtures"]:
        p = os.path.join(www, fx["file"])
        if os.path.isdir(p):
            S3.put_tree(fx["file"] + "/", p)
    S3.put_tree("run/", os.path.join(www, "run"))
    S3.put("safetensors/zoo.safetensors", os.path.join(www, "safetensors", "zoo.safetensors"))
    S3.put("big.safetensors", os.path.join(www, "big.safetensors"))


def tearDownModule():
    # Any mount a failed test left behind, then the servers, then the files.
    for name in os.listdir(T):
        p = os.path.join(T, name)
        if name.startswith("mp-") and os.path.ismount(p):
            subprocess.run(["fusermount3", "-u", "-z", p], capture_output=True)
    if NGINX:
        NGINX.stop()
    if S3:
        S3.stop()
    shutil.rmtree(T, ignore_errors=True)


class Fixtures(unittest.TestCase):
    def compare(self, local, url, e):
        with Mount(local) as a, Mount(url, e, "ro") as b:
            ta, tb = tree_of(a.mp), tree_of(b.mp)
            self.assertEqual(sorted(ta), sorted(tb), url)
            self.assertEqual(ta, tb, url)
            self.assertGreater(len(ta), 1, url)
        ia = json.loads(run(["inspect", "--json", local]).stdout)
        r = run(["inspect", "--json", url], e)
        self.assertEqual(r.returncode, 0, r.stderr)
        ib = json.loads(r.stdout)
        self.assertEqual((ia["format"], ia["entries"]), (ib["format"], ib["entries"]), url)

    def test_every_fixture_by_url(self):
        manifest = load_json(os.path.join(DATA, "manifest.json"))
        seen = 0
        for fx in manifest["fixtures"]:
            local = os.path.join(DATA, fx["file"])
            with self.subTest(fixture=fx["file"]):
                if os.path.isdir(local):
                    self.compare(local, "s3://%s/%s/" % (S3.bucket, fx["file"]), s3env())
                else:
                    self.compare(local, NGINX.url(fx["file"]), env())
                seen += 1
        self.assertEqual(seen, len(manifest["fixtures"]))

    def test_server_without_head(self):
        # A presigned URL signs GET only: HEAD is refused, the size comes from a 1-byte GET.
        self.compare(os.path.join(DATA, "nemo", "asr_ctc.nemo"), NGINX.url("nemo/asr_ctc.nemo", loc="gethonly"), env())

    def test_export_from_url(self):
        # nemofs export reads a URL as mount does: the same bytes as from the local file.
        for local, url, e in [(os.path.join(DATA, "torch", "zoo.pt"), NGINX.url("torch/zoo.pt"), env()),
                              (os.path.join(DATA, "hf", "tiny-llama"), "hf://org/tiny-llama", hfenv())]:
            a, b = os.path.join(T, "export-local.safetensors"), os.path.join(T, "export-url.safetensors")
            r1 = run(["export", local, a])
            r2 = run(["export", url, b], e)
            self.assertEqual((r1.returncode, r2.returncode), (0, 0), r1.stderr + r2.stderr)
            self.assertEqual(servers.sha256_file(a), servers.sha256_file(b), url)
            os.unlink(a)
            os.unlink(b)

    def test_mount8_helper_takes_a_url(self):
        # mount(8) runs the helper with its default `rw`: a URL still mounts, read-only.
        helper = os.path.join(os.path.dirname(os.path.dirname(NEMOFS)), "mount_helper", "mount.nemofs")
        if not os.path.exists(helper):
            self.skipTest("no mount helper beside " + NEMOFS)
        mp = tempfile.mkdtemp(dir=T, prefix="mp-")
        r = subprocess.run([helper, NGINX.url("safetensors/zoo.safetensors"), mp, "-o", "rw"],
                           env=env(NEMOFS_BIN=NEMOFS), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        try:
            self.assertTrue(os.statvfs(mp).f_flag & os.ST_RDONLY)
            with Mount(os.path.join(DATA, "safetensors", "zoo.safetensors")) as local:
                self.assertEqual(tree_of(mp), tree_of(local.mp))
        finally:
            subprocess.run([NEMOFS, "umount", mp], capture_output=True, timeout=60)

    def test_s3_object_and_prefix_without_slash(self):
        self.compare(os.path.join(DATA, "safetensors", "zoo.safetensors"), "s3://ckpt/safetensors/zoo.safetensors", s3env())
        self.compare(os.path.join(DATA, "dcp", "single"), "s3://ckpt/dcp/single", s3env())

    def test_aws_profile(self):
        cred = os.path.join(T, "aws-credentials")
        conf = os.path.join(T, "aws-config")
        with open(cred, "w") as f:
            f.write("[other]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (servers.S3_KEY, servers.S3_SECRET))
        with open(conf, "w") as f:
            f.write("[profile other]\nregion = us-east-1\n")
        e = env(AWS_PROFILE="other", AWS_SHARED_CREDENTIALS_FILE=cred, AWS_CONFIG_FILE=conf,
                AWS_ENDPOINT_URL_S3=S3.endpoint())
        self.compare(os.path.join(DATA, "safetensors", "zoo.safetensors"), "s3://ckpt/safetensors/zoo.safetensors", e)
        with open(cred, "w") as f:
            f.write("[other]\naws_access_key_id = NOT-A-KEY\naws_secret_access_key = x\n")
        r = run(["inspect", "s3://ckpt/safetensors/zoo.safetensors"], e)
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_hub_repository_and_file(self):
        hf = os.path.join(DATA, "hf", "tiny-llama")
        self.compare(hf, "hf://org/tiny-llama", hfenv())
        self.compare(hf, "hf://org/tiny-llama@main", hfenv())
        self.compare(os.path.join(hf, "model-00002-of-00003.safetensors"),
                     "hf://org/tiny-llama/model-00002-of-00003.safetensors", hfenv())
        # A renamed repository answers with a redirect on the Hub itself (no X-Linked-Etag): followed.
        self.compare(os.path.join(hf, "model-00003-of-00003.safetensors"),
                     "hf://org/tiny-llama-renamed/model-00003-of-00003.safetensors", hfenv())
        # The redirect's identity is what is pinned: the CDN location is asked for bytes only.
        reqs = NGINX.requests()
        self.assertTrue(any(l.startswith("HEAD /org/tiny-llama/resolve/main/") and l.endswith(" 302") for l in reqs))
        self.assertFalse(any(l.startswith("GET /org/tiny-llama/resolve/") for l in reqs))


    def test_folder_of_checkpoints(self):
        """An S3 prefix or Hub repository that is no single checkpoint mounts as a folder of checkpoints:
        what a mount of the same local folder shows, with every view built at mount."""
        local = os.path.join(T, "www", "run")
        for url, e in [("s3://%s/run/" % S3.bucket, s3env()), ("hf://org/run", hfenv())]:
            with self.subTest(url=url):
                for opts in ["ro", "ro,safetensors"]:
                    with Mount(local, opts=opts) as a, Mount(url, e, opts) as b:
                        ta, tb = tree_of(a.mp), tree_of(b.mp)
                        # The local mount lists a view before it indexes it (section 9: lazy), so the
                        # damaged checkpoint's view is listed there until looked up; the remote one
                        # built every view at mount and leaves that one out.
                        self.assertEqual(ta.pop("broken.ckpt.tensors"), ("dir",))
                        # A local folder sniffs every file by content: the DCP shard's first object is a
                        # torch file, so it gets a view there. A remote folder asks only objects named
                        # like checkpoints for their first bytes (SEMANTICS section 11): no view.
                        shard = "step=1000/weights/__0_0.distcp.tensors"
                        self.assertTrue([k for k in ta if k.startswith(shard + "/")])
                        ta = {k: v for k, v in ta.items() if k != shard and not k.startswith(shard + "/")}
                        self.assertEqual(sorted(set(ta) ^ set(tb)), [], (url, opts))
                        self.assertEqual(ta, tb, (url, opts))
                        for v in ["step=1000/weights.tensors", "asr_ctc.nemo.tensors", "tiny.ckpt.tensors",
                                  "zoo.pt.tensors", "zoo.safetensors.tensors"]:
                            self.assertEqual(tb.get(v), ("dir",), v)
                        self.assertNotIn("notes.pt.tensors", tb)
                        self.assertEqual(tb["notes.txt"][0], "file")
                        if opts.endswith("safetensors"):
                            self.assertIn("zoo.pt.tensors/model.safetensors", tb)
                        r = run(["status", "--json"])
                        st = [m for m in json.loads(r.stdout) if m["mountpoint"] == os.path.realpath(b.mp)][0]
                        self.assertTrue(any(w.startswith("broken.ckpt: no .tensors view:") for w in st["warnings"]), st)
                ia = json.loads(run(["inspect", "--json", local]).stdout)
                ia["entries"] = [x for x in ia["entries"] if not x["path"].startswith(shard)]
                r = run(["inspect", "--json", url], e)
                self.assertEqual(r.returncode, 0, r.stderr)
                ib = json.loads(r.stdout)
                self.assertEqual((ia["format"], ia["entries"]), (ib["format"], ib["entries"]), url)
                self.assertEqual(ib["format"], "folder")
                self.assertEqual([w.split(":")[0] for w in ib["warnings"]], ["broken.ckpt"], ib["warnings"])
                self.assertEqual([w.split(":")[0] for w in ia["warnings"]], ["broken.ckpt"], ia["warnings"])
        # Requests at mount (a cold cache): the revision and the listing, then only the objects named
        # like checkpoints; notes.txt and context/model.yaml are not asked for until read.
        before = len(NGINX.requests())
        with Mount("hf://org/run", hfenv(XDG_CACHE_HOME=os.path.join(T, "cache-run")), "ro") as b:
            asked = [l.split()[1] for l in NGINX.requests()[before:]]
            self.assertFalse([u for u in asked if u.endswith("/notes.txt") or u.endswith("/model.yaml")], asked)
            self.assertTrue(any(u.endswith("/tiny.ckpt") for u in asked), asked)
            self.assertEqual(read_text(b.path("step=1000/context/model.yaml")), "model:\n  hidden_size: 8\n")

    def test_hub_repository_pinned_to_one_commit(self):
        """A repository mount lists and fetches every file at the commit its revision named when it
        was mounted. The server here is caught mid-push: the revision API and the listing of main
        still say c1, resolve/main/ already answers with c2's files (every tensor byte differs).
        A mount that asked for files at main would meet another version than the listing's (EIO);
        pinned, it shows c1 whole, bytes read after the mount included, and never asks for main
        again. A commit id as the revision is used as is (no revision request)."""
        c1, c2 = "1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"
        www = os.path.join(T, "www")
        for seed, tag in ((1, "v1"), (2, "v2")):
            d = os.path.join(www, "pinned-" + tag)
            os.makedirs(d)
            with open(os.path.join(d, "config.json"), "w") as f:
                f.write('{"model_type": "llama"}\n')
            # 12 MiB: t2..t5 lie in blocks no mount reads, fetched when read below.
            big_safetensors(os.path.join(d, "model.safetensors"), seed=seed)
        n = servers.Nginx(tempfile.mkdtemp(dir=T), www,
                          hub={"org/pinned": {"main": c1, "main_resolve": c2, c1: "pinned-v1", c2: "pinned-v2"}}).start()
        try:
            e = env(HF_ENDPOINT=n.endpoint(), XDG_CACHE_HOME=os.path.join(T, "cache-pinned"))
            with Mount(os.path.join(www, "pinned-v1")) as v1, Mount("hf://org/pinned", e, "ro") as m:
                self.assertEqual(tree_of(m.mp), tree_of(v1.mp))
            reqs = n.requests()
            self.assertIn("GET /api/models/org/pinned/revision/main - 200", reqs)
            self.assertTrue(any(l.startswith("GET /api/models/org/pinned/tree/%s " % c1) for l in reqs), reqs)
            self.assertTrue(any(l.startswith("HEAD /org/pinned/resolve/%s/model.safetensors " % c1) for l in reqs), reqs)
            self.assertFalse(any("/resolve/main/" in l or "/tree/main" in l for l in reqs), reqs)
            self.assertTrue(any(l.startswith("GET /cdn/pinned-v1/model.safetensors bytes=") for l in reqs), reqs)
            before = len(reqs)
            with Mount(os.path.join(www, "pinned-v2")) as v2, Mount("hf://org/pinned@" + c2, e, "ro") as m:
                self.assertEqual(tree_of(m.mp), tree_of(v2.mp))
            self.assertFalse(any("/revision/" in l for l in n.requests()[before:]))
        finally:
            n.stop()

class Requests(unittest.TestCase):
    def test_cold_budget_then_warm_mount_sends_no_data_request(self):
        f = "nemo/megatron_gpt.nemo"
        with tarfile.open(os.path.join(DATA, f)) as t:
            members = len(t.getmembers())
        e = env(XDG_CACHE_HOME=os.path.join(T, "cache-warm"))
        before = len(NGINX.requests())
        with Mount(NGINX.url(f), e) as m:
            os.stat(m.path("model_config.yaml"))
            cold = NGINX.requests()[before:]
            self.assertLessEqual(len(cold), members + 3, cold)
            tree_of(m.mp)
        before = len(NGINX.requests())
        t0 = time.monotonic()
        with Mount(NGINX.url(f), e) as m:
            os.stat(m.path("model_config.yaml"))
            tree = tree_of(m.mp)
            warm = NGINX.requests()[before:]
        self.assertLess(time.monotonic() - t0, 10)
        # One identity check (HEAD); a range of one byte is the periodic recheck, never data.
        data = [l for l in warm if not l.startswith("HEAD ") and " bytes=0-0 " not in l]
        self.assertEqual(data, [], warm)
        self.assertTrue(any(l.startswith("HEAD ") for l in warm))
        self.assertEqual(tree, tree_of_local(f))

    def test_gzip_index_cached_by_identity(self):
        # A gzip .nemo's seek index (a whole inflate pass to build) is cached under the remote
        # object's name+identity, as a local file's is under its stat: a second open reuses it.
        cache = os.path.join(T, "cache-gz")
        e = env(XDG_CACHE_HOME=cache)
        url = NGINX.url("nemo/asr_ctc_legacy_gz.nemo")
        first = run(["inspect", "--json", url], e)
        self.assertEqual(first.returncode, 0, first.stderr)
        idx = [f for f in os.listdir(os.path.join(cache, "nemofs")) if f.startswith("gzip-") and f.endswith(".idx")]
        self.assertEqual(len(idx), 1, os.listdir(os.path.join(cache, "nemofs")))
        path = os.path.join(cache, "nemofs", idx[0])
        before = os.stat(path).st_mtime_ns
        second = run(["inspect", "--json", url], e)
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(json.loads(first.stdout), json.loads(second.stdout))
        self.assertEqual(os.stat(path).st_mtime_ns, before)  # loaded, not rebuilt
        local = json.loads(run(["inspect", "--json", os.path.join(DATA, "nemo", "asr_ctc_legacy_gz.nemo")]).stdout)
        self.assertEqual(local["entries"], json.loads(second.stdout)["entries"])

    def test_status_shows_url_and_counters(self):
        with Mount(NGINX.url("big.safetensors"), opts="ro") as m:
            with open(m.path("t3"), "rb") as fh:
                self.assertEqual(len(fh.read()), 2 << 20)
            deadline = time.time() + 5
            while True:
                st = json.loads(run(["status", "--json"]).stdout)
                mine = [x for x in st if x["mountpoint"] == os.path.realpath(m.mp)]
                self.assertEqual(len(mine), 1)
                r = mine[0].get("remote", {})
                if r.get("bytes_fetched", 0) >= (2 << 20) or time.time() > deadline:
                    break
                time.sleep(0.2)
            self.assertEqual(mine[0]["source"], NGINX.url("big.safetensors"))
            self.assertEqual(r["url"], NGINX.url("big.safetensors"))
            self.assertGreaterEqual(r["bytes_fetched"], 2 << 20)
            self.assertGreater(r["requests"], 1)
            self.assertIn("cache_hits", r)
            self.assertEqual(r["errors"], 0)
            text = run(["status"]).stdout
            self.assertIn("remote: ", text)

    def test_cache_size_cap(self):
        cache = os.path.join(T, "cache-cap")
        with Mount(NGINX.url("big.safetensors"), env(XDG_CACHE_HOME=cache), "ro,cache_size=4M") as m:
            local = os.path.join(T, "www", "big.safetensors")
            for name in ["t0", "t1", "t2", "t3", "t4", "t5"]:
                with open(m.path(name), "rb") as fh:
                    got = hashlib.sha256(fh.read()).hexdigest()
                self.assertEqual(got, tensor_sha(local, name))
        total = 0
        for dirpath, _, files in os.walk(os.path.join(cache, "nemofs", "remote", "blocks")):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        self.assertGreater(total, 0)
        # Eviction runs after each fetch, a few parallel fetches may land after it.
        self.assertLessEqual(total, (4 << 20) + 4 * (2 << 20))


def tree_of_local(f):
    with Mount(os.path.join(DATA, f)) as m:
        return tree_of(m.mp)


def tensor_sha(path, name):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
        a, b = h[name]["data_offsets"]
        fh.seek(8 + n + a)
        return hashlib.sha256(fh.read(b - a)).hexdigest()


class Faults(unittest.TestCase):
    def own_nginx(self):
        tmp = tempfile.mkdtemp(dir=T, prefix="ngx-")
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        big_safetensors(os.path.join(www, "big.safetensors"))
        n = servers.Nginx(tmp, www).start()
        self.addCleanup(n.stop)
        return n, www

    def test_server_stopped_mid_read_then_back(self):
        n, www = self.own_nginx()
        local = os.path.join(www, "big.safetensors")
        with Mount(n.url("big.safetensors"), opts="ro,retries=2") as m:
            data, err = pread_err(m.path("a"), 0, 4096)
            self.assertEqual(err, 0)
            n.stop()
            t0 = time.monotonic()
            data, err = pread_err(m.path("t4"), 0, 4096)
            took = time.monotonic() - t0
            self.assertEqual(err, errno.EIO)
            # retries=2: 100 + 200 ms of backoff, connections refused at once.
            self.assertLess(took, 5.0)
            # Cached blocks keep being served while the server is away (b lies in a's block; the
            # once-a-second recheck cannot reach it, which is no answer).
            time.sleep(1.1)
            data, err = pread_err(m.path("b"), 0, 4096)
            self.assertEqual((len(data), err), (4096, 0))
            n.start()  # same port, same files, same ETags
            data, err = pread_err(m.path("t4"), 0, 1 << 20)
            self.assertEqual(err, 0)
            with open(local, "rb") as fh:
                hn = struct.unpack("<Q", fh.read(8))[0]
                a = json.loads(fh.read(hn))["t4"]["data_offsets"][0]
                fh.seek(8 + hn + a)
                self.assertEqual(data, fh.read(1 << 20))
            st = json.loads(run(["status", "--json"]).stdout)
            time.sleep(1.2)
            st = json.loads(run(["status", "--json"]).stdout)
            mine = [x for x in st if x["mountpoint"] == os.path.realpath(m.mp)][0]
            self.assertGreaterEqual(mine["remote"]["errors"], 1)
            self.assertIn("cannot connect", mine["remote"]["last_error"])

    def test_object_replaced_is_eio(self):
        n, www = self.own_nginx()
        local = os.path.join(www, "big.safetensors")
        with Mount(n.url("big.safetensors"), opts="ro") as m:
            data, err = pread_err(m.path("a"), 0, 4096)
            self.assertEqual(err, 0)
            st = os.stat(local)
            big_safetensors(local + ".new", seed=2)
            os.utime(local + ".new", (st.st_mtime + 100, st.st_mtime + 100))
            os.rename(local + ".new", local)
            # A block never fetched: the server refuses the old ETag (412).
            data, err = pread_err(m.path("t4"), 0, 4096)
            self.assertEqual((data, err), (b"", errno.EIO))
            # A block in the cache (b lies in a's block) of the replaced object: EIO too.
            data, err = pread_err(m.path("b"), 0, 4096)
            self.assertEqual((data, err), (b"", errno.EIO))
            time.sleep(1.2)
            st = json.loads(run(["status", "--json"]).stdout)
            mine = [x for x in st if x["mountpoint"] == os.path.realpath(m.mp)][0]
            self.assertEqual(mine.get("source_changed"), [n.url("big.safetensors")])
        # A new mount sees the new object.
        with Mount(n.url("big.safetensors"), opts="ro") as m:
            with open(m.path("t4"), "rb") as fh:
                self.assertEqual(hashlib.sha256(fh.read()).hexdigest(), tensor_sha(local, "t4"))

    def test_cached_block_of_replaced_object_is_eio(self):
        n, www = self.own_nginx()
        local = os.path.join(www, "big.safetensors")
        with Mount(n.url("big.safetensors"), opts="ro") as m:
            self.assertEqual(pread_err(m.path("a"), 0, 4096)[1], 0)
            st = os.stat(local)
            big_safetensors(local + ".new", seed=3)
            os.utime(local + ".new", (st.st_mtime + 100, st.st_mtime + 100))
            os.rename(local + ".new", local)
            time.sleep(1.1)  # the recheck of cached blocks runs at most once a second
            self.assertEqual(pread_err(m.path("b"), 0, 4096), (b"", errno.EIO))

    def refused(self, source, e=None, code=2, opts=None):
        mp = tempfile.mkdtemp(dir=T, prefix="mp-")
        args = ["mount"] + (["-o", opts] if opts else []) + [source, mp]
        r = run(args, e)
        self.assertEqual(r.returncode, code, r.stderr)
        self.assertFalse(os.path.ismount(mp))
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertNotIn(SECRET_TOKEN, r.stderr)
        return lines[0]

    def test_refusals_are_one_line(self):
        self.assertIn("not found", self.refused(NGINX.url("nemo/missing.nemo")))
        port = servers.free_port()
        self.assertIn("cannot connect", self.refused("http://127.0.0.1:%d/x.nemo" % port))
        self.assertIn("403", self.refused("s3://ckpt/big.safetensors", s3env(AWS_ACCESS_KEY_ID="WRONGKEY",
                                                                            AWS_SESSION_TOKEN=SECRET_TOKEN)))
        self.assertIn("not found", self.refused("s3://ckpt/missing.safetensors", s3env()))
        self.assertIn("not found", self.refused("hf://org/tiny-llama/missing.safetensors",
                                                hfenv(HF_TOKEN=SECRET_TOKEN)))
        self.assertIn("read-only", self.refused(NGINX.url("nemo/asr_ctc.nemo"), code=1, opts="rw"))
        # TLS: a certificate no one vouches for.
        tmp = tempfile.mkdtemp(dir=T, prefix="ngx-tls-")
        os.makedirs(os.path.join(tmp, "www"))
        tls = servers.Nginx(tmp, os.path.join(tmp, "www"), tls=True).start()
        self.addCleanup(tls.stop)
        self.assertIn("TLS error", self.refused(tls.url("x.nemo")))
        # Not a checkpoint: exit 3 as for a local file.
        self.assertIn("not a checkpoint", self.refused(NGINX.url("nemo/replacement_tokenizer.model"), code=3))

    def test_no_secrets_in_status_or_mount_table(self):
        e = s3env(AWS_SESSION_TOKEN=SECRET_TOKEN)
        with Mount("s3://ckpt/safetensors/zoo.safetensors", e, "ro") as m:
            self.assertNotIn(SECRET_TOKEN, m.result.stderr)
            time.sleep(1.1)
            self.assertNotIn(SECRET_TOKEN, run(["status", "--json"]).stdout)
            self.assertNotIn(servers.S3_SECRET + "\n", read_text("/proc/self/mountinfo"))
            self.assertNotIn(SECRET_TOKEN, read_text("/proc/self/mountinfo"))
        with Mount("hf://org/tiny-llama", hfenv(HF_TOKEN=SECRET_TOKEN), "ro") as m:
            self.assertNotIn(SECRET_TOKEN, run(["status", "--json"]).stdout)
        # A token in a URL's query never shows either.
        r = run(["inspect", NGINX.url("nemo/missing.nemo") + "?token=" + SECRET_TOKEN])
        self.assertEqual(r.returncode, 2)
        self.assertNotIn(SECRET_TOKEN, r.stderr)

    def test_throttled_server_mounts_within_timeout(self):
        f = "nemo/megatron_gpt.nemo"
        t0 = time.monotonic()
        with Mount(NGINX.url(f, loc="slow"), env(XDG_CACHE_HOME=os.path.join(T, "cache-slow")), "ro") as m:
            os.stat(m.path("model_config.yaml"))
            took = time.monotonic() - t0
            self.assertLess(took, THROTTLED_MOUNT_S)
            self.assertEqual(tree_of(m.mp), tree_of_local(f))


if __name__ == "__main__":
    unittest.main(verbosity=2)
