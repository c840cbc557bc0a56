#!/usr/bin/python3
"""Checks a committed .nemo against its original, independently of nemofs (CPython's tarfile).

usage: check_commit.py ORIGINAL NEW SPEC_JSON
SPEC (all keys optional):
  untouched: [raw member names]  header blocks + data byte-identical to the original's
  content:   {name: {"text": str} | {"file": path} | {"orig": name, "replace": [[a, b], ...]}
                    | {"orig": name, "append": str}}
  absent:    [names]             must not be in NEW
  mode:      {name: int}         permission bits
  restore:   true                NeMo's restore steps (tarfile "r:", safe extract, yaml.safe_load
                                 of model_config.yaml, every "nemo:" artifact present)
Always: NEW opens as a plain tar ("r:"), every name keeps "./", no duplicate names.
Prints one line per failure; exit status 1 when anything failed.
"""
import json
import os
import sys
import tarfile
import tempfile

import yaml

orig_path, new_path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
fails = []

orig = tarfile.open(orig_path, "r:")
new = tarfile.open(new_path, "r:")
om = {m.name: m for m in orig.getmembers()}
nl = new.getmembers()
nm = {m.name: m for m in nl}
if len(nm) != len(nl):
    fails.append("duplicate member names in the new archive")

# tarfile strips the trailing "/" of folders and keeps "./"; the root is ".".
for m in nl:
    if m.name != "." and not m.name.startswith("./"):
        fails.append(f"{m.name}: lost its ./ prefix")


def raw(path, m):
    with open(path, "rb") as f:
        f.seek(m.offset)
        return f.read(m.offset_data - m.offset + m.size)


def data(tar, m):
    return tar.extractfile(m).read()


for name in spec.get("untouched", []):
    if name not in om:
        fails.append(f"{name}: not in the original (bad spec)")
    elif name not in nm:
        fails.append(f"{name}: missing from the new archive")
    elif raw(orig_path, om[name]) != raw(new_path, nm[name]):
        fails.append(f"{name}: header blocks or data differ from the original")

for name, want in spec.get("content", {}).items():
    if name not in nm:
        fails.append(f"{name}: missing from the new archive")
        continue
    if "text" in want:
        expected = want["text"].encode()
    elif "file" in want:
        expected = open(want["file"], "rb").read()
    else:
        expected = data(orig, om[want["orig"]])
        for a, b in want.get("replace", []):
            if a.encode() not in expected:
                fails.append(f"{name}: bad spec, '{a}' not in the original")
            expected = expected.replace(a.encode(), b.encode(), 1)
        expected += want.get("append", "").encode()
    got = data(new, nm[name])
    if got != expected:
        fails.append(f"{name}: content differs ({len(got)} bytes, expected {len(expected)})")

for name in spec.get("absent", []):
    if name in nm:
        fails.append(f"{name}: should not be in the new archive")

for name, mode in spec.get("mode", {}).items():
    if name in nm and (nm[name].mode & 0o7777) != mode:
        fails.append(f"{name}: mode {oct(nm[name].mode)}, expected {oct(mode)}")

if spec.get("restore"):
    # NeMo's SaveRestoreConnector: tarfile.open(path, "r:"), _safe_extract, then the YAML.
    with tempfile.TemporaryDirectory() as out:
        with tarfile.open(new_path, "r:") as t:
            for m in t.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/") or m.issym() or m.islnk():
                    fails.append(f"{m.name}: unsafe member")
                t.extract(m, out)
        cfg = yaml.safe_load(open(os.path.join(out, "model_config.yaml")))

        def walk(v):
            if isinstance(v, dict):
                for x in v.values():
                    yield from walk(x)
            elif isinstance(v, list):
                for x in v:
                    yield from walk(x)
            elif isinstance(v, str) and v.startswith("nemo:"):
                yield v[5:]

        arts = list(walk(cfg))
        if not arts and spec.get("expect_artifacts", True):
            fails.append("model_config.yaml names no nemo: artifact (bad fixture?)")
        for a in arts:
            if not os.path.isfile(os.path.join(out, a)):
                fails.append(f"artifact nemo:{a} named in model_config.yaml is missing")

for f in fails:
    print("FAIL", f)
sys.exit(1 if fails else 0)
