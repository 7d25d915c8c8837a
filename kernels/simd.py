"""Hand-vectorized inner loops (LLVM vector IR through Numba intrinsics).

LLVM's loop vectorizer does well on the value sums but not on the score dot
products: with the inner loop over ``head_dim`` every (token, head) ends in a
horizontal reduction of a vector register, which costs more than the 4-8
multiply-adds of a 64- or 128-dim dot product.  These intrinsics write the
two loops of decode attention directly as 16-lane vector IR:

* :func:`qk16` -- scores of 16 consecutive tokens for one q head.  The 16
  per-token accumulators (each a vector of 16 partial sums over ``head_dim``)
  are reduced together by a transpose-and-add butterfly (8 + 4 + 2 + 1 vector
  adds, 30 two-source shuffles), so a horizontal reduction costs about two
  instructions per token instead of eight.
* :func:`pv_accum` -- ``o += sum_t p[t] * V[t, :]`` for one q head, four
  accumulators per 16 dims so the FMA latency chain is hidden.

Both read a page either as float32 (an already widened scratch page, or an
fp32 pool) or straight from a ``uint16`` page: fp16 through ``fpext half``
(one ``vcvtph2ps`` per 16 elements with F16C, see ``config.F16C``) or bf16
through a 16-bit shift.  ``head_dim`` must be a multiple of 16 (callers fall
back to plain loops otherwise).  16-lane vectors are legal on AVX-512 and
split in two by LLVM on AVX2.

Also here: :func:`exp_nonpos`, a vectorizable float32 ``exp`` for the
softmax (``x <= 0``), and :func:`row_max`, a 16-lane max.  Numba's
``np.exp`` on float32 is a scalar libm call (~5 ns; no SVML here), which was
a quarter of the dense kernel's time.

Every function has a plain-Python body used under ``NUMBA_DISABLE_JIT``.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from . import config

W = 16                      #: lanes per vector (floats)

_f32 = ir.FloatType()
_i16 = ir.IntType(16)
_i32 = ir.IntType(32)
_vf = ir.VectorType(_f32, W)
_vh = ir.VectorType(ir.HalfType(), W)
_vi16 = ir.VectorType(_i16, W)
_vi32 = ir.VectorType(_i32, W)


# --- IR helpers ------------------------------------------------------------------

def _fmuladd(builder, a, b, c):
    fnty = ir.FunctionType(_vf, [_vf, _vf, _vf])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v16f32")
    return builder.call(fn, [a, b, c])


def _load_vec(builder, base, idx, kind):
    """16 consecutive elements at ``base[idx]`` widened to <16 x float>."""
    ptr = builder.gep(base, [idx])
    if kind == "f32":
        return builder.load(builder.bitcast(ptr, _vf.as_pointer()), align=4)
    raw = builder.load(builder.bitcast(ptr, _vi16.as_pointer()), align=2)
    if kind == "f16":
        return builder.fpext(builder.bitcast(raw, _vh), _vf)
    # bf16: the top half of a float32
    wide = builder.shl(builder.zext(raw, _vi32), ir.Constant(_vi32, [16] * W))
    return builder.bitcast(wide, _vf)


def _splat(builder, x):
    v = builder.insert_element(ir.Constant(_vf, ir.Undefined), x, _i32(0))
    return builder.shuffle_vector(v, ir.Constant(_vf, ir.Undefined),
                                  ir.Constant(ir.VectorType(_i32, W), [0] * W))


def _reduce16(builder, accs):
    """16 vectors (one per token) -> one vector of their 16 lane sums, token
    order kept.  Stage with block size ``w`` pairs vectors (a, b) holding
    blocks of ``2w`` partial lanes per token and halves the blocks."""
    w = W // 2
    while len(accs) > 1:
        lo, hi = [], []
        for blk in range(W // (2 * w)):            # blocks of 2w lanes in a
            base = blk * 2 * w
            lo += [base + i for i in range(w)]
            hi += [base + w + i for i in range(w)]
        # second source (b) lanes are numbered W.. in shufflevector
        lo = lo + [W + i for i in lo]
        hi = hi + [W + i for i in hi]
        mlo = ir.Constant(ir.VectorType(_i32, W), lo)
        mhi = ir.Constant(ir.VectorType(_i32, W), hi)
        nxt = []
        for i in range(0, len(accs), 2):
            a, b = accs[i], accs[i + 1]
            nxt.append(builder.fadd(builder.shuffle_vector(a, b, mlo),
                                    builder.shuffle_vector(a, b, mhi)))
        accs = nxt
        w //= 2
    return accs[0]


def _kind(arr, code_is_bf16):
    if arr.dtype == types.float32:
        return "f32"
    if arr.dtype == types.uint16:
        return "bf16" if code_is_bf16 else "f16"
    return None


def _ptr_of(context, builder, aryty, ary):
    a = context.make_array(aryty)(context, builder, ary)
    shape = cgutils.unpack_tuple(builder, a.shape, aryty.ndim)
    return a.data, shape


# --- scores: 16 tokens x one q head -----------------------------------------

def _make_qk16(kind):
    @intrinsic
    def _qk16(typingctx, K, t0, Q, qrow, S, srow, col):
        if not (isinstance(K, types.Array) and K.ndim == 2 and K.layout == "C"
                and _kind(K, kind == "bf16") == kind):
            return None
        sig = types.void(K, t0, Q, qrow, S, srow, col)

        def codegen(context, builder, sig, args):
            k_ary, t0v, q_ary, qrowv, s_ary, srowv, colv = args
            kdata, (_, D) = _ptr_of(context, builder, sig.args[0], k_ary)
            qdata, _ = _ptr_of(context, builder, sig.args[2], q_ary)
            sdata, (_, SC) = _ptr_of(context, builder, sig.args[4], s_ary)
            intp = D.type
            t0v = context.cast(builder, t0v, sig.args[1], types.intp)
            qrowv = context.cast(builder, qrowv, sig.args[3], types.intp)
            srowv = context.cast(builder, srowv, sig.args[5], types.intp)
            colv = context.cast(builder, colv, sig.args[6], types.intp)
            kbase = builder.gep(kdata, [builder.mul(t0v, D)])
            qbase = builder.gep(qdata, [builder.mul(qrowv, D)])
            accp = [cgutils.alloca_once_value(builder, ir.Constant(_vf, None))
                    for _ in range(W)]
            nchunk = builder.udiv(D, intp(W))
            with cgutils.for_range(builder, nchunk) as loop:
                off = builder.mul(loop.index, intp(W))
                qv = _load_vec(builder, qbase, off, "f32")
                for i in range(W):
                    kv = _load_vec(builder, kbase,
                                   builder.add(builder.mul(intp(i), D), off), kind)
                    builder.store(_fmuladd(builder, qv, kv, builder.load(accp[i])),
                                  accp[i])
            res = _reduce16(builder, [builder.load(p) for p in accp])
            sptr = builder.gep(sdata, [builder.add(builder.mul(srowv, SC), colv)])
            builder.store(res, builder.bitcast(sptr, _vf.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _qk16


_qk16_f32 = _make_qk16("f32")
_qk16_f16 = _make_qk16("f16")
_qk16_bf16 = _make_qk16("bf16")


def qk16(K, code, t0, Q, qrow, S, srow, col):
    """``S[srow, col + i] = Q[qrow] . K[t0 + i]`` for i in 0..15.

    ``K`` [rows, D] float32 or uint16 (fp16 / bf16 bits per ``code``),
    ``rows >= t0 + 16``, ``D % 16 == 0``; ``Q`` float32 [*, D]; ``S`` float32
    with ``col + 16`` columns.  All C-contiguous.  Rows past the valid tokens
    may hold anything: their lanes are written to ``S`` and must be ignored
    (later tokens overwrite them)."""
    Kf = K.astype(np.float32) if K.dtype == np.float32 else _py_widen(K, code)
    S[srow, col:col + W] = Kf[t0:t0 + W] @ Q[qrow]


@overload(qk16, jit_options={"fastmath": config.FASTMATH})
def _ol_qk16(K, code, t0, Q, qrow, S, srow, col):
    if K.dtype == types.float32:
        return lambda K, code, t0, Q, qrow, S, srow, col: _qk16_f32(
            K, t0, Q, qrow, S, srow, col)
    if K.dtype == types.uint16 and config.F16C:
        def impl(K, code, t0, Q, qrow, S, srow, col):
            if code == config.DTYPE_BF16:
                _qk16_bf16(K, t0, Q, qrow, S, srow, col)
            else:
                _qk16_f16(K, t0, Q, qrow, S, srow, col)
        return impl
    if K.dtype == types.uint16:         # no F16C: fp16 pages must be widened
        def impl(K, code, t0, Q, qrow, S, srow, col):
            if code != config.DTYPE_BF16:
                raise ValueError("qk16: fp16 pages need F16C")
            _qk16_bf16(K, t0, Q, qrow, S, srow, col)
        return impl
    return None


# --- values: o += p . V for one q head -----------------------------------------

def _make_pv(kind):
    @intrinsic
    def _pv(typingctx, V, t0, n, P, prow, pcol, O, orow):
        if not (isinstance(V, types.Array) and V.ndim == 2 and V.layout == "C"
                and _kind(V, kind == "bf16") == kind):
            return None
        sig = types.void(V, t0, n, P, prow, pcol, O, orow)

        def codegen(context, builder, sig, args):
            v_ary, t0v, nv, p_ary, prowv, pcolv, o_ary, orowv = args
            vdata, (_, D) = _ptr_of(context, builder, sig.args[0], v_ary)
            pdata, (_, PC) = _ptr_of(context, builder, sig.args[3], p_ary)
            odata, _ = _ptr_of(context, builder, sig.args[6], o_ary)
            intp = D.type
            c = lambda v, i: context.cast(builder, v, sig.args[i], types.intp)
            t0v, nv, prowv, pcolv, orowv = (c(t0v, 1), c(nv, 2), c(prowv, 4),
                                            c(pcolv, 5), c(orowv, 7))
            vbase = builder.gep(vdata, [builder.mul(t0v, D)])
            pbase = builder.gep(pdata, [builder.add(builder.mul(prowv, PC), pcolv)])
            obase = builder.gep(odata, [builder.mul(orowv, D)])
            zero = ir.Constant(_vf, None)
            accp = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
            nchunk = builder.udiv(D, intp(W))
            n4 = builder.udiv(nv, intp(4))
            with cgutils.for_range(builder, nchunk) as cl:
                off = builder.mul(cl.index, intp(W))
                for p in accp:
                    builder.store(zero, p)
                with cgutils.for_range(builder, n4) as tl:
                    tb = builder.mul(tl.index, intp(4))
                    for u in range(4):
                        t = builder.add(tb, intp(u))
                        pv = _splat(builder, builder.load(builder.gep(pbase, [t])))
                        vv = _load_vec(builder, vbase, builder.add(builder.mul(t, D), off), kind)
                        builder.store(_fmuladd(builder, pv, vv, builder.load(accp[u])),
                                      accp[u])
                with cgutils.for_range(builder, nv, start=builder.mul(n4, intp(4))) as tl:
                    t = tl.index
                    pv = _splat(builder, builder.load(builder.gep(pbase, [t])))
                    vv = _load_vec(builder, vbase, builder.add(builder.mul(t, D), off), kind)
                    builder.store(_fmuladd(builder, pv, vv, builder.load(accp[0])), accp[0])
                a = [builder.load(p) for p in accp]
                s = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
                optr = builder.bitcast(builder.gep(obase, [off]), _vf.as_pointer())
                builder.store(builder.fadd(builder.load(optr, align=4), s), optr, align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _pv


_pv_f32 = _make_pv("f32")
_pv_f16 = _make_pv("f16")
_pv_bf16 = _make_pv("bf16")


def pv_accum(V, code, t0, n, P, prow, pcol, O, orow):
    """``O[orow, :] += sum_{i < n} P[prow, pcol + i] * V[t0 + i, :]``.

    ``V`` [rows, D] float32 or uint16 (per ``code``), ``D % 16 == 0``; only
    rows ``t0 .. t0 + n - 1`` are read.  ``P``, ``O`` float32, C-contiguous."""
    Vf = V.astype(np.float32) if V.dtype == np.float32 else _py_widen(V, code)
    O[orow] += P[prow, pcol:pcol + n] @ Vf[t0:t0 + n]


@overload(pv_accum, jit_options={"fastmath": config.FASTMATH})
def _ol_pv_accum(V, code, t0, n, P, prow, pcol, O, orow):
    if V.dtype == types.float32:
        return lambda V, code, t0, n, P, prow, pcol, O, orow: _pv_f32(
            V, t0, n, P, prow, pcol, O, orow)
    if V.dtype == types.uint16 and config.F16C:
        def impl(V, code, t0, n, P, prow, pcol, O, orow):
            if code == config.DTYPE_BF16:
                _pv_bf16(V, t0, n, P, prow, pcol, O, orow)
            else:
                _pv_f16(V, t0, n, P, prow, pcol, O, orow)
        return impl
    if V.dtype == types.uint16:         # no F16C: fp16 pages must be widened
        def impl(V, code, t0, n, P, prow, pcol, O, orow):
            if code != config.DTYPE_BF16:
                raise ValueError("pv_accum: fp16 pages need F16C")
            _pv_bf16(V, t0, n, P, prow, pcol, O, orow)
        return impl
    return None


def _py_widen(a, code):
    if code == config.DTYPE_BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.view(np.float16).astype(np.float32)


# --- softmax helpers -----------------------------------------------------------

@njit(fastmath=config.FASTMATH_EXP, cache=config.CACHE, inline="always")
def exp_nonpos(x):
    """float32 ``exp(x)`` for ``x <= 0`` (also -inf -> 0, NaN -> NaN), written
    with selects so loops over it vectorize.  Cephes ``expf``: ``x = n ln2 +
    r``, ``|r| <= ln2 / 2``, degree-6 polynomial, ``2**n`` by bits; results
    below float32's normal range (x < -87.3) flush to 0.  Max relative error
    about 2e-7 (tested against float64).  Compiled without ``reassoc`` so
    the two-part ``n ln2`` reduction is kept."""
    xc = max(x, np.float32(-87.0))             # keeps 2**n normal; NaN -> -87
    n = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    e = np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23)
    y = p * _bits_f32(e)
    if x < np.float32(-87.0):                  # underflow (and -inf) -> 0
        y = np.float32(0.0)
    if x != x:                                 # NaN in, NaN out
        y = x
    return y


def _bits_f32(b):
    return np.array(int(b) & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]


@overload(_bits_f32, jit_options={"fastmath": config.FASTMATH})
def _ol_bits_f32(b):
    from .widen import _ir_bits_to_f32
    if isinstance(b, types.Integer):
        return lambda b: _ir_bits_to_f32(b)
    return None


@intrinsic
def _row_max(typingctx, s, n):
    if not (isinstance(s, types.Array) and s.ndim == 1 and s.layout == "C"
            and s.dtype == types.float32 and isinstance(n, types.Integer)):
        return None
    sig = types.float32(s, n)

    def codegen(context, builder, sig, args):
        data, _ = _ptr_of(context, builder, sig.args[0], args[0])
        nv = context.cast(builder, args[1], sig.args[1], types.intp)
        intp = nv.type
        first = builder.load(data)
        mp = cgutils.alloca_once_value(builder, _splat(builder, first))
        n16 = builder.udiv(nv, intp(W))
        with cgutils.for_range(builder, n16) as loop:
            x = _load_vec(builder, data, builder.mul(loop.index, intp(W)), "f32")
            m = builder.load(mp)
            builder.store(builder.select(builder.fcmp_ordered(">", x, m), x, m), mp)
        m = builder.load(mp)
        w = W // 2
        while w >= 1:                       # horizontal, log2(16) steps
            sh = builder.shuffle_vector(m, m, ir.Constant(ir.VectorType(_i32, W),
                                                          [(i + w) % W for i in range(W)]))
            m = builder.select(builder.fcmp_ordered(">", sh, m), sh, m)
            w //= 2
        sp = cgutils.alloca_once_value(builder, builder.extract_element(m, _i32(0)))
        with cgutils.for_range(builder, nv, start=builder.mul(n16, intp(W))) as loop:
            x = builder.load(builder.gep(data, [loop.index]))
            sv = builder.load(sp)
            builder.store(builder.select(builder.fcmp_ordered(">", x, sv), x, sv), sp)
        return builder.load(sp)

    return sig, codegen


def row_max(s, n):
    """max of float32 ``s[:n]``, n >= 1 (1-D, C-contiguous), 16 lanes at a
    time.  NaNs are skipped unless ``s[0]`` is NaN (like the scalar
    ``m = x if x > m else m`` loop)."""
    m = s[0]
    for i in range(n):
        m = s[i] if s[i] > m else m
    return np.float32(m)


@overload(row_max, jit_options={"fastmath": config.FASTMATH})
def _ol_row_max(s, n):
    return lambda s, n: _row_max(s, n)
