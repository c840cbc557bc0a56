#!/usr/bin/env python3
"""numpy.memmap over a nemofs mount: every manifest file and tensor the mount shows, mapped with
numpy, has the manifest's sha256 (tensors are mapped with their sidecar's dtype and shape).

usage: numpy_memmap_test.py NEMOFS_BINARY TESTS_DATA_DIR FIXTURE...   (FIXTURE as in manifest.json)
Exit 77 (skipped) when numpy or FUSE is missing.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("SKIPPED: numpy is not installed (apt-get install python3-numpy)")
    sys.exit(77)

# safetensors dtype names -> numpy dtypes; types numpy lacks are mapped to same-size integers, which
# keeps the bytes (what the sha256 checks) exact.
DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
    "U64": "<u8", "I64": "<i8", "F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8",
    "F8_E4M3": "u1", "F8_E5M2": "u1", "F8_E4M3FNUZ": "u1", "F8_E5M2FNUZ": "u1", "F8_E8M0": "u1",
    "C64": "<c8", "C128": "<c16", "C32": "<u4",
}


def sha(b):
    return hashlib.sha256(b).hexdigest()


def memmap_tensor(path, side):
    """(shape of the mapped array or None, sha256 of its bytes); the mapping is gone on return, so
    the mount can be unmounted."""
    shape = tuple(side["shape"])
    if side["nbytes"] == 0:
        return None, sha(b"")
    if side["dtype"] not in DTYPES:  # sub-byte and packed types: check the bytes only
        return None, sha(np.memmap(path, dtype="u1", mode="r").tobytes())
    arr = np.memmap(path, dtype=DTYPES[side["dtype"]], mode="r", shape=shape or None)
    if not shape:
        arr = arr.reshape(())  # a 0-d tensor: one element
    return arr.shape, sha(arr.tobytes())


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        return 1
    nemofs, data, fixtures = sys.argv[1], sys.argv[2], sys.argv[3:]
    if not os.access("/dev/fuse", os.R_OK | os.W_OK) or shutil.which("fusermount3") is None:
        print("SKIPPED: FUSE is not available (/dev/fuse, fusermount3)")
        return 77
    manifest = {f["file"]: f for f in json.load(open(os.path.join(data, "real", "manifest.json")))["fixtures"]}
    failures = []
    for name in fixtures:
        fx = manifest[name]
        tmp = tempfile.mkdtemp(prefix="nemofs-numpy-")
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        r = subprocess.run([nemofs, "mount", "-o", "ro", os.path.join(data, "real", name), mnt],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            failures.append(f"{name}: mount failed ({r.returncode}): {r.stderr.strip()}")
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        files = tensors = 0
        try:
            for rel, want in fx.get("files", {}).items():
                path = os.path.join(mnt, rel)
                if os.path.getsize(path) == 0:
                    got = sha(b"")
                else:
                    got = sha(np.memmap(path, dtype="u1", mode="r").tobytes())
                if got != want:
                    failures.append(f"{name}: {rel}: sha256 of np.memmap is {got}, manifest says {want}")
                files += 1
            for rel, t in fx.get("tensors", {}).items():
                path = os.path.join(mnt, rel)
                if not os.path.exists(path):
                    continue  # this format's tensor view has not landed on this branch
                side = json.load(open(path + ".json"))
                got_shape, got = memmap_tensor(path, side)
                if got_shape is not None and got_shape != tuple(side["shape"]):
                    failures.append(f"{name}: {rel}: memmap shape {got_shape}, sidecar {side['shape']}")
                if got != t["sha256"]:
                    failures.append(f"{name}: {rel}: sha256 of np.memmap is {got}, manifest says {t['sha256']}")
                tensors += 1
        finally:
            u = subprocess.run([nemofs, "umount", mnt], capture_output=True, text=True, timeout=600)
            if u.returncode != 0:
                failures.append(f"{name}: umount failed: {u.stderr.strip()}")
                subprocess.run(["fusermount3", "-u", "-z", mnt])
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name}: np.memmap checked {files} member files and {tensors} tensors")
        if files + tensors == 0:
            failures.append(f"{name}: nothing to check")
    for f in failures:
        print("FAIL:", f)
    print("numpy_memmap_test:", "FAILED" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
