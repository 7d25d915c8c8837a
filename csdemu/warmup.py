"""Compile every attention-kernel variant once, so Numba's on-disk cache holds
them and no daemon pays a JIT compile inside a command (run by `make install`):

    python -m csdemu.warmup
"""
from __future__ import annotations

import time

import numpy as np


def warm(log=print) -> None:
    import numba

    from kernels.attention import dense_attention, sparf_attention
    from kernels.layout_testing import random_paged_kv
    t0 = time.perf_counter()
    most = numba.config.NUMBA_NUM_THREADS
    # One thread is the daemon's default (serial code); with more, dense
    # attention either runs (sequence, kv head) units or splits by channel.
    for threads, batch in {(1, 2), (most, 2), (most, 2 * most)}:
        numba.set_num_threads(threads)
        for dtype in ("fp16", "bf16", "fp32"):
            lay = random_paged_kv(batch, 1, 64, [40, 7] * (batch // 2), 16, 2, dtype, Dp=1,
                                  Tp=32 if dtype == "fp32" else 64)
            q = np.ones((batch, 2, 64), np.float32)
            out = np.empty_like(q)
            dense_attention(q, lay.pool, lay.dram_pool, lay.k_pages, lay.v_pages, lay.seq_lens,
                            lay.group_channel, 2, out, kv_dtype=dtype)
            sparf_attention(q, lay.pool, lay.dram_pool, lay.k_pages, lay.v_pages, lay.seq_lens,
                            lay.group_channel, lay.kd_pool, lay.kd_dram_pool, lay.kd_pages,
                            lay.dim_channel, np.zeros((batch, 1, 64), np.float32), 2, out,
                            r=8, k=4, window=2, kv_dtype=dtype)
    numba.set_num_threads(most)
    log(f"attention kernels compiled and cached in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    warm()
