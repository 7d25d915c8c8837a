"""ZeRO-Inference (DeepSpeed, --cpu-offload --kv-offload): weights and a
float32 KV buffer in host memory, weights streamed to the GPU every step,
attention on the CPU; the part of host memory demand above capacity is
swapped. Sources in docs/system-model.md."""
from __future__ import annotations

from csdemu.sysmodel.common import (GB, SysConfig, eager_prefill_bytes, gib, gpu_cap, gpu_link,
                                    gpu_step_s, integrate, oom_row, prefill_gpu_s, row)

HF_FP32_KV = 4          # ZeRO-Inference's CPU KV buffer is torch.empty() with no dtype: float32


def deepspeed(c: SysConfig, b: int):
    m, hw = c.model, c.hw
    name = "deepspeed"
    cap = gpu_cap(c)
    gpu_need = 2 * m.layer_weight_bytes + eager_prefill_bytes(c, b, 3) \
        + b * c.input_len * m.vocab * m.dtype_bytes
    if gpu_need > cap:
        return oom_row(name, b, f"GPU memory: prefill {gib(gpu_need)} > {gib(cap)}")
    kv_buf = m.layers * 2 * b * m.kv_heads * (c.max_len - 1) * m.head_dim * HF_FP32_KV
    need = m.weight_bytes + kv_buf + hw.host.os_reserve_gb * GB
    overflow = max(0.0, need - hw.host.memory_gb * GB)
    if overflow > c.ssds * hw.ssd.capacity_gb * GB:
        return oom_row(name, b, f"host memory + swap: need {gib(need)}")
    link = gpu_link(c)
    cluster = hw.host.page_cluster * 4096
    fault_s = 1.0 / hw.ssd.rand_read_iops_qd1 + cluster / (hw.ssd.read_gbps * GB)
    swap = overflow / cluster * fault_s + overflow / (hw.ssd.write_gbps * GB)
    host_bw = hw.host.mem_bw_gbps * GB

    def step(L):
        w = m.weight_bytes / link
        kv_read = b * L * m.layers * 2 * m.kv_heads * m.head_dim * HF_FP32_KV / host_bw
        qo = m.layers * (2 * b * m.q_heads * m.head_dim * 4 + b * m.kv_bytes_per_token_layer) / link
        gpu = gpu_step_s(c, b)
        return {"kv_access_s": kv_read, "swap_s": swap, "compute_s": gpu, "transfer_s": w + qo,
                "step_s": w + qo + gpu + kv_read + swap}

    prefill = (m.weight_bytes / link + prefill_gpu_s(c, b)
               + b * c.input_len * m.layers * 2 * m.kv_heads * m.head_dim * m.dtype_bytes / link)
    return row(name, b, c, prefill, integrate(c, step),
               extra={"host_need_gb": need / GB, "swapped_gb": overflow / GB})
