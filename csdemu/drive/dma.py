"""The DMA engine and the emulated IOMMU.

PRP data pointers are virtual addresses in the client process. The daemon
moves bytes with process_vm_readv/writev through pyuio's C entry points
(`_process_read(pid, remote, local, length)`), one call per transfer, never
pyuio's per-element helpers. A transfer is allowed only inside a region the
client registered with DMA Map (vendor admin C8h); anything else is a Data
Transfer Error, as a real IOMMU fault would be.
"""
from __future__ import annotations

import bisect

from pyuiolib import _process_read, _process_write


class Iommu:
    """Registered host memory regions of one client: sorted, non-overlapping."""

    def __init__(self, max_regions: int = 4096):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.max_regions = max_regions

    def map(self, addr: int, length: int) -> bool:
        if length <= 0 or addr <= 0 or addr + length > 1 << 64 or len(self.starts) >= self.max_regions:
            return False
        i = bisect.bisect_right(self.starts, addr)
        if i > 0 and self.ends[i - 1] > addr:
            return False
        if i < len(self.starts) and self.starts[i] < addr + length:
            return False
        self.starts.insert(i, addr)
        self.ends.insert(i, addr + length)
        return True

    def unmap(self, addr: int) -> bool:
        i = bisect.bisect_left(self.starts, addr)
        if i == len(self.starts) or self.starts[i] != addr:
            return False
        del self.starts[i], self.ends[i]
        return True

    def allows(self, addr: int, length: int) -> bool:
        i = bisect.bisect_right(self.starts, addr) - 1
        return i >= 0 and addr + length <= self.ends[i]

    def __len__(self):
        return len(self.starts)


def dma_from_host(pid: int, host_addr: int, local_addr: int, length: int) -> bool:
    """Copy `length` bytes from the client's memory; False on any fault."""
    return _process_read(pid, host_addr, local_addr, length) == length


def dma_to_host(pid: int, host_addr: int, local_addr: int, length: int) -> bool:
    return _process_write(pid, host_addr, local_addr, length) == length


def probe(pid: int, addr: int, length: int, scratch_addr: int) -> bool:
    """True if both ends of [addr, addr+length) are readable in the client."""
    return (_process_read(pid, addr, scratch_addr, 1) == 1
            and _process_read(pid, addr + length - 1, scratch_addr, 1) == 1)
