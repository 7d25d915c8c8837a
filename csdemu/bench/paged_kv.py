"""Build paged layouts from plain dense K/V arrays (for tests and benchmarks).

This is *not* the device's allocator (that lives in csdemu/); it lays pages
out the way the engine expects so tests can go dense K/V -> pages -> kernel
and compare against ``tests/naive.py``.  Page ids are shuffled inside the
pools so indexing mistakes show up.

Token-indexed layout (one page = T consecutive tokens of one (seq, kv head),
K and V separately)::

    k_pages[b, h, g] -> page [T, D] = K[b, h, g*T:(g+1)*T, :]  (tail zero-padded)
    group_channel[b, g] = (g + b) % nchannels   (striped along tokens)

Channel-indexed K (SparF)::

    kd_pages[b, h, db, tb] -> page [Dp, Tp] = K[b, h, tb*Tp:(tb+1)*Tp, db*Dp:(db+1)*Dp].T
    dim_channel[b, db, tb] = (db + tb + b) % nchannels

Pages of a partially filled tail group (and tail token block) go to the DRAM
pools when ``dram_tail`` is set; ``all_dram`` puts every page there.
"""

from dataclasses import dataclass

import numpy as np

from csdemu.bench.hugepages import hugepage_copy
from kernels.widen import to_bf16_bits, widen_bf16, widen_fp16


def quantize(x, kv_dtype):
    """float32 array -> storage array (uint16 bits for fp16/bf16, float32)."""
    x = np.asarray(x, np.float32)
    if kv_dtype == "fp16":
        return x.astype(np.float16).view(np.uint16)
    if kv_dtype == "bf16":
        return to_bf16_bits(x)
    if kv_dtype == "fp32":
        return x.copy()
    raise ValueError(kv_dtype)


def dequantize(s, kv_dtype):
    """Storage array -> float32 (the exact values the kernels see)."""
    if kv_dtype == "fp16":
        return widen_fp16(s)
    if kv_dtype == "bf16":
        return widen_bf16(s)
    return np.asarray(s, np.float32).copy()


@dataclass
class PagedKV:
    pool: np.ndarray
    dram_pool: np.ndarray
    k_pages: np.ndarray
    v_pages: np.ndarray
    group_channel: np.ndarray
    seq_lens: np.ndarray
    nchannels: int
    kv_dtype: str
    K: np.ndarray          # widened stored K, float32 [B, Hkv, Smax, D]
    V: np.ndarray          # widened stored V
    kd_pool: np.ndarray = None
    kd_dram_pool: np.ndarray = None
    kd_pages: np.ndarray = None
    dim_channel: np.ndarray = None
    k_dims_major: bool = False   # flash K pages hold memory [D, T]

    def _token_args(self):
        return dict(pool=self.pool, dram_pool=self.dram_pool, k_pages=self.k_pages,
                    v_pages=self.v_pages, seq_lens=self.seq_lens,
                    group_channel=self.group_channel, nchannels=self.nchannels,
                    kv_dtype=self.kv_dtype)

    def dense_args(self):
        return dict(self._token_args(), k_dims_major=self.k_dims_major)

    def sparf_args(self):
        if self.k_dims_major:
            raise ValueError("SparF reads token-major K pages")
        d = self._token_args()
        d.update(kd_pool=self.kd_pool, kd_dram_pool=self.kd_dram_pool,
                 kd_pages=self.kd_pages, dim_channel=self.dim_channel)
        return d


class _Alloc:
    """Hands out shuffled page ids in a flash pool and a DRAM pool."""

    def __init__(self, shape, dtype, nflash, ndram, rng):
        self.pool = np.zeros((nflash,) + shape, dtype)
        self.dram = np.zeros((ndram,) + shape, dtype)
        self.free_f = list(rng.permutation(nflash)) if nflash else []
        self.free_d = list(rng.permutation(ndram)) if ndram else []

    def put(self, page, in_dram):
        if in_dram:
            i = int(self.free_d.pop())
            self.dram[i] = page
            return -i - 1
        i = int(self.free_f.pop())
        self.pool[i] = page
        return i


def build_paged_kv(K, V, seq_lens, T, nchannels, kv_dtype="fp16", *, Dp=None,
                   Tp=None, dram_tail=True, all_dram=False, seed=0,
                   group_channel=None, k_dims_major=False):
    """Lay dense ``K, V`` float32 [B, Hkv, Smax, D] out as paged pools.

    Returns a :class:`PagedKV`; ``K``/``V`` in it are the stored values
    widened back to float32 (what a reference must use).  With ``Dp``/``Tp``
    also builds the channel-indexed K copy for SparF.  With ``k_dims_major``
    the flash K pages hold their page dims-major (memory [D, T]), as a
    namespace without the SparF layout stores them; DRAM pages stay
    token-major.
    """
    rng = np.random.default_rng(seed)
    K = np.asarray(K, np.float32)
    V = np.asarray(V, np.float32)
    B, Hkv, Smax, D = K.shape
    seq_lens = np.asarray(seq_lens, np.int32)
    ng = (seq_lens.astype(np.int64) + T - 1) // T
    Gmax = max(int(ng.max()) if B else 0, 1)
    Ks = quantize(K, kv_dtype)
    Vs = quantize(V, kv_dtype)
    sdt = Ks.dtype

    def in_dram(b, start, size):
        return all_dram or (dram_tail and start + size > seq_lens[b])

    n_d = sum(1 for b in range(B) for g in range(ng[b]) if in_dram(b, g * T, T))
    n_f = int(ng.sum()) - n_d
    al = _Alloc((T, D), sdt, 2 * Hkv * n_f, 2 * Hkv * n_d, rng)
    k_pages = np.full((B, Hkv, Gmax), -(1 << 40), np.int64)   # junk if read
    v_pages = k_pages.copy()
    if group_channel is None:
        group_channel = np.full((B, Gmax), -1, np.int32)
        for b in range(B):
            for g in range(ng[b]):
                group_channel[b, g] = (g + b) % nchannels
    for b in range(B):
        for h in range(Hkv):
            for g in range(ng[b]):
                lo, hi = g * T, min((g + 1) * T, int(seq_lens[b]))
                dr = in_dram(b, lo, T)
                for arr, pages in ((Ks, k_pages), (Vs, v_pages)):
                    page = np.zeros((T, D), sdt)
                    page[:hi - lo] = arr[b, h, lo:hi]
                    if k_dims_major and pages is k_pages and not dr:
                        page = np.ascontiguousarray(page.T).reshape(T, D)
                    pages[b, h, g] = al.put(page, dr)
    mask = np.arange(Smax)[None, None, :, None] < seq_lens[:, None, None, None]
    lay = PagedKV(al.pool, al.dram, k_pages, v_pages, group_channel, seq_lens,
                  nchannels, kv_dtype,
                  np.where(mask, dequantize(Ks, kv_dtype), 0).astype(np.float32),
                  np.where(mask, dequantize(Vs, kv_dtype), 0).astype(np.float32),
                  k_dims_major=k_dims_major)
    if Dp is not None:
        assert D % Dp == 0
        NDB = D // Dp
        ntb = (seq_lens.astype(np.int64) + Tp - 1) // Tp
        TBmax = max(int(ntb.max()) if B else 0, 1)
        n_d = sum(1 for b in range(B) for tb in range(ntb[b]) if in_dram(b, tb * Tp, Tp))
        n_f = int(ntb.sum()) - n_d
        al2 = _Alloc((Dp, Tp), sdt, Hkv * NDB * n_f, Hkv * NDB * n_d, rng)
        kd_pages = np.full((B, Hkv, NDB, TBmax), -(1 << 40), np.int64)
        dim_channel = np.full((B, NDB, TBmax), -1, np.int32)
        for b in range(B):
            for tb in range(ntb[b]):
                lo, hi = tb * Tp, min((tb + 1) * Tp, int(seq_lens[b]))
                dr = in_dram(b, lo, Tp)
                for db in range(NDB):
                    dim_channel[b, db, tb] = (db + tb + b) % nchannels
                    for h in range(Hkv):
                        page = np.zeros((Dp, Tp), sdt)
                        page[:, :hi - lo] = Ks[b, h, lo:hi, db * Dp:(db + 1) * Dp].T
                        kd_pages[b, h, db, tb] = al2.put(page, dr)
        lay.kd_pool, lay.kd_dram_pool = al2.pool, al2.dram
        lay.kd_pages, lay.dim_channel = kd_pages, dim_channel
    return lay


def v_mean_of(lay):
    """float32 [B, Hkv, D]: mean of the stored V over each sequence's tokens."""
    B = lay.V.shape[0]
    out = np.zeros((B,) + (lay.V.shape[1], lay.V.shape[3]), np.float32)
    for b in range(B):
        S = int(lay.seq_lens[b])
        if S:
            out[b] = lay.V[b, :, :S].astype(np.float64).mean(axis=1)
    return out


def _random_storage(shape, kv_dtype, rng):
    """Random finite values of magnitude ~[1/4, 4) with random sign, drawn
    directly as storage bits (no float32 temporary of the whole pool)."""
    n = int(np.prod(shape))
    if kv_dtype == "fp32":
        return rng.standard_normal(n, dtype=np.float32).reshape(shape)
    sign = rng.integers(0, 2, n, dtype=np.uint16) << 15
    if kv_dtype == "fp16":
        exp = rng.integers(13, 17, n, dtype=np.uint16) << 10
        man = rng.integers(0, 1 << 10, n, dtype=np.uint16)
    else:
        exp = rng.integers(125, 129, n, dtype=np.uint16) << 7
        man = rng.integers(0, 1 << 7, n, dtype=np.uint16)
    return (sign | exp | man).reshape(shape)


def random_paged_kv(B, Hkv, D, seq_lens, T, nchannels, kv_dtype="fp16", *,
                    Dp=None, Tp=None, dram_tail=True, seed=0, shuffle=True,
                    hugepages=False, k_dims_major=False):
    """Like :func:`build_paged_kv` but with random page contents generated in
    place (no dense K/V, no widened copies: ``K``/``V`` are None) -- for
    benchmarks with realistic sizes.  Token pages sit in a shuffled flash
    pool; the tail group of each sequence (if partial) in the DRAM pool.
    Random contents are the same read token- or dims-major.  ``hugepages``:
    the flash pool asks for transparent huge pages (see csdemu.bench.hugepages)."""
    rng = np.random.default_rng(seed)
    seq_lens = np.asarray(seq_lens, np.int32)
    ng = (seq_lens.astype(np.int64) + T - 1) // T
    Gmax = max(int(ng.max()), 1)
    tail = (seq_lens % T != 0) & dram_tail
    n_d = int(tail.sum()) * Hkv * 2
    n_f = int(ng.sum()) * Hkv * 2 - n_d
    pool = _random_storage((n_f, T, D), kv_dtype, rng)
    if hugepages:
        pool = hugepage_copy(pool)
    dram = _random_storage((n_d, T, D), kv_dtype, rng)
    fids = rng.permutation(n_f) if shuffle else np.arange(n_f)
    k_pages = np.zeros((B, Hkv, Gmax), np.int64)
    v_pages = np.zeros((B, Hkv, Gmax), np.int64)
    group_channel = np.zeros((B, Gmax), np.int32)
    fi = di = 0
    for b in range(B):
        group_channel[b, :ng[b]] = (np.arange(ng[b]) + b) % nchannels
        nfull = ng[b] - (1 if tail[b] else 0)
        for pages in (k_pages, v_pages):
            pages[b, :, :nfull] = fids[fi:fi + Hkv * nfull].reshape(Hkv, nfull)
            fi += Hkv * nfull
            if tail[b]:
                pages[b, :, nfull] = -1 - np.arange(di, di + Hkv)
                di += Hkv
    lay = PagedKV(pool, dram, k_pages, v_pages, group_channel, seq_lens,
                  nchannels, kv_dtype, None, None, k_dims_major=k_dims_major)
    if Dp is not None:
        NDB = D // Dp
        ntb = (seq_lens.astype(np.int64) + Tp - 1) // Tp
        TBmax = max(int(ntb.max()), 1)
        ttail = (seq_lens % Tp != 0) & dram_tail
        n_d = int(ttail.sum()) * Hkv * NDB
        n_f = int(ntb.sum()) * Hkv * NDB - n_d
        kd_pool = _random_storage((n_f, Dp, Tp), kv_dtype, rng)
        kd_dram = _random_storage((n_d, Dp, Tp), kv_dtype, rng)
        fids = rng.permutation(n_f)
        kd_pages = np.zeros((B, Hkv, NDB, TBmax), np.int64)
        dim_channel = np.zeros((B, NDB, TBmax), np.int32)
        fi = di = 0
        for b in range(B):
            dim_channel[b, :, :ntb[b]] = (np.arange(NDB)[:, None]
                                          + np.arange(ntb[b])[None, :] + b) % nchannels
            nfull = ntb[b] - (1 if ttail[b] else 0)
            kd_pages[b, :, :, :nfull] = fids[fi:fi + Hkv * NDB * nfull].reshape(Hkv, NDB, nfull)
            fi += Hkv * NDB * nfull
            if ttail[b]:
                kd_pages[b, :, :, nfull] = (-1 - np.arange(di, di + Hkv * NDB)).reshape(Hkv, NDB)
                di += Hkv * NDB
        lay.kd_pool, lay.kd_dram_pool = kd_pool, kd_dram
        lay.kd_pages, lay.dim_channel = kd_pages, dim_channel
    return lay
