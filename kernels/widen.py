"""Widening of 16-bit storage formats to float32 with integer bit operations.

Numba 0.68 cannot load or compute ``float16`` on the CPU
(``NotImplementedError: float16``), so pages are read as ``uint16`` bit
patterns and widened here, a page at a time, into a small float32 scratch.

fp16 (IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits), ``em = h & 0x7fff``:

* normal (``0x0400 <= em < 0x7c00``): ``bits32 = (em << 13) + ((127 - 15) << 23)``
* subnormal or zero (``em < 0x0400``): the value is ``em * 2**-24`` exactly;
  computed as ``float32(em) * 2**-24`` (exact: ``em`` < 2**10 and the result is
  a normal float32), then taken back to bits
* inf / nan (``em >= 0x7c00``): ``bits32 = (em << 13) | 0x7f800000`` -- the
  mantissa (NaN payload) is kept, as numpy's own software conversion does
* the sign is OR-ed in last: ``(h & 0x8000) << 16`` (so -0.0 stays -0.0).

With F16C (``config.F16C``, the default when the host has it) fp16 is widened
instead by LLVM's ``fpext half`` -> ``vcvtph2ps``, 16 elements per
instruction (about 0.04 vs 0.12 ns/element on the bench machine); both
paths are tested bit-exact over all 65536 patterns.

Every branch is a select on values computed for every element, so LLVM
vectorizes the loop.  bf16 is the top half of a float32: ``bits32 = h << 16``.

The scalar bit casts ``bits_to_f32`` / ``f32_to_bits`` are Numba intrinsics
(an LLVM ``bitcast``) with plain-Python fallbacks, so everything here also runs
under ``NUMBA_DISABLE_JIT=1``.
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic, overload

from . import config

DTYPE_F32 = config.DTYPE_F32
DTYPE_F16 = config.DTYPE_F16
DTYPE_BF16 = config.DTYPE_BF16

_TWO_M24 = np.float32(2.0 ** -24)


# --- scalar bit casts ----------------------------------------------------------

def bits_to_f32(b):
    """Reinterpret the low 32 bits of integer ``b`` as a float32."""
    return np.array(int(b) & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]


def f32_to_bits(x):
    """Bit pattern of float32 ``x`` as a (non-negative) integer."""
    return int(np.array(x, dtype=np.float32).view(np.uint32)[()])


@intrinsic
def _ir_bits_to_f32(typingctx, b):
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        w = sig.args[0].bitwidth
        if w > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif w < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(b), codegen


@intrinsic
def _ir_f32_to_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        v = builder.bitcast(args[0], ir.IntType(32))
        return builder.zext(v, ir.IntType(64))

    return types.int64(x), codegen


@overload(bits_to_f32, jit_options={"fastmath": config.FASTMATH})
def _ol_bits_to_f32(b):
    if isinstance(b, types.Integer):
        return lambda b: _ir_bits_to_f32(b)
    return None


@overload(f32_to_bits, jit_options={"fastmath": config.FASTMATH})
def _ol_f32_to_bits(x):
    if isinstance(x, types.Float):
        return lambda x: _ir_f32_to_bits(np.float32(x))
    return None


# --- element loops (1-D, contiguous) ----------------------------------------

# Everything is spelled in uint32 on purpose: Numba promotes small-int
# arithmetic to 64 bits, and 64-bit lanes halve the vector width (this loop
# ran at 0.34 ns/element with int64, 0.12 ns/element like this, AVX-512).

@njit(fastmath=config.FASTMATH, cache=config.CACHE, inline="always")
def f16_bits_to_f32(src_h):
    """float32 of fp16 bits ``src_h`` with integer bit operations only (the
    path without F16C); every branch is a select, so loops vectorize."""
    two_m24 = np.float32(5.9604644775390625e-08)  # 2**-24
    h = np.uint32(src_h)
    em = np.uint32(h & np.uint32(0x7FFF))
    sgn = np.uint32((h & np.uint32(0x8000)) << np.uint32(16))
    # subnormal/zero: em * 2**-24 via int->float (exact, immune to DAZ)
    sub = np.uint32(f32_to_bits(np.float32(np.int32(em)) * two_m24))
    sh = np.uint32(em << np.uint32(13))
    nrm = np.uint32(sh + np.uint32(0x38000000))     # rebias 15 -> 127
    nan = np.uint32(sh | np.uint32(0x7F800000))     # inf/nan, payload kept
    b = nrm if em >= np.uint32(0x0400) else sub
    b = nan if em >= np.uint32(0x7C00) else b
    return bits_to_f32(np.uint32(b | sgn))


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def widen_f16_1d_bits(src, dst):
    """dst[i] = float32(fp16 bits src[i]) for a 1-D uint16 ``src``, integer
    bit operations only (the path without F16C)."""
    for i in range(src.shape[0]):
        dst[i] = f16_bits_to_f32(src[i])


@intrinsic
def _ir_f16_to_f32(typingctx, b):
    """fp16 bits (uint16) -> float32 with LLVM's ``fpext half``: one
    ``vcvtph2ps`` per vector with F16C (only used when ``config.F16C``)."""
    if not isinstance(b, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        w = sig.args[0].bitwidth
        if w > 16:
            v = builder.trunc(v, ir.IntType(16))
        return builder.fpext(builder.bitcast(v, ir.HalfType()), ir.FloatType())

    return types.float32(b), codegen


def f16_to_f32(h):
    """float32 value of fp16 bits ``h`` (the CPU's conversion when jitted)."""
    return np.float32(np.array(int(h) & 0xFFFF, dtype=np.uint16).view(np.float16)[()])


@overload(f16_to_f32, jit_options={"fastmath": config.FASTMATH})
def _ol_f16_to_f32(h):
    if isinstance(h, types.Integer):
        return lambda h: _ir_f16_to_f32(h)
    return None


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def widen_f16_1d_hw(src, dst):
    """dst[i] = float32(fp16 bits src[i]) with the CPU's conversion (F16C).
    Bit-exact like the integer path; NaNs keep sign and payload (the quiet bit
    is set, as hardware conversions do)."""
    for i in range(src.shape[0]):
        dst[i] = f16_to_f32(src[i])


if config.F16C:
    widen_f16_1d = widen_f16_1d_hw
else:
    widen_f16_1d = widen_f16_1d_bits
#: ``widen_f16_1d(src, dst)``: the fp16 widening the kernels use (hardware
#: conversion with F16C, integer bit operations otherwise).


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def widen_bf16_1d(src, dst):
    """dst[i] = float32(bf16 bits src[i]) for a 1-D uint16 ``src``."""
    for i in range(src.shape[0]):
        dst[i] = bits_to_f32(np.uint32(np.uint32(src[i]) << np.uint32(16)))


@njit(fastmath=config.FASTMATH, cache=config.CACHE)
def copy_f32_1d(src, dst):
    for i in range(src.shape[0]):
        dst[i] = src[i]


# --- dtype-dispatched page widening -----------------------------------------

def widen_elem(x, code):
    """float32 of one stored element: float32 as is, uint16 as fp16 bits
    (``code == DTYPE_F16``) or bf16 bits. For loops that index a pool in
    place: slicing a row out of a pool builds a view, and each view costs two
    atomic reference counts, which was most of SparF's row gathers."""
    if isinstance(x, (np.float32, float)):
        return np.float32(x)
    if code == DTYPE_F16:
        return f16_to_f32(x)
    return bits_to_f32(int(x) << 16)


@overload(widen_elem, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_widen_elem(x, code):
    if x == types.float32:
        return lambda x, code: x
    if x == types.uint16:
        if config.F16C:
            def impl(x, code):
                if code == DTYPE_F16:
                    return f16_to_f32(x)
                return bits_to_f32(np.uint32(np.uint32(x) << np.uint32(16)))
        else:
            def impl(x, code):
                if code == DTYPE_F16:
                    return f16_bits_to_f32(x)
                return bits_to_f32(np.uint32(np.uint32(x) << np.uint32(16)))
        return impl
    return None


def widen_into(src, code, dst):
    """Widen ``src`` (uint16 fp16/bf16 bits, or float32) into float32 ``dst``.

    ``src`` and ``dst`` are C-contiguous with the same number of elements;
    ``code`` is one of ``config.DTYPE_*``.  The dispatch on ``src.dtype``
    happens at compile time (Numba ``overload``); this Python body is the
    ``NUMBA_DISABLE_JIT`` fallback.
    """
    n = src.size
    s = src.reshape(n)
    d = dst.reshape(n)
    if src.dtype == np.float32:
        d[:] = s
    elif code == DTYPE_F16:
        widen_f16_1d(s, d)
    else:
        widen_bf16_1d(s, d)


@overload(widen_into, jit_options={"fastmath": config.FASTMATH})
def _ol_widen_into(src, code, dst):
    if src.dtype == types.float32:
        def impl(src, code, dst):
            n = src.size
            copy_f32_1d(src.reshape(n), dst.reshape(n))
        return impl
    if src.dtype == types.uint16:
        def impl(src, code, dst):
            n = src.size
            if code == DTYPE_F16:
                widen_f16_1d(src.reshape(n), dst.reshape(n))
            else:
                widen_bf16_1d(src.reshape(n), dst.reshape(n))
        return impl
    return None


# --- public helpers for whole arrays ------------------------------------------

def widen_fp16(a):
    """float32 copy of an array of fp16 bit patterns (uint16, any shape)."""
    a = np.ascontiguousarray(a)
    if a.dtype != np.uint16:
        raise TypeError("widen_fp16 expects uint16 bit patterns, got %s" % a.dtype)
    out = np.empty(a.shape, np.float32)
    widen_f16_1d(a.reshape(-1), out.reshape(-1))
    return out


def widen_bf16(a):
    """float32 copy of an array of bf16 bit patterns (uint16, any shape)."""
    a = np.ascontiguousarray(a)
    if a.dtype != np.uint16:
        raise TypeError("widen_bf16 expects uint16 bit patterns, got %s" % a.dtype)
    out = np.empty(a.shape, np.float32)
    widen_bf16_1d(a.reshape(-1), out.reshape(-1))
    return out


def to_bf16_bits(x):
    """Round float32 ``x`` to bf16 (round to nearest even) as uint16 bits.

    Test/layout helper (plain numpy); NaNs stay NaN (quiet bit forced).
    """
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    isnan = np.isnan(np.asarray(x, dtype=np.float32))
    rounded = np.where(isnan, (b >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)
