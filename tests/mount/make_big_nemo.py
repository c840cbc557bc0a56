#!/usr/bin/python3
"""Writes a .nemo-shaped tar with one large member, as CPython's tarfile (PAX_FORMAT) writes it.

usage: make_big_nemo.py OUT SIZE (dense|sparse)
Members: ".", "./model_config.yaml", "./model_weights.ckpt" (SIZE bytes), "./tail.txt".
dense:  the member is real data (a 1 MiB random block, each copy stamped with its index), so
        copying it costs real I/O.
sparse: the member is a hole except 4 KiB markers at its start, middle and end, so an 8 GiB
        member takes no disk space. Headers come from tarfile.TarInfo.tobuf, so a member of
        8 GiB or more carries its size in a pax record exactly as CPython writes it.
"""
import os
import sys
import tarfile
import time

out, size, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mtime = time.time()


def header(name, size, type=tarfile.REGTYPE, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = type
    ti.mode = mode
    ti.mtime = mtime
    ti.uname = ti.gname = "root"
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pad(n):
    return b"\0" * ((512 - n % 512) % 512)


CONFIG = b"sample_rate: 16000\nmodel:\n  hidden: 64\ntokenizer:\n  type: bpe\n"
MARK = 4096

with open(out, "wb") as f:
    f.write(header(".", 0, tarfile.DIRTYPE, 0o755))
    f.write(header("./model_config.yaml", len(CONFIG)) + CONFIG + pad(len(CONFIG)))
    f.write(header("./model_weights.ckpt", size))
    start = f.tell()
    if kind == "dense":
        block = bytearray(os.urandom(1 << 20))
        left, i = size, 0
        while left:
            block[:8] = i.to_bytes(8, "little")
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            i += 1
    else:
        for at in (0, size // 2, size - MARK):
            os.pwrite(f.fileno(), (b"MARK%012d" % at) * (MARK // 16), start + at)
        f.seek(start + size)
    f.write(pad(size))
    tail = b"tail\n"
    f.write(header("./tail.txt", len(tail)) + tail + pad(len(tail)))
    end = f.tell() + 1024
    f.write(b"\0" * (1024 + (10240 - end % 10240) % 10240))
