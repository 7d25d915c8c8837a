"""FlexGen with the KV cache on the SSD, and the two baselines built on it:
FlexGen-SparQ (SparQ's two loads through FlexGen's disk path) and
FlexGen-GDS (SSD -> GPU by GPUDirect Storage). docs/system-model.md,
"FlexGen's disk path" and "The baselines", names every source.

FlexGen keeps a layer's K (and V) cache as one (s, b*H, d) fp16 tensor in a
.npy file it memory-maps (TorchDisk.init_cache_one_gpu_batch): a token's rows
for all (sequence, head) pairs are contiguous, so a 4 KiB block holds the
rows of 16 (sequence, head) pairs at one token position.
"""
from __future__ import annotations

import math

from csdemu.sysmodel.common import (GB, SysConfig, eager_prefill_bytes, gib, gpu_bw, gpu_cap,
                                    gpu_link, gpu_step_s, integrate, oom_row, prefill_gpu_s, row)
from csdemu.sysmodel.csd import sparse_params

PATHS = ("mmap", "gds")


def sparq_bytes(c: SysConfig, b: int, L: int) -> tuple[float, float]:
    """(bytes read, of which the K copy) per layer of one FlexGen-SparQ decode
    step over L tokens, for the whole batch b*H_kv (sequence, head) pairs:
      * step 1, r dims of K for every token: from a dim-major copy of K (SparQ
        keeps K twice), one head dim of one (sequence, head) per row of L
        tokens, read in whole blocks;
      * step 2, K and V rows of the k selected tokens (and the local window)
        from FlexGen's token-major cache: a block of 16 (sequence, head) rows of
        one token is read if any of its pairs selected that token. The heads
        select independently (each its own top-k), so a block is read with
        probability 1 - (1 - f)^rows, f = (k + window) / L.
    An SSD returns whole blocks: no column reads through NVMe."""
    m, blk = c.model, c.hw.ssd.block_bytes
    r, k, w = sparse_params(c.sparse, m.head_dim, L, 16)
    pairs = m.kv_heads * b
    kcopy = pairs * r * math.ceil(L * m.dtype_bytes / blk) * blk     # whole blocks of each dim row
    rows = max(1, blk // (m.head_dim * m.dtype_bytes))
    f = min(1.0, (k + w) / L)
    p = 1.0 - (1.0 - f) ** rows
    token = 2 * L * (pairs / rows) * p * blk       # a token's rows fill pairs/rows blocks
    return kcopy + token, kcopy


def _flexgen(c: SysConfig, b: int, name: str, sparse: bool, path: str):
    m, hw = c.model, c.hw
    cap = gpu_cap(c)
    prefill_peak = eager_prefill_bytes(c, b, 2)           # torch.where keeps 2 score copies
    decode_peak = 2.0 * b * c.max_len * m.kv_bytes_per_token_layer   # current + prefetched layer
    buffers = max(prefill_peak, decode_peak)
    weights_on_gpu = m.weight_bytes <= cap
    if weights_on_gpu and m.weight_bytes + buffers > cap:
        return oom_row(name, b, f"GPU memory: weights {gib(m.weight_bytes)} + buffers "
                       f"{gib(buffers)} > {gib(cap)}")
    if not weights_on_gpu:
        if buffers + 2 * m.layer_weight_bytes > cap:
            return oom_row(name, b, f"GPU memory: buffers {gib(buffers)} > {gib(cap)}")
        host_cap = (hw.host.memory_gb - hw.host.os_reserve_gb) * GB
        if m.weight_bytes > host_cap:
            return oom_row(name, b, f"host memory: weights {gib(m.weight_bytes)} > {gib(host_cap)}")
    fg = hw.flexgen
    # One layer's K (or V) cache is one (s+n-1, b*H_kv, d) fp16 tensor that a copy thread
    # relays whole through its pinned buffer (copy_worker_func): larger ones cannot be loaded.
    # GDS reads into GPU memory directly: no relay.
    layer_elems = (c.max_len - 1) * b * m.kv_heads * m.head_dim
    if path == "mmap" and not sparse and layer_elems > fg.relay_buffer_elems:
        return oom_row(name, b, f"FlexGen pinned relay buffer: one layer's K cache "
                       f"{layer_elems / 2**30:.2f} G elements > {fg.relay_buffer_elems / 2**30:.2f} G")
    kcopy = 1.5 if sparse else 1.0                        # SparQ keeps K twice
    kv_total = b * c.max_len * m.kv_bytes_per_token * kcopy
    if kv_total > c.ssds * hw.ssd.capacity_gb * GB:
        return oom_row(name, b, f"SSD capacity: KV {gib(kv_total)}")
    if path == "gds":
        # cuFile DMAs between the SSD and GPU memory: no page cache, no relay copy; the
        # drive's rating already includes its own link, the GPU's link is shared
        rd = min(c.ssds * hw.ssd.read_gbps * GB * fg.gds_read_fraction, gpu_link(c))
        wr = min(c.ssds * hw.ssd.write_gbps * GB * fg.gds_write_fraction, gpu_link(c))
        kv_path = rd
    else:
        # FlexGen's disk path reaches the measured share of the SSD's rating
        # (hw/flexgen.toml); K and V are read into the relays, then each relay is
        # copied to the GPU with a blocking copy_: read and H2D add up per layer.
        rd = c.ssds * hw.ssd.read_gbps * GB * fg.disk_read_fraction
        wr = c.ssds * hw.ssd.write_gbps * GB * fg.disk_write_fraction
        kv_path = 1.0 / (1.0 / rd + 1.0 / gpu_link(c))
    w_stream = 0.0 if weights_on_gpu else m.weight_bytes / gpu_link(c)

    def step(L):
        if sparse:
            per_layer, _ = sparq_bytes(c, b, L)
            kv_bytes = m.layers * per_layer
            new = kcopy * b * m.kv_bytes_per_token
        else:
            kv_bytes = b * L * m.kv_bytes_per_token
            new = b * m.kv_bytes_per_token
        kv = kv_bytes / kv_path + new / wr
        attn_gpu = kv_bytes / gpu_bw(c)
        gpu = gpu_step_s(c, b) + attn_gpu
        return {"kv_access_s": kv, "compute_s": gpu, "transfer_s": w_stream,
                "step_s": max(kv + w_stream, gpu)}

    pre_kv = b * c.input_len * m.kv_bytes_per_token * kcopy / wr
    prefill = max(prefill_gpu_s(c, b), pre_kv) + w_stream
    return row(name, b, c, prefill, integrate(c, step), extra={"weights_on_gpu": weights_on_gpu})


def flexgen(c: SysConfig, b: int):
    """KV on the SSD, read over PCIe every step, attention on the GPU."""
    return _flexgen(c, b, "flexgen", False, "mmap")


def flexgen_sparq(c: SysConfig, b: int):
    """FlexGen + SparQ: r dims of K from a dim-major copy, then the blocks of
    FlexGen's token-major cache holding the selected tokens' K and V rows."""
    return _flexgen(c, b, "flexgen-sparq", True, "mmap")


def flexgen_gds(c: SysConfig, b: int):
    """FlexGen with its disk tensors read and written by GPUDirect Storage."""
    return _flexgen(c, b, "flexgen-gds", False, "gds")
