"""Per-command page work, compiled: turn a PPN list into NAND operations.

These kernels keep the hot path of a 32-page command to a couple of Numba
calls instead of a dozen small NumPy ones. They know the PPN layout (see
geometry.py) but nothing about the FTL's tables.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def is_run(ppns) -> bool:
    """True if ppns is p0, p0+1, ..., p0+n-1 (one slice of the backing file)."""
    for i in range(1, ppns.shape[0]):
        if ppns[i] != ppns[i - 1] + 1:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def read_ops(ppns, S, C, L, page_bytes, ch_out, lun_out, nb_out, page_op):
    """One read op per run of consecutive pages in the same flash page
    (NVMeVirt's "aggregate read io in same flash page"). Returns the op count;
    page_op[i] is the op that reads page i."""
    nops = -1
    prev_fp = -1
    for i in range(ppns.shape[0]):
        p = ppns[i]
        fp = p // S
        if fp != prev_fp:
            nops += 1
            ch_out[nops] = fp % C
            lun_out[nops] = (fp // C) % L
            nb_out[nops] = page_bytes
            prev_fp = fp
        else:
            nb_out[nops] += page_bytes
        page_op[i] = nops
    return nops + 1


@numba.njit(cache=True, nogil=True)
def program_ops(ppns, S, C, L, flash_page_bytes, ch_out, lun_out, nb_out, page_op):
    """One program op per page that completes its flash page (the last of its
    S pages). Pages of a still-open flash page get page_op -1: they wait in
    the write buffer until a later command completes the flash page."""
    nops = 0
    for i in range(ppns.shape[0]):
        p = ppns[i]
        if p % S == S - 1:
            fp = p // S
            ch_out[nops] = fp % C
            lun_out[nops] = (fp // C) % L
            nb_out[nops] = flash_page_bytes
            nops += 1
    # second pass: pages map to the op of their flash page within this batch
    k = 0
    for i in range(ppns.shape[0]):
        page_op[i] = -1
    j = 0
    for i in range(ppns.shape[0]):
        p = ppns[i]
        if p % S == S - 1:
            fp = p // S
            # earlier pages of the same flash page (in this batch) share op k
            jj = i
            while jj >= j and ppns[jj] // S == fp:
                page_op[jj] = k
                jj -= 1
            j = i + 1
            k += 1
    return nops


def scratch(n: int):
    """Preallocated op arrays for up to n pages."""
    return (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64))
