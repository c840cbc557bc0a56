#!/usr/bin/python3
"""Writes a .nemo whose weights member is a real torch.save zip (so nemofs shows its
`model_weights.ckpt.tensors/` view), and the same weights as a standalone file.

usage: make_weights_nemo.py OUT.nemo SIZE WEIGHTS_OUT
The state dict holds 32 tensors of SIZE/32 bytes (float32 and bfloat16 alternating, random
bits, so copies cost real I/O and the export's dtype ordering is exercised). The archive is written
as NeMo writes it: tarfile "w:" with "./model_config.yaml" and "./model_weights.ckpt".
"""
import sys
import tarfile

import torch

out, size, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = 32
per = max(4096, size // n // 4096 * 4096)
sd = {}
for i in range(n):
    t = torch.empty(per, dtype=torch.uint8).random_(0, 256)
    dt = torch.float32 if i % 2 == 0 else torch.bfloat16
    width = 4 if dt == torch.float32 else 2
    sd[f"model.layers.{i}.weight"] = t.view(dt).view(-1, 1024 // width)
torch.save(sd, weights)
del sd
with tarfile.open(out, "w:") as tar:
    cfg = b"sample_rate: 16000\ntarget: bench.Model\n"
    info = tarfile.TarInfo("./model_config.yaml")
    info.size = len(cfg)
    import io
    tar.addfile(info, io.BytesIO(cfg))
    tar.add(weights, arcname="./model_weights.ckpt")
