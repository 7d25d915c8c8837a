"""Tests for the kernels' building blocks: configuration discipline, fp16 /
bf16 widening (exhaustive), the hand-written vector loops of kernels/ir/simd.py
and the radix top-k, each against numpy."""

import math
import pathlib
import re

import numpy as np
import numpy.testing as npt
import pytest
from numba import njit

from kernels import config
from kernels.ir import simd
from kernels.topk import kth_largest, topk_ascending
from kernels.widen import to_bf16_bits, widen_bf16, widen_f16_1d_bits, widen_fp16

from tests.tolerances import ATOL, RTOL


# --- configuration discipline (STUMPY's check_fastmath) ---------------------

def test_no_hardcoded_numba_flags():
    src_dir = pathlib.Path(__file__).resolve().parents[2] / "kernels"
    bad = []
    for path in src_dir.rglob("*.py"):
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


# --- vector building blocks (kernels/ir/simd.py) and the fallbacks ---------------




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
    from csdemu.bench.paged_kv import quantize, dequantize
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


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _jit_qk_dims(K, code, valid, Q, qrow, G, S, srow, col):
    simd.qk_dims(K, K, code, valid, Q, qrow, G, S, srow, col)


@pytest.mark.parametrize("kv_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("D,T", [(128, 16), (64, 32), (7, 16), (16, 48)])
def test_simd_qk_dims(kv_dtype, D, T):
    """Scores from a dims-major page (memory [D, T], shaped [T, D]): all
    head-group sizes up to 9, ragged token counts, an odd head dim (the
    split accumulators' last row); only the target rows and up to 15 spare
    columns are written."""
    rng = np.random.default_rng(D * T)
    code = {"fp16": config.DTYPE_F16, "bf16": config.DTYPE_BF16, "fp32": config.DTYPE_F32}[kv_dtype]
    Kd, Kdw = _stored(rng, (D, T), kv_dtype)              # row d = dim d of every token
    page = np.ascontiguousarray(Kd).reshape(T, D)
    Q = rng.standard_normal((10, D)).astype(np.float32)
    for G in range(1, 10):
        for valid in sorted({1, 5, 16, 17, T}):
            if valid > T:
                continue
            S = np.full((12, T + 40), 7.0, np.float32)
            _jit_qk_dims(page, code, valid, Q, 1, G, S, 2, 7)
            ref = Q[1:1 + G].astype(np.float64) @ Kdw[:, :valid].astype(np.float64)
            npt.assert_allclose(S[2:2 + G, 7:7 + valid], ref, atol=ATOL * 10, rtol=RTOL)
            assert (S[:2] == 7).all() and (S[2 + G:] == 7).all()
            assert (S[:, :7] == 7).all() and (S[:, 7 + valid + 15:] == 7).all()


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
