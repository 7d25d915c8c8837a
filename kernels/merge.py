"""FlashDecoding's second stage: the log-sum-exp merge of per-channel
partials ``m, l [B, Hq, C]``, ``o [B, Hq, C, D]``:
``M = max_c m_c``, ``out = sum_c e^(m_c-M) o_c / sum_c e^(m_c-M) l_c``.
"""

import numpy as np
from numba import njit, prange

from . import config


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _merge_one(m_part, l_part, o_part, out, b, h):
    NC = m_part.shape[2]
    D = o_part.shape[3]
    o = out[b, h]
    o[:] = 0.0
    M = -np.inf
    for c in range(NC):
        M = max(M, m_part[b, h, c])
    if M == -np.inf:
        return
    L = np.float32(0.0)
    for c in range(NC):
        if m_part[b, h, c] == -np.inf:
            continue
        w = np.exp(m_part[b, h, c] - M)
        L += w * l_part[b, h, c]
        oc = o_part[b, h, c]
        for d in range(D):
            o[d] += w * oc[d]
    inv = np.float32(1.0) / L
    for d in range(D):
        o[d] *= inv


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def merge_partials_serial(m_part, l_part, o_part, out):
    """Stage 2 on the calling thread: log-sum-exp merge over the channel axis
    into ``out`` [B, Hq, D].  A (b, head) with no tokens at all (every ``m``
    is -inf) gets zeros."""
    for b in range(m_part.shape[0]):
        for h in range(m_part.shape[1]):
            _merge_one(m_part, l_part, o_part, out, b, h)


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def merge_partials_kernel(m_part, l_part, o_part, out):
    """:func:`merge_partials_serial` with a prange over (b, head); only worth
    it for large inputs (see ``attention.MERGE_PARALLEL_MIN``)."""
    Hq = m_part.shape[1]
    for bh in prange(m_part.shape[0] * Hq):
        _merge_one(m_part, l_part, o_part, out, bh // Hq, bh % Hq)
