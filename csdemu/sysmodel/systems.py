"""Decode-throughput model of a host with GPUs, host memory, SSDs and CSDs.

One function per system; each returns a row dict
    {"system", "batch", "tokens_per_s" (None when out of memory), "oom",
     "oom_reason", "breakdown": {...seconds...}}
tokens_per_s is generation throughput as FlexGen and ZeRO-Inference report
it: batch * output tokens / (prefill + all decode steps). Decode step j
(j = 1 .. output-1) attends over input + j tokens; step times are sampled at
a few context lengths and integrated (they are linear in the length up to
page rounding). The equations and every parameter's source are in
docs/system-model.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from csdemu.drive.profile import Profile
from csdemu.sysmodel.array import busiest_load, layer_array_attend
from csdemu.sysmodel.csd import sparse_params, sparse_selection
from csdemu.sysmodel.hardware import Hardware
from csdemu.sysmodel.models import ModelShape

GB = 1e9
HF_FP32_KV = 4          # ZeRO-Inference's CPU KV buffer is torch.empty() with no dtype: float32
SYSTEMS = ("flexgen", "flexgen-sparq", "deepspeed", "instinfer", "instinfer-sparf")


@dataclass
class SysConfig:
    model: ModelShape
    hw: Hardware
    csd: Profile
    gpus: int = 1
    csds: int = 1
    ssds: int = 1
    input_len: int = 1024
    output_len: int = 1024
    sparse: float = 0.125
    samples: int = 5
    notes: list = field(default_factory=list)
    topology: object = None     # the host's PCIe topology (csdemu.topology): name, path or None

    @property
    def tokens_per_page(self) -> int:
        m = self.model
        return max(1, self.csd.geometry.page_bytes // (m.head_dim * m.dtype_bytes))

    @property
    def max_len(self) -> int:
        return self.input_len + self.output_len


# ----------------------------------------------------------------- common parts

def _gpu_cap(c: SysConfig) -> float:
    return c.gpus * (c.hw.gpu.memory_gb - c.hw.gpu.runtime_reserve_gb) * GB


def _gpu_bw(c):
    return c.gpus * c.hw.gpu.mem_bw_gbps * GB


def _gpu_flops(c):
    return c.gpus * c.hw.gpu.fp16_tflops * 1e12


def _gpu_link(c):
    return c.gpus * c.hw.gpu.link_gbps * GB


def gpu_layer_s(c: SysConfig, b: int) -> float:
    """One decoder layer's matmuls for one decode step: roofline of reading the
    layer's weights vs. 2 FLOPs per weight per sequence."""
    m = c.model
    return max(m.layer_weight_bytes / _gpu_bw(c), 2.0 * m.layer_params * b / _gpu_flops(c))


def lm_head_s(c: SysConfig, b: int) -> float:
    m = c.model
    return max(m.lm_head_bytes / _gpu_bw(c), 2.0 * m.vocab * m.hidden * b / _gpu_flops(c))


def prefill_gpu_s(c: SysConfig, b: int) -> float:
    """Prefill matmuls + attention (q.K^T and p.V over the full s x s matrix)."""
    m, s = c.model, c.input_len
    flops = 2.0 * m.layers * m.layer_params * b * s
    flops += m.layers * 4.0 * b * s * s * m.q_heads * m.head_dim
    flops += 2.0 * m.vocab * m.hidden * b           # logits of the last position
    return max(flops / _gpu_flops(c), m.weight_bytes / _gpu_bw(c))


def eager_prefill_bytes(c: SysConfig, b: int, score_copies: int) -> float:
    """Peak GPU activations of one layer's eager prefill: `score_copies` fp16
    (b*H, s, s) score tensors alive at once, plus hidden, q, k, v (b, s, h), or
    the FFN intermediate, whichever phase is larger."""
    m, s = c.model, c.input_len
    h = m.hidden
    act = 4.0 * b * s * h * m.dtype_bytes
    attn = score_copies * b * m.q_heads * s * s * 2.0 + act
    ffn = b * s * (m.ffn * (2 if m.gated_ffn else 1) + 2 * h) * m.dtype_bytes
    return max(attn, ffn)


def decode_lengths(c: SysConfig) -> tuple[np.ndarray, int]:
    n = c.output_len - 1
    if n <= 0:
        return np.zeros(0), 0
    k = max(2, min(n, c.samples)) if n > 1 else 1
    return np.unique(np.round(np.linspace(c.input_len + 1, c.input_len + n, k)).astype(int)), n


def integrate(c: SysConfig, step) -> dict:
    """Sum a per-step breakdown dict over all decode steps (trapezoid over samples)."""
    Ls, n = decode_lengths(c)
    if n == 0:
        return {}
    parts = [step(int(L)) for L in Ls]
    keys = parts[0].keys()
    out = {}
    for k in keys:
        ys = np.array([p[k] for p in parts], float)
        if len(Ls) == 1:
            out[k] = float(ys[0]) * n
        else:
            # piecewise-linear interpolation at every integer step, summed
            out[k] = float(np.interp(np.arange(c.input_len + 1, c.input_len + n + 1), Ls, ys).sum())
    return out


def _row(system, b, c, prefill: dict, decode: dict, oom_reason=None, extra=None):
    if oom_reason:
        return {"system": system, "batch": b, "tokens_per_s": None, "oom": True,
                "oom_reason": oom_reason, "breakdown": {}}
    n = max(1, c.output_len - 1)
    total = prefill["prefill_s"] + decode.get("step_s", 0.0)
    bd = {"prefill_s": prefill["prefill_s"], "decode_s": decode.get("step_s", 0.0)}
    for k, v in decode.items():
        bd[f"{k}" if k == "step_s" else f"{k}"] = v / n
    bd["step_s"] = decode.get("step_s", 0.0) / n
    if extra:
        bd.update(extra)
    return {"system": system, "batch": b, "tokens_per_s": b * c.output_len / total if total else None,
            "oom": False, "oom_reason": None, "breakdown": bd}


def _gib(x):
    return f"{x / GB:.1f} GB"


def _sparse_read_fraction(c: SysConfig, L: int, block_tokens: int):
    """(approx K bytes, exact token blocks) per (sequence, kv head) for SparQ
    at context L, with csd.py's selection model (one selection per kv head).
    An SSD returns whole blocks: no column reads through NVMe."""
    m = c.model
    r, k, w = sparse_params(c.sparse, m.head_dim, L, block_tokens)
    n, hit, _ = sparse_selection(L, block_tokens, k, w)
    wg = min(n, math.ceil(w / block_tokens)) if w else 0
    approx = min(m.head_dim, r) * L * m.dtype_bytes
    return approx, wg + min(hit, n - wg)


# ----------------------------------------------------------------- FlexGen

def _flexgen(c: SysConfig, b: int, sparse: bool):
    name = "flexgen-sparq" if sparse else "flexgen"
    m, hw = c.model, c.hw
    cap = _gpu_cap(c)
    prefill_peak = eager_prefill_bytes(c, b, 2)           # torch.where keeps 2 score copies
    decode_peak = 2.0 * b * c.max_len * m.kv_bytes_per_token_layer   # current + prefetched layer
    buffers = max(prefill_peak, decode_peak)
    weights_on_gpu = m.weight_bytes <= cap
    if weights_on_gpu and m.weight_bytes + buffers > cap:
        return _row(name, b, c, {}, {}, f"GPU memory: weights {_gib(m.weight_bytes)} + buffers "
                    f"{_gib(buffers)} > {_gib(cap)}")
    if not weights_on_gpu:
        if buffers + 2 * m.layer_weight_bytes > cap:
            return _row(name, b, c, {}, {}, f"GPU memory: buffers {_gib(buffers)} > {_gib(cap)}")
        host_cap = (hw.host.memory_gb - hw.host.os_reserve_gb) * GB
        if m.weight_bytes > host_cap:
            return _row(name, b, c, {}, {}, f"host memory: weights {_gib(m.weight_bytes)} > "
                        f"{_gib(host_cap)}")
    fg = hw.flexgen
    # One layer's K (or V) cache is one (s+n-1, b*H_kv, d) fp16 tensor that a copy thread
    # relays whole through its pinned buffer (copy_worker_func): larger ones cannot be loaded.
    layer_elems = (c.max_len - 1) * b * m.kv_heads * m.head_dim
    if not sparse and layer_elems > fg.relay_buffer_elems:
        return _row(name, b, c, {}, {}, f"FlexGen pinned relay buffer: one layer's K cache "
                    f"{layer_elems / 2**30:.2f} G elements > {fg.relay_buffer_elems / 2**30:.2f} G")
    kv_total = b * c.max_len * m.kv_bytes_per_token * (1.5 if sparse else 1.0)
    if kv_total > c.ssds * hw.ssd.capacity_gb * GB:
        return _row(name, b, c, {}, {}, f"SSD capacity: KV {_gib(kv_total)}")
    # FlexGen's disk path reaches the measured share of the SSD's rating (hw/flexgen.toml).
    rd = c.ssds * hw.ssd.read_gbps * GB * fg.disk_read_fraction
    wr = c.ssds * hw.ssd.write_gbps * GB * fg.disk_write_fraction
    # K and V of a layer are two copy items read concurrently from the disk into the relays;
    # each thread then copies its relay to the GPU with a blocking copy_, and the next layer's
    # load is issued only after this one completes: read and H2D add up per layer.
    kv_path = 1.0 / (1.0 / rd + 1.0 / _gpu_link(c))
    w_stream = 0.0 if weights_on_gpu else m.weight_bytes / _gpu_link(c)
    T_blk = max(1, hw.ssd.block_bytes // (m.head_dim * m.dtype_bytes))

    def step(L):
        if sparse:
            approx, pages = _sparse_read_fraction(c, L, T_blk)
            per_sh = approx + 2 * pages * hw.ssd.block_bytes
            kv_bytes = m.layers * b * m.kv_heads * per_sh
            new = 1.5 * b * m.kv_bytes_per_token          # K stored twice (token- and dim-major)
        else:
            kv_bytes = b * L * m.kv_bytes_per_token
            new = b * m.kv_bytes_per_token
        kv = kv_bytes / kv_path + new / wr
        attn_gpu = m.layers * (kv_bytes / m.layers) / _gpu_bw(c)
        gpu = m.layers * gpu_layer_s(c, b) + attn_gpu + lm_head_s(c, b)
        io = kv + w_stream
        return {"kv_access_s": kv, "compute_s": gpu, "transfer_s": w_stream,
                "step_s": max(io, gpu)}

    pre_gpu = prefill_gpu_s(c, b)
    pre_kv = b * c.input_len * m.kv_bytes_per_token * (1.5 if sparse else 1.0) / wr
    prefill = {"prefill_s": max(pre_gpu, pre_kv) + w_stream}
    return _row(name, b, c, prefill, integrate(c, step),
                extra={"weights_on_gpu": weights_on_gpu})


def flexgen(c: SysConfig, b: int):
    """KV on the SSD, read over PCIe every step, attention on the GPU."""
    return _flexgen(c, b, False)


def flexgen_sparq(c: SysConfig, b: int):
    """FlexGen + SparQ: r dims of K from a dim-major copy, then the SSD blocks
    holding the top-k tokens' K and V rows."""
    return _flexgen(c, b, True)


# ----------------------------------------------------------------- ZeRO-Inference

def deepspeed(c: SysConfig, b: int):
    """ZeRO-Inference (--cpu-offload --kv-offload): weights and a float32 KV
    buffer in host memory, weights streamed to the GPU every step, attention
    on the CPU; the part of host memory demand above capacity is swapped."""
    m, hw = c.model, c.hw
    cap = _gpu_cap(c)
    gpu_need = 2 * m.layer_weight_bytes + eager_prefill_bytes(c, b, 3) \
        + b * c.input_len * m.vocab * m.dtype_bytes
    if gpu_need > cap:
        return _row("deepspeed", b, c, {}, {}, f"GPU memory: prefill {_gib(gpu_need)} > {_gib(cap)}")
    kv_buf = m.layers * 2 * b * m.kv_heads * (c.max_len - 1) * m.head_dim * HF_FP32_KV
    need = m.weight_bytes + kv_buf + hw.host.os_reserve_gb * GB
    overflow = max(0.0, need - hw.host.memory_gb * GB)
    if overflow > c.ssds * hw.ssd.capacity_gb * GB:
        return _row("deepspeed", b, c, {}, {}, f"host memory + swap: need {_gib(need)}")
    link = _gpu_link(c)
    cluster = hw.host.page_cluster * 4096
    fault_s = 1.0 / hw.ssd.rand_read_iops_qd1 + cluster / (hw.ssd.read_gbps * GB)
    swap = overflow / cluster * fault_s + overflow / (hw.ssd.write_gbps * GB)
    host_bw = hw.host.mem_bw_gbps * GB

    def step(L):
        w = m.weight_bytes / link
        kv_read = b * L * m.layers * 2 * m.kv_heads * m.head_dim * HF_FP32_KV / host_bw
        qo = m.layers * (2 * b * m.q_heads * m.head_dim * 4 + b * m.kv_bytes_per_token_layer) / link
        gpu = m.layers * gpu_layer_s(c, b) + lm_head_s(c, b)
        return {"kv_access_s": kv_read, "swap_s": swap, "compute_s": gpu, "transfer_s": w + qo,
                "step_s": w + qo + gpu + kv_read + swap}

    prefill = {"prefill_s": m.weight_bytes / link + prefill_gpu_s(c, b)
               + b * c.input_len * m.layers * 2 * m.kv_heads * m.head_dim * m.dtype_bytes / link}
    return _row("deepspeed", b, c, prefill, integrate(c, step),
                extra={"host_need_gb": need / GB, "swapped_gb": overflow / GB})


# ----------------------------------------------------------------- InstInfer

def _program_bw(p: Profile) -> float:
    g, t = p.geometry, p.timing
    fp = g.flash_page_bytes or g.page_bytes
    luns = g.channels * g.ways * g.planes
    arr = luns * fp / (t.tPROG_ns * 1e-9)
    bus = g.channels * t.channel_mbps * 1e6 if t.channel_mbps else float("inf")
    return min(arr, bus)


def _instinfer(c: SysConfig, b: int, sparse: bool):
    name = "instinfer-sparf" if sparse else "instinfer"
    m, hw, p = c.model, c.hw, c.csd
    cap = _gpu_cap(c)
    act = 4.0 * b * m.hidden * m.dtype_bytes + b * m.vocab * 4
    weights_on_gpu = m.weight_bytes + act <= cap
    if not weights_on_gpu:
        host_cap = (hw.host.memory_gb - hw.host.os_reserve_gb) * GB
        if m.weight_bytes > host_cap or 2 * m.layer_weight_bytes + act > cap:
            return _row(name, b, c, {}, {}, f"GPU/host memory: weights {_gib(m.weight_bytes)}")
    # kv heads (and sequences, past one CSD per kv head) split across the
    # CSDs by the live array's rule; `load` = kv heads x sequences of the
    # busiest CSD
    load = busiest_load(m.kv_heads, c.csds, b)
    T = c.tokens_per_page
    link = p.pcie.bandwidth_mbps * 1e6 if p.pcie.bandwidth_mbps else float("inf")
    kcopy = 1.5 if sparse else 1.0
    w_stream = 0.0 if weights_on_gpu else m.weight_bytes / _gpu_link(c)
    sp = c.sparse if sparse else None

    def step(L):
        at, bd = layer_array_attend(p, c.topology, m.q_heads, m.kv_heads, m.head_dim, b, L,
                                    m.dtype_bytes, T, c.csds, sp)
        attend = at.device_ns * 1e-9        # slowest CSD + q/outputs over the shared links
        append = kcopy * load * 2 * m.head_dim * m.dtype_bytes / link
        io = (bd["pcie_in_ns"] + bd["pcie_out_ns"] + at.host_ns) * 1e-9
        xfer = io + append
        flash = bd["flash_ns"] * 1e-9
        gpu = m.layers * gpu_layer_s(c, b) + lm_head_s(c, b)
        return {"kv_access_s": m.layers * flash,
                "csd_compute_s": m.layers * max(0.0, attend - flash - io),
                "compute_s": gpu, "transfer_s": m.layers * xfer + w_stream,
                "step_s": m.layers * (attend + append) + gpu + w_stream}

    per_csd = kcopy * load * c.input_len * m.layers * 2 * m.head_dim * m.dtype_bytes
    pre_write = per_csd / min(link, _program_bw(p))
    prefill = {"prefill_s": max(prefill_gpu_s(c, b), pre_write) + w_stream}
    kv_csd = kcopy * load * c.max_len * m.layers * 2 * m.head_dim * m.dtype_bytes
    fits = kv_csd <= p.derive().user_pages * p.geometry.page_bytes
    return _row(name, b, c, prefill, integrate(c, step),
                extra={"weights_on_gpu": weights_on_gpu, "csd_kv_gb": kv_csd / GB,
                       "csd_capacity_ok": bool(fits)})


def instinfer(c: SysConfig, b: int):
    """Prefill on the GPU, KV written to the CSDs layer by layer, decode
    attention in the CSDs (heads split across CSDs), the rest on the GPU."""
    return _instinfer(c, b, False)


def instinfer_sparf(c: SysConfig, b: int):
    """InstInfer with SparF at the configured ratio."""
    return _instinfer(c, b, True)


FUNCS = {"flexgen": flexgen, "flexgen-sparq": flexgen_sparq, "deepspeed": deepspeed,
         "instinfer": instinfer, "instinfer-sparf": instinfer_sparf}


def run(c: SysConfig, batches, systems=SYSTEMS) -> list[dict]:
    return [FUNCS[s](c, int(b)) for s in systems for b in batches]
