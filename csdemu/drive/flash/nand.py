"""The NAND array: backing files, whole-page program/read, erase, OOB records.

Files in the data directory (0600):

    nand.data    total_pages x page_bytes, indexed by PPN (see geometry.py:
                 PPNs are in channel-first write order, so a line written
                 sequentially is one contiguous byte range)
    nand.oob     total_pages x OOB_DTYPE (24 B, oob.py): the spare-area record of each page
    nand.blocks  total_blocks x BLOCK_DTYPE: erase count and bad-block mark

Rules enforced here, as on real NAND:
* a page is programmed whole, once, and only above its block's write pointer
  (erase-before-program; pages of a block are programmed in increasing order);
* erase works on whole blocks; bad blocks are never programmed or erased;
* every programmed page carries an OOB record (logical address, write
  sequence number, CRC32, stream id). An all-zero record means "erased", so
  ``seq`` starts at 1. The CRC covers the record's lpn, seq and stream, then
  the data (layout 2; layout 1 drives covered the data alone), so a flipped
  byte in either is caught: `check()` on reads, `verify()` at recovery.

Thin backing: nand.data and nand.oob are sparse, and a line's ranges of both
are reserved (fallocate) when the line is first programmed, so no store ever
goes through the mapping into a hole (on a full file system that is a
SIGBUS, not an error). Reserving or writing fails with BackingError, and
nothing of the failed program is left behind. ``preallocate`` reserves both
files whole at once (a full disk is found at start). nand.blocks is small
and always reserved whole. Records are read at open with pread, a bounded
chunk at a time and skipping holes (oob.py), never through the mapping.

All files are mapped MAP_SHARED, so a write is in the kernel page cache the
moment `program` returns: it survives kill -9 of the process. `sync()`
(msync) makes it survive a host crash too. `view()` / `channel_view()` give
zero-copy NumPy views of physical pages for readers such as the attention
engine; a view stays valid until its block is erased and reprogrammed.
What the OOB mapping holds in memory is bounded by residency.py.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from csdemu.drive.flash.datapath import is_run, program_meta
from csdemu.drive.flash.files import BackingError, DataDirError, map_file, pwrite_all, reserve
from csdemu.drive.flash.geometry import Geometry
from csdemu.drive.flash.oob import (OOB_DTYPE, OOB_PRESENT, OOB_TORN, OOB_UNCORRECTABLE,
                                    record_chunks, records_i64)
from csdemu.drive.flash.residency import DataPages, MappedBudget

BLOCK_DTYPE = np.dtype([("erase_count", "<u4"), ("bad", "u1"), ("_pad", "u1", (3,))])
assert BLOCK_DTYPE.itemsize == 8

BAD_NONE, BAD_FACTORY, BAD_PROGRAM, BAD_ERASE = 0, 1, 2, 3
_CRC_MASK = 0xFFFF_FFFF


class NandError(RuntimeError):
    """A request that real NAND would refuse (reprogram without erase, ...)."""


class LayoutError(NandError, DataDirError):
    """The backing files do not have the sizes the profile's geometry gives."""


_CHECK_RUN = 4096


class NandArray:
    DATA, OOB, BLOCKS = "nand.data", "nand.oob", "nand.blocks"

    def __init__(self, data_dir, geom: Geometry, *, create: bool, preallocate: bool = False,
                 seeded_crc: bool = True):
        self.dir = Path(data_dir)
        self.geom = geom
        g = geom
        self.page_bytes = g.page_bytes
        self.seeded_crc = seeded_crc        # layout 2: the CRC covers lpn and seq too
        self._fds, self._mms = [], []
        specs = ((self.DATA, g.total_pages * g.page_bytes),
                 (self.OOB, g.total_pages * OOB_DTYPE.itemsize),
                 (self.BLOCKS, g.total_blocks * BLOCK_DTYPE.itemsize))
        try:
            for name, size in specs:
                fd, mm = map_file(self.dir / name, size, create, LayoutError)
                self._fds.append(fd)
                self._mms.append(mm)
            # bad marks and erase counts are stored through the mapping anywhere,
            # any time: the file is 0.2 % of nand.oob, so it is never thin
            reserve(self._fds[2], 0, specs[2][1], self.BLOCKS)
            self.backed = np.zeros(g.lines, bool)   # line's data and OOB ranges reserved
            if preallocate:
                self.preallocate()
            elif not create:
                self._probe_backed()
        except BaseException:
            self.close()
            raise
        self.data = np.frombuffer(self._mms[0], np.uint8).reshape(g.total_pages, g.page_bytes)
        self.oob = np.frombuffer(self._mms[1], OOB_DTYPE)
        self._oob64 = np.frombuffer(self._mms[1], np.int64).reshape(g.total_pages, 3)
        self._geo = np.array([g.S, g.blocks_per_line, g.pages_per_line], np.int64)
        self.blocks = np.frombuffer(self._mms[2], BLOCK_DTYPE)
        # pages whose CRC has matched since they were programmed or last
        # checked: reads check each page once per power cycle (see check())
        self.verified = np.zeros(g.total_pages, bool)
        # write pointer of every block (next programmable page-in-block),
        # rebuilt from the OOB records so it survives restarts; any non-zero
        # record (a corrupt one too) occupies its page
        self.wp = np.zeros(g.total_blocks, np.int32)
        if not create:
            for p0, recs in self.record_chunks():
                prog = p0 + np.flatnonzero(records_i64(recs).any(axis=1))
                if prog.size:
                    np.maximum.at(self.wp, g.block_of(prog),
                                  (g.page_in_block(prog) + 1).astype(np.int32))
        self.mapped = MappedBudget(self._mms[1])
        self.data_pages = DataPages(self._mms[0], self._fds[0], g.page_bytes)
        self.pages_programmed = 0
        self.pages_read = 0
        self.erases = 0

    # -- backing space ----------------------------------------------------------
    def preallocate(self) -> None:
        """Reserve all of nand.data and nand.oob now (qemu-img's
        preallocation=falloc): a disk too small is found here, not mid-run."""
        for i, name in ((0, self.DATA), (1, self.OOB)):
            reserve(self._fds[i], 0, len(self._mms[i]), name)
        self.backed[:] = True

    def _probe_backed(self) -> None:
        """Which lines an earlier run reserved (no hole in either range), so
        a full disk can still use them (lines.py); a line missed here is
        reserved again at its first program, a no-op for allocated space."""
        ppl, pb, ob = self.geom.pages_per_line, self.page_bytes, OOB_DTYPE.itemsize
        for line in range(self.geom.lines):
            self.backed[line] = all(
                os.lseek(fd, line * ppl * size, os.SEEK_HOLE) >= (line + 1) * ppl * size
                for fd, size in ((self._fds[0], pb), (self._fds[1], ob)))

    def back_line(self, line: int) -> None:
        """Reserve a line's ranges of nand.data and nand.oob (a no-op costing
        one system call each if they are already allocated)."""
        ppl = self.geom.pages_per_line
        reserve(self._fds[0], line * ppl * self.page_bytes, ppl * self.page_bytes,
                 f"{self.DATA} for line {line}")
        reserve(self._fds[1], line * ppl * OOB_DTYPE.itemsize, ppl * OOB_DTYPE.itemsize,
                 f"{self.OOB} for line {line}")
        self.backed[line] = True

    def _back(self, ppns: np.ndarray) -> None:
        ppl = self.geom.pages_per_line
        l0, l1 = int(ppns[0]) // ppl, int(ppns[-1]) // ppl
        if l0 == l1:
            if not self.backed[l0]:
                self.back_line(l0)
            return
        for line in np.unique(ppns // ppl).tolist():
            if not self.backed[line]:
                self.back_line(line)

    def record_chunks(self, chunk_pages: int | None = None):
        """oob.record_chunks of nand.oob: (first PPN, records) a chunk at a time."""
        return record_chunks(self._fds[1], self.geom, self.dir / self.OOB, chunk_pages)

    def records_at(self, ppns: np.ndarray) -> np.ndarray:
        """A copy of the records of `ppns` (any order), through the mapping."""
        self.mapped.touched(ppns.size * OOB_DTYPE.itemsize)
        return self.oob[ppns]

    # -- program / read -------------------------------------------------------
    def _crcs(self, pages, lpns, seq0: int, n: int, stream: int, poison) -> np.ndarray:
        crc = zlib.crc32
        if self.seeded_crc:
            hdr = np.empty((n, 2), "<i8")
            hdr[:, 0] = lpns
            hdr[:, 1] = np.arange(seq0, seq0 + n)
            st = int(stream).to_bytes(2, "little")
            crcs = np.fromiter((crc(pages[i], crc(st, crc(hdr[i]))) for i in range(n)),
                               np.int64, n)
        else:
            crcs = np.fromiter((crc(pages[i]) for i in range(n)), np.int64, n)
        if poison is not None:
            crcs[poison] ^= _CRC_MASK
        return crcs

    def program(self, ppns: np.ndarray, pages: np.ndarray, lpns, seqs, stream: int,
                poison=None) -> None:
        """Program whole pages: ``pages`` is (n, page_bytes) uint8, ppns distinct,
        ``seqs`` consecutive (only its first value is used). ``poison`` (bool
        per page) marks copies of pages whose own CRC had failed (GC).
        Raises BackingError, with nothing stored, if a backing file refuses."""
        n = ppns.shape[0]
        if n == 0:
            return
        self._back(ppns)
        lp = lpns if isinstance(lpns, np.ndarray) else np.asarray(lpns, np.int64)
        lp = lp.astype(np.int64, copy=False)
        seq0 = int(np.asarray(seqs).flat[0])
        crcs = self._crcs(pages, lp, seq0, n, stream, poison)
        self.mapped.touched(n * OOB_DTYPE.itemsize)
        err = program_meta(ppns, self._geo, self.wp, self.blocks["bad"], self._oob64,
                           lp, seq0, crcs, int(stream))
        if err >= 0:
            p = int(ppns[err // 2])
            raise NandError(f"program of PPN {p}: " + ("bad block" if err % 2 else
                                                         "page already programmed (erase first)"))
        p0 = int(ppns[0])
        contiguous = n == 1 or (int(ppns[-1]) - p0 == n - 1 and is_run(ppns))
        # pwrite, not stores through the mapping: one syscall per run instead
        # of a page fault per fresh page, and a full disk is an error code,
        # not a SIGBUS. Both use the same page cache, so the mapping sees the
        # data at once.
        fd, pb = self._fds[0], self.page_bytes
        try:
            if contiguous:
                pwrite_all(fd, pages if pages.flags.c_contiguous else np.ascontiguousarray(pages),
                            p0 * pb)
            else:
                brk = np.flatnonzero(np.diff(ppns) != 1) + 1
                lo = 0
                for hi in brk.tolist() + [n]:
                    pwrite_all(fd, np.ascontiguousarray(pages[lo:hi]), int(ppns[lo]) * pb)
                    lo = hi
        except OSError as e:
            # the records went first: take them back, so that no page of the
            # batch is "programmed" with data that never reached the file (its
            # range is reserved, so these stores cannot fault)
            self._oob64[ppns] = 0
            raise BackingError(e.errno, f"program of {n} pages at PPN {p0}") from None
        if contiguous:
            self.verified[p0:p0 + n] = True
        else:
            self.verified[ppns] = True
        if poison is not None and poison.any():
            bad = ppns[poison]
            self.oob["flags"][bad] |= OOB_UNCORRECTABLE
            self.verified[bad] = False
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

    def _matches(self, data, rec) -> bool:
        """Whether page `data` is what record `rec` (lpn, seq, crc|stream|flags
        as int64) was programmed with."""
        w = int(rec[2])
        flags = (w >> 48) & 0xFFFF
        if not flags & OOB_PRESENT or flags & OOB_UNCORRECTABLE:
            return False
        crc = zlib.crc32
        if not self.seeded_crc:
            return crc(data) == w & _CRC_MASK
        seed = crc(((w >> 32) & 0xFFFF).to_bytes(2, "little"), crc(rec[:2]))
        return crc(data, seed) == w & _CRC_MASK

    def verify(self, ppns: np.ndarray, records: np.ndarray | None = None) -> np.ndarray:
        """True where the page's data matches its OOB record (neither torn nor
        corrupt). For recovery: the data is read with pread (a torn page may be
        a hole); `records[i]` is the record of ppns[i] (default: read now)."""
        recs = self.records_at(ppns) if records is None else records
        raw = records_i64(recs)
        fd, pb = self._fds[0], self.page_bytes
        ok = np.empty(ppns.shape[0], bool)
        for i, p in enumerate(ppns.tolist()):
            ok[i] = self._matches(os.pread(fd, pb, p * pb), raw[i])
        return ok

    def check(self, ppns: np.ndarray) -> bool:
        """Before mapped pages are returned as data: True if every one matches
        its OOB record. A page that matched is not hashed again until it is
        erased, so reads pay for it once per power cycle (media corruption
        at rest is found; a file edited under a running daemon after the
        page's first read is not)."""
        ver = self.verified
        if ppns.shape[0] == 1:
            if ver[int(ppns[0])]:
                return True
            todo = ppns
        else:
            todo = ppns[~ver[ppns]]
        if len(todo):
            self.mapped.touched(len(todo) * OOB_DTYPE.itemsize)
        data, raw = self.data, self._oob64
        # a slice of Python ints at a time: a list of a whole attend's pages
        # (millions) stayed in the allocator's arenas, daemon memory after
        for i in range(0, len(todo), _CHECK_RUN):
            for p in todo[i:i + _CHECK_RUN].tolist():
                if not self._matches(data[p], raw[p]):
                    return False
                ver[p] = True
        return True

    def check_each(self, ppns: np.ndarray) -> np.ndarray:
        """check() page by page: True where the page matches its record."""
        ok = self.verified[ppns]
        data, raw = self.data, self._oob64
        self.mapped.touched(int((~ok).sum()) * OOB_DTYPE.itemsize)
        for i in np.flatnonzero(~ok).tolist():
            p = int(ppns[i])
            ok[i] = self.verified[p] = self._matches(data[p], raw[p])
        return ok

    def mark_torn(self, ppns: np.ndarray) -> None:
        """Record that a crash tore these pages (OOB_TORN); durable with the
        next sync, as every record is."""
        if ppns.size:
            self.oob["flags"][ppns] |= OOB_TORN
            self.verified[ppns] = False

    def programmed(self, ppns) -> np.ndarray:
        return (self.oob["flags"][ppns] & OOB_PRESENT) != 0

    # -- erase ----------------------------------------------------------------
    def erase(self, blk: int) -> None:
        """Erase one block (a bad block is refused)."""
        if self.blocks["bad"][blk]:
            raise NandError(f"erase of bad block {blk}")
        pages = self.geom.block_pages(blk)
        self._back(pages[:1])
        self.oob[pages] = np.zeros(1, OOB_DTYPE)
        self.verified[pages] = False
        self.wp[blk] = 0
        self.blocks["erase_count"][blk] += 1
        self.erases += 1

    def erase_line(self, line: int) -> np.ndarray:
        """Erase every good block of a line; returns the erased block ids.
        The OOB records of the line's bad blocks are cleared too: once a line
        is collected nothing in it is referenced any more. Raises
        BackingError, erasing nothing, if the line's OOB range (programmed by
        an older csdemu, unreserved) cannot be reserved."""
        g = self.geom
        if not self.backed[line]:
            self.back_line(line)
        blks = g.line_blocks(line)
        good = blks[self.blocks["bad"][blks] == 0]
        lo = line * g.pages_per_line
        self.mapped.touched(g.pages_per_line * OOB_DTYPE.itemsize)
        self.oob[lo:lo + g.pages_per_line] = np.zeros(1, OOB_DTYPE)
        self.verified[lo:lo + g.pages_per_line] = False
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
        """msync every mapping: written pages and OOB survive a host crash.
        Raises BackingError if the kernel reports a write-back error."""
        for name, mm in zip((self.DATA, self.OOB, self.BLOCKS), self._mms):
            try:
                mm.flush()
            except OSError as e:
                raise BackingError(e.errno, f"msync of {name}") from None

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
