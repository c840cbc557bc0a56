#!/usr/bin/python3
"""Generates the benchmark workloads with the Python standard library only (no torch here).

Writes into OUT_DIR and prints one JSON object describing them (paths, the byte ranges the
measurements read, sizes). Tensor data is bf16-like (random mantissa byte, exponent byte from a
narrow set), so gzip compresses it about as much as real weights (~15 %) and inflates at a
realistic speed; one 64 MiB block is reused for every big tensor so that the gzip .nemo can be made
by compressing that block once (deflate segments joined at full-flush points).

Formats follow /work/shared/docs/formats.md: torch.save zips (2.2-2.4: stored records, 64-byte
aligned data via an "FB" extra field, data.pkl in pickle protocol 2 calling
torch._utils._rebuild_tensor_v2 on ('storage', torch.FloatStorage, key, 'cpu', numel) persistent
ids), NeMo tars (1.4: CPython tarfile PAX headers with float mtimes, "./"-prefixed names), DCP
folders (5.1-5.3: __<r>_0.distcp files each holding one embedded torch.save zip, a .metadata
pickle of the torch.distributed.checkpoint.metadata classes), safetensors (7).
"""
import collections
import copyreg
import enum
import json
import os
import pathlib
import pickle
import struct
import sys
import tarfile
import time
import types
import zipfile
import zlib

MiB = 1 << 20
BLOCK = 64 * MiB

# ---- stand-ins that pickle under torch's names --------------------------------------------------


def _module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, m)
    return m


torch = _module("torch")
_utils = _module("torch._utils")
_module("torch.serialization")
_module("torch.distributed")
_module("torch.distributed.checkpoint")
dcp_md = _module("torch.distributed.checkpoint.metadata")
dcp_fs = _module("torch.distributed.checkpoint.filesystem")


def _rebuild_tensor_v2(*args):
    raise RuntimeError("stand-in")


_rebuild_tensor_v2.__module__ = "torch._utils"
_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


def _get_layout(name):
    raise RuntimeError("stand-in")


_get_layout.__module__ = "torch.serialization"
sys.modules["torch.serialization"]._get_layout = _get_layout


def _storage_class(name):
    cls = type(name, (), {"__module__": "torch"})
    setattr(torch, name, cls)
    return cls


STORAGE = {"F32": (_storage_class("FloatStorage"), 4), "BF16": (_storage_class("BFloat16Storage"), 2)}


class _DType:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name  # pickled as GLOBAL torch.<name>, like a real torch.dtype


_DType.__module__ = "torch"
for _n in ("float32", "bfloat16"):
    setattr(torch, _n, _DType(_n))


class Size(tuple):
    def __reduce__(self):
        return (Size, (tuple(self),))


Size.__module__ = "torch"
torch.Size = Size


class _Layout:
    def __reduce__(self):
        return (_get_layout, ("torch.strided",))


class Storage:
    def __init__(self, dtype, data):
        self.dtype, self.data = dtype, data  # data: bytes-like


class Tensor:
    """A dense C-contiguous tensor over a whole storage."""

    def __init__(self, dtype, shape, data):
        self.storage = Storage(dtype, data)
        self.shape = tuple(shape)

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, tuple(stride), False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def __init__(self, f):
        super().__init__(f, protocol=2)
        self.storages = []
        self.keys = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self.keys:
            self.keys[id(obj)] = str(len(self.storages))
            self.storages.append(obj)
        cls, esize = STORAGE[obj.dtype]
        return ("storage", cls, self.keys[id(obj)], "cpu", len(obj.data) // esize)


class _OffsetFile:
    """A file view that starts at the current position, so a zip can be written inside a tar."""

    def __init__(self, f):
        self.f, self.base = f, f.tell()

    def write(self, b):
        return self.f.write(b)

    def tell(self):
        return self.f.tell() - self.base

    def seek(self, pos, whence=0):
        return self.f.seek(pos + self.base if whence == 0 else pos, whence) - self.base

    def flush(self):
        self.f.flush()


def write_torch_zip(f, root, obj):
    """torch.save(obj) into the open binary file f at its current position. Returns
    [(storage key, data offset relative to the zip start, nbytes)]."""
    import io

    buf = io.BytesIO()
    p = _TorchPickler(buf)
    p.dump(obj)
    view = _OffsetFile(f)
    out = []
    with zipfile.ZipFile(view, "w", zipfile.ZIP_STORED, allowZip64=True) as z:

        def record(name, data, align=False):
            zi = zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_STORED
            zi.create_system = 0  # made-by MS-DOS, external attributes 0: as torch's miniz writes
            if align:
                start = view.tell() + 30 + len(zi.filename) + 4
                pad = (-start) % 64
                zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(zi, data)
            return view.tell() - len(data)

        record("data.pkl", buf.getvalue())
        record("byteorder", b"little")
        for i, s in enumerate(p.storages):
            out.append((str(i), record(f"data/{i}", s.data, align=True), len(s.data)))
        record("version", b"3\n")
    return out


# ---- DCP metadata classes (names and modules as torch 2.x pickles them) --------------------------


def _dataclass(mod, name):
    cls = type(name, (), {"__module__": mod.__name__, "__init__": lambda self, **kw: self.__dict__.update(kw)})
    setattr(mod, name, cls)
    return cls


Metadata = _dataclass(dcp_md, "Metadata")
TensorStorageMetadata = _dataclass(dcp_md, "TensorStorageMetadata")
ChunkStorageMetadata = _dataclass(dcp_md, "ChunkStorageMetadata")
MetadataIndex = _dataclass(dcp_md, "MetadataIndex")
StorageMeta = _dataclass(dcp_md, "StorageMeta")
_StorageInfo = _dataclass(dcp_fs, "_StorageInfo")


class _MEM_FORMAT_ENCODING(enum.Enum):
    TORCH_CONTIGUOUS_FORMAT = 0
    TORCH_CHANNELS_LAST = 1
    TORCH_PRESERVE_FORMAT = 2


_MEM_FORMAT_ENCODING.__module__ = dcp_md.__name__
dcp_md._MEM_FORMAT_ENCODING = _MEM_FORMAT_ENCODING


class TensorProperties:
    def __init__(self, dtype):
        self.dtype = dtype

    def __getstate__(self):
        return (self.dtype, _Layout(), False, _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT, False)

    def __setstate__(self, state):
        self.dtype = state[0]


TensorProperties.__module__ = dcp_md.__name__
dcp_md.TensorProperties = TensorProperties

# ---- data ---------------------------------------------------------------------------------------


def make_block():
    b = bytearray(os.urandom(BLOCK))
    hi = bytes((0x3B + (i % 6)) if i < 200 else (0xBB + (i % 6)) for i in range(256))
    b[1::2] = bytes(b[1::2]).translate(hi)
    return bytes(b)


def tensor_bytes(block, n):
    if n <= len(block):
        return memoryview(block)[:n]
    return b"".join([block] * (n // len(block)) + [block[: n % len(block)]])


# ---- tar ----------------------------------------------------------------------------------------


class TarWriter:
    """CPython-tarfile-compatible output (PAX headers, float mtimes) with streamed members."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.members = {}  # name -> (data offset, size)

    def _info(self, name, size, dir=False):
        ti = tarfile.TarInfo(name)
        ti.size = 0 if dir else size
        ti.mtime = time.time()
        ti.mode = 0o755 if dir else 0o644
        ti.type = tarfile.DIRTYPE if dir else tarfile.REGTYPE
        ti.uname = ti.gname = "root"
        return ti

    def add_dir(self, name):
        self.f.write(self._info(name, 0, True).tobuf(tarfile.PAX_FORMAT))

    def add_bytes(self, name, data):
        self.f.write(self._info(name, len(data)).tobuf(tarfile.PAX_FORMAT))
        self.members[name] = (self.f.tell(), len(data))
        self.f.write(data)
        self.f.write(b"\0" * ((-len(data)) % 512))

    def add_stream(self, name, fill):
        """fill(f) writes the member at f's position; the header is patched in afterwards."""
        ti = self._info(name, 0)
        hdr_at = self.f.tell()
        hlen = len(ti.tobuf(tarfile.PAX_FORMAT))
        self.f.write(b"\0" * hlen)
        start = self.f.tell()
        result = fill(self.f)
        size = self.f.tell() - start
        ti.size = size
        hdr = ti.tobuf(tarfile.PAX_FORMAT)
        assert len(hdr) == hlen
        self.f.seek(hdr_at)
        self.f.write(hdr)
        self.f.seek(start + size)
        self.f.write(b"\0" * ((-size) % 512))
        self.members[name] = (start, size)
        return result

    def close(self):
        self.f.write(b"\0" * 1024)
        self.f.write(b"\0" * ((-self.f.tell()) % tarfile.RECORDSIZE))
        self.f.close()


YAML = """name: BenchModel
target: nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel
precision: bf16
hidden_size: 4096
num_layers: 32
optim:
  name: fused_adam
  lr: 0.0003
tokenizer:
  library: sentencepiece
  model: nemo:0123456789abcdef0123456789abcdef_tokenizer.model
"""


def gen_nemo(out, block, weights_bytes):
    """A NeMo >= 1.7 .nemo whose model_weights.ckpt is a torch.save zip of weights_bytes bytes of
    64 MiB bf16 tensors (the member comes out slightly larger: zip headers)."""
    path = os.path.join(out, "model.nemo")
    tw = TarWriter(path)
    tw.add_dir("./")
    tw.add_bytes("./0123456789abcdef0123456789abcdef_tokenizer.model", os.urandom(500_000))
    tw.add_bytes("./model_config.yaml", YAML.encode())
    sd = collections.OrderedDict()
    left, i = weights_bytes, 0
    while left > 0:
        n = min(BLOCK, left)
        sd[f"model.decoder.layers.{i}.mlp.weight"] = Tensor("BF16", (n // 2 // 4096, 4096), tensor_bytes(block, n))
        left -= n
        i += 1
    storages = tw.add_stream("./model_weights.ckpt", lambda f: write_torch_zip(f, "model_weights", sd))
    tw.close()
    off, size = tw.members["./model_weights.ckpt"]
    return {
        "path": path,
        "member": "model_weights.ckpt",
        "member_offset": off,
        "member_size": size,
        "yaml_member": "model_config.yaml",
        # Absolute offsets in the .nemo of the storage records that are exactly `block`.
        "block_ranges": [(off + o, n) for _, o, n in storages if n == BLOCK],
        # Every tensor of the checkpoint: (name, absolute offset of its bytes in the .nemo, nbytes).
        # One storage per tensor, numbered in the state dict's order.
        "tensors": [(list(sd)[int(k)], off + o, n) for k, o, n in storages],
    }


def gen_nemo_gz(out, plain, block):
    """gzip(model.nemo), as NeMo < 1.7 wrote it (tarfile 'w:gz'): one gzip member. The deflate
    stream is built from independently compressed segments joined at full-flush points, so the
    64 MiB block that repeats is compressed only once."""
    path = os.path.join(out, "model_gz.nemo")
    src = plain["path"]
    total = os.path.getsize(src)

    def deflate(data, last=False):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    cblock = deflate(block)
    crc = 0
    with open(src, "rb") as fi, open(path, "wb") as fo:
        fo.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", int(time.time())) + b"\x00\xff")
        pos = 0
        for start, n in plain["block_ranges"] + [(total, 0)]:
            while pos < start:
                chunk = fi.read(min(start - pos, BLOCK))
                crc = zlib.crc32(chunk, crc)
                pos += len(chunk)
                fo.write(deflate(chunk))
            if n:
                fi.seek(n, 1)
                crc = zlib.crc32(block, crc)
                pos += n
                fo.write(cblock)
        fo.write(deflate(b"", last=True))
        fo.write(struct.pack("<II", crc, total & 0xFFFFFFFF))
    return {"path": path, "member": plain["member"], "member_size": plain["member_size"]}


def gen_safetensors(out, block, nbytes):
    path = os.path.join(out, "model.safetensors")
    small = os.urandom(4096 * 4)
    hdr = {
        "__metadata__": {"format": "pt"},
        "model.embed.weight": {"dtype": "BF16", "shape": [nbytes // 2 // 8192, 8192], "data_offsets": [0, nbytes]},
        "model.norm.weight": {"dtype": "F32", "shape": [4096], "data_offsets": [nbytes, nbytes + len(small)]},
    }
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for i in range(0, nbytes, BLOCK):
            f.write(tensor_bytes(block, min(BLOCK, nbytes - i)))
        f.write(small)
    return {"path": path, "tensor": "model.embed.weight", "offset": 8 + len(h), "size": nbytes}


def gen_torch_zip(out, count):
    path = os.path.join(out, "zoo.ckpt")
    sd = collections.OrderedDict()
    rnd = os.urandom(1 << 20)
    shapes = [(64, 64), (256,), (128, 32), (16, 16, 8), (1024,)]
    for i in range(count):
        shp = shapes[i % len(shapes)]
        n = 4
        for d in shp:
            n *= d
        o = (i * 4096) % (len(rnd) - n)
        sd[f"model.layers.{i // 10}.block{i % 10}.weight"] = Tensor("F32", shp, rnd[o : o + n])
    with open(path, "wb") as f:
        storages = write_torch_zip(f, "archive", sd)
    keys = list(sd)
    return {
        "path": path,
        "count": count,
        "tensors": [(keys[int(k)], o, n) for k, o, n in storages],
        "root": "archive",
    }


def gen_dcp(out, block, nbytes, shards):
    d = os.path.join(out, "dcp")
    os.makedirs(d, exist_ok=True)
    cols = 4096
    rows = nbytes // 4 // cols
    assert rows % shards == 0
    per = rows // shards
    chunks, storage_data, ranges = [], {}, []
    data = tensor_bytes(block, per * cols * 4)
    for r in range(shards):
        name = f"__{r}_0.distcp"
        with open(os.path.join(d, name), "wb") as f:
            st = write_torch_zip(f, "archive", Tensor("F32", (per, cols), data))
            length = f.tell()
        chunks.append(ChunkStorageMetadata(offsets=Size((r * per, 0)), sizes=Size((per, cols))))
        storage_data[MetadataIndex(fqn="model.weight", offset=Size((r * per, 0)), index=r)] = _StorageInfo(
            relative_path=name, offset=0, length=length
        )
        ranges.append((st[0][1], st[0][2], os.path.join(d, name)))
    md = Metadata(
        state_dict_metadata={
            "model.weight": TensorStorageMetadata(
                properties=TensorProperties(torch.float32), size=Size((rows, cols)), chunks=chunks
            )
        },
        planner_data={"model.weight": ("model", "weight")},
        storage_data=storage_data,
        storage_meta=StorageMeta(checkpoint_id=pathlib.PosixPath(d), save_id="bench", load_id=None, modules=[]),
        version="1.0.0",
    )
    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(md, f, protocol=4)
    return {"path": d, "tensor": "model/weight", "size": rows * cols * 4, "ranges": ranges}


def gen_tar10k(out, count):
    path = os.path.join(out, "many.tar")
    ext = os.path.join(out, "many_extracted")
    rnd = os.urandom(4096)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for i in range(count):
            data = rnd[: 200 + (i * 37) % 1800]
            ti = tarfile.TarInfo(f"./shard_{i // 100:03d}/item_{i:05d}.json")
            ti.size = len(data)
            ti.mtime = time.time()
            import io

            t.addfile(ti, io.BytesIO(data))
    with tarfile.open(path) as t:
        t.extractall(ext)
    return {"path": path, "extracted": ext, "count": count}


def main():
    out = sys.argv[1]
    quick = "--quick" in sys.argv
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    block = make_block()
    w = {}
    w["nemo"] = gen_nemo(out, block, 2048 * MiB - MiB)
    w["nemo_gz"] = gen_nemo_gz(out, w["nemo"], block)
    w["safetensors"] = gen_safetensors(out, block, 1024 * MiB)
    w["torch_zip"] = gen_torch_zip(out, 5000)
    w["dcp"] = gen_dcp(out, block, (256 if quick else 1024) * MiB, 8)
    w["tar10k"] = gen_tar10k(out, 10000)
    w["gen_seconds"] = time.time() - t0
    json.dump(w, sys.stdout)


if __name__ == "__main__":
    main()
