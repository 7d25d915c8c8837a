"""Attention scores of a dims-major K page for up to 4 q heads: ``qk_dims``.

A dims-major page holds a head's ``T`` tokens of K as ``D`` rows of ``T``
(row d = dim d of every token), so one 16-lane vector is 16 tokens' values
of one dim.  Scores then need no horizontal sums at all: per dim, one K
vector (widened on the fly) feeds one multiply-add per head against that
head's q[d] broadcast, and the accumulators end as the 16 tokens' scores.
Against the token-major page's dot products (``scores.qk_heads``), which end
every (token, head) in a transpose-and-add butterfly, that was 223 -> 150 ns
per 4 KiB fp16 page for 4 heads here, the same as the bare FMA rate.

Flash K pages of a namespace without the SparF layout are stored this way
(csdemu.drive.kv.store); SparF's exact pass gathers single tokens' K rows, so
namespaces with the SparF layout keep K token-major.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .. import config
from .scores import scores_overload
from .vecir import (PREFETCH_IN_LOOP, W, as_intp, fmuladd, kind_of, load_vec,
                    prefetch, ptr_of, py_widen, splat, vf)

_KINDS = ("f32", "f16", "bf16")
#: dims per loop pass, each with its own accumulators: two chains per head
#: hide the multiply-add latency when only one head is scored
_SPLIT = 2


def _make_qk_dims(kind, g):
    itemsize = 4 if kind == "f32" else 2

    @intrinsic
    def _qkd(typingctx, K, N, valid, Q, qrow, S, srow, col):
        if not (isinstance(K, types.Array) and K.ndim == 2 and K.layout == "C"
                and kind_of(K, kind == "bf16") == kind and N == K):
            return None
        sig = types.void(K, N, valid, Q, qrow, S, srow, col)

        def codegen(context, builder, sig, args):
            # K is shaped [T, D] like every pool page; its memory is [D, T]
            kdata, (T, D) = ptr_of(context, builder, sig.args[0], args[0])
            ndata, _ = ptr_of(context, builder, sig.args[1], args[1])
            qdata, (_, QD) = ptr_of(context, builder, sig.args[3], args[3])
            sdata, (_, SC) = ptr_of(context, builder, sig.args[5], args[5])
            intp = D.type
            validv, qrowv, srowv, colv = (as_intp(context, builder, sig, args, i)
                                          for i in (2, 4, 6, 7))
            qbase = [builder.gep(qdata, [builder.mul(builder.add(qrowv, intp(j)), QD)])
                     for j in range(g)]
            nbase = builder.bitcast(ndata, ir.IntType(8).as_pointer())
            zero = ir.Constant(vf, None)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(g)]
                   for _ in range(_SPLIT)]
            row_bytes = builder.mul(T, intp(itemsize))
            npair = builder.udiv(D, intp(_SPLIT))
            nblk = builder.udiv(builder.add(validv, intp(W - 1)), intp(W))

            def step(s, d, t0):
                kv = load_vec(builder, kdata, builder.add(builder.mul(d, T), t0), kind)
                for j in range(g):
                    qd = splat(builder, builder.load(builder.gep(qbase[j], [d])))
                    builder.store(fmuladd(builder, qd, kv, builder.load(acc[s][j])), acc[s][j])

            with cgutils.for_range(builder, nblk) as bl:
                t0 = builder.mul(bl.index, intp(W))
                first = builder.icmp_unsigned("==", bl.index, intp(0))
                for row in acc:
                    for p in row:
                        builder.store(zero, p)
                with cgutils.for_range(builder, npair) as lp:
                    d0 = builder.mul(lp.index, intp(_SPLIT))
                    if PREFETCH_IN_LOOP:
                        # the next page's rows d0, d0 + 1, on the first pass
                        with builder.if_then(first):
                            start = builder.mul(d0, row_bytes)
                            nl = builder.udiv(builder.add(builder.mul(row_bytes, intp(_SPLIT)),
                                                          intp(63)), intp(64))
                            with cgutils.for_range(builder, nl) as ln:
                                prefetch(builder, nbase,
                                         builder.add(start, builder.mul(ln.index, intp(64))))
                    for s in range(_SPLIT):
                        step(s, builder.add(d0, intp(s)), t0)
                # an odd head dim's last row
                with builder.if_then(builder.icmp_unsigned(
                        "<", builder.mul(npair, intp(_SPLIT)), D)):
                    step(0, builder.sub(D, intp(1)), t0)
                for j in range(g):
                    v = builder.load(acc[0][j])
                    for s in range(1, _SPLIT):
                        v = builder.fadd(v, builder.load(acc[s][j]))
                    sptr = builder.gep(sdata, [builder.add(
                        builder.mul(builder.add(srowv, intp(j)), SC), builder.add(colv, t0))])
                    builder.store(v, builder.bitcast(sptr, vf.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen
    return _qkd


_QKD = {(k, g): _make_qk_dims(k, g) for k in _KINDS for g in (1, 2, 3, 4)}


def qk_dims(K, N, code, valid, Q, qrow, G, S, srow, col):
    """``S[srow + j, col + t] = Q[qrow + j] . K[:, t]`` for t < valid, j < G,
    where ``K`` is a page shaped [T, D] whose memory is dims-major [D, T]
    (``T % 16 == 0``), float32 or uint16 (fp16 / bf16 bits per ``code``).
    Whole blocks of 16 tokens are computed, so up to 15 columns past
    ``col + valid`` are written.  ``N``: the page read next (prefetched);
    ``Q`` float32 [*, D]; ``S`` float32.  All C-contiguous."""
    T, D = K.shape
    Kd = py_widen(K, code).reshape(D, T)
    n = min((valid + W - 1) // W * W, T) if valid > 0 else 0
    S[srow:srow + G, col:col + n] = Q[qrow:qrow + G] @ Kd[:, :n]


@overload(qk_dims, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_qk_dims(K, N, code, valid, Q, qrow, G, S, srow, col):
    return scores_overload(_QKD, "qk_dims", K)
