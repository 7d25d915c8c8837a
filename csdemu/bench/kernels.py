"""Attention-kernel benchmark against this machine's roofline.

``run_kernel_bench()`` measures, in one run:

* ``stream_read_gbps``: a parallel Numba sum over a large float32 array
  backed by transparent huge pages (best of several passes);
* ``page_random_read_gbps``: the same sum over 4 KiB pages visited in random
  order (how page tables over a scattered pool are walked);
* ``peak_fma_gflops``: a Numba kernel with 8 independent FMA chains per
  element, vectorized over an L1-resident array on every thread;
* for each decode shape, the dense kernel's effective bandwidth (K+V page
  bytes read / time), the roofline ``min(stream, peak / (FLOP per byte))`` and
  both ratios; and SparF 1/8 (r = D/8, k + window = S/8) time vs dense.

Imported by the lead's ``csdemu bench attention``; ``csdemu/bench/kernels_cli.py
--json`` prints the dict.  Nothing here imports csdemu.
"""

import math
import time

import numpy as np
import numba
from numba import njit, prange

from kernels import config
from kernels import counters as C
from kernels.attention import dense_attention, sparf_attention
from csdemu.bench.hugepages import hugepage_empty
from csdemu.bench.paged_kv import random_paged_kv
from csdemu.bench.overlap import ACC_LEN, CHAINS, SUM_AT, W as _W, line_sum_fma
from kernels.ir.prefetch import prefetch_page

#: Flags of the peak-FMA probe: contraction only (with ``reassoc`` LLVM
#: folds its FMA chains away).
FASTMATH_PEAK = {"contract"}


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _sum_f32(a):
    s = np.float32(0.0)
    for i in range(a.shape[0]):   # from 0: no wraparound check, vectorizes
        s += a[i]
    return s


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def _stream_sum(a, nchunks):
    n = a.shape[0]
    part = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        part[c] = _sum_f32(a[c * n // nchunks:(c + 1) * n // nchunks])
    return part.sum()


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def _pages_sum(pages, order, nchunks, prefetch):
    """Sum of 4 KiB pages visited in ``order``: the access pattern of page
    tables over a pool the FTL scattered.  With ``prefetch`` each page is
    software-prefetched one page ahead, as the kernels do (no-op when
    ``config.PREFETCH`` is 0)."""
    n = order.shape[0]
    part = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        s = 0.0
        hi = (c + 1) * n // nchunks
        for i in range(c * n // nchunks, hi):
            if prefetch and i + 1 < hi:
                prefetch_page(pages[order[i + 1]])
            s += _sum_f32(pages[order[i]])
        part[c] = s
    return part.sum()


@njit(fastmath=config.FASTMATH, cache=config.CACHE, parallel=config.PARALLEL)
def _overlap_sum(pages, order, nchunks, groups):
    """:func:`_pages_sum`'s walk (page ``i + 1`` prefetched line by line as
    page ``i`` is read) with ``groups`` x 8 independent FMAs per line
    (csdemu/bench/overlap.py); returns the pages' sum."""
    n = order.shape[0]
    acc = np.zeros((nchunks, ACC_LEN), np.float32)
    for c in prange(nchunks):
        hi = (c + 1) * n // nchunks
        for i in range(c * n // nchunks, hi):
            nx = order[i + 1] if i + 1 < hi else order[i]
            line_sum_fma(pages[order[i]], pages[nx], groups, acc[c])
    s = 0.0
    for c in range(nchunks):
        for k in range(SUM_AT, SUM_AT + _W):
            s += acc[c, k]
    return s


@njit(fastmath=FASTMATH_PEAK, cache=config.CACHE)
def _fma_chains(x, out, reps, a, c):
    """16 FMAs in each of 8 independent chains per element, ``reps`` times.
    Compiled with contraction only: under ``reassoc`` LLVM folds the chain
    ``y*a + c`` into a single FMA and the "peak" is fiction."""
    n = x.shape[0]
    for _ in range(reps):
        for i in range(n):
            v = x[i]
            y0 = v
            y1 = v + np.float32(1.0)
            y2 = v + np.float32(2.0)
            y3 = v + np.float32(3.0)
            y4 = v + np.float32(4.0)
            y5 = v + np.float32(5.0)
            y6 = v + np.float32(6.0)
            y7 = v + np.float32(7.0)
            for _k in range(16):
                y0 = y0 * a + c
                y1 = y1 * a + c
                y2 = y2 * a + c
                y3 = y3 * a + c
                y4 = y4 * a + c
                y5 = y5 * a + c
                y6 = y6 * a + c
                y7 = y7 * a + c
            out[i] = ((y0 + y1) + (y2 + y3)) + ((y4 + y5) + (y6 + y7))
        x, out = out, x


@njit(fastmath=FASTMATH_PEAK, cache=config.CACHE, parallel=config.PARALLEL)
def _fma_peak(xs, outs, reps, a, c):
    for t in prange(xs.shape[0]):
        _fma_chains(xs[t], outs[t], reps, a, c)


FMA_PER_ELEM = 8 * 16


def _best(fn, repeat, min_time=0.0):
    best = math.inf
    t_end = time.perf_counter() + min_time
    i = 0
    while i < repeat or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        i += 1
    return best


def stream_reader(nbytes=512 << 20):
    """-> (read, nbytes): ``read()`` is one parallel sum over a buffer of
    ``nbytes`` (warmed up once here), for timing next to other work."""
    a = hugepage_empty(nbytes // 4, np.float32)
    a[:] = 1
    nth = numba.get_num_threads()
    _stream_sum(a, 8 * nth)
    return (lambda: _stream_sum(a, 8 * nth)), a.nbytes


def _walk_reader(walk, pages, order, *args):
    """-> (read, nbytes): ``read()`` is one ``walk(pages, order, nchunks,
    *args)`` over the pages ``order`` names (warmed up once here)."""
    order = np.ascontiguousarray(order, np.int64)
    nchunks = 8 * numba.get_num_threads()
    walk(pages, order, nchunks, *args)
    return ((lambda: walk(pages, order, nchunks, *args)),
            order.shape[0] * pages.shape[1] * pages.itemsize)


def pages_reader(pages, order, prefetch):
    """`_pages_sum` over the pages ``order`` names, as :func:`_walk_reader`."""
    return _walk_reader(_pages_sum, pages, order, prefetch)


def _f32_pages(pool):
    """A pool of any dtype (4-byte multiple pages) as float32 rows, one per page."""
    return pool.reshape(pool.shape[0], -1).view(np.float32)


def page_order_reader(pool, order):
    """:func:`pages_reader` over the pages ``order`` names in ``pool`` (any
    dtype, 4-byte multiple rows), one page ahead prefetched: what reading
    exactly the pages a kernel reads, in its order, costs on this machine
    before any attention arithmetic."""
    return pages_reader(_f32_pages(pool), order, True)


def overlap_reader(pool, order, fma_per_byte):
    """:func:`page_order_reader` plus ``fma_per_byte`` scalar FMAs per byte
    read (rounded up to groups of 8 16-lane FMAs per 64-byte line) that no
    load feeds: how fast the kernel's pages go by with its arithmetic when
    reads and arithmetic overlap as well as this machine lets them."""
    groups = max(1, math.ceil(fma_per_byte * 64 / (_W * CHAINS)))
    return _walk_reader(_overlap_sum, _f32_pages(pool), order, groups)


def _gbps(reader, repeat):
    read, nbytes = reader
    return nbytes / _best(read, repeat) / 1e9


def measure_stream_gbps(nbytes=512 << 20, repeat=5):
    return _gbps(stream_reader(nbytes), repeat)


def measure_page_stream_gbps(nbytes=512 << 20, page_bytes=4096, repeat=5):
    """Like :func:`measure_stream_gbps` but over 4 KiB pages in random order."""
    pages = hugepage_empty((nbytes // page_bytes, page_bytes // 4), np.float32)
    pages[:] = 1
    order = np.random.default_rng(0).permutation(pages.shape[0])
    return _gbps(pages_reader(pages, order, False), repeat)


def measure_page_order_gbps(pool, order, repeat=5):
    """Bytes/s of :func:`page_order_reader` (best of ``repeat``)."""
    return _gbps(page_order_reader(pool, order), repeat)


def measure_peak_gflops(n=1024, reps=2000, repeat=5):
    nth = numba.get_num_threads()
    xs = np.random.default_rng(0).random((nth, n)).astype(np.float32)
    outs = np.empty_like(xs)
    _fma_peak(xs, outs, 1, np.float32(0.999), np.float32(0.001))
    t = _best(lambda: _fma_peak(xs, outs, reps, np.float32(0.999),
                                        np.float32(0.001)), repeat)
    return 2.0 * FMA_PER_ELEM * n * reps * nth / t / 1e9


SHAPES = (
    # name, B, S, Hq, Hkv, D, T (tokens per 4 KiB fp16 page)
    ("smollm2-135m", 8, 2048, 9, 3, 64, 32),
    ("opt-13b", 8, 2048, 40, 40, 128, 16),
    ("gqa-g4", 8, 2048, 32, 8, 128, 16),
)


def bench_shape(name, B, S, Hq, Hkv, D, T, *, nchannels=8, kv_dtype="fp16",
                stream_gbps, peak_gflops, page_stream_gbps=None, repeat=5,
                sparf=(8, 1), window=32):
    """Dense, then SparF 1/8 once per dim-page height in ``sparf`` (Dp: head
    dims per channel-indexed page; the first one is reported as "sparf")."""
    Dp = sparf[0] if sparf else 8
    Tp = 4096 // (2 * Dp) if kv_dtype != "fp32" else 4096 // (4 * Dp)
    lay = random_paged_kv(B, Hkv, D, np.full(B, S, np.int32), T, nchannels,
                          kv_dtype, Dp=Dp, Tp=Tp)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    out = np.empty_like(q)
    args = lay.dense_args()
    ctr = dense_attention(q, out=out, **args)
    t_dense = _best(lambda: dense_attention(q, out=out, **args), repeat)
    nbytes = int(ctr[:, C.FLASH_BYTES].sum() + ctr[:, C.DRAM_BYTES].sum())
    flops = 2.0 * float(ctr[:, C.MACS].sum())
    fpb = flops / nbytes
    roof = min(stream_gbps, peak_gflops / fpb)
    eff = nbytes / t_dense / 1e9
    res = {
        "name": name, "batch": B, "context": S, "q_heads": Hq, "kv_heads": Hkv,
        "head_dim": D, "tokens_per_page": T, "kv_dtype": kv_dtype,
        "g": Hq // Hkv, "nchannels": nchannels,
        "dense_ms": round(t_dense * 1e3, 3),
        "kv_bytes": nbytes, "flop": flops, "flop_per_byte": round(fpb, 3),
        "effective_gbps": round(eff, 2),
        "roofline_gbps": round(roof, 2),
        "frac_of_roofline": round(eff / roof, 3),
        "frac_of_stream": round(eff / stream_gbps, 3),
        "frac_of_page_stream": (round(eff / page_stream_gbps, 3)
                                if page_stream_gbps else None),
        "gflops": round(flops / t_dense / 1e9, 2),
    }
    for dp in (sparf or ()):
        if dp != Dp:
            del lay
            Tp = 4096 // (2 * dp) if kv_dtype != "fp32" else 4096 // (4 * dp)
            lay = random_paged_kv(B, Hkv, D, np.full(B, S, np.int32), T, nchannels,
                                  kv_dtype, Dp=dp, Tp=Tp)
            Dp = dp
        r = max(1, D // 8)
        k = max(0, S // 8 - window)
        vm = np.zeros((B, Hkv, D), np.float32)
        sargs = lay.sparf_args()
        sctr = sparf_attention(q, v_mean=vm, out=out, r=r, k=k, window=window, **sargs)
        t_sp = _best(lambda: sparf_attention(q, v_mean=vm, out=out, r=r, k=k,
                                             window=window, **sargs), repeat)
        sbytes = int(sctr[:, C.FLASH_BYTES].sum() + sctr[:, C.DRAM_BYTES].sum())
        res["sparf" if dp == sparf[0] else "sparf_dp%d" % dp] = {
            "r": r, "k": k, "window": window, "Dp": Dp, "Tp": Tp,
            "ms": round(t_sp * 1e3, 3),
            "speedup_vs_dense": round(t_dense / t_sp, 2),
            "bytes_read": sbytes,
            "bytes_vs_dense": round(sbytes / nbytes, 3),
            "kd_pages_read": int(sctr[:, C.KD_READ].sum() + sctr[:, C.KD_DRAM].sum()),
            "kd_pages_skipped": int(sctr[:, C.KD_SKIP].sum()),
            "token_pages_read": int(sctr[:, C.K_READ].sum() + sctr[:, C.K_DRAM].sum()
                                    + sctr[:, C.V_READ].sum() + sctr[:, C.V_DRAM].sum()),
            "token_pages_skipped": int(sctr[:, C.K_SKIP].sum() + sctr[:, C.V_SKIP].sum()),
        }
    return res


def run_kernel_bench(shapes=SHAPES, repeat=5, sparf=(8, 1)):
    """Measure the machine and the kernels; returns a JSON-able dict."""
    t0 = time.perf_counter()
    stream = measure_stream_gbps()
    page_stream = measure_page_stream_gbps()
    peak = measure_peak_gflops()
    res = {
        "machine": {
            "threads": numba.get_num_threads(),
            "threading_layer": _threading_layer(),
            "stream_read_gbps": round(stream, 2),
            "page_random_read_gbps": round(page_stream, 2),
            "peak_fma_gflops": round(peak, 2),
        },
        "config": {"fastmath": sorted(config.FASTMATH) if config.FASTMATH else False,
                   "parallel": config.PARALLEL},
        "timing": "best of %d calls after a warm-up call" % repeat,
        "shapes": [bench_shape(*s, stream_gbps=stream, peak_gflops=peak,
                               page_stream_gbps=page_stream, repeat=repeat,
                               sparf=sparf) for s in shapes],
    }
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:
        return None
