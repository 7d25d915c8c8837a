"""The overlap probe: read pages as a kernel does and do its arithmetic, with
nothing connecting the two.

``line_sum_fma(page, nxt, groups, acc)`` walks a float32 page one 64-byte
line at a time: it adds the line into a sum, prefetches the same line of
``nxt`` (as the attention kernels' vector loops do, when ``config.PREFETCH``
is on), and runs ``groups`` x 8 16-lane FMAs on eight register chains that no
load feeds.  With the attention kernel's FMA count per byte, a walk over the
kernel's pages in its order runs as fast as this machine lets reads and that
much arithmetic overlap when no FMA waits for a load: the best a kernel with
this arithmetic and this prefetch could do (csdemu/bench/kernels.py,
``overlap_reader``).

``acc`` float32 [160]: lanes 0..127 the eight chains, 128..143 unused,
144..159 the sum's lanes (read back by the caller).
"""

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from kernels import config
from kernels.ir.vecir import PREFETCH_IN_LOOP, W, fmuladd, load_vec, prefetch, ptr_of, vf

CHAINS = 8
ACC_LEN = 10 * W
SUM_AT = 9 * W
_A, _C = 0.999, 0.001       # y = y * a + c stays finite for any number of steps


def line_sum_fma(page, nxt, groups, acc):
    """Plain-Python body (NUMBA_DISABLE_JIT): same sum lanes, same chains."""
    acc[SUM_AT:SUM_AT + W] += page.reshape(-1, W).sum(axis=0, dtype=np.float32)
    y = acc[:CHAINS * W]
    for _ in range(groups * page.shape[0] // W):
        y[:] = y * np.float32(_A) + np.float32(_C)


@intrinsic
def _line_sum_fma(typingctx, page, nxt, groups, acc):
    if not (isinstance(page, types.Array) and page.ndim == 1
            and page.dtype == types.float32 and nxt == page
            and isinstance(acc, types.Array) and acc.dtype == types.float32):
        return None
    sig = types.void(page, nxt, groups, acc)

    def codegen(context, builder, sig, args):
        pdata, (n,) = ptr_of(context, builder, sig.args[0], args[0])
        ndata, _ = ptr_of(context, builder, sig.args[1], args[1])
        adata, _ = ptr_of(context, builder, sig.args[3], args[3])
        intp = n.type
        ngroups = context.cast(builder, args[2], sig.args[2], types.intp)
        avec = builder.bitcast(adata, vf.as_pointer())
        chains = [cgutils.alloca_once_value(
            builder, builder.load(builder.gep(avec, [intp(k)]), align=4))
            for k in range(CHAINS)]
        total = cgutils.alloca_once_value(
            builder, builder.load(builder.gep(avec, [intp(SUM_AT // W)]), align=4))
        a = ir.Constant(vf, [_A] * W)
        c = ir.Constant(vf, [_C] * W)
        nbase = builder.bitcast(ndata, ir.IntType(8).as_pointer())
        with cgutils.for_range(builder, builder.udiv(n, intp(W))) as ln:
            v = load_vec(builder, pdata, builder.mul(ln.index, intp(W)), "f32")
            builder.store(builder.fadd(builder.load(total), v), total)
            if PREFETCH_IN_LOOP:
                prefetch(builder, nbase, builder.mul(ln.index, intp(W * 4)))
            with cgutils.for_range(builder, ngroups):
                for y in chains:
                    builder.store(fmuladd(builder, builder.load(y), a, c), y)
        for k, y in enumerate(chains):
            builder.store(builder.load(y), builder.gep(avec, [intp(k)]), align=4)
        builder.store(builder.load(total), builder.gep(avec, [intp(SUM_AT // W)]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@overload(line_sum_fma, jit_options={"fastmath": config.FASTMATH})
def _ol_line_sum_fma(page, nxt, groups, acc):
    def impl(page, nxt, groups, acc):
        _line_sum_fma(page, nxt, groups, acc)
    return impl
