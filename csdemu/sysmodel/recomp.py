"""Recomp: vLLM keeps the KV cache in GPU memory only, and a sequence it has
no room for is preempted and its KV recomputed later (vLLM's preemption by
recomputation) instead of being stored anywhere else.

vLLM's scheduler (v0 defaults, `vllm.EngineArgs`; sources in
docs/system-model.md, "The baselines") is simulated step by step for `batch`
identical requests:
  * the KV cache is `gpu_memory_utilization` of GPU memory less the weights
    and the profiling run's peak activations, in blocks of `block_size`
    tokens;
  * waiting requests are admitted first come first served while their blocks
    fit above the watermark, at most `max_num_batched_tokens` prompt tokens
    and `max_num_seqs` sequences at a time; a step that admits is a prefill
    step (a recomputed request's prefill covers its prompt and everything it
    had generated);
  * a decode step that needs a new block for a sequence and finds none
    preempts the most recently admitted running sequence (its blocks are
    freed, it goes back to the front of the queue).
Costs: a decode step is the GPU's non-attention work at the running batch
plus reading every running sequence's KV from GPU memory; a prefill step is
max(FLOPs / peak, weights / bandwidth).
"""
from __future__ import annotations

import math
from collections import deque

from csdemu.sysmodel.common import (GB, SysConfig, gib, gpu_bw, gpu_flops, gpu_step_s, oom_row, gpu_bound)


def kv_cache_bytes(c: SysConfig) -> float:
    m, v = c.model, c.hw.vllm
    tokens = v.max_num_batched_tokens
    act = tokens * (m.ffn * (2 if m.gated_ffn else 1) + 4 * m.hidden) * m.dtype_bytes \
        + v.max_num_seqs * m.vocab * 4
    return c.gpus * c.hw.gpu.memory_gb * GB * v.gpu_memory_utilization - m.weight_bytes - act


def _prefill_batch_s(c: SysConfig, lens) -> float:
    """One prefill step over sequences of `lens` tokens: FLOPs add up, the
    weights are read once."""
    m = c.model
    flops = sum(2.0 * m.layers * m.layer_params * L + m.layers * 4.0 * L * L * m.q_heads * m.head_dim
                + 2.0 * m.vocab * m.hidden for L in lens)
    return max(flops / gpu_flops(c), m.weight_bytes / gpu_bw(c))


def recomp(c: SysConfig, b: int):
    name = "recomp"
    m, v = c.model, c.hw.vllm
    cap = kv_cache_bytes(c)
    block = v.block_size * m.kv_bytes_per_token
    blocks = int(cap // block) if cap > 0 else 0
    full = math.ceil(c.max_len / v.block_size)
    if blocks < full:
        return oom_row(name, b, f"GPU memory: KV cache {gib(max(cap, 0))} holds {blocks} blocks, "
                       f"one sequence of {c.max_len} tokens needs {full}")
    water = int(v.watermark * blocks)
    lens = [c.input_len] * b                 # tokens whose KV a sequence needs now
    gen = [0] * b
    waiting, running = deque(range(b)), []
    used = 0
    t_pre = t_dec = 0.0
    recomputed = steps = peak = 0
    while waiting or running:
        admitted, tokens = [], 0
        while waiting and len(running) + len(admitted) < v.max_num_seqs:
            s = waiting[0]
            need = math.ceil(lens[s] / v.block_size)
            if blocks - used - need < water or (admitted and tokens + lens[s] > v.max_num_batched_tokens):
                break
            waiting.popleft()
            admitted.append(s)
            used += need
            tokens += lens[s]
        if admitted:
            t_pre += _prefill_batch_s(c, [lens[s] for s in admitted])
            recomputed += sum(lens[s] - c.input_len for s in admitted)
            for s in admitted:             # a first prefill's last position yields a token
                gen[s] = max(gen[s], 1)
            running += admitted
            running, used = _retire(c, running, gen, lens, used, v.block_size)
            continue
        while True:
            grow = sum(1 for s in running if lens[s] % v.block_size == 0)
            if grow <= blocks - used or len(running) <= 1:
                break
            s = running.pop()
            used -= math.ceil(lens[s] / v.block_size)
            waiting.appendleft(s)
        used += sum(1 for s in running if lens[s] % v.block_size == 0)
        peak = max(peak, len(running))
        kv = sum(lens[s] + 1 for s in running) * m.kv_bytes_per_token
        t_dec += gpu_step_s(c, len(running)) + kv / gpu_bw(c)
        steps += 1
        for s in running:
            lens[s] += 1
            gen[s] += 1
        running, used = _retire(c, running, gen, lens, used, v.block_size)
    total = t_pre + t_dec
    bd = {"prefill_s": t_pre, "decode_s": t_dec, "step_s": t_dec / max(1, steps),
          "compute_s": t_dec / max(1, steps), "gpu_bound": gpu_bound(c, peak),
          "recomputed_tokens": recomputed, "peak_running": peak,
          "kv_cache_gb": cap / GB, "kv_blocks": blocks}
    return {"system": name, "batch": b, "tokens_per_s": b * c.output_len / total if total else None,
            "oom": False, "oom_reason": None, "fits": True, "fit_reason": None, "breakdown": bd}


def _retire(c: SysConfig, running, gen, lens, used, block_size):
    keep = []
    for s in running:
        if gen[s] >= c.output_len:
            used -= math.ceil(lens[s] / block_size)
        else:
            keep.append(s)
    return keep, used
