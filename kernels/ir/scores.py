"""Attention scores of a page for up to 4 q heads at once: ``qk_heads``.

A block of ``nt`` tokens x ``g`` heads keeps ``g * nt`` vector accumulators
(each 16 partial sums over ``head_dim``), reads each K row once for the g
heads (widened on the fly: fp16 by ``vcvtph2ps``, bf16 by a shift) and
reduces the accumulators together by a transpose-and-add butterfly
(``vecir.reduce_lanes``): with ``g * nt = 16`` all heads of the block share
one butterfly, a quarter fewer shuffles than one per head.  A loop over
``head_dim`` per (token, head) would end every dot product in a horizontal
sum, which costs more than the 4-8 multiply-adds of a 64- or 128-dim dot
product.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .. import config
from .vecir import (PREFETCH_IN_LOOP, W, as_intp, fmuladd, intrinsics_by_kind, kind_of,
                    load_vec, prefetch, ptr_of, py_widen, reduce_lanes, sub_vector, vf)

#: tokens per block for g heads: g * nt accumulators must fit in the 32
#: vector registers next to the g q vectors and one K vector.
QK_TOKENS = {1: 16, 2: 8, 3: 8, 4: 4}
_KINDS = ("f32", "f16", "bf16")


def _prefetch_block(builder, ndata, t0, nt, D, itemsize, intp):
    """Prefetch rows ``t0 .. t0 + nt - 1`` of the next page, one per line."""
    nbytes = builder.mul(builder.mul(intp(nt), D), intp(itemsize))
    start = builder.mul(builder.mul(t0, D), intp(itemsize))
    nbase = builder.bitcast(ndata, ir.IntType(8).as_pointer())
    nlines = builder.udiv(builder.add(nbytes, intp(63)), intp(64))
    with cgutils.for_range(builder, nlines) as ln:
        prefetch(builder, nbase, builder.add(start, builder.mul(ln.index, intp(64))))


def _make_qk(kind, g):
    nt = QK_TOKENS[g]
    joint = g * nt == W
    itemsize = 4 if kind == "f32" else 2

    @intrinsic
    def _qk(typingctx, K, N, valid, Q, qrow, S, srow, col):
        if not (isinstance(K, types.Array) and K.ndim == 2 and K.layout == "C"
                and kind_of(K, kind == "bf16") == kind and N == K):
            return None
        sig = types.void(K, N, valid, Q, qrow, S, srow, col)

        def codegen(context, builder, sig, args):
            kdata, (_, D) = ptr_of(context, builder, sig.args[0], args[0])
            ndata, (NR, _) = ptr_of(context, builder, sig.args[1], args[1])
            qdata, _ = ptr_of(context, builder, sig.args[3], args[3])
            sdata, (_, SC) = ptr_of(context, builder, sig.args[5], args[5])
            intp = D.type
            validv, qrowv, srowv, colv = (as_intp(context, builder, sig, args, i)
                                          for i in (2, 4, 6, 7))
            qbase = builder.gep(qdata, [builder.mul(qrowv, D)])
            zero = ir.Constant(vf, None)
            accp = [[cgutils.alloca_once_value(builder, zero) for _ in range(nt)]
                    for _ in range(g)]
            nchunk = builder.udiv(D, intp(W))
            nblk = builder.udiv(builder.add(validv, intp(nt - 1)), intp(nt))
            with cgutils.for_range(builder, nblk) as bl:
                t0 = builder.mul(bl.index, intp(nt))
                if PREFETCH_IN_LOOP:
                    inside = builder.icmp_unsigned("<=", builder.add(t0, intp(nt)), NR)
                    with builder.if_then(inside):
                        _prefetch_block(builder, ndata, t0, nt, D, itemsize, intp)
                kbase = builder.gep(kdata, [builder.mul(t0, D)])
                for row in accp:
                    for p in row:
                        builder.store(zero, p)
                with cgutils.for_range(builder, nchunk) as loop:
                    off = builder.mul(loop.index, intp(W))
                    qv = [load_vec(builder, qbase,
                                   builder.add(builder.mul(intp(j), D), off), "f32")
                          for j in range(g)]
                    for i in range(nt):
                        kv = load_vec(builder, kbase,
                                      builder.add(builder.mul(intp(i), D), off), kind)
                        for j in range(g):
                            builder.store(fmuladd(builder, qv[j], kv,
                                                  builder.load(accp[j][i])), accp[j][i])
                if joint:
                    res = reduce_lanes(builder, [builder.load(p) for row in accp for p in row])
                    parts = [sub_vector(builder, res, j * nt, nt) for j in range(g)]
                else:
                    parts = [reduce_lanes(builder, [builder.load(p) for p in accp[j]])
                             for j in range(g)]
                vt = ir.VectorType(vf.element, nt)
                for j in range(g):
                    row = builder.add(srowv, intp(j))
                    sptr = builder.gep(sdata, [builder.add(builder.mul(row, SC),
                                                           builder.add(colv, t0))])
                    builder.store(parts[j], builder.bitcast(sptr, vt.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _qk


_QK = {(k, g): _make_qk(k, g) for k in _KINDS for g in (1, 2, 3, 4)}


def qk_heads(K, N, code, valid, Q, qrow, G, S, srow, col):
    """``S[srow + j, col + t] = Q[qrow + j] . K[t]`` for t < valid, j < G.

    ``K`` [rows, D] float32 or uint16 (fp16 / bf16 bits per ``code``),
    ``D % 16 == 0``, ``rows`` a multiple of 16 (>= valid): whole blocks of 4,
    8 or 16 tokens are computed, so up to 15 columns past ``col + valid`` are
    written with whatever the spare rows give (``S`` needs them; later tokens
    overwrite them).  ``N``: the page that will be read next (same dtype and
    shape; may be ``K`` itself), prefetched as ``K`` is read.  ``Q`` float32
    [*, D]; ``S`` float32.  All C-contiguous.  Each K row is read once per 4
    heads."""
    Kf = py_widen(K, code)
    nt = QK_TOKENS[min(G, 4)]
    n = min((valid + nt - 1) // nt * nt, Kf.shape[0]) if valid > 0 else 0
    S[srow:srow + G, col:col + n] = Q[qrow:qrow + G] @ Kf[:n].T


def scores_overload(table, name, K):
    """The overload body of a scores function with ``qk_heads``' signature
    over ``table``'s per-kind, per-head-count intrinsics (``qk_heads``,
    ``scores_dims.qk_dims``): heads in groups of up to 4."""
    if K.dtype not in (types.float32, types.uint16):
        return None
    (q1, q2, q3, q4), fp16 = intrinsics_by_kind(table, K.dtype)
    needs_check = fp16 is None
    p1, p2, p3, p4 = fp16 if fp16 is not None else (q1, q2, q3, q4)
    f32 = K.dtype == types.float32
    no_f16c = name + ": fp16 pages need F16C"

    def impl(K, N, code, valid, Q, qrow, G, S, srow, col):
        plain = f32 or code == config.DTYPE_BF16
        if needs_check and not plain:
            raise ValueError(no_f16c)
        for j in range(0, G, 4):
            g = min(4, G - j)
            if g == 4:
                if plain:
                    q4(K, N, valid, Q, qrow + j, S, srow + j, col)
                else:
                    p4(K, N, valid, Q, qrow + j, S, srow + j, col)
            elif g == 3:
                if plain:
                    q3(K, N, valid, Q, qrow + j, S, srow + j, col)
                else:
                    p3(K, N, valid, Q, qrow + j, S, srow + j, col)
            elif g == 2:
                if plain:
                    q2(K, N, valid, Q, qrow + j, S, srow + j, col)
                else:
                    p2(K, N, valid, Q, qrow + j, S, srow + j, col)
            else:
                if plain:
                    q1(K, N, valid, Q, qrow + j, S, srow + j, col)
                else:
                    p1(K, N, valid, Q, qrow + j, S, srow + j, col)
    return impl


@overload(qk_heads, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_qk_heads(K, N, code, valid, Q, qrow, G, S, srow, col):
    return scores_overload(_QK, "qk_heads", K)
