"""The NAND array: backing files, whole-page program/read, erase, OOB records.

Files in the data directory (all created sparse with ftruncate):

    nand.data    total_pages x page_bytes, indexed by PPN (see geometry.py:
                 PPNs are in channel-first write order, so a line written
                 sequentially is one contiguous byte range)
    nand.oob     total_pages x OOB_DTYPE (24 B): the spare-area record of each page
    nand.blocks  total_blocks x BLOCK_DTYPE: erase count and bad-block mark

Rules enforced here, as on real NAND:
* a page is programmed whole, once, and only above its block's write pointer
  (erase-before-program; pages of a block are programmed in increasing order);
* erase works on whole blocks; bad blocks are never programmed or erased;
* every programmed page carries an OOB record (logical address, write
  sequence number, CRC32 of the data, stream id). An all-zero record means
  "erased", so ``seq`` starts at 1.

All files are mapped MAP_SHARED, so a write is in the kernel page cache the
moment `program` returns: it survives kill -9 of the process. `sync()`
(msync) makes it survive a host crash too. `view()` / `channel_view()` give
zero-copy NumPy views of physical pages for readers such as the attention
engine; a view stays valid until its block is erased and reprogrammed.
"""
from __future__ import annotations

import mmap
import os
import zlib
from pathlib import Path

import numpy as np

from csdemu.drive.flash.datapath import is_run, program_meta
from csdemu.drive.flash.geometry import Geometry

OOB_DTYPE = np.dtype([("lpn", "<i8"),       # logical page (or a stream's key)
                      ("seq", "<u8"),       # global write sequence number, >= 1
                      ("crc", "<u4"),       # zlib.crc32 of the page data
                      ("stream", "<u2"),    # allocation stream (0 host, 1 GC, >= 2 user)
                      ("flags", "<u2")])    # bit 0: record present
assert OOB_DTYPE.itemsize == 24

BLOCK_DTYPE = np.dtype([("erase_count", "<u4"), ("bad", "u1"), ("_pad", "u1", (3,))])
assert BLOCK_DTYPE.itemsize == 8

BAD_NONE, BAD_FACTORY, BAD_PROGRAM, BAD_ERASE = 0, 1, 2, 3
OOB_PRESENT = 1


class NandError(RuntimeError):
    """A request that real NAND would refuse (reprogram without erase, ...)."""


def _map_file(path: Path, nbytes: int, create: bool):
    flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        elif os.fstat(fd).st_size != nbytes:
            raise NandError(f"{path}: size {os.fstat(fd).st_size} does not match the "
                            f"profile's geometry ({nbytes} bytes)")
        mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            # The attention kernels read 4 KiB pages in FTL order, a TLB miss
            # each on 4 KiB mappings; file systems with large folios (ext4
            # here) map the page cache by 2 MiB, more of it when advised.
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:             # a kernel without THP: 4 KiB it is
                pass
    except BaseException:
        os.close(fd)
        raise
    return fd, mm


class NandArray:
    DATA, OOB, BLOCKS = "nand.data", "nand.oob", "nand.blocks"

    def __init__(self, data_dir, geom: Geometry, *, create: bool):
        self.dir = Path(data_dir)
        self.geom = geom
        g = geom
        self.page_bytes = g.page_bytes
        self._fds, self._mms = [], []
        specs = ((self.DATA, g.total_pages * g.page_bytes),
                 (self.OOB, g.total_pages * OOB_DTYPE.itemsize),
                 (self.BLOCKS, g.total_blocks * BLOCK_DTYPE.itemsize))
        try:
            for name, size in specs:
                fd, mm = _map_file(self.dir / name, size, create)
                self._fds.append(fd)
                self._mms.append(mm)
        except BaseException:
            self.close()
            raise
        self.data = np.frombuffer(self._mms[0], np.uint8).reshape(g.total_pages, g.page_bytes)
        self.oob = np.frombuffer(self._mms[1], OOB_DTYPE)
        self._oob64 = np.frombuffer(self._mms[1], np.int64).reshape(g.total_pages, 3)
        self._geo = np.array([g.S, g.blocks_per_line, g.pages_per_line], np.int64)
        self.blocks = np.frombuffer(self._mms[2], BLOCK_DTYPE)
        # write pointer of every block (next programmable page-in-block), rebuilt
        # from the OOB records so it survives restarts
        self.wp = np.zeros(g.total_blocks, np.int32)
        prog = np.flatnonzero(self.oob["flags"] & OOB_PRESENT)
        if prog.size:
            np.maximum.at(self.wp, g.block_of(prog), (g.page_in_block(prog) + 1).astype(np.int32))
        self.pages_programmed = 0
        self.pages_read = 0
        self.erases = 0

    # -- program / read -------------------------------------------------------
    def program(self, ppns: np.ndarray, pages: np.ndarray, lpns, seqs, stream: int) -> None:
        """Program whole pages: ``pages`` is (n, page_bytes) uint8, ppns distinct,
        ``seqs`` consecutive (only its first value is used)."""
        n = ppns.shape[0]
        if n == 0:
            return
        crc = zlib.crc32
        crcs = np.fromiter((crc(pages[i]) for i in range(n)), np.int64, n)
        lp = lpns if isinstance(lpns, np.ndarray) else np.asarray(lpns, np.int64)
        err = program_meta(ppns, self._geo, self.wp, self.blocks["bad"], self._oob64,
                           lp.astype(np.int64, copy=False), int(np.asarray(seqs).flat[0]),
                           crcs, int(stream))
        if err >= 0:
            p = int(ppns[err // 2])
            raise NandError(f"program of PPN {p}: " + ("bad block" if err % 2 else
                                                         "page already programmed (erase first)"))
        p0 = int(ppns[0])
        contiguous = n == 1 or (int(ppns[-1]) - p0 == n - 1 and is_run(ppns))
        # pwrite, not stores through the mapping: one syscall per run instead
        # of a page fault per fresh page. Both use the same page cache, so
        # the mapping sees the data at once.
        fd, pb = self._fds[0], self.page_bytes
        if contiguous:
            os.pwrite(fd, pages if pages.flags.c_contiguous else np.ascontiguousarray(pages), p0 * pb)
        else:
            brk = np.flatnonzero(np.diff(ppns) != 1) + 1
            lo = 0
            for hi in brk.tolist() + [n]:
                os.pwrite(fd, np.ascontiguousarray(pages[lo:hi]), int(ppns[lo]) * pb)
                lo = hi
        self.pages_programmed += n

    def view(self, ppn0: int, n: int) -> np.ndarray:
        """Zero-copy (n, page_bytes) view of PPNs ppn0 .. ppn0+n-1."""
        return self.data[ppn0:ppn0 + n]

    def page(self, ppn: int) -> np.ndarray:
        """Zero-copy view of one physical page."""
        return self.data[ppn]

    def channel_view(self, ch: int) -> np.ndarray:
        """Zero-copy strided view of every page on channel `ch`, shaped
        (lines, flash_pages_per_block, planes, ways, pages_per_flash_page, page_bytes)."""
        g = self.geom
        v = self.data.reshape(g.lines, g.FP, g.planes, g.ways, g.channels, g.S, g.page_bytes)
        return v[:, :, :, :, ch]

    def read(self, ppns: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Copy pages out: (n, page_bytes)."""
        if out is None:
            out = np.empty((ppns.shape[0], self.page_bytes), np.uint8)
        np.take(self.data, ppns, axis=0, out=out)
        return out

    def verify(self, ppns: np.ndarray) -> np.ndarray:
        """True where the page's data matches its OOB CRC (not torn)."""
        crc = zlib.crc32
        data, oob = self.data, self.oob
        ok = np.empty(ppns.shape[0], bool)
        for i, p in enumerate(ppns.tolist()):
            ok[i] = bool(oob[p]["flags"] & OOB_PRESENT) and crc(data[p]) == int(oob[p]["crc"])
        return ok

    def programmed(self, ppns) -> np.ndarray:
        return (self.oob["flags"][ppns] & OOB_PRESENT) != 0

    # -- erase ----------------------------------------------------------------
    def erase(self, blk: int) -> None:
        """Erase one block (a bad block is refused)."""
        if self.blocks["bad"][blk]:
            raise NandError(f"erase of bad block {blk}")
        self.oob[self.geom.block_pages(blk)] = np.zeros(1, OOB_DTYPE)
        self.wp[blk] = 0
        self.blocks["erase_count"][blk] += 1
        self.erases += 1

    def erase_line(self, line: int) -> np.ndarray:
        """Erase every good block of a line; returns the erased block ids.
        The OOB records of the line's bad blocks are cleared too: once a line
        is collected nothing in it is referenced any more."""
        g = self.geom
        blks = g.line_blocks(line)
        good = blks[self.blocks["bad"][blks] == 0]
        lo = line * g.pages_per_line
        self.oob[lo:lo + g.pages_per_line] = np.zeros(1, OOB_DTYPE)
        self.wp[good] = 0
        self.blocks["erase_count"][good] += 1
        self.erases += good.size
        return good

    def mark_bad(self, blk, reason: int) -> None:
        self.blocks["bad"][blk] = reason

    @property
    def bad(self) -> np.ndarray:
        return self.blocks["bad"]

    @property
    def erase_count(self) -> np.ndarray:
        return self.blocks["erase_count"]

    # -- durability -------------------------------------------------------------
    def sync(self) -> None:
        """msync every mapping: written pages and OOB survive a host crash."""
        for mm in self._mms:
            mm.flush()

    def page_offset(self, ppn: int) -> int:
        """Byte offset of a page in nand.data (for tests that tear pages)."""
        return int(ppn) * self.page_bytes

    def close(self) -> None:
        self.data = self.oob = self.blocks = self._oob64 = None
        for mm in self._mms:
            try:
                mm.close()
            except BufferError:      # a caller still holds a zero-copy view
                pass
        for fd in self._fds:
            os.close(fd)
        self._mms, self._fds = [], []
