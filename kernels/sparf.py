"""SparF decode attention (InstInfer Algorithm 1; SparQ, arXiv 2312.04985).

Per (sequence b, kv head) unit, for each of its G q heads j:

(a) ``I1`` = the r dims with largest ``|q_j|`` (ties: lower dim wins).
(b) approximate scores ``s^_t = q_j[I1] . K[t, I1] * scale / sqrt(R)`` with
    ``R = sum|q_j[I1]| / sum|q_j|`` -- SparQ's softmax temperature
    ``sqrt(D * R)`` when ``scale = 1/sqrt(D)``.  Only the channel-indexed K
    pages (``[Dp, Tp]``: Dp dims x Tp tokens) of dim blocks that hold a
    selected dim of *some* q head of the unit are read (once, for all heads);
    the others are skipped.  Only the selected rows of a page are widened.
(c) ``p^ = softmax(s^)``; selected tokens = the newest ``window`` tokens plus
    the top-``k`` of the older ones by ``s^`` (ties: lower index wins);
    ``alpha = sum p^[sel]`` (exactly 1 when every token is selected).
(d) exact attention on the selected tokens: a token-indexed K (and V) page is
    read iff it holds a selected token of some q head of the unit, once.  A
    touched K page is scored whole for all heads (``simd.qk_heads``; the
    unselected scores are dropped); the value sums read only each head's
    selected rows (``simd.pv_rows``).  Top-k is a radix select
    (:func:`kth_largest`), exps are ``simd.exp_nonpos``.
(e) ``out = alpha * softmax(q.K[sel]^T * scale) V[sel] + (1 - alpha) * v_mean``.

Work units are independent, so the driver is a STUMPY-style prange over
threads with private scratch and private counters summed at the end.
"""

import math

import numpy as np
from numba import njit, prange

from . import config
from . import counters as C
from .dense import _direct_ok, page_of
from .prefetch import prefetch_page
from .simd import W, exp_nonpos, pv_rows, qk_heads, row_max
from .widen import bits_to_f32, f32_to_bits, widen_into

DTYPE_F32 = config.DTYPE_F32


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


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def _next_needed(need, g, ng):
    while g < ng and not need[g]:
        g += 1
    return g


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _sparf_unit(q, pool, dram, code, k_pages, v_pages, seq_lens, group_channel,
                kd_pool, kd_dram, kd_pages, dim_channel, v_mean, r, k, window,
                scale, out, alpha_out, ctr, b, kvh, G,
                dims, qr, qs, absq, rowneed, dbneed, shat, sel, nsel, alpha,
                es, lsum, need, ptr, rowdone, kbuf, vbuf, dbuf, obuf,
                touched_tok, touched_db, pbuf, khist, kcand):
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

    # (a) top-r dims of |q| per head, the scaled q[I1], the union of rows
    rowneed[:, :] = False
    for j in range(G):
        tot = np.float32(0.0)
        for d in range(D):
            a = abs(q[b, h0 + j, d])
            absq[d] = a
            tot += a
            qs[j, d] = q[b, h0 + j, d] * scale
        topk_ascending_buf(absq, D, r, dims[j], khist, kcand)
        part = np.float32(0.0)
        for i in range(r):
            part += absq[dims[j, i]]
        ratio = part / tot if tot > 0 else np.float32(1.0)
        if ratio <= 0:
            ratio = np.float32(1.0)
        sscale = scale / np.float32(math.sqrt(ratio))
        for i in range(r):
            d = dims[j, i]
            qr[j, i] = q[b, h0 + j, d] * sscale
            rowneed[d // Dp, d % Dp] = True
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
            src = page_of(kd_pool, kd_dram, pid)
            for i in range(Dp):
                if rowneed[db, i]:
                    widen_into(src[i], code, dbuf[i])
            if pid >= 0:
                ctr[ch, C.KD_READ] += 1
                ctr[ch, C.FLASH_BYTES] += kd_bytes
            else:
                ctr[ch, C.KD_DRAM] += 1
                ctr[ch, C.DRAM_BYTES] += kd_bytes
            macs = 0
            for j in range(G):
                for i in range(r):
                    d = dims[j, i]
                    if d // Dp != db:
                        continue
                    qv = qr[j, i]
                    drow = dbuf[d - db * Dp]
                    srow = shat[j, t0:t0 + nvalid]   # slices: loops from 0
                    for t in range(nvalid):          # vectorize cleanly
                        srow[t] += qv * drow[t]
                    macs += nvalid
            ctr[ch, C.MACS] += macs

    # (c) approximate softmax mass, top-k + local window
    nwin = min(window, S)
    nrest = S - nwin
    for j in range(G):
        srow = shat[j, :S]
        m = row_max(srow, S)
        tot = np.float32(0.0)
        for t in range(S):
            tot += exp_nonpos(srow[t] - m)
        c = topk_ascending_buf(shat[j], nrest, min(k, nrest), sel[j], khist, kcand)
        for i in range(nwin):
            sel[j, c + i] = nrest + i
        c += nwin
        nsel[j] = c
        if c == S:
            alpha[j] = 1.0
        else:
            part = np.float32(0.0)
            for i in range(c):
                part += exp_nonpos(shat[j, sel[j, i]] - m)
            alpha[j] = part / tot
    for gi in range(ng):
        nvalid = min(T, S - gi * T)
        ch = group_channel[b, gi]
        ctr[ch, C.EXPS] += G * nvalid
        ctr[ch, C.FILTER] += G * nvalid

    # (d) token pages holding a selected token of any head (the union)
    for gi in range(ng):
        need[gi] = False
    for j in range(G):
        for i in range(nsel[j]):
            need[sel[j, i] // T] = True
    for gi in range(ng):
        touched_tok[b, kvh, gi] = need[gi]
    page_bytes = T * D * itemsize
    for j in range(G):
        ptr[j] = 0
    for gi in range(ng):
        ch = group_channel[b, gi]
        if not need[gi]:
            ctr[ch, C.K_SKIP] += 1
            continue
        pid = k_pages[b, kvh, gi]
        src = page_of(pool, dram, pid)
        # the next page this unit reads, prefetched while this one is scored
        gn = _next_needed(need, gi + 1, ng)
        if gn < ng:
            nxt = page_of(pool, dram, k_pages[b, kvh, gn])
        else:
            nxt = page_of(pool, dram, v_pages[b, kvh, _next_needed(need, 0, ng)])
        if pid >= 0:
            ctr[ch, C.K_READ] += 1
            ctr[ch, C.FLASH_BYTES] += page_bytes
        else:
            ctr[ch, C.K_DRAM] += 1
            ctr[ch, C.DRAM_BYTES] += page_bytes
        t0 = gi * T
        t1 = t0 + T
        nt = 0
        if D % W == 0:
            # vector path: the scores of the whole page for all G heads
            # (unselected rows' scores are dropped), then pick
            valid = min(T, S - t0)
            if T % W == 0 and _direct_ok(code):
                qk_heads(src, nxt, code, valid, qs, 0, G, pbuf, 0, 0)
            else:
                widen_into(src, code, kbuf[:T])
                qk_heads(kbuf, kbuf, DTYPE_F32, valid, qs, 0, G, pbuf, 0, 0)
            for j in range(G):
                while ptr[j] < nsel[j] and sel[j, ptr[j]] < t1:
                    es[j, ptr[j]] = pbuf[j, sel[j, ptr[j]] - t0]
                    ptr[j] += 1
                    nt += 1
        else:
            rowdone[:] = False
            for j in range(G):
                while ptr[j] < nsel[j] and sel[j, ptr[j]] < t1:
                    t = sel[j, ptr[j]] - t0
                    if not rowdone[t]:          # widen only the selected rows
                        widen_into(src[t], code, kbuf[t])
                        rowdone[t] = True
                    acc = np.float32(0.0)
                    for d in range(D):
                        acc += qs[j, d] * kbuf[t, d]
                    es[j, ptr[j]] = acc
                    ptr[j] += 1
                    nt += 1
        ctr[ch, C.MACS] += 2 * D * nt
        ctr[ch, C.EXPS] += nt
    for j in range(G):
        nj = nsel[j]
        erow = es[j, :nj]
        m = row_max(erow, nj) if nj > 0 else np.float32(0.0)
        s = np.float32(0.0)
        for i in range(nj):
            p = exp_nonpos(erow[i] - m)
            erow[i] = p
            s += p
        lsum[j] = s
        ptr[j] = 0
        for d in range(D):
            obuf[j, d] = 0.0
    for gi in range(ng):
        ch = group_channel[b, gi]
        if not need[gi]:
            ctr[ch, C.V_SKIP] += 1
            continue
        pid = v_pages[b, kvh, gi]
        src = page_of(pool, dram, pid)
        gn = _next_needed(need, gi + 1, ng)
        if gn < ng:
            prefetch_page(page_of(pool, dram, v_pages[b, kvh, gn]))
        if pid >= 0:
            ctr[ch, C.V_READ] += 1
            ctr[ch, C.FLASH_BYTES] += page_bytes
        else:
            ctr[ch, C.V_DRAM] += 1
            ctr[ch, C.DRAM_BYTES] += page_bytes
        t0 = gi * T
        t1 = t0 + T
        if D % W == 0 and _direct_ok(code):
            # per head: its selected rows of the page, straight from the page
            for j in range(G):
                i0 = ptr[j]
                while ptr[j] < nsel[j] and sel[j, ptr[j]] < t1:
                    ptr[j] += 1
                if ptr[j] > i0:
                    pv_rows(src, code, sel, i0, t0, ptr[j] - i0, es, j, obuf, j)
            continue
        rowdone[:] = False
        for j in range(G):
            i0 = ptr[j]
            while ptr[j] < nsel[j] and sel[j, ptr[j]] < t1:
                t = sel[j, ptr[j]] - t0
                if not rowdone[t]:          # widen only the selected rows
                    widen_into(src[t], code, vbuf[t])
                    rowdone[t] = True
                if D % W != 0:
                    p = es[j, ptr[j]]
                    for d in range(D):
                        obuf[j, d] += p * vbuf[t, d]
                ptr[j] += 1
            if D % W == 0 and ptr[j] > i0:
                pv_rows(vbuf, DTYPE_F32, sel, i0, t0, ptr[j] - i0, es, j, obuf, j)

    # (e) blend with the mean value vector
    for j in range(G):
        a = alpha[j]
        w = a / lsum[j] if nsel[j] > 0 else np.float32(0.0)
        for d in range(D):
            out[b, h0 + j, d] = w * obuf[j, d] + (np.float32(1.0) - a) * v_mean[b, kvh, d]
        alpha_out[b, h0 + j] = a


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def sparf_kernel(q, pool, dram, code, k_pages, v_pages, seq_lens, group_channel,
                 kd_pool, kd_dram, kd_pages, dim_channel, v_mean, nchannels,
                 r, k, window, scale, out, alpha_out, counters, nthreads,
                 touched_tok, touched_db):
    """All (sequence, kv head) units; writes ``out``, ``alpha_out``, adds
    into ``counters`` [nchannels, NCTR], and marks which token groups
    (``touched_tok`` [B, Hkv, Gmax]) and dim blocks (``touched_db``
    [B, Hkv, D/Dp]) were read, so a timing model can charge exact pages."""
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
        dims = np.empty((G, D), np.int64)
        qr = np.empty((G, D), np.float32)
        qs = np.empty((G, D), np.float32)
        absq = np.empty(D, np.float32)
        rowneed = np.empty((NDB, Dp), np.bool_)
        dbneed = np.empty(NDB, np.bool_)
        shat = np.empty((G, smax), np.float32)
        sel = np.empty((G, smax), np.int64)
        nsel = np.empty(G, np.int64)
        alpha = np.empty(G, np.float32)
        es = np.empty((G, smax), np.float32)
        lsum = np.empty(G, np.float32)
        need = np.empty(gmax, np.bool_)
        ptr = np.empty(G, np.int64)
        rowdone = np.empty(T, np.bool_)
        TR = (T + W - 1) // W * W
        kbuf = np.zeros((TR, D), np.float32)
        vbuf = np.zeros((TR, D), np.float32)
        dbuf = np.empty((Dp, Tp), np.float32)
        obuf = np.empty((G, D), np.float32)
        pbuf = np.empty((G, TR + W), np.float32)
        khist = np.empty(2048, np.int64)
        kcand = np.empty(max(smax, D), np.uint32)
        for u in range(tid, nunits, nth):
            _sparf_unit(q, pool, dram, code, k_pages, v_pages, seq_lens,
                        group_channel, kd_pool, kd_dram, kd_pages, dim_channel,
                        v_mean, r, k, window, scale, out, alpha_out, tctr[tid],
                        u // Hkv, u % Hkv, G,
                        dims, qr, qs, absq, rowneed, dbneed, shat, sel, nsel,
                        alpha, es, lsum, need, ptr, rowdone, kbuf, vbuf, dbuf,
                        obuf, touched_tok, touched_db, pbuf, khist, kcand)
    for t in range(nth):
        counters += tctr[t]
