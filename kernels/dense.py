"""Dense decode attention over paged KV, FlashDecoding split-K.

Stage 1 (``dense_partials``): one work unit per (sequence b, kv head, channel
c) computes, for each of the ``G = Hq // Hkv`` q heads of that kv head and over
the tokens of the groups that live on channel c, the running max ``m``, the
sum ``l = sum exp(s - m)`` and the unnormalised ``o = sum exp(s - m) v``
(fp32).  Each K and V page is read once and widened once into a scratch page
for all G q heads.  Within a unit the scores of all its tokens are computed
first, then the exps in one batch, then the value sums (no per-page rescale).

Stage 2 (``merge_partials``): per (b, q head) log-sum-exp merge over channels:
``M = max_c m_c``, ``out = sum_c e^(m_c-M) o_c / sum_c e^(m_c-M) l_c``.

Parallelism follows STUMPY: ``prange`` over threads, each thread owns its
scratch and its counter slice and walks units ``tid, tid+nth, ...``; units
write disjoint slices of the preallocated partial arrays; counters are summed
serially afterwards.
"""

import numpy as np
from numba import njit, prange

from . import config
from . import counters as C
from .prefetch import prefetch_page
from .widen import widen_into


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def page_of(pool, dram, pid):
    """Page reference -> page view: p >= 0 is ``pool[p]`` (flash), p < 0 is
    ``dram[-p-1]`` (device-DRAM buffer)."""
    if pid >= 0:
        return pool[pid]
    return dram[-pid - 1]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _next_group(group_channel, b, c, g, ng):
    """First group >= g of sequence b on channel c (ng if none)."""
    while g < ng and group_channel[b, g] != c:
        g += 1
    return g


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _scores_page(qs, h0, G, kbuf, valid, sbuf, col):
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
def _values_page(sbuf, col, G, vbuf, valid, obuf):
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
def _dense_unit(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                group_channel, b, kvh, c, G, kbuf, vbuf, sbuf, obuf,
                m_part, l_part, o_part, ctr):
    """One (sequence, kv head, channel) unit; see module docstring."""
    T = kbuf.shape[0]
    D = kbuf.shape[1]
    S = seq_lens[b]
    ng = (S + T - 1) // T
    h0 = kvh * G
    # pass 1: scores of every token of this channel, all G heads per page
    nt = 0
    nk_flash = 0
    nk_dram = 0
    gi = _next_group(group_channel, b, c, 0, ng)
    if gi < ng:
        prefetch_page(page_of(pool, dram, k_pages[b, kvh, gi]))
    while gi < ng:
        gnext = _next_group(group_channel, b, c, gi + 1, ng)
        # prefetch the next page (K, then the first V page) while on this one
        if gnext < ng:
            prefetch_page(page_of(pool, dram, k_pages[b, kvh, gnext]))
        else:
            prefetch_page(page_of(pool, dram, v_pages[b, kvh, _next_group(group_channel, b, c, 0, ng)]))
        valid = min(T, S - gi * T)
        pid = k_pages[b, kvh, gi]
        widen_into(page_of(pool, dram, pid), code, kbuf)
        if pid >= 0:
            nk_flash += 1
        else:
            nk_dram += 1
        _scores_page(qs[b], h0, G, kbuf, valid, sbuf, nt)
        nt += valid
        gi = gnext
    if nt == 0:
        for j in range(G):
            m_part[b, h0 + j, c] = -np.inf
            l_part[b, h0 + j, c] = 0.0
            for d in range(D):
                o_part[b, h0 + j, c, d] = 0.0
        return
    # pass 2: batched exps
    for j in range(G):
        m = sbuf[j, 0]
        for t in range(1, nt):
            m = max(m, sbuf[j, t])
        s = np.float32(0.0)
        for t in range(nt):
            p = np.exp(sbuf[j, t] - m)
            sbuf[j, t] = p
            s += p
        m_part[b, h0 + j, c] = m
        l_part[b, h0 + j, c] = s
    # pass 3: value sums
    obuf[:G, :] = 0.0
    nt = 0
    nv_flash = 0
    nv_dram = 0
    gi = _next_group(group_channel, b, c, 0, ng)
    while gi < ng:
        gnext = _next_group(group_channel, b, c, gi + 1, ng)
        if gnext < ng:
            prefetch_page(page_of(pool, dram, v_pages[b, kvh, gnext]))
        valid = min(T, S - gi * T)
        pid = v_pages[b, kvh, gi]
        widen_into(page_of(pool, dram, pid), code, vbuf)
        if pid >= 0:
            nv_flash += 1
        else:
            nv_dram += 1
        _values_page(sbuf, nt, G, vbuf, valid, obuf)
        nt += valid
        gi = gnext
    for j in range(G):
        for d in range(D):
            o_part[b, h0 + j, c, d] = obuf[j, d]
    # counters (this thread's private slice)
    page_bytes = T * D * pool.itemsize
    ctr[c, C.K_READ] += nk_flash
    ctr[c, C.V_READ] += nv_flash
    ctr[c, C.K_DRAM] += nk_dram
    ctr[c, C.V_DRAM] += nv_dram
    ctr[c, C.FLASH_BYTES] += (nk_flash + nv_flash) * page_bytes
    ctr[c, C.DRAM_BYTES] += (nk_dram + nv_dram) * page_bytes
    ctr[c, C.MACS] += 2 * nt * D * G
    ctr[c, C.EXPS] += nt * G


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def dense_partials_kernel(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                          group_channel, nchannels, m_part, l_part, o_part,
                          counters, nthreads):
    """Stage 1 over all units.  ``qs`` is q already multiplied by ``scale``.

    Writes ``m_part, l_part`` [B, Hq, C] and ``o_part`` [B, Hq, C, D]; adds
    into ``counters`` [C, NCTR].
    """
    B = qs.shape[0]
    Hq = qs.shape[1]
    D = qs.shape[2]
    Hkv = k_pages.shape[1]
    G = Hq // Hkv
    T = pool.shape[1]
    smax = 1
    for b in range(B):
        smax = max(smax, seq_lens[b])
    nunits = B * Hkv * nchannels
    nth = min(max(nthreads, 1), max(nunits, 1))
    tctr = np.zeros((nth, nchannels, counters.shape[1]), np.int64)
    for tid in prange(nth):
        kbuf = np.empty((T, D), np.float32)
        vbuf = np.empty((T, D), np.float32)
        sbuf = np.empty((G, smax), np.float32)
        obuf = np.empty((G, D), np.float32)
        for u in range(tid, nunits, nth):
            c = u % nchannels
            bh = u // nchannels
            kvh = bh % Hkv
            b = bh // Hkv
            _dense_unit(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                        group_channel, b, kvh, c, G, kbuf, vbuf, sbuf, obuf,
                        m_part, l_part, o_part, tctr[tid])
    for t in range(nth):
        counters += tctr[t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def merge_partials_kernel(m_part, l_part, o_part, out):
    """Stage 2: log-sum-exp merge over the channel axis into ``out`` [B,Hq,D].

    A (b, head) with no tokens at all (every ``m`` is -inf) gets zeros.
    """
    B = m_part.shape[0]
    Hq = m_part.shape[1]
    NC = m_part.shape[2]
    D = o_part.shape[3]
    for bh in prange(B * Hq):
        b = bh // Hq
        h = bh % Hq
        M = -np.inf
        for c in range(NC):
            M = max(M, m_part[b, h, c])
        for d in range(D):
            out[b, h, d] = 0.0
        if M == -np.inf:
            continue
        L = np.float32(0.0)
        for c in range(NC):
            if m_part[b, h, c] == -np.inf:
                continue
            w = np.exp(m_part[b, h, c] - M)
            L += w * l_part[b, h, c]
            for d in range(D):
                out[b, h, d] += w * o_part[b, h, c, d]
        inv = np.float32(1.0) / L
        for d in range(D):
            out[b, h, d] *= inv
