"""Software prefetch of a whole page (LLVM ``llvm.prefetch``).

Pages of a pool are scattered (the FTL places them), and the hardware
prefetchers stop at 4 KiB boundaries, so a kernel that walks pages in
page-table order waits on a cold miss at the start of every page: on the
bench machine a parallel sum over randomly ordered 4 KiB pages ran at about
half the sequential streaming rate.  The kernels call :func:`prefetch_page` on
the *next* page they will read before working on the current one.

Under ``NUMBA_DISABLE_JIT`` it is a no-op.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .. import config

LINE = 64


def prefetch_page(page):
    """Hint the CPU to fetch every cache line of C-contiguous ``page``."""
    return None


@intrinsic
def _prefetch_line(typingctx, arr, offset):
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        base = builder.bitcast(ary.data, i8p)
        ptr = builder.gep(base, [args[1]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # rw = 0 (read), cache type 1 (data)
        builder.call(fn, [ptr, i32(0), i32(config.PREFETCH_LOCALITY), i32(1)])
        return context.get_dummy_value()

    return types.none(arr, offset), codegen


@overload(prefetch_page, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_prefetch_page(page):
    if isinstance(page, types.Array):
        if not config.PREFETCH:
            return lambda page: None

        def impl(page):
            nbytes = page.size * page.itemsize
            for off in range(0, nbytes, LINE):
                _prefetch_line(page, off)
        return impl
    return None


def prefetch_row(pool, p, row):
    """Hint the CPU to fetch row ``row`` of page ``p`` of the 3-D C-contiguous
    ``pool``, addressed by offset: slicing the row out would build a view,
    whose reference counting costs more than the prefetch saves."""
    return None


@overload(prefetch_row, jit_options={"fastmath": config.FASTMATH}, inline="always")
def _ol_prefetch_row(pool, p, row):
    if isinstance(pool, types.Array):
        if not config.PREFETCH:
            return lambda pool, p, row: None

        def impl(pool, p, row):
            rowb = pool.shape[2] * pool.itemsize
            base = (p * pool.shape[1] + row) * rowb
            for off in range(0, rowb, LINE):
                _prefetch_line(pool, base + off)
        return impl
    return None
