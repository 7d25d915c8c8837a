"""Tests for kernels/: widening, dense split-K attention, merge, SparF.

Everything is compared against tests/naive.py (float64 numpy) on the values
actually stored in the pages (``PagedKV.K`` / ``.V``), with the tolerances in
kernels/config.py.  First run compiles the kernels (~1 min); later runs load
them from Numba's cache.
"""

import math
import pathlib
import re

import numpy as np
import numpy.testing as npt
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st

from kernels import config
from kernels import counters as C
from kernels.attention import (dense_attention, dense_partials, merge_partials,
                               sparf_attention, new_counters)
from kernels.layout_testing import build_paged_kv, v_mean_of
from kernels.widen import widen_fp16, widen_bf16, to_bf16_bits

from tests import naive

ATOL, RTOL = config.ATOL, config.RTOL
PAGE_COLS = [C.K_READ, C.V_READ, C.KD_READ, C.K_SKIP, C.V_SKIP, C.KD_SKIP,
             C.K_DRAM, C.V_DRAM, C.KD_DRAM]
BYTE_COLS = [C.FLASH_BYTES, C.DRAM_BYTES]


# --- configuration discipline (STUMPY's check_fastmath) ---------------------

def test_no_hardcoded_numba_flags():
    src_dir = pathlib.Path(__file__).resolve().parents[1] / "kernels"
    bad = []
    for path in src_dir.glob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"@njit\(", line) and (
                    re.search(r"fastmath\s*=\s*(True|False|\{)", line)
                    or re.search(r"cache\s*=\s*(True|False)", line)
                    or re.search(r"parallel\s*=\s*(True|False)", line)):
                bad.append("%s:%d" % (path.name, i))
            if re.search(r"@njit\s*$", line) or re.search(r"@njit\(\)", line):
                bad.append("%s:%d (bare @njit)" % (path.name, i))
    assert not bad, "flags must come from kernels/config.py: %s" % bad


# --- widening ----------------------------------------------------------------

def test_widen_fp16_exhaustive():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = widen_fp16(bits).view(np.uint32)
    ref = bits.view(np.float16).astype(np.float32).view(np.uint32)
    isnan = np.isnan(bits.view(np.float16))
    assert isnan.sum() == 2046
    npt.assert_array_equal(got[~isnan], ref[~isnan])   # incl. subnormals, inf, -0
    # NaNs: NaN, same sign, same payload (the quiet bit may differ if numpy
    # ever converts in hardware, which quiets signalling NaNs)
    assert np.isnan(got[isnan].view(np.float32)).all()
    quiet = np.uint32(1 << 22)
    npt.assert_array_equal(got[isnan] | quiet, ref[isnan] | quiet)


def test_widen_fp16_specials():
    cases = {0x0000: 0.0, 0x8000: -0.0, 0x0001: 2.0 ** -24, 0x03FF: 1023 * 2.0 ** -24,
             0x0400: 2.0 ** -14, 0x3C00: 1.0, 0x7BFF: 65504.0, 0xFBFF: -65504.0,
             0x7C00: math.inf, 0xFC00: -math.inf}
    got = widen_fp16(np.array(list(cases), np.uint16))
    for g, (h, want) in zip(got, cases.items()):
        assert g == want and math.copysign(1, g) == math.copysign(1, want), hex(h)
    assert np.signbit(widen_fp16(np.array([0x8000], np.uint16)))[0]
    assert np.isnan(widen_fp16(np.array([0x7E00, 0xFE01, 0x7C01], np.uint16))).all()


def test_widen_bf16_exhaustive():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = widen_bf16(bits).view(np.uint32)
    npt.assert_array_equal(got, bits.astype(np.uint32) << 16)


def test_bf16_rounding_helper():
    x = np.array([1.0, -2.5, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -9, 3.0e38], np.float32)
    back = widen_bf16(to_bf16_bits(x))
    npt.assert_array_equal(back[:3], [1.0, -2.5, 1.0])        # tie -> even
    assert back[3] == np.float32(1.0 + 2 ** -7)
    assert np.isfinite(back[4])


def test_widen_shapes_and_types():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4) + 0x3C00
    npt.assert_array_equal(widen_fp16(a), a.view(np.float16).astype(np.float32))
    assert widen_fp16(a).shape == (3, 4)
    with pytest.raises(TypeError):
        widen_fp16(np.zeros(3, np.float32))


# --- helpers -----------------------------------------------------------------

def _data(rng, B, Hq, Hkv, D, Smax):
    K = rng.standard_normal((B, Hkv, Smax, D)).astype(np.float32)
    V = rng.standard_normal((B, Hkv, Smax, D)).astype(np.float32)
    q = rng.standard_normal((B, Hq, D)).astype(np.float32)
    return q, K, V


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
def test_dense_matches_naive(kv_dtype, Hq, Hkv, nchannels):
    rng = np.random.default_rng(hash((kv_dtype, Hq, nchannels)) % 2 ** 32)
    D, T = 32, 16
    q, K, V = _data(rng, len(LENS), Hq, Hkv, D, max(LENS))
    lay = build_paged_kv(K, V, LENS, T, nchannels, kv_dtype, seed=nchannels)
    out = np.full_like(q, np.nan)
    ctr = dense_attention(q, out=out, **lay.dense_args())
    ref = naive.dense(q, lay.K, lay.V, LENS)
    npt.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(ctr, _expected_dense_counters(lay, Hq // Hkv, D))


@pytest.mark.parametrize("placement", ["flash", "dram_tail", "all_dram"])
@pytest.mark.parametrize("D,T", [(64, 32), (128, 16)])
def test_dense_page_placement(placement, D, T):
    rng = np.random.default_rng(7)
    lens = [1, T - 1, T, 2 * T, 3 * T + 5]
    q, K, V = _data(rng, len(lens), 8, 2, D, max(lens))
    lay = build_paged_kv(K, V, lens, T, 3, "fp16", dram_tail=placement != "flash",
                         all_dram=placement == "all_dram")
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
       kv_dtype=st.sampled_from(["fp16", "bf16"]), dram=st.booleans())
def test_dense_property(seed, B, Hkv, G, nch, T, kv_dtype, dram):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 50, B)
    D = 16
    q, K, V = _data(rng, B, Hkv * G, Hkv, D, max(int(lens.max()), 1))
    lay = build_paged_kv(K, V, lens, T, nch, kv_dtype, dram_tail=dram, seed=seed)
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


# --- SparF -------------------------------------------------------------------

def _sparf_setup(rng, lens, Hq, Hkv, D, T, Dp, Tp, nch, kv_dtype="fp16", **kw):
    q, K, V = _data(rng, len(lens), Hq, Hkv, D, max(max(lens), 1))
    lay = build_paged_kv(K, V, lens, T, nch, kv_dtype, Dp=Dp, Tp=Tp, **kw)
    return q, lay, v_mean_of(lay)


@pytest.mark.parametrize("kv_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (6, 2), (4, 1)])
def test_sparf_full_selection_equals_dense(kv_dtype, Hq, Hkv):
    rng = np.random.default_rng(10)
    lens = [1, 16, 37, 64]
    D = 32
    q, lay, vm = _sparf_setup(rng, lens, Hq, Hkv, D, 16, 8, 32, 3, kv_dtype)
    dense = np.empty_like(q)
    dense_attention(q, out=dense, **lay.dense_args())
    for r, k, window in [(D, 64, 0), (D, 0, 64), (4, 64, 0), (D, 10, 60)]:
        out = np.full_like(q, np.nan)
        alpha = np.empty(q.shape[:2], np.float32)
        ctr = sparf_attention(q, v_mean=vm, out=out, r=r, k=k, window=window,
                              alpha_out=alpha, **lay.sparf_args())
        npt.assert_array_equal(alpha, 1.0)
        npt.assert_allclose(out, dense, atol=ATOL, rtol=RTOL)
        assert ctr[:, C.K_SKIP].sum() == 0 and ctr[:, C.V_SKIP].sum() == 0


@pytest.mark.parametrize("kv_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("r,k,window", [(4, 8, 4), (8, 3, 0), (1, 0, 5), (16, 20, 8)])
def test_sparf_matches_naive(kv_dtype, Hq, Hkv, r, k, window):
    rng = np.random.default_rng(hash((kv_dtype, Hq, r, k)) % 2 ** 32)
    lens = [1, 9, 16, 40, 77]
    D, T, Dp, Tp, nch = 32, 8, 4, 16, 3
    q, lay, vm = _sparf_setup(rng, lens, Hq, Hkv, D, T, Dp, Tp, nch, kv_dtype)
    out = np.empty_like(q)
    alpha = np.empty(q.shape[:2], np.float32)
    touched = (np.full(lay.k_pages.shape, -1, np.int32),
               np.zeros((len(lens), Hkv, D // Dp), np.bool_))
    ctr = sparf_attention(q, v_mean=vm, out=out, r=r, k=k, window=window,
                          alpha_out=alpha, touched=touched, **lay.sparf_args())
    ref, ref_alpha, dims, sels = naive.sparf(q, lay.K, lay.V, lens, vm, r, k, window)
    npt.assert_allclose(alpha, ref_alpha, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)
    npt.assert_allclose(out, ref, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)
    exp = naive.sparf_counters(lay, dims, sels, Hq // Hkv, T, Dp, Tp, nch)
    npt.assert_array_equal(ctr[:, PAGE_COLS], exp[:, PAGE_COLS])
    npt.assert_array_equal(ctr[:, BYTE_COLS], exp[:, BYTE_COLS])
    # touched: selected tokens per token group (one selection per kv head),
    # and the dim blocks of its r dims
    want_tok = np.zeros(lay.k_pages.shape, np.int32)
    want_db = np.zeros((len(lens), Hkv, D // Dp), np.bool_)
    for b, S in enumerate(lens):
        for kv in range(Hkv if S else 0):
            h = kv * (Hq // Hkv)
            assert len(sels[b, h]) == min(S, k + window)
            np.add.at(want_tok[b, kv], sels[b, h] // T, 1)
            want_db[b, kv, np.asarray(dims[b, h]) // Dp] = True
    npt.assert_array_equal(touched[0], want_tok)
    npt.assert_array_equal(touched[1], want_db)
    # every page that exists is read (flash or DRAM) or skipped
    tok = sum(-(-n // T) for n in lens) * Hkv
    dimp = sum(-(-n // Tp) for n in lens) * Hkv * (D // Dp)
    assert ctr[:, [C.K_READ, C.K_DRAM, C.K_SKIP]].sum() == tok
    assert ctr[:, [C.V_READ, C.V_DRAM, C.V_SKIP]].sum() == tok
    assert ctr[:, [C.KD_READ, C.KD_DRAM, C.KD_SKIP]].sum() == dimp


@pytest.mark.parametrize("placement", ["flash", "dram_tail", "all_dram"])
def test_sparf_page_placement(placement):
    rng = np.random.default_rng(11)
    lens = [5, 64, 100]
    D, T, Dp, Tp = 64, 16, 8, 32
    q, lay, vm = _sparf_setup(rng, lens, 6, 3, D, T, Dp, Tp, 4, "bf16",
                              dram_tail=placement != "flash",
                              all_dram=placement == "all_dram")
    out = np.empty_like(q)
    ctr = sparf_attention(q, v_mean=vm, out=out, r=8, k=12, window=6, **lay.sparf_args())
    ref, _, dims, sels = naive.sparf(q, lay.K, lay.V, lens, vm, 8, 12, 6)
    npt.assert_allclose(out, ref, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)
    exp = naive.sparf_counters(lay, dims, sels, 2, T, Dp, Tp, 4)
    npt.assert_array_equal(ctr[:, PAGE_COLS], exp[:, PAGE_COLS])
    npt.assert_array_equal(ctr[:, BYTE_COLS], exp[:, BYTE_COLS])
    if placement == "all_dram":
        assert ctr[:, C.FLASH_BYTES].sum() == 0


def test_sparf_hand_built_page_skips():
    """1 sequence, 1 head, D=16 in 4 dim blocks (Dp=4), 16 tokens in 4 token
    pages (T=4) and 2 dim-page token blocks (Tp=8), 2 channels.

    q is big on dims 0 and 1 only -> r=2 keeps dim block 0: 2 dim pages read
    (one per token block), 6 skipped.  K[:, :2] is zero except tokens 1 and 2
    -> top-k=2 picks tokens 1, 2 (page 0); window=1 adds token 15 (page 3):
    token pages 0 and 3 read, 1 and 2 skipped.
    """
    D, T, Dp, Tp, S = 16, 4, 4, 8, 16
    rng = np.random.default_rng(12)
    K = rng.standard_normal((1, 1, S, D)).astype(np.float32)
    K[0, 0, :, :2] = 0.0
    K[0, 0, 1, :2] = 1.0
    K[0, 0, 2, :2] = 0.5
    V = rng.standard_normal((1, 1, S, D)).astype(np.float32)
    q = np.full((1, 1, D), 0.01, np.float32)
    q[0, 0, :2] = [10.0, 9.0]
    gc = np.array([[0, 1, 0, 1]], np.int32)
    lay = build_paged_kv(K, V, [S], T, 2, "fp32", Dp=Dp, Tp=Tp, group_channel=gc,
                         dram_tail=False)
    # dim_channel[0, db, tb] = (db + tb) % 2
    vm = v_mean_of(lay)
    out = np.empty_like(q)
    ctr = sparf_attention(q, v_mean=vm, out=out, r=2, k=2, window=1, **lay.sparf_args())
    want = np.zeros((2, C.NCTR), np.int64)
    want[0, C.KD_READ] = 1          # (db0, tb0)
    want[1, C.KD_READ] = 1          # (db0, tb1)
    want[0, C.KD_SKIP] = 3          # (db1,tb1) (db2,tb0) (db3,tb1)
    want[1, C.KD_SKIP] = 3          # (db1,tb0) (db2,tb1) (db3,tb0)
    want[0, C.K_READ] = want[0, C.V_READ] = 1      # page 0 on ch 0
    want[1, C.K_READ] = want[1, C.V_READ] = 1      # page 3 on ch 1
    want[0, C.K_SKIP] = want[0, C.V_SKIP] = 1      # page 2 on ch 0
    want[1, C.K_SKIP] = want[1, C.V_SKIP] = 1      # page 1 on ch 1
    npt.assert_array_equal(ctr[:, PAGE_COLS], want[:, PAGE_COLS])
    # K-copy pages move whole; of a token page only its selected rows cross
    # the channel (column read): tokens 1, 2, 15, in K and in V
    assert ctr[:, C.FLASH_BYTES].sum() == 2 * Dp * Tp * 4 + 2 * 3 * D * 4
    ref, alpha, dims, sels = naive.sparf(q, lay.K, lay.V, [S], vm, 2, 2, 1)
    assert list(dims[0, 0]) == [0, 1] and list(sels[0, 0]) == [1, 2, 15]
    npt.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)


def test_sparf_gqa_union_counts_once():
    """Two q heads of one kv head selecting the same pages: read once."""
    rng = np.random.default_rng(13)
    lens = [64]
    q, lay, vm = _sparf_setup(rng, lens, 2, 1, 32, 8, 4, 16, 2, "fp16")
    q[0, 1] = q[0, 0]                # identical heads -> identical selections
    out = np.empty_like(q)
    ctr2 = sparf_attention(q, v_mean=vm, out=out, r=4, k=3, window=2, **lay.sparf_args())
    ctr1 = sparf_attention(q[:, :1].copy(), v_mean=vm, out=out[:, :1].copy(), r=4, k=3,
                           window=2, **dict(lay.sparf_args()))  # MQA with 1 head
    npt.assert_array_equal(ctr2[:, PAGE_COLS], ctr1[:, PAGE_COLS])
    assert ctr2[:, C.K_SKIP].sum() > 0


def test_sparf_gqa_shares_one_selection():
    """Four different q heads per kv head: one set of r dims and one set of
    k + window tokens per kv head, so the K copy reads r dim rows (Dp = 1)
    and the exact pass moves k + window rows of K and of V -- the same as one
    head would; alpha stays per q head."""
    rng = np.random.default_rng(16)
    lens = [100, 37]
    Hq, Hkv, D, T, Dp, Tp, nch = 8, 2, 32, 8, 1, 16, 3
    r, k, window = 4, 10, 5
    q, lay, vm = _sparf_setup(rng, lens, Hq, Hkv, D, T, Dp, Tp, nch, "fp16")
    out = np.empty_like(q)
    alpha = np.empty(q.shape[:2], np.float32)
    touched = (np.zeros(lay.k_pages.shape, np.int32), np.zeros((2, Hkv, D), np.bool_))
    ctr = sparf_attention(q, v_mean=vm, out=out, r=r, k=k, window=window, alpha_out=alpha,
                          touched=touched, **lay.sparf_args())
    ntb = sum(-(-S // Tp) for S in lens)
    assert ctr[:, [C.KD_READ, C.KD_DRAM]].sum() == Hkv * r * ntb
    npt.assert_array_equal(touched[1].sum(axis=2), r)
    npt.assert_array_equal(touched[0].sum(axis=2),
                           np.repeat(np.minimum(lens, k + window)[:, None], Hkv, axis=1))
    moved = touched[0].sum() * 2 * D * lay.pool.itemsize
    assert ctr[:, C.FLASH_BYTES].sum() + ctr[:, C.DRAM_BYTES].sum() == \
        moved + Hkv * r * ntb * Tp * lay.pool.itemsize
    assert len(np.unique(alpha[0])) > 1          # alpha is per q head
    ref, ref_alpha, _, _ = naive.sparf(q, lay.K, lay.V, lens, vm, r, k, window)
    npt.assert_allclose(alpha, ref_alpha, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)
    npt.assert_allclose(out, ref, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)


def test_sparf_edge_cases():
    rng = np.random.default_rng(14)
    lens = [0, 3, 20]
    q, lay, vm = _sparf_setup(rng, lens, 2, 1, 16, 4, 4, 8, 2, "fp16")
    out = np.full_like(q, np.nan)
    alpha = np.empty(q.shape[:2], np.float32)
    # k = window = 0: nothing selected -> out = v_mean, alpha = 0
    sparf_attention(q, v_mean=vm, out=out, r=4, k=0, window=0, alpha_out=alpha,
                    **lay.sparf_args())
    npt.assert_array_equal(out[0], 0)                          # empty sequence
    npt.assert_allclose(out[1:], np.broadcast_to(vm[1:, :1], out[1:].shape), atol=ATOL)
    npt.assert_array_equal(alpha[1:], 0)
    # q = 0: uniform approximate scores, ratio treated as 1, still finite
    q0 = np.zeros_like(q)
    sparf_attention(q0, v_mean=vm, out=out, r=4, k=2, window=1, **lay.sparf_args())
    ref, _, _, _ = naive.sparf(q0, lay.K, lay.V, lens, vm, 4, 2, 1)
    npt.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)


def test_sparf_validation_errors():
    rng = np.random.default_rng(15)
    q, lay, vm = _sparf_setup(rng, [20], 2, 1, 16, 4, 4, 8, 2, "fp16")
    out = np.empty_like(q)
    args = lay.sparf_args()
    for bad in (dict(r=0, k=1, window=0), dict(r=17, k=1, window=0),
                dict(r=2, k=-1, window=0)):
        with pytest.raises(ValueError):
            sparf_attention(q, v_mean=vm, out=out, **bad, **args)
    with pytest.raises(ValueError):
        sparf_attention(q, v_mean=vm[:, :, :8].copy(), out=out, r=2, k=1, window=0, **args)
    with pytest.raises(TypeError):
        sparf_attention(q, v_mean=vm, out=out, r=2, k=1, window=0,
                        **dict(args, kd_pool=args["kd_pool"].astype(np.float32)))


# --- vector building blocks (kernels/simd.py) and the fallbacks ---------------

from numba import njit                                           # noqa: E402

from kernels import simd                                         # noqa: E402
from kernels.topk import kth_largest, topk_ascending             # noqa: E402
from kernels.widen import widen_f16_1d_bits                      # noqa: E402


def test_widen_fp16_bit_path_exhaustive():
    """The integer-only path (used without F16C) stays bit-exact."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(1 << 16, np.float32)
    widen_f16_1d_bits(bits, got)
    ref = bits.view(np.float16).astype(np.float32).view(np.uint32)
    isnan = np.isnan(bits.view(np.float16))
    npt.assert_array_equal(got.view(np.uint32)[~isnan], ref[~isnan])
    quiet = np.uint32(1 << 22)
    npt.assert_array_equal(got.view(np.uint32)[isnan] | quiet, ref[isnan] | quiet)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_qk(K, code, valid, Q, qrow, G, S, srow, col):
    simd.qk_heads(K, K, code, valid, Q, qrow, G, S, srow, col)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_pv(V, code, n, P, prow, G, pcol, O, orow):
    simd.pv_heads(V, V, code, n, P, prow, G, pcol, O, orow)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_pv_rows(V, code, idx, i0, t0, n, P, j, O, orow):
    simd.pv_rows(V, code, idx, i0, t0, n, P, j, O, orow)


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_exp(x, y):
    for i in range(x.shape[0]):
        y[i] = simd.exp_nonpos(x[i])


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_row_max(s, n):
    return simd.row_max(s, n)


def _stored(rng, shape, kv_dtype):
    from kernels.layout_testing import quantize, dequantize
    s = quantize(rng.standard_normal(shape).astype(np.float32), kv_dtype)
    return s, dequantize(s, kv_dtype)


@pytest.mark.parametrize("kv_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("D", [16, 48, 64, 80, 128])
def test_simd_qk_pv_heads(kv_dtype, D):
    """All head-group sizes (1-4 and their combinations up to 9), ragged
    token counts, head dims that leave a partial register block of o (48,
    80); nothing outside the target rows/columns is touched (except the
    documented up to 15 spare score columns)."""
    rng = np.random.default_rng(D)
    code = {"fp16": config.DTYPE_F16, "bf16": config.DTYPE_BF16, "fp32": config.DTYPE_F32}[kv_dtype]
    K, Kw = _stored(rng, (48, D), kv_dtype)
    Q = rng.standard_normal((10, D)).astype(np.float32)
    for G in range(1, 10):
        for valid in (1, 5, 16, 17, 32):
            S = np.full((12, 80), 7.0, np.float32)
            _jit_qk(K, code, valid, Q, 1, G, S, 2, 7)
            ref = Q[1:1 + G].astype(np.float64) @ Kw[:valid].astype(np.float64).T
            npt.assert_allclose(S[2:2 + G, 7:7 + valid], ref, atol=ATOL * 10, rtol=RTOL)
            assert (S[:2] == 7).all() and (S[2 + G:] == 7).all()
            assert (S[:, :7] == 7).all() and (S[:, 7 + valid + 15:] == 7).all()
            P = rng.random((12, 60)).astype(np.float32)
            O = rng.standard_normal((12, D)).astype(np.float32)
            O0 = O.copy()
            _jit_pv(K, code, valid, P, 2, G, 9, O, 3)
            ref = O0[3:3 + G] + P[2:2 + G, 9:9 + valid].astype(np.float64) @ Kw[:valid]
            npt.assert_allclose(O[3:3 + G], ref, atol=ATOL * 10, rtol=RTOL)
            npt.assert_array_equal(O[:3], O0[:3])
            npt.assert_array_equal(O[3 + G:], O0[3 + G:])
    # selected rows of a page (SparF's value stage)
    idx = np.array([[0, 0, 0, 0, 0], [100, 103, 104, 110, 131]], np.int64)
    P = rng.random((2, 5)).astype(np.float32)
    for i0, n in ((0, 5), (1, 3), (4, 1), (2, 0)):
        O = rng.standard_normal((3, D)).astype(np.float32)
        O0 = O.copy()
        _jit_pv_rows(K, code, idx, i0, 100, n, P, 1, O, 2)
        rows = idx[1, i0:i0 + n] - 100
        npt.assert_allclose(O[2], O0[2] + P[1, i0:i0 + n].astype(np.float64) @ Kw[rows],
                            atol=ATOL * 10, rtol=RTOL)
        npt.assert_array_equal(O[:2], O0[:2])


def test_simd_exp_and_max():
    x = np.concatenate([-np.logspace(-8, np.log10(86.9), 100000), [0.0, -0.0, -1e-30]])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    _jit_exp(x, y)
    ref = np.exp(x.astype(np.float64))
    npt.assert_allclose(y, ref, rtol=1e-6, atol=0)
    sp = np.array([-np.inf, -200.0, -88.0, np.nan], np.float32)
    ys = np.empty_like(sp)
    _jit_exp(sp, ys)
    assert ys[0] == 0 and ys[1] == 0 and 0 <= ys[2] < 1e-37 and np.isnan(ys[3])
    rng = np.random.default_rng(16)
    s = rng.standard_normal(100).astype(np.float32)
    for n in (1, 5, 15, 16, 17, 33, 100):
        assert _jit_row_max(s, n) == s[:n].max()
    s[40] = 1e30
    assert _jit_row_max(s, 100) == np.float32(1e30)


def test_topk_radix_select():
    """Top-k by radix selection = a stable sort on -vals (ties to the lower
    index), including duplicates, signed zeros and huge exponent ranges."""
    rng = np.random.default_rng(17)
    hist = np.empty(2048, np.int64)
    for trial in range(400):
        n = int(rng.integers(1, 300))
        kind = trial % 4
        if kind == 0:
            v = rng.standard_normal(n).astype(np.float32)
        elif kind == 1:
            v = rng.integers(-3, 4, n).astype(np.float32)
        elif kind == 2:
            v = (rng.integers(0, 2, n) * 2 - 1).astype(np.float32) * 0.0
        else:
            v = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
        k = int(rng.integers(0, n + 2))
        out = np.empty(n, np.int64)
        c = topk_ascending(v, n, k, out)
        assert c == min(k, n)
        npt.assert_array_equal(out[:c], np.sort(np.argsort(-v, kind="stable")[:k]))
        if 1 <= k <= n:
            assert kth_largest(v, n, k, hist, np.empty(n, np.uint32)) == np.sort(v)[n - k]


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
        npt.assert_allclose(sout, ref, atol=config.SPARF_ATOL, rtol=config.SPARF_RTOL)


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
            lay = build_paged_kv(K, V, lens, 32, 3, "fp16")
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
