"""Tests for the SparF kernel (kernels/sparf.py): against tests/naive.py's
plain implementation of the same algorithm, against dense when it selects
everything, and its page and byte counters."""

import numpy as np
import numpy.testing as npt
import pytest

from kernels import counters as C
from kernels.attention import dense_attention, sparf_attention
from csdemu.bench.paged_kv import build_paged_kv, v_mean_of

from tests import naive
from tests.kernel_cases import BYTE_COLS, PAGE_COLS, _data
from tests.tolerances import ATOL, RTOL, SPARF_ATOL, SPARF_RTOL


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
    npt.assert_allclose(alpha, ref_alpha, atol=SPARF_ATOL, rtol=SPARF_RTOL)
    npt.assert_allclose(out, ref, atol=SPARF_ATOL, rtol=SPARF_RTOL)
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
    npt.assert_allclose(out, ref, atol=SPARF_ATOL, rtol=SPARF_RTOL)
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
    npt.assert_allclose(alpha, ref_alpha, atol=SPARF_ATOL, rtol=SPARF_RTOL)
    npt.assert_allclose(out, ref, atol=SPARF_ATOL, rtol=SPARF_RTOL)


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


@pytest.mark.parametrize("k_dims_major", [False, True])
def test_int32_page_references_read_what_int64_ones_do(k_dims_major):
    """The daemon keeps its page tables int32 (csdemu/drive/kv/layout.py REF):
    dense and SparF read the same pages (equal counters, equal selection) and
    give the int64 outputs to fp32 rounding. Not to the bit: each reference
    dtype is its own compiled specialization, and fastmath lets LLVM order a
    sum differently in each (a fresh clone's SparF differed by 3e-8 in 18 of
    640 outputs)."""
    rng = np.random.default_rng(31)
    lens = [1, 9, 16, 40, 77]
    D, T, Dp, Tp, nch = 32, 8, 4, 16, 3
    q, lay, vm = _sparf_setup(rng, lens, 4, 2, D, T, Dp, Tp, nch, "fp16",
                              k_dims_major=k_dims_major)
    narrow = dict(k_pages=lay.k_pages.astype(np.int32), v_pages=lay.v_pages.astype(np.int32))
    want, got = np.empty_like(q), np.empty_like(q)
    wc = dense_attention(q, out=want, **lay.dense_args())
    gc = dense_attention(q, out=got, **{**lay.dense_args(), **narrow})
    npt.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
    npt.assert_array_equal(gc, wc)
    if k_dims_major:
        return
    kd = np.where(lay.kd_pages < np.iinfo(np.int32).min, -1, lay.kd_pages).astype(np.int32)
    runs = []
    for refs in ({}, {**narrow, "kd_pages": kd}):
        out = np.empty_like(q)
        touched = (np.empty(lay.k_pages.shape, np.int32), np.empty((len(lens), 2, D // Dp), bool))
        ctr = sparf_attention(q, v_mean=vm, out=out, r=8, k=6, window=4, touched=touched,
                              **{**lay.sparf_args(), **refs})
        runs.append((out, ctr, touched))
    (want, wc, wt), (got, gc, gt) = runs
    npt.assert_allclose(got, want, atol=SPARF_ATOL, rtol=SPARF_RTOL)
    npt.assert_array_equal(gc, wc)
    npt.assert_array_equal(gt[0], wt[0])
    npt.assert_array_equal(gt[1], wt[1])
