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
#: the vector loops prefetch the next page line by line as they read the
#: current one (see ``qk_heads``); compile-time switch
PREFETCH_IN_LOOP = bool(config.PREFETCH)

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


def _prefetch(builder, base, idx):
    ptr = builder.bitcast(builder.gep(base, [idx]), ir.IntType(8).as_pointer())
    fnty = ir.FunctionType(ir.VoidType(), [ptr.type, _i32, _i32, _i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [ptr, _i32(0), _i32(3), _i32(1)])


def _prefetch_rows(builder, nbase, rows, D, off, chunk, kind, intp):
    """Prefetch ``rows`` rows of the next page at the same 16-element chunk
    the current page is being read at (16-bit pages: every other chunk, one
    prefetch per 64-byte line)."""
    if not PREFETCH_IN_LOOP:
        return
    def emit():
        for i in rows:
            _prefetch(builder, nbase, builder.add(builder.mul(intp(i), D), off))
    if kind == "f32":
        emit()
    else:
        even = builder.icmp_unsigned("==", builder.and_(chunk, intp(1)), intp(0))
        with builder.if_then(even):
            emit()


def _splat(builder, x):
    v = builder.insert_element(ir.Constant(_vf, ir.Undefined), x, _i32(0))
    return builder.shuffle_vector(v, ir.Constant(_vf, ir.Undefined),
                                  ir.Constant(ir.VectorType(_i32, W), [0] * W))


def _reduce(builder, accs):
    """``nt`` vectors (one per token; nt = 1, 2, 4, 8 or 16) -> one
    ``<nt x float>`` of their lane sums, token order kept.

    Pairwise stages first: a stage pairs vectors (a, b) that hold blocks of
    ``2w`` partial lanes per token and leaves blocks of ``w`` (lanes of a,
    then of b).  After log2(nt) stages one vector holds nt tokens x 16/nt
    lanes; in-vector stages then halve the blocks until one lane per token is
    left."""
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
    v = accs[0]
    n = v.type.count
    blk = 2 * w                                   # lanes per token now
    while blk > 1:
        ntok = n // blk
        half = blk // 2
        lo = [t * blk + i for t in range(ntok) for i in range(half)]
        hi = [t * blk + half + i for t in range(ntok) for i in range(half)]
        mk = lambda m: ir.Constant(ir.VectorType(_i32, len(m)), m)
        v = builder.fadd(builder.shuffle_vector(v, v, mk(lo)),
                         builder.shuffle_vector(v, v, mk(hi)))
        n = ntok * half
        blk = half
    return v


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


# --- scores: a block of tokens x up to 4 q heads ---------------------------

#: tokens per qk block for g heads: g * tokens accumulators must fit in the
#: 32 vector registers with the q and k vectors.
QK_TOKENS = {1: 16, 2: 8, 3: 8, 4: 4}


def _make_qk(kind, g):
    nt = QK_TOKENS[g]

    @intrinsic
    def _qk(typingctx, K, N, t0, Q, qrow, S, srow, col):
        if not (isinstance(K, types.Array) and K.ndim == 2 and K.layout == "C"
                and _kind(K, kind == "bf16") == kind and N == K):
            return None
        sig = types.void(K, N, t0, Q, qrow, S, srow, col)

        def codegen(context, builder, sig, args):
            k_ary, n_ary, t0v, q_ary, qrowv, s_ary, srowv, colv = args
            kdata, (_, D) = _ptr_of(context, builder, sig.args[0], k_ary)
            ndata, _ = _ptr_of(context, builder, sig.args[1], n_ary)
            qdata, _ = _ptr_of(context, builder, sig.args[3], q_ary)
            sdata, (_, SC) = _ptr_of(context, builder, sig.args[5], s_ary)
            intp = D.type
            t0v = context.cast(builder, t0v, sig.args[2], types.intp)
            qrowv = context.cast(builder, qrowv, sig.args[4], types.intp)
            srowv = context.cast(builder, srowv, sig.args[6], types.intp)
            colv = context.cast(builder, colv, sig.args[7], types.intp)
            kbase = builder.gep(kdata, [builder.mul(t0v, D)])
            nbase = builder.gep(ndata, [builder.mul(t0v, D)])
            qbase = builder.gep(qdata, [builder.mul(qrowv, D)])
            zero = ir.Constant(_vf, None)
            accp = [[cgutils.alloca_once_value(builder, zero) for _ in range(nt)]
                    for _ in range(g)]
            nchunk = builder.udiv(D, intp(W))
            with cgutils.for_range(builder, nchunk) as loop:
                off = builder.mul(loop.index, intp(W))
                _prefetch_rows(builder, nbase, range(nt), D, off, loop.index, kind, intp)
                qv = [_load_vec(builder, qbase,
                                builder.add(builder.mul(intp(j), D), off), "f32")
                      for j in range(g)]
                for i in range(nt):
                    kv = _load_vec(builder, kbase,
                                   builder.add(builder.mul(intp(i), D), off), kind)
                    for j in range(g):
                        builder.store(_fmuladd(builder, qv[j], kv,
                                               builder.load(accp[j][i])), accp[j][i])
            vt = ir.VectorType(_f32, nt)
            for j in range(g):
                res = _reduce(builder, [builder.load(p) for p in accp[j]])
                row = builder.add(srowv, intp(j))
                sptr = builder.gep(sdata, [builder.add(builder.mul(row, SC), colv)])
                builder.store(res, builder.bitcast(sptr, vt.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _qk


_KINDS = ("f32", "f16", "bf16")
_QK = {(k, g): _make_qk(k, g) for k in _KINDS for g in (1, 2, 3, 4)}


def qk_heads(K, N, code, valid, Q, qrow, G, S, srow, col):
    """``S[srow + j, col + t] = Q[qrow + j] . K[t]`` for t < valid, j < G.

    ``K`` [rows, D] float32 or uint16 (fp16 / bf16 bits per ``code``),
    ``D % 16 == 0``, ``rows`` a multiple of 16 (>= valid): whole blocks of 4,
    8 or 16 tokens are computed, so up to 15 columns past ``col + valid`` are
    written with whatever the spare rows give (``S`` needs them; later tokens
    overwrite them).  ``N``: the page that will be read next (same dtype and
    shape; may be ``K`` itself), prefetched line by line while ``K`` is read.  ``Q`` float32 [*, D]; ``S`` float32.  All C-contiguous.
    Each K row is read once per 4 heads (the heads share the widened row)."""
    Kf = _py_widen(K, code)
    nt = QK_TOKENS[min(G, 4)]
    n = min((valid + nt - 1) // nt * nt, Kf.shape[0]) if valid > 0 else 0
    S[srow:srow + G, col:col + n] = Q[qrow:qrow + G] @ Kf[:n].T


def _qk_intrinsics(dtype):
    """(for float32 / bf16 pages, for fp16 pages) intrinsic 4-tuples."""
    if dtype == types.float32:
        q = tuple(_QK["f32", g] for g in (1, 2, 3, 4))
        return q, q
    q = tuple(_QK["bf16", g] for g in (1, 2, 3, 4))
    if config.F16C:
        return q, tuple(_QK["f16", g] for g in (1, 2, 3, 4))
    return q, None


@overload(qk_heads, jit_options={"fastmath": config.FASTMATH})
def _ol_qk_heads(K, N, code, valid, Q, qrow, G, S, srow, col):
    if K.dtype not in (types.float32, types.uint16):
        return None
    (q1, q2, q3, q4), fp16 = _qk_intrinsics(K.dtype)
    needs_check = fp16 is None
    p1, p2, p3, p4 = fp16 if fp16 is not None else (q1, q2, q3, q4)
    f32 = K.dtype == types.float32

    def impl(K, N, code, valid, Q, qrow, G, S, srow, col):
        plain = f32 or code == config.DTYPE_BF16
        if needs_check and not plain:
            raise ValueError("qk_heads: fp16 pages need F16C")
        j = 0
        while j < G:
            g = min(4, G - j)
            if g == 4:
                for t in range(0, valid, 4):
                    if plain:
                        q4(K, N, t, Q, qrow + j, S, srow + j, col + t)
                    else:
                        p4(K, N, t, Q, qrow + j, S, srow + j, col + t)
            elif g == 3:
                for t in range(0, valid, 8):
                    if plain:
                        q3(K, N, t, Q, qrow + j, S, srow + j, col + t)
                    else:
                        p3(K, N, t, Q, qrow + j, S, srow + j, col + t)
            elif g == 2:
                for t in range(0, valid, 8):
                    if plain:
                        q2(K, N, t, Q, qrow + j, S, srow + j, col + t)
                    else:
                        p2(K, N, t, Q, qrow + j, S, srow + j, col + t)
            else:
                for t in range(0, valid, 16):
                    if plain:
                        q1(K, N, t, Q, qrow + j, S, srow + j, col + t)
                    else:
                        p1(K, N, t, Q, qrow + j, S, srow + j, col + t)
            j += g
    return impl


# --- values: o += p . V for up to 4 q heads -------------------------------------

def _make_pv(kind, g):
    nu = 4 if g == 1 else 2         # accumulators per head (FMA latency)

    @intrinsic
    def _pv(typingctx, V, N, n, P, prow, pcol, O, orow):
        if not (isinstance(V, types.Array) and V.ndim == 2 and V.layout == "C"
                and _kind(V, kind == "bf16") == kind and N == V):
            return None
        sig = types.void(V, N, n, P, prow, pcol, O, orow)

        def codegen(context, builder, sig, args):
            v_ary, n_ary, nv, p_ary, prowv, pcolv, o_ary, orowv = args
            vdata, (_, D) = _ptr_of(context, builder, sig.args[0], v_ary)
            ndata, (NR, _) = _ptr_of(context, builder, sig.args[1], n_ary)
            pdata, (_, PC) = _ptr_of(context, builder, sig.args[3], p_ary)
            odata, _ = _ptr_of(context, builder, sig.args[6], o_ary)
            intp = D.type
            c = lambda v, i: context.cast(builder, v, sig.args[i], types.intp)
            nv, prowv, pcolv, orowv = c(nv, 2), c(prowv, 4), c(pcolv, 5), c(orowv, 7)
            pbase = [builder.gep(pdata, [builder.add(
                builder.mul(builder.add(prowv, intp(j)), PC), pcolv)]) for j in range(g)]
            obase = builder.gep(odata, [builder.mul(orowv, D)])
            zero = ir.Constant(_vf, None)
            accp = [[cgutils.alloca_once_value(builder, zero) for _ in range(nu)]
                    for _ in range(g)]
            nchunk = builder.udiv(D, intp(W))
            nb = builder.udiv(nv, intp(nu))

            def step(t, u):
                vv = _load_vec(builder, vdata, builder.add(builder.mul(t, D), off), kind)
                _pf_next(t)
                for j in range(g):
                    pv = _splat(builder, builder.load(builder.gep(pbase[j], [t])))
                    builder.store(_fmuladd(builder, pv, vv, builder.load(accp[j][u])),
                                  accp[j][u])

            def _pf_next(t):
                # the same element of the next page (its first NR rows)
                if not PREFETCH_IN_LOOP:
                    return
                inside = builder.icmp_unsigned("<", t, NR)
                with builder.if_then(inside):
                    _prefetch_rows(builder, builder.gep(ndata, [builder.mul(t, D)]),
                                   [0], D, off, cl.index, kind, intp)

            with cgutils.for_range(builder, nchunk) as cl:
                off = builder.mul(cl.index, intp(W))
                for row in accp:
                    for p in row:
                        builder.store(zero, p)
                with cgutils.for_range(builder, nb) as tl:
                    tb = builder.mul(tl.index, intp(nu))
                    for u in range(nu):
                        step(builder.add(tb, intp(u)), u)
                with cgutils.for_range(builder, nv, start=builder.mul(nb, intp(nu))) as tl:
                    step(tl.index, 0)
                for j in range(g):
                    a = [builder.load(p) for p in accp[j]]
                    while len(a) > 1:
                        a = [builder.fadd(a[i], a[i + 1]) for i in range(0, len(a), 2)]
                    optr = builder.bitcast(builder.gep(obase, [builder.add(
                        builder.mul(intp(j), D), off)]), _vf.as_pointer())
                    builder.store(builder.fadd(builder.load(optr, align=4), a[0]),
                                  optr, align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _pv


_PV = {(k, g): _make_pv(k, g) for k in _KINDS for g in (1, 2, 3, 4)}


def pv_heads(V, N, code, n, P, prow, G, pcol, O, orow):
    """``O[orow + j, :] += sum_{t < n} P[prow + j, pcol + t] * V[t, :]`` for
    j < G.  ``V`` [rows, D] float32 or uint16 (per ``code``), ``D % 16 ==
    0``; only rows ``0 .. n - 1`` are read, each once per 4 heads.  ``N``:
    the next page (same dtype and row length), prefetched as ``V`` is read.  ``P``,
    ``O`` float32, C-contiguous."""
    Vf = _py_widen(V, code)
    O[orow:orow + G] += P[prow:prow + G, pcol:pcol + n] @ Vf[:n]


@overload(pv_heads, jit_options={"fastmath": config.FASTMATH})
def _ol_pv_heads(V, N, code, n, P, prow, G, pcol, O, orow):
    if V.dtype == types.float32:
        q1, q2, q3, q4 = (_PV["f32", g] for g in (1, 2, 3, 4))
        fp16 = (q1, q2, q3, q4)
    elif V.dtype == types.uint16:
        q1, q2, q3, q4 = (_PV["bf16", g] for g in (1, 2, 3, 4))
        fp16 = tuple(_PV["f16", g] for g in (1, 2, 3, 4)) if config.F16C else None
    else:
        return None
    needs_check = fp16 is None
    p1, p2, p3, p4 = fp16 if fp16 is not None else (q1, q2, q3, q4)
    f32 = V.dtype == types.float32

    def impl(V, N, code, n, P, prow, G, pcol, O, orow):
        plain = f32 or code == config.DTYPE_BF16
        if needs_check and not plain:
            raise ValueError("pv_heads: fp16 pages need F16C")
        j = 0
        while j < G:
            g = min(4, G - j)
            if g == 4:
                if plain:
                    q4(V, N, n, P, prow + j, pcol, O, orow + j)
                else:
                    p4(V, N, n, P, prow + j, pcol, O, orow + j)
            elif g == 3:
                if plain:
                    q3(V, N, n, P, prow + j, pcol, O, orow + j)
                else:
                    p3(V, N, n, P, prow + j, pcol, O, orow + j)
            elif g == 2:
                if plain:
                    q2(V, N, n, P, prow + j, pcol, O, orow + j)
                else:
                    p2(V, N, n, P, prow + j, pcol, O, orow + j)
            else:
                if plain:
                    q1(V, N, n, P, prow + j, pcol, O, orow + j)
                else:
                    p1(V, N, n, P, prow + j, pcol, O, orow + j)
            j += g
    return impl


# --- values over selected rows: o += p . V[rows] for one q head ----------------

def _make_pvx(kind):
    @intrinsic
    def _pvx(typingctx, V, idx, i0, t0, n, P, prow, O, orow):
        if not (isinstance(V, types.Array) and V.ndim == 2 and V.layout == "C"
                and _kind(V, kind == "bf16") == kind
                and isinstance(idx, types.Array) and idx.ndim == 2
                and idx.layout == "C" and idx.dtype == types.int64):
            return None
        sig = types.void(V, idx, i0, t0, n, P, prow, O, orow)

        def codegen(context, builder, sig, args):
            v_ary, x_ary, i0v, t0v, nv, p_ary, prowv, o_ary, orowv = args
            vdata, (_, D) = _ptr_of(context, builder, sig.args[0], v_ary)
            xdata, (_, XC) = _ptr_of(context, builder, sig.args[1], x_ary)
            pdata, (_, PC) = _ptr_of(context, builder, sig.args[5], p_ary)
            odata, _ = _ptr_of(context, builder, sig.args[7], o_ary)
            intp = D.type
            c = lambda v, i: context.cast(builder, v, sig.args[i], types.intp)
            i0v, t0v, nv, prowv, orowv = (c(i0v, 2), c(t0v, 3), c(nv, 4), c(prowv, 6),
                                          c(orowv, 8))
            # idx row prow, P row prow, both from column i0
            xbase = builder.gep(xdata, [builder.add(builder.mul(prowv, XC), i0v)])
            pbase = builder.gep(pdata, [builder.add(builder.mul(prowv, PC), i0v)])
            obase = builder.gep(odata, [builder.mul(orowv, D)])
            zero = ir.Constant(_vf, None)
            accp = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
            nchunk = builder.udiv(D, intp(W))
            nb = builder.udiv(nv, intp(2))

            def step(i, u):
                t = builder.sub(builder.load(builder.gep(xbase, [i])), t0v)
                vv = _load_vec(builder, vdata, builder.add(builder.mul(t, D), off), kind)
                pv = _splat(builder, builder.load(builder.gep(pbase, [i])))
                builder.store(_fmuladd(builder, pv, vv, builder.load(accp[u])), accp[u])

            with cgutils.for_range(builder, nchunk) as cl:
                off = builder.mul(cl.index, intp(W))
                for p in accp:
                    builder.store(zero, p)
                with cgutils.for_range(builder, nb) as tl:
                    ib = builder.mul(tl.index, intp(2))
                    step(ib, 0)
                    step(builder.add(ib, intp(1)), 1)
                with cgutils.for_range(builder, nv, start=builder.mul(nb, intp(2))) as tl:
                    step(tl.index, 0)
                a = builder.fadd(builder.load(accp[0]), builder.load(accp[1]))
                optr = builder.bitcast(builder.gep(obase, [off]), _vf.as_pointer())
                builder.store(builder.fadd(builder.load(optr, align=4), a), optr, align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _pvx


_PVX = {k: _make_pvx(k) for k in _KINDS}


def pv_rows(V, code, idx, i0, t0, n, P, j, O, orow):
    """``O[orow, :] += sum_{i < n} P[j, i0 + i] * V[idx[j, i0 + i] - t0, :]``:
    the value sum of one head over selected rows of a page (``idx``: int64
    token ids, ``P`` their weights, same column).  ``V`` float32 or uint16
    (per ``code``), ``D % 16 == 0``; only the listed rows are read."""
    Vf = _py_widen(V, code)
    rows = idx[j, i0:i0 + n] - t0
    O[orow] += P[j, i0:i0 + n] @ Vf[rows]


@overload(pv_rows, jit_options={"fastmath": config.FASTMATH})
def _ol_pv_rows(V, code, idx, i0, t0, n, P, j, O, orow):
    if V.dtype == types.float32:
        f, h = _PVX["f32"], _PVX["f32"]
    elif V.dtype == types.uint16:
        f = _PVX["bf16"]
        h = _PVX["f16"] if config.F16C else None
    else:
        return None
    needs_check = h is None
    if h is None:
        h = f
    plain_dtype = V.dtype == types.float32

    def impl(V, code, idx, i0, t0, n, P, j, O, orow):
        if plain_dtype or code == config.DTYPE_BF16:
            f(V, idx, i0, t0, n, P, j, O, orow)
        else:
            if needs_check:
                raise ValueError("pv_rows: fp16 pages need F16C")
            h(V, idx, i0, t0, n, P, j, O, orow)
    return impl


def _py_widen(a, code):
    if a.dtype == np.float32:
        return a
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
