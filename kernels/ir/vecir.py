"""LLVM IR building blocks for the hand-vectorized loops (scores.py,
values.py, softmax.py): 16-lane float vectors, loads that widen fp16 / bf16
on the fly, FMA, splats, software prefetch and the transpose-and-add
reduction.  16-lane vectors are one zmm register with AVX-512 and are split
in two by LLVM on AVX2.
"""

from llvmlite import ir
from numba.core import cgutils, types

from .. import config

W = 16                      #: lanes per vector (floats)
#: the vector loops prefetch the next page line by line as they read the
#: current one; compile-time switch
PREFETCH_IN_LOOP = bool(config.PREFETCH)

f32 = ir.FloatType()
i16 = ir.IntType(16)
i32 = ir.IntType(32)
vf = ir.VectorType(f32, W)
vh = ir.VectorType(ir.HalfType(), W)
vi16 = ir.VectorType(i16, W)
vi32 = ir.VectorType(i32, W)


def fmuladd(builder, a, b, c):
    fnty = ir.FunctionType(vf, [vf, vf, vf])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v16f32")
    return builder.call(fn, [a, b, c])


def load_vec(builder, base, idx, kind):
    """16 consecutive elements at ``base[idx]`` widened to <16 x float>."""
    ptr = builder.gep(base, [idx])
    if kind == "f32":
        return builder.load(builder.bitcast(ptr, vf.as_pointer()), align=4)
    raw = builder.load(builder.bitcast(ptr, vi16.as_pointer()), align=2)
    if kind == "f16":
        return builder.fpext(builder.bitcast(raw, vh), vf)
    # bf16: the top half of a float32
    wide = builder.shl(builder.zext(raw, vi32), ir.Constant(vi32, [16] * W))
    return builder.bitcast(wide, vf)


def prefetch(builder, base, idx):
    """Prefetch the line holding ``base[idx]`` into L2 (``prefetcht1``): a
    prefetch into L1 waits for one of L1's few miss buffers, and over
    randomly placed 4 KiB pages it bought nothing here, into L2 about 1.7x."""
    ptr = builder.bitcast(builder.gep(base, [idx]), ir.IntType(8).as_pointer())
    fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [ptr, i32(0), i32(config.PREFETCH_LOCALITY), i32(1)])


def splat(builder, x):
    v = builder.insert_element(ir.Constant(vf, ir.Undefined), x, i32(0))
    return builder.shuffle_vector(v, ir.Constant(vf, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, W), [0] * W))


def reduce_lanes(builder, accs):
    """``n`` vectors (n = 1, 2, 4, 8 or 16) -> one ``<n x float>`` of their
    lane sums, in order.

    Pairwise stages first: a stage pairs vectors (a, b) that hold blocks of
    ``2w`` partial lanes per vector and leaves blocks of ``w`` (lanes of a,
    then of b).  After log2(n) stages one vector holds n blocks of 16/n
    lanes; in-vector stages then halve the blocks until one lane per input is
    left.  About 1 add and 2 shuffles per input vector, against 4 adds and 8
    shuffles for a horizontal sum of each."""
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
        mlo = ir.Constant(ir.VectorType(i32, W), lo)
        mhi = ir.Constant(ir.VectorType(i32, W), hi)
        nxt = []
        for i in range(0, len(accs), 2):
            a, b = accs[i], accs[i + 1]
            nxt.append(builder.fadd(builder.shuffle_vector(a, b, mlo),
                                    builder.shuffle_vector(a, b, mhi)))
        accs = nxt
        w //= 2
    v = accs[0]
    n = v.type.count
    blk = 2 * w                                   # lanes per input now
    while blk > 1:
        ntok = n // blk
        half = blk // 2
        lo = [t * blk + i for t in range(ntok) for i in range(half)]
        hi = [t * blk + half + i for t in range(ntok) for i in range(half)]
        mk = lambda m: ir.Constant(ir.VectorType(i32, len(m)), m)
        v = builder.fadd(builder.shuffle_vector(v, v, mk(lo)),
                         builder.shuffle_vector(v, v, mk(hi)))
        n = ntok * half
        blk = half
    return v


def sub_vector(builder, v, start, n):
    """Lanes ``start .. start + n - 1`` of ``v`` as an ``<n x float>``."""
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n),
                                                    list(range(start, start + n))))


def kind_of(arr, code_is_bf16):
    if arr.dtype == types.float32:
        return "f32"
    if arr.dtype == types.uint16:
        return "bf16" if code_is_bf16 else "f16"
    return None


def ptr_of(context, builder, aryty, ary):
    a = context.make_array(aryty)(context, builder, ary)
    shape = cgutils.unpack_tuple(builder, a.shape, aryty.ndim)
    return a.data, shape


def as_intp(context, builder, sig, args, i):
    return context.cast(builder, args[i], sig.args[i], types.intp)


def py_widen(a, code):
    """float32 view/copy of a page for the plain-Python bodies."""
    import numpy as np
    if a.dtype == np.float32:
        return a
    if code == config.DTYPE_BF16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.view(np.float16).astype(np.float32)


def intrinsics_by_kind(table, dtype):
    """(for float32 / bf16 pages, for fp16 pages or None without F16C)
    4-tuples of ``table``'s intrinsics for 1..4 heads; ``table`` maps
    (kind, heads) to an intrinsic, ``dtype`` is a page's Numba dtype."""
    if dtype == types.float32:
        q = tuple(table["f32", g] for g in (1, 2, 3, 4))
        return q, q
    q = tuple(table["bf16", g] for g in (1, 2, 3, 4))
    if config.F16C:
        return q, tuple(table["f16", g] for g in (1, 2, 3, 4))
    return q, None
