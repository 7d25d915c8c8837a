"""csdemu's system model: what decode throughput would a host with GPUs, host
memory, SSDs and N CSDs give a model, under FlexGen, FlexGen+SparQ,
FlexGen-GDS,
ZeRO-Inference, Recomp (vLLM), InstInfer and InstInfer+SparF. The CSD side is charged by the
daemon's own timing code (csdemu.drive.kv.attend_timing.attend_time). See
docs/system-model.md.

Public API:
    csd_attend_ns(profile, q_heads, kv_heads, head_dim, seq_lens, dtype_bytes,
                  tokens_per_page, sparse=None) -> int
        sparse: None (dense), a ratio, or Sparsity(ratio, page_hit, groups, dims)
    array_attend_ns(profile, topology, q_heads, kv_heads, head_dim, seq_lens,
                    dtype_bytes, tokens_per_page, drives, sparse=None) -> int
    load_model(name_or_config_json) -> ModelShape
    load_hardware(gpu=None, host=None, ssd=None, flexgen=None) -> Hardware
    SysConfig(model, hw, csd_profile, gpus, csds, ssds, input_len, output_len, sparse,
              topology=None, page_hit=None)
    run(config, batches, systems=SYSTEMS) -> list of rows
    reproduce(...) -> (rows, params)
"""
from csdemu.sysmodel.array import array_attend, array_attend_ns
from csdemu.sysmodel.csd import attend_pages, csd_attend, csd_attend_ns
from csdemu.sysmodel.hardware import Hardware, HardwareError, load_hardware, pcie_gbps
from csdemu.sysmodel.models import BUILTIN, ModelError, ModelShape, load_model, shape_from_config
from csdemu.sysmodel.csd import Sparsity
from csdemu.sysmodel.page_hit import PageHit, PageHitError
from csdemu.sysmodel.systems import FUNCS, NAMES, SYSTEMS, SysConfig, run

__all__ = ["csd_attend_ns", "csd_attend", "attend_pages", "array_attend", "array_attend_ns", "load_model", "shape_from_config",
           "ModelShape", "ModelError", "BUILTIN", "load_hardware", "Hardware", "HardwareError",
           "pcie_gbps", "SysConfig", "run", "SYSTEMS", "NAMES", "FUNCS", "reproduce", "Sparsity",
           "PageHit", "PageHitError"]


def reproduce(model="opt-13b", gpus=1, csds=1, ssds=1, input_len=1024, output_len=1024,
              batches=(1, 4, 8, 16, 32, 64, 128, 256), sparse=0.125, profile="instinfer",
              overrides=None, gpu=None, host=None, ssd=None, systems=SYSTEMS,
              flexgen=None, topology=None, page_hit=None, vllm=None):
    """Run the model for every system and batch; return (rows, params).
    page_hit: a rate in (0, 1], "uniform", "paper", "measured" or None (auto)."""
    from csdemu.drive.profile import load_profile
    shape = load_model(model)
    prof = load_profile(profile, overrides or None)
    cfg = SysConfig(shape, load_hardware(gpu, host, ssd, flexgen, vllm), prof, gpus=gpus, csds=csds,
                    ssds=ssds, input_len=input_len, output_len=output_len, sparse=sparse,
                    topology=topology, page_hit=page_hit)
    rows = run(cfg, batches, systems)
    params = {"model": shape.name, "gpus": gpus, "csds": csds, "ssds": ssds,
              "topology": cfg.topology.name, "input": input_len,
              "output": output_len, "batches": list(batches), "sparse": sparse,
              "page_hit": cfg.page_hit.to_dict(),
              "profile": prof.name, "overrides": dict(overrides or {}),
              "gpu": cfg.hw.gpu.description, "host": cfg.hw.host.description,
              "ssd": cfg.hw.ssd.description, "flexgen_path": cfg.hw.flexgen.description,
              "vllm": cfg.hw.vllm.description,
              "csd": {"channels": prof.geometry.channels, "ways": prof.geometry.ways,
                      "channel_mbps": prof.timing.channel_mbps, "pcie_mbps": prof.pcie.bandwidth_mbps,
                      "tokens_per_page": cfg.tokens_per_page,
                      "kv_lines_gb": prof.derive().kv_lines * prof.derive().pages_per_line
                      * prof.geometry.page_bytes / 1e9},
              "model_shape": {"layers": shape.layers, "hidden": shape.hidden,
                              "q_heads": shape.q_heads, "kv_heads": shape.kv_heads,
                              "head_dim": shape.head_dim, "ffn": shape.ffn, "vocab": shape.vocab,
                              "params": shape.params,
                              "kv_bytes_per_token": shape.kv_bytes_per_token}}
    return rows, params
