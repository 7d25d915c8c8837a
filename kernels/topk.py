"""Top-k selection for SparF: radix select on order-preserving float keys.

Stable semantics (ties go to the lower index, results in ascending index
order) so a numpy ``argsort(-v, kind="stable")`` reference picks the same
set.  Split out of kernels/sparf.py: the selection is reused by both SparF
ranks (head dims by |q|, tokens by approximate probability).
"""

import numpy as np
from numba import njit

from . import config
from .widen import bits_to_f32, f32_to_bits


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def topk_ascending(vals, n, k, out):
    """Indices of the ``k`` largest of ``vals[:n]`` in ascending index order,
    ties broken towards the lower index (as a stable sort on ``-vals``).
    Writes ``out[:count]``; returns count = min(k, n)."""
    return topk_ascending_buf(vals, n, k, out, np.empty(2048, np.int64),
                              np.empty(max(n, 1), np.uint32))


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _order_key(x):
    """uint32 key with the order of float32 ``x`` (-0 just below +0)."""
    u = np.uint32(f32_to_bits(x))
    if u >> np.uint32(31):
        return np.uint32(~u)
    return np.uint32(u | np.uint32(0x80000000))


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def kth_largest(vals, n, k, hist, cand):
    """The ``k``-th largest (1 <= k <= n) of float32 ``vals[:n]``, by radix
    selection on order-preserving keys: three histogram passes of 11, 11 and
    10 bits, each over the survivors of the last (``hist``: int64 >= 2048,
    ``cand``: uint32 >= n scratch).  No allocation, O(n), independent of the
    data (a quickselect was 3x slower and allocated per call)."""
    m = n
    shift = 21
    prefix = np.uint32(0)
    for level in range(3):
        nb = 2048 if level < 2 else 1024
        for i in range(nb):
            hist[i] = 0
        mask = np.uint32(nb - 1)
        if level == 0:
            for i in range(n):
                key = _order_key(vals[i])
                cand[i] = key
                hist[(key >> np.uint32(shift)) & mask] += 1
        else:
            for i in range(m):
                hist[(cand[i] >> np.uint32(shift)) & mask] += 1
        bsel = nb - 1
        cum = 0
        while True:
            if cum + hist[bsel] >= k:
                break
            cum += hist[bsel]
            bsel -= 1
        k -= cum
        prefix = np.uint32(prefix | (np.uint32(bsel) << np.uint32(shift)))
        if level < 2:
            # keep the survivors of bin bsel
            j = 0
            for i in range(m):
                if (cand[i] >> np.uint32(shift)) & mask == np.uint32(bsel):
                    cand[j] = cand[i]
                    j += 1
            m = j
        shift = 10 if level == 0 else 0
    if prefix >> np.uint32(31):
        bits = np.uint32(prefix & np.uint32(0x7FFFFFFF))
    else:
        bits = np.uint32(~prefix)
    return bits_to_f32(bits)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def topk_ascending_buf(vals, n, k, out, hist, cand):
    """:func:`topk_ascending` with caller-provided scratch (``hist``: int64
    >= 2048, ``cand``: uint32 >= n; no allocation)."""
    if k >= n:
        for i in range(n):
            out[i] = i
        return n
    if k <= 0:
        return 0
    thr = kth_largest(vals, n, k, hist, cand)
    ngt = 0
    for i in range(n):
        if vals[i] > thr:
            ngt += 1
    neq = k - ngt
    c = 0
    for i in range(n):
        v = vals[i]
        if v > thr:
            out[c] = i
            c += 1
        elif v == thr and neq > 0:
            out[c] = i
            c += 1
            neq -= 1
    return c
