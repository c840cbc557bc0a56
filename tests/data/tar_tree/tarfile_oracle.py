#!/usr/bin/env python3
"""What CPython's tarfile (NeMo's reader) sees in each archive given: one JSON line per archive,
{"archive": path, "members": {name: {"type": "file"|"dir"|"symlink"|"hardlink"|"other",
"size": n, "sha256": hex (files)}}} (and "error" when tarfile refuses it). Names lose a leading "./" and a trailing "/"."""
import hashlib
import json
import sys
import tarfile


def norm(name):
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def listing(path):
    out = {}
    with tarfile.open(path, "r:*") as t:
        for m in t.getmembers():
            kind = ("file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym()
                    else "hardlink" if m.islnk() else "other")
            rec = {"type": kind}
            if kind == "file":
                h = hashlib.sha256()
                f = t.extractfile(m)
                n = 0
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                rec["size"] = n
                rec["sha256"] = h.hexdigest()
            out[norm(m.name)] = rec
    return out


for path in sys.argv[1:]:
    try:
        print(json.dumps({"archive": path, "members": listing(path)}, sort_keys=True))
    except Exception as e:  # one line per archive all the same: the test reports it
        print(json.dumps({"archive": path, "members": {}, "error": repr(e)}))
