"""How much of the OOB file the daemon keeps mapped in.

nand.oob is mapped whole (nand.py), and every program stores its pages'
records through the mapping. A page stored to (or read) through a mapping
stays in the daemon's resident set (VmRSS) until it is unmapped, though it
is the kernel's page cache, written back and reclaimable like any file page:
left alone, a written drive would show 24 B per page of records as daemon
memory. So the mapping's resident part is kept under a fixed budget: when the
daemon's file-backed resident size has grown by more than the budget since
the last drop, MADV_DONTNEED unmaps the file's pages. On a MAP_SHARED file
mapping that only drops the page-table entries: dirty pages stay dirty in
the page cache (msync and write-back still see them), and the next touch
maps the page back from the cache, a minor fault.

nand.data is not budgeted: the daemon writes it with pwrite, so it only maps
pages it reads (host reads, the attention kernels), clean page cache the
kernel reclaims under pressure. Dropping those after every command cost a
cached attend over 1.3 GB of KV 18 % more wall time (they fault back in), so
only reads that would not stay cached anyway drop theirs (DataPages).
"""
from __future__ import annotations

import mmap
import os

import numpy as np

# Budget of mapped-in OOB pages: 64 MiB of records is 2.8 million pages
# programmed between drops, so the check costs nothing measurable, and it
# bounds the daemon's VmRSS above its fixed baseline (interpreter, libraries,
# compiled kernels).
MAPPED_BUDGET_BYTES = 64 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _file_resident_bytes() -> int:
    """The process's resident file-backed and shared pages (statm's 3rd field)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[2]) * _PAGE


class MappedBudget:
    """Counts bytes touched through `mm`; past every quarter budget looks at
    the real resident size (a large folio maps more than was touched)."""

    def __init__(self, mm, budget: int | None = None):
        self.mm = mm
        self.budget = MAPPED_BUDGET_BYTES if budget is None else budget
        self.check_every = self.budget // 4
        self.base = _file_resident_bytes()
        self.count = 0
        self.drops = 0

    def touched(self, nbytes: int) -> None:
        self.count += nbytes
        if self.count >= self.check_every:
            self.count = 0
            if _file_resident_bytes() - self.base > self.budget:
                self.drop()

    def drop(self) -> None:
        self.mm.madvise(mmap.MADV_DONTNEED)
        self.drops += 1
        self.base = _file_resident_bytes()      # libraries mapped in since count as base


class DataPages:
    """Read-ahead and release of nand.data by page runs, for an attend over
    more KV than the page cache keeps (csdemu.drive.kv.engine streams it).

    Faulted in through the mapping one page at a time, the kernels read the
    disk at 0.78 GB/s (4 KiB, serially with their compute); POSIX_FADV_WILLNEED
    on the next piece's runs queues its reads at depth and returns, so the
    disk streams while the kernels work. MADV_DONTNEED on a finished piece's
    runs unmaps them (clean page cache, reclaimed first), so the daemon's
    resident set does not carry the whole attend."""

    def __init__(self, mm, fd: int, page_bytes: int):
        self.mm, self.fd, self.page_bytes = mm, fd, page_bytes

    def runs(self, ppns):
        """Byte ranges (offset, length) of the pages, coalesced, ascending."""
        p = np.unique(np.asarray(ppns, np.int64))
        if not p.size:
            return []
        cut = np.flatnonzero(np.diff(p) != 1) + 1
        starts, ends = p[np.r_[0, cut]], p[np.r_[cut - 1, p.size - 1]] + 1
        pb = self.page_bytes
        return list(zip((starts * pb).tolist(), ((ends - starts) * pb).tolist()))

    def will_need(self, ppns) -> None:
        for off, n in self.runs(ppns):
            os.posix_fadvise(self.fd, off, n, os.POSIX_FADV_WILLNEED)

    def unmap(self, ppns) -> None:
        for off, n in self.runs(ppns):
            lo = off - off % _PAGE
            self.mm.madvise(mmap.MADV_DONTNEED, lo, n + off - lo)
