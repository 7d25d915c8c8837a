"""What every system of the model shares: the configuration, the GPU's
non-attention work, the decode-step integration and the row format.

A row is {"system", "batch", "tokens_per_s" (None when out of memory), "oom",
"oom_reason", "fits", "fit_reason", "breakdown": {...seconds...}}; tokens_per_s
is generation throughput as FlexGen and ZeRO-Inference report it: batch *
output tokens / (prefill + all decode steps). Decode step j (j = 1 ..
output-1) attends over input + j tokens; step times are sampled at a few
context lengths and integrated (they are linear in the length up to page
rounding). docs/system-model.md gives the equations and every source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from csdemu.drive.profile import Profile
from csdemu.sysmodel.csd import Sparsity
from csdemu.sysmodel.hardware import Hardware
from csdemu.sysmodel.models import ModelShape
from csdemu.sysmodel.page_hit import PageHit, resolve

GB = 1e9


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
    page_hit: object = None     # a PageHit, or what page_hit.resolve takes (None: auto)

    def __post_init__(self):
        from csdemu.topology import load_topology
        self.topology = load_topology(self.topology)
        if not isinstance(self.page_hit, PageHit):
            self.page_hit = resolve(self.page_hit, self.model.name, self.sparse)

    @property
    def tokens_per_page(self) -> int:
        m = self.model
        return max(1, self.csd.geometry.page_bytes // (m.head_dim * m.dtype_bytes))

    @property
    def max_len(self) -> int:
        return self.input_len + self.output_len

    def sparsity(self, context: int) -> Sparsity:
        """SparF's ratio and page-hit rate for an Attend over `context` tokens."""
        return Sparsity(self.sparse, self.page_hit.rate_at(context))


def gpu_cap(c: SysConfig) -> float:
    return c.gpus * (c.hw.gpu.memory_gb - c.hw.gpu.runtime_reserve_gb) * GB


def gpu_bw(c):
    return c.gpus * c.hw.gpu.mem_bw_gbps * GB


def gpu_flops(c):
    return c.gpus * c.hw.gpu.fp16_tflops * 1e12


def gpu_link(c):
    return c.gpus * c.hw.gpu.link_gbps * GB


def gpu_layer_s(c: SysConfig, b: int) -> float:
    """One decoder layer's matmuls for one decode step: roofline of reading the
    layer's weights (small batch) vs. 2 FLOPs per weight per sequence (large)."""
    m = c.model
    return max(m.layer_weight_bytes / gpu_bw(c), 2.0 * m.layer_params * b / gpu_flops(c))


def gpu_bound(c: SysConfig, b: int) -> str:
    """Which side of the roofline the GPU's decode step is on at batch b."""
    m = c.model
    return "weights" if m.layer_weight_bytes / gpu_bw(c) >= 2.0 * m.layer_params * b / gpu_flops(c) \
        else "flops"


def lm_head_s(c: SysConfig, b: int) -> float:
    m = c.model
    return max(m.lm_head_bytes / gpu_bw(c), 2.0 * m.vocab * m.hidden * b / gpu_flops(c))


def gpu_step_s(c: SysConfig, b: int) -> float:
    """The GPU's non-attention work of one decode step at batch b."""
    return c.model.layers * gpu_layer_s(c, b) + lm_head_s(c, b)


def prefill_gpu_s(c: SysConfig, b: int, s: int | None = None) -> float:
    """Prefill matmuls + attention (q.K^T and p.V over the full s x s matrix)."""
    m = c.model
    s = c.input_len if s is None else s
    flops = 2.0 * m.layers * m.layer_params * b * s
    flops += m.layers * 4.0 * b * s * s * m.q_heads * m.head_dim
    flops += 2.0 * m.vocab * m.hidden * b           # logits of the last position
    return max(flops / gpu_flops(c), m.weight_bytes / gpu_bw(c))


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
    """Sum a per-step breakdown dict over all decode steps (piecewise-linear
    over the sampled lengths); text values are taken from the last sample."""
    Ls, n = decode_lengths(c)
    if n == 0:
        return {}
    parts = [step(int(L)) for L in Ls]
    out = {}
    for k in parts[0]:
        if isinstance(parts[0][k], str):
            out[k] = parts[-1][k]
            continue
        ys = np.array([p[k] for p in parts], float)
        if len(Ls) == 1:
            out[k] = float(ys[0]) * n
        else:
            out[k] = float(np.interp(np.arange(c.input_len + 1, c.input_len + n + 1), Ls, ys).sum())
    return out


def oom_row(system, b, reason):
    return {"system": system, "batch": b, "tokens_per_s": None, "oom": True, "oom_reason": reason,
            "fits": False, "fit_reason": reason, "breakdown": {}}


def row(system, b, c, prefill_s: float, decode: dict, extra=None, fit_reason=None):
    """A row from the prefill time and the integrated decode breakdown; the
    breakdown shows each part per decode step (mean over steps)."""
    n = max(1, c.output_len - 1)
    total = prefill_s + decode.get("step_s", 0.0)
    bd = {"prefill_s": prefill_s, "decode_s": decode.get("step_s", 0.0)}
    for k, v in decode.items():
        bd[k] = v if isinstance(v, str) else v / n
    bd.setdefault("gpu_bound", gpu_bound(c, b))
    if extra:
        bd.update(extra)
    return {"system": system, "batch": b, "tokens_per_s": b * c.output_len / total if total else None,
            "oom": False, "oom_reason": None, "fits": fit_reason is None, "fit_reason": fit_reason,
            "breakdown": bd}


def gib(x):
    return f"{x / GB:.1f} GB"
