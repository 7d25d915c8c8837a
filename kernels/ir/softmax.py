"""Softmax helpers: :func:`exp_nonpos`, a vectorizable float32 ``exp`` for
``x <= 0``, and :func:`row_max`, a 16-lane max.  Numba's ``np.exp`` on
float32 is a scalar libm call (~5 ns; no SVML here), which was a quarter of
the dense kernel's time.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .. import config
from .vecir import W, i32, load_vec, ptr_of, splat


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
    from ..widen import _ir_bits_to_f32
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
        data, _ = ptr_of(context, builder, sig.args[0], args[0])
        nv = context.cast(builder, args[1], sig.args[1], types.intp)
        intp = nv.type
        first = builder.load(data)
        mp = cgutils.alloca_once_value(builder, splat(builder, first))
        n16 = builder.udiv(nv, intp(W))
        with cgutils.for_range(builder, n16) as loop:
            x = load_vec(builder, data, builder.mul(loop.index, intp(W)), "f32")
            m = builder.load(mp)
            builder.store(builder.select(builder.fcmp_ordered(">", x, m), x, m), mp)
        m = builder.load(mp)
        w = W // 2
        while w >= 1:                       # horizontal, log2(16) steps
            sh = builder.shuffle_vector(m, m, ir.Constant(ir.VectorType(i32, W),
                                                          [(i + w) % W for i in range(W)]))
            m = builder.select(builder.fcmp_ordered(">", sh, m), sh, m)
            w //= 2
        sp = cgutils.alloca_once_value(builder, builder.extract_element(m, i32(0)))
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


@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def exp_shifted(src, dst, n):
    """``dst[:n] = exp(src[:n] - m)``, ``m = max(src[:n])`` (0 when n == 0);
    -> (m, sum).  The numerators of a safe softmax; ``dst`` may be ``src``."""
    m = row_max(src, n) if n > 0 else np.float32(0.0)
    s = np.float32(0.0)
    for t in range(n):
        p = exp_nonpos(src[t] - m)
        dst[t] = p
        s += p
    return m, s
