"""The systems the model compares, by key, with the names their authors
gave them. One module per family: flexgen.py (FlexGen, FlexGen-SparQ,
FlexGen-GDS), zero_inference.py (ZeRO-Inference), recomp.py (vLLM
recomputation), instinfer.py (InstInfer, InstInfer-SparF); common.py holds
what they share."""
from __future__ import annotations

from csdemu.sysmodel.common import SysConfig, decode_lengths, gpu_layer_s, integrate
from csdemu.sysmodel.flexgen import flexgen, flexgen_gds, flexgen_sparq
from csdemu.sysmodel.instinfer import instinfer, instinfer_sparf
from csdemu.sysmodel.recomp import recomp
from csdemu.sysmodel.zero_inference import deepspeed

SYSTEMS = ("flexgen", "flexgen-gds", "flexgen-sparq", "deepspeed", "recomp", "instinfer",
           "instinfer-sparf")
NAMES = {"flexgen": "FlexGen", "flexgen-gds": "FlexGen-GDS", "flexgen-sparq": "FlexGen-SparQ",
         "deepspeed": "ZeRO-Inference", "recomp": "Recomp (vLLM)", "instinfer": "InstInfer",
         "instinfer-sparf": "InstInfer-SparF"}
FUNCS = {"flexgen": flexgen, "flexgen-gds": flexgen_gds, "flexgen-sparq": flexgen_sparq,
         "deepspeed": deepspeed, "recomp": recomp, "instinfer": instinfer,
         "instinfer-sparf": instinfer_sparf}

__all__ = ["SYSTEMS", "NAMES", "FUNCS", "SysConfig", "run", "decode_lengths", "gpu_layer_s",
           "integrate"]


def run(c: SysConfig, batches, systems=SYSTEMS) -> list[dict]:
    return [FUNCS[s](c, int(b)) for s in systems for b in batches]
