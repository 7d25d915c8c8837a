"""Per-command page work, compiled: turn a PPN list into NAND operations.

These kernels keep the hot path of a 32-page command to a couple of Numba
calls instead of a dozen small NumPy ones. They know the PPN layout (see
geometry.py) but nothing about the FTL's tables.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from csdemu.drive.flash.timing import _run


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


def scratch(n: int) -> np.ndarray:
    """Preallocated op rows for up to n pages: ch, lun, nbytes, page_op, done, start."""
    return np.empty((6, n), np.int64)


@numba.njit(cache=True, nogil=True)
def read_cmd(ppns, geo, start, floor, st, iv, prm, scr, tr):
    """A whole host read in one call: if every page is mapped, charge NAND
    reads plus the PCIe transfer of each page and return (last arrival at
    the host, pages form one contiguous run). Returns (-1, False) at once if
    some page is unmapped (the caller takes the general path).
    geo = [S, channels, ways, page_bytes]; scr = scratch(n); tr the trace
    ring (trace_ring.py)."""
    n = ppns.shape[0]
    run = True
    for i in range(n):
        if ppns[i] < 0:
            return -1, False
        if i > 0 and ppns[i] != ppns[i - 1] + 1:
            run = False
    C, L = geo[1], geo[2]
    k = read_ops(ppns, geo[0], C, L, geo[3], scr[0], scr[1], scr[2], scr[3])
    scr[5, 0] = start
    _run(0, scr[0, :k], scr[1, :k], scr[2, :k], scr[5, :1], True, floor, st, iv, C, L, prm,
         scr[4, :k], tr)
    mx = start
    for j in range(k):
        if scr[4, j] > mx:
            mx = scr[4, j]
    return mx, run


@numba.njit(cache=True, nogil=True)
def read_into(l2p, lpn0, n, data, out, geo, start, floor, st, iv, prm, scr, tr):
    """read_cmd for LPNs lpn0..lpn0+n-1 that also moves the pages into `out`
    (the host's buffer): the whole mapped read in one call. -> done, or -1
    (nothing charged or copied) if some page is unmapped or `out` is short."""
    pb = data.shape[1]
    if out.shape[0] < n * pb:
        return -1
    ppns = l2p[lpn0:lpn0 + n]
    done, _ = read_cmd(ppns, geo, start, floor, st, iv, prm, scr, tr)
    if done < 0:
        return -1
    for i in range(n):
        _memcpy(out, i * pb, data, ppns[i] * pb, pb)
    return done


@intrinsic
def _memcpy(typingctx, dst, dst_off, src, src_off, nbytes):
    """memcpy(dst + dst_off, src + src_off, nbytes) for C-contiguous uint8
    arrays; the caller checks the bounds. Numba's slice assignment of a 4 KiB
    page takes about three times as long (it guards against overlap)."""
    if not all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == types.uint8
               for a in (dst, src)):
        return None

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.make_array(sig.args[2])(context, builder, args[2])
        cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]),
                           builder.gep(s.data, [args[3]]), args[4], 1)
    return types.void(dst, dst_off, src, src_off, nbytes), codegen


@numba.njit(cache=True, nogil=True)
def program_meta(ppns, geo, wp, bad, oob, lpns, seq0, crcs, stream):
    """NAND bookkeeping of one program batch: check that every page is above
    its block's write pointer and not in a bad block, then write the OOB
    records (oob is the (pages, 3) int64 view of nand.oob: lpn, seq,
    crc | stream << 32 | present << 48) and advance the write pointers.
    geo = [S, blocks_per_line, pages_per_line]. Returns -1, or the index of
    the first offending page * 2 (+1 if the block is bad)."""
    S, bpl, ppl = geo[0], geo[1], geo[2]
    n = ppns.shape[0]
    for i in range(n):
        p = ppns[i]
        pos = p % ppl
        blk = (p // ppl) * bpl + (p // S) % bpl
        pib = (pos // (S * bpl)) * S + pos % S
        if bad[blk] != 0:
            return 2 * i + 1
        if pib < wp[blk]:
            return 2 * i
        for j in range(i):                     # the same page twice in one batch
            if ppns[j] == p:
                return 2 * i
    for i in range(n):
        p = ppns[i]
        pos = p % ppl
        blk = (p // ppl) * bpl + (p // S) % bpl
        pib = (pos // (S * bpl)) * S + pos % S
        oob[p, 0] = lpns[i]
        oob[p, 1] = seq0 + i
        oob[p, 2] = crcs[i] | (stream << 32) | (1 << 48)
        if pib + 1 > wp[blk]:
            wp[blk] = pib + 1
    return -1


@numba.njit(cache=True, nogil=True)
def remap(l2p, lpn0, ppns, valid, vpc, ppl):
    """Point lpn0.. at ppns: invalidate the old pages, validate the new ones,
    keep the per-line valid counts."""
    for i in range(ppns.shape[0]):
        old = l2p[lpn0 + i]
        if old >= 0:
            valid[old] = False
            vpc[old // ppl] -= 1
        p = ppns[i]
        l2p[lpn0 + i] = p
        valid[p] = True
        vpc[p // ppl] += 1


@numba.njit(cache=True, nogil=True)
def program_cmd(ppns, geo, start, floor, st, iv, prm, scr, rel, tr):
    """Charge the programs of a batch (one per completed flash page) and
    write each page's write-buffer release time into rel; returns the last
    program end. geo = [S, channels, ways, flash_page_bytes]."""
    n = ppns.shape[0]
    k = program_ops(ppns, geo[0], geo[1], geo[2], geo[3], scr[0], scr[1], scr[2], scr[3])
    scr[5, 0] = start
    _run(1, scr[0, :k], scr[1, :k], scr[2, :k], scr[5, :1], False, floor, st, iv, geo[1],
         geo[2], prm, scr[4, :k], tr)
    mx = start
    for i in range(n):
        o = scr[3, i]
        r = scr[4, o] if o >= 0 else start
        rel[i] = r
        if r > mx:
            mx = r
    return mx
