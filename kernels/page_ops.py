"""One page of dense attention: resolve a page reference, score a K page or
add a V page's value sums for the G q heads of a kv head.

Pages whose head dim is a multiple of 16 go straight to the vector loops
(``simd.qk_heads`` / ``simd.pv_heads``), fp16 through F16C, and so do
dims-major K pages whose token count is (``simd.qk_dims``); other pages
(fp16 without F16C, token counts not a multiple of 16) are widened into an
fp32 token-major scratch first, and odd head dims use the plain loops here.
"""

import numpy as np
from numba import njit

from . import config
from .ir.prefetch import prefetch_page
from .ir.simd import W, pv_heads, qk_dims, qk_heads
from .widen import widen_into

DTYPE_F32 = config.DTYPE_F32
DTYPE_BF16 = config.DTYPE_BF16
F16C = config.F16C


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def page_of(pool, dram, pid):
    """Page reference -> page view: p >= 0 is ``pool[p]`` (flash), p < 0 is
    ``dram[-p-1]`` (device-DRAM buffer)."""
    if pid >= 0:
        return pool[pid]
    return dram[-pid - 1]


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _scores_widened(qs, h0, G, kbuf, valid, sbuf, col):
    """sbuf[j, col + t] = qs[h0 + j] . kbuf[t] for t < valid, j < G.

    Four tokens per pass share each q load and one loop over head_dim (a
    1.6x gain over one dot product per token in isolation)."""
    D = kbuf.shape[1]
    t = 0
    while t + 4 <= valid:
        k0 = kbuf[t]
        k1 = kbuf[t + 1]
        k2 = kbuf[t + 2]
        k3 = kbuf[t + 3]
        for j in range(G):
            qj = qs[h0 + j]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for d in range(D):
                x = qj[d]
                a0 += x * k0[d]
                a1 += x * k1[d]
                a2 += x * k2[d]
                a3 += x * k3[d]
            srow = sbuf[j]
            srow[col + t] = a0
            srow[col + t + 1] = a1
            srow[col + t + 2] = a2
            srow[col + t + 3] = a3
        t += 4
    while t < valid:
        kt = kbuf[t]
        for j in range(G):
            qj = qs[h0 + j]
            a = np.float32(0.0)
            for d in range(D):
                a += qj[d] * kt[d]
            sbuf[j, col + t] = a
        t += 1


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _values_widened(sbuf, col, G, vbuf, valid, obuf):
    """obuf[j, :] += sum_t sbuf[j, col + t] * vbuf[t, :], four tokens per
    pass over head_dim (one load/store of the accumulator per 4 FMAs)."""
    D = vbuf.shape[1]
    t = 0
    while t + 4 <= valid:
        v0 = vbuf[t]
        v1 = vbuf[t + 1]
        v2 = vbuf[t + 2]
        v3 = vbuf[t + 3]
        for j in range(G):
            pr = sbuf[j]
            p0 = pr[col + t]
            p1 = pr[col + t + 1]
            p2 = pr[col + t + 2]
            p3 = pr[col + t + 3]
            oj = obuf[j]
            for d in range(D):
                oj[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d]
        t += 4
    while t < valid:
        vt = vbuf[t]
        for j in range(G):
            p0 = sbuf[j, col + t]
            oj = obuf[j]
            for d in range(D):
                oj[d] += p0 * vt[d]
        t += 1


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def direct_ok(code):
    """Can the vector kernels read pages of this dtype without widening?"""
    return code == DTYPE_F32 or code == DTYPE_BF16 or F16C


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _widen_dims_major(src, code, tmp, kb):
    """A dims-major page (memory [D, T], shaped [T, D]) -> token-major
    float32 ``kb`` [T, D], through ``tmp`` (same shape)."""
    T = src.shape[0]
    D = src.shape[1]
    widen_into(src, code, tmp)
    flat = tmp.reshape(T * D)
    for d in range(D):
        for t in range(T):
            kb[t, d] = flat[d * T + t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def page_scores(src, nxt, code, valid, qb, h0, G, kbuf, vbuf, sbuf, col, dims):
    """sbuf[j, col + t] = qb[h0 + j] . K[t] for t < valid, j < G, where the
    page holds K token-major (``dims`` False: row t is token t) or
    dims-major (``dims`` True: memory [D, T], see ``scores_dims``).

    May also write up to 15 columns past ``col + valid`` (garbage the next
    page overwrites; ``sbuf`` has 16 spare columns).  ``vbuf`` is scratch."""
    T = src.shape[0]
    D = src.shape[1]
    if dims:
        if T % W == 0 and direct_ok(code):
            qk_dims(src, nxt, code, valid, qb, h0, G, sbuf, 0, col)
            return
        _widen_dims_major(src, code, vbuf[:T], kbuf[:T])
    elif D % W == 0 and T % W == 0 and direct_ok(code):
        qk_heads(src, nxt, code, valid, qb, h0, G, sbuf, 0, col)
        return
    else:
        widen_into(src, code, kbuf[:T])       # kbuf: T rounded up to 16 rows
    if D % W == 0:
        qk_heads(kbuf, kbuf, DTYPE_F32, valid, qb, h0, G, sbuf, 0, col)
    else:
        _scores_widened(qb, h0, G, kbuf[:T], valid, sbuf, col)


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def page_values(src, nxt, code, valid, sbuf, col, G, vbuf, obuf):
    """obuf[j] += sum_{t < valid} sbuf[j, col + t] * page[t] for j < G."""
    T = src.shape[0]
    D = src.shape[1]
    if D % W == 0:
        if direct_ok(code):
            # pv_heads holds 4 heads x 64 dims of o (or 2 x 128) in registers,
            # so 4 heads over a 128-dim row read the page in strides, half a
            # row per pass; fed from DRAM that left the V pass at 16 GB/s on
            # 2 threads, against 21 for two passes of 2 heads over whole rows
            # (the second reads the page from L1)
            hp = 4 if D <= 4 * W else 2
            for j in range(0, G, hp):
                pv_heads(src, nxt if j == 0 else src, code, valid, sbuf, j, min(hp, G - j),
                         col, obuf, j)
        else:
            widen_into(src, code, vbuf[:T])
            pv_heads(vbuf, vbuf, DTYPE_F32, valid, sbuf, 0, G, col, obuf, 0)
    else:
        vb = vbuf[:T]
        widen_into(src, code, vb)
        _values_widened(sbuf, col, G, vb, valid, obuf)


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def pos_ref(kp, vp, grp, n, i):
    """Page reference at position ``i`` of the unit's page sequence (K pages
    of ``grp[:n]``, then its V pages); the last page past the end."""
    i = min(i, 2 * n - 1)
    if i < n:
        return kp[grp[i]]
    return vp[grp[i - n]]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def prefetch_pos(pool, dram, kp, vp, grp, n, i):
    """Prefetch position ``i`` of the unit's page sequence: K pages of
    ``grp[:n]``, then its V pages."""
    if i < n:
        prefetch_page(page_of(pool, dram, kp[grp[i]]))
    elif i < 2 * n:
        prefetch_page(page_of(pool, dram, vp[grp[i - n]]))
