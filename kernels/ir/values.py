"""Value sums ``o += p . V`` of a page: ``pv_heads`` (all rows, up to 4 q
heads at once) and ``pv_rows`` (selected rows, one head; SparF).

``pv_heads`` keeps a block of ``g`` heads x ``cb`` 16-dim chunks of ``o`` in
registers (``g * cb = 16`` where ``head_dim`` allows) across all tokens of
the page: per token, ``cb`` V loads (widened on the fly) and ``g``
broadcasts of p feed ``g * cb`` independent FMAs, and ``o`` is loaded and
stored once per page instead of once per token and chunk.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .. import config
from .vecir import (PREFETCH_IN_LOOP, W, as_intp, fmuladd, intrinsics_by_kind, kind_of,
                    load_vec, prefetch, ptr_of, py_widen, splat, vf)

_KINDS = ("f32", "f16", "bf16")


def _chunks_per_block(g):
    """16-dim chunks of o per head held in registers: g * cb accumulators
    plus cb V vectors and a broadcast must fit in 32 registers."""
    return {1: 8, 2: 8, 3: 4, 4: 4}[g]


def _make_pv(kind, g):
    cb = _chunks_per_block(g)
    itemsize = 4 if kind == "f32" else 2

    @intrinsic
    def _pv(typingctx, V, N, n, P, prow, pcol, O, orow):
        if not (isinstance(V, types.Array) and V.ndim == 2 and V.layout == "C"
                and kind_of(V, kind == "bf16") == kind and N == V):
            return None
        sig = types.void(V, N, n, P, prow, pcol, O, orow)

        def codegen(context, builder, sig, args):
            vdata, (_, D) = ptr_of(context, builder, sig.args[0], args[0])
            ndata, (NR, _) = ptr_of(context, builder, sig.args[1], args[1])
            pdata, (_, PC) = ptr_of(context, builder, sig.args[3], args[3])
            odata, _ = ptr_of(context, builder, sig.args[6], args[6])
            intp = D.type
            nv, prowv, pcolv, orowv = (as_intp(context, builder, sig, args, i)
                                       for i in (2, 4, 5, 7))
            pbase = [builder.gep(pdata, [builder.add(
                builder.mul(builder.add(prowv, intp(j)), PC), pcolv)]) for j in range(g)]
            obase = builder.gep(odata, [builder.mul(orowv, D)])
            nbase = builder.bitcast(ndata, ir.IntType(8).as_pointer())
            zero = ir.Constant(vf, None)
            nchunk = builder.udiv(D, intp(W))
            npf = builder.icmp_unsigned("<", nv, NR)
            nrows_pf = builder.select(npf, nv, NR)

            def block(c0, nc):
                """o[:, c0*16 : (c0+nc)*16] for the g heads over n tokens."""
                off0 = builder.mul(c0, intp(W))
                accp = [[cgutils.alloca_once_value(builder, zero) for _ in range(nc)]
                        for _ in range(g)]
                seg = nc * W * itemsize
                with cgutils.for_range(builder, nv) as tl:
                    t = tl.index
                    row = builder.mul(t, D)
                    vv = [load_vec(builder, vdata,
                                   builder.add(row, builder.add(off0, intp(c * W))), kind)
                          for c in range(nc)]
                    if PREFETCH_IN_LOOP:
                        # the same segment of the next page's row t
                        inside = builder.icmp_unsigned("<", t, nrows_pf)
                        with builder.if_then(inside):
                            start = builder.mul(builder.add(row, off0), intp(itemsize))
                            for k in range(0, seg, 64):
                                prefetch(builder, nbase, builder.add(start, intp(k)))
                    for j in range(g):
                        pv = splat(builder, builder.load(builder.gep(pbase[j], [t])))
                        for c in range(nc):
                            builder.store(fmuladd(builder, pv, vv[c],
                                                  builder.load(accp[j][c])), accp[j][c])
                for j in range(g):
                    for c in range(nc):
                        optr = builder.bitcast(builder.gep(obase, [builder.add(
                            builder.mul(intp(j), D), builder.add(off0, intp(c * W)))]),
                            vf.as_pointer())
                        builder.store(builder.fadd(builder.load(optr, align=4),
                                                   builder.load(accp[j][c])), optr, align=4)

            nfull = builder.udiv(nchunk, intp(cb))
            with cgutils.for_range(builder, nfull) as bl:
                block(builder.mul(bl.index, intp(cb)), cb)
            # the rest (< cb chunks) as blocks of cb/2, cb/4, ..., 1 chunks
            cp = cgutils.alloca_once_value(builder, builder.mul(nfull, intp(cb)))
            s = cb // 2
            while s >= 1:
                c0 = builder.load(cp)
                fits = builder.icmp_unsigned("<=", builder.add(c0, intp(s)), nchunk)
                with builder.if_then(fits):
                    block(c0, s)
                    builder.store(builder.add(c0, intp(s)), cp)
                s //= 2
            return context.get_dummy_value()

        return sig, codegen
    return _pv


_PV = {(k, g): _make_pv(k, g) for k in _KINDS for g in (1, 2, 3, 4)}


def pv_heads(V, N, code, n, P, prow, G, pcol, O, orow):
    """``O[orow + j, :] += sum_{t < n} P[prow + j, pcol + t] * V[t, :]`` for
    j < G.  ``V`` [rows, D] float32 or uint16 (per ``code``), ``D % 16 ==
    0``; only rows ``0 .. n - 1`` are read, each once per 4 heads.  ``N``:
    the next page (same dtype and row length), prefetched as ``V`` is read.
    ``P``, ``O`` float32, C-contiguous."""
    Vf = py_widen(V, code)
    O[orow:orow + G] += P[prow:prow + G, pcol:pcol + n] @ Vf[:n]


@overload(pv_heads, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_pv_heads(V, N, code, n, P, prow, G, pcol, O, orow):
    if V.dtype not in (types.float32, types.uint16):
        return None
    (q1, q2, q3, q4), fp16 = intrinsics_by_kind(_PV, V.dtype)
    needs_check = fp16 is None
    p1, p2, p3, p4 = fp16 if fp16 is not None else (q1, q2, q3, q4)
    f32 = V.dtype == types.float32

    def impl(V, N, code, n, P, prow, G, pcol, O, orow):
        plain = f32 or code == config.DTYPE_BF16
        if needs_check and not plain:
            raise ValueError("pv_heads: fp16 pages need F16C")
        for j in range(0, G, 4):
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
    return impl


# --- values over selected rows: o += p . V[rows] for one q head ----------------

def _make_pvx(kind):
    @intrinsic
    def _pvx(typingctx, V, idx, i0, t0, n, P, prow, O, orow):
        if not (isinstance(V, types.Array) and V.ndim == 2 and V.layout == "C"
                and kind_of(V, kind == "bf16") == kind
                and isinstance(idx, types.Array) and idx.ndim == 2
                and idx.layout == "C" and idx.dtype == types.int64):
            return None
        sig = types.void(V, idx, i0, t0, n, P, prow, O, orow)

        def codegen(context, builder, sig, args):
            vdata, (_, D) = ptr_of(context, builder, sig.args[0], args[0])
            xdata, (_, XC) = ptr_of(context, builder, sig.args[1], args[1])
            pdata, (_, PC) = ptr_of(context, builder, sig.args[5], args[5])
            odata, _ = ptr_of(context, builder, sig.args[7], args[7])
            intp = D.type
            i0v, t0v, nv, prowv, orowv = (as_intp(context, builder, sig, args, i)
                                          for i in (2, 3, 4, 6, 8))
            # idx row prow, P row prow, both from column i0
            xbase = builder.gep(xdata, [builder.add(builder.mul(prowv, XC), i0v)])
            pbase = builder.gep(pdata, [builder.add(builder.mul(prowv, PC), i0v)])
            obase = builder.gep(odata, [builder.mul(orowv, D)])
            zero = ir.Constant(vf, None)
            accp = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
            nchunk = builder.udiv(D, intp(W))
            nb = builder.udiv(nv, intp(2))

            def step(i, u):
                t = builder.sub(builder.load(builder.gep(xbase, [i])), t0v)
                vv = load_vec(builder, vdata, builder.add(builder.mul(t, D), off), kind)
                pv = splat(builder, builder.load(builder.gep(pbase, [i])))
                builder.store(fmuladd(builder, pv, vv, builder.load(accp[u])), accp[u])

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
                optr = builder.bitcast(builder.gep(obase, [off]), vf.as_pointer())
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
    Vf = py_widen(V, code)
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
