"""Arrays backed by transparent huge pages.

With THP in "madvise" mode (a common default, and this machine's) a plain
numpy array gets 4 KiB pages, and reading 4 KiB KV pages in random order
then costs a TLB miss each.  The daemon's NAND array is a file mapping that
the page cache backs with large folios (csdemu.drive.flash.nand), so benchmarks
of the kernels give their in-process pools and the arrays they compare
against the same treatment.
"""

import mmap

import numpy as np


def hugepage_empty(shape, dtype):
    """An uninitialised C-contiguous array in an anonymous mapping advised
    MADV_HUGEPAGE (where the platform has it)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    mm = mmap.mmap(-1, max(n * dtype.itemsize, 1), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:                 # a kernel without THP
            pass
    return np.frombuffer(mm, dtype, count=n).reshape(shape)


def hugepage_copy(a):
    out = hugepage_empty(a.shape, a.dtype)
    out[...] = a
    return out
