"""The .nemo the remote benchmarks serve (remote_bench.py, remote_seq_ab.py): model_config.yaml and
model_weights.safetensors holding a 1 GiB float32 tensor `big` (every MiB different) and, for a
larger archive, a U8 tensor `filler`."""

import json
import os
import struct
import tarfile

BIG = 1 << 30


def make_nemo(path, workdir, size_gib=1):
    """Writes the .nemo at `path` (scratch files in `workdir`); returns (offset of `big`'s first
    byte in the .nemo, number of members)."""
    st = os.path.join(workdir, "model_weights.safetensors")
    filler = max(0, (size_gib << 30) - BIG)
    header = {"big": {"dtype": "F32", "shape": [BIG // 4], "data_offsets": [0, BIG]}}
    if filler:
        header["filler"] = {"dtype": "U8", "shape": [filler], "data_offsets": [BIG, BIG + filler]}
    hj = json.dumps(header).encode()
    hj += b" " * (-len(hj) % 8)
    chunk = bytearray(os.urandom(1 << 20))
    with open(st, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        left = BIG + filler
        i = 0
        while left:
            chunk[0:8] = struct.pack("<Q", i)  # every MiB differs
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
            i += 1
    with tarfile.open(path, "w:") as tar:
        cfg = os.path.join(workdir, "model_config.yaml")
        with open(cfg, "w") as f:
            f.write("target: bench.Model\n")
        tar.add(cfg, "./model_config.yaml")
        tar.add(st, "./model_weights.safetensors")
    os.unlink(st)
    with tarfile.open(path) as tar:
        m = tar.getmember("./model_weights.safetensors")
        members = len(tar.getmembers())
    return m.offset_data + 8 + len(hj), members
