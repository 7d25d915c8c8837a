"""Slow, obviously-correct references for kernels/ (float64 numpy).

They work on dense K, V [B, Hkv, Smax, D] holding the *stored* values
widened to float32 (``PagedKV.K`` / ``.V``), so the only difference from the
kernels is fp32 vs fp64 rounding.
"""

import math

import numpy as np


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def dense(q, K, V, seq_lens, scale=None):
    """out[b, h] = softmax(q[b,h] . K[b,kv]^T * scale) V[b,kv], kv = h // G."""
    B, Hq, D = q.shape
    Hkv = K.shape[1]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.zeros((B, Hq, D))
    for b in range(B):
        S = int(seq_lens[b])
        if S == 0:
            continue
        for h in range(Hq):
            kv = h // G
            p = softmax(K[b, kv, :S].astype(np.float64) @ q[b, h].astype(np.float64) * scale)
            out[b, h] = p @ V[b, kv, :S].astype(np.float64)
    return out


def merge(m, l, o):
    """Log-sum-exp merge of per-channel partials, in float64."""
    m = np.asarray(m, np.float64)
    out = np.zeros(o.shape[:2] + o.shape[3:])
    for b in range(m.shape[0]):
        for h in range(m.shape[1]):
            mm = m[b, h]
            if np.all(np.isneginf(mm)):
                continue
            w = np.exp(mm - mm.max())
            out[b, h] = (w[:, None] * o[b, h]).sum(0) / (w * l[b, h]).sum()
    return out


def partial(q_h, K_tok, V_tok, scale):
    """(m, l, o) of one head over a token subset, float64."""
    if len(K_tok) == 0:
        return -np.inf, 0.0, np.zeros(q_h.shape[0])
    s = K_tok.astype(np.float64) @ q_h.astype(np.float64) * scale
    m = s.max()
    p = np.exp(s - m)
    return m, p.sum(), p @ V_tok.astype(np.float64)


def topk_stable(vals, k):
    """Indices of the k largest values, ties to the lower index, ascending."""
    order = np.argsort(-np.asarray(vals), kind="stable")
    return np.sort(order[:k])


def sparf(q, K, V, seq_lens, v_mean, r, k, window, scale=None):
    """SparQ / InstInfer-SparF reference, one selection per kv head (GQA).

    For each (b, kv head) with q heads h of its group: dims = top-r of
    sum_h |q_h| (float32 sum, ties to the lower dim); per head the SparQ
    temperature R_h = sum|q_h[dims]| / sum|q_h|, approximate scores s^_h and
    p^_h = softmax(s^_h); tokens = the newest `window` plus the top-k of the
    others by sum_h p^_h (ties to the lower index); alpha_h = sum p^_h[sel].

    Returns (out [B,Hq,D], alpha [B,Hq], dims {(b,h): array}, sel {(b,h): array})
    -- dims and sel are the same arrays for every q head of a kv head.
    """
    B, Hq, D = q.shape
    Hkv = K.shape[1]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.zeros((B, Hq, D))
    alpha = np.zeros((B, Hq))
    dims, sels = {}, {}
    for b in range(B):
        S = int(seq_lens[b])
        if S == 0:
            continue
        for kv in range(Hkv):
            heads = range(kv * G, (kv + 1) * G)
            absq = np.zeros(D, np.float32)
            for h in heads:                              # float32, head order
                absq += np.abs(q[b, h])
            i1 = topk_stable(absq, r)
            Kb = K[b, kv, :S].astype(np.float64)
            Vb = V[b, kv, :S].astype(np.float64)
            phats = []
            for h in heads:
                absh = np.abs(q[b, h]).astype(np.float64)
                tot = absh.sum()
                ratio = absh[i1].sum() / tot if tot > 0 else 1.0
                if ratio <= 0:
                    ratio = 1.0
                qh = q[b, h].astype(np.float64)
                phats.append(softmax(Kb[:, i1] @ qh[i1] * scale / math.sqrt(ratio)))
            nwin = min(window, S)
            nrest = S - nwin
            top = topk_stable(np.sum(phats, axis=0)[:nrest], min(k, nrest))
            sel = np.concatenate([top, np.arange(nrest, S)]).astype(np.int64)
            for h, phat in zip(heads, phats):
                qh = q[b, h].astype(np.float64)
                a = 1.0 if len(sel) == S else phat[sel].sum()
                if len(sel):
                    p = softmax(Kb[sel] @ qh * scale)
                    att = p @ Vb[sel]
                else:
                    att = np.zeros(D)
                out[b, h] = a * att + (1 - a) * v_mean[b, kv].astype(np.float64)
                alpha[b, h] = a
                dims[b, h], sels[b, h] = i1, sel
    return out, alpha, dims, sels


def sparf_counters(lay, dims, sels, G, T, Dp, Tp, nchannels):
    """Expected page and byte counters (read/dram/skip, flash/DRAM bytes per
    channel) from a naive selection: for each (b, kv head) a page is read iff
    some q head needs it; a K-copy page moves whole, a token page only its
    selected rows (a NAND column read)."""
    from kernels import counters as C
    ctr = np.zeros((nchannels, C.NCTR), np.int64)
    B, Hkv = lay.k_pages.shape[:2]
    D = lay.K.shape[3]
    item = lay.pool.itemsize
    for b in range(B):
        S = int(lay.seq_lens[b])
        if S == 0:
            continue
        ng = -(-S // T)
        ntb = -(-S // Tp)
        for kv in range(Hkv):
            heads = range(kv * G, (kv + 1) * G)
            dbs = {int(d) // Dp for h in heads for d in dims[b, h]}
            groups = {int(t) // T for h in heads for t in sels[b, h]}
            for tb in range(ntb):
                for db in range(D // Dp):
                    ch = lay.dim_channel[b, db, tb]
                    if db not in dbs:
                        ctr[ch, C.KD_SKIP] += 1
                    elif lay.kd_pages[b, kv, db, tb] >= 0:
                        ctr[ch, C.KD_READ] += 1
                        ctr[ch, C.FLASH_BYTES] += Dp * Tp * item
                    else:
                        ctr[ch, C.KD_DRAM] += 1
                        ctr[ch, C.DRAM_BYTES] += Dp * Tp * item
            for g in range(ng):
                ch = lay.group_channel[b, g]
                if g not in groups:
                    ctr[ch, C.K_SKIP] += 1
                    ctr[ch, C.V_SKIP] += 1
                    continue
                rows = len({int(t) for h in heads for t in sels[b, h] if int(t) // T == g})
                for refs, rd, dr in ((lay.k_pages, C.K_READ, C.K_DRAM),
                                     (lay.v_pages, C.V_READ, C.V_DRAM)):
                    flash = refs[b, kv, g] >= 0
                    ctr[ch, rd if flash else dr] += 1
                    ctr[ch, C.FLASH_BYTES if flash else C.DRAM_BYTES] += rows * D * item
    return ctr
