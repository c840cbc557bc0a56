"""Loopback servers for the remote tier: nginx (files, a Hub look-alike, a throttled location) and
s3rver, each started on 127.0.0.1 at a free port with its files in a temp folder, stopped by PID.
Shared by tests/remote/remote_test.py and bench/remote_bench.sh. Nothing here reaches another host."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

S3RVER_DIR = os.environ.get("NEMOFS_S3RVER_DIR", "/opt/nemofs/s3rver")
S3_KEY = "S3RVER"  # s3rver's fixed test credentials
S3_SECRET = "S3RVER"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Nginx:
    """nginx in the foreground, one process (master_process off), serving `www`:
      /files/PATH                       the file, with Range and ETag (nginx's "mtime-size")
      /slow/PATH                        the same at `slow_rate` bytes per second (limit_rate)
      /ORG/REPO/resolve/REV/PATH        the Hub: 302 to /cdn/FOLDER/PATH with X-Linked-Etag (sha256),
                                        X-Linked-Size, X-Repo-Commit
      /api/models/ORG/REPO/tree/REV     the Hub's tree API (static JSON)
      /api/models/ORG/REPO/revision/REV the revision API: {"sha": COMMIT, ...}
    `hub` maps "ORG/REPO" to a folder below www (commit COMMIT, named by main), or to
    {"main": C1, C1: folder1, C2: folder2}: REV is main or a commit id, each commit its own folder
    (and "main_resolve": C2 makes resolve/main/... answer for C2 while the listing's main is C1).
    `port` may be given to restart on the same port (a "push": main names another commit)."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, tmp, www, hub=None, port=None, slow_rate="200k", tls=False):
        self.tmp, self.www, self.hub = tmp, www, hub or {}
        self.tls = tls
        self.port = port or free_port()
        self.slow_rate = slow_rate
        self.proc = None
        self.log = os.path.join(tmp, "nginx-access.log")

    def url(self, path, loc="files"):
        return "%s://127.0.0.1:%d/%s/%s" % ("https" if self.tls else "http", self.port, loc, path)

    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def _hub_locations(self):
        out = []
        for repo, spec in self.hub.items():
            # "folder": one commit (COMMIT) that main names; or {"main": C, C: folder, C2: folder2, ...}:
            # several commits, each its own folder (the CDN's locations are per content, as the Hub's).
            commits = {"main": self.COMMIT, self.COMMIT: spec} if isinstance(spec, str) else spec
            for rev, folder in commits.items():
                if rev in ("main", "main_resolve"):
                    continue
                # "main_resolve": resolve/main/... answers for another commit than the listing's
                # main (a push that lands between a client's listing and its file requests).
                revs = [rev] + (["main"] if commits["main"] == rev else [])
                resolve_revs = [rev] + (["main"] if commits.get("main_resolve", commits["main"]) == rev else [])
                root = os.path.join(self.www, folder)
                tree = []
                for dirpath, _, files in os.walk(root):
                    for name in sorted(files):
                        full = os.path.join(dirpath, name)
                        rel = os.path.relpath(full, root)
                        size = os.path.getsize(full)
                        sha = sha256_file(full)
                        tree.append({"type": "file", "oid": sha[:40], "size": size, "path": rel,
                                     "lfs": {"oid": sha, "size": size, "pointerSize": 130}})
                        for r in resolve_revs:
                            out.append(
                                "location = /%s/resolve/%s/%s {\n"
                                "  add_header X-Linked-Etag '\"%s\"' always;\n"
                                "  add_header X-Linked-Size %d always;\n"
                                "  add_header X-Repo-Commit %s always;\n"
                                "  return 302 /cdn/%s/%s;\n}\n" % (repo, r, rel, sha, size, rev, folder, rel))
                tree_file = os.path.join(self.tmp, "tree-%s-%s.json" % (repo.replace("/", "_"), rev))
                with open(tree_file, "w") as f:
                    json.dump(tree, f)
                # The revision API (huggingface_hub's repo_info): the commit a revision names.
                rev_file = os.path.join(self.tmp, "revision-%s-%s.json" % (repo.replace("/", "_"), rev))
                with open(rev_file, "w") as f:
                    json.dump({"id": repo, "sha": rev, "siblings": [{"rfilename": t["path"]} for t in tree]}, f)
                for r in revs:
                    out.append("location = /api/models/%s/tree/%s {\n  default_type application/json;\n"
                               "  alias %s;\n}\n" % (repo, r, tree_file))
                    out.append("location = /api/models/%s/revision/%s {\n  default_type application/json;\n"
                               "  alias %s;\n}\n" % (repo, r, rev_file))
            # A renamed repository: the Hub redirects on itself, without X-Linked-Etag.
            out.append("location /%s-renamed/resolve/ {\n  rewrite ^/%s-renamed/(.*)$ /%s/$1 redirect;\n}\n"
                       % (repo, repo, repo))
        return "".join(out)

    def _tls(self):
        """A self-signed certificate no client trusts: the TLS failure case."""
        if not self.tls:
            return ""
        key, crt = os.path.join(self.tmp, "tls.key"), os.path.join(self.tmp, "tls.crt")
        if not os.path.exists(crt):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                            "-days", "1", "-subj", "/CN=nemofs-test"], check=True, capture_output=True)
        return "    ssl_certificate %s;\n    ssl_certificate_key %s;\n" % (crt, key)

    def start(self):
        conf = os.path.join(self.tmp, "nginx.conf")
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.tmp, "ngx_" + d), exist_ok=True)
        t = self.tmp
        with open(conf, "w") as f:
            f.write(f"""daemon off;
master_process off;
pid {t}/nginx.pid;
error_log {t}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {self.log} combined;
  log_format reqs '$request_method $uri $http_range $status';
  access_log {t}/requests.log reqs;
  client_body_temp_path {t}/ngx_client_body;
  proxy_temp_path {t}/ngx_proxy;
  fastcgi_temp_path {t}/ngx_fastcgi;
  uwsgi_temp_path {t}/ngx_uwsgi;
  scgi_temp_path {t}/ngx_scgi;
  default_type application/octet-stream;
  sendfile on;
  absolute_redirect off;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{self.port}{" ssl" if self.tls else ""};
{self._tls()}
    location /files/ {{ alias {self.www}/; }}
    location /slow/ {{ alias {self.www}/; limit_rate {self.slow_rate}; }}
    location /cdn/ {{ alias {self.www}/; }}
    location /gethonly/ {{ alias {self.www}/; if ($request_method = HEAD) {{ return 403; }} }}
{self._hub_locations()}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", t, "-e", t + "/nginx-error.log"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self):
        stop(self.proc)
        self.proc = None

    def requests(self):
        """Lines of the request log: 'METHOD URI RANGE STATUS'."""
        try:
            with open(os.path.join(self.tmp, "requests.log")) as f:
                return [l.rstrip("\n") for l in f]
        except FileNotFoundError:
            return []


class S3rver:
    def __init__(self, tmp, bucket="ckpt"):
        self.tmp, self.bucket = tmp, bucket
        self.port = free_port()
        self.proc = None

    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        exe = os.path.join(S3RVER_DIR, "node_modules", ".bin", "s3rver")
        if not os.path.exists(exe):
            raise RuntimeError("s3rver not installed in %s (run scripts/install-deps.sh)" % S3RVER_DIR)
        data = os.path.join(self.tmp, "s3data")
        os.makedirs(data, exist_ok=True)
        self.proc = subprocess.Popen(["node", exe, "-d", data, "-a", "127.0.0.1", "-p", str(self.port), "-s",
                                      "--no-vhost-buckets", "--configure-bucket", self.bucket],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def put(self, key, path):
        # curl's own SigV4 signing: the same code path nemofs uses, independent of it.
        subprocess.run(["curl", "-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", S3_KEY + ":" + S3_SECRET,
                        "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", path, "%s/%s/%s" % (self.endpoint(), self.bucket, key)],
                       check=True, stdout=subprocess.DEVNULL)

    def put_tree(self, prefix, folder):
        for dirpath, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(dirpath, name)
                self.put(prefix + os.path.relpath(full, folder), full)

    def stop(self):
        stop(self.proc)
        self.proc = None

    def env(self, **extra):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("AWS_"):
                del e[k]
        e.update({"AWS_ENDPOINT_URL": self.endpoint(), "AWS_ACCESS_KEY_ID": S3_KEY,
                  "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
                  "AWS_CONFIG_FILE": os.path.join(self.tmp, "no-aws-config"),
                  "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.tmp, "no-aws-credentials")})
        e.update(extra)
        return e


def copy_fixtures(src, dst):
    shutil.copytree(src, dst)
