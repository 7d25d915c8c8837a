"""Public entry points: validate in plain Python, then call the jitted kernels.

Page references (``k_pages``, ``v_pages``, ``kd_pages``) are int32 or int64
(one dtype for all three): ``p >= 0`` is page ``pool[p]`` on flash, ``p < 0`` is ``dram_pool[-p - 1]`` in
the device-DRAM group buffer.  Entries past a sequence's last page are never
read.  See docs/kernels.md for the layouts.
"""

import math

import numpy as np

from . import config
from . import counters as C
from .dense import (dense_attention_kernel, dense_attention_serial,
                    dense_partials_kernel, dense_partials_serial)
from .merge import merge_partials_kernel, merge_partials_serial
from .sparf import sparf_kernel

__all__ = ["dense_attention", "dense_partials", "merge_partials",
           "sparf_attention", "dtype_code", "new_counters"]

_DTYPE_BY_NAME = {"fp32": config.DTYPE_F32, "float32": config.DTYPE_F32,
                  "fp16": config.DTYPE_F16, "float16": config.DTYPE_F16,
                  "bf16": config.DTYPE_BF16, "bfloat16": config.DTYPE_BF16}

_threads_set = False

#: merge_partials uses a parallel region only above this many output floats
#: (B * Hq * D); below it the fork/join costs more than the merge (and under
#: load a parallel region waits for every worker to be scheduled).
MERGE_PARALLEL_MIN = 1 << 20


def _apply_threads():
    global _threads_set
    if not _threads_set and config.NUM_THREADS:
        import numba
        numba.set_num_threads(int(config.NUM_THREADS))
    _threads_set = True


def _nthreads():
    import numba
    return numba.get_num_threads()


def dtype_code(kv_dtype):
    """'fp16' | 'bf16' | 'fp32' (or a ``config.DTYPE_*`` int) -> int code."""
    if isinstance(kv_dtype, str):
        try:
            return _DTYPE_BY_NAME[kv_dtype.lower()]
        except KeyError:
            raise ValueError("unknown kv_dtype %r" % (kv_dtype,)) from None
    code = int(kv_dtype)
    if code not in config.DTYPE_NAMES:
        raise ValueError("unknown kv_dtype code %r" % (kv_dtype,))
    return code


def new_counters(nchannels):
    """Zeroed int64 [nchannels, counters.NCTR] counter array."""
    return np.zeros((int(nchannels), C.NCTR), np.int64)


# --- validation helpers --------------------------------------------------------

def _pools(pool, dram_pool, code, what):
    """Check/normalise a (flash pool, DRAM pool) pair; returns float32/uint16
    C-contiguous 3-D views (never copies a pool)."""
    if not isinstance(pool, np.ndarray) or pool.ndim != 3:
        raise ValueError("%s must be a 3-D ndarray [P, rows, cols]" % what)
    if pool.dtype == np.uint32:
        pool = pool.view(np.float32)
    if dram_pool is None:
        dram_pool = np.empty((0,) + pool.shape[1:], pool.dtype)
    if not isinstance(dram_pool, np.ndarray) or dram_pool.ndim != 3:
        raise ValueError("%s dram pool must be a 3-D ndarray" % what)
    if dram_pool.dtype == np.uint32:
        dram_pool = dram_pool.view(np.float32)
    for name, a in ((what, pool), (what + " dram pool", dram_pool)):
        if not a.flags.c_contiguous:
            raise ValueError("%s must be C-contiguous" % name)
        if code == config.DTYPE_F32 and a.dtype != np.float32:
            raise TypeError("%s: fp32 storage needs float32 or uint32, got %s"
                            % (name, a.dtype))
        if code != config.DTYPE_F32 and a.dtype != np.uint16:
            raise TypeError("%s: %s storage needs uint16 bit patterns, got %s"
                            % (name, config.DTYPE_NAMES[code], a.dtype))
    if dram_pool.shape[1:] != pool.shape[1:]:
        raise ValueError("%s: dram pool page shape %s != pool page shape %s"
                         % (what, dram_pool.shape[1:], pool.shape[1:]))
    return pool, dram_pool


def _index(a, dtype, shape, name):
    a = np.asarray(a)
    if a.ndim != len(shape):
        raise ValueError("%s must be %d-D, got shape %s" % (name, len(shape), a.shape))
    for i, (got, want) in enumerate(zip(a.shape, shape)):
        if want is not None and got != want:
            raise ValueError("%s: axis %d is %d, expected %d" % (name, i, got, want))
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError("%s must be integer, got %s" % (name, a.dtype))
    return np.ascontiguousarray(a, dtype=dtype)


def _refs(a, shape, name, like=None):
    """A page-reference table, int32 or int64 as given (`like`: the dtype of
    the table it goes with): a drive keeps its tables int32, 4 B a page like
    its L2P, and converting them would cost a copy of every table per call."""
    dtype = like if like is not None else np.asarray(a).dtype
    if dtype not in (np.int32, np.int64):
        dtype = np.int64
    return _index(a, dtype, shape, name)


def _check_refs(refs, used, npool, ndram, name):
    """Every used page reference must point inside its pool."""
    r = refs[used]
    bad = (r >= npool) | (r < -ndram)
    if bad.any():
        raise ValueError("%s: page reference %d out of range (pool %d pages, "
                         "dram pool %d pages)" % (name, int(r[bad][0]), npool, ndram))


def _common(q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
            nchannels, kv_dtype, scale, counters):
    code = dtype_code(kv_dtype)
    if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 3:
        raise TypeError("q must be a float32 ndarray [B, Hq, D]")
    B, Hq, D = q.shape
    pool, dram_pool = _pools(pool, dram_pool, code, "pool")
    T = pool.shape[1]
    if pool.shape[2] != D:
        raise ValueError("page head dim %d != q head dim %d" % (pool.shape[2], D))
    k_pages = _refs(k_pages, (B, None, None), "k_pages")
    Hkv, Gmax = k_pages.shape[1], k_pages.shape[2]
    v_pages = _refs(v_pages, (B, Hkv, Gmax), "v_pages", like=k_pages.dtype)
    if Hkv < 1 or Hq % Hkv:
        raise ValueError("Hq=%d is not a multiple of Hkv=%d" % (Hq, Hkv))
    seq_lens = _index(seq_lens, np.int32, (B,), "seq_lens")
    if (seq_lens < 0).any():
        raise ValueError("seq_lens must be >= 0")
    ngroups = (seq_lens.astype(np.int64) + T - 1) // T
    if B and ngroups.max() > Gmax:
        raise ValueError("k_pages has %d groups per sequence, seq_lens need %d"
                         % (Gmax, ngroups.max()))
    nchannels = int(nchannels)
    if nchannels < 1:
        raise ValueError("nchannels must be >= 1")
    group_channel = _index(group_channel, np.int32, (B, None), "group_channel")
    if group_channel.shape[1] < (ngroups.max() if B else 0):
        raise ValueError("group_channel has too few groups per sequence")
    gused = np.arange(group_channel.shape[1])[None, :] < ngroups[:, None]
    gc = group_channel[gused]
    if ((gc < 0) | (gc >= nchannels)).any():
        raise ValueError("group_channel values must be in [0, %d)" % nchannels)
    used = np.broadcast_to((np.arange(Gmax)[None, :] < ngroups[:, None])[:, None, :],
                           k_pages.shape)
    _check_refs(k_pages, used, pool.shape[0], dram_pool.shape[0], "k_pages")
    _check_refs(v_pages, used, pool.shape[0], dram_pool.shape[0], "v_pages")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    scale = float(scale)
    if counters is None:
        counters = new_counters(nchannels)
    else:
        if (not isinstance(counters, np.ndarray) or counters.dtype != np.int64
                or counters.shape != (nchannels, C.NCTR)
                or not counters.flags.c_contiguous):
            raise ValueError("counters must be int64 [nchannels, %d]" % C.NCTR)
        counters[...] = 0
    _apply_threads()
    return (code, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
            nchannels, scale, counters, (B, Hq, D, Hkv, T))


def _check_out(out, shape):
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32
            or out.shape != shape or not out.flags.c_contiguous
            or not out.flags.writeable):
        raise ValueError("out must be a writable C-contiguous float32 array %s"
                         % (shape,))


# --- dense ---------------------------------------------------------------------

def dense_partials(q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
                   nchannels, *, kv_dtype, scale=None, counters=None, k_dims_major=False):
    """Stage 1 only: per-channel partials (arguments as :func:`dense_attention`).

    Returns ``(m, l, o, counters)``: ``m, l`` float32 [B, Hq, nchannels] (max
    and sum of exp(score - m); m = -inf, l = 0 where a channel holds no token
    of that sequence), ``o`` float32 [B, Hq, nchannels, D] (unnormalised
    weighted value sums), ``counters`` int64 [nchannels, NCTR].
    """
    (code, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
     nchannels, scale, counters, (B, Hq, D, Hkv, T)) = _common(
        q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
        nchannels, kv_dtype, scale, counters)
    qs = np.ascontiguousarray(q * np.float32(scale), dtype=np.float32)
    m = np.empty((B, Hq, nchannels), np.float32)
    l = np.empty((B, Hq, nchannels), np.float32)
    o = np.empty((B, Hq, nchannels, D), np.float32)
    if B:
        nth = _nthreads()
        if nth <= 1:
            dense_partials_serial(qs, pool, dram_pool, code, k_pages, v_pages,
                                  seq_lens, group_channel, nchannels, m, l, o,
                                  counters, config.PREFETCH, bool(k_dims_major))
        else:
            dense_partials_kernel(qs, pool, dram_pool, code, k_pages, v_pages,
                                  seq_lens, group_channel, nchannels, m, l, o,
                                  counters, nth, config.PREFETCH, bool(k_dims_major))
    return m, l, o, counters


def _merge(m, l, o, out):
    if out.size >= MERGE_PARALLEL_MIN and _nthreads() > 1:
        merge_partials_kernel(m, l, o, out)
    else:
        merge_partials_serial(m, l, o, out)


def merge_partials(m, l, o, out):
    """Stage 2: log-sum-exp merge of per-channel partials into ``out``.

    ``m, l`` float32 [B, Hq, C]; ``o`` float32 [B, Hq, C, D]; ``out``
    float32 [B, Hq, D], written in place and returned.  Heads with no tokens
    on any channel get zeros.
    """
    m = np.ascontiguousarray(m, dtype=np.float32)
    l = np.ascontiguousarray(l, dtype=np.float32)
    o = np.ascontiguousarray(o, dtype=np.float32)
    if m.ndim != 3 or l.shape != m.shape or o.shape[:3] != m.shape or o.ndim != 4:
        raise ValueError("merge_partials: m, l [B,Hq,C] and o [B,Hq,C,D] expected")
    _check_out(out, (m.shape[0], m.shape[1], o.shape[3]))
    _apply_threads()
    _merge(m, l, o, out)
    return out


def dense_attention(q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
                    nchannels, out, *, kv_dtype, scale=None, counters=None,
                    k_dims_major=False):
    """Dense decode attention over paged K/V.

    One (sequence, kv head) unit per thread step, ``out = o / l`` written
    directly; with fewer units than 2 x threads, split per flash channel and
    merged (FlashDecoding).  Counters are per channel either way.

    Parameters
    ----------
    q : float32 [B, Hq, D]
    pool : [P, T, D] uint16 (fp16/bf16 bits) or float32/uint32 -- flash pages
    dram_pool : [Pd, T, D] same dtype, or None -- device-DRAM group buffer
    k_pages, v_pages : int32 or int64 [B, Hkv, Gmax] page references (see module doc)
    seq_lens : int32 [B]
    group_channel : int32 [B, Gmax] channel of token group g of sequence b
    nchannels : int
    out : float32 [B, Hq, D], C-contiguous, written in place
    kv_dtype : 'fp16' | 'bf16' | 'fp32'
    scale : float, default 1/sqrt(D)
    counters : optional int64 [nchannels, NCTR], zeroed then filled
    k_dims_major : K pages in ``pool`` hold their page dims-major (memory
        [D, T]: row d is dim d of the page's T tokens, see
        ``kernels.ir.scores_dims``); ``dram_pool`` pages stay token-major

    Returns ``counters`` (see ``kernels.counters``).
    """
    if isinstance(q, np.ndarray):
        _check_out(out, q.shape)
    (code, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
     nchannels, scale, counters, (B, Hq, D, Hkv, T)) = _common(
        q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
        nchannels, kv_dtype, scale, counters)
    if not B:
        return counters
    qs = np.ascontiguousarray(q * np.float32(scale), dtype=np.float32)
    kdims = bool(k_dims_major)
    nth = _nthreads()
    if nth <= 1:
        dense_attention_serial(qs, pool, dram_pool, code, k_pages, v_pages,
                               seq_lens, group_channel, out, counters,
                               config.PREFETCH, kdims)
    elif B * Hkv >= 2 * nth:
        dense_attention_kernel(qs, pool, dram_pool, code, k_pages, v_pages,
                               seq_lens, group_channel, out, counters, nth,
                               config.PREFETCH, kdims)
    else:
        # too few (sequence, kv head) units to keep every thread busy: split
        # each sequence by channel (FlashDecoding) and merge
        m = np.empty((B, Hq, nchannels), np.float32)
        l = np.empty((B, Hq, nchannels), np.float32)
        o = np.empty((B, Hq, nchannels, D), np.float32)
        dense_partials_kernel(qs, pool, dram_pool, code, k_pages, v_pages,
                              seq_lens, group_channel, nchannels, m, l, o,
                              counters, nth, config.PREFETCH, kdims)
        _merge(m, l, o, out)
    return counters


# --- SparF ---------------------------------------------------------------------

def sparf_attention(q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
                    kd_pool, kd_dram_pool, kd_pages, dim_channel, v_mean,
                    nchannels, out, *, r, k, window, kv_dtype, scale=None,
                    counters=None, alpha_out=None, touched=None):
    """SparF decode attention (InstInfer Algorithm 1, SparQ-style).

    Token-indexed arguments as in :func:`dense_attention`, plus:

    kd_pool : [P2, Dp, Tp] channel-indexed K pages (same dtype as ``pool``);
        page (b, h, db, tb) holds K[tb*Tp:(tb+1)*Tp, db*Dp:(db+1)*Dp]
        transposed: row i = head dim db*Dp+i over Tp consecutive tokens
    kd_dram_pool : [P2d, Dp, Tp] or None -- DRAM buffer for the newest tokens
    kd_pages : [B, Hkv, D // Dp, TBmax] page references, k_pages' dtype
    dim_channel : int32 [B, D // Dp, TBmax] channel of each dim page
    v_mean : float32 [B, Hkv, D] mean of V over all tokens of (b, kv head)
    r : dims kept per kv head (1..D); k : tokens kept by top-k (>= 0);
    window : newest tokens always kept (>= 0)
    alpha_out : optional float32 [B, Hq], receives the approximate mass alpha
    touched : optional (int32 [B, Hkv, Gmax], bool [B, Hkv, D // Dp]): the number
        of selected tokens in each token group (its K and V pages are read iff
        it is > 0, and only those rows cross the flash channel -- a NAND column
        read), and whether a dim block's K-copy pages were read (whole pages)

    ``out = alpha * softmax(q.K[sel]^T * scale) V[sel] + (1 - alpha) * v_mean``
    where sel = the newest ``window`` tokens + the top-``k`` of the others by
    the approximate softmax probability summed over the q heads of the kv
    head (one selection, and one set of r dims by summed |q|, per kv head;
    alpha per q head).  Returns ``counters``.
    """
    (code, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
     nchannels, scale, counters, (B, Hq, D, Hkv, T)) = _common(
        q, pool, dram_pool, k_pages, v_pages, seq_lens, group_channel,
        nchannels, kv_dtype, scale, counters)
    kd_pool, kd_dram_pool = _pools(kd_pool, kd_dram_pool, code, "kd_pool")
    if kd_pool.dtype != pool.dtype:
        raise TypeError("kd_pool dtype %s != pool dtype %s" % (kd_pool.dtype, pool.dtype))
    Dp, Tp = kd_pool.shape[1], kd_pool.shape[2]
    if Dp < 1 or D % Dp:
        raise ValueError("dim page rows Dp=%d must divide D=%d" % (Dp, D))
    NDB = D // Dp
    kd_pages = _refs(kd_pages, (B, Hkv, NDB, None), "kd_pages", like=k_pages.dtype)
    ntb = (seq_lens.astype(np.int64) + Tp - 1) // Tp
    if B and ntb.max() > kd_pages.shape[3]:
        raise ValueError("kd_pages has %d token blocks, seq_lens need %d"
                         % (kd_pages.shape[3], ntb.max()))
    dim_channel = _index(dim_channel, np.int32, (B, NDB, None), "dim_channel")
    if B and dim_channel.shape[2] < ntb.max():
        raise ValueError("dim_channel has too few token blocks")
    tbused = np.arange(dim_channel.shape[2])[None, None, :] < ntb[:, None, None]
    dc = np.broadcast_to(tbused, dim_channel.shape)
    if ((dim_channel[dc] < 0) | (dim_channel[dc] >= nchannels)).any():
        raise ValueError("dim_channel values must be in [0, %d)" % nchannels)
    used = np.broadcast_to(
        (np.arange(kd_pages.shape[3])[None, :] < ntb[:, None])[:, None, None, :],
        kd_pages.shape)
    _check_refs(kd_pages, used, kd_pool.shape[0], kd_dram_pool.shape[0], "kd_pages")
    if (not isinstance(v_mean, np.ndarray) or v_mean.dtype != np.float32
            or v_mean.shape != (B, Hkv, D)):
        raise ValueError("v_mean must be float32 [B, Hkv, D]")
    v_mean = np.ascontiguousarray(v_mean)
    r, k, window = int(r), int(k), int(window)
    if not 1 <= r <= D:
        raise ValueError("r must be in [1, D]")
    if k < 0 or window < 0:
        raise ValueError("k and window must be >= 0")
    _check_out(out, q.shape)
    if alpha_out is None:
        alpha_out = np.empty((B, Hq), np.float32)
    elif (not isinstance(alpha_out, np.ndarray) or alpha_out.dtype != np.float32
          or alpha_out.shape != (B, Hq) or not alpha_out.flags.c_contiguous):
        raise ValueError("alpha_out must be float32 [B, Hq]")
    if touched is None:
        touched = (np.zeros((B, Hkv, k_pages.shape[2]), np.int32),
                   np.zeros((B, Hkv, NDB), np.bool_))
    t_tok, t_db = touched
    if (t_tok.dtype != np.int32 or t_tok.shape != (B, Hkv, k_pages.shape[2])
            or t_db.dtype != np.bool_ or t_db.shape != (B, Hkv, NDB)):
        raise ValueError("touched must be (int32 [B, Hkv, Gmax], bool [B, Hkv, D // Dp])")
    t_tok[...] = 0
    t_db[...] = False
    if B:
        sparf_kernel(q, pool, dram_pool, code, k_pages, v_pages, seq_lens,
                     group_channel, kd_pool, kd_dram_pool, kd_pages, dim_channel,
                     v_mean, nchannels, r, k, window, np.float32(scale), out,
                     alpha_out, counters, _nthreads(), t_tok, t_db)
    return counters
