"""SparF decode attention (InstInfer Algorithm 1; SparQ, arXiv 2312.04985),
with one selection per kv head shared by its q heads (GQA).

Per (sequence b, kv head) unit with G q heads j:

(a) ``I1`` = the r dims with largest ``sum_j |q_j|`` (ties: lower dim
    wins), one set for the whole group, so the channel-indexed K pages of r
    dims are read and not of up to G*r.  Each head keeps its own SparQ
    temperature: ``R_j = sum|q_j[I1]| / sum|q_j|``.
(b) approximate scores ``s^_jt = q_j[I1] . K[t, I1] * scale / sqrt(R_j)``
    (SparQ's softmax temperature ``sqrt(D * R_j)`` when ``scale =
    1/sqrt(D)``).  Only the ``[Dp, Tp]`` K-copy pages of dim blocks holding a
    selected dim are read; only the selected rows of a page are widened.
(c) ``p^_j = softmax(s^_j)`` per head; selected tokens = the newest
    ``window`` tokens plus the top-``k`` of the older ones by ``sum_j p^_j``
    (ties: lower index wins; with G = 1 the rank is by ``s^`` itself, the
    same order without exp's rounding), one set for the whole group: with
    per-head sets the union of G heads' picks touched nearly every 16-token
    page.  ``alpha_j = sum p^_j[sel]`` per head (exactly 1 when every token
    is selected).
(d) exact attention on the selected tokens for all G heads: a token-indexed
    K (V) page is read iff it holds a selected token, and only those rows
    cross the flash channel (a NAND column read), which is what the
    per-group counts in ``touched_tok`` and ``FLASH_BYTES`` report.  The
    selected rows are gathered (widened) into a buffer, as the column reads
    deliver them, and attended densely (``simd.qk_heads`` / ``pv_heads``,
    each row read once for all heads); about 1/8 of a page's rows are
    selected at 1/8, so scoring whole pages would cost as much as dense.
    Exps are ``simd.exp_nonpos``.
(e) ``out_j = alpha_j * softmax(q_j.K[sel]^T * scale) V[sel]
    + (1 - alpha_j) * v_mean``.

Work units are independent, so the driver is a STUMPY-style prange over
threads with private scratch and private counters summed at the end.
"""

import math

import numpy as np
from numba import njit, prange

from . import config
from . import counters as C
from .ir.prefetch import prefetch_row
from .ir.simd import W, exp_shifted, pv_heads, qk_heads
from .topk import topk_ascending_buf
from .widen import widen_elem

DTYPE_F32 = config.DTYPE_F32
#: selected rows gathered per chunk of the exact pass (a multiple of 16, as
#: qk_heads computes whole blocks): 64 KiB of fp32 at head dim 128
GATHER_ROWS = 128


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _count_page(ctr, ch, on_flash, col_flash, col_dram, nbytes):
    if on_flash:
        ctr[ch, col_flash] += 1
        ctr[ch, C.FLASH_BYTES] += nbytes
    else:
        ctr[ch, col_dram] += 1
        ctr[ch, C.DRAM_BYTES] += nbytes


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _widen_row(pool, dram, pid, row, code, dst, di, n):
    """``dst[di, :n] =`` row ``row`` of page ``pid`` (flash pool if >= 0, else
    DRAM slot ``-pid - 1``), widened; indexed in place, as views cost two
    atomic reference counts each and a SparF attend widens ~70k rows."""
    if pid >= 0:
        for x in range(n):
            dst[di, x] = widen_elem(pool[pid, row, x], code)
    else:
        for x in range(n):
            dst[di, x] = widen_elem(dram[-pid - 1, row, x], code)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _gather_rows(pool, dram, pages, sel, i0, n, c, T, code, gbuf):
    """Widen the rows of tokens ``sel[i0:i0 + n]`` (page refs ``pages``, one
    per token group) into ``gbuf[:n]``; rows ``PF`` ahead are prefetched, as
    the pages are scattered over the pool."""
    PF = 8
    D = pool.shape[2]
    for i in range(i0, min(i0 + PF, c)):
        _prefetch_token(pool, pages, sel[i], T)
    for j in range(n):
        if i0 + j + PF < c:
            _prefetch_token(pool, pages, sel[i0 + j + PF], T)
        t = sel[i0 + j]
        _widen_row(pool, dram, pages[t // T], t % T, code, gbuf, j, D)


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _prefetch_token(pool, pages, t, T):
    p = pages[t // T]
    if p >= 0:                                   # DRAM rows stay cached
        prefetch_row(pool, p, t % T)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _select_dims(q, b, h0, G, r, scale, dims, qr, qs, absq, khist, kcand):
    """(a): the shared top-r dims into ``dims[:r]`` (ascending), each head's
    scaled q on them (``qr``) and its whole scaled q (``qs``)."""
    D = q.shape[2]
    for d in range(D):
        absq[d] = 0.0
    for j in range(G):
        for d in range(D):
            absq[d] += abs(q[b, h0 + j, d])
            qs[j, d] = q[b, h0 + j, d] * scale
    topk_ascending_buf(absq, D, r, dims, khist, kcand)
    for j in range(G):
        tot = np.float32(0.0)
        for d in range(D):
            tot += abs(q[b, h0 + j, d])
        part = np.float32(0.0)
        for i in range(r):
            part += abs(q[b, h0 + j, dims[i]])
        ratio = part / tot if tot > 0 else np.float32(1.0)
        if ratio <= 0:
            ratio = np.float32(1.0)
        sscale = scale / np.float32(math.sqrt(ratio))
        for i in range(r):
            qr[j, i] = q[b, h0 + j, dims[i]] * sscale


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _select_tokens(shat, es, psum, etot, S, G, k, window, sel, alpha, khist, kcand):
    """(c): the shared selection into ``sel[:c]`` (ascending), each head's
    alpha; -> c.  Leaves ``es[j, t] = exp(s^_jt - max_j)``."""
    nwin = min(window, S)
    nrest = S - nwin
    for t in range(S):
        psum[t] = 0.0
    for j in range(G):
        erow = es[j, :S]
        _, tot = exp_shifted(shat[j, :S], erow, S)
        etot[j] = tot
        inv = np.float32(1.0) / tot
        if G > 1:
            for t in range(S):
                psum[t] += erow[t] * inv
    key = shat[0] if G == 1 else psum
    c = topk_ascending_buf(key, nrest, min(k, nrest), sel, khist, kcand)
    for i in range(nwin):
        sel[c + i] = nrest + i
    c += nwin
    for j in range(G):
        if c == S:
            alpha[j] = 1.0
        else:
            part = np.float32(0.0)
            for i in range(c):
                part += es[j, sel[i]]
            alpha[j] = part / etot[j]
    return c


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _sparf_unit(q, pool, dram, code, k_pages, v_pages, seq_lens, group_channel,
                kd_pool, kd_dram, kd_pages, dim_channel, v_mean, r, k, window,
                scale, out, alpha_out, ctr, b, kvh, G,
                dims, qr, qs, absq, rowneed, dbneed, shat, psum, sel, alpha,
                es, lsum, cnt, gbuf, dbuf, obuf,
                touched_tok, touched_db, khist, kcand):
    D = q.shape[2]
    T = pool.shape[1]
    Dp = dbuf.shape[0]
    Tp = dbuf.shape[1]
    NDB = D // Dp
    S = seq_lens[b]
    h0 = kvh * G
    if S == 0:
        for j in range(G):
            alpha_out[b, h0 + j] = 0.0
            for d in range(D):
                out[b, h0 + j, d] = 0.0
        return
    ng = (S + T - 1) // T
    ntb = (S + Tp - 1) // Tp
    itemsize = pool.itemsize

    # (a) shared top-r dims; the K-copy rows and dim blocks they need
    _select_dims(q, b, h0, G, r, scale, dims, qr, qs, absq, khist, kcand)
    rowneed[:, :] = False
    for i in range(r):
        rowneed[dims[i] // Dp, dims[i] % Dp] = True
    for db in range(NDB):
        dbneed[db] = False
        for i in range(Dp):
            if rowneed[db, i]:
                dbneed[db] = True
        touched_db[b, kvh, db] = dbneed[db]

    # (b) approximate scores from the channel-indexed K pages
    for j in range(G):
        for t in range(S):
            shat[j, t] = 0.0
    kd_bytes = Dp * Tp * itemsize
    for tb in range(ntb):
        t0 = tb * Tp
        nvalid = min(Tp, S - t0)
        for db in range(NDB):
            ch = dim_channel[b, db, tb]
            if not dbneed[db]:
                ctr[ch, C.KD_SKIP] += 1
                continue
            pid = kd_pages[b, kvh, db, tb]
            for i in range(Dp):
                if rowneed[db, i]:
                    _widen_row(kd_pool, kd_dram, pid, i, code, dbuf, i, nvalid)
            if pid >= 0:
                ctr[ch, C.KD_READ] += 1
                ctr[ch, C.FLASH_BYTES] += kd_bytes
            else:
                ctr[ch, C.KD_DRAM] += 1
                ctr[ch, C.DRAM_BYTES] += kd_bytes
            macs = 0
            for i in range(r):
                d = dims[i]
                if d // Dp != db:
                    continue
                drow = dbuf[d - db * Dp]
                for j in range(G):
                    qv = qr[j, i]
                    srow = shat[j, t0:t0 + nvalid]   # slices: loops from 0
                    for t in range(nvalid):          # vectorize cleanly
                        srow[t] += qv * drow[t]
                macs += G * nvalid
            ctr[ch, C.MACS] += macs

    # (c) per-head approximate softmax, the shared top-k + local window
    # (lsum is free until (d): it holds the approximate denominators)
    c = _select_tokens(shat, es, psum, lsum, S, G, k, window, sel, alpha, khist, kcand)
    for gi in range(ng):
        nvalid = min(T, S - gi * T)
        ch = group_channel[b, gi]
        ctr[ch, C.EXPS] += G * nvalid
        ctr[ch, C.FILTER] += G * nvalid

    # (d) token pages holding a selected token; only those rows are moved
    for gi in range(ng):
        cnt[gi] = 0
    for i in range(c):
        cnt[sel[i] // T] += 1
    row_bytes = D * itemsize
    for gi in range(ng):
        touched_tok[b, kvh, gi] = cnt[gi]
        ch = group_channel[b, gi]
        if cnt[gi] == 0:
            ctr[ch, C.K_SKIP] += 1
            ctr[ch, C.V_SKIP] += 1
            continue
        nbytes = cnt[gi] * row_bytes
        _count_page(ctr, ch, k_pages[b, kvh, gi] >= 0, C.K_READ, C.K_DRAM, nbytes)
        _count_page(ctr, ch, v_pages[b, kvh, gi] >= 0, C.V_READ, C.V_DRAM, nbytes)
        ctr[ch, C.MACS] += 2 * D * G * cnt[gi]
        ctr[ch, C.EXPS] += G * cnt[gi]
    # The selected rows arrive gathered, as a column read delivers them, so
    # the exact pass is dense attention over c rows: scores for all G heads
    # in chunks of the gather buffer ...
    CH = gbuf.shape[0]
    kp = k_pages[b, kvh]
    vp = v_pages[b, kvh]
    for i0 in range(0, c, CH):
        n = min(CH, c - i0)
        _gather_rows(pool, dram, kp, sel, i0, n, c, T, code, gbuf)
        if D % W == 0:
            qk_heads(gbuf, gbuf, DTYPE_F32, n, qs, 0, G, es, 0, i0)
        else:
            for j in range(G):
                for i in range(n):
                    acc = np.float32(0.0)
                    for d in range(D):
                        acc += qs[j, d] * gbuf[i, d]
                    es[j, i0 + i] = acc
    for j in range(G):
        erow = es[j, :c]
        _, lsum[j] = exp_shifted(erow, erow, c)
        for d in range(D):
            obuf[j, d] = 0.0
    # ... then the value sums, each gathered V row read once for all heads
    for i0 in range(0, c, CH):
        n = min(CH, c - i0)
        _gather_rows(pool, dram, vp, sel, i0, n, c, T, code, gbuf)
        if D % W == 0:
            pv_heads(gbuf, gbuf, DTYPE_F32, n, es, 0, G, i0, obuf, 0)
        else:
            for j in range(G):
                for i in range(n):
                    p = es[j, i0 + i]
                    for d in range(D):
                        obuf[j, d] += p * gbuf[i, d]

    # (e) blend with the mean value vector
    for j in range(G):
        a = alpha[j]
        w = a / lsum[j] if c > 0 else np.float32(0.0)
        for d in range(D):
            out[b, h0 + j, d] = w * obuf[j, d] + (np.float32(1.0) - a) * v_mean[b, kvh, d]
        alpha_out[b, h0 + j] = a


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def sparf_kernel(q, pool, dram, code, k_pages, v_pages, seq_lens, group_channel,
                 kd_pool, kd_dram, kd_pages, dim_channel, v_mean, nchannels,
                 r, k, window, scale, out, alpha_out, counters, nthreads,
                 touched_tok, touched_db):
    """All (sequence, kv head) units; writes ``out``, ``alpha_out``, adds
    into ``counters`` [nchannels, NCTR], and reports what was read so a
    timing model can charge it exactly: ``touched_tok`` [B, Hkv, Gmax]
    (int32) gets the number of selected tokens in each token group (its K
    and V pages are read iff > 0, and only those rows are transferred),
    ``touched_db`` [B, Hkv, D/Dp] (bool) the dim blocks whose K-copy pages
    were read."""
    B = q.shape[0]
    Hq = q.shape[1]
    D = q.shape[2]
    Hkv = k_pages.shape[1]
    G = Hq // Hkv
    T = pool.shape[1]
    Dp = kd_pool.shape[1]
    Tp = kd_pool.shape[2]
    NDB = D // Dp
    smax = 1
    for b in range(B):
        smax = max(smax, seq_lens[b])
    gmax = (smax + T - 1) // T
    nunits = B * Hkv
    nth = min(max(nthreads, 1), max(nunits, 1))
    tctr = np.zeros((nth, nchannels, counters.shape[1]), np.int64)
    for tid in prange(nth):
        dims = np.empty(D, np.int64)
        qr = np.empty((G, D), np.float32)
        qs = np.empty((G, D), np.float32)
        absq = np.empty(D, np.float32)
        rowneed = np.empty((NDB, Dp), np.bool_)
        dbneed = np.empty(NDB, np.bool_)
        shat = np.empty((G, smax), np.float32)
        psum = np.empty(smax, np.float32)
        sel = np.empty(smax, np.int64)
        alpha = np.empty(G, np.float32)
        es = np.empty((G, smax + W), np.float32)     # qk_heads writes past c
        lsum = np.empty(G, np.float32)
        cnt = np.empty(gmax, np.int64)
        gbuf = np.zeros((GATHER_ROWS, D), np.float32)
        dbuf = np.empty((Dp, Tp), np.float32)
        obuf = np.empty((G, D), np.float32)
        khist = np.empty(2048, np.int64)
        kcand = np.empty(max(smax, D), np.uint32)
        for u in range(tid, nunits, nth):
            _sparf_unit(q, pool, dram, code, k_pages, v_pages, seq_lens,
                        group_channel, kd_pool, kd_dram, kd_pages, dim_channel,
                        v_mean, r, k, window, scale, out, alpha_out, tctr[tid],
                        u // Hkv, u % Hkv, G,
                        dims, qr, qs, absq, rowneed, dbneed, shat, psum, sel,
                        alpha, es, lsum, cnt, gbuf, dbuf, obuf,
                        touched_tok, touched_db, khist, kcand)
    for t in range(nth):
        counters += tctr[t]
