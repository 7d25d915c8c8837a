"""Dense decode attention over paged KV.

One *unit* is (sequence b, kv head) -- or, for the per-channel partials of
:func:`dense_partials_kernel`, (sequence b, kv head, channel c): the tokens
of the groups that live on channel c.  For the ``G = Hq // Hkv`` q heads of
the kv head a unit

1. scores every token: each K page is read once for all G heads, 16 tokens
   x one head at a time (``simd.qk16``: per-token vector accumulators reduced
   together, no horizontal reduction per dot product), straight from the
   page (fp16 via F16C ``vcvtph2ps``, bf16 by a shift, fp32 as is);
2. exponentiates the unit's scores in one batch per head: ``m = max s``
   (``simd.row_max``), ``p = exp(s - m)`` (``simd.exp_nonpos``, vectorized),
   ``l = sum p`` -- no per-page rescaling;
3. accumulates ``o += p . V`` page by page (``simd.pv_accum``).

``dense_attention`` runs whole-sequence units and writes ``out = o / l``
directly (no split-K merge: on a CPU the channels of a sequence are walked by
one thread anyway).  ``dense_partials`` runs per-channel units and writes the
FlashDecoding partials ``m, l [B, Hq, C]``, ``o [B, Hq, C, D]``;
``merge_partials_kernel`` is the log-sum-exp merge
``M = max_c m_c``, ``out = sum_c e^(m_c-M) o_c / sum_c e^(m_c-M) l_c``.
Counters are charged per page / per token to the channel of the token's group
either way, so both give identical counters.

The fast path needs ``head_dim % 16 == 0``; other head dims (and fp16 pages
without F16C, or pages whose token count is not a multiple of 16) widen each
page into an fp32 scratch first, and odd head dims use plain loops.

Parallelism follows STUMPY: ``prange`` over threads, each thread owns its
scratch and its counter slice and walks units ``tid, tid+nth, ...``; units
write disjoint slices of the outputs; counters are summed serially
afterwards.  With one thread the serial drivers (``*_serial``) are used, so no
threading-layer region is entered at all.
"""

import numpy as np
from numba import njit, prange

from . import config
from . import counters as C
from .prefetch import prefetch_page
from .simd import PREFETCH_IN_LOOP, W, exp_nonpos, pv_heads, qk_heads, row_max
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
def _direct_ok(code):
    """Can the vector kernels read pages of this dtype without widening?"""
    return code == DTYPE_F32 or code == DTYPE_BF16 or F16C


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _scores_group(src, nxt, code, valid, qb, h0, G, kbuf, sbuf, col):
    """sbuf[j, col + t] = qb[h0 + j] . page[t] for t < valid, j < G.

    May also write up to 15 columns past ``col + valid`` (garbage the next
    page overwrites; ``sbuf`` has 16 spare columns)."""
    T = src.shape[0]
    D = src.shape[1]
    if D % W == 0:
        if T % W == 0 and _direct_ok(code):
            qk_heads(src, nxt, code, valid, qb, h0, G, sbuf, 0, col)
        else:
            widen_into(src, code, kbuf[:T])   # kbuf: T rounded up to 16 rows
            qk_heads(kbuf, kbuf, DTYPE_F32, valid, qb, h0, G, sbuf, 0, col)
    else:
        kb = kbuf[:T]
        widen_into(src, code, kb)
        _scores_page(qb, h0, G, kb, valid, sbuf, col)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _values_group(src, nxt, code, valid, sbuf, col, G, vbuf, obuf):
    """obuf[j] += sum_{t < valid} sbuf[j, col + t] * page[t] for j < G."""
    T = src.shape[0]
    D = src.shape[1]
    if D % W == 0:
        if _direct_ok(code):
            pv_heads(src, nxt, code, valid, sbuf, 0, G, col, obuf, 0)
        else:
            widen_into(src, code, vbuf[:T])
            pv_heads(vbuf, vbuf, DTYPE_F32, valid, sbuf, 0, G, col, obuf, 0)
    else:
        vb = vbuf[:T]
        widen_into(src, code, vb)
        _values_page(sbuf, col, G, vb, valid, obuf)


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _pos_ref(kp, vp, grp, n, i):
    """Page reference at position ``i`` of the unit's page sequence (K pages
    of ``grp[:n]``, then its V pages); the last page past the end."""
    i = min(i, 2 * n - 1)
    if i < n:
        return kp[grp[i]]
    return vp[grp[i - n]]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _prefetch_pos(pool, dram, kp, vp, grp, n, i):
    """Prefetch position ``i`` of the unit's page sequence: K pages of
    ``grp[:n]``, then its V pages."""
    if i < n:
        prefetch_page(page_of(pool, dram, kp[grp[i]]))
    elif i < 2 * n:
        prefetch_page(page_of(pool, dram, vp[grp[i - n]]))


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _dense_unit(qb, pool, dram, code, k_pages, v_pages, S, gchan, kvh, c, G,
                kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, dist):
    """One unit over the groups of one sequence (``gchan`` = its row of
    ``group_channel``, ``S`` its length) on channel ``c`` (all groups if
    ``c < 0``).  Leaves ``m, l`` in ``mrow, lrow`` [G] and ``o`` in
    ``obuf[:G]``; returns the number of tokens (0: nothing written).
    ``grp``: int64 scratch of at least ``ceil(S / T)`` entries; ``dist``:
    software-prefetch distance in pages (0 = off)."""
    T = pool.shape[1]
    D = pool.shape[2]
    ng = (S + T - 1) // T
    h0 = kvh * G
    kp = k_pages[kvh]
    vp = v_pages[kvh]
    page_bytes = T * D * pool.itemsize
    n = 0
    for gi in range(ng):
        if c < 0 or gchan[gi] == c:
            grp[n] = gi
            n += 1
    if n == 0:
        return 0
    # software prefetch: the vector loops prefetch the page ``dist`` ahead
    # line by line as they read the current one (simd.PREFETCH_IN_LOOP);
    # the first ``dist`` pages, or every page when the loops don't, are
    # prefetched whole
    burst = dist > 0 and not PREFETCH_IN_LOOP
    if dist > 0:
        for i in range(dist):
            _prefetch_pos(pool, dram, kp, vp, grp, n, i)
    # pass 1: scores of every token of the unit, all G heads per page
    nt = 0
    for i in range(n):
        if burst:
            _prefetch_pos(pool, dram, kp, vp, grp, n, i + dist)
        gi = grp[i]
        valid = min(T, S - gi * T)
        pid = kp[gi]
        nxt = page_of(pool, dram, _pos_ref(kp, vp, grp, n, i + max(dist, 1)))
        _scores_group(page_of(pool, dram, pid), nxt, code, valid, qb, h0, G,
                      kbuf, sbuf, nt)
        ch = gchan[gi]
        if pid >= 0:
            ctr[ch, C.K_READ] += 1
            ctr[ch, C.FLASH_BYTES] += page_bytes
        else:
            ctr[ch, C.K_DRAM] += 1
            ctr[ch, C.DRAM_BYTES] += page_bytes
        ctr[ch, C.MACS] += 2 * valid * D * G
        ctr[ch, C.EXPS] += valid * G
        nt += valid
    # pass 2: batched exps
    for j in range(G):
        row = sbuf[j, :nt]
        m = row_max(row, nt)
        s = np.float32(0.0)
        for t in range(nt):
            p = exp_nonpos(row[t] - m)
            row[t] = p
            s += p
        mrow[j] = m
        lrow[j] = s
    # pass 3: value sums
    obuf[:G, :] = 0.0
    nt = 0
    for i in range(n):
        if burst:
            _prefetch_pos(pool, dram, kp, vp, grp, n, n + i + dist)
        gi = grp[i]
        valid = min(T, S - gi * T)
        pid = vp[gi]
        nxt = page_of(pool, dram, _pos_ref(kp, vp, grp, n, n + i + max(dist, 1)))
        _values_group(page_of(pool, dram, pid), nxt, code, valid, sbuf, nt, G,
                      vbuf, obuf)
        ch = gchan[gi]
        if pid >= 0:
            ctr[ch, C.V_READ] += 1
            ctr[ch, C.FLASH_BYTES] += page_bytes
        else:
            ctr[ch, C.V_DRAM] += 1
            ctr[ch, C.DRAM_BYTES] += page_bytes
        nt += valid
    return nt


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _scratch(pool, G, smax):
    T = pool.shape[1]
    D = pool.shape[2]
    TR = (T + W - 1) // W * W
    kbuf = np.zeros((TR, D), np.float32)
    vbuf = np.zeros((TR, D), np.float32)
    sbuf = np.empty((G, smax + W), np.float32)
    obuf = np.empty((G, D), np.float32)
    mrow = np.empty(G, np.float32)
    lrow = np.empty(G, np.float32)
    grp = np.empty((smax + T - 1) // T, np.int64)
    return kbuf, vbuf, sbuf, obuf, mrow, lrow, grp


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _smax(seq_lens):
    smax = 1
    for b in range(seq_lens.shape[0]):
        smax = max(smax, seq_lens[b])
    return smax


# --- whole-sequence units: dense_attention ------------------------------------

@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _attention_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                      group_channel, out, ctr, smax, pf):
    Hq = qs.shape[1]
    D = qs.shape[2]
    Hkv = k_pages.shape[1]
    G = Hq // Hkv
    kbuf, vbuf, sbuf, obuf, mrow, lrow, grp = _scratch(pool, G, smax)
    nunits = qs.shape[0] * Hkv
    for u in range(tid, nunits, nth):
        b = u // Hkv
        kvh = u % Hkv
        h0 = kvh * G
        nt = _dense_unit(qs[b], pool, dram, code, k_pages[b], v_pages[b],
                         seq_lens[b], group_channel[b], kvh, -1, G,
                         kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, pf)
        for j in range(G):
            o = out[b, h0 + j]
            if nt == 0:
                o[:] = 0.0
            else:
                inv = np.float32(1.0) / lrow[j]
                ob = obuf[j]
                for d in range(D):
                    o[d] = ob[d] * inv


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def dense_attention_kernel(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                           group_channel, out, counters, nthreads, pf):
    """Whole-sequence units over ``nthreads`` threads; writes ``out``
    [B, Hq, D] (zeros for an empty sequence) and adds into ``counters``.
    ``qs`` is q already multiplied by ``scale``."""
    smax = _smax(seq_lens)
    nunits = qs.shape[0] * k_pages.shape[1]
    nth = min(max(nthreads, 1), max(nunits, 1))
    tctr = np.zeros((nth,) + counters.shape, np.int64)
    for tid in prange(nth):
        _attention_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages,
                          seq_lens, group_channel, out, tctr[tid], smax, pf)
    for t in range(nth):
        counters += tctr[t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def dense_attention_serial(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                           group_channel, out, counters, pf):
    """:func:`dense_attention_kernel` on the calling thread only."""
    _attention_thread(0, 1, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                      group_channel, out, counters, _smax(seq_lens), pf)


# --- per-channel units: dense_partials ----------------------------------------

@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _partials_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                     group_channel, nchannels, m_part, l_part, o_part, ctr, smax, pf):
    Hq = qs.shape[1]
    D = qs.shape[2]
    Hkv = k_pages.shape[1]
    G = Hq // Hkv
    kbuf, vbuf, sbuf, obuf, mrow, lrow, grp = _scratch(pool, G, smax)
    nunits = qs.shape[0] * Hkv * nchannels
    for u in range(tid, nunits, nth):
        c = u % nchannels
        bh = u // nchannels
        kvh = bh % Hkv
        b = bh // Hkv
        h0 = kvh * G
        nt = _dense_unit(qs[b], pool, dram, code, k_pages[b], v_pages[b],
                         seq_lens[b], group_channel[b], kvh, c, G,
                         kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, pf)
        for j in range(G):
            o = o_part[b, h0 + j, c]
            if nt == 0:
                m_part[b, h0 + j, c] = -np.inf
                l_part[b, h0 + j, c] = 0.0
                o[:] = 0.0
            else:
                m_part[b, h0 + j, c] = mrow[j]
                l_part[b, h0 + j, c] = lrow[j]
                ob = obuf[j]
                for d in range(D):
                    o[d] = ob[d]


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def dense_partials_kernel(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                          group_channel, nchannels, m_part, l_part, o_part,
                          counters, nthreads, pf):
    """Per-channel units.  ``qs`` is q already multiplied by ``scale``.

    Writes ``m_part, l_part`` [B, Hq, C] and ``o_part`` [B, Hq, C, D]; adds
    into ``counters`` [C, NCTR].
    """
    smax = _smax(seq_lens)
    nunits = qs.shape[0] * k_pages.shape[1] * nchannels
    nth = min(max(nthreads, 1), max(nunits, 1))
    tctr = np.zeros((nth,) + counters.shape, np.int64)
    for tid in prange(nth):
        _partials_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages,
                         seq_lens, group_channel, nchannels, m_part, l_part,
                         o_part, tctr[tid], smax, pf)
    for t in range(nth):
        counters += tctr[t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def dense_partials_serial(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                          group_channel, nchannels, m_part, l_part, o_part,
                          counters, pf):
    """:func:`dense_partials_kernel` on the calling thread only."""
    _partials_thread(0, 1, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                     group_channel, nchannels, m_part, l_part, o_part, counters,
                     _smax(seq_lens), pf)


# --- log-sum-exp merge ---------------------------------------------------------

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
