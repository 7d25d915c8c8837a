"""Tests for the dense kernels: split-K attention, merge, page placement,
the thread paths and the plain-loop fallbacks (SparF's fallback shapes too).

Everything is compared against tests/naive.py (float64 numpy) on the values
actually stored in the pages (``PagedKV.K`` / ``.V``), with the tolerances in
kernels/config.py.  First run compiles the kernels (~1 min); later runs load
them from Numba's cache.
"""

import math

import numpy as np
import numpy.testing as npt
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st

from kernels import config
from kernels import counters as C
from kernels.attention import (dense_attention, dense_partials, merge_partials,
                               sparf_attention, new_counters)
from csdemu.bench.paged_kv import build_paged_kv, v_mean_of

from tests import naive
from tests.kernel_cases import _data
from tests.tolerances import ATOL, RTOL, SPARF_ATOL, SPARF_RTOL


# --- helpers -----------------------------------------------------------------

def _expected_dense_counters(lay, G, D):
    T = lay.pool.shape[1]
    ctr = np.zeros((lay.nchannels, C.NCTR), np.int64)
    item = lay.pool.itemsize
    for b, S in enumerate(lay.seq_lens):
        for g in range(-(-int(S) // T)):
            ch = lay.group_channel[b, g]
            valid = min(T, int(S) - g * T)
            for h in range(lay.k_pages.shape[1]):
                for col_f, col_d, refs in ((C.K_READ, C.K_DRAM, lay.k_pages),
                                           (C.V_READ, C.V_DRAM, lay.v_pages)):
                    if refs[b, h, g] >= 0:
                        ctr[ch, col_f] += 1
                        ctr[ch, C.FLASH_BYTES] += T * D * item
                    else:
                        ctr[ch, col_d] += 1
                        ctr[ch, C.DRAM_BYTES] += T * D * item
                ctr[ch, C.MACS] += 2 * valid * D * G
                ctr[ch, C.EXPS] += valid * G
    return ctr


# --- dense -------------------------------------------------------------------

LENS = [1, 15, 16, 32, 37, 53]          # T = 16: < T, == T, multiples, ragged


@pytest.mark.parametrize("kv_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (6, 2), (4, 1)])   # MHA, GQA, MQA
@pytest.mark.parametrize("nchannels", [1, 3, 8])
@pytest.mark.parametrize("k_dims_major", [False, True])
def test_dense_matches_naive(kv_dtype, Hq, Hkv, nchannels, k_dims_major):
    rng = np.random.default_rng(hash((kv_dtype, Hq, nchannels)) % 2 ** 32)
    D, T = 32, 16
    q, K, V = _data(rng, len(LENS), Hq, Hkv, D, max(LENS))
    lay = build_paged_kv(K, V, LENS, T, nchannels, kv_dtype, seed=nchannels,
                         k_dims_major=k_dims_major)
    out = np.full_like(q, np.nan)
    ctr = dense_attention(q, out=out, **lay.dense_args())
    ref = naive.dense(q, lay.K, lay.V, LENS)
    npt.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(ctr, _expected_dense_counters(lay, Hq // Hkv, D))


@pytest.mark.parametrize("placement", ["flash", "dram_tail", "all_dram"])
@pytest.mark.parametrize("D,T", [(64, 32), (128, 16)])
@pytest.mark.parametrize("k_dims_major", [False, True])
def test_dense_page_placement(placement, D, T, k_dims_major):
    rng = np.random.default_rng(7)
    lens = [1, T - 1, T, 2 * T, 3 * T + 5]
    q, K, V = _data(rng, len(lens), 8, 2, D, max(lens))
    lay = build_paged_kv(K, V, lens, T, 3, "fp16", dram_tail=placement != "flash",
                         all_dram=placement == "all_dram", k_dims_major=k_dims_major)
    out = np.empty_like(q)
    ctr = dense_attention(q, out=out, **lay.dense_args())
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(ctr, _expected_dense_counters(lay, 4, D))
    if placement == "flash":
        assert ctr[:, C.K_DRAM].sum() == 0
    if placement == "all_dram":
        assert ctr[:, C.K_READ].sum() == 0 and ctr[:, C.FLASH_BYTES].sum() == 0


def test_dense_scale_and_empty_sequence():
    rng = np.random.default_rng(3)
    lens = [0, 5, 40]
    q, K, V = _data(rng, 3, 4, 2, 32, 40)
    lay = build_paged_kv(K, V, lens, 16, 3, "bf16")
    out = np.empty_like(q)
    dense_attention(q, out=out, scale=0.3, **lay.dense_args())
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens, scale=0.3), atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(out[0], 0.0)


def test_dense_large_scores_stable():
    """Scores ~ +-1e3: exp would overflow without the max subtraction."""
    rng = np.random.default_rng(4)
    lens = [70, 33]
    q, K, V = _data(rng, 2, 2, 1, 32, 70)
    q *= 300
    lay = build_paged_kv(K, V, lens, 16, 3, "fp32")
    out = np.empty_like(q)
    dense_attention(q, out=out, **lay.dense_args())
    assert np.isfinite(out).all()
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)


def test_dense_uint32_pool_is_fp32():
    rng = np.random.default_rng(5)
    q, K, V = _data(rng, 2, 2, 2, 32, 20)
    lay = build_paged_kv(K, V, [20, 3], 16, 2, "fp32")
    args = lay.dense_args()
    args["pool"] = args["pool"].view(np.uint32)
    args["dram_pool"] = args["dram_pool"].view(np.uint32)
    out = np.empty_like(q)
    dense_attention(q, out=out, **args)
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, [20, 3]), atol=ATOL, rtol=RTOL)


def test_partials_per_channel_and_merge():
    rng = np.random.default_rng(6)
    lens = [50, 9]
    D, T, NC = 32, 16, 3
    q, K, V = _data(rng, 2, 4, 2, D, 50)
    lay = build_paged_kv(K, V, lens, T, NC, "fp16")
    m, l, o, _ = dense_partials(q, **lay.dense_args())
    scale = 1 / math.sqrt(D)
    for b, S in enumerate(lens):
        for h in range(4):
            for c in range(NC):
                toks = [t for t in range(S) if lay.group_channel[b, t // T] == c]
                rm, rl, ro = naive.partial(q[b, h], lay.K[b, h // 2, toks],
                                           lay.V[b, h // 2, toks], scale)
                if not toks:
                    assert m[b, h, c] == -np.inf and l[b, h, c] == 0
                    continue
                npt.assert_allclose(m[b, h, c], rm, atol=ATOL, rtol=RTOL)
                npt.assert_allclose(l[b, h, c], rl, atol=ATOL, rtol=RTOL)
                npt.assert_allclose(o[b, h, c], ro, atol=ATOL * 10, rtol=RTOL)
    out = np.empty_like(q)
    merge_partials(m, l, o, out)
    npt.assert_allclose(out, naive.merge(m, l, o), atol=ATOL, rtol=RTOL)
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)


def test_merge_edge_cases():
    rng = np.random.default_rng(8)
    m = rng.standard_normal((2, 3, 4)).astype(np.float32) * 20
    l = rng.random((2, 3, 4)).astype(np.float32) + 0.5
    o = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    m[0, 0, :3] = -np.inf               # only channel 3 has tokens
    l[0, 0, :3] = 0
    o[0, 0, :3] = 0
    m[1, 2, :] = -np.inf                # no tokens at all -> zeros
    l[1, 2, :] = 0
    o[1, 2, :] = 0
    out = np.full((2, 3, 8), np.nan, np.float32)
    merge_partials(m, l, o, out)
    npt.assert_allclose(out, naive.merge(m, l, o), atol=ATOL, rtol=RTOL)
    npt.assert_allclose(out[0, 0], o[0, 0, 3] / l[0, 0, 3], atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(out[1, 2], 0)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 31), B=st.integers(1, 4), Hkv=st.integers(1, 3),
       G=st.integers(1, 4), nch=st.integers(1, 9), T=st.sampled_from([4, 16]),
       kv_dtype=st.sampled_from(["fp16", "bf16"]), dram=st.booleans(),
       kdims=st.booleans())
def test_dense_property(seed, B, Hkv, G, nch, T, kv_dtype, dram, kdims):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 50, B)
    D = 16
    q, K, V = _data(rng, B, Hkv * G, Hkv, D, max(int(lens.max()), 1))
    lay = build_paged_kv(K, V, lens, T, nch, kv_dtype, dram_tail=dram, seed=seed,
                         k_dims_major=kdims)
    out = np.empty_like(q)
    ctr = dense_attention(q, out=out, **lay.dense_args())
    npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(ctr, _expected_dense_counters(lay, G, D))


# --- validation ----------------------------------------------------------------

def test_dense_validation_errors():
    rng = np.random.default_rng(9)
    q, K, V = _data(rng, 2, 4, 2, 16, 20)
    lay = build_paged_kv(K, V, [20, 4], 8, 2, "fp16")
    out = np.empty_like(q)
    args = lay.dense_args()
    with pytest.raises(TypeError):
        dense_attention(q.astype(np.float64), out=out, **args)
    with pytest.raises(TypeError):
        dense_attention(q, out=out, **dict(args, kv_dtype="fp32"))
    with pytest.raises(ValueError):
        dense_attention(q, out=out, **dict(args, kv_dtype="fp8"))
    with pytest.raises(ValueError):
        dense_attention(q, out=np.empty((2, 4, 8), np.float32), **args)
    with pytest.raises(ValueError):
        dense_attention(q[:, :3].copy(), out=out[:, :3].copy(), **args)   # 3 % 2
    bad = lay.k_pages.copy()
    bad[0, 0, 0] = lay.pool.shape[0]
    with pytest.raises(ValueError, match="out of range"):
        dense_attention(q, out=out, **dict(args, k_pages=bad))
    bad = lay.k_pages.copy()
    bad[1, 1, 0] = -lay.dram_pool.shape[0] - 1
    with pytest.raises(ValueError, match="out of range"):
        dense_attention(q, out=out, **dict(args, k_pages=bad))
    gc = lay.group_channel.copy()
    gc[0, 0] = 2
    with pytest.raises(ValueError, match="group_channel"):
        dense_attention(q, out=out, **dict(args, group_channel=gc))
    with pytest.raises(ValueError):
        dense_attention(q, out=out, **dict(args, seq_lens=np.array([40, 4])))
    with pytest.raises(ValueError):
        dense_attention(q, out=out, counters=np.zeros((3, C.NCTR), np.int64), **args)
    ctr = new_counters(2)
    ctr += 5
    assert dense_attention(q, out=out, counters=ctr, **args) is ctr
    assert ctr[:, C.K_SKIP].sum() == 0          # zeroed, then filled


@pytest.mark.parametrize("D,T", [(24, 8), (40, 5), (64, 8)])
def test_dense_and_sparf_fallback_shapes(D, T):
    """head_dim not a multiple of 16 (plain loops) and pages whose token
    count is not a multiple of 16 (widened scratch): same results."""
    rng = np.random.default_rng(D + T)
    lens = [1, T, 3 * T + 1, 50]
    q, K, V = _data(rng, len(lens), 6, 2, D, max(lens))
    for kv_dtype in ("fp16", "bf16"):
        lay = build_paged_kv(K, V, lens, T, 3, kv_dtype, Dp=8, Tp=16)
        out = np.empty_like(q)
        ctr = dense_attention(q, out=out, **lay.dense_args())
        npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)
        npt.assert_array_equal(ctr, _expected_dense_counters(lay, 3, D))
        vm = v_mean_of(lay)
        sout = np.empty_like(q)
        sparf_attention(q, v_mean=vm, out=sout, r=D // 4, k=7, window=3, **lay.sparf_args())
        ref, _, _, _ = naive.sparf(q, lay.K, lay.V, lens, vm, D // 4, 7, 3)
        npt.assert_allclose(sout, ref, atol=SPARF_ATOL, rtol=SPARF_RTOL)
        # the same shapes with dims-major K pages (widened and transposed)
        lay = build_paged_kv(K, V, lens, T, 3, kv_dtype, k_dims_major=True)
        out = np.empty_like(q)
        dense_attention(q, out=out, **lay.dense_args())
        npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)
        with pytest.raises(ValueError, match="token-major"):
            lay.sparf_args()


@pytest.mark.parametrize("nthreads", [1, 2])
def test_dense_thread_paths(nthreads):
    """Serial driver, whole-sequence units over threads, and the per-channel
    split + merge used when there are fewer units than 2 x threads: all
    equal the reference, with identical counters."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < nthreads:
        pytest.skip("needs %d threads" % nthreads)
    old = numba.get_num_threads()
    numba.set_num_threads(nthreads)
    try:
        rng = np.random.default_rng(18)
        for lens, Hq, Hkv in (([70, 33, 5, 0], 6, 2), ([90], 4, 1)):
            q, K, V = _data(rng, len(lens), Hq, Hkv, 64, max(lens))
            for kdims in (False, True):
                lay = build_paged_kv(K, V, lens, 32, 3, "fp16", k_dims_major=kdims)
                out = np.full_like(q, np.nan)
                ctr = dense_attention(q, out=out, **lay.dense_args())
                npt.assert_allclose(out, naive.dense(q, lay.K, lay.V, lens), atol=ATOL, rtol=RTOL)
                npt.assert_array_equal(ctr, _expected_dense_counters(lay, Hq // Hkv, 64))
            m, l, o, c2 = dense_partials(q, **lay.dense_args())
            npt.assert_array_equal(c2, ctr)
            out2 = np.empty_like(q)
            merge_partials(m, l, o, out2)
            npt.assert_allclose(out2, out, atol=ATOL, rtol=RTOL)
    finally:
        numba.set_num_threads(old)
