#!/usr/bin/python3
"""Checks that member NAME of NEW is byte-identical (header blocks and data) to that of ORIG,
reading only the data extents of either file (SEEK_DATA/SEEK_HOLE): everything else is a hole
in both, so it reads as zeros in both. Prints the compared byte count; exit 1 on a difference.

usage: check_sparse_member.py ORIG NEW NAME
"""
import os
import sys
import tarfile

orig_path, new_path, name = sys.argv[1:4]
o = tarfile.open(orig_path, "r:").getmember(name)
n = tarfile.open(new_path, "r:").getmember(name)
if o.size != n.size:
    sys.exit(f"FAIL size {n.size}, expected {o.size}")


def extents(fd, start, length):
    """Data extents of fd within [start, start+length), relative to start."""
    out, pos, end = [], start, start + length
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        if d >= end:
            break
        h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
        out.append((d - start, h - start))
        pos = h
    return out


fo, fn = os.open(orig_path, os.O_RDONLY), os.open(new_path, os.O_RDONLY)
ho = os.pread(fo, o.offset_data - o.offset, o.offset)
hn = os.pread(fn, n.offset_data - n.offset, n.offset)
if ho != hn:
    sys.exit("FAIL header blocks differ")
ranges = sorted(extents(fo, o.offset_data, o.size) + extents(fn, n.offset_data, n.size))
compared = 0
for a, b in ranges:
    pos = a
    while pos < b:
        k = min(b - pos, 1 << 24)
        if os.pread(fo, k, o.offset_data + pos) != os.pread(fn, k, n.offset_data + pos):
            sys.exit(f"FAIL data differs near member offset {pos}")
        pos += k
        compared += k
print(compared)
