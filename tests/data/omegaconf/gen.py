#!/usr/bin/python3
"""Makes the OmegaConf / nn.Module fixtures of this folder and expected.json, what torch and omegaconf
themselves say about them (Debian 12: python3-torch 1.13, python3-omegaconf 2.2).

    /usr/bin/python3 tests/data/omegaconf/gen.py [OUTDIR]   (default: this folder)

expected.json, per fixture file: "values": {path in the mount: what its file must hold}, where a
path ending in .json holds OmegaConf.to_container(cfg, resolve=False) (enums by name) as JSON and a
path ending in .yaml holds the exact text of OmegaConf.to_yaml; "tensors": {path: {dtype, shape,
nbytes, sha256}} from module.state_dict() (non-persistent buffers absent); "absent": paths that
must not exist. torch.save output is not byte-stable across runs (zip record names), so the
comparison is on what the files show, never on the checkpoint bytes.
"""
import enum
import hashlib
import json
import os
import sys

import torch
from omegaconf import OmegaConf


class Mode(enum.Enum):
    TRAIN = "train"
    EVAL = 2


DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.bfloat16: "BF16",
          torch.float64: "F64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def model_cfg():
    return OmegaConf.create({
        "name": "Conformer-CTC",
        "model": {
            "sample_rate": 16000,
            "d_model": 176,
            "lr": 0.001,
            "eps": 1e-08,
            "big": 1e17,
            "neg": -2.5,
            "encoder": {"d_model": "${model.d_model}", "n_layers": 16, "dropout": 0.1, "xscaling": True,
                        "feat_in": "???", "pos_emb_max_len": None},
            "labels": [" ", "a", "b", "'", "yes", "1", "1.5", "null", "", "${name}", "true", "~", "-", "x: y"],
            "optim": {"name": "adamw", "betas": [0.9, 0.98], "sched": {"name": "CosineAnnealing", "min_lr": 1e-6}},
            "mode": Mode.TRAIN,
            "modes": [Mode.EVAL, Mode.TRAIN],
            "empty_dict": {},
            "empty_list": [],
            "nested_lists": [[1, 2], [], [{"a": 1}]],
            "layers": [{"kind": "conv", "k": 3}, {"kind": "attn", "heads": 4, "missing": "???"}],
            "long_text": "a fairly long description string that goes on and on well past the eighty column limit of the emitter",
            "unicode": "größe ✓ 日本",
            "multi": "line one\nline two",
            "quote": "it's # not a comment",
            "colon": "a: b",
            "none_cfg": None,
        },
        "trainer": {"devices": 1, "max_epochs": "${oc.env:EPOCHS,10}", "precision": "bf16-mixed", "n": "2024-01-01"},
        1: "int key",
    })


def sha(b):
    return hashlib.sha256(b).hexdigest()


def tensors_of(module, prefix):
    out = {}
    for k, t in module.state_dict().items():
        b = t.detach().contiguous().numpy().tobytes()
        out[prefix + k] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "nbytes": len(b), "sha256": sha(b)}
    return out


class WithBuffers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("running", torch.arange(4, dtype=torch.float32))
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("scratch", torch.ones(5), persistent=False)
        self.scale = 0.5


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    expected = {"torch": torch.__version__, "omegaconf": __import__("omegaconf").__version__, "fixtures": {}}

    def cfg_values(key, cfg):
        return {key + ".json": OmegaConf.to_container(cfg, resolve=False, enum_to_str=True),
                key + ".yaml": OmegaConf.to_yaml(cfg)}

    # 1. A Lightning-style checkpoint: hyper_parameters is the DictConfig (Lightning stores the
    # container itself when hparams is one), datamodule_hyper_parameters a dict holding one.
    cfg = model_cfg()
    dm = {"cfg": OmegaConf.create({"batch_size": 8, "paths": ["a.json", "b.json"], "shuffle": True}), "seed": 3}
    lin = torch.nn.Linear(4, 3)
    ckpt = {"epoch": 2, "global_step": 10, "state_dict": lin.state_dict(), "hyper_parameters": cfg,
            "datamodule_hyper_parameters": dm, "list_cfg": OmegaConf.create([1, "${x}", None, {"k": "v"}]),
            "none_cfg": OmegaConf.create(None) if hasattr(OmegaConf, "create") else None}
    torch.save(ckpt, os.path.join(out, "lightning_cfg.ckpt"))
    vals = {}
    vals.update(cfg_values("hyper_parameters", cfg))
    vals["datamodule_hyper_parameters.json"] = {"cfg": OmegaConf.to_container(dm["cfg"]), "seed": 3}
    vals["datamodule_hyper_parameters.yaml"] = OmegaConf.to_yaml(dm)
    vals.update(cfg_values("list_cfg", ckpt["list_cfg"]))
    vals["none_cfg.json"] = OmegaConf.to_container(ckpt["none_cfg"]) if ckpt["none_cfg"] is not None else None
    vals["epoch.json"] = 2
    expected["fixtures"]["lightning_cfg.ckpt"] = {
        "values": vals, "tensors": tensors_of(lin, "state_dict/"), "absent": ["epoch.yaml", "none_cfg.yaml"]}

    # 2. torch.save of a whole config: the root value.
    torch.save(cfg, os.path.join(out, "config_root.pt"))
    expected["fixtures"]["config_root.pt"] = {"values": cfg_values("value", cfg), "tensors": {}, "absent": []}

    # 3. A pickled nn.Sequential.
    seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    torch.save(seq, os.path.join(out, "sequential.pt"))
    expected["fixtures"]["sequential.pt"] = {"values": {}, "tensors": tensors_of(seq, ""), "absent": []}

    # 4. A custom module with a persistent and a non-persistent buffer.
    wb = WithBuffers()
    torch.save(wb, os.path.join(out, "buffers.pt"))
    expected["fixtures"]["buffers.pt"] = {"values": {}, "tensors": tensors_of(wb, ""), "absent": ["scratch", "scratch.json"]}

    # 5. A module nested in a dict, beside a config.
    inner = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 3, bias=False))
    torch.save({"model": inner, "cfg": OmegaConf.create({"vocab": 5, "tied": False}), "step": 1},
               os.path.join(out, "nested_module.pt"))
    v = cfg_values("cfg", OmegaConf.create({"vocab": 5, "tied": False}))
    v["step.json"] = 1
    expected["fixtures"]["nested_module.pt"] = {"values": v, "tensors": tensors_of(inner, "model/"), "absent": []}

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
