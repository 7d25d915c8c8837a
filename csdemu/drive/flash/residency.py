"""How much of the backing files the daemon keeps mapped in.

nand.data and nand.oob are mapped whole (nand.py). A page the daemon stores
to or reads through a mapping stays in its resident set (VmRSS) until it is
unmapped, though it is the kernel's page cache: written back and dropped
under memory pressure like any file page. Left alone, a drive written and
read once would show all of its OOB records and every page read as daemon
memory. So the mappings' resident part is kept under a fixed budget: when
the daemon's file-backed resident pages have grown by more than the budget
since open, MADV_DONTNEED unmaps the files' pages. On a MAP_SHARED file
mapping that only drops the page-table entries: dirty pages stay dirty in
the page cache (msync and write-back still see them), and the next touch
maps the page back from the cache, a minor fault. Zero-copy views stay
valid throughout.
"""
from __future__ import annotations

import mmap
import os

# Budget of mapped-in backing file pages. It bounds the daemon's VmRSS
# above its fixed baseline (interpreter, libraries, compiled kernels); 64 MiB
# is 16,384 pages of 4 KiB, a few attends' worth of KV, so a hot working set
# is remapped at most once per 64 MiB read (a minor fault per 64 KiB mapped).
MAPPED_BUDGET_BYTES = 64 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _file_resident_bytes() -> int:
    """The process's resident file-backed and shared pages (statm's 3rd field)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[2]) * _PAGE


class MappedBudget:
    """Counts bytes touched through `maps`; past every quarter budget looks
    at the real resident size (a large folio maps more than was touched)."""

    def __init__(self, maps, budget: int | None = None):
        self.maps = list(maps)
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
        for mm in self.maps:
            mm.madvise(mmap.MADV_DONTNEED)
        self.drops += 1
        self.base = _file_resident_bytes()      # libraries mapped in since count as base
