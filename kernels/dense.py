"""Dense decode attention over paged KV.

One *unit* is (sequence b, kv head) -- or, for the per-channel partials of
:func:`dense_partials_kernel`, (sequence b, kv head, channel c): the tokens
of the groups that live on channel c.  For the ``G = Hq // Hkv`` q heads of
the kv head a unit

1. scores every token: each K page is read once for all G heads
   (``simd.qk_heads``), straight from the page (fp16 via F16C
   ``vcvtph2ps``, bf16 by a shift, fp32 as is);
2. exponentiates the unit's scores in one batch per head: ``m = max s``
   (``simd.row_max``), ``p = exp(s - m)`` (``simd.exp_nonpos``, vectorized),
   ``l = sum p`` -- no per-page rescaling;
3. accumulates ``o += p . V`` page by page (``simd.pv_heads``).

``dense_attention`` runs whole-sequence units and writes ``out = o / l``
directly (no split-K merge: on a CPU the channels of a sequence are walked by
one thread anyway).  ``dense_partials`` runs per-channel units and writes the
FlashDecoding partials ``m, l [B, Hq, C]``, ``o [B, Hq, C, D]``;
``merge.merge_partials_kernel`` is the log-sum-exp merge.
Counters are charged per page / per token to the channel of the token's group
either way, so both give identical counters.

Per-page work (and the fallbacks for head dims that are not a multiple of
16) is in ``page_ops``.

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
from .page_ops import (direct_ok, page_of, page_scores, page_values, pos_ref,
                       prefetch_pos)
from .ir.simd import PREFETCH_IN_LOOP, W, exp_shifted

_direct_ok = direct_ok          # the name sparf.py imports


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _dense_unit(qb, pool, dram, code, k_pages, v_pages, S, gchan, kvh, c, G,
                kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, dist, kdims):
    """One unit over the groups of one sequence (``gchan`` = its row of
    ``group_channel``, ``S`` its length) on channel ``c`` (all groups if
    ``c < 0``).  Leaves ``m, l`` in ``mrow, lrow`` [G] and ``o`` in
    ``obuf[:G]``; returns the number of tokens (0: nothing written).
    ``grp``: int64 scratch of at least ``ceil(S / T)`` entries; ``dist``:
    software-prefetch distance in pages (0 = off); ``kdims``: K pages in
    ``pool`` are dims-major (DRAM pages always token-major)."""
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
            prefetch_pos(pool, dram, kp, vp, grp, n, i)
    # pass 1: scores of every token of the unit, all G heads per page
    nt = 0
    for i in range(n):
        if burst:
            prefetch_pos(pool, dram, kp, vp, grp, n, i + dist)
        gi = grp[i]
        valid = min(T, S - gi * T)
        pid = kp[gi]
        nxt = page_of(pool, dram, pos_ref(kp, vp, grp, n, i + max(dist, 1)))
        page_scores(page_of(pool, dram, pid), nxt, code, valid, qb, h0, G,
                    kbuf, vbuf, sbuf, nt, kdims and pid >= 0)
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
        mrow[j], lrow[j] = exp_shifted(row, row, nt)
    # pass 3: value sums
    obuf[:G, :] = 0.0
    nt = 0
    for i in range(n):
        if burst:
            prefetch_pos(pool, dram, kp, vp, grp, n, n + i + dist)
        gi = grp[i]
        valid = min(T, S - gi * T)
        pid = vp[gi]
        nxt = page_of(pool, dram, pos_ref(kp, vp, grp, n, n + i + max(dist, 1)))
        page_values(page_of(pool, dram, pid), nxt, code, valid, sbuf, nt, G,
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
                      group_channel, out, ctr, smax, pf, kdims):
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
                         kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, pf, kdims)
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
                           group_channel, out, counters, nthreads, pf, kdims):
    """Whole-sequence units over ``nthreads`` threads; writes ``out``
    [B, Hq, D] (zeros for an empty sequence) and adds into ``counters``.
    ``qs`` is q already multiplied by ``scale``."""
    smax = _smax(seq_lens)
    nunits = qs.shape[0] * k_pages.shape[1]
    nth = min(max(nthreads, 1), max(nunits, 1))
    tctr = np.zeros((nth,) + counters.shape, np.int64)
    for tid in prange(nth):
        _attention_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages,
                          seq_lens, group_channel, out, tctr[tid], smax, pf, kdims)
    for t in range(nth):
        counters += tctr[t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def dense_attention_serial(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                           group_channel, out, counters, pf, kdims):
    """:func:`dense_attention_kernel` on the calling thread only."""
    _attention_thread(0, 1, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                      group_channel, out, counters, _smax(seq_lens), pf, kdims)


# --- per-channel units: dense_partials ----------------------------------------

@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _partials_thread(tid, nth, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                     group_channel, nchannels, m_part, l_part, o_part, ctr, smax, pf,
                     kdims):
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
                         kbuf, vbuf, sbuf, obuf, mrow, lrow, grp, ctr, pf, kdims)
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
                          counters, nthreads, pf, kdims):
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
                         o_part, tctr[tid], smax, pf, kdims)
    for t in range(nth):
        counters += tctr[t]


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def dense_partials_serial(qs, pool, dram, code, k_pages, v_pages, seq_lens,
                          group_channel, nchannels, m_part, l_part, o_part,
                          counters, pf, kdims):
    """:func:`dense_partials_kernel` on the calling thread only."""
    _partials_thread(0, 1, qs, pool, dram, code, k_pages, v_pages, seq_lens,
                     group_channel, nchannels, m_part, l_part, o_part, counters,
                     _smax(seq_lens), pf, kdims)
