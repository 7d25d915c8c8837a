"""Shared pieces of the kernel tests: random inputs and counter columns."""
import numpy as np

from kernels import counters as C

PAGE_COLS = [C.K_READ, C.V_READ, C.KD_READ, C.K_SKIP, C.V_SKIP, C.KD_SKIP,
             C.K_DRAM, C.V_DRAM, C.KD_DRAM]
BYTE_COLS = [C.FLASH_BYTES, C.DRAM_BYTES]


def _data(rng, B, Hq, Hkv, D, Smax):
    K = rng.standard_normal((B, Hkv, Smax, D)).astype(np.float32)
    V = rng.standard_normal((B, Hkv, Smax, D)).astype(np.float32)
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    return q, K, V
